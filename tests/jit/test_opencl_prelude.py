"""The OpenCL programs' helper functions (zyx/jit/opencl_prelude.py), run on the OpenCL device as kernels call them."""
import math

import numpy as np
import pyopencl as cl
import pytest

import zyx
from zyx.jit.compiler import build_source, kernel_options
from zyx.jit.opencl_prelude import MAX_FLOAT, prelude
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
__kernel void erf_given_exp(__global const float* x, __global float* y) {
  int i = get_global_id(0); float16 v = vload16(i, x); vstore16(zyx_erf_exp(v, exp(-(v * v))), i, y); }
__kernel void max_pairs(__global const float* x, __global float* y) {
  int i = get_global_id(0); y[i] = zyx_max_float(x[i], x[i ^ 1]); }
__kernel void fast_exp(__global const float* x, __global float* y) {
  int i = get_global_id(0); y[i] = zyx_fast_exp(x[i]); }
__kernel void fast_exp_sum(__global const float* x, __global float* y) {
  int i = get_global_id(0); y[i] = zyx_fast_exp_sum(x[i] + 60.0f, -60.0f); }
__kernel void fast_div(__global const float* x, __global float* y) {
  int i = get_global_id(0); y[i] = zyx_fast_div(x[i], 1.5f + fabs(x[i]) * 0.37f); }
__kernel void bf16_lanes(__global const float* x, __global float* y) {
  int i = get_global_id(0); vstore8(zyx_round_bf16_8(vload8(i, x)), i, y); }
__kernel void bf16_words(__global const float* x, __global float* y) {
  int i = get_global_id(0); float8 v = vload8(i, x);
  uint4 w = (uint4)(zyx_pack_bf16(v.s0, v.s1), zyx_pack_bf16(v.s2, v.s3), zyx_pack_bf16(v.s4, v.s5),
                    zyx_pack_bf16(v.s6, v.s7));
  vstore8(zyx_bf16_lanes_8(w), i, y); }
"""
PTX_CONVERSION = 'asm("cvt.rn.bf16x2.f32'

ERF_VALUES = np.concatenate([np.linspace(-6, 6, 96001), np.logspace(-30, 0, 3000), -np.logspace(-30, 0, 3000),
                             [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 4.0, 3.9999998, 0.99999994, 1e-45,
                              2.5]]).astype(np.float32)  # (erf's tests: its branches' edges, nan, infinities)
ERF_VALUES = np.pad(ERF_VALUES, (0, -len(ERF_VALUES) % 16))  # (whole vectors of 16 lanes)


def within_three_ulp_of_erf(out: np.ndarray) -> bool:
    """Whether `out`, erf of ERF_VALUES, is within 3 ulp of float64's erf wherever that is a number."""
    want = np.array([math.erf(float(v)) if not math.isnan(v) else math.nan for v in ERF_VALUES])
    finite = ~np.isnan(want)
    ulp = np.spacing(np.abs(want[finite]).astype(np.float32)).astype(np.float64)
    return bool((np.abs(out[finite] - want[finite]) <= 3 * ulp).all())


def ptx_written_in_c(helpers: str) -> str:
    """`helpers` with the inline-PTX conversion (zyx_bf16x2, defined where ZYX_PTX_CVT is) replaced by the C
    definitions its #else branch holds, and the maximum's max.NaN by its C form: the helpers ZYX_PTX_CVT selects,
    buildable on any OpenCL."""
    helpers = helpers.replace(MAX_FLOAT[1], MAX_FLOAT[3])
    lines = helpers.splitlines()
    ptx = next((k for k, line in enumerate(lines) if PTX_CONVERSION in line), None)
    if ptx is None:
        return helpers
    return "\n".join(lines[:ptx] + lines[ptx + 2:ptx + 4] + lines[ptx + 1:]) + "\n"


