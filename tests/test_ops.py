"""Every Tensor op against numpy: float32 and float64, odd shapes (0-size, 1-size, broadcasting), inputs that are
non-contiguous views (permuted, flipped, strided), large reductions, and integer and bool dtypes where they apply.

Tolerances (relative, absolute) per dtype, in TOL: float64 is compared to 1e-12 except where zyx uses an
approximation (WGSL's erf, inside gelu too: absolute 1e-6); float32 to ~1e-5; float16 to ~1e-3; ints and bools exactly.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import zyx

TOL = {
    "float64": dict(rtol=1e-12, atol=1e-12),
    "float32": dict(rtol=2e-5, atol=2e-6),
    "float16": dict(rtol=2e-3, atol=2e-3),
}
FLOATS = ["float32", "float64"]
LAYOUTS = ["contiguous", "permuted", "flipped", "strided"]
SHAPES = [(), (0,), (1,), (7,), (3, 5), (2, 0, 3), (2, 3, 4)]
_erf = np.vectorize(math.erf, otypes=[np.float64])


def assert_close(actual, expected, dtype, tol=None):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if dtype in TOL:
        np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64),
                                   **(tol or TOL[dtype]), equal_nan=True)
    else:
        np.testing.assert_array_equal(actual, expected)


def check_together(cases) -> None:
    """Check `(result, expected, dtype[, tol])` cases after realizing every result in one program: on OpenCL its
    kernels are one build, where PoCL spends about 0.3 s on each build before compiling anything."""
    zyx.realize(*(case[0] for case in cases))
    for number, (result, expected, dtype, *tol) in enumerate(cases):
        try:
            assert_close(result.numpy(), expected, dtype, *tol)
        except AssertionError as error:
            raise AssertionError(f"case {number} of {len(cases)}, shape {result.shape}: {error}") from None


def as_view(array: np.ndarray, layout: str, device) -> zyx.Tensor:
    """A tensor equal to `array` built as a non-contiguous view of another buffer."""
    if layout == "contiguous" or array.ndim == 0:
        return zyx.tensor(array, device=device)
    if layout == "permuted":
        order = list(reversed(range(array.ndim)))
        return zyx.tensor(np.ascontiguousarray(array.transpose(order)), device=device).permute(order)
    if layout == "flipped":
        axes = list(range(array.ndim))
        return zyx.tensor(np.ascontiguousarray(np.flip(array, axes)), device=device).flip(axes)
    if layout == "strided":  # every other element of a bigger buffer, offset by one
        big = np.zeros(tuple(2 * s + 1 for s in array.shape), dtype=array.dtype)
        big[tuple(slice(1, None, 2) for _ in array.shape)] = array
        return zyx.tensor(big, device=device)[tuple(slice(1, None, 2) for _ in array.shape)]
    raise ValueError(layout)


def sample(shape, dtype, low=-3.0, high=3.0, seed=0):
    rng = np.random.default_rng(seed + len(shape) * 7 + sum(shape))
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype.startswith("int"):
        return rng.integers(-20, 20, size=shape).astype(dtype)
    return rng.uniform(low, high, size=shape).astype(dtype)


# ---- unary elementwise ---------------------------------------------------------------------------------------

def _np_gelu(x):
    return x * 0.5 * (1 + _erf(x / math.sqrt(2)))


UNARY = {  # name: (zyx op, numpy reference, (low, high) of inputs)
    "neg": (lambda t: -t, np.negative, None),
    "exp": (lambda t: t.exp(), np.exp, None),
    "exp2": (lambda t: t.exp2(), np.exp2, None),
    "log": (lambda t: t.log(), np.log, (0.1, 5)),
    "ln": (lambda t: t.ln(), np.log, (0.1, 5)),
    "log2": (lambda t: t.log2(), np.log2, (0.1, 5)),
    "sqrt": (lambda t: t.sqrt(), np.sqrt, (0.0, 5)),
    "rsqrt": (lambda t: t.rsqrt(), lambda x: 1 / np.sqrt(x), (0.1, 5)),
    "sin": (lambda t: t.sin(), np.sin, None),
    "cos": (lambda t: t.cos(), np.cos, None),
    "tan": (lambda t: t.tan(), np.tan, (-1.2, 1.2)),
    "tanh": (lambda t: t.tanh(), np.tanh, None),
    "sigmoid": (lambda t: t.sigmoid(), lambda x: 1 / (1 + np.exp(-x)), None),
    "relu": (lambda t: t.relu(), lambda x: np.maximum(x, 0), None),
    "leaky_relu": (lambda t: t.leaky_relu(0.1), lambda x: np.where(x > 0, x, 0.1 * x), None),
    "erf": (lambda t: t.erf(), _erf, None),
    "gelu": (lambda t: t.gelu(), _np_gelu, None),
    "gelu_tanh": (lambda t: t.gelu(approximate="tanh"),
                  lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))), None),
    "silu": (lambda t: t.silu(), lambda x: x / (1 + np.exp(-x)), None),
    "softplus": (lambda t: t.softplus(), lambda x: np.logaddexp(0, x), None),
    "softplus_beta": (lambda t: t.softplus(beta=2.0), lambda x: np.logaddexp(0, 2 * x) / 2, None),
    "elu": (lambda t: t.elu(), lambda x: np.where(x > 0, x, np.expm1(x)), None),
    "abs": (lambda t: t.abs(), np.abs, None),
    "sign": (lambda t: t.sign(), np.sign, None),
    "floor": (lambda t: t.floor(), np.floor, None),
    "ceil": (lambda t: t.ceil(), np.ceil, None),
    "round": (lambda t: t.round(), np.rint, None),
    "reciprocal": (lambda t: t.reciprocal(), np.reciprocal, (0.2, 4)),
    "square": (lambda t: t.square(), np.square, None),
    "clamp": (lambda t: t.clamp(-1, 0.5), lambda x: np.clip(x, -1, 0.5), None),
    "clamp_min": (lambda t: t.clamp(min=0.2), lambda x: np.maximum(x, 0.2), None),
    "clamp_max": (lambda t: t.clamp(max=0.2), lambda x: np.minimum(x, 0.2), None),
    "pow_scalar": (lambda t: t ** 3, lambda x: x ** 3, None),
    "pow_half": (lambda t: t ** 0.5, np.sqrt, (0, 4)),
    "pow_frac": (lambda t: t ** 1.7, lambda x: x ** 1.7, (0, 4)),
    "rpow": (lambda t: 2 ** t, lambda x: 2 ** x, None),
    "isnan": (lambda t: t.isnan(), np.isnan, None),
    "isinf": (lambda t: t.isinf(), np.isinf, None),
}
APPROXIMATE = {name: dict(rtol=1e-6, atol=1e-6) for name in ("erf", "gelu")}  # WGSL's erf: Abramowitz-Stegun 7.1.26


@pytest.mark.parametrize("name", sorted(UNARY))
@pytest.mark.parametrize("dtype", FLOATS)
def test_unary(device, name, dtype):
    op, reference, bounds = UNARY[name]
    low, high = bounds or (-3, 3)
    cases = []
    for shape, layout in [((), "contiguous"), ((0,), "contiguous"), ((1,), "contiguous"), ((3, 5), "permuted"),
                          ((2, 3, 4), "flipped"), ((4, 3), "strided")]:
        x = sample(shape, dtype, low, high)
        cases.append((x, op(as_view(x, layout, device))))
    zyx.realize(*(result for _, result in cases))  # one program: on OpenCL one build for all the kernels
    for x, result in cases:
        with np.errstate(all="ignore"):
            expected = reference(x)
        assert result.shape == expected.shape
        if expected.dtype == bool:
            assert result.dtype == zyx.bool
        else:
            assert result.dtype.name == dtype, (name, result.dtype)
        tol = APPROXIMATE.get(name) if dtype == "float64" else None
        assert_close(result.numpy(), expected, dtype if expected.dtype != bool else "bool", tol)


def test_unary_float16(device):
    x = sample((5, 3), "float16", -2, 2)
    for name in ["exp", "tanh", "sigmoid", "relu", "abs", "sqrt", "neg", "square"]:
        op, reference, _ = UNARY[name]
        t = op(zyx.tensor(x if name != "sqrt" else np.abs(x), device=device))
        assert t.dtype == zyx.float16
        expected = reference((x if name != "sqrt" else np.abs(x)).astype(np.float32))
        assert_close(t.numpy(), expected, "float16")


def test_special_values(device):
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30, 1e-30], dtype=np.float32)
    t = zyx.tensor(x, device=device)
    with np.errstate(all="ignore"):
        assert_close(t.isnan().numpy(), np.isnan(x), "bool")
        assert_close(t.isinf().numpy(), np.isinf(x), "bool")
        assert_close(t.exp().numpy(), np.exp(x), "float32")
        assert_close(t.sigmoid().numpy(), 1 / (1 + np.exp(-x.astype(np.float64))), "float32")
        assert_close(t.tanh().numpy(), np.tanh(x), "float32")
        assert_close(t.relu().numpy(), np.maximum(x, 0), "float32")
        assert_close(t.abs().numpy(), np.abs(x), "float32")
        assert_close(t.sign().numpy(), np.sign(x), "float32")
        assert_close(t.softplus().numpy(), np.logaddexp(0, x.astype(np.float64)), "float32")
        assert_close(t.clamp(-1, 1).numpy(), np.clip(x, -1, 1), "float32")


def test_max_and_min_propagate_nan_from_either_operand(device):
    """Elementwise (16 elements: whole float4 registers on GPUs), broadcast against a scalar, and reduced, with the
    nan first, last or alone; isnan beside them (on Vulkan a driver may assume no nan: WGSL tests the bits)."""
    a = np.array([np.nan, 1, 2, np.nan, -np.inf, np.inf, 0, -0.0, 3, np.nan, -1, 5, 7, 8, np.nan, 1], np.float32)
    b = np.array([1, np.nan, np.nan, np.nan, np.nan, 2, 1, 0, np.inf, 4, -2, np.nan, 6, -9, 2, -np.inf], np.float32)
    ta, tb = zyx.tensor(a, device=device), zyx.tensor(b, device=device)
    assert_close(ta.maximum(tb).numpy(), np.maximum(a, b), "float32")
    assert_close(tb.minimum(ta).numpy(), np.minimum(b, a), "float32")
    assert_close(ta.maximum(2.0).numpy(), np.maximum(a, 2), "float32")
    assert_close((ta == ta).numpy(), a == a, "bool")
    rows = np.array([[1, 2, np.nan, 3], [np.nan, 5, 6, 7], [1, 2, 3, np.nan], [4, 3, 2, 1]], np.float32)
    t = zyx.tensor(rows, device=device)
    assert_close(t.max(1).numpy(), rows.max(1), "float32")
    assert_close(t.min(0).numpy(), rows.min(0), "float32")
    assert_close(t.isnan().numpy(), np.isnan(rows), "bool")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_atan2_hypot_signed_zeros_and_infinities(device, dtype):
    """Every pair of signed zeros, infinities, nan and ordinary values against torch (C's atan2 and hypot), the
    sign of zero results included; atan2's quadrant fixes and hypot's guards for the values that the gradient
    tests cannot take."""
    values = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 2.5, -3e-30, 1e30], dtype)
    y, x = (a.reshape(-1) for a in np.meshgrid(values, values, indexing="ij"))
    zy, zx = zyx.tensor(y, device=device), zyx.tensor(x, device=device)
    ty, tx = torch.tensor(y), torch.tensor(x)
    for ours, theirs in ((zy.atan2(zx), torch.atan2(ty, tx)), (zyx.hypot(zy, zx), torch.hypot(ty, tx))):
        expected, actual = theirs.numpy(), ours.numpy()
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=0)
        finite = ~np.isnan(expected)
        np.testing.assert_array_equal(np.signbit(actual[finite]), np.signbit(expected[finite]))
    grads = zyx.tensor(values[:2], device=device).atan2(zyx.tensor(values[:2], device=device)).backward([zx])
    assert grads == [None]
    origin = zyx.tensor([0.0, -0.0], device=device)
    for grad in zyx.hypot(origin, origin).backward([origin]) + origin.atan2(origin).backward([origin]):
        np.testing.assert_array_equal(grad.numpy(), [0.0, 0.0])  # torch's are nan (0 / 0)


def test_xlogy_nan_to_num_addmm_edge_values(device):
    """xlogy: 0 at x = 0 except beside nan; nan_to_num's defaults are the dtype's finite extremes; addmm with
    beta = 0 does not read its input (nan there does not propagate, as torch)."""
    x = np.array([0, 0, 0, 0, 1, np.nan], np.float32)
    y = np.array([0, np.inf, np.nan, -1, 0, 0], np.float32)
    np.testing.assert_array_equal(zyx.tensor(x, device=device).xlogy(zyx.tensor(y, device=device)).numpy(),
                                  torch.xlogy(torch.tensor(x), torch.tensor(y)).numpy())
    for dtype in ("float16", "bfloat16") + (() if device.kind == "wgpu" else ("float64",)):  # (WGSL: no float64)
        special = zyx.tensor([np.nan, np.inf, -np.inf, 2.0], device=device).cast(getattr(zyx, dtype))
        expected = torch.tensor([np.nan, np.inf, -np.inf, 2.0]).to(getattr(torch, dtype)).nan_to_num()
        np.testing.assert_array_equal(special.nan_to_num().float().numpy(), expected.float().numpy())
    m = zyx.tensor(np.eye(2, dtype=np.float32), device=device)
    nan_input = zyx.tensor([np.nan, np.inf], device=device)
    np.testing.assert_array_equal(nan_input.addmm(m, m * 3, beta=0).numpy(), [[3, 0], [0, 3]])


def test_nan_reductions_search_and_histc_edge_values(device):
    """nanmean of all-nan rows is nan and nansum 0; searchsorted puts nan and inf values where torch's binary
    search does; histc leaves out nan and the values outside the range, counts max in the last bin, and widens an
    empty range by 1 either side (float64 too, but not on WGPU: WGSL has no float64)."""
    for dtype in ("float32",) + (() if device.kind == "wgpu" else ("float64",)):
        rows = np.array([[np.nan, np.nan, np.nan], [1.0, np.nan, -np.inf], [2.0, 3.0, np.nan]], dtype)
        t, expected = zyx.tensor(rows, device=device), torch.tensor(rows)
        np.testing.assert_array_equal(t.nanmean(1).numpy(), expected.nanmean(1).numpy())
        np.testing.assert_array_equal(t.nansum(dim=1).numpy(), expected.nansum(1).numpy())
        sequence = np.array([-np.inf, -1.0, 0.0, 0.0, 2.0, np.inf], dtype)
        probes = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 5.0, -3.0], dtype)
        for right in (False, True):
            ours = zyx.searchsorted(zyx.tensor(sequence, device=device), zyx.tensor(probes, device=device),
                                    right=right)
            assert ours.dtype == zyx.int64
            np.testing.assert_array_equal(ours.numpy(), torch.searchsorted(torch.tensor(sequence),
                                                                          torch.tensor(probes), right=right).numpy())
        data = np.array([0.0, 1.0, 1.0, 2.5, 3.0, -1.0, 4.0, np.nan], dtype)
        for args, values in (((4, 0, 3), data), ((3, 1, 1), data[:-1]), ((5, -2, 6), data), ((2, 0.5, 2.0), data)):
            histogram = zyx.tensor(values, device=device).histc(*args)  # (min = max: the data's range, no nan)
            assert histogram.dtype == getattr(zyx, dtype)
            np.testing.assert_array_equal(histogram.numpy(), torch.tensor(values).histc(*args).numpy())
        constant = zyx.tensor(np.full(3, 2.0, dtype), device=device)
        np.testing.assert_array_equal(constant.histc(4).numpy(), torch.full((3,), 2.0).histc(4).numpy())


def test_round_half_to_even(device):
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5], dtype=np.float32)
    assert_close(zyx.tensor(x, device=device).round().numpy(), np.rint(x), "float32")


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_unary_int(device, dtype):
    x = sample((4, 5), dtype)
    t = zyx.tensor(x, device=device)
    cases = []
    for op, reference in [(lambda v: -v, np.negative), (lambda v: v.abs(), np.abs), (lambda v: v.sign(), np.sign),
                          (lambda v: v.square(), np.square), (lambda v: v.clamp(-3, 4), lambda v: np.clip(v, -3, 4)),
                          (lambda v: v ** 3, lambda v: v ** 3), (lambda v: v.floor(), lambda v: v),
                          (lambda v: v.relu(), lambda v: np.maximum(v, 0))]:
        result = op(t)
        assert result.dtype.name == dtype
        cases.append((result, reference(x), dtype))
    for result, expected in [(t.exp(), np.exp(x)), (t.abs().sqrt(), np.sqrt(np.abs(x))),
                             (t.sigmoid(), 1 / (1 + np.exp(-x.astype(np.float64))))]:
        assert result.dtype == zyx.float32
        cases.append((result, expected, "float32"))
    check_together(cases)


def test_int_math_promotes_to_float32(device):
    t = zyx.tensor([1, 4, 9], device=device)
    for result, expected in [(t.sqrt(), np.sqrt([1, 4, 9])), (t.exp(), np.exp([1, 4, 9])),
                             (t.log(), np.log([1, 4, 9])), (t / 2, np.array([0.5, 2, 4.5])),
                             (t ** 0.5, np.sqrt([1, 4, 9])), (t ** 2.0, np.array([1, 16, 81]))]:
        assert result.dtype == zyx.float32
        assert_close(result.numpy(), expected, "float32")


def test_int_pow_is_exact(device):
    t = zyx.tensor([3, -2, 7, 0, 1], device=device)
    assert (t ** 20).tolist() == [3 ** 20, (-2) ** 20, 7 ** 20, 0, 1]
    assert (t ** 0).tolist() == [1] * 5
    assert (t ** zyx.tensor([2, 3, 1, 0, 5], device=device)).tolist() == [9, -8, 7, 1, 1]
    with pytest.raises(ValueError):
        t ** -1


def test_bool_unary(device):
    b = np.array([True, False, True])
    t = zyx.tensor(b, device=device)
    assert t.dtype == zyx.bool
    assert_close(t.logical_not().numpy(), ~b, "bool")
    assert_close((~t).numpy(), ~b, "bool")
    assert_close(t.abs().numpy(), b, "bool")
    assert_close(t.cast(zyx.float32).numpy(), b.astype(np.float32), "float32")


# ---- binary elementwise --------------------------------------------------------------------------------------

BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
    "pow": (lambda a, b: a.abs() ** b, lambda a, b: np.abs(a) ** b),
    "floordiv": (lambda a, b: a // b, np.floor_divide),
    "mod": (lambda a, b: a % b, np.mod),
    "maximum": (lambda a, b: a.maximum(b), np.maximum),
    "minimum": (lambda a, b: a.minimum(b), np.minimum),
    "lt": (lambda a, b: a < b, np.less),
    "le": (lambda a, b: a <= b, np.less_equal),
    "gt": (lambda a, b: a > b, np.greater),
    "ge": (lambda a, b: a >= b, np.greater_equal),
    "eq": (lambda a, b: a == b, np.equal),
    "ne": (lambda a, b: a != b, np.not_equal),
    "logical_and": (lambda a, b: a.logical_and(b), np.logical_and),
    "logical_or": (lambda a, b: a.logical_or(b), np.logical_or),
    "where": (lambda a, b: zyx.where(a > 0, a, b), lambda a, b: np.where(a > 0, a, b)),
}
BROADCAST = [((3, 5), (3, 5)), ((3, 1), (1, 4)), ((2, 3, 4), (4,)), ((), (3,)), ((1,), (0,)), ((5, 1, 3), (1, 2, 1)),
             ((2, 0, 3), (1, 3))]


def _binary_inputs(name, shape_a, shape_b, dtype):
    a, b = sample(shape_a, dtype, seed=1), sample(shape_b, dtype, seed=2)
    if name in ("div", "floordiv", "mod"):  # keep away from 0 and from exact-multiple boundaries
        b = np.where(np.abs(b) < 0.5, 1.25, b).astype(dtype) if dtype.startswith("float") else \
            np.where(b == 0, 3, b).astype(dtype)
    if name in ("eq", "ne", "le", "ge") and a.size and b.size:  # make some ties
        a = np.where(np.broadcast_to(sample(shape_a, "bool", seed=3), a.shape), a, a.round()).astype(dtype)
        b = b.round().astype(dtype) if dtype.startswith("float") else b
    return a, b


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("dtype", FLOATS)
def test_binary(device, name, dtype):
    op, reference = BINARY[name]
    cases = []
    for (shape_a, shape_b), layout in zip(BROADCAST, LAYOUTS * 2):
        a, b = _binary_inputs(name, shape_a, shape_b, dtype)
        for x, y in [(a, b), (b, a)] if name not in ("pow",) else [(a, b)]:
            cases.append((x, y, op(as_view(x, layout, device), zyx.tensor(y, device=device))))
    zyx.realize(*(result for _, _, result in cases))  # one program: on OpenCL one build for all the kernels
    for x, y, result in cases:
        with np.errstate(all="ignore"):
            expected = reference(x, y)
        assert result.shape == expected.shape, (name, x.shape, y.shape)
        kind = "bool" if expected.dtype == bool else dtype
        assert result.dtype.name == kind
        assert_close(result.numpy(), expected, kind)


INT_BINARY = ["add", "sub", "mul", "floordiv", "mod", "maximum", "minimum", "lt", "le", "gt", "ge", "eq", "ne",
              "logical_and", "logical_or", "where"]


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_binary_int(device, dtype):
    cases = []
    for name in INT_BINARY:
        op, reference = BINARY[name]
        for shape_a, shape_b in BROADCAST[:4]:
            a, b = _binary_inputs(name, shape_a, shape_b, dtype)
            result = op(zyx.tensor(a, device=device), zyx.tensor(b, device=device))
            expected = reference(a, b)
            kind = "bool" if expected.dtype == bool else dtype
            assert result.dtype.name == kind, name
            cases.append((result, expected, kind))
    check_together(cases)


def test_int_extremes(device):
    info = np.iinfo(np.int64)
    x = np.array([info.min, -1, 0, 1, info.max], dtype=np.int64)
    t = zyx.tensor(x, device=device)
    assert t.min().item() == info.min and t.max().item() == info.max
    assert t.argmin().item() == 0 and t.argmax().item() == 4
    assert t.minimum(t.flip(0)).tolist() == np.minimum(x, x[::-1]).tolist()
    big = zyx.tensor([2 ** 24 + 1, 2 ** 24], device=device)
    assert big.argmin().item() == 1 and big.argmax().item() == 0


def test_bool_binary(device):
    a, b = np.array([True, True, False, False]), np.array([True, False, True, False])
    ta, tb = zyx.tensor(a, device=device), zyx.tensor(b, device=device)
    assert_close((ta & tb).numpy(), a & b, "bool")
    assert_close((ta | tb).numpy(), a | b, "bool")
    assert_close(ta.logical_xor(tb).numpy(), a ^ b, "bool")
    assert_close((ta == tb).numpy(), a == b, "bool")
    assert_close((ta + tb).numpy(), a + b, "bool")
    assert_close((ta * tb).numpy(), a * b, "bool")
    assert (ta + 1).dtype == zyx.int64 and (ta + 1).tolist() == [2, 2, 1, 1]
    assert (ta * 1.5).dtype == zyx.float32
    assert ta.maximum(tb).tolist() == np.maximum(a, b).tolist()
    assert ta.minimum(tb).tolist() == np.minimum(a, b).tolist()
    with pytest.raises(TypeError):
        ta - tb


BITWISE = {
    "and": lambda a, b: a & b, "or": lambda a, b: a | b, "xor": lambda a, b: a ^ b,
    "lshift": lambda a, b: a << b, "rshift": lambda a, b: a >> b,
}


def _torch_bits(array):
    return torch.from_numpy(np.ascontiguousarray(array))


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
def test_bitwise_matches_torch(device, dtype):
    """&, |, ^, ~, <<, >> are bitwise on integers and logical on bool, as PyTorch; reflected and in-place forms
    too, shift counts past the width and negative ones included."""
    if dtype == "bool":
        a, b = np.array([True, True, False, False]), np.array([True, False, True, False])
    else:
        info = np.iinfo(dtype)
        a = np.array([5, 12, -7, 0, info.min, info.max, -1, 3], dtype=dtype)
        b = np.array([6, 2, 3, 31, 1, 4, info.bits - 1, info.bits], dtype=dtype)
    ta, tb = zyx.tensor(a, device=device), zyx.tensor(b, device=device)
    names = ["and", "or", "xor"] + (["lshift", "rshift"] if dtype != "bool" else [])
    cases = []
    for name in names:
        op = BITWISE[name]
        for (left, torch_left), (right, torch_right) in [((ta, a), (tb, b)), ((tb, b), (ta, a)), ((ta, a), (3, 3)),
                                                         ((3, 3), (ta, a)), ((ta.flip(0), a[::-1]), (tb, b))]:
            expected = op(_torch_bits(torch_left) if isinstance(torch_left, np.ndarray) else torch_left,
                          _torch_bits(torch_right) if isinstance(torch_right, np.ndarray) else torch_right)
            result = op(left, right)
            assert result.dtype.name == str(expected.dtype).replace("torch.", ""), (name, left, right)
            cases.append((result, expected.numpy(), "bool" if dtype == "bool" else dtype))
    in_place = zyx.tensor(a, device=device)
    in_place ^= tb
    check_together(cases + [(~ta, (~_torch_bits(a)).numpy(), dtype),
                            (in_place, (_torch_bits(a) ^ _torch_bits(b)).numpy(), dtype)])


def test_bitwise_issue_example(device):
    a = device.tensor(np.array([5, 12], np.int32))
    assert (a & 6).tolist() == [4, 4] and (a | 2).tolist() == [7, 14] and (~a).tolist() == [-6, -13]
    assert (a & 6).dtype == zyx.int32 and (True & device.tensor([True, False])).dtype == zyx.bool


def test_bitwise_needs_bool_or_int(device):
    x = zyx.tensor([1.5], device=device)
    for op in [lambda: x & 1, lambda: 1 | x, lambda: ~x, lambda: x << 1, lambda: zyx.tensor([1], device=device) ^ x]:
        with pytest.raises(TypeError, match="float32"):
            op()
    with pytest.raises(TypeError, match="bool"):
        zyx.tensor([True], device=device) << zyx.tensor([True], device=device)


def test_bitwise_has_no_gradient(device):
    x = zyx.tensor([1.0, 2.0], device=device)
    bits = x.cast(zyx.int32) & 1
    y = x * bits.float()
    assert y.backward([x])[0].tolist() == [1.0, 0.0]


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_python_int_operands_wrap_as_in_pytorch(device, dtype):
    """A Python int operand that fits 64 bits wraps to the tensor's dtype on both devices, as PyTorch (it used to
    raise on the CPU and wrap on OpenCL); one beyond 64 bits, or a constant the dtype cannot hold, raises."""
    info = np.iinfo(dtype)
    t = zyx.tensor(np.array([5, 12, -9], dtype), device=device)
    reference = torch.tensor([5, 12, -9], dtype=getattr(torch, dtype))
    values = [0xFFFFFFFF, int(info.max), int(info.min), -(2 ** 40) + 3]
    if dtype == "int32":
        values += [int(info.max) + 1, int(info.min) - 1]
    check_together([(op(t), op(reference).numpy(), "exact") for value in values
                    for op in [lambda x: x + value, lambda x: x * value, lambda x: x < value, lambda x: x & value,
                               lambda x: value - x]])
    for value in [2 ** 63, -(2 ** 63) - 1, 2 ** 64]:
        with pytest.raises(OverflowError, match=f"{value}.*int64"):
            t + value
    with pytest.raises(OverflowError, match=f"{int(info.max) + 1}.*{dtype}"):
        zyx.full((2,), int(info.max) + 1, device=device, dtype=dtype)


def test_tensor_data_that_does_not_fit_raises(device):
    with pytest.raises(OverflowError, match="9223372036854775808.*int64"):
        zyx.tensor([2 ** 63], device=device)
    with pytest.raises(OverflowError, match="1099511627776.*int32"):
        zyx.tensor([2 ** 40], device=device, dtype=zyx.int32)
    with pytest.raises(OverflowError, match="int32"):
        zyx.tensor(np.array([1e20]), device=device, dtype=zyx.int32)
    with pytest.raises(OverflowError):
        zyx.tensor([[1, -2 ** 70]], device=device)
    assert zyx.tensor([-2 ** 63, 2 ** 63 - 1], device=device).tolist() == [-2 ** 63, 2 ** 63 - 1]


@pytest.mark.parametrize("dtype", FLOATS)
def test_scalar_operands(device, dtype):
    x = sample((3, 4), dtype, 0.5, 3)
    t = as_view(x, "permuted", device)
    cases = [(t + 2, x + 2), (2 + t, 2 + x), (t - 1.5, x - 1.5), (1.5 - t, 1.5 - x), (t * 3, x * 3), (3 * t, 3 * x),
             (t / 4, x / 4), (4 / t, 4 / x), (t ** 2, x ** 2), (2.5 ** t, 2.5 ** x), (t // 0.7, x // 0.7),
             (7 // t, 7 // x), (t % 0.7, x % 0.7), (-t, -x), (+t, x)]
    assert all(result.dtype.name == dtype for result, _ in cases)
    compared = [(t < 1, x < 1), (t >= 2, x >= 2), (1 < t, 1 < x), (t == x[0, 0], x == x[0, 0])]
    assert all(result.dtype == zyx.bool for result, _ in compared)
    check_together([(result, expected.astype(dtype), dtype, dict(rtol=1e-6, atol=1e-6)) for result, expected in cases]
                   + [(result, expected, "bool") for result, expected in compared]
                   + [(t + x, x + x, dtype),  # a numpy array operand
                      (x + t, x + x, dtype)])  # numpy defers to the reflected op


def test_floordiv_mod_ints_follow_python(device):
    a = np.array([7, -7, 7, -7, 0, 5])
    b = np.array([2, 2, -2, -2, 3, 5])
    ta, tb = zyx.tensor(a, device=device), zyx.tensor(b, device=device)
    assert (ta // tb).tolist() == [x // y for x, y in zip(a.tolist(), b.tolist())]
    assert (ta % tb).tolist() == [x % y for x, y in zip(a.tolist(), b.tolist())]
    assert (ta // 2).dtype == zyx.int64
    assert (ta / tb).dtype == zyx.float32


# ---- type promotion ------------------------------------------------------------------------------------------

DTYPES = ["bool", "int32", "int64", "float16", "float32", "float64"]
TORCH = {"bool": torch.bool, "int32": torch.int32, "int64": torch.int64, "float16": torch.float16,
         "float32": torch.float32, "float64": torch.float64}


@pytest.mark.parametrize("left", DTYPES)
@pytest.mark.parametrize("right", DTYPES)
def test_promotion_matches_torch(device, left, right):
    a = zyx.ones(2, device=device, dtype=left)
    b = zyx.ones(2, device=device, dtype=right)
    expected = torch.result_type(torch.ones(2, dtype=TORCH[left]), torch.ones(2, dtype=TORCH[right]))
    assert (a * b).dtype.name == str(expected).replace("torch.", "")
    assert (a == b).dtype == zyx.bool
    div_expected = (torch.ones(2, dtype=TORCH[left]) / torch.ones(2, dtype=TORCH[right])).dtype
    assert (a / b).dtype.name == str(div_expected).replace("torch.", "")


@pytest.mark.parametrize("left", DTYPES)
@pytest.mark.parametrize("scalar", [True, 2, 2.5])
def test_scalar_promotion_matches_torch(device, left, scalar):
    a = zyx.ones(2, device=device, dtype=left)
    expected = torch.result_type(torch.ones(2, dtype=TORCH[left]), scalar)
    assert (a * scalar).dtype.name == str(expected).replace("torch.", "")
    assert (scalar * a).dtype.name == str(expected).replace("torch.", "")


def test_sum_promotes_bool_and_int(device):
    b = zyx.tensor([True, False, True], device=device)
    assert b.sum().dtype == zyx.int64 and b.sum().item() == 2
    assert zyx.tensor([1, 2], device=device, dtype=zyx.int32).sum().dtype == zyx.int64
    assert b.mean().dtype == zyx.float32
    assert (b.cumsum(0)).tolist() == [1, 1, 2]
    assert b.prod().dtype == zyx.int64


# ---- hypothesis: broadcasting --------------------------------------------------------------------------------

@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=4, min_side=0, max_side=3),
       dtype=st.sampled_from(["float32", "int64"]))
def test_broadcasting_hypothesis(device, shapes, dtype):
    a, b, c = (sample(s, dtype, seed=k) for k, s in enumerate(shapes.input_shapes))
    ta, tb, tc = (zyx.tensor(v, device=device) for v in (a, b, c))
    check_together([(ta * tb + tc, a * b + c, dtype, TOL.get(dtype)),
                    (zyx.where(ta > tb, tb, tc), np.where(a > b, b, c), dtype)])
    assert (ta + tb + tc).shape == shapes.result_shape


@st.composite
def _slices(draw, shape):
    index = []
    for size in shape:
        kind = draw(st.sampled_from(["slice", "int", "full", "none"]))
        if kind == "int" and size:
            index.append(draw(st.integers(-size, size - 1)))
        elif kind == "slice":
            bound = st.none() | st.integers(-size - 2, size + 2)
            step = draw(st.none() | st.integers(-3, 3).filter(lambda v: v != 0))
            index.append(slice(draw(bound), draw(bound), step))
        elif kind == "none":
            index.append(None)
            index.append(slice(None))
        else:
            index.append(slice(None))
    return tuple(index)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5),
       layout=st.sampled_from(LAYOUTS))
def test_slicing_hypothesis(device, data, shape, layout):
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    index = data.draw(_slices(shape))
    assert_close(as_view(x, layout, device)[index].numpy(), x[index], "float32")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4), data=st.data())
def test_reductions_hypothesis(device, shape, data):
    dtype = "float32" if device.kind == "wgpu" else "float64"  # WGSL has no float64
    x = sample(shape, dtype)
    axes = data.draw(st.lists(st.integers(0, len(shape) - 1), unique=True, max_size=len(shape)))
    axis = tuple(axes) if axes else None
    keepdim = data.draw(st.booleans())
    order = data.draw(st.permutations(range(len(shape))))
    t = zyx.tensor(np.ascontiguousarray(x.transpose(order)), device=device).permute(np.argsort(order).tolist())
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)  # float32 sums of up
    check_together([(ours, theirs, dtype, tol) for ours, theirs in [  # to 256 elements, in another order
        (t.sum(axis, keepdim), np.sum(x, axis=axis, keepdims=keepdim)),
        (t.max(axis, keepdim), np.max(x, axis=axis, keepdims=keepdim)),
        (t.min(axis, keepdim), np.min(x, axis=axis, keepdims=keepdim)),
        (t.mean(axis, keepdim), np.mean(x, axis=axis, keepdims=keepdim)),
        (t.prod(axis, keepdim), np.prod(x, axis=axis, keepdims=keepdim))]])


# ---- reductions ----------------------------------------------------------------------------------------------

AXES = [None, 0, -1, (0, 1), (0, -1)]


def _reduce_cases(ndim):
    for axis in AXES:
        if axis is None:
            yield axis
            continue
        axes = axis if isinstance(axis, tuple) else (axis,)
        if ndim and all(-ndim <= a < ndim for a in axes) and len({a % ndim for a in axes}) == len(axes):
            yield axis


def _np_logsumexp(x, axis, keepdims):
    peak = np.max(x, axis=axis, keepdims=True) if x.size else np.zeros([1] * x.ndim)
    peak = np.where(np.isfinite(peak), peak, 0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - peak), axis=axis, keepdims=True)) + peak
    return out if keepdims else np.squeeze(out, axis=axis) if axis is not None else out.reshape(())


REDUCTIONS = {
    "sum": (lambda t, a, k: t.sum(a, keepdim=k), lambda x, a, k: np.sum(x, axis=a, keepdims=k)),
    "mean": (lambda t, a, k: t.mean(a, keepdim=k), lambda x, a, k: np.mean(x, axis=a, keepdims=k)),
    "max": (lambda t, a, k: t.max(a, keepdim=k), lambda x, a, k: np.max(x, axis=a, keepdims=k)),
    "min": (lambda t, a, k: t.min(a, keepdim=k), lambda x, a, k: np.min(x, axis=a, keepdims=k)),
    "prod": (lambda t, a, k: t.prod(a, keepdim=k), lambda x, a, k: np.prod(x, axis=a, keepdims=k)),
    "var": (lambda t, a, k: t.var(a, keepdim=k), lambda x, a, k: np.var(x, axis=a, keepdims=k, ddof=1)),
    "var0": (lambda t, a, k: t.var(a, keepdim=k, correction=0), lambda x, a, k: np.var(x, axis=a, keepdims=k)),
    "std": (lambda t, a, k: t.std(a, keepdim=k), lambda x, a, k: np.std(x, axis=a, keepdims=k, ddof=1)),
    "logsumexp": (lambda t, a, k: t.logsumexp(a, keepdim=k), _np_logsumexp),
}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@pytest.mark.parametrize("dtype", FLOATS)
def test_reductions(device, name, dtype):
    op, reference = REDUCTIONS[name]
    cases = []
    for shape, layout in [((), "contiguous"), ((1,), "contiguous"), ((7,), "flipped"), ((3, 5), "permuted"),
                          ((2, 3, 4), "strided"), ((1, 1, 5), "contiguous"), ((3, 0, 2), "contiguous")]:
        x = sample(shape, dtype, 0.5, 1.5) if name == "prod" else sample(shape, dtype)
        t = as_view(x, layout, device)
        for axis in _reduce_cases(len(shape)):
            axes = () if axis is None else axis if isinstance(axis, tuple) else (axis,)
            reduces_empty = any(shape[a] == 0 for a in axes) or (axis is None and x.size == 0)
            for keepdim in (False, True):
                if name in ("max", "min") and reduces_empty:
                    with pytest.raises(ValueError):
                        op(t, axis, keepdim)
                    continue
                cases.append((x, axis, keepdim, op(t, axis, keepdim)))
    zyx.realize(*(result for *_, result in cases))  # one program: on OpenCL one build for every shape's kernels
    for x, axis, keepdim, result in cases:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = np.asarray(reference(x, axis, keepdim))
        assert result.dtype.name == dtype
        assert_close(result.numpy(), expected.astype(dtype), dtype, dict(rtol=1e-5, atol=1e-5)
                     if dtype == "float32" else dict(rtol=1e-10, atol=1e-10))


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
def test_reductions_int_bool(device, dtype):
    x = sample((3, 4, 5), dtype)
    t = as_view(x, "permuted", device)
    cases = []
    for axis in [None, 0, (1, 2), -1]:
        assert t.sum(axis).dtype == zyx.int64 and t.max(axis).dtype.name == dtype
        cases += [(t.sum(axis), np.sum(x, axis=axis, dtype=np.int64), "int64"),
                  (t.max(axis), np.max(x, axis=axis), dtype), (t.min(axis), np.min(x, axis=axis), dtype),
                  (t.prod(axis), np.prod(x.astype(np.int64), axis=axis), "int64"),
                  (t.mean(axis), np.mean(x, axis=axis).astype(np.float32), "float32")]
    for axis in [None, 0, 1, -1]:
        cases += [(t.argmax(axis), np.argmax(x, axis=axis), "int64"),
                  (t.argmin(axis), np.argmin(x, axis=axis), "int64")]
        if axis is not None:
            cases.append((t.cumsum(axis), np.cumsum(x, axis=axis, dtype=np.int64), "int64"))
    check_together(cases)


@pytest.mark.parametrize("dtype", FLOATS)
def test_arg_reductions(device, dtype):
    x = sample((4, 5, 6), dtype).round()  # rounding makes ties: the first one wins
    t = as_view(x, "flipped", device)
    cases = []
    for axis in [None, 0, 1, 2, -1]:
        for keepdim in (False, True):
            assert t.argmax(axis, keepdim).dtype == zyx.int64
            cases += [(t.argmax(axis, keepdim), np.argmax(x, axis=axis, keepdims=keepdim), "int64"),
                      (t.argmin(axis, keepdim), np.argmin(x, axis=axis, keepdims=keepdim), "int64")]
    check_together(cases)
    nan = np.array([1.0, np.nan, 5.0, np.nan], dtype=dtype)
    assert zyx.tensor(nan, device=device).argmax().item() == np.argmax(nan) == 1
    assert zyx.tensor(nan, device=device).argmin().item() == np.argmin(nan) == 1
    assert zyx.tensor(3.0, device=device).argmax().item() == 0


@pytest.mark.parametrize("dtype", FLOATS)
def test_softmax_family(device, dtype):
    x = sample((3, 4, 5), dtype) * 3
    t = as_view(x, "strided", device)
    cases = []
    for axis in [-1, 0, 1]:
        shifted = x - x.max(axis=axis, keepdims=True)
        soft = np.exp(shifted) / np.exp(shifted).sum(axis=axis, keepdims=True)
        cases += [(t.softmax(axis), soft, dtype),
                  (t.log_softmax(axis), np.log(soft), dtype, dict(rtol=1e-5, atol=1e-5))]
    check_together(cases)
    big = np.array([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4], [88.0, 89.0, 90.0]], dtype=dtype)
    tb = zyx.tensor(big, device=device)
    torch_big = torch.tensor(big)
    for result, expected in [(tb.softmax(-1), torch.softmax(torch_big, -1)),
                             (tb.log_softmax(-1), torch.log_softmax(torch_big, -1)),
                             (tb.logsumexp(-1), torch.logsumexp(torch_big, -1)),
                             (tb.sigmoid(), torch.sigmoid(torch_big)), (tb.softplus(), torch.nn.functional.softplus(
                                 torch_big))]:
        values = result.numpy()
        assert np.isfinite(values).all()
        assert_close(values, expected.numpy(), dtype, dict(rtol=1e-5, atol=1e-5))


@pytest.mark.parametrize("dtype", FLOATS)
def test_cumsum(device, dtype):
    cases = []
    for shape, layout in [((1,), "contiguous"), ((0,), "contiguous"), ((9,), "flipped"), ((3, 5), "permuted"),
                          ((2, 3, 4), "strided"), ((), "contiguous")]:
        x = sample(shape, dtype)
        t = as_view(x, layout, device)
        for axis in range(max(len(shape), 1)):
            expected = np.cumsum(x, axis=axis) if shape else x
            cases.append((t.cumsum(axis), expected, dtype, dict(rtol=1e-5, atol=1e-5)))
            if shape:
                cases.append((t.cumsum(axis - len(shape)), expected, dtype, dict(rtol=1e-5, atol=1e-5)))
    check_together(cases)


@pytest.mark.parametrize("dtype", FLOATS)
def test_large_reductions(device, dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(100_003).astype(dtype)
    t = zyx.tensor(x, device=device)
    tol = dict(rtol=1e-4, atol=1e-3) if dtype == "float32" else dict(rtol=1e-10, atol=1e-9)
    exact = x.astype(np.float64)
    matrix = t[:100_000].reshape(400, 250)
    halves = rng.uniform(0, 1, 100_000).astype(np.float16)
    total = zyx.tensor(halves, device=device).sum()
    assert total.dtype == zyx.float16
    check_together([(t.sum(), exact.sum(), dtype, tol), (t.mean(), exact.mean(), dtype, tol),
                    (t.var(), exact.var(ddof=1), dtype, tol), (t.std(), exact.std(ddof=1), dtype, tol),
                    (t.max(), x.max(), dtype), (t.min(), x.min(), dtype), (t.argmax(), x.argmax(), "int64"),
                    (t.argmin(), x.argmin(), "int64"), (t.logsumexp(), _np_logsumexp(exact, None, False), dtype, tol),
                    (t.cumsum(0), np.cumsum(exact), dtype,
                     dict(rtol=1e-4, atol=2e-2) if dtype == "float32" else dict(rtol=1e-9, atol=1e-9)),
                    (matrix.sum(0), exact[:100_000].reshape(400, 250).sum(0), dtype, tol),
                    (matrix.T.sum(1), exact[:100_000].reshape(400, 250).sum(0), dtype, tol),
                    (total, halves.astype(np.float64).sum(), "float16", dict(rtol=1e-3, atol=0))])


def test_reduction_errors(device):
    t = zyx.zeros(2, 3, device=device)
    with pytest.raises(zyx.ShapeError):
        t.sum(2)
    with pytest.raises(zyx.ShapeError):
        t.mean((0, 0))
    with pytest.raises(zyx.ShapeError):
        t.softmax(5)
    with pytest.raises(ValueError):
        zyx.zeros(0, 3, device=device).max(0)
    assert zyx.zeros(0, 3, device=device).max(1).shape == (0,)
    assert np.isnan(zyx.zeros(0, device=device).mean().item())
    assert zyx.zeros(0, device=device).sum().item() == 0
    assert zyx.zeros(0, device=device).prod().item() == 1
    assert zyx.tensor(2.0, device=device).sum(0).item() == 2.0


# ---- movement ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_movement(device, layout):
    x = sample((2, 3, 4), "float32")
    t = as_view(x, layout, device)
    cases = [
        (t.reshape(4, 6), x.reshape(4, 6)), (t.reshape(-1), x.reshape(-1)), (t.reshape((3, -1)), x.reshape(3, -1)),
        (t.reshape(2, 1, 12), x.reshape(2, 1, 12)), (t.view(24), x.reshape(24)),
        (t.permute(2, 0, 1), x.transpose(2, 0, 1)), (t.permute((1, 2, 0)), x.transpose(1, 2, 0)),
        (t.permute(-1, 0, 1), x.transpose(2, 0, 1)),
        (t.transpose(0, 2), x.swapaxes(0, 2)), (t.transpose(-1, -2), x.swapaxes(-1, -2)), (t.T, x.T),
        (t[:, :1].expand(2, 5, 4), np.broadcast_to(x[:, :1], (2, 5, 4))),
        (t[:, :1].expand(3, 2, -1, 4), np.broadcast_to(x[:, :1], (3, 2, 1, 4))),
        (t.pad(((1, 0), (0, 2))), np.pad(x, ((1, 0), (0, 2), (0, 0)))),
        (t.pad(((0, 0), (1, 1), (2, 3)), value=-7), np.pad(x, ((0, 0), (1, 1), (2, 3)), constant_values=-7)),
        (t.flip(0), x[::-1]), (t.flip((0, 2)), x[::-1, :, ::-1]), (t.flip(-1), x[..., ::-1]),
        (t[:1].squeeze(), x[:1].squeeze()), (t[:1].squeeze(0), x[0]), (t.squeeze(1), x),
        (t.unsqueeze(0), x[None]), (t.unsqueeze(-1), x[..., None]), (t.unsqueeze(2), x[:, :, None]),
        (t.flatten(), x.reshape(-1)), (t.flatten(1), x.reshape(2, 12)), (t.flatten(0, 1), x.reshape(6, 4)),
        (t.repeat(2, 1, 3), np.tile(x, (2, 1, 3))), (t.repeat(2, 1, 1, 1), np.tile(x, (2, 1, 1, 1))),
        (t.contiguous(), x), (t.expand_as(t), x),
    ]
    assert all(result.shape == expected.shape for result, expected in cases)
    splits = [(t.split(2, 1), np.split(x, [2], 1)), (t.split([1, 3], -1), np.split(x, [1], -1)),
              (t.chunk(2, 2), np.split(x, 2, 2)), (t.chunk(3, 1), np.split(x, 3, 1)), (t.split(1), np.split(x, 2, 0))]
    assert all(len(pieces) == len(expected) for pieces, expected in splits)
    check_together([(result, expected, "float32") for result, expected in cases]
                   + [(piece, e, "float32") for pieces, expected in splits for piece, e in zip(pieces, expected)])
    assert [p.shape for p in zyx.zeros(5, 2, device=device).chunk(2)] == [(3, 2), (2, 2)]


def test_movement_odd_shapes(device):
    empty = zyx.zeros(2, 0, 3, device=device)
    assert empty.reshape(0, 6).shape == (0, 6) and empty.permute(2, 0, 1).shape == (3, 2, 0)
    assert empty.pad(((0, 0), (1, 1))).numpy().shape == (2, 2, 3)
    assert empty.flip(1).shape == (2, 0, 3) and empty.flatten().shape == (0,)
    scalar = zyx.tensor(5.0, device=device)
    assert scalar.reshape(1, 1).tolist() == [[5.0]] and scalar.unsqueeze(0).tolist() == [5.0]
    assert scalar.flatten().tolist() == [5.0] and scalar.expand(2, 3).tolist() == [[5.0] * 3] * 2
    assert scalar.T.item() == 5.0 and scalar.reshape(()).item() == 5.0
    assert zyx.zeros(1, device=device).squeeze().shape == ()
    assert scalar.squeeze().shape == () and scalar.squeeze(0).shape == () and scalar.transpose(0, -1).shape == ()
    assert scalar.sum(0).item() == 5.0 and scalar.softmax().item() == 1.0 and scalar.cumsum(0).item() == 5.0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_getitem(device, layout):
    x = sample((4, 5, 6), "float32")
    t = as_view(x, layout, device)
    index_tensor = np.array([3, 0, -1, 2])
    cases = []
    for index in [0, -1, (1, 2), (1, 2, 3), slice(None), slice(1, 3), slice(-3, None), slice(None, None, 2),
                  slice(None, None, -1), slice(None, None, -2), slice(3, 0, -1), slice(5, 10), slice(3, 1),
                  (Ellipsis, 1), (None, 0), (slice(None), None, slice(1, None, 2)), (Ellipsis, None),
                  (0, Ellipsis, slice(None, None, -3)), (slice(1, 2), Ellipsis, 0), (-2, slice(None), -1),
                  (slice(None), slice(None, None, 3), slice(-1, None, -4))]:
        cases.append((t[index], x[index], "float32"))
    for index in [index_tensor, (slice(None), index_tensor), (index_tensor, index_tensor),
                  (Ellipsis, index_tensor), (0, slice(None), index_tensor), (index_tensor, slice(None), 1),
                  (slice(None), np.array([[1, 2], [0, 4]])), (np.array([[1], [2]]), np.array([0, 3, 4])),
                  (1, index_tensor[:2]), (None, index_tensor), ([1, 2],), (index_tensor, 1)]:
        items = index if isinstance(index, tuple) else (index,)
        zindex = tuple(zyx.tensor(i, device=device) if isinstance(i, np.ndarray) else i for i in items)
        tindex = tuple(torch.tensor(i) if isinstance(i, np.ndarray) else i for i in items)  # PyTorch's rule
        cases.append((t[zindex], torch.tensor(x)[tindex].numpy(), "float32"))
    check_together(cases + [(t[np.int64(2)], x[2], "float32"), (t[zyx.tensor(2, device=device)], x[2], "float32")])


def test_getitem_errors(device):
    t = zyx.zeros(2, 3, device=device)
    with pytest.raises(IndexError):
        t[2]
    with pytest.raises(IndexError):
        t[0, 0, 0]
    with pytest.raises(IndexError):
        t[..., ...]
    with pytest.raises(TypeError):
        t[False]  # bool tensors are masks (tests/test_ops_torch_parity.py); a Python bool is refused
    with pytest.raises(IndexError, match="mask of shape"):
        t[zyx.tensor([[True, False]], device=device)]
    with pytest.raises(TypeError):
        t[zyx.tensor([0.5], device=device)]


def test_len_and_iteration(device):
    x = sample((3, 2), "float32")
    t = zyx.tensor(x, device=device)
    assert len(t) == 3
    rows = list(t)
    assert len(rows) == 3 and all(r.shape == (2,) for r in rows)
    for row, e in zip(rows, x):
        assert_close(row.numpy(), e, "float32")
    with pytest.raises(TypeError):
        len(zyx.tensor(1.0, device=device))


def test_one_hot_and_gather(device):
    labels = np.array([[0, 2], [3, 1]])
    t = zyx.tensor(labels, device=device)
    assert_close(t.one_hot(4).numpy(), np.eye(4, dtype=np.int64)[labels], "int64")
    assert t.one_hot(4).dtype == zyx.int64
    x = sample((3, 4, 5), "float32")
    tx = as_view(x, "permuted", device)
    rng = np.random.default_rng(3)
    cases = []
    for axis in [0, 1, 2, -1]:
        index_shape = list(x.shape)
        index_shape[axis] = 7
        index_shape[(axis + 1) % 3] -= 1  # index may be smaller than the input outside the axis
        index = rng.integers(0, x.shape[axis], size=index_shape)
        expected = torch.gather(torch.tensor(x), axis, torch.tensor(index)).numpy()
        cases.append((tx.gather(axis, zyx.tensor(index, device=device)), expected, "float32"))
    check_together(cases)


# ---- layers --------------------------------------------------------------------------------------------------

MATMUL_SHAPES = [((3, 4), (4, 5)), ((4,), (4,)), ((4,), (4, 5)), ((3, 4), (4,)), ((2, 3, 4), (4, 5)),
                 ((2, 3, 4), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (2, 4, 3)), ((2, 3, 4), (4,)),
                 ((1, 1), (1, 1)), ((3, 0), (0, 2)), ((0, 3), (3, 2))]


@pytest.mark.parametrize("dtype", FLOATS + ["int64"])
def test_matmul(device, dtype):
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else None
    cases = []
    for (shape_a, shape_b), layout in zip(MATMUL_SHAPES, LAYOUTS * 3):
        a, b = sample(shape_a, dtype, seed=1), sample(shape_b, dtype, seed=2)
        ta, tb = as_view(a, layout, device), zyx.tensor(b, device=device)
        result = ta @ tb
        assert result.dtype.name == dtype
        cases += [(result, a @ b, dtype, tol), (ta.matmul(tb), a @ b, dtype, tol)]
    v = sample((6,), dtype)
    check_together(cases + [(zyx.tensor(v, device=device).dot(zyx.tensor(v, device=device)), v @ v, dtype),
                            (sample((2, 6), dtype) @ zyx.tensor(v, device=device), sample((2, 6), dtype) @ v, dtype)])


CONV_CASES = [  # input shape, weight shape, stride, padding, dilation, groups
    ((1, 1, 5, 5), (1, 1, 3, 3), 1, 0, 1, 1),
    ((2, 3, 7, 6), (4, 3, 3, 2), 1, 1, 1, 1),
    ((2, 4, 8, 8), (6, 2, 3, 3), 2, 1, 1, 2),
    ((1, 2, 9, 7), (3, 2, 2, 3), (2, 1), (0, 2), (2, 1), 1),
    ((1, 4, 5, 5), (4, 1, 3, 3), 1, 1, 1, 4),
    ((3, 2, 4, 4), (2, 2, 1, 1), 1, 0, 1, 1),
]


@pytest.mark.parametrize("dtype", FLOATS)
def test_conv2d(device, dtype):
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == "float32" else None
    cases = []
    for k, (xs, ws, stride, padding, dilation, groups) in enumerate(CONV_CASES):
        x, w, bias = sample(xs, dtype, seed=k), sample(ws, dtype, seed=k + 1), sample(ws[:1], dtype, seed=k + 2)
        tx = as_view(x, LAYOUTS[k % 4], device)
        result = tx.conv2d(zyx.tensor(w, device=device), zyx.tensor(bias, device=device), stride=stride,
                           padding=padding, dilation=dilation, groups=groups)
        expected = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(bias), stride=stride,
                                              padding=padding, dilation=dilation, groups=groups).numpy()
        no_bias = tx.conv2d(zyx.tensor(w, device=device), stride=stride, padding=padding, dilation=dilation,
                            groups=groups)
        cases += [(result, expected, dtype, tol), (no_bias, expected - bias.reshape(1, -1, 1, 1), dtype,
                                                   tol or dict(rtol=1e-10, atol=1e-10))]
    check_together(cases)


@pytest.mark.parametrize("dtype", FLOATS)
def test_pooling(device, dtype):
    x = sample((2, 3, 7, 6), dtype)
    tx = as_view(x, "flipped", device)
    tx_torch = torch.tensor(x)
    cases = []
    for kernel, stride, padding in [(2, None, 0), (3, 2, 1), ((2, 3), (1, 2), (1, 0)), (1, 1, 0), (3, 1, 1)]:
        cases += [(tx.avg_pool2d(kernel, stride, padding),
                   torch.nn.functional.avg_pool2d(tx_torch, kernel, stride, padding).numpy(), dtype),
                  (tx.max_pool2d(kernel, stride, padding),
                   torch.nn.functional.max_pool2d(tx_torch, kernel, stride, padding).numpy(), dtype)]
    check_together(cases)
    ints = zyx.tensor(np.arange(-8, 8).reshape(1, 1, 4, 4), device=device)
    assert ints.max_pool2d(3, 1, 1).numpy().tolist() == torch.nn.functional.max_pool2d(
        torch.arange(-8., 8.).reshape(1, 1, 4, 4), 3, 1, 1).long().tolist()


def test_dropout(device):
    zyx.manual_seed(1)
    x = zyx.ones(200, 100, device=device)
    y = x.dropout(0.3).numpy()
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    assert not np.array_equal(x.dropout(0.3).numpy() != 0, kept)  # a new mask every call
    assert x.dropout(0.3, training=False) is x and x.dropout(0.0) is x
    inf = zyx.tensor([np.inf, 1.0], device=device)
    assert inf.dropout(1.0).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        x.dropout(1.5)


# ---- creation, properties and conversion --------------------------------------------------------------------

def test_creation(device):
    assert zyx.tensor([1, 2], device=device).dtype == zyx.int64
    assert zyx.tensor([1.0, 2], device=device).dtype == zyx.float32
    assert zyx.tensor([True], device=device).dtype == zyx.bool
    assert zyx.tensor(np.zeros(2), device=device).dtype == zyx.float64
    assert zyx.tensor(np.zeros(2, np.int32), device=device).dtype == zyx.int32
    assert zyx.tensor([1, 2], device=device, dtype=zyx.float16).dtype == zyx.float16
    assert zyx.tensor(3.5, device=device).shape == () and zyx.tensor(3.5, device=device).item() == 3.5
    assert zyx.tensor([], device=device).shape == (0,)
    assert zyx.tensor([[1, 2], [3, 4]], device=device, dtype="float64").tolist() == [[1.0, 2.0], [3.0, 4.0]]
    source = np.ones(3, np.float32)
    copy = zyx.tensor(source, device=device)
    source[0] = 5
    assert copy.tolist() == [1.0, 1.0, 1.0]
    assert zyx.tensor(copy * 2, device=device).tolist() == [2.0] * 3
    assert zyx.zeros(2, 3, device=device).tolist() == [[0.0] * 3] * 2
    assert zyx.zeros((2, 3), device=device).shape == (2, 3)
    assert zyx.ones(2, device=device, dtype=zyx.int32).dtype == zyx.int32
    assert zyx.full((2,), 7, device=device).tolist() == [7, 7] and zyx.full((2,), 7, device=device).dtype == zyx.int64
    assert zyx.full((2,), 0.5, device=device).dtype == zyx.float32
    assert_close(zyx.eye(3, device=device).numpy(), np.eye(3, dtype=np.float32), "float32")
    assert_close(zyx.eye(2, 3, device=device).numpy(), np.eye(2, 3, dtype=np.float32), "float32")
    assert zyx.arange(5, device=device).tolist() == list(range(5))
    assert zyx.arange(2, 11, 3, device=device).tolist() == [2, 5, 8]
    assert zyx.arange(5, 0, -2, device=device).tolist() == [5, 3, 1]
    assert zyx.arange(0.0, 1.0, 0.25, device=device).dtype == zyx.float32
    assert_close(zyx.arange(0.0, 1.0, 0.25, device=device).numpy(), np.arange(0, 1, 0.25), "float32")
    t = zyx.tensor([[1, 2]], device=device, dtype=zyx.float64)
    assert zyx.zeros_like(t).dtype == zyx.float64 and zyx.zeros_like(t).tolist() == [[0.0, 0.0]]
    assert zyx.ones_like(t).tolist() == [[1.0, 1.0]]
    assert zyx.ones_like(t, dtype=zyx.int32).dtype == zyx.int32
    assert zyx.zeros(0, 4, device=device).numpy().shape == (0, 4)


def test_dtypes_exported():
    for name in ["float32", "float16", "float64", "int32", "int64", "bool"]:
        assert getattr(zyx, name).name == name
    assert zyx.zeros(2, dtype=np.float64).dtype == zyx.float64
    assert zyx.zeros(2, dtype=float).dtype == zyx.float32
    assert zyx.zeros(2, dtype=int).dtype == zyx.int64


def test_cat_stack_where(device):
    a, b = sample((2, 3), "float32", seed=1), sample((4, 3), "float32", seed=2)
    ta, tb = as_view(a, "permuted", device), zyx.tensor(b, device=device)
    assert_close(zyx.cat([ta, tb]).numpy(), np.concatenate([a, b]), "float32")
    assert_close(zyx.cat([ta, ta], axis=-1).numpy(), np.concatenate([a, a], -1), "float32")
    assert_close(zyx.cat([ta]).numpy(), a, "float32")
    assert_close(zyx.cat([ta, tb[:0]]).numpy(), a, "float32")
    assert zyx.cat([zyx.tensor([1], device=device), zyx.tensor([2.5], device=device)]).dtype == zyx.float32
    bools = zyx.cat([zyx.tensor([True], device=device), zyx.tensor([False, True], device=device)])
    assert bools.dtype == zyx.bool and bools.tolist() == [True, False, True]
    special = zyx.cat([zyx.tensor([np.nan, -np.inf], device=device), zyx.tensor([np.inf], device=device)]).numpy()
    assert np.isnan(special[0]) and special[1] == -np.inf and special[2] == np.inf
    for axis in [0, 1, 2, -1]:
        assert_close(zyx.stack([ta, ta * 2], axis=axis).numpy(), np.stack([a, a * 2], axis=axis), "float32")
    assert zyx.stack([zyx.tensor(1.0, device=device), zyx.tensor(2.0, device=device)]).tolist() == [1.0, 2.0]
    cond = a > 0
    assert_close(zyx.where(zyx.tensor(cond, device=device), ta, 0.0).numpy(), np.where(cond, a, 0), "float32")
    assert_close(ta.where(1, 2).numpy(), np.where(a != 0, 1, 2), "int64")
    assert_close(ta.where(ta > 0, -1.5).numpy(), np.where(cond, a, -1.5), "float32")  # (PyTorch's order)
    assert_close((ta > 0).where(ta, -1.5).numpy(), np.where(cond, a, -1.5), "float32")
    assert zyx.where(ta > 0, 1, 2.5).dtype == zyx.float32
    assert zyx.where(ta > 0, zyx.tensor([1, 2, 3], device=device), 0).dtype == zyx.int64
    assert zyx.where(ta > 0, ta.cast(zyx.float16), 0.5).dtype == zyx.float16
    assert_close(zyx.where(zyx.tensor([True, False], device=device), zyx.tensor([[1.0], [2.0]], device=device),
                           zyx.tensor(-1.0, device=device)).numpy(), [[1, -1], [2, -1]], "float32")


def test_tensor_properties(device):
    x = sample((2, 3), "float32")
    t = zyx.tensor(x, device=device)
    assert t.shape == (2, 3) and isinstance(t.shape, tuple) and t.ndim == 2 and t.numel() == 6
    assert t.dtype == zyx.float32 and t.device is device
    assert isinstance(t.numpy(), np.ndarray)
    assert_close(np.asarray(t), x, "float32")
    assert np.asarray(t, dtype=np.float64).dtype == np.float64
    assert t.tolist() == x.tolist()
    assert t[0, 1].item() == pytest.approx(float(x[0, 1]))
    assert isinstance(zyx.tensor([3], device=device).item(), int)
    with pytest.raises(ValueError):
        t.item()
    lazy = t * 2
    assert lazy.realize() is lazy and lazy.node.realized
    assert_close(lazy.numpy(), x * 2, "float32")
    text = repr(zyx.tensor([1.5, 2.0], device=device))
    assert "1.5" in text and "float32" in text
    assert t.cast(zyx.int32).dtype == zyx.int32
    assert_close(t.cast("float64").numpy(), x.astype(np.float64), "float64")
    assert t.cast(zyx.bool).tolist() == (x != 0).tolist()
    assert zyx.tensor([1.7, -1.7], device=device).cast(zyx.int64).tolist() == [1, -1]
    assert t.detach().tolist() == t.tolist()
    copy = t.numpy()
    copy[0, 0] = 99.0
    assert t.numpy()[0, 0] == x[0, 0]  # numpy() hands out a copy
    assert t.to(device) is t and t.to("cpu").tolist() == t.tolist()
    assert float(t[0, 0]) == pytest.approx(float(x[0, 0])) and bool(zyx.tensor(1, device=device))


def test_realize_many_at_once(device):
    x = zyx.tensor([1.0, 2.0], device=device)
    shared = x.exp()
    a, b = shared + 1, shared * 2
    zyx.realize(a, b, a)
    assert a.node.realized and b.node.realized
    assert_close(a.numpy(), np.exp([1.0, 2.0]) + 1, "float32")
    assert_close(b.numpy(), np.exp([1.0, 2.0]) * 2, "float32")
    zyx.realize()  # nothing to do


def test_default_device_from_environment():
    code = "import zyx; print(zyx.default_device(), zyx.zeros(1).device is zyx.default_device())"
    for value, expected in [("cpu", "zyx.CPU() True"), ("CPU", "zyx.CPU() True"),
                            ("torch:cpu", "zyx.Torch('cpu') True")]:
        env = dict(os.environ, ZYX_DEVICE=value)
        done = subprocess.run([sys.executable, "-c", code], env=env, text=True,
                                            capture_output=True, timeout=120)
        assert done.stdout.strip() == expected, done.stderr
    env = dict(os.environ, ZYX_DEVICE="tpu")
    done = subprocess.run([sys.executable, "-c", code], env=env, text=True,
                                        capture_output=True, timeout=120)
    assert done.returncode != 0 and "unknown device" in done.stderr


def test_default_device():
    assert zyx.default_device() is not None
    assert zyx.zeros(2).device is zyx.default_device()
    assert zyx.tensor([1]).device is zyx.default_device()


def test_assign(device):
    t = zyx.zeros(2, 3, device=device)
    alias = t
    t.assign(zyx.ones(2, 3, device=device) * 2)
    assert alias.tolist() == [[2.0] * 3] * 2
    t.assign(zyx.tensor([1., 2., 3.], device=device))  # broadcast to the tensor's shape
    assert t.dtype == zyx.float32 and t.tolist() == [[1.0, 2.0, 3.0]] * 2
    t.assign(5)
    assert t.tolist() == [[5.0] * 3] * 2
    with pytest.raises(zyx.ShapeError):
        t.assign(zyx.ones(3, 2, device=device))


def test_subtracting_a_negative_number_in_a_reduction_builds(device):
    """x - (-0.2) is x + -(-0.2); inside a reduction the negation of the literal is hoisted out of the loop, where
    it was printed "--0.2f" (a decrement: OpenCL and WGSL both refused to build the kernel)."""
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(8, 4)
    out = (device.tensor(x) * 2 - (-0.2)).clamp(min=0).sum(0)
    np.testing.assert_allclose(out.numpy(), np.maximum(x * 2 + 0.2, 0).sum(0), rtol=1e-6, atol=1e-6)
