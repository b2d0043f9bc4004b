"""Running (prefix) ops along an axis: cumsum, cumprod, cummax, cummin and logcumsumexp.

Each is a Hillis-Steele scan: log2(n) steps, each combining every element with the one `shift` places before
it (a padded view), so a scan is views and elementwise ops only and gradients come from the composition.
"""
from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from .dtypes import int64
from .tensor_base import rounded_once
from .tensor_movement import normalize_axis
from .tensor_reduce import reduce_axes
from .tensor_results import ValuesIndices

if TYPE_CHECKING:
    from .tensor import Tensor

Parts = tuple["Tensor", ...]


def scan(parts: Parts, axis: int, fills: tuple[Any, ...], combine: Callable[[Parts, Parts], Parts]) -> Parts:
    """Inclusive scan of tensors of one shape along `axis`; `combine(earlier, current)` must be associative
    and `fills` (one per tensor) its identity, which pads the positions before the start."""
    length = parts[0].shape[axis]
    shift = 1
    while shift < length:
        keep = [(0, s) for s in parts[0].shape]
        keep[axis] = (0, length)
        earlier = tuple(p.pad([(0, 0)] * axis + [(shift, 0)], value=fill).shrink(keep)
                        for p, fill in zip(parts, fills))
        parts = combine(earlier, parts)
        shift *= 2
    return parts


def scan_axis(t: "Tensor", dim: int, op: str) -> Optional[int]:
    """The normalized axis of a scan, or None for a 0-d tensor (nothing to scan)."""
    if t.ndim == 0:
        reduce_axes(dim, 0, op)
        return None
    return normalize_axis(dim, t.ndim, op)


def running(x: "Tensor", dim: int, op: str, fill: Any, combine: Callable[["Tensor", "Tensor"], "Tensor"]) -> "Tensor":
    """The scan of one tensor with a binary `combine(earlier, current)` whose identity is `fill`."""
    axis = scan_axis(x, dim, op)
    return x if axis is None else scan((x,), axis, (fill,), lambda e, c: (combine(e[0], c[0]),))[0]


def extremes(t: "Tensor") -> tuple[Any, Any]:
    """The lowest and highest value of t's dtype (infinities for floats)."""
    if t.dtype.is_float:
        return -np.inf, np.inf
    if t.dtype.is_bool:
        return False, True
    info = np.iinfo(t.dtype.np)
    return int(info.min), int(info.max)


class ScanMixin:
    """Tensor's running sums, products, extremes and log-sum-exps."""

    __slots__ = ()

    @rounded_once
    def cumsum(self: "Tensor", axis: int = 0) -> "Tensor":
        """Running sum along `axis` (a scan of log2(n) shifted adds); bool and int tensors sum in int64, as
        PyTorch."""
        x = self if self.node.dtype.is_float else self.cast(int64)
        return running(x, axis, "cumsum", 0, operator.add)

    @rounded_once
    def cumprod(self: "Tensor", dim: int = 0) -> "Tensor":
        """Running product along `dim` (no division, so zeros keep exact gradients); ints multiply in int64."""
        return running(self if self.dtype.is_float else self.cast(int64), dim, "cumprod", 1, operator.mul)

    @rounded_once
    def logcumsumexp(self: "Tensor", dim: int = 0) -> "Tensor":
        """log(cumsum(exp(x))) as a scan of logaddexp, so no prefix underflows or overflows."""
        return running(self._float(), dim, "logcumsumexp", -np.inf, lambda e, c: e.logaddexp(c))

    def cummax(self: "Tensor", dim: int = 0) -> ValuesIndices:
        """(running maximum, index of the last element that attains it), as torch.cummax; nan counts as the
        largest. The gradient goes to that element."""
        return self._running_extreme(dim, "cummax")

    def cummin(self: "Tensor", dim: int = 0) -> ValuesIndices:
        """(running minimum, index of the last element that attains it), as torch.cummin; nan counts as the
        smallest value's opposite (it wins, as in PyTorch)."""
        return self._running_extreme(dim, "cummin")

    def _running_extreme(self: "Tensor", dim: int, op: str) -> ValuesIndices:
        x = self.cast(int64) if self.dtype.is_bool else self
        axis = scan_axis(x, dim, op)
        if axis is None:
            return ValuesIndices(self, x.cast(int64) * 0)
        positions = x._arange(x.shape[axis]).reshape((-1,) + (1,) * (x.ndim - axis - 1))
        lowest, highest = extremes(x)
        fill = lowest if op == "cummax" else highest

        def combine(earlier: Parts, current: Parts) -> Parts:
            (ev, ei), (cv, ci) = earlier, current
            wins = cv >= ev if op == "cummax" else cv <= ev
            if cv.dtype.is_float:
                wins = wins | cv.isnan()
            return wins.where(cv, ev), wins.where(ci, ei)

        values, indices = scan((x, positions.expand(x.shape)), axis, (fill, 0), combine)
        return ValuesIndices(values.cast(self.dtype), indices)
