"""Sphinx configuration of the book's website (`make site`, scripts/site/build.py).

Sphinx + MyST-NB + sphinx-book-theme, the engine of Jupyter Book 1, used directly: the committed notebooks are
rendered with their outputs and never executed. Everything the pages load is in the built folder (MathJax from
the `jupyter-server-mathjax` package, no CDN, no web fonts), so the site works offline.
"""
import json
import os
from pathlib import Path

from sphinx.search import languages as search_languages
from sphinx.search.zh import SearchChinese

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# build.py stages the sources and the MathJax copy in <output>/.build (MyST-NB writes its image files there too).
STAGE = Path(os.environ.get("LLMBOOK_SITE_STAGE", ROOT / "site" / ".build"))
BOOK = json.loads((ROOT / "data" / "toc.json").read_text(encoding="utf-8"))["book"]

project = BOOK["zh"]
author = BOOK["author"]
copyright = f"{BOOK['author']} (book); notebook companion authors (code)"
language = "zh_TW"  # the theme's words (搜尋, 目錄, ...) in Traditional Chinese; <html lang> is set to zh-Hant below
html_search_language = "zh"  # Sphinx's Chinese search index: words segmented with jieba at build time
# jieba's dictionary is mostly Simplified: the book's Traditional-Chinese terms are added so that they are indexed
# whole (位置編碼, not 位置 + 編 + 碼) and a search for them finds them.
html_search_options = {"dict": str(HERE / "jieba_zh_hant.txt")}

extensions = ["myst_nb", "sphinx.ext.mathjax"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header", "misc.highlighting_failure"]

# Notebooks: rendered as committed, never executed.
nb_execution_mode = "off"
nb_ipywidgets_js = {}  # tqdm's widget state would otherwise pull the widget manager from a CDN
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None),
                              ("html", "application/vnd.jupyter.widget-state+json", None)]
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_dmath_double_inline = True
myst_update_mathjax = False
myst_heading_anchors = 3

# MathJax 2.7, copied from the jupyter-server-mathjax package into _static/mathjax by build.py. That copy has
# the combined configuration (TeX input, HTML-CSS output) and the STIX-Web fonts, all served from the site.
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
mathjax2_config = {
    # MyST marks each page "tex2jax_ignore" and each formula "math": typeset only the formulas (MathJax 3's
    # processHtmlClass, which MyST would set, means nothing to MathJax 2, so myst_update_mathjax is off).
    "tex2jax": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]], "processEscapes": True,
                "ignoreClass": "tex2jax_ignore|mathjax_ignore", "processClass": "math|output_area|tex2jax_process"},
    "HTML-CSS": {"availableFonts": [], "preferredFont": None, "webFont": "STIX-Web", "imageFont": None,
                 # its font-size probe font is url('about:blank'), which Chromium refuses with a console error
                 "styles": {"@font-face": {"font-family": "MathJax_Blank", "src": "local('MathJax_Blank')"}}},
    # The hidden MathML copy for screen readers (AssistiveMML) uses NativeMML's styles, whose @font-face rules
    # point at MathJax's TeX fonts, which the copy lacks (a 404 per font): let those fall back to local fonts.
    "NativeMML": {"styles": {f"@font-face /*{i}*/": {"font-family": family, "src": f"local('{family}')",
                                                     **({"font-weight": "bold"} if bold else {})}
                             for i, (family, bold) in enumerate(
                                 [("MathJax_Caligraphic-WEB", False), ("MathJax_Caligraphic-WEB", True),
                                  ("MathJax_AMS-WEB", False), ("MathJax_Script-WEB", False),
                                  ("MathJax_Fraktur-WEB", False), ("MathJax_Fraktur-WEB", True)], start=1)}},
    "fast-preview": {"disabled": True},  # its quick preview would fetch the TeX fonts, which the copy lacks
    "messageStyle": "none",
    "showMathMenu": False,
}

html_theme = "sphinx_book_theme"
html_context = {"default_mode": "light"}  # without it the theme logs "Got invalid theme mode" on a first visit
html_title = f"《{BOOK['zh'].split(':')[0]}》筆記本"
# _static here (CSS, favicon) and the MathJax copy that build.py stages next to the output.
html_static_path = ["_static", str(STAGE / "static")]
html_css_files = ["zh-hant.css"]
html_favicon = "_static/favicon.svg"
html_last_updated_fmt = None
html_copy_source = False
html_show_sourcelink = False
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "navigation_with_keys": False,
    "show_navbar_depth": 1,
}


def _set_lang(app, pagename, templatename, context, doctree):
    # BCP 47 for Traditional Chinese (the theme would write Sphinx's locale name, zh_TW).
    context["language"] = "zh-Hant"


class _SearchChinese(SearchChinese):
    # Sphinx 9.0's Chinese search ships the English stemmer (for the Latin words) but names it ChineseStemmer in
    # language_data.js, a ReferenceError in the browser that breaks search; its JavaScript name is EnglishStemmer.
    language_name = "English"


search_languages["zh"] = _SearchChinese


def setup(app):
    app.connect("html-page-context", _set_lang)
