"""The ops PyTorch users reach for (issue 13's list) against torch: values and gradients, on every device.

Each case is an op applied the same way to zyx and torch tensors (most spell it identically, which checks the
API too), on small odd shapes shared between cases. Gradients are those of sum(output * random weights) with
respect to every float input, realized together with the output.
"""
from __future__ import annotations

import zlib
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zyx

RNG = np.random.default_rng(13)
f32 = np.float32


def uniform(low: float, high: float, shape: tuple[int, ...] = (3, 5)) -> np.ndarray:
    return RNG.uniform(low, high, shape).astype(f32)


def more(low: float, high: float, shape: tuple[int, ...] = (3, 5)) -> np.ndarray:
    """uniform's, from a generator of their own: the inputs of later cases stay as they were."""
    return MORE.uniform(low, high, shape).astype(f32)


MORE = np.random.default_rng(1313)
X = uniform(-3, 3)                                   # generic values
X3 = uniform(-2, 2, (2, 3, 5))
ROW = uniform(-2, 2, (5,))
UNIT = uniform(-0.95, 0.95)                          # inside (-1, 1)
POSITIVE = uniform(0.2, 4)
WIDE = np.array([[-1e4, -30, -2.5, -1, -0.7], [-0.2, -1e-3, 0, 2e-4, 0.3],
                 [0.6, 0.9, 1.7, 12, 3e5]], f32)      # every branch of the approximations
ABOVE_ONE = np.array([[1.0, 1.001, 1.2, 1.9, 2.5], [3, 7, 15, 80, 400], [1e3, 5e4, 2e6, 1.5, 1.05]], f32)
TIES = RNG.integers(-2, 3, (3, 5)).astype(f32)      # repeated values: sorts must keep their order
INTS = RNG.integers(-9, 10, (3, 5))
DIVISORS = RNG.choice([-4, -3, -2, -1, 1, 2, 3, 5], (3, 5))
IMAGE = uniform(-2, 2, (2, 4, 5, 6))                 # N, C, H, W
MASK = X > 0.5


class Case(NamedTuple):
    op: Callable[..., Any]                          # applied to zyx tensors, and to torch ones unless `reference`
    inputs: tuple[Any, ...]
    reference: Optional[Callable[..., Any]] = None
    tol: tuple[float, float] = (1e-4, 1e-5)         # rtol, atol
    grad: bool = True                               # False where torch has no derivative to compare with


def same(op: Callable[..., Any], *inputs: Any, tol: tuple[float, float] = (1e-4, 1e-5), grad: bool = True) -> Case:
    return Case(op, inputs, None, tol, grad)


