r"""Set up and run the book without `make` (Windows, or anywhere make is missing), with plain Python 3.10+:

    python helpers/setup.py            # = make data: virtual env in .venv, packages, data cache, chapter 10's teacher
    python helpers/setup.py lab        # = make lab: the same, then JupyterLab on the notebooks
    python helpers/setup.py test       # = make test: the same, then every test and notebook, offline
    python helpers/setup.py site       # = make site: the same, then the website in site/
    python helpers/setup.py --dry-run  # print the commands instead of running them

Options: --venv PATH (default .venv), --shared PATH (the data mirror, default ../shared/data; without one the
loaders download the data on first use), --skip-teacher. This file uses only the standard library: it runs before
anything is installed. Run it as a script (on Windows `python helpers\setup.py`): `python -m helpers.setup` works
too, but only once the packages are installed, because importing the `helpers` package imports torch.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = ROOT / ".venv"
DEFAULT_SHARED = ROOT.parent / "shared" / "data"
# The same variables as the Makefile's OFFLINE.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "LLMBOOK_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
COMMANDS = ("install", "lab", "test", "site")
MIN_PYTHON = (3, 10)


@dataclass
class Step:
    """One command: what it does, its arguments, and environment variables it adds."""
    what: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def venv_python(venv: Path | str, windows: bool | None = None) -> str:
    """The virtual environment's interpreter: Scripts\\python.exe on Windows, bin/python elsewhere."""
    windows = os.name == "nt" if windows is None else windows
    if windows:
        return str(PureWindowsPath(str(venv), "Scripts", "python.exe"))
    return str(PurePosixPath(str(venv), "bin", "python"))


def plan(command: str = "install", venv: Path | str = DEFAULT_VENV, shared: Path | str | None = DEFAULT_SHARED,
         skip_teacher: bool = False, windows: bool | None = None, python: str | None = None,
         venv_exists: bool | None = None, shared_exists: bool | None = None,
         is_root_user: bool | None = None) -> list[Step]:
    """The steps of `python -m helpers.setup <command>`, in order (nothing is run).

    `windows`, `venv_exists`, `shared_exists` and `is_root_user` default to what this machine says; the tests pass
    them to see the plan of another machine.
    """
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}: use one of {', '.join(COMMANDS)}")
    if not isinstance(skip_teacher, bool):
        raise TypeError(f"skip_teacher should be True or False, not {skip_teacher!r}")
    windows = os.name == "nt" if windows is None else windows
    venv = Path(venv)
    if venv.exists() and not venv.is_dir():
        raise ValueError(f"--venv {venv} is a file, not a folder for the virtual environment")
    py = venv_python(venv, windows)
    base = python or sys.executable
    steps = []
    if not (venv_python_path(venv).exists() if venv_exists is None else venv_exists):
        steps += [Step("create the virtual environment", [base, "-m", "venv", str(venv)]),
                  Step("upgrade pip", [py, "-m", "pip", "install", "-q", "--upgrade", "pip"])]
    steps += [Step("install the packages (first time: a few minutes, about 6 GB)",
                   [py, "-m", "pip", "install", "-q", "-r", "requirements.txt"]),
              Step("install the project's helpers (editable)", [py, "-m", "pip", "install", "-q", "--no-deps",
                                                                "-e", "."])]
    if shared is not None and (Path(shared).is_dir() if shared_exists is None else shared_exists):
        steps.append(Step("fill the data cache from the mirror", [py, "-m", "helpers.data", "--from", str(shared)]))
    if not skip_teacher:
        steps.append(Step("train chapter 10's teacher into the cache (once, about 2 minutes on a CPU)",
                          [py, "-m", "helpers.teacher"]))
    if command == "lab":
        root_user = (hasattr(os, "getuid") and os.getuid() == 0) if is_root_user is None else is_root_user
        steps.append(Step("open the notebooks in JupyterLab",
                          [py, "-m", "jupyter", "lab", "notebooks"] + (["--allow-root"] if root_user else [])))
    elif command == "test":
        steps.append(Step("run the helper tests and every notebook under nbval, offline",
                          [py, "-m", "pytest", "-q", "tests", "notebooks", "--nbval-lax", "--nbval-current-env",
                           "--nbval-cell-timeout=900"], dict(OFFLINE)))
    elif command == "site":
        steps.append(Step("build the website into site/", [py, "scripts/site/build.py"]))
    return steps


def venv_python_path(venv: Path) -> Path:
    """The interpreter of an existing virtual environment on this machine."""
    return Path(venv_python(venv))


def show(step: Step, windows: bool | None = None) -> str:
    """The command as one would type it in this machine's shell (cmd.exe quoting on Windows)."""
    windows = os.name == "nt" if windows is None else windows
    if windows:
        env = "".join(f"set {k}={v}&& " for k, v in step.env.items())
        return env + subprocess.list2cmdline(step.argv)
    import shlex
    env = "".join(f"{k}={shlex.quote(v)} " for k, v in step.env.items())
    return env + shlex.join(step.argv)


def run(steps: list[Step], root: Path = ROOT) -> int:
    """Run the steps in `root`, stopping at the first that fails; returns its exit code (0 when all pass)."""
    for i, step in enumerate(steps, 1):
        print(f"[{i}/{len(steps)}] {step.what}\n    {show(step)}", flush=True)
        code = subprocess.run(step.argv, cwd=root, env={**os.environ, **step.env}).returncode
        if code != 0:
            print(f"failed ({code}): {step.what}", file=sys.stderr)
            return code
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python helpers/setup.py", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", nargs="?", default="install", choices=COMMANDS,
                    help="install (default: set up only), lab, test or site")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="virtual environment folder (default: .venv)")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED,
                    help="data mirror to fill the cache from (default: ../shared/data)")
    ap.add_argument("--skip-teacher", action="store_true", help="do not train chapter 10's teacher now")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args(argv)
    if sys.version_info < MIN_PYTHON:
        ap.error(f"Python {'.'.join(map(str, MIN_PYTHON))} or newer is needed, this is {sys.version.split()[0]}")
    try:
        steps = plan(args.command, venv=args.venv.resolve(), shared=args.shared.resolve(),
                     skip_teacher=args.skip_teacher)
    except ValueError as e:
        ap.error(str(e))
    if not args.shared.is_dir():
        print(f"no data mirror at {args.shared}: the loaders download the data on first use")
    if args.dry_run:
        for step in steps:
            print(show(step))
        return 0
    return run(steps)


if __name__ == "__main__":
    sys.exit(main())
