"""The conventions every chapter notebook shares (README, "Contributing · 撰寫慣例"), checked on the committed
notebooks' JSON. Nothing is executed, so these tests take seconds: `make check`.

Each test names the notebook and the cell (0-based index, as `nbformat` counts) that breaks a rule.
"""
from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("colab", ROOT / "scripts" / "colab_cell.py")
colab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(colab)
TOC_FILE = ROOT / "data" / "toc.json"
SHARED_TOC_FILE = ROOT.parent / "shared" / "book" / "toc.json"  # the book's table of contents, when checked out
TOC = json.loads(TOC_FILE.read_text(encoding="utf-8"))
CHAPTERS = {ch["notebook"]: ch for ch in TOC["chapters"]}
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SUMMARY, EXERCISES = "本章小結 · Summary", "思考題 · Exercises"
CONFIG_MARKDOWN = "**設定 · Configuration.**"
CONSTANT = re.compile(r"[A-Z][A-Z0-9_]*")

notebook_params = pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in NOTEBOOKS])


@functools.cache
def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    return "".join(cell["source"])


def chapter(path: Path) -> dict:
    assert path.name[:2] in CHAPTERS, f"{path.name}: no chapter {path.name[:2]} in data/toc.json"
    return CHAPTERS[path.name[:2]]


def code_cells(nb: dict) -> list[tuple[int, str, ast.Module]]:
    """(index, source, syntax tree) of every non-empty code cell; IPython magics become comments."""
    out = []
    for i, c in enumerate(nb["cells"]):
        if c["cell_type"] == "code" and source(c).strip():
            src = "\n".join("#" + line if line.lstrip().startswith(("%", "!")) else line
                            for line in source(c).splitlines())
            out.append((i, source(c), ast.parse(src)))
    return out


def headings(nb: dict) -> list[tuple[int, str]]:
    """(cell index, line) of every markdown heading line."""
    return [(i, line.strip()) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown"
            for line in source(c).splitlines() if line.lstrip().startswith("#")]


def section_cell(nb: dict, title: str) -> list[int]:
    """Cells holding a level-2 heading `## [N.M ]<title>`."""
    pattern = re.compile(r"##\s+(?:\d+\.\d+\s+)?" + re.escape(title) + r"\s*")
    return [i for i, h in headings(nb) if pattern.fullmatch(h)]


def toc_section(ch: dict, zh: str) -> dict | None:
    return next((s for s in ch["sections"] if s["zh"] == zh), None)


def is_helpers_report(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "report"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "helpers")