CASES: dict[str, Case] = {
    # ---- elementwise math --------------------------------------------------------------------------------
    "atan": same(lambda x: x.atan(), WIDE),
    "asin": same(lambda x: x.asin(), UNIT),
    "acos": same(lambda x: x.acos(), UNIT),
    "sinh": same(lambda x: x.sinh(), X),
    "cosh": same(lambda x: x.cosh(), X),
    "sinh_cosh_wide": same(lambda x: (x * 1e-2).sinh() + (x * 1e-2).cosh(), WIDE),
    "asinh": same(lambda x: x.asinh(), WIDE),
    "acosh": same(lambda x: x.acosh(), ABOVE_ONE[:, 1:]),
    "atanh": same(lambda x: x.atanh(), UNIT),
    "log10": same(lambda x: x.log10(), POSITIVE),
    "fmod": same(lambda a, b: a.fmod(b), X, DIVISORS.astype(f32)),
    "fmod_int": same(lambda a, b: a.fmod(b), INTS, DIVISORS),
    "remainder_int": same(lambda a, b: a.remainder(b), INTS, DIVISORS),
    "scalar_mod_tensor": same(lambda b: 7.5 % b, DIVISORS.astype(f32), grad=False),
    "int_mod_tensor": same(lambda b: 7 % b, DIVISORS),
    "div_trunc": same(lambda a, b: a.div(b, rounding_mode="trunc"), X, DIVISORS.astype(f32)),
    "div_floor": same(lambda a, b: a.div(b, rounding_mode="floor"), X, DIVISORS.astype(f32)),
    "div_trunc_int": same(lambda a, b: a.div(b, rounding_mode="trunc"), INTS, DIVISORS),
    "div_true": same(lambda a, b: a.div(b), X, POSITIVE),
    "copysign": same(lambda a, b: a.copysign(b), X, np.array([-0.0, 0.0, -1, 2, -3], f32)),
    "logaddexp": same(lambda a, b: a.logaddexp(b), X * 30, ROW),
    "logaddexp_infinite": same(lambda a, b: a.logaddexp(b), np.array([-np.inf, np.inf, 3, -2, 0], f32),
                               np.array([1, 2, np.inf, -np.inf, -30], f32)),
    "logaddexp_equal_infinities": same(lambda a, b: a.logaddexp(b), np.array([-np.inf, np.inf], f32),
                                       np.array([-np.inf, np.inf], f32), grad=False),  # torch's gradient: nan
    "logaddexp2": same(lambda a, b: a.logaddexp2(b), X, ROW),
    "isclose": same(lambda a, b: a.isclose(b, rtol=1e-3, atol=1e-4), X, X + np.where(MASK, 1e-3, 1e-5).astype(f32)),
    "isclose_nan": same(lambda a, b: a.isclose(b, equal_nan=True),
                        np.array([np.nan, np.inf, -np.inf, 1, np.nan], f32),
                        np.array([np.nan, np.inf, np.inf, 1 + 1e-6, 0], f32)),
    "atan2": same(lambda y, x: y.atan2(x), X, ROW),
    "atan2_quadrants": same(lambda y, x: torch_or_zyx(y).arctan2(y, x), WIDE,
                            np.array([[-2, 1e-3, 3e5, -1e4, 0.5]], f32).T[:3, :1] * np.ones((1, 5), f32)),
    "atan2_int": same(lambda y, x: torch_or_zyx(y).atan2(y, x), INTS, DIVISORS),
    "hypot": same(lambda a, b: a.hypot(b), X, ROW),
    "hypot_huge_tiny": same(lambda a, b: ((a * 1e19).hypot(b * 1e19) * 1e-19, (a * 1e-25).hypot(b * 1e-25) * 1e25),
                            X, ROW),
    "hypot_ties": same(lambda a, b: torch_or_zyx(a).hypot(a, b), TIES,
                       np.where(TIES == 0, 3, np.flip(TIES, 1)).astype(f32)),
    "logit": same(lambda p: p.logit(), more(0.02, 0.98)),
    "logit_eps": same(lambda p: (p.logit(eps=0.1), torch_or_zyx(p).logit(p, 1e-6)),
                      np.array([[-0.3, 0.05, 0.5, 0.93, 1.3]], f32)),
    "xlogy": same(lambda x, y: (x.xlogy(y), torch_or_zyx(x).xlogy(x, 2.5)), np.where(MASK, 0, X), POSITIVE),
    "xlogy_zeros": same(lambda x, y: x.xlogy(y), np.array([0, 0, 0, 2, -1, 0], f32),
                        np.array([0, np.inf, np.nan, 0, 0, -1], f32), grad=False),  # torch's gradients: nan
    "xlogy_int_broadcast": same(lambda i, y: i.xlogy(y), INTS, ROW * ROW),
    "nan_to_num": same(lambda x: (x.nan_to_num(), torch_or_zyx(x).nan_to_num(x, 1.5, posinf=100.0, neginf=-7.0)),
                       np.array([[np.nan, np.inf, -np.inf, 1.5], [-0.0, 3e38, -2, np.nan]], f32)),
    "nan_to_num_int": same(lambda i: i.nan_to_num(), INTS),
    "xor": same(lambda a, b: a ^ b, INTS, DIVISORS),
    "shifts": same(lambda a, b: (a << b.abs()) + (a >> 1) + (3 << b.abs()), INTS, DIVISORS),
    # ---- activations -------------------------------------------------------------------------------------
    "hardtanh": Case(lambda x: x.hardtanh(-1.5, 2.0), (X,), lambda x: F.hardtanh(x, -1.5, 2.0)),
    "relu6": Case(lambda x: (x * 3).relu6(), (X,), lambda x: F.relu6(x * 3)),
    "hardsigmoid": Case(lambda x: (x * 2).hardsigmoid(), (X,), lambda x: F.hardsigmoid(x * 2)),
    "hardswish": Case(lambda x: (x * 2).hardswish(), (X,), lambda x: F.hardswish(x * 2)),
    "selu": Case(lambda x: x.selu(), (X,), F.selu),
    "celu": Case(lambda x: x.celu(0.7), (X,), lambda x: F.celu(x, 0.7)),
    "mish": Case(lambda x: x.mish(), (X,), F.mish),
    "logsigmoid": Case(lambda x: (x * 20).logsigmoid(), (X,), lambda x: F.logsigmoid(x * 20)),
    "softsign": Case(lambda x: x.softsign(), (X,), F.softsign),
    "softmin": Case(lambda x: x.softmin(0), (X,), lambda x: F.softmin(x, 0)),
    "normalize": Case(lambda x: x.normalize(), (X3,), F.normalize),
    "normalize_l1_zero_row": Case(lambda x: (x * (x > -3)).normalize(p=1, dim=-1), (np.where(X > 1, -5, X),),
                                  lambda x: F.normalize(x * (x > -3), p=1, dim=-1)),
    # ---- reductions --------------------------------------------------------------------------------------
    "any_all": same(lambda x: ((x > 1).any(1), (x > -2).all(0), (x > 5).any(), (x > -5).all(), x[:, :0].any(1),
                               x[:, :0].all(1)), X),
    "any_all_numbers": same(lambda i: (i.any(0), i.all(1, keepdim=True)), INTS),
    "amax_amin": same(lambda x: (x.amax(1), x.amin(0, keepdim=True), x.amax(), x.amax(()), x.amin(dim=(0, 2)),
                                 torch_or_zyx(x).amax(x, -1, True)), np.round(X3)),
    "amax_ties": same(lambda x: (x.amax(1), x.amin(dim=0)), TIES),
    "amax_int": same(lambda i: (i.amax(0), i.amin()), INTS),
    "count_nonzero": same(lambda x, i: (x.count_nonzero(), x.count_nonzero(1), x.count_nonzero(dim=(0, 1)),
                                        torch_or_zyx(i).count_nonzero(i, 0), (i > 0).count_nonzero(-1)),
                          np.where(MASK, 0, X), INTS % 3),
    "std_mean": same(lambda x: torch_or_zyx(x).std_mean(x, 1), X),
    "var_mean": same(lambda x: torch_or_zyx(x).var_mean(x, (0, 2), correction=0, keepdim=True), X3),
    # ---- scans -------------------------------------------------------------------------------------------
    "cumprod": same(lambda x: x.cumprod(1), np.where(MASK, 0, X)),
    "cumprod_int": same(lambda i: i.cumprod(0), INTS),
    "cummax": same(lambda x: x.cummax(1), TIES),
    "cummin": same(lambda x: x.cummin(0), TIES),
    "cummax_nan": same(lambda x: x.cummax(-1), np.array([1, 3, np.nan, 2, 5, np.nan, 0], f32)),
    "logcumsumexp": same(lambda x: x.logcumsumexp(1), np.concatenate([X, [[-1e3] * 5]]) * 10),
    # ---- sorting -----------------------------------------------------------------------------------------
    "sort": same(lambda x: x.sort(dim=1, stable=True), TIES),
    "sort_descending": same(lambda x: x.sort(dim=0, descending=True, stable=True), TIES),
    "sort_nan": same(lambda x: x.sort(stable=True), np.array([2, np.nan, -1, 0, np.nan, -np.inf], f32)),
    "sort_int": same(lambda i: i.sort(dim=-1, stable=True), INTS),
    "argsort": same(lambda x: x.argsort(dim=1, descending=True, stable=True), TIES),
    "topk": same(lambda x: x.topk(3, 1), X),
    "topk_smallest": same(lambda x: x.topk(2, 0, largest=False), X),
    "msort": same(lambda x: x.msort(), X),
    # ---- placement ---------------------------------------------------------------------------------------
    "tril_triu": same(lambda x: (x.tril(), x.triu(1), x.tril(-2), x.triu(-1)), X3),
    "diag": same(lambda v, m: (v.diag(), v.diag(2), v.diag(-1), m.diag(), m.diag(1), m.diag(-2)), ROW, X),
    "diagonal": same(lambda x: (x.diagonal(), x.diagonal(1, 1, 2), x.diagonal(-1, 2, 0), x.diagonal(7)), X3),
    "roll": same(lambda x: (x.roll(2, 1), x.roll((-1, 4), (0, 2)), x.roll(3)), X3),
    "repeat_interleave": same(lambda x: (x.repeat_interleave(2, 1), x.repeat_interleave(3)), X),
    "repeat_interleave_counts": Case(lambda x: x.repeat_interleave(zyx.tensor([2, 0, 1], device=x.device), 0),
                                     (X,), lambda x: x.repeat_interleave(torch.tensor([2, 0, 1]), 0)),
    "unfold": same(lambda x: (x.unfold(2, 2, 1), x.unfold(1, 2, 2), x.unfold(0, 2, 1)), X3),
    "narrow": same(lambda x: x.narrow(2, 1, 3), X3),
    "index_select": Case(lambda x: x.index_select(1, zyx.tensor([4, 0, 4], device=x.device)), (X,),
                         lambda x: x.index_select(1, torch.tensor([4, 0, 4]))),
    "pad_modes": Case(lambda x: tuple(x.pad(((0, 0), (0, 0), (2, 1), (1, 3)), mode=m)
                                      for m in ("reflect", "replicate", "circular")), (IMAGE,),
                      lambda x: tuple(F.pad(x, (1, 3, 2, 1), mode=m) for m in ("reflect", "replicate", "circular"))),
    "pad_negative": Case(lambda x: (x.pad(((0, 0), (-1, 2), (3, -2)), value=0.5),
                                    x.pad(((0, 0), (1, -1), (-2, 1)), mode="reflect")), (X3,),
                         lambda x: (F.pad(x, (3, -2, -1, 2), value=0.5), F.pad(x, (-2, 1, 1, -1), mode="reflect"))),
    "tile": same(lambda x: (x.tile((2,)), x.tile((2, 1, 3)), x.tile(1, 2), torch_or_zyx(x).tile(x, (3, 1))), X),
    "diff": same(lambda x: (x.diff(), x.diff(2, 0), x.diff(dim=1, prepend=x[:, :2], append=x[:, :1]), x.diff(n=7),
                            torch_or_zyx(x).diff(x, 3, -1), x.diff(n=0)), X),
    "diff_int_bool": same(lambda i: (i.diff(), (i > 0).diff(dim=0), i.diff(append=i[:, :1] * 2)), INTS),
    "take_along_dim": same(lambda x, i: (x.take_along_dim(i, 1), x.take_along_dim(i[:1], dim=1),
                                         x[:1].take_along_dim(i, 1), torch_or_zyx(x).take_along_dim(x, i),
                                         x.take_along_dim(i[:2, :1] % 3, dim=0)),
                           X, np.array([[4, 1], [0, 3], [2, 0]])),
    "hstack_vstack": same(lambda a, b, v: (torch_or_zyx(a).hstack([a, b]), torch_or_zyx(a).vstack([a, v, a[:1]]),
                                           torch_or_zyx(a).hstack((v, b[0], v[0])),
                                           torch_or_zyx(a).vstack([v, v * 0 + v[0], v])),
                          X, more(-1, 1, (3, 2)), ROW),
    # ---- matrix products ---------------------------------------------------------------------------------
    "bmm": same(lambda a, b: a.bmm(b), X3, more(-1, 1, (2, 5, 4))),
    "bmm_function": same(lambda a, b: torch_or_zyx(a).bmm(a, b), X3[:, :1], more(-1, 1, (2, 5, 1))),
    "mv": same(lambda m, v: (m.mv(v), torch_or_zyx(m).mv(m.T, v[:3])), X, ROW),
    "outer": same(lambda a, b, i: (a.outer(b), torch_or_zyx(a).outer(b[:1], a), i[0].outer(a)), ROW,
                  more(-1, 1, (3,)), INTS),
    "addmm": same(lambda c, a, b: (c.addmm(a, b), torch_or_zyx(c).addmm(c, a, b, beta=0.5, alpha=-2),
                                   c[:1].addmm(a, b, alpha=3), c[0, 0].addmm(a, b, beta=2)),
                  more(-1, 1, (3, 4)), X, more(-1, 1, (5, 4))),
    # ---- scatter and masks -------------------------------------------------------------------------------
    "masked_select": same(lambda x, m: x.masked_select(m), X3, X3[0] > 0),
    "boolean_index": same(lambda x, m: (x[m], x[:, m[0]], x[..., m[0, 0]], x[m[:, 0, 0]], x[m[:, :, 0], 1:]),
                          X3, X3 > 0),
    "nonzero": same(lambda x: (x.nonzero(), *x.nonzero(as_tuple=True)), np.where(MASK, X, 0)),
}



