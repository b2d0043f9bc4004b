"""Reductions (sum, max and what is composed from them: mean, var, softmax, argmax...)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from .dtypes import int64
from .errors import AxisError, ShapeError
from .trace import node as n
from .trace.ops import Op
from .tensor_base import rounded_once
from .tensor_movement import normalize_axis
from .tensor_results import MinMax

if TYPE_CHECKING:
    from .tensor import Tensor

Axis = Optional[Union[int, Sequence[int]]]


def reduce_axes(axis: Axis, ndim: int, op: str) -> tuple[int, ...]:
    """Sorted non-negative axes; a 0-d tensor accepts axis 0 or -1 (as PyTorch) and has none to reduce."""
    if axis is None:
        return tuple(range(ndim))
    axes = [axis] if isinstance(axis, (int, np.integer)) else list(axis)
    if ndim == 0:
        for a in axes:
            if int(a) not in (0, -1):
                raise AxisError(f"{op}: axis {a} is out of range for a tensor with 0 dimensions")
        return ()
    normalized = tuple(sorted({normalize_axis(int(a), ndim, op) for a in axes}))
    if len(normalized) != len(axes):
        raise ShapeError(f"{op}: repeated axis in {axis}")
    return normalized


def _all_axes(axis: Axis) -> bool:
    """Whether `axis` names every axis in torch.amax's spelling: None, or an empty sequence."""
    return axis is None or (not isinstance(axis, (int, np.integer)) and len(axis) == 0)


