"""Reductions (sum, max and what is composed from them: mean, var, softmax, argmax, cumsum...)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from .dtypes import DEFAULT_FLOAT, int64
from .trace import node as n
from .trace.ops import Op
from .tensor_movement import normalize_axis

if TYPE_CHECKING:
    from .tensor import Tensor

Axis = Optional[Union[int, Sequence[int]]]


def reduce_axes(axis: Axis, ndim: int, op: str) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = [axis] if isinstance(axis, int) else list(axis)
    normalized = tuple(sorted({normalize_axis(a, ndim, op) for a in axes}))
    if len(normalized) != len(axes):
        raise ValueError(f"{op}: repeated axis in {axis}")
    return normalized


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

    def max(self, axis: Axis = None, keepdim: bool = False) -> "Tensor":
        """Maximum over `axis`; tied maxima share the gradient equally."""
        return self._reduce(Op.RMAX, axis, keepdim, "max")

    def min(self, axis: Axis = None, keepdim: bool = False) -> "Tensor":
        if self.node.dtype.is_bool:
            return (-(-self.cast(int64)).max(axis, keepdim)).cast(self.node.dtype)  # type: ignore[attr-defined]
        return -((-self).max(axis, keepdim))  # type: ignore[operator]

    def _count(self, axis: Axis) -> int:
        return math.prod(self.node.shape[a] for a in reduce_axes(axis, len(self.node.shape), "mean"))

    def mean(self, axis: Axis = None, keepdim: bool = False) -> "Tensor":
        total = self._float().sum(axis, keepdim)  # type: ignore[attr-defined]
        count = self._count(axis)
        return total * (1 / count) if count else total / 0.0

    def var(self, axis: Axis = None, keepdim: bool = False, correction: int = 1) -> "Tensor":
        """Variance with Bessel's `correction` (1 by default, as PyTorch)."""
        x = self._float()  # type: ignore[attr-defined]
        centered = x - x.mean(axis, keepdim=True)
        divisor = max(self._count(axis) - correction, 0)
        squares = (centered * centered).sum(axis, keepdim)
        return squares * (1 / divisor) if divisor else squares / 0.0

    def std(self, axis: Axis = None, keepdim: bool = False, correction: int = 1) -> "Tensor":
        return self.var(axis, keepdim, correction).sqrt()

    def prod(self, axis: Axis = None, keepdim: bool = False) -> "Tensor":
        """Product by pairwise halving: log2(n) fused multiplies, exact gradients, zeros handled."""
        axes = reduce_axes(axis, len(self.node.shape), "prod")
        x = self if axes else self
        for a in axes:
            x = _prod_axis(x, a)
        return x if keepdim else x.reshape(tuple(s for i, s in enumerate(self.node.shape) if i not in axes))

    def argmax(self, axis: Optional[int] = None, keepdim: bool = False) -> "Tensor":
        """Index of the first maximum (int64); over the flattened tensor when axis is None."""
        from .creation import arange
        if axis is None:
            return self.reshape(-1).argmax(0)  # type: ignore[attr-defined]
        axis = normalize_axis(axis, len(self.node.shape), "argmax")
        length = self.node.shape[axis]
        if length == 0:
            raise ValueError(f"argmax: axis {axis} of shape {self.node.shape} is empty")
        positions = arange(length, device=self.node.device).reshape(
            (length,) + (1,) * (len(self.node.shape) - axis - 1))
        is_max = self == self.max(axis, keepdim=True)  # type: ignore[operator]
        candidates = is_max.where(length - positions, 0)  # first max scores highest
        return (-(candidates.max(axis, keepdim)) + length).cast(int64)

    def argmin(self, axis: Optional[int] = None, keepdim: bool = False) -> "Tensor":
        return (-self.cast(DEFAULT_FLOAT) if not self.node.dtype.is_float else -self).argmax(axis, keepdim)  # type: ignore

    def logsumexp(self, axis: Axis = None, keepdim: bool = False) -> "Tensor":
        """log(sum(exp(x))) computed around the maximum, so large inputs do not overflow."""
        x = self._float()  # type: ignore[attr-defined]
        peak = x.max(axis, keepdim=True).detach()
        peak = peak.isinf().where(0, peak)
        total = (x - peak).exp().sum(axis, keepdim=True).log() + peak
        return total if keepdim else total.reshape(
            tuple(s for i, s in enumerate(x.shape) if i not in reduce_axes(axis, x.ndim, "logsumexp")))

    def softmax(self, axis: int = -1) -> "Tensor":
        x = self._float()  # type: ignore[attr-defined]
        shifted = (x - x.max(axis, keepdim=True).detach()).exp()
        return shifted / shifted.sum(axis, keepdim=True)

    def log_softmax(self, axis: int = -1) -> "Tensor":
        x = self._float()  # type: ignore[attr-defined]
        return x - x.logsumexp(axis, keepdim=True)

    def cumsum(self, axis: int = 0) -> "Tensor":
        """Running sum along `axis`, as a masked sum over a triangle (one fused reduction)."""
        from .creation import arange
        axis = normalize_axis(axis, len(self.node.shape), "cumsum")
        length = self.node.shape[axis]
        x = self.transpose(axis, -1) if axis != len(self.node.shape) - 1 else self  # type: ignore[attr-defined]
        positions = arange(length, device=self.node.device)
        lower = positions.reshape(length, 1) >= positions.reshape(1, length)       # (out, in)
        total = lower.where(x.unsqueeze(-2), 0).sum(-1)
        total = total if self.node.dtype.is_float else total.cast(int64)
        return total.transpose(axis, -1) if axis != len(self.node.shape) - 1 else total


def _prod_axis(x: "Tensor", axis: int) -> "Tensor":
    """Multiply along one axis by halving it until one element is left (keeps the axis, size 1)."""
    length = x.shape[axis]
    if length == 0:
        shape = list(x.shape)
        shape[axis] = 1
        from .creation import full
        return full(tuple(shape), 1, x.device, x.dtype)
    while length > 1:
        half = -(-length // 2)
        padded = x.pad([(0, 0)] * axis + [(0, 2 * half - length)], value=1)
        first, second = padded.split([half, half], axis)
        x, length = first * second, half
    return x