def set_items(x: Any, v: Any) -> Any:
    """A copy of x written through several kinds of index (the same code runs on torch)."""
    y = x * 1
    y[1, :, 1:4:2] = v[:, :2]
    y[0, 2] = 7.0
    y[:, [2, 0]] = v[:2, 4:]
    y[..., None, 4] = v[:2, 2:3, None]
    y[y > 1.5] = -1.0
    return y


CASES["setitem"] = same(set_items, X3, X)

# scatter: index (2, 3) into self (3, 5) along dim 1; unique per row for plain scatter (PyTorch leaves repeats
# undefined), repeats for the reductions
UNIQUE_INDEX = np.array([[4, 0, 2], [1, 3, 0]])
REPEATED_INDEX = np.array([[4, 0, 4], [1, 1, 1]])
SOURCE = uniform(-2, 2, (2, 3))
for reduce in ("sum", "prod", "mean", "amax", "amin"):  # (no value of self ties with a result: see below)
    CASES[f"scatter_reduce_{reduce}"] = same(
        lambda x, i, s, reduce=reduce: tuple(x.scatter_reduce(1, i, s, reduce, include_self=include)
                                             for include in (True, False)),
        TIES, REPEATED_INDEX, np.round(SOURCE))
CASES.update({
    "scatter": same(lambda x, i, s: x.scatter(1, i, s), X, UNIQUE_INDEX, SOURCE),
    "scatter_value": same(lambda x, i: x.scatter(0, i, value=2.5), X, UNIQUE_INDEX[:, :2] % 3),
    "scatter_add": same(lambda x, i, s: x.scatter_add(1, i, s), X, REPEATED_INDEX, SOURCE),
    "scatter_add_dim0": same(lambda x, i, s: x.scatter_add(0, i, s), X, REPEATED_INDEX % 3, SOURCE),
})


def torch_or_zyx(x: Any) -> Any:
    """The module whose functions take x (torch.std_mean(x) and zyx.std_mean(x))."""
    return torch if isinstance(x, torch.Tensor) else zyx


# ---- convolution, pooling, resizing, attention, einsum ---------------------------------------------------
SIGNAL = uniform(-2, 2, (2, 4, 9))
VOLUME = uniform(-2, 2, (1, 2, 4, 5, 3))
CASES.update({
    "conv1d": same(lambda x, w, b: torch_or_zyx(x).conv1d(x, w, b, stride=2, padding=2, dilation=2, groups=2),
                   SIGNAL, uniform(-1, 1, (6, 2, 3)), uniform(-1, 1, (6,))),
    "conv1d_same_unbatched": same(lambda x, w: torch_or_zyx(x).conv1d(x, w, padding="same"),
                                  SIGNAL[0], uniform(-1, 1, (3, 4, 4))),
    "conv3d": same(lambda x, w: torch_or_zyx(x).conv3d(x, w, stride=(1, 2, 1), padding=1),
                   VOLUME, uniform(-1, 1, (3, 2, 2, 3, 2))),
    "conv_transpose1d": same(lambda x, w: torch_or_zyx(x).conv_transpose1d(x, w, stride=3, padding=1),
                             SIGNAL, uniform(-1, 1, (4, 2, 3))),
    "conv_transpose2d": same(lambda x, w, b: torch_or_zyx(x).conv_transpose2d(
        x, w, b, stride=2, padding=1, output_padding=1, groups=2, dilation=(1, 2)),
        IMAGE, uniform(-1, 1, (4, 3, 3, 2)), uniform(-1, 1, (6,))),
    "conv_transpose3d": same(lambda x, w: torch_or_zyx(x).conv_transpose3d(x, w, stride=(2, 1, 1)),
                             VOLUME, uniform(-1, 1, (2, 2, 2, 2, 1))),
    "max_pool2d_options": Case(lambda x: x.max_pool2d(3, 2, 1, dilation=(1, 2), ceil_mode=True, return_indices=True),
                               (IMAGE,), lambda x: F.max_pool2d(x, 3, 2, 1, dilation=(1, 2), ceil_mode=True,
                                                                return_indices=True)),
    "max_pool1d": Case(lambda x: x.max_pool1d(2, ceil_mode=True), (SIGNAL,), lambda x: F.max_pool1d(x, 2, ceil_mode=True)),
    "max_pool3d": Case(lambda x: x.max_pool3d(2, 1), (VOLUME,), lambda x: F.max_pool3d(x, 2, 1)),
    "avg_pool2d_ceil": Case(lambda x: x.avg_pool2d(3, 2, 1, ceil_mode=True), (IMAGE,),
                            lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True)),
    "avg_pool2d_exclude_pad": Case(lambda x: x.avg_pool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
                                   (IMAGE,), lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True,
                                                                    count_include_pad=False)),
    "avg_pool2d_divisor": Case(lambda x: x.avg_pool2d(2, divisor_override=3), (IMAGE,),
                               lambda x: F.avg_pool2d(x, 2, divisor_override=3)),
    "avg_pool1d": Case(lambda x: x.avg_pool1d(4, 3, 2, count_include_pad=False), (SIGNAL,),
                       lambda x: F.avg_pool1d(x, 4, 3, 2, count_include_pad=False)),
    "avg_pool3d": Case(lambda x: x.avg_pool3d((2, 2, 1)), (VOLUME,), lambda x: F.avg_pool3d(x, (2, 2, 1))),
    "nearest": Case(lambda x: (zyx.nn.interpolate(x, size=(7, 4)), zyx.nn.interpolate(x, scale_factor=1.5)),
                    (IMAGE,), lambda x: (F.interpolate(x, size=(7, 4)), F.interpolate(x, scale_factor=1.5))),
    "nearest_exact_1d": Case(lambda x: zyx.nn.interpolate(x, size=13, mode="nearest-exact"), (SIGNAL,),
                             lambda x: F.interpolate(x, size=13, mode="nearest-exact")),
    "bilinear": Case(lambda x: (zyx.nn.interpolate(x, size=(8, 3), mode="bilinear"),
                                zyx.nn.interpolate(x, scale_factor=(2, 0.5), mode="bilinear", align_corners=True)),
                     (IMAGE,), lambda x: (F.interpolate(x, size=(8, 3), mode="bilinear"),
                                          F.interpolate(x, scale_factor=(2, 0.5), mode="bilinear",
                                                        align_corners=True))),
    "linear": Case(lambda x: zyx.nn.interpolate(x, scale_factor=1.7, mode="linear"), (SIGNAL,),
                   lambda x: F.interpolate(x, scale_factor=1.7, mode="linear")),
})

