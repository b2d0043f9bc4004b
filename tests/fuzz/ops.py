"""What each fuzz op means in zyx, numpy and torch: one line of source per framework, so the program that runs
is the program a reproducer prints.

A form is a format string over operand names ({a}, {b}, {c}) and parameters already written as source
({axis}, {shape}, {dtype}...). Dtype names are bare words that each framework's namespace binds: numpy and the
torch gradient reference bind float32 to float64, so they compute in double (the "shadow" precision).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

import zyx

from .data import gather_index, index_data, input_data


@dataclass(frozen=True)
class OpForms:
    """One op's source in each framework; torch=None means the zyx text works on torch tensors as well."""
    zyx: str
    numpy: str
    torch: Optional[str] = None

    def form(self, framework: str) -> str:
        if framework == "torch":
            return self.torch or self.zyx
        return getattr(self, framework)


_REDUCE_ARGS = "({a}, axis={axis}, keepdims={keepdim})"
OPS: dict[str, OpForms] = {
    # elementwise, unary
    "neg": OpForms("-{a}", "-{a}"),
    "exp": OpForms("{a}.exp()", "np.exp({a})"),
    "log": OpForms("{a}.log()", "np.log({a})"),
    "sqrt": OpForms("{a}.sqrt()", "np.sqrt({a})"),
    "reciprocal": OpForms("{a}.reciprocal()", "1 / {a}"),
    "sin": OpForms("{a}.sin()", "np.sin({a})"),
    "cos": OpForms("{a}.cos()", "np.cos({a})"),
    "tanh": OpForms("{a}.tanh()", "np.tanh({a})"),
    "sigmoid": OpForms("{a}.sigmoid()", "1 / (1 + np.exp(-{a}))"),
    "relu": OpForms("{a}.relu()", "np.maximum({a}, 0)"),
    "abs": OpForms("{a}.abs()", "np.abs({a})"),
    "square": OpForms("{a}.square()", "np.square({a})"),
    "floor": OpForms("{a}.floor()", "np.floor({a})"),
    "ceil": OpForms("{a}.ceil()", "np.ceil({a})"),
    "silu": OpForms("{a}.silu()", "{a} / (1 + np.exp(-{a}))", "F.silu({a})"),
    "softplus": OpForms("{a}.softplus()", "np.logaddexp(0, {a})", "F.softplus({a})"),
    "gelu": OpForms("{a}.gelu()", "gelu({a})", "F.gelu({a})"),
    "positive": OpForms("{a}.abs() + 0.5", "np.abs({a}) + 0.5"),  # conditions an operand for log/sqrt/1/x
    "logical_not": OpForms("{a}.logical_not()", "np.logical_not({a})"),
    # elementwise, binary (broadcasting) and where
    "add": OpForms("{a} + {b}", "{a} + {b}"),
    "sub": OpForms("{a} - {b}", "{a} - {b}"),
    "mul": OpForms("{a} * {b}", "{a} * {b}"),
    "div": OpForms("{a} / {b}", "{a} / {b}"),
    "pow": OpForms("{a} ** {b}", "{a} ** {b}"),
    "maximum": OpForms("{a}.maximum({b})", "np.maximum({a}, {b})", "torch.maximum({a}, {b})"),
    "minimum": OpForms("{a}.minimum({b})", "np.minimum({a}, {b})", "torch.minimum({a}, {b})"),
    "lt": OpForms("{a} < {b}", "{a} < {b}"),
    "ge": OpForms("{a} >= {b}", "{a} >= {b}"),
    "eq": OpForms("{a} == {b}", "{a} == {b}"),
    "logical_and": OpForms("{a}.logical_and({b})", "np.logical_and({a}, {b})"),
    "logical_or": OpForms("{a}.logical_or({b})", "np.logical_or({a}, {b})"),
    "where": OpForms("zyx.where({a}, {b}, {c})", "np.where({a}, {b}, {c})", "torch.where({a}, {b}, {c})"),
    "scale": OpForms("{a} * {value}", "{a} * {value}"),
    "cast": OpForms("{a}.cast({dtype})", "{a}.astype({dtype})", "{a}.to({dtype})"),
    # views
    "reshape": OpForms("{a}.reshape({shape})", "{a}.reshape({shape})"),
    "permute": OpForms("{a}.permute({order})", "np.transpose({a}, {order})"),
    "transpose": OpForms("{a}.transpose({i}, {j})", "np.swapaxes({a}, {i}, {j})"),
    "expand": OpForms("{a}.expand({shape})", "np.broadcast_to({a}, {shape})"),
    "getitem": OpForms("{a}[{index}]", "{a}[{index}]", "Basic({a})[{index}]"),
    "flip": OpForms("{a}.flip({axes})", "np.flip({a}, {axes})"),
    "pad": OpForms("{a}.pad({pairs}, {value})", "pad({a}, {pairs}, {value})", "pad({a}, {pairs}, {value})"),
    # reductions
    "sum": OpForms("{a}.sum({axis}, keepdim={keepdim})", "np.sum" + _REDUCE_ARGS),
    "max": OpForms("{a}.max({axis}, keepdim={keepdim})", "np.max" + _REDUCE_ARGS,
                   "{a}.amax({axis}, keepdim={keepdim})"),
    "min": OpForms("{a}.min({axis}, keepdim={keepdim})", "np.min" + _REDUCE_ARGS,
                   "{a}.amin({axis}, keepdim={keepdim})"),
    "mean": OpForms("{a}.mean({axis}, keepdim={keepdim})", "np.mean" + _REDUCE_ARGS),
    "var": OpForms("{a}.var({axis}, keepdim={keepdim})", "np.var({a}, axis={axis}, ddof=1, keepdims={keepdim})"),
    "prod": OpForms("{a}.prod({axis}, keepdim={keepdim})", "np.prod" + _REDUCE_ARGS,
                    "prod({a}, {axis}, {keepdim})"),
    "logsumexp": OpForms("{a}.logsumexp({axis}, keepdim={keepdim})", "logsumexp" + _REDUCE_ARGS,
                         "torch.logsumexp({a}, {axis}, keepdim={keepdim})"),
    # products, indexing, joining
    "matmul": OpForms("{a} @ {b}", "{a} @ {b}"),
    "take": OpForms("{a}[{lead}{b}]", "{a}[{lead}{b}]"),
    "gather": OpForms("{a}.gather({axis}, {b})", "gather({a}, {axis}, {b})", "torch.gather({a}, {axis}, {b})"),
    "cat": OpForms("zyx.cat([{a}, {b}], {axis})", "np.concatenate([{a}, {b}], {axis})",
                   "torch.cat([{a}, {b}], {axis})"),
    "stack": OpForms("zyx.stack([{a}, {b}], {axis})", "np.stack([{a}, {b}], {axis})",
                     "torch.stack([{a}, {b}], {axis})"),
}

