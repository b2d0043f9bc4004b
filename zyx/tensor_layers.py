"""Matrix products, convolution, pooling and dropout, composed from views, multiplies and sums.

`matmul` keeps the reduced axis last in a (..., n, m, k) product so the JIT can recognise the pattern and
emit a tiled kernel; convolution is windows (views) then matmul.
"""
from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any, Optional, Union

from .dtypes import promote
from .errors import ShapeError

if TYPE_CHECKING:
    from .tensor import Tensor

Pair = Union[int, tuple[int, int]]


def as_pair(value: Pair, name: str, op: str, low: int) -> tuple[int, int]:
    """An int or one or two ints (PyTorch's forms) as (height, width), each at least `low`; any other form raises
    rather than being cut to two values."""
    try:
        values = (operator.index(value),) if not isinstance(value, (tuple, list)) else tuple(map(operator.index, value))
    except TypeError:
        values = ()
    if not 1 <= len(values) <= 2:
        raise ValueError(f"{op}: {name} must be an int or a tuple of two ints, got {value!r}")
    if any(v < low for v in values):
        raise ValueError(f"{op}: {name} must be {'positive' if low else 'non-negative'}, got {value!r}")
    return (values[0], values[-1])


def _conv_padding(padding: Union[Pair, str], kernel: tuple[int, int], stride: tuple[int, int],
                  dilation: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(before, after) for height and width; 'same' pads the extra pixel after, as PyTorch."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        if stride != (1, 1):
            raise ValueError(f"conv2d: padding='same' needs stride 1, got stride {stride}")
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        return (totals[0] // 2, totals[0] - totals[0] // 2), (totals[1] // 2, totals[1] - totals[1] // 2)
    if isinstance(padding, str):
        raise ValueError(f"conv2d: padding must be 'valid', 'same', an int or a tuple of two ints, got {padding!r}")
    ph, pw = as_pair(padding, "padding", "conv2d", 0)
    return (ph, ph), (pw, pw)


class LayerMixin:
    __slots__ = ()
    node: Any

    def matmul(self, other: "Tensor") -> "Tensor":
        """numpy's matmul: batched and broadcast; 1-D operands gain and lose an axis."""
        from .tensor import Tensor, broadcast_shape
        a, b = self, other
        if isinstance(b, (list, tuple)) or hasattr(b, "__array__") and not isinstance(b, Tensor):
            b = self._operand(b, "matmul")  # type: ignore[attr-defined]
        if not isinstance(b, Tensor):
            raise TypeError(f"matmul needs a tensor, got {type(b).__name__}")
        if a.ndim == 0 or b.ndim == 0:  # type: ignore[attr-defined]
            raise ShapeError(f"matmul: both operands need at least one dimension, got {a.shape} and {b.shape}")  # type: ignore
        a2 = a.unsqueeze(0) if a.ndim == 1 else a  # type: ignore[attr-defined]
        b2 = b.unsqueeze(-1) if b.ndim == 1 else b
        if a2.shape[-1] != b2.shape[-2]:
            raise ShapeError(f"matmul: shapes {a.shape} and {b.shape} do not match "  # type: ignore[attr-defined]
                             f"({a2.shape[-1]} != {b2.shape[-2]})")
        try:
            batch = broadcast_shape("matmul", a2.shape[:-2], b2.shape[:-2])
        except ShapeError:
            raise ShapeError(f"matmul: batch axes of shapes {a.shape} and {b.shape} "  # type: ignore
                             "cannot be broadcast together") from None
        dtype = promote(a2.dtype, b2.dtype)
        n_, k, m = a2.shape[-2], a2.shape[-1], b2.shape[-1]
        left = a2.cast(dtype).reshape(a2.shape[:-1] + (1, k)).expand(batch + (n_, m, k))
        right = b2.cast(dtype).transpose(-1, -2).reshape(b2.shape[:-2] + (1, m, k)).expand(batch + (n_, m, k))
        product = (left * right).sum(-1)
        if dtype.is_int or dtype.is_bool:
            product = product.cast(dtype) if not dtype.is_bool else product
        if a.ndim == 1:  # type: ignore[attr-defined]
            product = product.squeeze(-2)
        if b.ndim == 1:
            product = product.squeeze(-1)
        return product

    def __matmul__(self, other: "Tensor") -> "Tensor":
        return self.matmul(other)

    def __rmatmul__(self, other: "Tensor") -> "Tensor":
        return self._operand(other, "matmul").matmul(self)  # type: ignore[attr-defined]

    def dot(self, other: "Tensor") -> "Tensor":
        """The inner product of two 1-D tensors."""
        if self.ndim != 1 or other.ndim != 1:  # type: ignore[attr-defined]
            raise ShapeError(f"dot: needs two 1-D tensors, got {self.shape} and {other.shape}")  # type: ignore
        return self.matmul(other)

    def linear(self, weight: "Tensor", bias: Optional["Tensor"] = None) -> "Tensor":
        """x @ weight.T + bias, weight shaped (out, in) as PyTorch's."""
        out = self.matmul(weight.T)
        return out + bias if bias is not None else out

    def _windows(self, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]) -> "Tensor":
        """(N, C, H, W) -> (N, C, OH, OW, KH*KW): every kernel position, as strided views."""
        height, width = self.shape[-2:]  # type: ignore[attr-defined]
        (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
        out_h = (height - dh * (kh - 1) - 1) // sh + 1
        out_w = (width - dw * (kw - 1) - 1) // sw + 1
        if out_h <= 0 or out_w <= 0:
            raise ShapeError(f"window {kernel} (dilation {dilation}) does not fit input of spatial size "
                             f"{(height, width)}")
        pieces = []
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dh, i * dh + sh * (out_h - 1) + 1, sh)
                cols = slice(j * dw, j * dw + sw * (out_w - 1) + 1, sw)
                pieces.append(self[..., rows, cols])  # type: ignore[index]
        from .tensor_combine import stack
        return stack(pieces, axis=-1)

    def conv2d(self, weight: "Tensor", bias: Optional["Tensor"] = None, stride: Pair = 1,
               padding: Union[Pair, str] = 0, dilation: Pair = 1, groups: int = 1) -> "Tensor":
        """2-D convolution as PyTorch's (input N,C,H,W; weight O,C/groups,KH,KW; padding an int, a pair,
        'valid' or 'same')."""
        if self.ndim != 4 or weight.ndim != 4:  # type: ignore[attr-defined]
            raise ShapeError(f"conv2d: needs input (N, C, H, W) and weight (O, C/groups, KH, KW), got "
                             f"{self.shape} and {weight.shape}")  # type: ignore[attr-defined]
        batch, channels = self.shape[:2]  # type: ignore[attr-defined]
        out_channels, group_channels, kh, kw = weight.shape
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
        if channels % groups or out_channels % groups or channels // groups != group_channels:
            raise ShapeError(f"conv2d: input {self.shape} and weight {weight.shape} do not fit groups={groups}")  # type: ignore
        strides, dilations = as_pair(stride, "stride", "conv2d", 1), as_pair(dilation, "dilation", "conv2d", 1)
        rows, cols = _conv_padding(padding, (kh, kw), strides, dilations)
        padded = self.pad(((0, 0), (0, 0), rows, cols))  # type: ignore[attr-defined]
        windows = padded._windows((kh, kw), strides, dilations)               # N, C, OH, OW, K
        out_h, out_w, taps = windows.shape[2:]
        per_group = windows.reshape(batch, groups, group_channels, out_h * out_w, taps)
        patches = per_group.permute(0, 1, 3, 2, 4).reshape(batch, groups, out_h * out_w, group_channels * taps)
        kernels = weight.reshape(groups, out_channels // groups, group_channels * kh * kw).transpose(-1, -2)
        out = patches.matmul(kernels.unsqueeze(0))                             # N, G, OH*OW, O/G
        out = out.permute(0, 1, 3, 2).reshape(batch, out_channels, out_h, out_w)
        return out + bias.reshape(1, out_channels, 1, 1) if bias is not None else out

    def _pool_windows(self, kernel: Pair, stride: Optional[Pair], padding: Pair, value: float, op: str) -> "Tensor":
        if self.ndim < 2:  # type: ignore[attr-defined]
            raise ShapeError(f"{op} needs at least 2 dimensions (..., H, W), got {self.shape}")  # type: ignore
        kernels = as_pair(kernel, "kernel_size", op, 1)
        strides = as_pair(stride, "stride", op, 1) if stride is not None else kernels
        ph, pw = as_pair(padding, "padding", op, 0)
        if ph > kernels[0] // 2 or pw > kernels[1] // 2:  # else a window could see nothing but padding
            raise ValueError(f"{op}: padding {padding!r} must be at most half of kernel_size {kernel!r}")
        padded = self.pad([(0, 0)] * (self.ndim - 2) + [(ph, ph), (pw, pw)], value=value)  # type: ignore
        return padded._windows(kernels, strides, (1, 1))

    def avg_pool2d(self, kernel_size: Pair, stride: Optional[Pair] = None, padding: Pair = 0) -> "Tensor":
        """Mean over each window (zero padding counts, as PyTorch's count_include_pad=True)."""
        return self._pool_windows(kernel_size, stride, padding, 0.0, "avg_pool2d").mean(-1)

    def max_pool2d(self, kernel_size: Pair, stride: Optional[Pair] = None, padding: Pair = 0) -> "Tensor":
        """Maximum over each window of the last two axes (padding counts as -inf)."""
        lowest: float = float("-inf")
        if not self.dtype.is_float:  # type: ignore[attr-defined]
            import numpy as np
            lowest = 0 if self.dtype.is_bool else int(np.iinfo(self.dtype.np).min)  # type: ignore[attr-defined]
        return self._pool_windows(kernel_size, stride, padding, lowest, "max_pool2d").max(-1)

    def dropout(self, p: float = 0.5, training: bool = True) -> "Tensor":
        """Zero each element with probability p and scale the rest by 1/(1-p); a new mask every call."""
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        if not training or p == 0:
            return self  # type: ignore[return-value]
        from .creation import rand
        if p == 1:
            from .creation import full
            dropped = full(self.shape, True, self.device, "bool")  # type: ignore[attr-defined]
            return dropped.where(0, self)  # zeros even for inf/nan, gradient 0
        keep = rand(self.shape, device=self.device) >= p  # type: ignore[attr-defined]
        return keep.where(self * (1 / (1 - p)), 0)  # type: ignore[operator]
