"""The examples in docs/hashing.md run and their assertions hold."""

from __future__ import annotations

import doctest
import pathlib
import re

import pytest

import parajob.hashing

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "hashing.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_the_document_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_documented_example_runs(index: int) -> None:
    code = compile(BLOCKS[index], f"{DOC}:block{index}", "exec")
    exec(code, {"__name__": f"docs_hashing_{index}"})


def test_docstring_examples_run() -> None:
    results = doctest.testmod(parajob.hashing, raise_on_error=False, verbose=False)
    assert results.attempted > 0
    assert results.failed == 0
