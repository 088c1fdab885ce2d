"""helpers.dist: input checks, the precision policy, tensor-parallel shards (simulated in one process), the GPipe
schedule, and the torchrun launcher (one real 1-process launch whose rank fails)."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.dist import (
    ColumnParallelLinear,
    RowParallelLinear,
    amp_policy,
    bubble_fraction,
    check_backend,
    check_world,
    free_port,
    gpipe_timeline,
    launch,
    run_python,
)


def test_check_world_accepts_valid_settings():
    check_world(2, rank=1, batch=64, heads=4, features=256)
    check_world(1)


@pytest.mark.parametrize("kw, match", [
    (dict(world_size=3, batch=64), "does not divide batch"),
    (dict(world_size=3, heads=4), "does not divide heads"),
    (dict(world_size=2, features=5), "does not divide features"),
    (dict(world_size=2, rank=2), "rank must be"),
    (dict(world_size=2, rank=-1), "rank must be"),
    (dict(world_size=0), "world_size must be"),
    (dict(world_size=True), "world_size must be"),
])
def test_check_world_rejects(kw, match):
    with pytest.raises(ValueError, match=match):
        check_world(**kw)


def test_check_backend():
    assert check_backend("gloo") == "gloo" and check_backend("nccl") == "nccl"
    with pytest.raises(ValueError, match="unknown backend 'glo'"):
        check_backend("glo")


def test_free_port_is_bindable():
    import socket
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_amp_policy(monkeypatch):
    monkeypatch.setenv("LLMBOOK_BF16", "0")
    assert amp_policy("cpu") == (torch.float32, False)
    assert amp_policy("cpu", "fp16") == (torch.float16, True)  # fp16 always comes with loss scaling
    assert amp_policy("cpu", "bf16") == (torch.bfloat16, False)
    monkeypatch.setenv("LLMBOOK_BF16", "1")
    assert amp_policy("cpu") == (torch.bfloat16, False)
    with pytest.raises(ValueError, match="precision must be"):
        amp_policy("cpu", "half")


def test_tensor_parallel_shards_sum_to_the_full_mlp():
    torch.manual_seed(0)
    fc1, fc2, x = nn.Linear(8, 16), nn.Linear(16, 8), torch.randn(3, 8)
    with torch.no_grad():
        full = fc2(F.gelu(fc1(x)))
        for world in (1, 2, 4):
            parts = sum(RowParallelLinear(fc2, r, world)(F.gelu(ColumnParallelLinear(fc1, r, world)(x)))
                        for r in range(world))
            assert torch.allclose(parts, full, atol=1e-6), world


def test_tensor_parallel_bad_split():
    with pytest.raises(ValueError, match="does not divide features"):
        ColumnParallelLinear(nn.Linear(4, 6), 0, 4)
    with pytest.raises(ValueError, match="rank must be"):
        RowParallelLinear(nn.Linear(8, 4), 2, 2)


def test_gpipe_schedule_and_bubble():
    tl = gpipe_timeline(2, 4)
    assert len(tl) == 16 and max(t for _, t, _, _ in tl) + 1 == 2 * (4 + 2 - 1)
    busy = len(tl) / (2 * 2 * (4 + 2 - 1))  # slots used / slots available
    assert abs((1 - busy) - bubble_fraction(2, 4)) < 1e-12
    assert bubble_fraction(1, 5) == 0.0
    with pytest.raises(ValueError):
        gpipe_timeline(2, 0)


def test_launch_rejects_missing_script(tmp_path):
    with pytest.raises(ValueError, match="no script"):
        launch(tmp_path / "nope.py")
    with pytest.raises(ValueError, match="no script"):
        run_python(tmp_path / "nope.py")


def test_launch_shows_the_failing_ranks_stderr(tmp_path: Path):
    script = tmp_path / "fail.py"
    script.write_text("import os, sys\nprint('rank', os.environ['RANK'], 'says hi')\n"
                      "sys.exit('rank-zero-failed-on-purpose')\n")
    with pytest.raises(RuntimeError, match="rank-zero-failed-on-purpose"):
        launch(script, nproc=1, timeout=60)


def test_run_python_timeout_and_output(tmp_path: Path):
    ok, slow = tmp_path / "ok.py", tmp_path / "slow.py"
    ok.write_text("print('hello from one process')\n")
    slow.write_text("import time\ntime.sleep(30)\n")
    assert "hello from one process" in run_python(ok, timeout=30)
    with pytest.raises(RuntimeError, match="timed out"):
        run_python(slow, timeout=1)
