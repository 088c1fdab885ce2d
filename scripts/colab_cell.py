#!/usr/bin/env python3
"""Put an "Open in Colab" badge and a guarded install cell at the top of each chapter notebook.

    python scripts/colab_cell.py notebooks/*.ipynb          # add or update (idempotent)
    python scripts/colab_cell.py --check notebooks/*.ipynb  # exit 1 and list the notebooks that are not current

The badge goes on the first line of the title cell (cell 0, after the `# 第 N 章` heading); the install cell is cell 1.
On Colab that cell clones the repository, installs the packages the notebooks import (not the developer tools:
JupyterLab, nbval, pytest, ruff, the website's Sphinx and Playwright, which would fight Colab's own Jupyter) and the project itself,
then moves into the notebooks folder; the loaders then download the canonical data. Anywhere else it does nothing.
``scripts/nbsrc/build.py`` applies the same function, so a rebuilt notebook keeps the cell; tests/test_notebooks.py
checks that every committed notebook carries the current badge and cell.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

GITHUB_REPO = "llm-book-zh/notebooks"  # owner/name on GitHub: the one place to change when the repository moves
BRANCH = "main"
MARKER = "# Colab:"  # the install cell's first line starts with this (tests/test_notebooks.py skips that cell)
CELL_ID = "colab-setup"
BADGE_IMG = "https://colab.research.google.com/assets/colab-badge.svg"

# Packages in requirements.txt that only developers need; on Colab they would replace Colab's own Jupyter stack.
DEV_ONLY = ("jupyterlab", "ipykernel", "ipywidgets", "nbconvert", "nbclient", "nbval", "pytest", "ruff",
            "sphinx", "myst-nb", "jupyter-server-mathjax", "playwright")  # tests/test_colab.py keeps this current

CELL = '''\
# Colab: on Google Colab this cell installs the book's code and packages; anywhere else it does nothing.
import os
import subprocess
import sys


def running_in_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


if running_in_colab():
    import importlib
    import site

    repo = "/content/llm-book"
    if not os.path.isdir(repo):
        subprocess.run(["git", "clone", "--depth", "1", "--branch", "{branch}",
                        "https://github.com/{repo}.git", repo], check=True)
        dev_only = {dev_only}
        with open(os.path.join(repo, "requirements.txt"), encoding="utf-8") as f:
            wanted = [line.split("#")[0].strip() for line in f]
        wanted = [r for r in wanted if r and not r.startswith(dev_only)]
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wanted], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", repo], check=True)
    for folder in site.getsitepackages():
        site.addsitedir(folder)  # pick up the editable install without restarting the runtime
    importlib.invalidate_caches()
    os.chdir(os.path.join(repo, "notebooks"))
'''


def cell_source() -> str:
    return CELL.format(branch=BRANCH, repo=GITHUB_REPO, dev_only=repr(tuple(DEV_ONLY)))


def badge(name: str) -> str:
    url = f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/{BRANCH}/notebooks/{name}"
    return f"[![在 Colab 中開啟 · Open in Colab]({BADGE_IMG})]({url})"


def _title_lines(nb) -> list[str]:
    if not nb.cells or nb.cells[0].cell_type != "markdown":
        raise ValueError("the first cell must be the markdown title cell (`# 第 N 章 …`)")
    return nb.cells[0].source.splitlines()


def apply(nb, name: str):
    """Add or update the badge (line 3 of the title cell) and the install cell (cell 1) of notebook `nb`, whose
    file name is `name` (e.g. "01_transformer.ipynb"). Returns `nb`; applying twice equals applying once."""
    if not isinstance(name, str) or not name.endswith(".ipynb"):
        raise ValueError(f"name should be the notebook's file name, like '01_transformer.ipynb', not {name!r}")
    lines = [ln for ln in _title_lines(nb) if BADGE_IMG not in ln]
    while len(lines) > 1 and not lines[1].strip():  # one blank line between title and badge, one after
        del lines[1]
    nb.cells[0].source = "\n".join(lines[:1] + ["", badge(name), ""] + lines[1:]).rstrip("\n")
    cells = [c for c in nb.cells[1:] if not (c.cell_type == "code" and c.source.startswith(MARKER))]
    new = nbformat.v4.new_code_cell(cell_source())
    new.id = CELL_ID
    new.metadata = {"tags": ["colab"]}
    nb.cells = [nb.cells[0], new] + cells
    return nb


def is_current(nb, name: str) -> bool:
    lines = _title_lines(nb)
    ok_badge = len(lines) > 2 and lines[2] == badge(name)
    ok_cell = len(nb.cells) > 1 and nb.cells[1].cell_type == "code" and nb.cells[1].source == cell_source()
    return ok_badge and ok_cell


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--check", action="store_true", help="only report notebooks that lack the current badge/cell")
    args = ap.parse_args(argv)
    stale = []
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        if is_current(nb, path.name):
            continue
        if args.check:
            stale.append(path)
            continue
        nbformat.write(apply(nb, path.name), path)
        print("updated", path)
    if stale:
        print("without the current Colab badge and install cell (run `python scripts/colab_cell.py` on them):",
              *stale, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
