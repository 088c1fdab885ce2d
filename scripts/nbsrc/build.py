#!/usr/bin/env python3
"""Build a notebook from its percent-format source: ``python scripts/nbsrc/build.py scripts/nbsrc/05_peft.py``.
``--sync-markdown scripts/nbsrc/05_peft.py`` copies only the prose into the executed notebook (code must be unchanged).

Cells start with ``# %%`` (code; ``# %% tags=["answer"]`` adds tags) or ``# %% [markdown]`` (markdown: every line
after it starts with ``# ``, which is stripped). Writes ``notebooks/<same stem>.ipynb`` without outputs, with the Colab
badge and install cell of ``scripts/colab_cell.py``; execute it
with ``make notebooks NB=notebooks/<stem>.ipynb``.
"""
import json
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import colab_cell  # noqa: E402  (the "Open in Colab" badge and install cell every notebook starts with)

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
    out = ROOT / "notebooks" / f"{src.stem}.ipynb"
    nbformat.write(_notebook(src), out)
    return out


def _notebook(src: Path):
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
    return colab_cell.apply(nb, f"{src.stem}.ipynb")


def sync_markdown(src: Path, executed: Path) -> int:
    """Copy the markdown cells of ``src`` into the already executed ``executed`` notebook (same cells and code,
    matched by id), so prose can be fixed without re-running. Refuses if any code cell differs. Returns the count."""
    fresh = nbformat.reads(json.dumps(_notebook(src)), as_version=4)
    nb = nbformat.read(executed, as_version=4)
    if [c.id for c in fresh.cells] != [c.id for c in nb.cells]:
        raise ValueError(f"{executed} has other cells than {src}: rebuild and re-execute it")
    for a, b in zip(fresh.cells, nb.cells):
        if a.cell_type != b.cell_type or (a.cell_type == "code" and a.source != b.source):
            raise ValueError(f"cell {a.id} differs in code: rebuild and re-execute {executed}")
    changed = 0
    for a, b in zip(fresh.cells, nb.cells):
        if a.cell_type == "markdown" and a.source != b.source:
            b.source, changed = a.source, changed + 1
    nbformat.write(nb, executed)
    return changed


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--sync-markdown"]:
        for arg in args[1:]:
            print(f"{sync_markdown(Path(arg), ROOT / 'notebooks' / (Path(arg).stem + '.ipynb'))} markdown cells synced")
    else:
        for arg in args:
            print("wrote", build(Path(arg)))
