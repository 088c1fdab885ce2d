#!/usr/bin/env python3
"""Build a notebook from its percent-format source: ``python scripts/nbsrc/build.py scripts/nbsrc/05_peft.py``.

Cells start with ``# %%`` (code; ``# %% tags=["answer"]`` adds tags) or ``# %% [markdown]`` (markdown: every line
after it starts with ``# ``, which is stripped). Writes ``notebooks/<same stem>.ipynb`` without outputs; execute it
with ``make notebooks NB=notebooks/<stem>.ipynb``.
"""
import json
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
HEADER = re.compile(r"^# %%(?P<md> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$")


def cells(text: str):
    kind, tags, lines = None, [], []
    for line in text.splitlines() + ["# %%"]:
        m = HEADER.match(line)
        if not m:
            lines.append(line)
            continue
        if kind is not None:
            body = "\n".join(lines).strip("\n")
            if kind == "markdown":
                body = "\n".join(ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in body.splitlines())
            yield kind, tags, body
        kind, tags, lines = ("markdown" if m["md"] else "code"), json.loads(m["tags"] or "[]"), []


def build(src: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    text = src.read_text(encoding="utf-8")
    text = text[text.index("# %%"):]  # drop the file's own docstring/header
    for i, (kind, tags, body) in enumerate(cells(text)):
        cell = nbformat.v4.new_markdown_cell(body) if kind == "markdown" else nbformat.v4.new_code_cell(body)
        if tags:
            cell.metadata["tags"] = tags
        cell.id = f"{src.stem[:2]}-{i:03d}"  # stable ids: a rebuild changes only what changed
        nb.cells.append(cell)
    out = ROOT / "notebooks" / f"{src.stem}.ipynb"
    nbformat.write(nb, out)
    return out


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print("wrote", build(Path(arg)))
