"""docs/python.md: every ``python`` example runs as written, in order, in an empty folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    """The ``python`` fenced blocks of a Markdown text, in order."""
    return BLOCK.findall(text)


def test_the_page_has_examples_for_each_front_door_function() -> None:
    code = "\n".join(python_blocks(DOC.read_text(encoding="utf-8")))
    for name in ("train_classifier", "train_segmenter", "train_joint", "evaluate", "export_onnx",
                 "load_predictor", ".predict("):
        assert name in code, f"docs/python.md has no example of {name}"


@pytest.mark.slow
def test_python_doc_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DLMI_CACHE_DIR", str(tmp_path / "cache"))
    namespace: dict[str, object] = {"__name__": "docs_python"}
    for number, block in enumerate(python_blocks(DOC.read_text(encoding="utf-8")), start=1):
        exec(compile(block, f"docs/python.md block {number}", "exec"), namespace)  # noqa: S102
    result = namespace["result"]
    assert result.mask.shape == (120, 90) and result.mask.dtype == bool  # type: ignore[attr-defined]
    assert (tmp_path / "runs" / "joint" / "ensemble.json").is_file()
    assert (tmp_path / "exported" / "two_stage.onnx").is_file()
