#!/usr/bin/env python3
"""Write classroom copies of the notebooks without the exercises' answers: ``make student`` (→ ``student/``).

Every cell tagged ``answer`` loses its source and outputs: a code cell becomes a placeholder for the student's
own attempt, a markdown cell a one-line note. Everything else (the chapter's code and its executed outputs)
stays, so a student reads the chapter as committed and attempts the exercises first. The copies are gitignored.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
CODE_PLACEHOLDER = "# 你的答案 · Your answer\n"
MARKDOWN_PLACEHOLDER = "*(答案已移除:先自己試試看 · answer removed: try it yourself first)*"


def is_answer(cell) -> bool:
    return "answer" in cell.get("metadata", {}).get("tags", [])


def strip_answers(nb: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, int]:
    """A copy of `nb` whose answer cells are placeholders; returns it and the number of cells emptied."""
    out, n = copy.deepcopy(nb), 0
    for cell in out.cells:
        if not is_answer(cell):
            continue
        n += 1
        cell.metadata.pop("jupyter", None)  # answers are collapsed in the book; the placeholder is not
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.source, cell.outputs, cell.execution_count = CODE_PLACEHOLDER, [], None
        else:
            cell.source = MARKDOWN_PLACEHOLDER
    return out, n


def write_student_copies(notebooks: list[Path], dest: Path) -> list[tuple[Path, int]]:
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        if path.suffix != ".ipynb":
            raise ValueError(f"{path}: not a notebook (.ipynb); pass notebooks/NN_name.ipynb")
        nb, n = strip_answers(nbformat.read(path, as_version=4))
        target = dest / path.name
        nbformat.write(nb, target)
        written.append((target, n))
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/[0-9][0-9]_*.ipynb")
    ap.add_argument("--out", type=Path, default=ROOT / "student", help="folder for the copies (default: student/)")
    args = ap.parse_args(argv)
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for target, n in write_student_copies(notebooks, args.out):
        print(f"{target}: {n} answer cell(s) removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