Q, K, V = uniform(-1, 1, (2, 2, 3, 4)), uniform(-1, 1, (2, 2, 5, 4)), uniform(-1, 1, (2, 2, 5, 3))
Q7, K7, V7 = uniform(-2, 2, (2, 3, 7, 5)), uniform(-2, 2, (2, 3, 7, 5)), uniform(-1, 1, (2, 3, 7, 6))
KEEP = RNG.random((3, 5)) < 0.7
KEEP[:, 0] = True  # every query sees some key (a row with none is nan in both)
CASES.update({
    "sdpa": Case(lambda q, k, v: zyx.nn.scaled_dot_product_attention(q, k, v), (Q, K, V),
                 F.scaled_dot_product_attention),
    "sdpa_bool_mask": Case(lambda q, k, v, m: zyx.nn.scaled_dot_product_attention(q, k, v, m, scale=0.3),
                           (Q, K, V, KEEP), lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, m, scale=0.3)),
    "sdpa_float_mask": Case(lambda q, k, v, m: zyx.nn.scaled_dot_product_attention(q, k, v, m), (Q, K, V, X),
                            F.scaled_dot_product_attention),
    "sdpa_causal": Case(lambda q, k, v: zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True), (Q, K, V),
                        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
    "sdpa_causal_square_odd": Case(lambda q, k, v: zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                                     scale=0.7),
                                   (Q7, K7, V7), lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                                               scale=0.7)),
    "sdpa_broadcast_batch": Case(lambda q, k, v: zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True),
                                 (Q7, K7[:, :1], V7[:1, :1]),
                                 lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
    "einsum_batched_matmul": same(lambda a, b: torch_or_zyx(a).einsum("bij,bjk->bik", a, b), Q[0], K[0].swapaxes(-1, -2)),
    "einsum_trace_outer": same(lambda m, v: (torch_or_zyx(m).einsum("ii", m[:, :3]),
                                             torch_or_zyx(m).einsum("i,j", v, v),
                                             torch_or_zyx(m).einsum("ij->j", m)), X, ROW),
    "einsum_ellipsis_three": same(lambda a, b, c: torch_or_zyx(a).einsum("...ij,...jk,kl->...li", a, b, c),
                                  Q, K.swapaxes(-1, -2), uniform(-1, 1, (5, 2))),
    "einsum_list_broadcast": same(lambda a, b: torch_or_zyx(a).einsum("bhqd,xhkd->bhqk", [a, b]), Q, K[:1]),
})

# ---- nan reductions, products, search and histograms (inputs from `more`, after every earlier case's) -------
NANS = np.where(MASK, np.nan, X).astype(f32)
SORTED = np.sort(np.round(more(-3, 3, (2, 6))), -1)  # repeated entries: left and right insertion points differ
PROBES = np.concatenate([np.round(more(-4, 4, (2, 5))), [[np.nan], [-np.inf]]], 1).astype(f32)
POINTS, FAR = more(-1, 1, (2, 30, 4)), more(-1, 1, (1, 27, 4))
CASES.update({
    "nansum_nanmean": same(lambda x: (x.nansum(), x.nansum(1), x.nanmean(-1, keepdim=True),
                                      torch_or_zyx(x).nanmean(x, dim=1), torch_or_zyx(x).nansum(x, (0, 1))), NANS),
    "nanmean_all_nan": same(lambda x: (x.nanmean(0), x.nansum(dim=0)), np.where(NANS > 0, np.nan, NANS)[:, :2],
                            grad=False),  # torch's gradient of an all-nan mean is nan (0 * inf), zyx's 0
    "nansum_int": same(lambda i: (i.nansum(), i.nansum(0, keepdim=True)), INTS),
    "aminmax": same(lambda x: (tuple(x.aminmax()), x.aminmax(dim=1).max, x.aminmax(dim=0, keepdim=True).min,
                               tuple(torch_or_zyx(x).aminmax(x, dim=-1))), X),
    "aminmax_ties_int": same(lambda x, i: (x.aminmax(dim=0).min, tuple(i.aminmax())), TIES, INTS),
    "cross": same(lambda a, b: (a.cross(b, dim=1), torch_or_zyx(a).cross(a, b[:1], dim=-2),
                                a[:, :, :3].cross(b[:, :, :3], dim=2)), X3, more(-1, 1, (2, 3, 5))),
    "kron": same(lambda a, b, i: (a.kron(b), torch_or_zyx(a).kron(b[0], a), i[:2, :2].kron(i[0])),
                 more(-1, 1, (2, 3)), more(-1, 1, (3, 1, 2)), INTS),
    "rot90": same(lambda x: (x.rot90(), x.rot90(3, (1, 0)), x.rot90(-2), torch_or_zyx(x).rot90(x, 5, [2, 0]),
                             x.rot90(0, (1, 2))), X3),
    "tensordot": same(lambda a, b, c: tuple(torch_or_zyx(a).tensordot(x, y, dims) for x, y, dims in (
        (a, b, 1), (a, c, ([1, 0], [0, 1])), (a, c, 0), (a, b.T, ([1], [1])), (c, c, 2), (a, c.T, ([0], [0])))),
                      X, more(-1, 1, (5, 4)), more(-1, 1, (5, 3))),
    "searchsorted": same(lambda s, v: (torch_or_zyx(s).searchsorted(s, v), torch_or_zyx(s).searchsorted(s[0], v),
                                       torch_or_zyx(s).searchsorted(s, v, right=True),
                                       torch_or_zyx(s).searchsorted(s[1], 0.0),
                                       torch_or_zyx(s).searchsorted(s, v, side="right", out_int32=True)),
                         SORTED, PROBES),
    "searchsorted_int": same(lambda s, v: torch_or_zyx(s).searchsorted(s, v), np.sort(INTS, -1), DIVISORS),
    "bucketize": same(lambda v, b: (torch_or_zyx(v).bucketize(v, b[0]), torch_or_zyx(v).bucketize(v, b[1], right=True),
                                    torch_or_zyx(v).bucketize(v[0], b[0], out_int32=True)), PROBES, SORTED),
    "histc": same(lambda x: (x.histc(), x.histc(bins=7, min=-1, max=1), torch_or_zyx(x).histc(x, 4, 0.5, 0.5),
                             x[:, :1].histc(3) * 0 + x[0, :1].histc(3)), X),
    "cdist": same(lambda a, b: (torch_or_zyx(a).cdist(a[:, :5], b[:, :4]), torch_or_zyx(a).cdist(a, b),
                                torch_or_zyx(a).cdist(a[0], b[0, :3], p=1.0),
                                torch_or_zyx(a).cdist(a[:, :6], b[:, :5], p=float("inf")),
                                torch_or_zyx(a).cdist(a[:1, :4], b[:, :3], p=3.0),
                                torch_or_zyx(a).cdist(a[:, :3], b[:, :3], compute_mode="use_mm_for_euclid_dist")),
                  POINTS, FAR, tol=(1e-4, 3e-5)),
    "cdist_zero_distances": same(lambda a: torch_or_zyx(a).cdist(a, a[:, :2]), POINTS[:, :4]),
})

