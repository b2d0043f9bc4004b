"""The OpenCL programs' helper functions (zyx/jit/opencl_prelude.py), run on the OpenCL device as kernels call them."""
import math

import numpy as np
import pyopencl as cl
import pytest

from zyx.jit.compiler import build_source
from zyx.jit.opencl_prelude import prelude
from zyx.runtime.platforms import select_device

KERNELS = """
__kernel void scalar(__global const float* x, __global float* y) {
  int i = get_global_id(0); y[i] = zyx_round_half(x[i]); }
__kernel void lanes(__global const float* x, __global float* y) {
  int i = get_global_id(0); vstore16(zyx_round_half_16(vload16(i, x)), i, y); }
__kernel void erf_scalar(__global const float* x, __global float* y) {
  int i = get_global_id(0); y[i] = zyx_erf(x[i]); }
__kernel void erf_lanes(__global const float* x, __global float* y) {
  int i = get_global_id(0); vstore16(zyx_erf(vload16(i, x)), i, y); }
"""


def run_helper(kernel: str, values: np.ndarray, width: int, options=()) -> np.ndarray:
    """`kernel` of KERNELS on `values` (float32, whole vectors of `width`) on the OpenCL device."""
    device = select_device()
    context = cl.Context([device])
    queue = cl.CommandQueue(context)
    program = build_source(context, device, prelude(False, False, KERNELS) + KERNELS, options)
    flags = cl.mem_flags
    source = cl.Buffer(context, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=values)
    result = cl.Buffer(context, flags.WRITE_ONLY, values.nbytes)
    getattr(program, kernel)(queue, (len(values) // width,), None, source, result)
    out = np.empty_like(values)
    cl.enqueue_copy(queue, out, result)
    return out


@pytest.mark.parametrize("kernel,width", [("scalar", 1), ("lanes", 16)])
def test_rounding_to_float16_in_registers_is_numpys_cast(kernel, width, float16_ties):
    """zyx_round_half and its vector form (register arithmetic, no memory: see _half_rounding_helper) give
    numpy's float16 cast bit for bit at every tie, past the largest value, for nan, infinities and subnormals."""
    values = float16_ties
    out = run_helper(kernel, values, width)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).astype(np.float32)
    same = (out.view(np.uint32) == expected.view(np.uint32)) | (np.isnan(out) & np.isnan(expected))
    assert same.all(), (values[~same][:5], out[~same][:5], expected[~same][:5])


@pytest.mark.parametrize("kernel,width", [("erf_scalar", 1), ("erf_lanes", 16)])
@pytest.mark.parametrize("native", [False, True])
def test_erf_is_within_three_ulp_of_float64s_with_nan_and_infinities(kernel, width, native):
    """zyx_erf (polynomials, both branches selected lane by lane: PoCL's erf is a scalar call per lane, 14x its
    exp's time) is within 3 ulp of float64's erf over [-6, 6] and thirty decades below 1, ±1 at ±inf, nan kept;
    with ZYX_NATIVE_ERF (GPUs) it is the builtin."""
    values = np.concatenate([np.linspace(-6, 6, 96001), np.logspace(-30, 0, 3000), -np.logspace(-30, 0, 3000),
                             [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 4.0, 3.9999998, 0.99999994, 1e-45,
                              2.5]]).astype(np.float32)
    values = np.concatenate([values, np.zeros(-len(values) % 16, np.float32)])
    out = run_helper(kernel, values, width, ("-DZYX_NATIVE_ERF",) if native else ())
    want = np.array([math.erf(float(v)) if not math.isnan(v) else math.nan for v in values])
    finite = ~np.isnan(want)
    ulp = np.spacing(np.abs(want[finite]).astype(np.float32)).astype(np.float64)
    assert (np.abs(out[finite] - want[finite]) <= 3 * ulp).all()
    assert np.isnan(out[~finite]).all() and out[values == np.inf][0] == 1 and out[values == -np.inf][0] == -1