def run_helper(kernel: str, values: np.ndarray, width: int, options=(), ptx_in_c: bool = False,
               prefix: str = "") -> np.ndarray:
    """`kernel` of KERNELS on `values` (float32, whole vectors of `width`) on the OpenCL device; `ptx_in_c`: with the
    helpers NVIDIA's PTX conversions select (ZYX_PTX_CVT), the one inline-PTX conversion written in C; `prefix`:
    source lines before the helpers."""
    device = select_device()
    context = cl.Context([device])
    queue = cl.CommandQueue(context)
    helpers = prelude(False, False, KERNELS)
    if ptx_in_c:
        helpers, options = ptx_written_in_c(helpers), (*options, "-DZYX_PTX_CVT")
    program = build_source(context, device, prefix + helpers + KERNELS, options)
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
    with ZYX_NATIVE_MATH (GPUs: 1/|x| by native_recip) too."""
    values = ERF_VALUES
    out = run_helper(kernel, values, width, ("-DZYX_NATIVE_MATH",) if native else ())
    assert within_three_ulp_of_erf(out)
    assert np.isnan(out[np.isnan(values)]).all() and out[values == np.inf][0] == 1 and out[values == -np.inf][0] == -1


@pytest.mark.parametrize("off", ["1.00000012f", "0.99999994f"])
def test_erf_by_a_reciprocal_one_ulp_off_is_still_within_three_ulp(off):
    """On GPUs the polynomials take 1/|x| from native_recip (NVIDIA's rcp.approx: within 1 ulp; PoCL's is exact):
    with a reciprocal one ulp off either way (a macro in place of native_recip) zyx_erf stays within 3 ulp."""
    prefix = f"#define native_recip(a) ({off}/(a))\n"
    exact = run_helper("erf_lanes", ERF_VALUES, 16, ("-DZYX_NATIVE_MATH",))
    out = run_helper("erf_lanes", ERF_VALUES, 16, ("-DZYX_NATIVE_MATH",), prefix=prefix)
    assert not np.array_equal(out, exact)  # (the macro took the reciprocal's place)
    assert within_three_ulp_of_erf(out)


@pytest.mark.parametrize("native", [False, True])
def test_erf_given_its_exponential_is_erf_bit_for_bit(native):
    """zyx_erf_exp(x, exp(-x·x)) (what a kernel computing that exponential anyway calls: print_opencl._erf_given_exp)
    gives zyx_erf's bits, nan and infinities included, with ZYX_NATIVE_MATH (GPUs) too."""
    values = np.concatenate([np.linspace(-6, 6, 24001), np.logspace(-30, 0, 1000), [np.inf, -np.inf, np.nan, 4.0,
                             -3.9999998, 0.99999994, 1.0]]).astype(np.float32)
    values = np.concatenate([values, np.zeros(-len(values) % 16, np.float32)])
    options = ("-DZYX_NATIVE_MATH",) if native else ()
    given, plain = run_helper("erf_given_exp", values, 16, options), run_helper("erf_lanes", values, 16, options)
    assert np.array_equal(given.view(np.uint32), plain.view(np.uint32))


def test_the_float_maximum_keeps_a_nan_from_either_side():
    """zyx_max_float built as the device builds kernels (max.NaN.f32 on NVIDIA sm_80 and later, its C form
    elsewhere): the larger value, nan where either operand is nan, as torch.maximum."""
    pairs = np.array([1.0, 2.0, -3.0, -np.inf, np.nan, 5.0, 6.0, np.nan, np.nan, np.nan, np.inf, 0.5], np.float32)
    device = zyx.OpenCL()
    out = run_helper("max_pairs", pairs, 1, kernel_options(device.traits, device.runtime))
    expected = np.maximum(pairs, pairs.reshape(-1, 2)[:, ::-1].reshape(-1))
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("native", [False, True])
def test_approximate_exponentials_and_divisions_err_far_below_half_precision(native):
    """zyx_fast_exp, zyx_fast_exp_sum (exp(a + b), a score and minus its row's maximum) and zyx_fast_div
    (transforms/approximate_math: the tensor-core attention kernels' softmax) are within 2**-16 of float64 (bfloat16
    keeps 8 bits, float16 11) over the online softmax's exponents, [-88, 0], and over quotients, with the GPUs' native
    functions (ZYX_NATIVE_MATH) too; exp(-inf) is 0."""
    x = np.concatenate([np.linspace(-88, 0, 8191), [-np.inf]]).astype(np.float32)
    options = ("-DZYX_NATIVE_MATH",) if native else ()
    exp, div = run_helper("fast_exp", x, 1, options), run_helper("fast_div", x[:-1], 1, options)
    exp_sum = run_helper("fast_exp_sum", x, 1, options)
    wide = x.astype(np.float64)
    assert exp[-1] == 0.0 and exp_sum[-1] == 0.0
    np.testing.assert_allclose(exp[:-1], np.exp(wide[:-1]), rtol=2**-16, atol=0)
    summed = (x[:-1] + np.float32(60.0)).astype(np.float64) - 60.0  # (a + 60 rounded to float32, as the kernel's a)
    np.testing.assert_allclose(exp_sum[:-1], np.exp(summed), rtol=2**-16, atol=0)
    np.testing.assert_allclose(div, wide[:-1] / (1.5 + np.abs(wide[:-1]) * np.float32(0.37)), rtol=2**-16, atol=0)