# ---- order statistics (inputs from `more`, after every earlier case's) ---------------------------------------
ORDER = more(-3, 3, (4, 6))                          # distinct values: torch's chosen indices are defined
ORDER_NANS = np.where(more(0, 1, (4, 6)) > 0.7, np.nan, ORDER).astype(f32)
ORDER_NANS[1, :] = np.nan


def quantiles(x: Any) -> Any:
    q = x.new_tensor([0.0, 0.3, 0.5, 0.625, 1.0]) if isinstance(x, torch.Tensor) else [0.0, 0.3, 0.5, 0.625, 1.0]
    return tuple(op(q, dim, keepdim=keep, interpolation=how) for op in (x.quantile, x.nanquantile)
                 for dim, keep, how in ((1, False, "linear"), (0, True, "lower"), (-1, False, "higher"),
                                        (None, False, "nearest"), (None, True, "midpoint"))) + (x.quantile(0.4, 0),)


CASES.update({
    "kthvalue": same(lambda x: (tuple(x.kthvalue(2, 1)), tuple(x.kthvalue(4, 0, keepdim=True)),
                                tuple(torch_or_zyx(x).kthvalue(x, 6))), ORDER),
    "median": same(lambda x: (x.median(), tuple(x.median(1)), tuple(x.median(0, keepdim=True)), x.nanmedian(),
                              tuple(x.nanmedian(-1)), tuple(torch_or_zyx(x).median(x[:, :5], 1))), ORDER),
    "median_nan": same(lambda x: (x.median(), tuple(x.median(1)), x.nanmedian(), tuple(x.nanmedian(1)),
                                  x.kthvalue(5, 1).values), ORDER_NANS[[0, 2, 3]], grad=False),  # (which nan)
    "nanmedian_nan_grad": same(lambda x: (x.nanmedian(), x.nanmedian(1).values), ORDER_NANS[[0, 2, 3]]),
    "median_all_nan_values": same(lambda x: (x.nanmedian(1).values, x.median(1).values), ORDER_NANS, grad=False),
    "quantile": same(quantiles, ORDER),
    "quantile_nan": same(lambda x: (x.quantile(0.3, 1), x.nanquantile(0.3, 1), x.nanquantile(0.5),
                                    x.nanquantile(0.8, 0, interpolation="nearest"), x.quantile(0.5)),
                         ORDER_NANS, grad=False),
    "nanquantile_grad": same(lambda x: (x.nanquantile(0.3, 1), x.nanquantile(0.9, 0, interpolation="midpoint")),
                             ORDER_NANS[[0, 2, 3]]),
})


# ---- special functions (inputs from `more`, after every earlier case's) -------------------------------------
SPREAD = np.concatenate([more(-6, 6, (2, 5)), more(-30, 30, (2, 5))]).astype(f32)  # no poles (not integers)
CASES.update({
    "erfc": same(lambda x: (x.erfc(), torch_or_zyx(x).erfc(x * 0.3)), SPREAD),
    "erfinv": same(lambda u: (u.erfinv(), torch_or_zyx(u).erfinv(u * 0.5)), more(-0.999, 0.999, (3, 5))),
    "lgamma_digamma": same(lambda x: (x.lgamma(), torch_or_zyx(x).lgamma(x * 0.1), x.digamma() * 0.01,
                                      torch_or_zyx(x).digamma(x.abs() + 0.2)), SPREAD, tol=(2e-4, 2e-5)),
})


def test_special_functions_keep_float64_precision_and_edges(device):
    """erfc, erfinv, lgamma and digamma against torch's float64 on wide grids (erfc far into its tail), and
    their values at poles, infinities, nan and +-1."""
    if device.kind == "wgpu":
        pytest.skip("no float64 on WGPU")
    x = np.concatenate([np.linspace(-40, 40, 801) + 0.013, [1e-300, 1e-8, 0.5, 1.5, 2.5, 1e3, 1e8]])
    u = np.tanh(np.linspace(-8, 8, 401))
    for name, values, rtol, atol in (("erfc", x, 1e-14, 0), ("lgamma", x, 1e-12, 1e-14),
                                     ("digamma", x, 1e-12, 1e-14), ("erfinv", u, 1e-9, 0)):
        actual = getattr(zyx.tensor(values, device=device), name)().numpy()
        np.testing.assert_allclose(actual, getattr(torch.tensor(values), name)().numpy(), rtol=rtol, atol=atol,
                                   err_msg=name)
    tail = zyx.tensor(np.array([10.0, 26.0]), device=device).erfc().numpy()
    np.testing.assert_allclose(tail, [2.088487583762545e-45, 5.663192408856143e-296], rtol=1e-13)
    edges = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, -1.0, -2.0, 1.0, 2.0])
    for name in ("erfc", "lgamma", "digamma", "erfinv"):
        actual = getattr(zyx.tensor(edges, device=device), name)().numpy()
        np.testing.assert_allclose(actual, getattr(torch.tensor(edges), name)().numpy(), rtol=1e-14, err_msg=name)
    erfinv32 = zyx.tensor(np.array([-1, 1, 1.5, -0.3], f32), device=device).erfinv().numpy()
    np.testing.assert_allclose(erfinv32, torch.tensor([-1, 1, 1.5, -0.3]).erfinv().numpy(), rtol=1e-6)


