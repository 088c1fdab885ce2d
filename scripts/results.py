#!/usr/bin/env python3
"""Rewrite README's results table from the executed notebooks.

Reads, from each notebooks/NN_*.ipynb, the ``RESULTS {json}`` line printed by ``helpers.report`` and the
execution time that nbclient recorded in the cells' metadata, and writes them between the markers
``<!-- results:start -->`` and ``<!-- results:end -->`` in README.md. Every number in that table was printed
by a run. The table depends only on the committed notebooks (no clock, no machine), so running it twice changes
nothing; tests/test_notebooks.py checks that README's table is current.
"""
from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _stamp(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def notebook_seconds(nb: dict) -> float | None:
    """Summed cell execution time recorded by nbclient, or None if the notebook carries no timing."""
    total, found = 0.0, False
    for c in nb["cells"]:
        ex = c.get("metadata", {}).get("execution", {})
        a = ex.get("iopub.execute_input") or ex.get("iopub.status.busy")
        b = ex.get("shell.execute_reply") or ex.get("iopub.status.idle")
        if c["cell_type"] == "code" and a and b:
            total += (_stamp(b) - _stamp(a)).total_seconds()
            found = True
    return total if found else None


def results_line(nb: dict) -> dict | None:
    """The last ``RESULTS {json}`` line in the notebook's outputs."""
    found = None
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            text = o.get("text", "")
            text = "".join(text) if isinstance(text, list) else text
            for line in text.splitlines():
                if line.startswith("RESULTS "):
                    found = json.loads(line[len("RESULTS "):])
    return found


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(root: Path = ROOT) -> str:
    rows = ["| chapter | notebook | measured headline figures | run time on 2-core CPU |", "|---|---|---|---|"]
    total = 0.0
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):  # sorted: the same table every run
        nb = json.loads(path.read_text(encoding="utf-8"))
        res, sec = results_line(nb), notebook_seconds(nb)
        figures = "not executed yet" if res is None else ", ".join(
            f"{k} = {_fmt(v)}" for k, v in res.items() if k not in ("chapter", "seconds"))
        total += sec or 0.0
        rows.append(f"| {path.name[:2]} | [{path.name}](notebooks/{path.name}) | {figures} | "
                    f"{'–' if sec is None else f'{sec:.0f} s'} |")
    rows.append(f"| | **whole book** | | **{total / 60:.1f} min** |")
    return "\n".join(rows)


def main(root: Path = ROOT) -> int:
    """Rewrite the table in ``root``/README.md; the file is only written when the table changed."""
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"README.md has no {START} … {END} block", file=sys.stderr)
        return 1
    rows = table(root)
    new = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda m: f"{START}\n{rows}\n{END}", text, flags=re.S)
    if new != text:
        readme.write_text(new, encoding="utf-8")
    print(rows)
    print("README.md " + ("updated" if new != text else "already up to date"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
