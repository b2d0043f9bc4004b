"""Activation functions beyond tensor.py's (hardtanh, relu6, hardswish, selu, mish, the shrinks, glu, prelu...),
softmin and normalize,
composed from where, exp and the activations already there. Each matches PyTorch's gradient at its kinks; of half
tensors each is computed in float32 and rounded once (`Tensor._in_float32`), as PyTorch's (softsign, which PyTorch
composes of half ops, in the dtype)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .errors import ShapeError
from .tensor_base import rounded_once
from .tensor_movement import normalize_axis

if TYPE_CHECKING:
    from .tensor import Tensor

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


class ActivationMixin:
    """Tensor's piecewise and smooth activations beyond tensor.py's, softmin and normalize."""

    __slots__ = ()

    def hardtanh(self: "Tensor", min_val: float = -1.0, max_val: float = 1.0) -> "Tensor":
        """x clipped to [min_val, max_val]; the gradient is 0 at the bounds themselves (as PyTorch's, unlike
        clamp's)."""
        if min_val > max_val:
            raise ValueError(f"hardtanh: min_val {min_val} is above max_val {max_val}")
        x = self._float()
        return (x <= min_val).where(min_val, (x >= max_val).where(max_val, x))

    def relu6(self: "Tensor") -> "Tensor":
        """min(max(x, 0), 6), hardtanh's gradient at the bounds."""
        return self.hardtanh(0.0, 6.0)

    def hardsigmoid(self: "Tensor") -> "Tensor":
        """relu6(x + 3) / 6: 0 below -3, 1 above 3, linear between."""
        return self._in_float32(lambda x: (x + 3).relu6() * (1 / 6))

    def hardswish(self: "Tensor") -> "Tensor":
        """x * relu6(x + 3) / 6, with PyTorch's gradient at -3 and 3 (the middle piece's)."""
        return self._in_float32(lambda x: (x < -3).where(0.0, (x <= 3).where(x * (x + 3) * (1 / 6), x)))

    def selu(self: "Tensor") -> "Tensor":
        """scale * elu(x, alpha) with the self-normalising constants."""
        return self._in_float32(lambda x: x.elu(_SELU_ALPHA) * _SELU_SCALE)

    def celu(self: "Tensor", alpha: float = 1.0) -> "Tensor":
        """max(0, x) + min(0, alpha (exp(x / alpha) - 1))."""
        if alpha == 0:
            raise ValueError("celu: alpha must not be 0")
        return self._in_float32(lambda x: (x * (1 / alpha)).elu() * alpha)

    def mish(self: "Tensor") -> "Tensor":
        """x tanh(softplus(x))."""
        return self._in_float32(lambda x: x * x.softplus().tanh())

    def logsigmoid(self: "Tensor") -> "Tensor":
        """log(sigmoid(x)) = -softplus(-x), without overflow."""
        return self._in_float32(lambda x: -(-x).softplus())

    def softsign(self: "Tensor") -> "Tensor":
        """x / (1 + |x|)."""
        x = self._float()
        return x / (x.abs() + 1)  # (in the dtype: PyTorch composes it of half ops too)

    def softmin(self: "Tensor", dim: int = -1) -> "Tensor":
        """softmax(-x) along `dim`."""
        return (-self._float()).softmax(dim)

    @rounded_once
    def normalize(self: "Tensor", p: float = 2.0, dim: int = 1, eps: float = 1e-12) -> "Tensor":
        """x / max(||x||_p, eps) along `dim` (PyTorch's F.normalize); a zero vector stays zero, with a finite
        gradient."""
        x = self._float()
        magnitude = x.abs()
        if p == math.inf:
            return x / magnitude.max(dim, keepdim=True).maximum(eps)
        if p <= 0:
            raise ValueError(f"normalize: p must be positive, got {p}")
        total = (magnitude ** p).sum(dim, keepdim=True)
        above = total > eps ** p
        return x / above.where(above.where(total, 1.0) ** (1 / p), eps)

    def threshold(self: "Tensor", threshold: float, value: float) -> "Tensor":
        """x where x > threshold, else `value` (PyTorch's F.threshold); the gradient is 0 where replaced."""
        x = self._float()
        return (x > threshold).where(x, value)

    def hardshrink(self: "Tensor", lambd: float = 0.5) -> "Tensor":
        """x where |x| > lambd, else 0."""
        x = self._float()
        return ((x > lambd) | (x < -lambd)).where(x, 0.0)

    def softshrink(self: "Tensor", lambd: float = 0.5) -> "Tensor":
        """x - lambd above lambd, x + lambd below -lambd, 0 between: x moved towards 0 by lambd."""
        if lambd < 0:
            raise ValueError(f"softshrink: lambd must be at least 0, got {lambd}")
        x = self._float()
        return (x > lambd).where(x - lambd, (x < -lambd).where(x + lambd, 0.0))

    def tanhshrink(self: "Tensor") -> "Tensor":
        """x - tanh(x)."""
        return self._in_float32(lambda x: x - x.tanh())

    def glu(self: "Tensor", dim: int = -1) -> "Tensor":
        """Gated linear unit: a * sigmoid(b) of the two halves a, b of `dim` (whose size must be even)."""
        if self.ndim == 0:
            raise ShapeError("glu: needs at least one dimension, got a 0-d tensor")
        axis = normalize_axis(dim, self.ndim, "glu")
        if self.shape[axis] % 2:
            raise ShapeError(f"glu: dimension {dim} of input {self.shape} must have an even size to halve, "
                             f"got {self.shape[axis]}")

        def gated(x: "Tensor") -> "Tensor":
            a, b = x.split(x.shape[axis] // 2, axis)
            return a * b.sigmoid()
        return self._in_float32(gated)

    def prelu(self: "Tensor", weight: "Tensor") -> "Tensor":
        """x where positive, else weight * x: one learned slope, or one per channel (axis 1; axis 0 of a 1-d
        input is not a channel axis, as in PyTorch)."""
        channels = self.shape[1] if self.ndim >= 2 else 1
        if weight.numel() not in (1, channels):
            raise ShapeError(f"prelu: weight of shape {weight.shape} needs 1 or {channels} elements (the channels, "
                             f"axis 1, of input {self.shape})")
        slope = weight.reshape(() if weight.numel() == 1 else (channels,) + (1,) * (self.ndim - 2))
        return self._in_float32(lambda x, w: (x > 0).where(x, w * x), slope)
