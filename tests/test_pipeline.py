"""helpers.pipeline and scripts/train.py: configuration checks, token files, the resumable loader, checkpoints
(keep-last-k, a truncated file, a changed configuration), TensorBoard read-back, SIGKILL and an exact resume."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from helpers.pipeline import (
    Checkpoints,
    ResumableLoader,
    RunConfig,
    config_diff,
    head_tail,
    open_token_file,
    read_scalars,
    run,
    write_token_file,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train.py"


def train_module():
    spec = importlib.util.spec_from_file_location("train_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- configuration -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, match", [
    (dict(lr=-1e-3), "lr must be > 0"),
    (dict(lr=float("nan")), "finite number"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(task="translate"), "task must be one of"),
    (dict(precision="fp8"), "precision must be one of"),
    (dict(n_embd=66, n_head=4), "divisible by n_head"),
    (dict(warmup=200, steps=100), "warmup"),
    (dict(batch=0), "batch must be a positive int"),
    (dict(steps=True), "steps must be a positive int"),
    (dict(keep_last=0), "keep_last must be a positive int"),
])
def test_config_rejects_impossible_values(bad, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**bad)


def test_config_batch_must_split_over_the_processes():
    cfg = RunConfig(batch=16)
    cfg.validate(world_size=4)
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        cfg.validate(world_size=3)


def test_config_file_round_trip_and_errors(tmp_path):
    cfg = RunConfig(task="cls", lr=1e-3, steps=50)
    assert RunConfig.load(cfg.save(tmp_path / "run.json")) == cfg
    with pytest.raises(FileNotFoundError, match="no config file"):
        RunConfig.load(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        RunConfig.load(tmp_path / "broken.json")
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['learning_rate'\]"):
        RunConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(TypeError, match="dict of field"):
        RunConfig.from_dict([("lr", 1e-3)])


def test_config_diff_ignores_bookkeeping_only():
    saved = RunConfig().to_dict()
    assert config_diff(saved, RunConfig(save_every=7, log_every=3, keep_last=9)) == {}
    assert config_diff(saved, RunConfig(lr=1e-3)) == {"lr": (3e-3, 1e-3)}


# --- token files and truncation --------------------------------------------------------------------------------------

def test_token_file_round_trip_is_a_uint16_memmap(tmp_path):
    ids = np.arange(1000) % 65536
    write_token_file(tmp_path / "t", ids, vocab_size=1000)
    mm, meta = open_token_file(tmp_path / "t")
    assert isinstance(mm, np.memmap) and mm.dtype == np.uint16 and np.array_equal(mm, ids)
    assert meta["vocab_size"] == 1000 and meta["shape"] == [1000]
    assert (tmp_path / "t.bin").stat().st_size == 2000


@pytest.mark.parametrize("tokens, match", [
    (np.array([0, 70000]), "uint16 holds ids"),
    (np.array([-1, 2]), "uint16 holds ids"),
    (np.array([0.5, 1.0]), "integer array"),
    (np.zeros((2, 2, 2), dtype=int), "1-D or 2-D"),
])
def test_token_file_rejects_bad_tokens(tmp_path, tokens, match):
    with pytest.raises(ValueError, match=match):
        write_token_file(tmp_path / "t", tokens)


def test_token_file_detects_truncation_and_absence(tmp_path):
    write_token_file(tmp_path / "t", np.arange(100))
    with open(tmp_path / "t.bin", "r+b") as f:
        f.truncate(150)
    with pytest.raises(ValueError, match="truncated"):
        open_token_file(tmp_path / "t")
    with pytest.raises(FileNotFoundError, match="write_token_file"):
        open_token_file(tmp_path / "missing")


def test_head_tail():
    assert head_tail(range(10), 4) == [0, 1, 8, 9]
    assert head_tail(range(10), 4, head=1) == [0, 7, 8, 9]
    assert head_tail(range(10), 4, head=4) == [0, 1, 2, 3]
    assert head_tail(range(3), 4) == [0, 1, 2]
    with pytest.raises(ValueError, match="max_len"):
        head_tail(range(3), 1)
    with pytest.raises(ValueError, match="head must be"):
        head_tail(range(10), 4, head=5)


# --- the loader --------------------------------------------------------------------------------------------------

def test_loader_order_is_dataloaders():
    g = torch.Generator().manual_seed(3)
    expected = [b for _ in range(2) for b in DataLoader(range(50), batch_size=8, shuffle=True, generator=g,
                                                         drop_last=True)]
    loader = ResumableLoader(50, 8, seed=3)
    got = [loader.next() for _ in range(len(expected))]
    assert all(torch.equal(a, b) for a, b in zip(got, expected)) and loader.epoch == 2


@pytest.mark.parametrize("stop", [0, 3, 6, 7, 13])  # start, mid-epoch, end of an epoch (6 batches), next epoch
def test_loader_resumes_exactly_anywhere(stop):
    straight = ResumableLoader(50, 8, seed=1)
    batches = [straight.next() for _ in range(20)]
    first = ResumableLoader(50, 8, seed=1)
    for _ in range(stop):
        first.next()
    state = json.loads(json.dumps({k: v if k != "generator" else v.tolist() for k, v in first.state_dict().items()}))
    state["generator"] = torch.tensor(state["generator"], dtype=torch.uint8)
    second = ResumableLoader(50, 8, seed=99)  # a new process: whatever its seed, the state decides
    second.load_state_dict(state)
    assert all(torch.equal(second.next(), b) for b in batches[stop:])


def test_loader_needs_one_full_batch():
    with pytest.raises(ValueError, match="cannot fill one batch"):
        ResumableLoader(5, 8, seed=0)


# --- checkpoints -------------------------------------------------------------------------------------------------

def _state(step, cfg):
    return dict(model={"w": torch.full((3,), float(step))}, optimizer={}, scheduler={}, config=cfg.to_dict())


def test_checkpoints_keep_last_k_and_fall_back_from_a_truncated_file(tmp_path):
    cfg, msgs = RunConfig(), []
    ck = Checkpoints(tmp_path, keep_last=2, log=msgs.append)
    for step in (10, 20, 30):
        ck.save(step, **_state(step, cfg))
    assert [p.name for p in ck.paths()] == ["ckpt_000030.pt", "ckpt_000020.pt"]
    newest = ck.paths()[0]
    with open(newest, "r+b") as f:
        f.truncate(newest.stat().st_size // 2)
    (tmp_path / "ckpt_000040.pt.tmp").write_bytes(b"half a save")
    got = ck.latest(cfg)
    assert got["step"] == 20 and torch.equal(got["model"]["w"], torch.full((3,), 20.0))
    assert any("skipping ckpt_000030.pt" in m for m in msgs) and any(".tmp" in m for m in msgs)
    assert not (tmp_path / "ckpt_000040.pt.tmp").exists()


def test_checkpoints_refuse_a_changed_config_and_never_start_silently(tmp_path):
    ck = Checkpoints(tmp_path, log=lambda *a: None)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ck.latest(RunConfig())
    ck.save(5, **_state(5, RunConfig()))
    with pytest.raises(ValueError, match=r"different configuration \(lr: checkpoint 0.003 vs now 0.001\)"):
        ck.latest(RunConfig(lr=1e-3))
    assert ck.latest(RunConfig(save_every=1))["step"] == 5  # bookkeeping may change
    (tmp_path / "ckpt_000005.pt").write_bytes(b"garbage")
    with pytest.raises(FileNotFoundError, match="1 unreadable checkpoint"):
        ck.latest(RunConfig())
    with pytest.raises(ValueError, match="keep_last"):
        Checkpoints(tmp_path, keep_last=0)


# --- TensorBoard ---------------------------------------------------------------------------------------------------

def test_read_scalars_after_a_resume_purges_the_overlap(tmp_path):
    from torch.utils.tensorboard import SummaryWriter
    w = SummaryWriter(str(tmp_path))
    for s in range(1, 8):
        w.add_scalar("loss", 100.0 + s, s)  # the killed run got to step 7 after its checkpoint at 4
    w.close()
    w = SummaryWriter(str(tmp_path), purge_step=5)
    for s in range(5, 11):
        w.add_scalar("loss", float(s), s)
    w.close()
    steps, values = read_scalars(tmp_path)["loss"]
    assert steps == list(range(1, 11))
    assert values == [101.0, 102.0, 103.0, 104.0] + [float(s) for s in range(5, 11)]
    with pytest.raises(FileNotFoundError):
        read_scalars(tmp_path / "nothing")


# --- processes -----------------------------------------------------------------------------------------------------

def test_run_kills_on_a_line_and_reports_failures(tmp_path):
    loop = "import time\nfor i in range(1000):\n    print('tick', i, flush=True)\n    time.sleep(0.01)\n"
    r = run([sys.executable, "-c", loop], kill_when=r"^tick 5$", timeout=60)
    assert r["killed"] and r["returncode"] == -9 and "tick 5" in r["out"] and "tick 999" not in r["out"]
    with pytest.raises(RuntimeError, match=r"failed \(exit 3\)"):
        run([sys.executable, "-c", "import sys; print('bad'); sys.exit(3)"])


# --- the training script ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    write_token_file(d / "train", rng.integers(0, 50, 3000), vocab_size=50)
    write_token_file(d / "val", rng.integers(0, 50, 600), vocab_size=50)
    cfg = RunConfig(task="lm", train_data=str(d / "train"), val_data=str(d / "val"), n_layer=1, n_head=2, n_embd=16,
                    block=16, batch=8, steps=30, warmup=3, save_every=10, log_every=2, eval_every=15,
                    eval_batches=2, dropout=0.1, precision="fp32")
    return d, cfg.save(d / "run.json")


def test_script_resumes_bit_identically_after_sigkill(tiny_run):
    d, cfg_path = tiny_run
    base = [sys.executable, str(SCRIPT), str(cfg_path)]
    ref = run(base + ["--out-dir", str(d / "ref")], threads=1, timeout=120)
    killed = run(base + ["--out-dir", str(d / "kill")], threads=1, timeout=120, kill_when=r"^step\s+14/")
    assert killed["killed"]
    resumed = run(base + ["--out-dir", str(d / "kill"), "--resume"], threads=1, timeout=120)
    assert "resumed from ckpt_000010.pt at step 10" in resumed["out"]
    a = torch.load(d / "ref/checkpoints/ckpt_000030.pt", weights_only=True)
    b = torch.load(d / "kill/checkpoints/ckpt_000030.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]) and a["log"] == b["log"]
    assert ref["out"].splitlines()[-1].startswith("summary ")


def test_script_refuses_bad_resumes(tiny_run, tmp_path):
    d, cfg_path = tiny_run
    train = train_module()
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train.main([str(cfg_path), "--out-dir", str(tmp_path / "empty"), "--resume"])
    changed = RunConfig.load(cfg_path)
    changed.lr = 1e-2
    changed.steps = 10
    train.main([str(changed.save(tmp_path / "a.json")), "--out-dir", str(tmp_path / "a")])
    changed.lr = 3e-2
    with pytest.raises(ValueError, match="different configuration"):
        train.main([str(changed.save(tmp_path / "b.json")), "--out-dir", str(tmp_path / "a"), "--resume"])
