"""Every ```python block in README.md runs (in order, sharing one namespace, as a reader would paste them)."""
from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_readme_has_python_examples():
    assert BLOCKS


@pytest.mark.parametrize("upto", range(1, len(BLOCKS) + 1), ids=[f"block{i}" for i in range(1, len(BLOCKS) + 1)])
def test_readme_block_runs(upto, monkeypatch, capsys):
    monkeypatch.setenv("ZYX_DEVICE", "cpu")
    namespace: dict = {"__name__": "__readme__"}
    for number, source in enumerate(BLOCKS[:upto], start=1):
        exec(compile(source, f"README.md block {number}", "exec"), namespace)  # noqa: S102
