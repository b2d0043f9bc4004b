"""The API reference builds (docs/build_api.py, pdoc), and every public name has a docstring to put in it."""
from __future__ import annotations

import inspect
import runpy
from pathlib import Path

import pytest

import zyx
import zyx.distributed
import zyx.nn.functional

BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "build_api.py"


def _undocumented(value: object) -> list[str]:
    """`value` itself if it has no docstring, and for a class each public attribute zyx defines without one."""
    missing = [] if (inspect.getdoc(value) or "").strip() else ["(itself)"]
    if inspect.isclass(value):
        for name in dir(value):
            owner = next((k for k in value.__mro__ if name in vars(k)), None)
            if name.startswith("_") or owner is None or owner.__module__ == "builtins":
                continue
            if isinstance(inspect.getattr_static(value, name), (int, float, str, tuple, frozenset, type(None))):
                continue  # a class constant
            if not (inspect.getdoc(getattr(value, name)) or "").strip():
                missing.append(name)
    return missing


@pytest.mark.parametrize("module", [zyx, zyx.nn, zyx.nn.functional, zyx.distributed], ids=lambda m: m.__name__)
def test_every_public_name_has_a_docstring(module):
    missing = {name: _undocumented(getattr(module, name)) for name in module.__all__}
    assert {name: what for name, what in missing.items() if what} == {}


def test_api_reference_builds(tmp_path):
    pytest.importorskip("pdoc")
    build = runpy.run_path(str(BUILD_SCRIPT))["build"]
    pages = build(tmp_path)
    assert {p.relative_to(tmp_path).as_posix() for p in pages} >= {
        "zyx.html", "zyx/nn.html", "zyx/nn/functional.html", "zyx/nn/init.html", "zyx/distributed.html"}
    assert not any("jit" in p.name or "runtime" in p.name for p in pages)  # internals stay out
    tensor_page = (tmp_path / "zyx.html").read_text()
    assert "masked_fill" in tensor_page and "Tensor" in tensor_page
    assert "cross_entropy" in (tmp_path / "zyx" / "nn" / "functional.html").read_text()
    assert "average_gradients" in (tmp_path / "zyx" / "distributed.html").read_text()
