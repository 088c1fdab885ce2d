"""The book's website (`make site`, scripts/site/build.py), opened in a real headless Chromium.

The browser tests build the site into site/ (Sphinx rebuilds only what changed, so after `make site` this takes
seconds), serve it from a local http.server on 127.0.0.1 and drive Debian's chromium through Playwright (only
Playwright's Python package: no browser of its own is downloaded). Without /usr/bin/chromium they are skipped with
the command that installs it; .ci/run installs it. The screenshots go to site/_test/ (gitignored).
"""
from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import shutil
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "site"
SHOTS = SITE / "_test"
TOC = json.loads((ROOT / "data" / "toc.json").read_text(encoding="utf-8"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000


def _load_build_module():
    spec = importlib.util.spec_from_file_location("site_build", ROOT / "scripts" / "site" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


site_build = _load_build_module()


# --- the build script, without a browser -------------------------------------------------------------------------


def test_site_notebook_is_offline_and_skips_the_colab_cell():
    nb = {"metadata": {"widgets": {"application/vnd.jupyter.widget-state+json": {}}},
          "cells": [{"cell_type": "markdown", "metadata": {},
                     "source": ["# 第 1 章 T · T\n", f"[![Open in Colab]({site_build.BADGE_URL})](https://x/y)\n"]},
                    {"cell_type": "code", "metadata": {"tags": ["colab"]}, "outputs": [],
                     "source": "# Colab: on Google Colab this cell installs ...\nimport os\n"},
                    {"cell_type": "code", "metadata": {}, "outputs": [], "source": "import helpers\n"}]}
    out = site_build.site_notebook(nb)
    assert "widgets" not in out["metadata"]
    assert site_build.BADGE_URL not in out["cells"][0]["source"]
    assert f"]({site_build.BADGE_LOCAL})" in out["cells"][0]["source"]
    assert out["cells"][1]["metadata"]["tags"] == ["colab", "remove-cell"]
    assert "tags" not in out["cells"][2]["metadata"]
    assert nb["cells"][1]["metadata"]["tags"] == ["colab"], "the input notebook must not change"
    assert site_build.site_notebook(out) == out  # idempotent
    with pytest.raises(TypeError, match="notebook"):
        site_build.site_notebook(["not", "a", "notebook"])


def test_badge_and_install_cell_match_scripts_colab_cell():
    """The site recognises the badge and the install cell that scripts/colab_cell.py puts in the notebooks."""
    path = ROOT / "scripts" / "colab_cell.py"
    spec = importlib.util.spec_from_file_location("colab_cell", path)
    colab_cell = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(colab_cell)
    nb = colab_cell.nbformat.v4.new_notebook()
    nb.cells = [colab_cell.nbformat.v4.new_markdown_cell("# 第 1 章 T · T\n\ntext"),
                colab_cell.nbformat.v4.new_code_cell("import helpers")]
    out = site_build.site_notebook(json.loads(colab_cell.nbformat.writes(colab_cell.apply(nb, "01_t.ipynb"))))
    assert site_build.BADGE_URL not in out["cells"][0]["source"]
    assert "remove-cell" in out["cells"][1]["metadata"]["tags"]
    assert "remove-cell" not in out["cells"][2]["metadata"].get("tags", [])


def test_index_page_lists_the_chapters_in_the_books_order():
    chapters = site_build.chapters()
    assert [ch["chapter"] for ch, _ in chapters] == list(range(len(TOC["chapters"])))
    page = site_build.index_page(chapters)
    positions = [page.index(f"第 {ch['chapter']} 章 {ch['zh']}") for ch, _ in chapters]
    assert positions == sorted(positions)
    toctree = page[page.index("```{toctree}"):]
    assert [line for line in toctree.splitlines() if line.startswith("notebooks/")] == \
        [f"notebooks/{p.stem}" for _, p in chapters]


def test_external_loads_are_found(tmp_path):
    (tmp_path / "a.html").write_text('<script src="https://cdn.jsdelivr.net/x.js"></script>'
                                     '<link rel="stylesheet" href="//fonts.googleapis.com/css">'
                                     '<img src="_images/local.png"><a href="https://example.org">link</a>',
                                     encoding="utf-8")
    found = site_build.external_loads(tmp_path)
    assert len(found) == 2 and "cdn.jsdelivr.net" in found[0] and "fonts.googleapis.com" in found[1]


def test_refuses_to_build_over_the_project():
    with pytest.raises(ValueError, match="folder of its own"):
        site_build.build(ROOT)


# --- the built site in a browser ---------------------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="no Chromium at /usr/bin/chromium: install it with `apt-get install -y chromium fonts-noto-cjk` "
           "(.ci/run does this before `make test`)")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def base_url():
    """Build the site into site/ (incremental) and serve it on 127.0.0.1; yields the base URL."""
    site_build.build(SITE)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=SITE))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Playwright gives each launch a fresh temporary --user-data-dir of its own.
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, base_url):
    """A fresh page whose console errors, page errors and failed requests are collected in `page.problems`."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-TW")
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.problems = []
    pg.on("console", lambda m: pg.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.problems.append(f"page error: {e}"))
    pg.on("requestfailed", lambda r: pg.problems.append(f"request failed: {r.url} ({r.failure})"))
    pg.base = base_url
    yield pg
    context.close()


def _open(pg, path: str):
    response = pg.goto(f"{pg.base}/{path}", wait_until="load")
    assert response is not None and response.ok, f"{path}: HTTP {response and response.status}"
    pg.wait_for_load_state("networkidle")


def _screenshot(pg, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    pg.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


@needs_chromium
def test_index_lists_every_chapter(page):
    _open(page, "index.html")
    assert page.evaluate("document.documentElement.lang") == "zh-Hant"
    items = page.locator(".chapter-list li").all_inner_texts()
    want = [f"第 {ch['chapter']} 章 {ch['zh']}" for ch in TOC["chapters"]]
    assert len(items) == len(want) == 13
    for item, title in zip(items, want):
        assert item.startswith(title), f"index lists {item!r}, expected {title!r}"
    nav = page.locator(".bd-sidebar-primary .bd-links a").all_inner_texts()
    assert [t for t in nav if t.startswith("第 ")] == [f"{t} · {ch['en']}" for t, ch in zip(want, TOC["chapters"])], \
        "the sidebar should list the chapters in the book's order"
    link = page.locator(".chapter-list a", has_text="第 2 章")
    link.click()
    page.wait_for_load_state("load")
    assert page.url.endswith("/notebooks/02_gpt.html")
    assert not page.problems, "\n".join(page.problems)


@needs_chromium
def test_chapter_page_shows_headings_images_math_and_typography(page):
    _open(page, "notebooks/01_transformer.html")
    ch = next(c for c in TOC["chapters"] if c["chapter"] == 1)
    h1 = page.locator("article h1").first.inner_text()
    assert h1.startswith(f"第 1 章 {ch['zh']}")
    headings = [t.rstrip("#").strip() for t in page.locator("article h2").all_inner_texts()]
    assert "1.3 自注意力與多頭注意力機制 · Self-attention and multi-head attention" in headings
    sections = [f"{s['id']} {s['zh']} · {s['en']}" for s in ch["sections"] if s["id"].count(".") == 1]
    assert [h for h in headings if h[:1].isdigit()] == sections

    # every figure decoded (matplotlib outputs) and at least one of them
    images = page.evaluate("[...document.querySelectorAll('article img')].map(i => [i.src, i.naturalWidth])")
    assert any(w > 0 for _, w in images), images
    assert all(w > 0 for _, w in images), f"images that did not load: {[s for s, w in images if not w]}"

    # MathJax served from the site typesets the $…$ formulas
    page.wait_for_function("() => window.MathJax && MathJax.Hub && MathJax.Hub.queue.pending === 0 "
                           "&& document.querySelectorAll('span.MathJax, div.MathJax_Display').length > 0")
    rendered = page.evaluate("document.querySelectorAll('span.MathJax, div.MathJax_Display').length")
    raw = page.evaluate("document.querySelectorAll('span.math > script[type^=\"math/tex\"]').length")
    assert rendered > 0 and rendered >= raw, (rendered, raw)

    # Traditional-Chinese typography: CJK font stack and a roomy line height
    font, size, line = page.evaluate("""(() => { const s = getComputedStyle(document.querySelector('article p'));
        return [s.fontFamily, parseFloat(s.fontSize), parseFloat(s.lineHeight)]; })()""")
    assert "Noto Sans CJK TC" in font and "Microsoft JhengHei" in font, font
    assert line >= 1.6 * size, (line, size)

    assert not page.problems, "\n".join(page.problems)
    _screenshot(page, "chapter01.png")


@needs_chromium
@pytest.mark.parametrize("word, chapter_page", [("位置編碼", "01_transformer"), ("對比學習", "08_contrastive")])
def test_search_finds_a_chinese_word(page, word, chapter_page):
    _open(page, "index.html")
    page.locator("button.search-button-field:visible").first.click()  # the search box, as a reader opens it
    box = page.locator("input[name='q']:visible").first
    box.fill(word)
    box.press("Enter")
    page.wait_for_url("**/search.html?q=*")
    page.wait_for_selector("#search-results ul.search li")
    hrefs = page.eval_on_selector_all("#search-results ul.search li a", "els => els.map(a => a.getAttribute('href'))")
    assert any(h.split("#")[0].endswith(f"notebooks/{chapter_page}.html") for h in hrefs), (word, hrefs[:10])
    assert not page.problems, "\n".join(page.problems)
    if chapter_page == "01_transformer":
        _screenshot(page, "search.png")