class ReduceMixin:
    __slots__ = ()
    node: Any

    def _reduce(self, op: Op, axis: Axis, keepdim: bool, name: str) -> "Tensor":
        axes = reduce_axes(axis, len(self.node.shape), name)
        reduced = self._wrap(n.reduce(op, self.node, axes))  # type: ignore[attr-defined]
        if keepdim:
            return reduced
        return reduced.reshape(tuple(s for i, s in enumerate(self.node.shape) if i not in axes))

    def sum(self, axis: Axis = None, keepdim: bool = False, dtype: Any = None) -> "Tensor":
        """Sum over `axis` (all by default); bool and int tensors sum in int64 as PyTorch."""
        source = self
        if dtype is not None:
            source = self.cast(dtype)  # type: ignore[attr-defined]
        elif not self.node.dtype.is_float:
            source = self.cast(int64)  # type: ignore[attr-defined]
        return source._reduce(Op.SUM, axis, keepdim, "sum")

    def _check_not_empty(self, axis: Axis, op: str) -> None:
        for a in reduce_axes(axis, len(self.node.shape), op):
            if self.node.shape[a] == 0:
                raise ValueError(f"{op}: cannot reduce over axis {a} of size 0 (shape {self.node.shape}); "
                                 f"{op} has no identity")

    def max(self, axis: Axis = None, keepdim: bool = False) -> "Tensor":
        """Maximum over `axis`; tied maxima share the gradient equally."""
        self._check_not_empty(axis, "max")
        return self._reduce(Op.RMAX, axis, keepdim, "max")

    def min(self, axis: Axis = None, keepdim: bool = False) -> "Tensor":
        """Minimum over `axis`; tied minima share the gradient equally."""
        self._check_not_empty(axis, "min")
        return self._min(axis, keepdim)

    def amax(self, axis: Axis = None, keepdim: bool = False) -> "Tensor":
        """Maximum over `axis` (all axes for None or (), as torch.amax): the values only, tied maxima sharing
        the gradient equally."""
        return self.max(None if _all_axes(axis) else axis, keepdim)

    def amin(self, axis: Axis = None, keepdim: bool = False) -> "Tensor":
        """Minimum over `axis` (all axes for None or (), as torch.amin): the values only, tied minima sharing
        the gradient equally."""
        return self.min(None if _all_axes(axis) else axis, keepdim)

    def aminmax(self, axis: Optional[int] = None, keepdim: bool = False) -> MinMax:
        """(min, max) over `axis` (all axes by default) in one call, as torch.aminmax: a named pair, each with
        amin's and amax's gradient."""
        if axis is not None and not isinstance(axis, (int, np.integer)):
            raise TypeError(f"aminmax: dim must be an int or None, got {axis!r}")
        self._check_not_empty(axis, "aminmax")
        return MinMax(self.amin(axis, keepdim), self.amax(axis, keepdim))

    def nansum(self, axis: Axis = None, keepdim: bool = False, dtype: Any = None) -> "Tensor":
        """Sum over `axis` with nan counted as 0 (torch.nansum), as sum otherwise: the gradient is 0 at the nans
        (half tensors summed in float32 and rounded once)."""
        return _nansum(self if dtype is None else self.cast(dtype), axis, keepdim)  # type: ignore[attr-defined]

    def nanmean(self, axis: Axis = None, keepdim: bool = False, dtype: Any = None) -> "Tensor":
        """Mean over `axis` of the elements that are not nan (torch.nanmean): nan where all are; floats only. As
        torch's, it is nansum / count: of half tensors the sum is rounded once, then the quotient."""
        source = self if dtype is None else self.cast(dtype)  # type: ignore[attr-defined]
        if not source.dtype.is_float:
            raise TypeError(f"nanmean: needs a floating-point tensor, got {source.dtype}")
        return source.nansum(axis, keepdim) / source.isnan().logical_not().sum(axis, keepdim)

    def count_nonzero(self, axis: Axis = None) -> "Tensor":
        """How many elements are not zero over `axis` (all by default), as int64 (torch.count_nonzero)."""
        return (self != 0).sum(axis)  # type: ignore[operator]

    def _min(self, axis: Axis, keepdim: bool) -> "Tensor":
        dtype = self.node.dtype
        if dtype.is_bool:
            return self.cast(int64)._min(axis, keepdim).cast(dtype)  # type: ignore[attr-defined]
        if dtype.is_int:  # order reversal by ~x, which cannot overflow
            flipped = ~self  # type: ignore[operator]
            return ~flipped._reduce(Op.RMAX, axis, keepdim, "min")
        return -((-self)._reduce(Op.RMAX, axis, keepdim, "min"))  # type: ignore[operator]

    def _count(self, axis: Axis) -> int:
        return math.prod(self.node.shape[a] for a in reduce_axes(axis, len(self.node.shape), "mean"))

    @rounded_once
    def mean(self, axis: Axis = None, keepdim: bool = False) -> "Tensor":
        """Mean over `axis` (all by default); integers are averaged in float32, half precision in float32 and
        given back in its own dtype (under autocast too: PyTorch's rule)."""
        total = self._float().sum(axis, keepdim)  # type: ignore[attr-defined]
        count = self._count(axis)
        return total * (1 / count) if count else total / 0.0

    @rounded_once
    def var(self, axis: Axis = None, keepdim: bool = False, correction: int = 1) -> "Tensor":
        """Variance with Bessel's `correction` (1 by default, as PyTorch)."""
        x = self._float()  # type: ignore[attr-defined]
        centered = x - x.mean(axis, keepdim=True)
        divisor = max(self._count(axis) - correction, 0)
        squares = (centered * centered).sum(axis, keepdim)
        return squares * (1 / divisor) if divisor else squares / 0.0

    @rounded_once
    def std(self, axis: Axis = None, keepdim: bool = False, correction: int = 1) -> "Tensor":
        """Standard deviation with Bessel's `correction` (1 by default, as PyTorch)."""
        return self.var(axis, keepdim, correction).sqrt()

    @rounded_once
    def norm(self, p: Union[float, str] = 2, axis: Axis = None, keepdim: bool = False) -> "Tensor":
        """The vector p-norm over `axis` (all axes by default), as PyTorch's `norm` and `linalg.vector_norm`:
        p = 2 ('fro'), 1, inf, -inf, 0 (the count of non-zeros) or any other number. The 2-norm of zeros has
        gradient 0, as PyTorch's."""
        x = self._float().abs()  # type: ignore[attr-defined]
        p = 2 if p == "fro" else p
        if isinstance(p, str):
            raise ValueError(f"norm: p must be a number or 'fro', got {p!r}")
        if p == math.inf:
            return x.max(axis, keepdim)
        if p == -math.inf:
            return x.min(axis, keepdim)
        if p == 0:
            return (x != 0).float().sum(axis, keepdim)
        at_zero = x == 0  # |x|^p for p < 1 has an infinite gradient at 0: there the value, without gradient
        total = at_zero.where((x ** p).detach(), at_zero.where(1.0, x) ** p).sum(axis, keepdim)
        zero = total == 0  # the root's gradient at 0 is infinite: those norms are 0 with gradient 0
        return zero.where(0.0, zero.where(1.0, total) ** (1 / p))

    @rounded_once
    def prod(self, axis: Axis = None, keepdim: bool = False) -> "Tensor":
        """Product by pairwise halving: log2(n) fused multiplies, exact gradients, zeros handled."""
        axes = reduce_axes(axis, len(self.node.shape), "prod")
        x = self if self.node.dtype.is_float else self.cast(int64)  # type: ignore[attr-defined]
        for a in axes:
            x = _prod_axis(x, a)
        return x if keepdim else x.reshape(tuple(s for i, s in enumerate(self.node.shape) if i not in axes))

    def argmax(self, axis: Optional[int] = None, keepdim: bool = False) -> "Tensor":
        """Index of the first maximum (int64), a nan counting as the maximum (as numpy); over the flattened
        tensor when axis is None."""
        return self._arg_extreme(axis, keepdim, "argmax")

    def argmin(self, axis: Optional[int] = None, keepdim: bool = False) -> "Tensor":
        """Index of the first minimum (int64), a nan counting as the minimum (as numpy)."""
        return self._arg_extreme(axis, keepdim, "argmin")

    def _arg_extreme(self, axis: Optional[int], keepdim: bool, op: str) -> "Tensor":
        if axis is None:
            flat = self.reshape(-1)._arg_extreme(0, False, op)  # type: ignore[attr-defined]
            return flat.reshape((1,) * len(self.node.shape)) if keepdim else flat
        ndim = len(self.node.shape)
        if ndim == 0:
            reduce_axes(axis, 0, op)
            return self._wrap(n.const(0, (), int64, self.node.device))  # type: ignore[attr-defined]
        axis = normalize_axis(axis, ndim, op)
        length = self.node.shape[axis]
        if length == 0:
            raise ValueError(f"{op}: axis {axis} of shape {self.node.shape} is empty")
        x = self.cast(int64) if self.node.dtype.is_bool else self  # type: ignore[attr-defined]
        extreme = x.max(axis, keepdim=True) if op == "argmax" else x.min(axis, keepdim=True)
        hit = x == extreme
        if x.dtype.is_float:
            hit = hit | x.isnan()
        positions = self._arange(length).reshape(
            (length,) + (1,) * (ndim - axis - 1))
        candidates = hit.where(length - positions, 0)  # the first hit scores highest
        return (-(candidates._reduce(Op.RMAX, axis, keepdim, op)) + length).cast(int64)

    @rounded_once
    def logsumexp(self, axis: Axis = None, keepdim: bool = False) -> "Tensor":
        """log(sum(exp(x))) computed around the maximum, so large inputs do not overflow."""
        x = self._float()  # type: ignore[attr-defined]
        peak = x._reduce(Op.RMAX, axis, True, "logsumexp").detach()
        peak = peak.isinf().where(0, peak)
        total = (x - peak).exp().sum(axis, keepdim=True).log() + peak
        return total if keepdim else total.reshape(
            tuple(s for i, s in enumerate(x.shape) if i not in reduce_axes(axis, x.ndim, "logsumexp")))

    @rounded_once
    def softmax(self, axis: int = -1) -> "Tensor":
        """exp(x) / sum(exp(x)) along `axis`, computed around the maximum so it cannot overflow."""
        x = self._float()  # type: ignore[attr-defined]
        reduce_axes(axis, x.ndim, "softmax")
        shifted = (x - x._reduce(Op.RMAX, axis, True, "softmax").detach()).exp()
        return shifted / shifted.sum(axis, keepdim=True)

    @rounded_once
    def log_softmax(self, axis: int = -1) -> "Tensor":
        """log(softmax(x)) along `axis`, computed stably (x - logsumexp(x))."""
        x = self._float()  # type: ignore[attr-defined]
        return x - x.logsumexp(axis, keepdim=True)


@rounded_once
def _nansum(x: "Tensor", axis: Axis, keepdim: bool) -> "Tensor":
    return (x.isnan().where(0, x) if x.dtype.is_float else x).sum(axis, keepdim)


def _prod_axis(x: "Tensor", axis: int) -> "Tensor":
    """Multiply along one axis by halving it until one element is left (keeps the axis, size 1)."""
    length = x.shape[axis]
    if length == 0:
        shape = list(x.shape)
        shape[axis] = 1
        return x._full(shape, 1, x.dtype)
    while length > 1:
        half = -(-length // 2)
        padded = x.pad([(0, 0)] * axis + [(0, 2 * half - length)], value=1)
        first, second = padded.split([half, half], axis)
        x, length = first * second, half
    return x

