"""scripts/colab_cell.py: the "Open in Colab" badge and the install cell that runs only on Colab.

The cell's code is executed here twice: as on a laptop (nothing may happen) and as on Colab, with `google.colab`
faked and every process, path and site call recorded instead of run.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("colab_script", ROOT / "scripts" / "colab_cell.py")
colab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(colab)


def notebook(title="# 第 1 章 Transformer 模型基礎 · Transformer fundamentals\n\nIntro."):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(title), nbformat.v4.new_code_cell("import helpers"),
                nbformat.v4.new_markdown_cell("**設定 · Configuration.**"), nbformat.v4.new_code_cell("SEED = 0")]
    return nb


def run_cell(monkeypatch, tmp_path, colab_runtime: bool, clone_exists=False):
    """Execute the install cell; returns the subprocess calls, sitedirs added and the final working directory."""
    import site
    calls, sitedirs = [], []
    repo = tmp_path / "llm-book"

    def fake_clone():
        (repo / "notebooks").mkdir(parents=True)
        (repo / "requirements.txt").write_text((ROOT / "requirements.txt").read_text(encoding="utf-8"),
                                               encoding="utf-8")

    def fake_run(cmd, **kw):
        calls.append((cmd, kw))
        if cmd[:2] == ["git", "clone"]:
            fake_clone()

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(site, "addsitedir", sitedirs.append)
    monkeypatch.setattr(site, "getsitepackages", lambda: ["/fake/site-packages"])
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    if colab_runtime:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    if clone_exists:
        fake_clone()
    src = colab.cell_source().replace('"/content/llm-book"', repr(str(repo)))
    assert repr(str(repo)) in src
    monkeypatch.chdir(tmp_path)
    exec(compile(src, "<colab cell>", "exec"), {"__name__": "__main__"})
    return calls, sitedirs, Path.cwd()


def test_does_nothing_outside_colab(monkeypatch, tmp_path, capsys):
    calls, sitedirs, cwd = run_cell(monkeypatch, tmp_path, colab_runtime=False)
    assert calls == [] and sitedirs == [] and cwd == tmp_path
    assert capsys.readouterr().out == ""


def test_on_colab_clones_installs_and_moves_into_notebooks(monkeypatch, tmp_path):
    calls, sitedirs, cwd = run_cell(monkeypatch, tmp_path, colab_runtime=True)
    cmds = [c for c, _ in calls]
    assert cmds[0][:2] == ["git", "clone"] and f"https://github.com/{colab.GITHUB_REPO}.git" in cmds[0]
    assert all(kw.get("check") for _, kw in calls), "a failed install must stop the notebook"
    pip_reqs, pip_self = cmds[1], cmds[2]
    assert pip_reqs[:4] == [sys.executable, "-m", "pip", "install"]
    wanted = [a for a in pip_reqs[4:] if not a.startswith("-")]
    assert any(a.startswith("torch") for a in wanted) and any(a.startswith("transformers") for a in wanted)
    assert not [a for a in wanted if a.startswith(("jupyterlab", "nbval", "pytest", "ruff", "ipykernel"))], \
        "developer tools must not replace Colab's Jupyter"
    assert pip_self[-3:] == ["--no-deps", "-e", str(tmp_path / "llm-book")]
    assert sitedirs == ["/fake/site-packages"] and cwd == tmp_path / "llm-book" / "notebooks"


def test_on_colab_second_run_does_not_reinstall(monkeypatch, tmp_path):
    calls, _, cwd = run_cell(monkeypatch, tmp_path, colab_runtime=True, clone_exists=True)
    assert calls == [] and cwd == tmp_path / "llm-book" / "notebooks"


def test_colab_env_variable_alone_is_detected(monkeypatch, tmp_path):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20261201-060000_RC00")
    ns = {}
    exec(colab.cell_source().split("if running_in_colab():")[0], ns)
    assert ns["running_in_colab"]()
    monkeypatch.delenv("COLAB_RELEASE_TAG")
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert not ns["running_in_colab"]()


def test_apply_is_idempotent_and_badge_points_at_the_notebook():
    nb = colab.apply(notebook(), "01_transformer.ipynb")
    once = json.dumps(nb, sort_keys=True)
    assert json.dumps(colab.apply(nb, "01_transformer.ipynb"), sort_keys=True) == once
    lines = nb.cells[0].source.splitlines()
    assert lines[0].startswith("# 第 1 章") and lines[1] == "" and lines[3] == "" and lines[4] == "Intro."
    assert lines[2].endswith(f"(https://colab.research.google.com/github/{colab.GITHUB_REPO}/blob/main/notebooks/"
                             "01_transformer.ipynb)")
    assert nb.cells[1].source.startswith(colab.MARKER) and nb.cells[2].source == "import helpers"
    assert colab.is_current(nb, "01_transformer.ipynb") and not colab.is_current(nb, "02_gpt.ipynb")
    nbformat.validate(nb)


def test_cli_check_and_update(tmp_path, capsys):
    path = tmp_path / "03_bert.ipynb"
    nbformat.write(notebook("# 第 3 章 BERT 模型 · BERT"), path)
    assert colab.main(["--check", str(path)]) == 1 and "03_bert.ipynb" in capsys.readouterr().err
    assert colab.main([str(path)]) == 0 and colab.main(["--check", str(path)]) == 0


def test_dev_only_names_are_requirements():
    """Every name the cell skips is still in requirements.txt (a renamed tool would otherwise be installed on Colab)."""
    reqs = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()]
    reqs = [r for r in reqs if r]
    for name in colab.DEV_ONLY:
        assert any(r.startswith(name) for r in reqs), f"{name} is not in requirements.txt any more"


def test_bad_input_is_a_clear_error():
    nb = notebook()
    with pytest.raises(ValueError, match="file name"):
        colab.apply(nb, "chapter one")
    nb.cells = nb.cells[1:]
    with pytest.raises(ValueError, match="title cell"):
        colab.apply(nb, "01_transformer.ipynb")
