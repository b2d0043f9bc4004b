"""Writing by index (scatter, scatter_add, scatter_reduce) and selecting by mask (masked_select, nonzero).

Scatters compose like gather: a one-hot comparison of each index entry with every position along the axis,
then a sum (or product, max, min) over the entries. That costs O(m n) per row for m entries and an axis of n,
fused into a reduction. Mask selection has a data-dependent shape, so the mask is realized on the host to
find the positions, which then index the (still lazy) tensor: gradients flow through the selection, but these
ops cannot run inside `@zyx.jit` (a traced step has no values yet).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from .errors import ShapeError
from .tensor_base import TensorBase
from .tensor_combine import cat
from .tensor_movement import broadcast_shape, normalize_axis
from .tensor_scan import extremes
from .trace.checks import RangeCheck, attach

if TYPE_CHECKING:
    from .tensor import Tensor

SCATTER_REDUCTIONS = ("sum", "prod", "mean", "amax", "amin")


class _Scatter:
    """One scatter along `axis`, moved last: the entries `source` (..., m) go to positions `index` (..., m) of
    `target` (..., n). `hits` (..., m, n) marks entry i landing on position j; per-position results are padded
    from the index's leading shape to the target's with `fit`."""

    def __init__(self, target: "Tensor", dim: int, index: "Tensor", source: Any, op: str):
        if not isinstance(index, TensorBase) or not index.dtype.is_int:
            raise TypeError(f"{op}: index must be an integer tensor, got {getattr(index, 'dtype', type(index))}")
        self.axis = normalize_axis(dim, target.ndim, op)
        if index.ndim != target.ndim:
            raise ShapeError(f"{op}: index of shape {index.shape} needs as many dimensions as self {target.shape}")
        if not isinstance(source, TensorBase):
            source = target._full(index.shape, source, target.dtype)
        if source.ndim != target.ndim or any(i > s for i, s in zip(index.shape, source.shape)) or any(
                i > t for d, (i, t) in enumerate(zip(index.shape, target.shape)) if d != self.axis):
            raise ShapeError(f"{op}: index {index.shape} must fit within src {source.shape} on every axis and "
                             f"within self {target.shape} outside axis {self.axis}")
        source = source.cast(target.dtype).shrink([(0, i) for i in index.shape])
        self.target = target.transpose(self.axis, -1)
        self.source = source.transpose(self.axis, -1)
        length = target.shape[self.axis]
        self.index = index
        self.hits = index.transpose(self.axis, -1).unsqueeze(-1) == target._arange(length)
        self.hit_any = self.fit(self.hits.any(-2), False)
        self.check = RangeCheck(index.node, 0, length, f"{op}: index {{value}} is out of bounds for axis "
                                                       f"{self.axis} with size {length}") if index.numel() else None

    def fit(self, per_position: "Tensor", value: Any) -> "Tensor":
        """Pad a (lead..., n) or (lead..., m, n) result from the index's leading shape to the target's."""
        lead = self.target.shape[:-1]
        pads = [(0, t - s) for t, s in zip(lead, per_position.shape)]
        return per_position.pad(pads, value) if any(after for _, after in pads) else per_position

    def entries(self, fill: Any) -> "Tensor":
        """(lead..., m, n): each entry's value where it lands, `fill` elsewhere."""
        return self.hits.where(self.source.unsqueeze(-1), fill)

    def done(self, result: "Tensor") -> "Tensor":
        """Back to the original axis order, with the index range check attached."""
        result = result.transpose(self.axis, -1)
        if self.check is not None:
            attach(result.node, self.check)
        return result