def test_special_functions_second_derivatives(device):
    """d2/dx2 of erfc, erfinv, lgamma and digamma (zyx's backward of backward) against torch's, float64, away
    from poles: nothing in them is detached, so second derivatives are the approximations' own. (erfinv's, 3 600
    nodes on 6 elements, outgrows dozens of kernels: the scheduler's frontier cuts, test_fusion.py.)"""
    if device.kind == "wgpu":
        pytest.skip("no float64 on WGPU")
    points = {"erfc": [-3.0, -0.4, 0.0, 0.3, 0.9, 1.5, 5.0, 9.0], "erfinv": [-0.99, -0.5, 0.0, 0.1, 0.6, 0.97],
              "lgamma": [-2.5, -0.3, 0.2, 1.7, 2.5, 7.3, 15.0], "digamma": [-2.5, -0.3, 0.2, 1.7, 2.5, 7.3, 15.0]}
    derivatives = {}
    for name, values in points.items():
        x = zyx.tensor(np.array(values), device=device)
        first, = getattr(x, name)().sum().backward([x])
        derivatives[name] = first, first.sum().backward([x])[0]
    zyx.realize(*(d for pair in derivatives.values() for d in pair))  # (one program: its builds side by side)
    for name, values in points.items():
        first, second = derivatives[name]
        t = torch.tensor(values, dtype=torch.float64, requires_grad=True)
        t_first, = torch.autograd.grad(getattr(t, name)().sum(), t, create_graph=True)
        t_second, = torch.autograd.grad(t_first.sum(), t)
        np.testing.assert_allclose(first.numpy(), t_first.detach().numpy(), rtol=1e-8, err_msg=name)
        np.testing.assert_allclose(second.numpy(), t_second.numpy(), rtol=1e-8, atol=1e-12, err_msg=name)


def _flat(value: Any) -> list[Any]:
    if isinstance(value, (tuple, list)):
        return [v for item in value for v in _flat(item)]
    return [value]


def _numpy(value: Any) -> np.ndarray:
    return value.detach().numpy() if isinstance(value, torch.Tensor) else value.numpy()


@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch(device, name):
    case = CASES[name]
    z_inputs = [zyx.tensor(a, device=device) for a in case.inputs]
    t_inputs = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in case.inputs]
    z_out, t_out = _flat(case.op(*z_inputs)), _flat((case.reference or case.op)(*t_inputs))
    assert len(z_out) == len(t_out)
    sources = [(z, t) for z, t in zip(z_inputs, t_inputs) if t.requires_grad]
    seeds = np.random.default_rng(zlib.crc32(name.encode()))  # (per case: not what ran before it in the process)
    seeded = [(z, t, seeds.standard_normal(t.shape).astype(f32)) for z, t in zip(z_out, t_out) if t.requires_grad]
    z_grads, t_grads = [], []
    if seeded and sources and case.grad:
        z_loss = sum((z * zyx.tensor(s, device=device)).sum() for z, _, s in seeded)
        t_loss = sum((t * torch.tensor(s)).sum() for _, t, s in seeded)
        z_grads = z_loss.backward([z for z, _ in sources])
        t_grads = torch.autograd.grad(t_loss, [t for _, t in sources], allow_unused=True)
    zyx.realize(*z_out, *(g for g in z_grads if g is not None))
    rtol, atol = case.tol
    for i, (z, t) in enumerate(zip(z_out, t_out)):
        assert z.shape == tuple(t.shape), f"output {i}: shape {z.shape} != {tuple(t.shape)}"
        assert z.dtype.name == str(t.dtype).removeprefix("torch."), f"output {i}: {z.dtype} != {t.dtype}"
        np.testing.assert_allclose(_numpy(z), _numpy(t), rtol=rtol, atol=atol, err_msg=f"output {i}")
    for i, (z, t) in enumerate(zip(z_grads, t_grads)):
        expected = np.zeros(sources[i][1].shape, f32) if t is None else _numpy(t)
        np.testing.assert_allclose(_numpy(z), expected, rtol=rtol, atol=atol, err_msg=f"gradient {i}")


HALF_COMPOSITES = {  # name: (zyx, torch) of a half tensor; each computed in float32 and rounded once
    **{name: (lambda x, name=name: getattr(x, name)(), lambda x, name=name: getattr(F, name)(x))
       for name in ("gelu", "silu", "softplus", "elu", "selu", "celu", "mish", "hardswish", "hardsigmoid",
                    "logsigmoid", "softsign")},
    "gelu tanh": (lambda x: x.gelu(approximate="tanh"), lambda x: F.gelu(x, approximate="tanh")),
    "rsqrt": (lambda x: x.abs().rsqrt(), lambda x: x.abs().rsqrt()),
    **{name: (lambda x, name=name: getattr(x, name)(), lambda x, name=name: getattr(x, name)())
       for name in ("tan", "atan", "asin", "acos", "cosh", "sinh", "asinh", "acosh", "atanh", "log10")},
    **{name: (lambda x, name=name: getattr(x, name)(x * 0.5), lambda x, name=name: getattr(torch, name)(x, x * 0.5))
       for name in ("logaddexp", "logaddexp2", "atan2", "hypot")},
    **{name: (lambda x, name=name: getattr(x.reshape(40, 100), name)(1),
              lambda x, name=name: getattr(x.reshape(40, 100), name)(1)) for name in ("nansum", "nanmean")},
    "lerp": (lambda x: x.lerp(x * 0.5 + 1, 0.3), lambda x: x.lerp(x * 0.5 + 1, 0.3)),
    "lerp by a tensor": (lambda x: x.lerp(x * 0.5 + 1, x * 0 + 0.75), lambda x: x.lerp(x * 0.5 + 1, x * 0 + 0.75)),
}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", list(HALF_COMPOSITES))
def test_half_composites_round_once_as_torch(device, name, dtype):
    """Of a half tensor, the composite activations and math functions are computed in float32 and rounded once, as
    PyTorch computes them (softsign, which PyTorch composes of half ops, in the dtype as PyTorch): of 4 000 values
    at most 5 % of those of magnitude 0.05 or more are apart from torch's, and each value by less than a unit in the
    last place of max(|value|, 0.05) (erf's and tanh's last float32 bits decide a rounding now and then, and where
    1 + erf or 1 + tanh cancels their errors outgrow tiny values). Written in half ops, most were 10-55 % apart and
    up to 5-76 units."""
    values = RNG.standard_normal(4000).astype(f32) * 3
    ours, theirs = HALF_COMPOSITES[name]
    x = torch.tensor(values).to(getattr(torch, dtype))
    expected = theirs(x).float().numpy()
    actual = ours(zyx.tensor(x.float().numpy(), device=device).cast(getattr(zyx, dtype))).float().numpy()
    finite = np.isfinite(expected)
    expected, actual = expected[finite], actual[finite]
    large = np.abs(expected) >= 0.05
    apart = (actual[large] != expected[large]).mean()
    assert apart <= 0.05, f"{apart:.1%} of the values differ from torch's"
    unit = np.maximum(np.abs(expected), 0.05) * 2.0 ** -(7 if dtype == "bfloat16" else 10)
    units = np.abs(actual - expected) / unit
    assert units.max() < 1, f"{units.max():.2f} units in the last place apart at {expected[units.argmax()]}"


