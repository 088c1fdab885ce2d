"""`python helpers/setup.py` (the no-make, Windows path of README). The plans are checked on a faked Windows and on
Linux; the real runs here are only the cheap ones (dry runs, and the stdlib-only start before anything is
installed): no second virtual environment is created."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import setup

ROOT = Path(__file__).resolve().parent.parent
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")


def argvs(steps):
    return [s.argv for s in steps]


def test_fresh_windows_plan():
    venv = r"C:\Users\ana\llm-book\.venv"
    steps = setup.plan("install", venv=venv, shared=r"C:\Users\ana\shared\data", windows=True,
                       python=r"C:\Python311\python.exe", venv_exists=False, shared_exists=True)
    py = venv + r"\Scripts\python.exe"
    assert argvs(steps) == [
        [r"C:\Python311\python.exe", "-m", "venv", venv],
        [py, "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [py, "-m", "pip", "install", "-q", "-r", "requirements.txt"],
        [py, "-m", "pip", "install", "-q", "--no-deps", "-e", "."],
        [py, "-m", "helpers.data", "--from", r"C:\Users\ana\shared\data"],
        [py, "-m", "helpers.teacher"],
    ]
    assert setup.show(steps[2], windows=True) == py + " -m pip install -q -r requirements.txt"


def test_windows_test_command_sets_the_offline_variables_like_make():
    steps = setup.plan("test", venv=r"D:\envs\book", windows=True, python="py", venv_exists=True,
                       shared_exists=False, skip_teacher=True)
    assert [s.argv[2] for s in steps] == ["pip", "pip", "pytest"]  # no venv creation, no mirror, no teacher
    last = steps[-1]
    assert last.argv[0] == r"D:\envs\book\Scripts\python.exe"
    lines = MAKEFILE.splitlines()
    make_test = lines[lines.index("test: data") + 1].strip()  # the recipe of `make test`
    assert make_test == "$(OFFLINE) $(PY) " + " ".join(last.argv[1:])
    make_offline = next(line for line in MAKEFILE.splitlines() if line.startswith("OFFLINE"))
    assert dict(kv.split("=") for kv in make_offline.split(":=")[1].split()) == last.env
    shown = setup.show(last, windows=True)
    assert shown.startswith("set HF_HUB_OFFLINE=1&& set HF_DATASETS_OFFLINE=1&& ")
    assert "--nbval-cell-timeout=900" in shown


def test_linux_plans():
    steps = setup.plan("lab", venv="/home/u/book/.venv", windows=False, python="python3", venv_exists=True,
                       shared_exists=False, is_root_user=False)
    assert argvs(steps)[-1] == ["/home/u/book/.venv/bin/python", "-m", "jupyter", "lab", "notebooks"]
    assert all(s.argv[0] == "/home/u/book/.venv/bin/python" for s in steps)
    assert not any("helpers.data" in s.argv for s in steps)
    root = setup.plan("lab", venv="/v", windows=False, venv_exists=True, shared_exists=False, is_root_user=True)
    assert root[-1].argv[-1] == "--allow-root"  # as `make lab` does for root
    site = setup.plan("site", venv="/v", windows=False, venv_exists=True, shared_exists=False, skip_teacher=True)
    assert site[-1].argv == ["/v/bin/python", "scripts/site/build.py"]
    shown = setup.show(setup.plan("test", venv="/a b", windows=False, venv_exists=True, shared_exists=False)[-1],
                       windows=False)
    assert shown.startswith("HF_HUB_OFFLINE=1 ") and "'/a b/bin/python' -m pytest" in shown


def test_venv_python_paths():
    assert setup.venv_python(r"C:\x\.venv", windows=True) == r"C:\x\.venv\Scripts\python.exe"
    assert setup.venv_python("/x/.venv", windows=False) == "/x/.venv/bin/python"


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown command 'build'"):
        setup.plan("build")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        setup.plan("install", venv=tmp_path / "file")
    with pytest.raises(TypeError, match="skip_teacher"):
        setup.plan("install", skip_teacher="yes")


def test_dry_run_command_line(capsys):
    assert setup.main(["test", "--dry-run", "--venv", str(ROOT / ".venv-never-made"), "--skip-teacher",
                       "--shared", str(ROOT / "no-such-mirror")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("no data mirror at")
    assert out[1].endswith(f"-m venv {ROOT / '.venv-never-made'}")
    assert out[-1].startswith("HF_HUB_OFFLINE=1 ") and "-m pytest -q tests notebooks" in out[-1]
    assert not (ROOT / ".venv-never-made").exists()
    with pytest.raises(SystemExit):
        setup.main(["build"])


def test_runs_on_a_python_without_the_packages(tmp_path):
    """Before anything is installed: with torch, numpy and the rest unimportable, the script still plans."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text("import sys\nfor m in ('torch', 'numpy', 'transformers', 'matplotlib', 'pandas'):\n"
                       "    sys.modules[m] = None\n")
    out = subprocess.run([sys.executable, "helpers/setup.py", "--dry-run", "--skip-teacher"], cwd=ROOT,
                         capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path), "PATH": ""}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "-m pip install -q -r requirements.txt" in out.stdout
