"""scripts/bench.py (`make bench`): the BENCH_QUICK smoke run, the README section it generates, and its errors."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _load()


def test_quick_run_writes_json_plot_and_readme_section(tmp_path):
    env = {**os.environ, "BENCH_QUICK": "1", "HF_HUB_OFFLINE": "1", "LLMBOOK_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "agg"}
    p = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))
    assert data["quick"] is True
    benches = {r["bench"] for r in data["rows"]} | set(data["skipped"])
    assert benches == set(bench.BENCH_NAMES)  # every benchmark either ran or says why it was skipped
    for r in data["rows"]:
        assert r["ours_ms"] > 0 and r["baseline_ms"] > 0
        assert r["ratio"] == pytest.approx(r["baseline_ms"] / r["ours_ms"], rel=1e-2)
    assert (tmp_path / data["scaling"]["plot"]).stat().st_size > 0
    assert "| benchmark | ours |" in p.stdout and data["machine"]["cpu_model"] in p.stdout
    # README section from the JSON, on a copy: inserted before "## On a GPU" once, then replaced in place
    readme = tmp_path / "README.md"
    readme.write_text("# Book\n\nintro\n\n## On a GPU\n\ntext\n", encoding="utf-8")
    for _ in range(2):
        p = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--readme", str(readme)],
                           capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
        assert p.returncode == 0, p.stderr[-3000:]
    text = readme.read_text(encoding="utf-8")
    assert text.count(bench.START) == 1 and text.count("## Performance") == 1
    assert text.index(bench.END) < text.index("## On a GPU")
    first = data["rows"][0]
    assert f"| {first['name']} | {first['ours']} |" in text


def test_unknown_benchmark_name_lists_the_choices(capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--only", "nosuchbench"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "nosuchbench" in err and "attention" in err and "scaling" in err


def test_gpt_seq_that_does_not_fit_the_model(capsys):
    limit = min(c["block_size"] for c in bench.size("gpt").values())
    assert bench.parse_args(["--gpt-seq", str(limit)]).gpt_seq == limit
    with pytest.raises(SystemExit):
        bench.parse_args(["--gpt-seq", str(limit + 1)])
    assert f"choose 1 .. {limit}" in capsys.readouterr().err


def test_readme_without_anchor_is_a_clear_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no sections here\n", encoding="utf-8")
    data = {"quick": True, "rows": [], "skipped": {}, "scaling": None,
            "machine": {"cpu_model": "x", "cpu_cores": 1, "torch_threads": 1, "isa": "-", "gpu": None, "device": "cpu"}}
    with pytest.raises(ValueError, match="On a GPU"):
        bench.update_readme(readme, data)