class ScatterMixin:
    """Tensor's scatter family and mask selection."""

    __slots__ = ()

    def scatter(self: "Tensor", dim: int, index: "Tensor", src: Any = None, value: Any = None,
                reduce: Optional[str] = None) -> "Tensor":
        """A copy of self with self[..., index[i], ...] = src[i] along `dim` (src may be a number, or `value`),
        as torch.scatter. Where several entries name one position the last one wins (PyTorch leaves it
        undefined); `reduce='add'` or `'multiply'` combines instead. Out-of-range indices raise IndexError when
        realized."""
        if (src is None) == (value is None):
            raise TypeError("scatter: give exactly one of src and value")
        source = src if src is not None else value
        if reduce is not None:
            modes = {"add": "sum", "multiply": "prod"}
            if reduce not in modes:
                raise ValueError(f"scatter: reduce must be 'add' or 'multiply', got {reduce!r}")
            return self._scatter_reduce(dim, index, source, modes[reduce], True, "scatter")
        plan = _Scatter(self, dim, index, source, "scatter")
        if not index.numel():
            return self
        order = self._arange(1, plan.hits.shape[-2] + 1).unsqueeze(-1)     # (m, 1): entry i + 1
        last = plan.hits.where(order, 0).max(-2, keepdim=True)
        chosen = plan.hits & (order == last)
        written = plan.fit(_pick(chosen, plan.source), 0)
        return plan.done(plan.hit_any.where(written, plan.target))

    def scatter_add(self: "Tensor", dim: int, index: "Tensor", src: "Tensor") -> "Tensor":
        """A copy of self with src[i] added at position index[i] along `dim` (repeats add up), as
        torch.scatter_add."""
        return self._scatter_reduce(dim, index, src, "sum", True, "scatter_add")

    def scatter_reduce(self: "Tensor", dim: int, index: "Tensor", src: "Tensor", reduce: str,
                       include_self: bool = True) -> "Tensor":
        """Combine the entries of src that land on each position (and self's value there, with include_self)
        by 'sum', 'prod', 'mean', 'amax' or 'amin', as torch.scatter_reduce; positions no entry lands on keep
        self. Tied maxima and minima share the gradient equally."""
        return self._scatter_reduce(dim, index, src, reduce, include_self, "scatter_reduce")

    def _scatter_reduce(self: "Tensor", dim: int, index: "Tensor", src: Any, reduce: str, include_self: bool,
                        op: str) -> "Tensor":
        if reduce not in SCATTER_REDUCTIONS:
            raise ValueError(f"{op}: reduce must be one of {SCATTER_REDUCTIONS}, got {reduce!r}")
        plan = _Scatter(self, dim, index, src, op)
        target, landed = plan.target, plan.hit_any
        if reduce in ("amax", "amin"):
            lowest, highest = extremes(self)
            fill = lowest if reduce == "amax" else highest
            rows = plan.fit(plan.entries(fill), fill)                                      # (lead, m, n)
            if include_self:
                rows = cat([target.unsqueeze(-2), rows], -2)
            best = rows.max(-2) if reduce == "amax" else rows.min(-2)
            return plan.done(landed.where(best, target))
        if reduce == "prod":
            combined = plan.fit(plan.entries(1).prod(-2), 1)
            base = landed.where(1, target) if not include_self else target
            return plan.done(base * combined)
        total = plan.fit(_pick(plan.hits, plan.source), 0)
        base = landed.where(0, target) if not include_self else target
        if reduce == "sum":
            return plan.done(base + total)
        count = plan.fit(plan.hits.sum(-2), 0) + int(include_self)
        count = count.maximum(1).cast(self.dtype)
        mean = (base + total) / count if self.dtype.is_float else (base + total) // count
        return plan.done(landed.where(mean, target))

    def masked_select(self: "Tensor", mask: Any) -> "Tensor":
        """The elements where `mask` (broadcast with self) is true, as a 1-D tensor in row-major order. The
        result's length depends on the mask's values, so the mask is realized here (self stays lazy and
        gradients flow back to the selected elements)."""
        truth = np.asarray(mask.numpy() if hasattr(mask, "numpy") else mask)
        if truth.dtype != np.bool_:
            raise TypeError(f"masked_select: mask must be bool, got {truth.dtype}")
        shape = broadcast_shape("masked_select", self.shape, truth.shape)
        values = self.expand(shape) if self.shape != shape else self
        return values.reshape(-1).index_select(0, np.flatnonzero(np.broadcast_to(truth, shape)).tolist())

    def nonzero(self: "Tensor", as_tuple: bool = False) -> Union["Tensor", tuple["Tensor", ...]]:
        """The positions of nonzero elements, (count, ndim) int64 (or one 1-D tensor per axis with as_tuple),
        as torch.nonzero. Computed on the host from the realized values: its shape depends on them."""
        values = self.numpy()
        if as_tuple:
            return tuple(self._data(axis.astype(np.int64)) for axis in np.nonzero(np.atleast_1d(values)))
        return self._data(np.argwhere(values).astype(np.int64))

    argwhere = nonzero


def _pick(hits: "Tensor", source: "Tensor") -> "Tensor":
    """(lead, n): the sum over entries of each entry's value where it lands (source (lead, m))."""
    return hits.where(source.unsqueeze(-1), 0).sum(-2).cast(source.dtype)

