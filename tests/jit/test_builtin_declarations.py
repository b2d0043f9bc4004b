"""PoCL programs carry the declarations of only the builtins they name (builtin_declarations.py): taken from the
header the device's PoCL reads, they build the same code; a program they cannot build is built with the whole
header, with one warning, and the device keeps the whole header from then on."""
import re
import uuid
from types import SimpleNamespace

import numpy as np
import pyopencl as cl
import pytest

from test_compiler import context, device  # noqa: F401 - fixtures: the JIT's OpenCL device and a context
from zyx.jit import builtin_declarations, compiler
from zyx.jit.builtin_declarations import GUARD, DeclarationsFallbackWarning, HeaderDeclarations, header_of
from zyx.jit.compiler import build_source


@pytest.fixture
def pocl(device):
    if header_of(device.platform) is None:
        pytest.skip(f"{device.platform.name}: not PoCL, or its opencl-c.h is not beside its library")
    return device


@pytest.fixture
def fresh_choice(monkeypatch):
    """Each platform's declarations found again, and forgotten after the test (a fallback changes them)."""
    monkeypatch.setattr(builtin_declarations, "_platform_declarations", {})


def run(context, device, program, kernel, values: np.ndarray, items: int) -> np.ndarray:
    queue = cl.CommandQueue(context, device)
    buffer = cl.Buffer(context, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR, hostbuf=values)
    getattr(program, kernel)(queue, (items,), None, buffer)
    out = np.empty_like(values)
    cl.enqueue_copy(queue, out, buffer)
    queue.finish()
    return out


def test_the_header_splits_into_directives_and_declarations_by_builtin(pocl):
    header = header_of(pocl.platform)
    declarations = HeaderDeclarations.parse(header.read_text())
    assert declarations is not None and {"exp", "vload4", "barrier", "convert_int4", "isnan"} <= declarations.builtins
    text = declarations.for_source("__kernel void k(__global float* x) { x[0] = exp(x[0]); }")
    kept = text.split("\n#line 1\n")[0]
    assert re.search(r"\bexp\(float", kept) and not re.search(r"\bsin\(", kept)  # (some headers name parameters)
    assert f"#define {GUARD}" not in kept and "#include" not in kept  # (PoCL read opencl-c-base.h before)
    assert len(text) < len(header.read_text()) / 10
    assert text.endswith("\n#line 1\n__kernel void k(__global float* x) { x[0] = exp(x[0]); }")


def test_string_literals_and_comments_name_no_builtin(pocl):
    """Inline PTX ("max.NaN.f32", the prelude's float maximum on NVIDIA) and comments declare nothing: a builtin
    named only there brings none of its overloads into the program."""
    declarations = HeaderDeclarations.parse(header_of(pocl.platform).read_text())
    source = ('float m(float a) { float r; asm("max.NaN.f32 %0, %1;" : "=f"(r) : "f"(a)); return r; }\n'
              '/* sqrt( */ // sin(\n__kernel void k(__global float* x) { x[0] = exp(m(x[0])); }')
    kept = declarations.for_source(source).split("\n#line 1\n")[0]
    assert re.search(r"\bexp\(float", kept)
    assert not any(re.search(rf"\b{name}\(", kept) for name in ("max", "sqrt", "sin"))


@pytest.mark.parametrize("text", ["float __ovld exp(float);\n",  # no include guard
                                  "#ifndef _OPENCL_H_\n#define _OPENCL_H_\nfloat exp(float)\n#endif\n",  # no ';'
                                  "#ifndef _OPENCL_H_\n#define _OPENCL_H_\nint x;\n#endif\n"])  # no function
def test_a_header_of_another_shape_is_not_used(text):
    assert HeaderDeclarations.parse(text) is None


def test_only_pocl_is_looked_for():
    assert header_of(SimpleNamespace(name="NVIDIA CUDA")) is None


def test_a_program_built_with_its_declarations_computes_what_the_whole_header_does(context, pocl, fresh_choice,
                                                                                   monkeypatch):
    source = (f"/* {uuid.uuid4()} */ __kernel void k(__global float* x) {{ int i = get_global_id(0);\n"
              "  float4 v = vload4(i, x); v = select(exp(v) + native_sqrt(fabs(v)), (float4)(0.0f), isnan(v));\n"
              "  vstore4(v + (float4)(convert_float(convert_int_rtz(v.x))), i, x); }")
    options = []
    built = compiler._build
    monkeypatch.setattr(compiler, "_build", lambda program, device, opts: options.append(list(opts))
                        or built(program, device, opts))
    values = np.array([0.5, -2.0, np.nan, 3.25, 1.0, 0.0, -0.75, 8.0], np.float32)
    with_declarations = run(context, pocl, build_source(context, pocl, source), "k", values, 2)
    assert options == [[f"-D{GUARD}"]]
    monkeypatch.setitem(builtin_declarations._platform_declarations, pocl.platform.int_ptr, None)
    whole = run(context, pocl, build_source(context, pocl, source + " "), "k", values, 2)
    assert options[-1] == []
    np.testing.assert_array_equal(with_declarations, whole)
    expected = np.where(np.isnan(values), 0, np.exp(values) + np.sqrt(np.abs(values))).astype(np.float32)
    np.testing.assert_allclose(with_declarations, expected + np.trunc(expected[np.arange(8) // 4 * 4]), rtol=1e-3)


def test_a_program_naming_a_builtin_only_through_a_macro_falls_back_once(context, pocl, fresh_choice):
    """`ex##p` names exp only after preprocessing: its declaration is missing, the build fails, the whole header
    builds it, and the device's next programs are built with the whole header."""
    source = (f"/* {uuid.uuid4()} */ #define CALL(f, x) f##p(x)\n"
              "__kernel void k(__global float* x) { x[get_global_id(0)] = CALL(ex, x[get_global_id(0)]); }")
    with pytest.warns(DeclarationsFallbackWarning, match="whole opencl-c.h"):
        program = build_source(context, pocl, source)
    values = np.arange(4, dtype=np.float32)
    np.testing.assert_allclose(run(context, pocl, program, "k", values, 4), np.exp(values), rtol=1e-6)
    assert builtin_declarations.declarations_for(pocl) is None
