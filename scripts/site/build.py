#!/usr/bin/env python3
"""Build the book's website from the committed notebooks: ``python scripts/site/build.py [--out site]``
(``make site``). Nothing is executed; the outputs are shown as committed. View it with
``python -m http.server -d site`` and http://127.0.0.1:8000.

The notebooks are staged in ``<out>/.build/src`` (only files whose content changed are rewritten, so a second
build is incremental) with three site-only edits: the Colab badge image points at a local copy (the pages load
nothing from the network), the Colab install cell is left out (it does nothing outside Colab), and the saved
ipywidgets state is dropped (the progress bars' text output is shown instead). Then Sphinx builds the HTML with
the configuration in this folder, and the result is checked for anything loaded from another host.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TOC = json.loads((ROOT / "data" / "toc.json").read_text(encoding="utf-8"))
sys.path.insert(0, str(ROOT / "scripts"))
from colab_cell import BADGE_IMG as BADGE_URL  # noqa: E402  (the badge and install cell the notebooks carry)
from colab_cell import MARKER as COLAB_MARKER  # noqa: E402

BADGE_LOCAL = "colab-badge.svg"
EXTERNAL = re.compile(r"""<(?:script|img|iframe|source)\b[^>]*\bsrc=["'](?:https?:)?//|"""
                      r"""<link\b(?=[^>]*\brel=["'](?:stylesheet|preload|modulepreload|icon)["'])[^>]*\bhref=["'](?:https?:)?//""",
                      re.I)

INTRO = """\
# {zh}

《{zh}》({author})的**可執行筆記本**網站:每章一本 Jupyter 筆記本,依書的目錄逐節對應,
每個從零寫出的元件都在程式旁用 `assert` 與 PyTorch、🤗 `transformers` 等函式庫比對數值。這裡顯示的是已提交、
實際執行過的版本(程式、輸出、圖表與數字都來自 2 核 CPU 上的一次完整執行);要自己執行,請見專案 README
(`make lab`,或 Windows 上的 `python helpers/setup.py lab`),或從各章頂端的 Colab 按鈕開啟。

左側是全書目錄,右上角可全文搜尋(中文、英文皆可)。

## 章節 · Chapters

"""


def chapters() -> list[tuple[dict, Path]]:
    """(toc entry, notebook path) for every chapter, in the book's order."""
    out = []
    for ch in TOC["chapters"]:
        found = sorted((ROOT / "notebooks").glob(f"{ch['notebook']}_*.ipynb"))
        if len(found) != 1:
            raise ValueError(f"chapter {ch['chapter']}: expected one notebooks/{ch['notebook']}_*.ipynb, "
                             f"found {len(found)}")
        out.append((ch, found[0]))
    return out


def site_notebook(nb: dict) -> dict:
    """The notebook as the site shows it: local badge image, no Colab install cell, no widget state."""
    if not isinstance(nb, dict) or "cells" not in nb:
        raise TypeError("expected a notebook (a dict with 'cells', as json.load gives)")
    nb = json.loads(json.dumps(nb))
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb["cells"]:
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "markdown" and BADGE_URL in src:
            cell["source"] = src.replace(BADGE_URL, BADGE_LOCAL)
        if cell["cell_type"] == "code" and src.startswith(COLAB_MARKER):
            tags = cell.setdefault("metadata", {}).setdefault("tags", [])
            if "remove-cell" not in tags:
                tags.append("remove-cell")
    return nb


def write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def index_page(chs: list[tuple[dict, Path]]) -> str:
    book = TOC["book"]
    lines = [INTRO.format(zh=book["zh"], author=book["author"]), '<ul class="chapter-list">']
    for ch, path in chs:
        href = f"notebooks/{path.stem}.html"
        lines.append(f'<li><a href="{href}">第 {ch["chapter"]} 章 {ch["zh"]}</a>'
                     f'<span class="en">{ch["en"]}</span></li>')
    lines += ["</ul>", "", "```{toctree}", ":hidden:", ":maxdepth: 2", ""]
    lines += [f"notebooks/{path.stem}" for _, path in chs]
    lines += ["```", ""]
    return "\n".join(lines)


