"""The OpenCL programs' helper functions (zyx/jit/opencl_prelude.py), run on the OpenCL device as kernels call them."""
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
"""


@pytest.mark.parametrize("kernel,width", [("scalar", 1), ("lanes", 16)])
def test_rounding_to_float16_in_registers_is_numpys_cast(kernel, width, float16_ties):
    """zyx_round_half and its vector form (register arithmetic, no memory: see _half_rounding_helper) give
    numpy's float16 cast bit for bit at every tie, past the largest value, for nan, infinities and subnormals."""
    device = select_device()
    context = cl.Context([device])
    queue = cl.CommandQueue(context)
    program = build_source(context, device, prelude(False, False, KERNELS) + KERNELS)
    values = float16_ties
    flags = cl.mem_flags
    source = cl.Buffer(context, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=values)
    rounded = cl.Buffer(context, flags.WRITE_ONLY, values.nbytes)
    getattr(program, kernel)(queue, (len(values) // width,), None, source, rounded)
    out = np.empty_like(values)
    cl.enqueue_copy(queue, out, rounded)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).astype(np.float32)
    same = (out.view(np.uint32) == expected.view(np.uint32)) | (np.isnan(out) & np.isnan(expected))
    assert same.all(), (values[~same][:5], out[~same][:5], expected[~same][:5])