# ops whose zyx form is an approximation (erf inside gelu): float64 graphs that use one get float32-ish tolerances
APPROXIMATE = {"gelu"}
DTYPES = ("bool", "int32", "int64", "float32", "float64")


# ---- numpy helpers the numpy forms call -------------------------------------------------------------------
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _gelu(x: np.ndarray) -> np.ndarray:
    return x * 0.5 * (1 + _erf(x / math.sqrt(2)))


def _logsumexp(x: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> np.ndarray:
    top = np.max(x, axis=axis, keepdims=True)
    total = np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top
    return total if keepdims else np.squeeze(total, axis=axis)


def _all_pairs(pairs: list[tuple[int, int]], ndim: int) -> list[tuple[int, int]]:
    """zyx's pad: pairs from the first axis; axes after the last pair are not padded."""
    return list(pairs) + [(0, 0)] * (ndim - len(pairs))


def _numpy_pad(x: np.ndarray, pairs: list[tuple[int, int]], value: float) -> np.ndarray:
    return np.pad(x, _all_pairs(pairs, x.ndim), constant_values=value)


def _gather(x: np.ndarray, axis: int, index: np.ndarray) -> np.ndarray:
    """torch.gather: the index may be smaller than x on the other axes, which read from their start."""
    window = tuple(slice(0, s) if d != axis else slice(None) for d, s in enumerate(index.shape))
    return np.take_along_axis(x[window], index, axis)


# ---- torch helpers the torch forms call -------------------------------------------------------------------
class Basic:
    """x[...] with numpy's basic indexing, negative slice steps included (torch has none)."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __getitem__(self, index: Any) -> torch.Tensor:
        items = index if isinstance(index, tuple) else (index,)
        x, axis = self.x, 0
        for item in items:
            if isinstance(item, int):
                x = x.select(axis, item)
                continue
            positions = torch.arange(x.shape[axis])[item] if item.step is None or item.step > 0 else \
                torch.tensor(list(range(*item.indices(x.shape[axis]))), dtype=torch.int64)
            x = x.index_select(axis, positions)
            axis += 1
        return x


def _torch_pad(x: torch.Tensor, pairs: list[tuple[int, int]], value: float) -> torch.Tensor:
    flat = [p for pair in reversed(_all_pairs(pairs, x.ndim)) for p in pair]  # F.pad lists the last axis first
    return F.pad(x, flat, value=value)


def _torch_prod(x: torch.Tensor, axis: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    for a in sorted((a % x.ndim for a in axis), reverse=True):
        x = x.prod(a, keepdim=keepdim)
    return x


def namespace(framework: str, device: Optional[zyx.Device] = None, shadow: bool = True) -> dict[str, Any]:
    """Names a framework's forms use. `shadow`: float32 means float64 (the numpy and torch references)."""
    if framework == "zyx":
        names: dict[str, Any] = {"zyx": zyx, "dev": device}
        names.update({d: zyx.bool_ if d == "bool" else getattr(zyx, d) for d in DTYPES})
    elif framework == "numpy":
        names = {"np": np, "pad": _numpy_pad, "gelu": _gelu, "logsumexp": _logsumexp, "gather": _gather}
        names.update({d: np.dtype(d).type for d in DTYPES})
    else:
        names = {"torch": torch, "F": F, "Basic": Basic, "pad": _torch_pad, "prod": _torch_prod}
        names.update({d: getattr(torch, d) for d in DTYPES})
    if shadow and framework != "zyx":
        names["float32"] = names["float64"]
    names.update({"input_data": input_data, "index_data": index_data, "gather_index": gather_index})
    return names