@functools.cache
def core_names() -> frozenset[str]:
    """`helpers.__all__`, read from helpers/__init__.py without importing it: the names used as `helpers.X`."""
    tree = ast.parse((ROOT / "helpers" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return frozenset(ast.literal_eval(node.value))
    raise AssertionError("helpers/__init__.py has no __all__ list")


@functools.cache
def module_names(module: str) -> frozenset[str] | None:
    """Top-level names that helpers/<module>.py defines or imports, or None if there is no such file."""
    path = ROOT / Path(*module.split(".")).with_suffix(".py")
    if not path.exists():
        return None
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


def is_helpers_import(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] == "helpers"
    return isinstance(node, ast.Import) and any(a.name.split(".")[0] == "helpers" for a in node.names)


def instead(names: list[str]) -> str:
    """What the convention writes instead of `from helpers import <names>`."""
    by_module: dict[str, list[str]] = {}
    for name in names:
        if (ROOT / "helpers" / f"{name}.py").exists():  # a module: import what is used from it
            by_module.setdefault(name, []).append("<the names used>")
            continue
        homes = sorted(p.stem for p in (ROOT / "helpers").glob("*.py") if p.stem != "__init__"
                       and any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name
                               for n in ast.parse(p.read_text(encoding="utf-8")).body))
        by_module.setdefault(homes[0] if homes else "", []).append(name)
    return "; ".join(f"`from helpers.{m} import {', '.join(ns)}`" if m else ", ".join(f"`helpers.{n}`" for n in ns)
                     for m, ns in by_module.items())


def bindings(tree: ast.AST):
    """(name, line) for every name the code binds (assignments, loop targets, defs, classes, arguments, imports),
    except the imports from helpers themselves."""
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            yield n.id, n.lineno
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield n.name, n.lineno
        elif isinstance(n, ast.arg):
            yield n.arg, n.lineno
        elif isinstance(n, (ast.Import, ast.ImportFrom)) and not is_helpers_import(n):
            yield from (((a.asname or a.name).split(".")[0], n.lineno) for a in n.names)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            yield n.name, n.lineno


# --- the table of contents ------------------------------------------------------------------------------------


def test_toc_copy_is_the_books():
    """data/toc.json is a copy of the book's table of contents (../shared/book/toc.json, where that exists)."""
    if not SHARED_TOC_FILE.exists():
        pytest.skip(f"{SHARED_TOC_FILE} is not checked out here")
    assert TOC_FILE.read_text(encoding="utf-8") == SHARED_TOC_FILE.read_text(encoding="utf-8"), \
        f"data/toc.json differs from {SHARED_TOC_FILE}: copy it again"


def test_toc_chapters_end_with_summary_and_exercises():
    """Where the book has 本章小結 and 思考題 they are a chapter's last two sections (the notebooks rely on it)."""
    for ch in TOC["chapters"]:
        zh = [s["zh"] for s in ch["sections"]]
        if "本章小結" in zh or "思考題" in zh:
            assert zh[-2:] == ["本章小結", "思考題"], f"chapter {ch['chapter']} ends with {zh[-2:]}"


# --- headings ----------------------------------------------------------------------------------------------------


@notebook_params
def test_every_toc_section_has_a_heading(path):
    """The check of ../shared/tools/check_notebooks.py: each section of the chapter has a heading with its number."""
    ch, heads = chapter(path), [h for _, h in headings(load(path))]
    missing = [s["id"] for s in ch["sections"]
               if not any(re.match(r"\s*#+\s*" + re.escape(s["id"]) + r"(?![.\d])", h) for h in heads)]
    assert not missing, f"{path.name}: no heading for section(s) {', '.join(missing)} of data/toc.json"


@notebook_params
def test_section_headings_match_toc(path):
    """Numbered headings read `## N.M <book title> · <English>` (### for N.M.K), as in data/toc.json, in its order."""
    ch = chapter(path)
    toc = {s["id"]: s for s in ch["sections"]}
    order = list(toc)
    seen = []
    for i, h in headings(load(path)):
        m = re.match(r"#+\s+(\d+(?:\.\d+)+)(?![.\d])", h)
        if not m:
            continue
        sid = m.group(1)
        assert sid in toc, f"{path.name} cell {i}: heading {h!r}: the book has no section {sid} (data/toc.json)"
        s = toc[sid]
        want = "#" * (sid.count(".") + 1) + f" {sid} {s['zh']} · {s['en']}"
        assert h == want, f"{path.name} cell {i}: heading\n  {h!r}\nshould read\n  {want!r}"
        seen.append(sid)
    assert seen == sorted(seen, key=order.index), f"{path.name}: headings out of the book's order: {seen}"


@notebook_params
def test_chapter_title(path):
    """The first cell starts with `# 第 N 章 <book title> · <English title>`."""
    ch, cells = chapter(path), load(path)["cells"]
    want = f"# 第 {ch['chapter']} 章 {ch['zh']} · {ch['en']}"
    first = source(cells[0]).splitlines()[0] if cells[0]["cell_type"] == "markdown" and source(cells[0]) else ""
    assert first == want, f"{path.name} cell 0: title\n  {first!r}\nshould read\n  {want!r}"


@notebook_params
def test_colab_badge_and_install_cell(path):
    """Cell 0 carries the "Open in Colab" badge for this notebook and cell 1 is the guarded install cell, exactly as
    scripts/colab_cell.py writes them."""
    nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
    assert colab.is_current(nb, path.name), f"{path.name}: run `python scripts/colab_cell.py {path.relative_to(ROOT)}`"


# --- the configuration cell and imports --------------------------------------------------------------------------


@notebook_params
def test_config_cell(path):
    """Code cell 2 (after the imports) holds only UPPERCASE constants, SEED among them, after a 設定 markdown cell."""
    nb = load(path)
    code = [c for c in code_cells(nb) if not c[1].startswith(colab.MARKER)]  # after the Colab install cell
    assert len(code) >= 2, f"{path.name}: needs an imports cell and a configuration cell"
    (setup, _, setup_tree), (cfg, cfg_src, cfg_tree) = code[:2]
    assert any(isinstance(n, ast.Import) and any(a.name == "helpers" for a in n.names) for n in setup_tree.body), \
        f"{path.name} cell {setup}: the first code cell is the imports/setup cell and has `import helpers`"
    before = nb["cells"][cfg - 1]
    intro = source(before).lstrip() if before["cell_type"] == "markdown" else ""
    assert intro.startswith(CONFIG_MARKDOWN), f"{path.name} cell {cfg - 1}: the configuration cell {cfg} needs a " \
                                              f"markdown cell right before it that starts with {CONFIG_MARKDOWN}"
    names = []
    for stmt in cfg_tree.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(
            stmt, ast.AnnAssign) else []
        flat = [n for t in targets for n in (t.elts if isinstance(t, ast.Tuple) else [t])]
        ok = flat and all(isinstance(n, ast.Name) and CONSTANT.fullmatch(n.id) for n in flat)
        line = cfg_src.splitlines()[stmt.lineno - 1].strip()
        assert ok, f"{path.name} cell {cfg} line {stmt.lineno}: {line!r}: the configuration cell holds only " \
                   "UPPERCASE constants (NAME = value)"
        names += [n.id for n in flat]
    assert "SEED" in names, f"{path.name} cell {cfg}: the configuration cell has no SEED = ..."
    assert "GPU" in cfg_src + source(before), \
        f"{path.name} cell {cfg}: say what to raise on a GPU (`STEPS = 2000  # GPU: 5000`)"
    used = [i for i, _, tree in code if i != cfg and any(isinstance(n, ast.Name) and n.id == "SEED"
                                                         and isinstance(n.ctx, ast.Load) for n in ast.walk(tree))]
    assert used, f"{path.name}: SEED (cell {cfg}) is never used; seed the runs with it"


@notebook_params
def test_import_style(path):
    """`import helpers` for the core (`helpers.fit`), `from helpers.<module> import Name` for the rest; no aliases,
    no `sys.path`, and no imported helpers name reassigned by the notebook."""
    core, imported, problems = core_names(), {}, []
    code = code_cells(load(path))
    for i, src, tree in code:
        if "sys.path" in src:
            problems.append(f"cell {i}: sys.path: helpers comes from the editable install (`make install`)")
        for n in ast.walk(tree):
            if isinstance(n, ast.Import):
                for a in n.names:
                    if a.name.split(".")[0] == "helpers" and (a.name != "helpers" or a.asname):
                        problems.append(f"cell {i} line {n.lineno}: `{ast.unparse(n)}`: write `import helpers`, or "
                                        f"`from {a.name} import Name`")
            elif isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "helpers":
                if n.module == "helpers":
                    problems.append(f"cell {i} line {n.lineno}: `{ast.unparse(n)}`: write "
                                    + instead([a.name for a in n.names]))
                    continue
                defined = module_names(n.module)
                for a in n.names:
                    if a.asname:
                        problems.append(f"cell {i} line {n.lineno}: `{a.name} as {a.asname}`: no aliases")
                    if defined is None:
                        problems.append(f"cell {i} line {n.lineno}: there is no module {n.module}")
                    elif a.name not in defined:
                        problems.append(f"cell {i} line {n.lineno}: {n.module} has no {a.name}")
                    imported[a.asname or a.name] = i
            elif (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "helpers"
                  and n.attr not in core and not n.attr.startswith("__")):
                problems.append(f"cell {i} line {n.lineno}: `helpers.{n.attr}` is not in helpers.__all__: write "
                                + instead([n.attr]))
    for i, _, tree in code:
        for name, line in bindings(tree):
            if name == "helpers":
                problems.append(f"cell {i} line {line}: rebinds `helpers`")
            elif name in imported:
                problems.append(f"cell {i} line {line}: `{name}` (imported from helpers in cell {imported[name]}) is "
                                "reassigned; give the local version its own name")
    assert not problems, f"{path.name}:\n  " + "\n  ".join(dict.fromkeys(problems))


# --- the end of a chapter: summary, RESULTS, exercises -----------------------------------------------------------


@notebook_params
def test_summary_and_exercises(path):
    """The last sections: `## N.x 本章小結 · Summary`, then `## N.y 思考題 · Exercises` with answers tagged `answer`
    (chapters whose book chapter has neither, like 00, end with the unnumbered `## 本章小結 · Summary`)."""
    nb, ch = load(path), chapter(path)
    level2 = [(i, h) for i, h in headings(nb) if re.match(r"##\s", h)]
    summary, exercises = toc_section(ch, "本章小結"), toc_section(ch, "思考題")
    want = [f"## {summary['id']} {SUMMARY}" if summary else f"## {SUMMARY}"]
    if exercises:
        want.append(f"## {exercises['id']} {EXERCISES}")
    last = [h for _, h in level2[-len(want):]]
    assert last == want, f"{path.name}: the last level-2 headings are {last}, should be {want}"
    if exercises:
        start = level2[-1][0]
        answers = [i for i, c in enumerate(nb["cells"][start:], start) if c["cell_type"] == "code"]
        untagged = [i for i in answers if "answer" not in nb["cells"][i].get("metadata", {}).get("tags", [])]
        assert answers, f"{path.name}: the exercises (cell {start} on) have no answer cells"
        assert not untagged, f"{path.name}: exercise answer cell(s) {untagged} are not tagged `answer`"


@notebook_params
def test_one_report_call_in_the_summary(path):
    """Exactly one `helpers.report(N, ...)` call, with the chapter's number, in the summary section."""
    nb, ch = load(path), chapter(path)
    calls = [(i, n) for i, _, tree in code_cells(nb) for n in ast.walk(tree) if is_helpers_report(n)]
    assert len(calls) == 1, f"{path.name}: {len(calls)} helpers.report( calls (cells {[i for i, _ in calls]}), want 1"
    (i, call), = calls
    start = section_cell(nb, SUMMARY)
    assert start, f"{path.name}: no `## {SUMMARY}` heading"
    end = (section_cell(nb, EXERCISES) or [len(nb["cells"])])[0]
    assert start[0] <= i < end, \
        f"{path.name} cell {i}: helpers.report( is outside the summary (cells {start[0]}-{end - 1})"
    first = call.args[0] if call.args else None
    assert isinstance(first, ast.Constant) and first.value == ch["chapter"], \
        f"{path.name} cell {i}: helpers.report's first argument should be the chapter number {ch['chapter']}"


# --- the committed outputs ---------------------------------------------------------------------------------------


@notebook_params
def test_executed_top_to_bottom_without_errors(path):
    """Code cells ran once each, in order (execution counts 1, 2, 3, ...), and no output is an error."""
    nb = load(path)
    rerun = f"re-execute it: make notebooks NB=notebooks/{path.name}"
    for n, (i, _, _) in enumerate(code_cells(nb), 1):
        cell = nb["cells"][i]
        assert cell.get("execution_count") == n, \
            f"{path.name} cell {i}: execution count {cell.get('execution_count')}, expected {n}; {rerun}"
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{path.name} cell {i}: error output {errors[0].get('ename')}: {errors[0].get('evalue')}"


@notebook_params
def test_one_results_line(path):
    """The outputs hold exactly one `RESULTS {json}` line, for this chapter, printed by the helpers.report cell."""
    nb, ch = load(path), chapter(path)
    found = []
    for i, c in enumerate(nb["cells"]):
        for o in c.get("outputs", []):
            text = o.get("text", o.get("data", {}).get("text/plain", ""))
            for line in ("".join(text) if isinstance(text, list) else text).splitlines():
                if line.startswith("RESULTS "):
                    found.append((i, line))
    assert len(found) == 1, f"{path.name}: {len(found)} RESULTS lines in the outputs (cells {[i for i, _ in found]})" \
                            f", want 1; re-execute it: make notebooks NB=notebooks/{path.name}"
    (i, line), = found
    assert json.loads(line[len("RESULTS "):])["chapter"] == ch["chapter"], f"{path.name} cell {i}: {line}"
    trees = {j: tree for j, _, tree in code_cells(nb)}
    assert i in trees and any(is_helpers_report(n) for n in ast.walk(trees[i])), \
        f"{path.name} cell {i}: the RESULTS line is not printed by the helpers.report( cell"


# --- README's results table ---------------------------------------------------------------------------------------


@pytest.fixture
def results(monkeypatch):
    """scripts/results.py as a module."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    return importlib.import_module("results")


def test_readme_table_is_current(results):
    """README's table is what `make results` makes from the committed notebooks."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(re.escape(results.START) + r"\n(.*?)\n" + re.escape(results.END), readme, re.S)
    assert block, f"README.md has no {results.START} ... {results.END} block"
    assert block.group(1) == results.table(ROOT), "README's results table is out of date: run `make results`"


def test_make_results_is_idempotent(results, tmp_path):
    """`make results` on a copy of the project: the first run writes the table, a second run changes nothing."""
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks", ignore=shutil.ignore_patterns("runs", "checkpoints"))
    assert results.main(tmp_path) == 0
    once = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert results.main(tmp_path) == 0
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == once
    assert results.table(tmp_path) in once