def test_float64_precision_of_composed_functions(device):
    """The functions built from approximations (atan, log1p inside asinh/acosh/atanh) and from cancelling
    differences (sinh near 0) keep float64 precision, not just float32's."""
    wide = WIDE.astype(np.float64) * np.array([1, 1e-3, 1, 1e-5, 1])
    unit, above = UNIT.astype(np.float64), ABOVE_ONE.astype(np.float64)
    z = {name: zyx.tensor(a, device=device) for name, a in (("wide", wide), ("unit", unit), ("above", above))}
    results = [(z["wide"].atan(), np.arctan(wide)), (z["unit"].asin(), np.arcsin(unit)),
               (z["unit"].acos(), np.arccos(unit)), (z["wide"].asinh(), np.arcsinh(wide)),
               (z["above"].acosh(), np.arccosh(above)), (z["unit"].atanh(), np.arctanh(unit)),
               ((z["unit"] * 1e-6).sinh(), np.sinh(unit * 1e-6)), (z["unit"].cosh(), np.cosh(unit)),
               (z["wide"].logaddexp(z["wide"] * 0.5), np.logaddexp(wide, wide * 0.5))]
    zyx.realize(*(r for r, _ in results))
    for k, (actual, expected) in enumerate(results):
        np.testing.assert_allclose(actual.numpy(), expected, rtol=2e-14, atol=0, err_msg=f"function {k}")


def test_torch_function_forms_and_creation(device):
    """zyx.<op>(x, ...) as torch.<op>(x, ...); linspace, empty and meshgrid; allclose answers a bool."""
    assert all(callable(getattr(torch, name)) for name in zyx.TENSOR_FUNCTIONS)
    x = zyx.tensor(X, device=device)
    np.testing.assert_allclose(zyx.sort(x, 1).values.numpy(), np.sort(X, 1))
    np.testing.assert_allclose(zyx.atan(x).numpy(), np.arctan(X), rtol=1e-6)
    assert zyx.allclose(x, x + 1e-6) and not zyx.allclose(x, x + 1e-3) and x.allclose(X + 1e-6)
    np.testing.assert_allclose(zyx.linspace(-1, 2, 7, device=device).numpy(), torch.linspace(-1, 2, 7).numpy(),
                               rtol=1e-6)
    assert zyx.linspace(0, 1, 0, device=device).shape == (0,)
    empty = zyx.empty(2, 3, device=device, dtype=zyx.int32)
    assert empty.shape == (2, 3) and empty.dtype == zyx.int32 and zyx.empty_like(x).shape == X.shape
    for indexing in ("ij", "xy"):
        grids = zyx.meshgrid(zyx.tensor(ROW, device=device), zyx.arange(3.0, device=device), indexing=indexing)
        expected = torch.meshgrid(torch.tensor(ROW), torch.arange(3.0), indexing=indexing)
        for grid, reference in zip(grids, expected):
            np.testing.assert_array_equal(grid.numpy(), reference.numpy())


def test_op_errors_name_the_problem(device):
    x = zyx.tensor(X, device=device)
    index = zyx.tensor([[0, 5]], device=device)
    with pytest.raises(IndexError, match="scatter_add: index 5 is out of bounds for axis 1 with size 5"):
        x.scatter_add(1, index, x[:1, :2]).numpy()
    with pytest.raises(zyx.ShapeError, match="index"):
        x.scatter(1, zyx.tensor([0, 1], device=device), 1.0)
    with pytest.raises(ValueError, match="reduce must be one of"):
        x.scatter_reduce(1, index, x, "max")
    with pytest.raises(ValueError, match="topk: k=6 is out of range"):
        x.topk(6)
    with pytest.raises(ValueError, match="reflect padding"):
        x.pad(((3, 0),), mode="reflect")
    with pytest.raises(ValueError, match="mode must be one of"):
        x.pad(((1, 0),), mode="wrap")
    with pytest.raises(zyx.ShapeError, match="label 'j' has sizes 5 and 3"):
        zyx.einsum("ij,jk->ik", x, x)
    with pytest.raises(ValueError, match="2 operands"):
        zyx.einsum("ij,jk", x)
    with pytest.raises(ValueError, match="rounding_mode"):
        x.div(2, rounding_mode="round")
    with pytest.raises(ValueError, match="exactly one of size and scale_factor"):
        zyx.nn.interpolate(x.reshape(1, 1, 3, 5))
    with pytest.raises(zyx.ShapeError, match="bilinear"):
        zyx.nn.interpolate(x.reshape(1, 3, 5), size=4, mode="bilinear")
    with pytest.raises(ValueError, match="output_padding"):
        x.reshape(1, 1, 3, 5).conv_transpose2d(x[:1, :2].reshape(1, 1, 1, 2), output_padding=1)
    with pytest.raises(zyx.ShapeError, match="does not fit"):
        x.max_pool2d(2, dilation=4)
    with pytest.raises(zyx.ShapeError, match=r"bmm: .*\(2, 3, 5\) and \(5, 3\)"):
        zyx.tensor(X3, device=device).bmm(x.T[:, :4])
    with pytest.raises(zyx.ShapeError, match=r"batch sizes differ in shapes \(2, 3, 5\) and \(1, 5, 3\)"):
        zyx.tensor(X3, device=device).bmm(x.T.unsqueeze(0))
    with pytest.raises(zyx.ShapeError, match=r"mv: .*\(3, 5\) and \(3, 5\)"):
        x.mv(x)
    with pytest.raises(zyx.ShapeError, match=r"input of shape \(4,\) does not broadcast .* \(3, 3\)"):
        x[0, :4].addmm(x, x.T)
    with pytest.raises(zyx.ShapeError, match=r"take_along_dim: .*\(3, 5\) .*\(2, 2\)"):
        x.take_along_dim(zyx.tensor([[0, 1], [1, 0]], device=device), 1)
    with pytest.raises(zyx.ShapeError, match=r"diff: .*\(1, 4\)"):
        x.diff(prepend=x[:1, :4], dim=0)
    with pytest.raises(TypeError, match="mask must be bool"):
        x.masked_select(X)
    q = zyx.tensor(Q, device=device)
    with pytest.raises(ValueError, match="not both"):
        zyx.nn.scaled_dot_product_attention(q, q, q, zyx.tensor(KEEP[:, :3], device=device), is_causal=True)
    with pytest.raises(zyx.ShapeError, match=r"query \(2, 2, 3, 4\), key \(2, 2, 5, 4\) and value \(2, 2, 3, 3\)"):
        zyx.nn.scaled_dot_product_attention(q, zyx.tensor(K, device=device), zyx.tensor(V[:, :, :3], device=device))