@pytest.mark.parametrize("kernel", ["bf16_lanes", "bf16_words"])
@pytest.mark.parametrize("ptx_in_c", [False, True])
def test_bfloat16_lanes_round_and_unpack_as_numpys_cast(kernel, ptx_in_c):
    """zyx_round_bf16_8 (integer arithmetic; where PTX conversions exist, two lanes a cvt unpacked by
    zyx_bf16_lanes_8, whose lane order this checks with the cvt written in C), and 16-bit values packed two a word
    by zyx_pack_bf16 and read back as lanes (print_opencl._words): each lane rounded to nearest even as ml_dtypes'
    bfloat16 cast, bit for bit, ties, infinities and the largest values included; nan stays nan."""
    import ml_dtypes
    rng = np.random.default_rng(3)
    ties = (rng.integers(0, 1 << 16, 4096, dtype=np.uint32) << 16 | 0x8000).view(np.float32)
    values = np.concatenate([rng.standard_normal(4096).astype(np.float32) * 1e3, ties,
                             np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 3.3895314e38, -3.3895314e38, 1e-40],
                                      np.float32)])
    values = np.concatenate([values, np.zeros(-len(values) % 8, np.float32)])
    out = run_helper(kernel, values, 8, ptx_in_c=ptx_in_c)
    with np.errstate(over="ignore"):
        expected = values.astype(ml_dtypes.bfloat16).astype(np.float32)
    same = (out.view(np.uint32) == expected.view(np.uint32)) | (np.isnan(out) & np.isnan(expected))
    assert same.all(), (values[~same][:5], out[~same][:5], expected[~same][:5])


@pytest.mark.parametrize("ptx", [False, True])
def test_each_helper_brings_what_it_calls(ptx):
    """A kernel naming any one helper gets every helper that one calls, with and without ZYX_PTX_CVT (a float16
    kernel once got zyx_round_bf16_N's PTX form without the helpers it calls), built on this machine's OpenCL (the
    PTX conversion written in C; zyx_round_tf32, inline PTX alone, left out)."""
    from zyx.jit.opencl_prelude import CALLED_HELPERS
    device = select_device()
    context = cl.Context([device])
    names = sorted({name for functions, _ in CALLED_HELPERS for name in functions} - {"zyx_round_tf32"})
    for name in names:
        body = f"/* {name}( */ __kernel void k(__global float* y) {{ y[get_global_id(0)] = 0.0f; }}\n"
        helpers = prelude(False, False, body)
        build_source(context, device, (ptx_written_in_c(helpers) if ptx else helpers) + body,
                     ("-DZYX_PTX_CVT",) if ptx else ())


def test_kernels_combined_into_one_program_keep_their_attributes():
    """A kernel with a work-group size attribute (a warpgroup product's) and a plain one (the sum of its partials)
    built as one program: each whole, both run."""
    from zyx.jit.opencl_prelude import combine_sources
    sized = ("__kernel __attribute__((reqd_work_group_size(4, 1, 1))) void sized(__global float* y) {\n"
             "  int i = get_global_id(0); y[i] = zyx_max_float(2.0f * i, -1.0f); }\n")
    plain = "__kernel void plain(__global float* y) { int i = get_global_id(0); y[i] += 1.0f; }\n"
    combined = combine_sources([prelude(False, False, sized) + sized, plain])
    assert "reqd_work_group_size(4, 1, 1))) void sized" in combined and "__kernel void plain" in combined
    device = select_device()
    context = cl.Context([device])
    queue = cl.CommandQueue(context)
    program = build_source(context, device, combined)
    y = cl.Buffer(context, cl.mem_flags.READ_WRITE, 8 * 4)
    program.sized(queue, (8,), (4,), y)
    program.plain(queue, (8,), None, y)
    out = np.empty(8, np.float32)
    cl.enqueue_copy(queue, out, y)
    np.testing.assert_array_equal(out, 2 * np.arange(8) + 1)