def stage(stage_dir: Path) -> Path:
    """Write the Sphinx source folder; returns it."""
    src = stage_dir / "src"
    chs = chapters()
    wanted = {f"notebooks/{p.name}" for _, p in chs} | {"index.md", f"notebooks/{BADGE_LOCAL}"}
    for _, path in chs:
        nb = site_notebook(json.loads(path.read_text(encoding="utf-8")))
        write_if_changed(src / "notebooks" / path.name, json.dumps(nb, ensure_ascii=False, indent=1) + "\n")
    write_if_changed(src / "notebooks" / BADGE_LOCAL, (HERE / "_static" / BADGE_LOCAL).read_text(encoding="utf-8"))
    write_if_changed(src / "index.md", index_page(chs))
    for old in src.rglob("*"):  # a renamed or removed notebook leaves no stale page behind
        if old.is_file() and old.relative_to(src).as_posix() not in wanted:
            old.unlink()
    mathjax = stage_dir / "static" / "mathjax"
    if not (mathjax / "MathJax.js").exists():
        import jupyter_server_mathjax
        shutil.copytree(Path(jupyter_server_mathjax.__file__).parent / "static", mathjax, dirs_exist_ok=True)
    return src


def mirror(src: Path, dst: Path, keep: set[str]) -> None:
    """Make `dst` hold the files of `src` (copying only new or changed ones), apart from the top-level names `keep`."""
    for f in src.rglob("*"):
        if f.is_file():
            to = dst / f.relative_to(src)
            st = f.stat()
            if not to.exists() or to.stat().st_size != st.st_size or to.stat().st_mtime < st.st_mtime:
                to.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, to)
    for f in sorted(dst.rglob("*"), reverse=True):  # files before their folders
        rel = f.relative_to(dst)
        if rel.parts[0] in keep or (src / rel).exists():
            continue
        f.unlink() if f.is_file() or f.is_symlink() else f.rmdir()


def external_loads(out: Path) -> list[str]:
    """'page: tag' for every script, stylesheet, image or frame in the built pages that comes from another host."""
    found = []
    for page in out.rglob("*.html"):
        if ".build" in page.parts:
            continue
        text = page.read_text(encoding="utf-8")
        for m in EXTERNAL.finditer(text):
            found.append(f"{page.relative_to(out)}: {text[m.start():m.start() + 120].split('>')[0]}>")
    return found


def build(out: Path, quiet: bool = True) -> Path:
    from sphinx.cmd.build import build_main

    out = Path(out).resolve()
    if out == ROOT or out in ROOT.parents:
        raise ValueError(f"refusing to build the site into {out}: give a folder of its own, like site/")
    stage_dir = out / ".build"
    src = stage(stage_dir)
    os.environ["LLMBOOK_SITE_STAGE"] = str(stage_dir)
    # Sphinx writes into .build/html (MyST-NB puts its image files next to that folder, in .build/jupyter_execute),
    # then the pages are mirrored into `out`.
    html = stage_dir / "html"
    args = ["-b", "html", "-c", str(HERE), "-d", str(stage_dir / "doctrees"), "-j", "auto", str(src), str(html)]
    if quiet:
        args.insert(0, "-q")
    if build_main(args) != 0:
        raise RuntimeError("sphinx-build failed (see the messages above)")
    mirror(html, out, keep={stage_dir.name, "_test"})  # _test: tests/test_site.py's screenshots
    bad = external_loads(out)
    if bad:
        raise RuntimeError("the site loads files from other hosts (it must work offline):\n  " + "\n  ".join(bad))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "site", help="output folder (default: site/)")
    ap.add_argument("--verbose", action="store_true", help="show Sphinx's progress")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = build(args.out, quiet=not args.verbose)
    print(f"site built in {time.perf_counter() - t0:.0f} s: {out / 'index.html'}  "
          f"(view: python -m http.server -d {os.path.relpath(out)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