def test_product_search_and_histogram_errors_name_the_problem(device):
    x, x3 = zyx.tensor(X, device=device), zyx.tensor(X3, device=device)
    with pytest.raises(zyx.ShapeError, match=r"cross: axis 1 must have size 3 in both shapes, got \(3, 5\) and"):
        x.cross(x, dim=1)
    with pytest.raises(zyx.ShapeError, match=r"cross: no axis of size 3 in shape \(2, 5\)"):
        x[:2].cross(x[:2])
    with pytest.raises(zyx.ShapeError, match=r"cross: shapes \(2, 3, 5\) and \(3, 5\) need the same number"):
        x3.cross(x, dim=1)
    with pytest.raises(zyx.ShapeError, match=r"tensordot: axis 1 of shape \(3, 5\) and axis 0 of shape \(3, 5\)"):
        x.tensordot(x, 1)
    with pytest.raises(zyx.ShapeError, match=r"tensordot: cannot contract 3 axes of shapes \(3, 5\)"):
        x.tensordot(x, 3)
    with pytest.raises(zyx.ShapeError, match=r"rot90: needs at least 2 dimensions, got shape \(5,\)"):
        x[0].rot90()
    with pytest.raises(zyx.ShapeError, match="rot90: dims .* name one axis twice"):
        x.rot90(1, (1, -1))
    with pytest.raises(zyx.AxisError, match="rot90: axis 2 is out of range"):
        x.rot90(1, (0, 2))
    with pytest.raises(zyx.ShapeError, match=r"searchsorted: sorted sequence of shape \(2, 5\) and values of shape "
                                             r"\(3, 5\)"):
        zyx.searchsorted(x[:2], x)
    with pytest.raises(zyx.ShapeError, match=r"bucketize: boundaries must be a 1-D tensor, got shape \(3, 5\)"):
        x.bucketize(x)
    with pytest.raises(ValueError, match="side must be"):
        zyx.searchsorted(x[0], x, side="left", right=True)
    with pytest.raises(zyx.ShapeError, match=r"cdist: needs \(..., P, M\) and \(..., R, M\) tensors, got shapes "
                                             r"\(3, 5\) and \(3, 4\)"):
        zyx.cdist(x, x[:, :4])
    with pytest.raises(zyx.ShapeError, match=r"cdist: batch axes of shapes \(2, 3, 5\) and \(3, 2, 5\) do not"):
        zyx.cdist(x3, x.unsqueeze(1).expand(3, 2, 5))
    with pytest.raises(TypeError, match="cdist: needs floating-point"):
        zyx.cdist(x.int(), x)
    with pytest.raises(ValueError, match="histc: max"):
        x.histc(4, 1, -1)
    with pytest.raises(TypeError, match="histc: needs a floating-point"):
        x.int().histc()
    with pytest.raises(TypeError, match="nanmean: needs a floating-point"):
        x.int().nanmean()
    with pytest.raises(ValueError, match="aminmax: cannot reduce over axis 1 of size 0"):
        x[:, :0].aminmax(dim=1)


def test_order_statistic_errors_name_the_problem(device):
    x = zyx.tensor(X, device=device)
    with pytest.raises(ValueError, match=r"kthvalue: k=6 is out of range for dimension 1 of size 5"):
        x.kthvalue(6, 1)
    with pytest.raises(ValueError, match=r"kthvalue: k=0 is out of range for dimension -1 of size 5"):
        x.kthvalue(0)
    with pytest.raises(ValueError, match=r"quantile: q must be in \[0, 1\], got 1.5"):
        x.quantile(1.5)
    with pytest.raises(ValueError, match=r"nanquantile: q must be in \[0, 1\], got \[0.5, -0.1"):
        x.nanquantile(zyx.tensor([0.5, -0.1], device=device), 1)
    with pytest.raises(ValueError, match="quantile: interpolation must be one of"):
        x.quantile(0.5, interpolation="cubic")
    with pytest.raises(TypeError, match="quantile: needs a floating-point"):
        x.int().quantile(0.5)


def test_setitem_strides_and_errors(device):
    """Negative steps (which torch refuses) against numpy; an empty region writes nothing; a value that does not
    broadcast to the indexed shape raises."""
    x = zyx.tensor(X3, device=device)
    expected = X3.copy()
    x[:, ::-2, 3::-3] = zyx.tensor(ROW[:4].reshape(2, 2), device=device)
    expected[:, ::-2, 3::-3] = ROW[:4].reshape(2, 2)
    x[1:1] = 5.0
    np.testing.assert_array_equal(x.numpy(), expected)
    with pytest.raises(zyx.ShapeError, match="setitem"):
        x[0] = zyx.tensor(ROW[:4], device=device)
    with pytest.raises(IndexError, match="index 3 is out of bounds"):
        x[0, 3] = 1.0


@pytest.mark.parametrize("reduce", ["amax", "amin"])
def test_scatter_reduce_without_self_gives_its_whole_gradient_to_the_entries(device, reduce):
    """include_self=False: where self's value ties with the entries' extreme, the entries still get the whole
    gradient (self was not combined). torch 2.13 counts self in the tie and loses its share (here each entry gets
    a third: its scatter_reduce_backward divides by self_is_result + src_is_result either way), so this is checked
    exactly, not against torch."""
    x = zyx.tensor(np.array([[2.0, 0.0, 5.0]], f32), device=device)
    src = zyx.tensor(np.array([[2.0, 2.0, 1.0]] if reduce == "amax" else [[2.0, 2.0, 3.0]], f32), device=device)
    index = zyx.tensor([[0, 0, 1]], device=device)
    out = x.scatter_reduce(1, index, src, reduce, include_self=False)
    grad_x, grad_src = (out * zyx.tensor(np.array([[1.0, 10.0, 100.0]], f32), device=device)).sum().backward([x, src])
    np.testing.assert_array_equal(out.numpy(), [[2.0, 1.0 if reduce == "amax" else 3.0, 5.0]])
    np.testing.assert_array_equal(grad_src.numpy(), [[0.5, 0.5, 10.0]])  # the tied entries share position 0's 1
    np.testing.assert_array_equal(grad_x.numpy(), [[0.0, 0.0, 100.0]])


def test_odd_inverse_functions_keep_the_sign_of_zero(device):
    """atan, asin, asinh (odd functions built from their half on x >= 0) give -0.0 for -0.0, as torch and numpy."""
    zeros = np.array([-0.0, 0.0], f32)
    x = zyx.tensor(zeros, device=device)
    for name in ("atan", "asin", "asinh", "atanh"):
        expected = getattr(torch.tensor(zeros), name)().numpy()
        np.testing.assert_array_equal(np.signbit(getattr(x, name)().numpy()), np.signbit(expected), err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_abs_of_either_zero_is_positive_zero(device, dtype):
    """|-0.0| and |+0.0| are +0.0, as torch's (max(x, -x) alone gave -0.0 for +0.0: 1 / |0| was -inf); nan stays nan,
    the infinities infinite, the gradient at either zero 0."""
    values = np.array([-0.0, 0.0, -1.5, 2.0, np.inf, -np.inf, np.nan], f32)
    x = zyx.tensor(values, device=device).to(dtype)
    got = x.abs().float().numpy()
    expected = torch.tensor(values).to(getattr(torch, dtype)).abs().float().numpy()
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.signbit(got[:6]), np.signbit(expected[:6]))  # (a nan's sign bit is anyone's)
    np.testing.assert_array_equal(x.isinf().numpy(), np.isinf(values))
    grad, = x.float().abs().sum().backward([x])
    np.testing.assert_array_equal(grad.float().numpy()[:4], [0.0, 0.0, -1.0, 1.0])
