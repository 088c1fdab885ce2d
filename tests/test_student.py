"""`make student`: classroom copies keep the chapter and lose every answer (source and outputs)."""
import json
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from student import CODE_PLACEHOLDER, is_answer, main, strip_answers  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _output_texts(cell) -> list[str]:
    texts = []
    for out in cell.get("outputs", []):
        texts.append("".join(out.get("text", "")))
        for value in out.get("data", {}).values():
            texts.append(value if isinstance(value, str) else "".join(value) if isinstance(value, list) else "")
    return [t for t in texts if t]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_answer_survives(path, tmp_path):
    original = nbformat.read(path, as_version=4)
    assert main([str(path), "--out", str(tmp_path)]) == 0
    student = nbformat.read(tmp_path / path.name, as_version=4)
    assert len(student.cells) == len(original.cells)
    student_json = json.dumps(student, ensure_ascii=False)
    answers = [c for c in original.cells if is_answer(c)]
    if path.name[:2] != "00":
        assert answers, f"{path.name}: no cell tagged `answer`"
    for before, after in zip(original.cells, student.cells):
        if not is_answer(before):
            assert after == before  # the chapter itself is untouched
            continue
        if after.cell_type == "code":
            assert after.source == CODE_PLACEHOLDER and after.outputs == [] and after.execution_count is None
    # Nothing of an answer is left anywhere in the copy (lines it shares with the chapter itself aside).
    chapter_json = json.dumps([c for c in original.cells if not is_answer(c)], ensure_ascii=False)
    checked = 0
    for cell in answers:
        lines = cell.source.splitlines() + [ln for text in _output_texts(cell) for ln in text.splitlines()]
        for line in lines:
            needle = json.dumps(line.strip(), ensure_ascii=False)[1:-1]
            if len(line.strip()) > 25 and needle not in chapter_json:
                assert needle not in student_json, (path.name, line)
                checked += 1
    assert checked or not answers, f"{path.name}: no answer line was distinctive enough to check"


def test_markdown_answers_and_bad_input(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("secret reasoning", metadata={"tags": ["answer"]}),
                nbformat.v4.new_code_cell("print(42)", metadata={"tags": ["answer"]}),
                nbformat.v4.new_code_cell("x = 1")]
    out, n = strip_answers(nb)
    assert n == 2 and "secret" not in out.cells[0].source and out.cells[1].source == CODE_PLACEHOLDER
    assert out.cells[2].source == "x = 1" and nb.cells[0].source == "secret reasoning"  # the original is untouched
    bad = tmp_path / "notes.txt"
    bad.write_text("x")
    with pytest.raises(ValueError, match="not a notebook"):
        main([str(bad), "--out", str(tmp_path / "out")])
