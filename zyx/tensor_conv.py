"""Convolution (1-3 spatial axes, transposed too), pooling and sliding windows, composed from views and matmul.

A convolution is windows (one view of the padded input, kernel positions on a last axis) times the kernel as one
matrix product per group, for any number of spatial axes. A transposed convolution is the convolution of the
input spread out by zeros (stride - 1 between elements, a view) with the flipped kernel, which is its adjoint.
"""
from __future__ import annotations

import math
import operator

import numpy as np
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from .errors import ShapeError
from .tensor_base import rounded_once
from .tensor_results import ValuesIndices
from .tensor_scan import extremes

if TYPE_CHECKING:
    from .tensor import Tensor

Size = Union[int, Sequence[int]]
Pair = Union[int, tuple[int, int]]
Geometry = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # kernel, stride, dilation


def as_tuple(value: Size, count: int, name: str, op: str, low: int) -> tuple[int, ...]:
    """An int, or one or `count` ints (PyTorch's forms), as `count` ints each at least `low`; any other form
    raises rather than being cut to size."""
    try:
        values = (operator.index(value),) if not isinstance(value, (tuple, list)) else tuple(map(operator.index, value))
    except TypeError:
        values = ()
    if len(values) not in (1, count):
        raise ValueError(f"{op}: {name} must be an int or a tuple of {count} ints, got {value!r}")
    if any(v < low for v in values):
        raise ValueError(f"{op}: {name} must be {'positive' if low else 'non-negative'}, got {value!r}")
    return values * count if len(values) == 1 else values


def windows(x: "Tensor", kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> "Tensor":
    """(..., *spatial) -> (..., *out, prod(kernel)): every kernel position over the last len(kernel) axes (window
    elements in row-major kernel order), as one view: index arithmetic per axis (`_axis_windows`), where a stack of
    prod(kernel) strided views made each element a choice among them (a 308-element window: 890 KB of kernel
    source, 16 s to compile on PoCL)."""
    spatial = x.shape[x.ndim - len(kernel):]
    counts = [(size - d * (k - 1) - 1) // s + 1 for size, k, s, d in zip(spatial, kernel, stride, dilation)]
    if any(c <= 0 for c in counts):
        raise ShapeError(f"window {tuple(kernel)} (dilation {tuple(dilation)}) does not fit input of spatial size "
                         f"{tuple(spatial)}")
    lead = x.ndim - len(kernel)
    for j, geometry in enumerate(zip(kernel, stride, dilation, counts)):
        x = _axis_windows(x, lead + 2 * j, *geometry)  # (..., out_0, k_0, ..., out_j, k_j, spatial_j+1, ...)
    x = x.permute(*range(lead), *range(lead, x.ndim, 2), *range(lead + 1, x.ndim, 2))  # (..., *out, *kernel)
    return x.reshape(x.shape[:lead] + tuple(counts) + (math.prod(kernel),))


def _axis_windows(x: "Tensor", axis: int, k: int, s: int, d: int, count: int) -> "Tensor":
    """Axis `axis` (length n) as two, (count, k): element [i, w] is x's [i * s + w * d]. Windows apart (d = 1,
    k <= s) are the first k of rows of s. Others read a copy of the axis tiled end to end, cut into k rows of its
    length plus d: row w starts d * w further on, and its element i * s is x's [i * s + w * d] (positions past n
    pad the axis to `period`, which rows of count * s need, and are never read)."""
    before, after = x.shape[:axis], x.shape[axis + 1:]

    def fit(t: "Tensor", length: int) -> "Tensor":  # `axis` padded or cut to `length`
        size = t.shape[axis]
        if length > size:
            return t.pad([(0, 0)] * axis + [(0, length - size)])
        return t.narrow(axis, 0, length) if length < size else t

    if d == 1 and k <= s:
        return fit(x, count * s).reshape(before + (count, s) + after).narrow(axis + 1, 0, k)
    period = max(x.shape[axis], count * s - d)
    row = period + d
    copies = -(-k * row // period)
    tiled = fit(x, period).reshape(before + (1, period) + after).expand(before + (copies, period) + after)
    tiled = tiled.reshape(before + (copies * period,) + after).narrow(axis, 0, k * row)
    shifted = tiled.reshape(before + (k, row) + after).narrow(axis + 1, 0, count * s)
    picked = shifted.reshape(before + (k, count, s) + after).narrow(axis + 2, 0, 1)
    return picked.reshape(before + (k, count) + after).transpose(axis, axis + 1)


def _conv_padding(padding: Union[Size, str], kernel: Sequence[int], stride: Sequence[int],
                  dilation: Sequence[int], op: str) -> list[tuple[int, int]]:
    """(before, after) per spatial axis; 'same' pads the extra element after, as PyTorch."""
    if padding == "valid":
        return [(0, 0)] * len(kernel)
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ValueError(f"{op}: padding='same' needs stride 1, got stride {tuple(stride)}")
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        return [(t // 2, t - t // 2) for t in totals]
    if isinstance(padding, str):
        raise ValueError(f"{op}: padding must be 'valid', 'same', an int or a tuple of {len(kernel)} ints, got "
                         f"{padding!r}")
    return [(p, p) for p in as_tuple(padding, len(kernel), "padding", op, 0)]


def averaging_matrix(size: int, out: int) -> np.ndarray:
    """(out, size): row i averages PyTorch's adaptive window i, [floor(i size / out), ceil((i + 1) size / out))."""
    matrix = np.zeros((out, size), np.float64)
    for i in range(out):
        start, end = i * size // out, -(-(i + 1) * size // out)
        matrix[i, start:end] = 1 / (end - start)
    return matrix


def spread(x: "Tensor", stride: Sequence[int]) -> "Tensor":
    """Insert stride - 1 zeros between neighbours on each of the last len(stride) axes (a view)."""
    first = x.ndim - len(stride)
    for axis, s in enumerate(stride, start=first):
        if s == 1 or x.shape[axis] == 0:
            continue
        length = x.shape[axis]
        gapped = x.unsqueeze(axis + 1).pad([(0, 0)] * (axis + 1) + [(0, s - 1)])
        gapped = gapped.reshape(x.shape[:axis] + (length * s,) + x.shape[axis + 1:])
        x = gapped.shrink([(0, n) if a != axis else (0, (length - 1) * s + 1) for a, n in enumerate(gapped.shape)])
    return x


def _block_geometry(kernel_size: Pair, dilation: Pair, padding: Pair, stride: Pair, op: str) -> list[tuple[int, ...]]:
    """unfold's and fold's kernel, dilation, padding and stride, each as two ints."""
    given = ((kernel_size, "kernel_size", 1), (dilation, "dilation", 1), (padding, "padding", 0), (stride, "stride", 1))
    return [as_tuple(value, 2, name, op, low) for value, name, low in given]


def unfold(input: "Tensor", kernel_size: Pair, dilation: Pair = 1, padding: Pair = 0, stride: Pair = 1) -> "Tensor":
    """im2col: (N, C, H, W) -> (N, C kh kw, L), each of the L sliding blocks (row-major over the output grid) a
    column of C kh kw values ordered channel, kernel row, kernel column, as PyTorch's; (C, H, W) -> (C kh kw, L).
    A convolution is this times the flattened weight; it is one view of the padded input (`windows`)."""
    kernel, dilation, padding, stride = _block_geometry(kernel_size, dilation, padding, stride, "unfold")
    if input.ndim not in (3, 4):
        raise ShapeError(f"unfold: needs (N, C, H, W) or (C, H, W), got shape {input.shape}")
    x = input if input.ndim == 4 else input.unsqueeze(0)
    if any(padding):
        x = x.pad([(0, 0), (0, 0)] + [(p, p) for p in padding])
    counts = [(size - d * (k - 1) - 1) // s + 1 for size, k, d, s in zip(x.shape[2:], kernel, dilation, stride)]
    if any(c <= 0 for c in counts):
        raise ShapeError(f"unfold: kernel_size {kernel} (dilation {dilation}) does not fit input of shape "
                         f"{input.shape} padded by {padding}")
    n, c = x.shape[:2]
    blocks = windows(x, kernel, stride, dilation)  # (N, C, out_h, out_w, kh kw)
    cols = blocks.permute(0, 1, 4, 2, 3).reshape(n, c * math.prod(kernel), math.prod(counts))
    return cols if input.ndim == 4 else cols.squeeze(0)


def fold(input: "Tensor", output_size: Pair, kernel_size: Pair, dilation: Pair = 1, padding: Pair = 0,
         stride: Pair = 1) -> "Tensor":
    """col2im: (N, C kh kw, L) -> (N, C, H, W), (H, W) = output_size: each column put back at its block's place
    and overlapping blocks summed (unfold's adjoint, so unfold's gradient; fold(unfold(x)) is x times how many
    blocks cover each element); (C kh kw, L) -> (C, H, W)."""
    kernel, dilation, padding, stride = _block_geometry(kernel_size, dilation, padding, stride, "fold")
    out = as_tuple(output_size, 2, "output_size", "fold", 1)
    if input.ndim not in (2, 3):
        raise ShapeError(f"fold: needs (N, C*kh*kw, L) or (C*kh*kw, L), got shape {input.shape}")
    x = input if input.ndim == 3 else input.unsqueeze(0)
    n, rows, length = x.shape
    if rows % math.prod(kernel):
        raise ShapeError(f"fold: axis C*kh*kw of input {input.shape} is {rows}, not divisible by kh*kw = "
                         f"{math.prod(kernel)} of kernel_size {kernel}")
    padded = [size + 2 * p for size, p in zip(out, padding)]
    counts = [(size - d * (k - 1) - 1) // s + 1 for size, k, d, s in zip(padded, kernel, dilation, stride)]
    if any(c <= 0 for c in counts) or math.prod(counts) != length:
        raise ShapeError(f"fold: input {input.shape} has L = {length} blocks, but output_size {out} with kernel_size "
                         f"{kernel}, dilation {dilation}, padding {padding} and stride {stride} has "
                         f"{' x '.join(map(str, counts))} blocks")
    x = x.reshape(n, rows // math.prod(kernel), *kernel, *counts)  # (N, C, kh, kw, out_h, out_w)
    for axis in range(2):  # sum the kernel rows' placements along H, then the kernel columns' along W
        placed = []
        for i in range(kernel[axis]):
            part = spread(x.narrow(2, i, 1).squeeze(2), (stride[0], 1) if axis == 0 else (stride[1],))
            before = i * dilation[axis]
            pads = [(0, 0)] * part.ndim
            pads[axis - 2] = (before, padded[axis] - before - part.shape[axis - 2])
            placed.append(part.pad(pads))
        x = sum(placed[1:], placed[0])  # (N, C, kw, H + 2 ph, out_w), then (N, C, H + 2 ph, W + 2 pw)
    x = x.shrink([(0, n), (0, x.shape[1])] + [(p, p + size) for p, size in zip(padding, out)])
    return x if input.ndim == 3 else x.squeeze(0)


class ConvMixin:
    """Tensor's convolutions (1-3 spatial axes, plain and transposed) and pooling."""

    __slots__ = ()

    # ---- convolution ---------------------------------------------------------------------------------------
    def _conv(self: "Tensor", weight: "Tensor", bias: Optional["Tensor"], stride: Size, padding: Union[Size, str],
              dilation: Size, groups: int, dims: int, op: str) -> "Tensor":
        if self.ndim == dims + 1:  # unbatched (C, *spatial), as PyTorch accepts
            return self.unsqueeze(0)._conv(weight, bias, stride, padding, dilation, groups, dims, op).squeeze(0)
        if self.ndim != dims + 2 or weight.ndim != dims + 2:
            raise ShapeError(f"{op}: needs input (N, C, *{dims} spatial) and weight (O, C/groups, *{dims} kernel), "
                             f"got {self.shape} and {weight.shape}")
        batch, channels = self.shape[:2]
        out_channels, group_channels = weight.shape[:2]
        kernel = weight.shape[2:]
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
        if channels % groups or out_channels % groups or channels // groups != group_channels:
            raise ShapeError(f"{op}: input {self.shape} and weight {weight.shape} do not fit groups={groups}")
        strides, dilations = as_tuple(stride, dims, "stride", op, 1), as_tuple(dilation, dims, "dilation", op, 1)
        pads = _conv_padding(padding, kernel, strides, dilations, op)
        padded = self.pad([(0, 0), (0, 0)] + pads)
        patches = windows(padded, kernel, strides, dilations)                  # N, C, *out, K
        out_shape, taps = patches.shape[2:-1], patches.shape[-1]
        positions = math.prod(out_shape)
        per_group = patches.reshape(batch, groups, group_channels, positions, taps)
        rows = per_group.permute(0, 1, 3, 2, 4).reshape(batch, groups, positions, group_channels * taps)
        kernels = weight.reshape(groups, out_channels // groups, group_channels * taps).transpose(-1, -2)
        out = rows.matmul(kernels.unsqueeze(0))                                 # N, G, positions, O/G
        out = out.permute(0, 1, 3, 2).reshape((batch, out_channels) + out_shape)
        return out + bias.reshape((1, out_channels) + (1,) * dims) if bias is not None else out

    def conv1d(self: "Tensor", weight: "Tensor", bias: Optional["Tensor"] = None, stride: Size = 1,
               padding: Union[Size, str] = 0, dilation: Size = 1, groups: int = 1) -> "Tensor":
        """1-D convolution as PyTorch's: input (N, C, L) or (C, L), weight (O, C/groups, K)."""
        return self._conv(weight, bias, stride, padding, dilation, groups, 1, "conv1d")

    def conv2d(self: "Tensor", weight: "Tensor", bias: Optional["Tensor"] = None, stride: Size = 1,
               padding: Union[Size, str] = 0, dilation: Size = 1, groups: int = 1) -> "Tensor":
        """2-D convolution as PyTorch's (input N,C,H,W or C,H,W; weight O,C/groups,KH,KW; padding an int, a pair,
        'valid' or 'same')."""
        return self._conv(weight, bias, stride, padding, dilation, groups, 2, "conv2d")

    def conv3d(self: "Tensor", weight: "Tensor", bias: Optional["Tensor"] = None, stride: Size = 1,
               padding: Union[Size, str] = 0, dilation: Size = 1, groups: int = 1) -> "Tensor":
        """3-D convolution as PyTorch's: input (N, C, D, H, W), weight (O, C/groups, KD, KH, KW)."""
        return self._conv(weight, bias, stride, padding, dilation, groups, 3, "conv3d")

    def _conv_transpose(self: "Tensor", weight: "Tensor", bias: Optional["Tensor"], stride: Size, padding: Size,
                        output_padding: Size, groups: int, dilation: Size, dims: int, op: str) -> "Tensor":
        if self.ndim == dims + 1:
            return self.unsqueeze(0)._conv_transpose(weight, bias, stride, padding, output_padding, groups,
                                                     dilation, dims, op).squeeze(0)
        if self.ndim != dims + 2 or weight.ndim != dims + 2:
            raise ShapeError(f"{op}: needs input (N, C, *{dims} spatial) and weight (C, O/groups, *{dims} kernel), "
                             f"got {self.shape} and {weight.shape}")
        if not isinstance(groups, int) or groups < 1 or self.shape[1] != weight.shape[0] or weight.shape[0] % groups:
            raise ShapeError(f"{op}: input {self.shape} and weight {weight.shape} do not fit groups={groups!r}")
        strides, dilations = as_tuple(stride, dims, "stride", op, 1), as_tuple(dilation, dims, "dilation", op, 1)
        pads = as_tuple(padding, dims, "padding", op, 0)
        extras = as_tuple(output_padding, dims, "output_padding", op, 0)
        if any(e >= max(s, d) for e, s, d in zip(extras, strides, dilations)):
            raise ValueError(f"{op}: output_padding {extras} must be smaller than stride {strides} or dilation "
                             f"{dilations}")
        kernel = weight.shape[2:]
        in_channels, group_out = weight.shape[:2]
        # (C, O/G, *k) -> (O, C/G, *k), flipped: the kernel of the adjoint convolution
        flipped = weight.reshape((groups, in_channels // groups, group_out) + kernel).transpose(1, 2)
        flipped = flipped.reshape((groups * group_out, in_channels // groups) + kernel).flip(
            list(range(2, dims + 2)))
        rims = [d * (k - 1) - p for d, k, p in zip(dilations, kernel, pads)]
        dilated = spread(self, strides).pad([(0, 0), (0, 0)] + [(r, r + e) for r, e in zip(rims, extras)])
        return dilated._conv(flipped, bias, 1, 0, dilations, groups, dims, op)

    def conv_transpose1d(self: "Tensor", weight: "Tensor", bias: Optional["Tensor"] = None, stride: Size = 1,
                         padding: Size = 0, output_padding: Size = 0, groups: int = 1, dilation: Size = 1
                         ) -> "Tensor":
        """The adjoint of conv1d (PyTorch's argument order): weight (C, O/groups, K)."""
        return self._conv_transpose(weight, bias, stride, padding, output_padding, groups, dilation, 1,
                                    "conv_transpose1d")

    def conv_transpose2d(self: "Tensor", weight: "Tensor", bias: Optional["Tensor"] = None, stride: Size = 1,
                         padding: Size = 0, output_padding: Size = 0, groups: int = 1, dilation: Size = 1
                         ) -> "Tensor":
        """The adjoint of conv2d ("deconvolution", PyTorch's argument order): weight (C, O/groups, KH, KW)."""
        return self._conv_transpose(weight, bias, stride, padding, output_padding, groups, dilation, 2,
                                    "conv_transpose2d")

    def conv_transpose3d(self: "Tensor", weight: "Tensor", bias: Optional["Tensor"] = None, stride: Size = 1,
                         padding: Size = 0, output_padding: Size = 0, groups: int = 1, dilation: Size = 1
                         ) -> "Tensor":
        """The adjoint of conv3d: weight (C, O/groups, KD, KH, KW)."""
        return self._conv_transpose(weight, bias, stride, padding, output_padding, groups, dilation, 3,
                                    "conv_transpose3d")

    # ---- pooling -------------------------------------------------------------------------------------------
    def _pool(self: "Tensor", kernel_size: Size, stride: Optional[Size], padding: Size, dilation: Size,
              ceil_mode: bool, dims: int, op: str) -> tuple[list[tuple[int, int]], Geometry]:
        """The pooling geometry: (before, after) pads per spatial axis (`after` includes the extra that ceil_mode
        needs) and the windows' (kernel, stride, dilation)."""
        if self.ndim < dims:
            raise ShapeError(f"{op} needs at least {dims} dimensions (..., *spatial), got {self.shape}")
        kernels = as_tuple(kernel_size, dims, "kernel_size", op, 1)
        strides = as_tuple(stride, dims, "stride", op, 1) if stride is not None and stride != [] else kernels
        pads = as_tuple(padding, dims, "padding", op, 0)
        dilations = as_tuple(dilation, dims, "dilation", op, 1)
        if any(p > k // 2 for p, k in zip(pads, kernels)):  # else a window could see nothing but padding
            raise ValueError(f"{op}: padding {padding!r} must be at most half of kernel_size {kernel_size!r}")
        pairs = []
        for size, k, s, p, d in zip(self.shape[self.ndim - dims:], kernels, strides, pads, dilations):
            span = size + 2 * p - d * (k - 1) - 1
            if span < 0:
                raise ShapeError(f"{op}: window {kernels} (dilation {dilations}) does not fit input of spatial "
                                 f"size {self.shape[self.ndim - dims:]} with padding {pads}")
            count = (-(-span // s) if ceil_mode else span // s) + 1
            if ceil_mode and (count - 1) * s >= size + p:  # the last window must start inside the input
                count -= 1
            pairs.append((p, max(p, (count - 1) * s + d * (k - 1) + 1 - size - p)))
        return pairs, (kernels, strides, dilations)

    def _max_pool(self: "Tensor", kernel_size: Size, stride: Optional[Size], padding: Size, dilation: Size,
                  ceil_mode: bool, return_indices: bool, dims: int, op: str) -> Any:
        pairs, geometry = self._pool(kernel_size, stride, padding, dilation, ceil_mode, dims, op)
        lowest, _ = extremes(self)
        lead = [(0, 0)] * (self.ndim - dims)
        values = windows(self.pad(lead + pairs, value=lowest), *geometry)
        pooled = values.max(-1)
        if not return_indices:
            return pooled
        spatial = self.shape[self.ndim - dims:]
        flat = self._arange(math.prod(spatial)).reshape(spatial).pad(pairs, value=-1)
        positions = windows(flat, *geometry).expand(values.shape)
        return ValuesIndices(pooled, positions.gather(-1, values.argmax(-1, keepdim=True)).squeeze(-1))

    @rounded_once
    def _avg_pool(self: "Tensor", kernel_size: Size, stride: Optional[Size], padding: Size, ceil_mode: bool,
                  count_include_pad: bool, divisor_override: Optional[int], dims: int, op: str) -> "Tensor":
        pairs, geometry = self._pool(kernel_size, stride, padding, 1, ceil_mode, dims, op)
        x = self._float()
        lead = [(0, 0)] * (self.ndim - dims)
        totals = windows(x.pad(lead + pairs), *geometry).sum(-1)
        if divisor_override is not None:
            if divisor_override == 0:
                raise ValueError(f"{op}: divisor_override must not be 0")
            return totals * (1 / divisor_override)
        if all(before == after for before, after in pairs) and (count_include_pad or not any(p for p, _ in pairs)):
            return totals * (1 / math.prod(geometry[0]))
        inside = self._full(self.shape[self.ndim - dims:], 1.0, x.dtype)
        counted = inside.pad([(p, p) for p, _ in pairs], value=1.0 if count_include_pad else 0.0)
        counted = counted.pad([(0, after - before) for before, after in pairs])
        return totals / windows(counted, *geometry).sum(-1)

    def max_pool1d(self: "Tensor", kernel_size: Size, stride: Optional[Size] = None, padding: Size = 0,
                   dilation: Size = 1, ceil_mode: bool = False, return_indices: bool = False) -> Any:
        """Maximum over each window of the last axis (with `return_indices`, also each maximum's position)."""
        return self._max_pool(kernel_size, stride, padding, dilation, ceil_mode, return_indices, 1, "max_pool1d")

    def max_pool2d(self: "Tensor", kernel_size: Size, stride: Optional[Size] = None, padding: Size = 0,
                   dilation: Size = 1, ceil_mode: bool = False, return_indices: bool = False) -> Any:
        """Maximum over each window of the last two axes, as PyTorch's; with `return_indices`, also each maximum's
        position in its flattened (H, W) plane. Tied maxima share the gradient."""
        return self._max_pool(kernel_size, stride, padding, dilation, ceil_mode, return_indices, 2, "max_pool2d")

    def max_pool3d(self: "Tensor", kernel_size: Size, stride: Optional[Size] = None, padding: Size = 0,
                   dilation: Size = 1, ceil_mode: bool = False, return_indices: bool = False) -> Any:
        """Maximum over each window of the last three axes."""
        return self._max_pool(kernel_size, stride, padding, dilation, ceil_mode, return_indices, 3, "max_pool3d")

    def avg_pool1d(self: "Tensor", kernel_size: Size, stride: Optional[Size] = None, padding: Size = 0,
                   ceil_mode: bool = False, count_include_pad: bool = True) -> "Tensor":
        """Mean over each window of the last axis."""
        return self._avg_pool(kernel_size, stride, padding, ceil_mode, count_include_pad, None, 1, "avg_pool1d")

    def avg_pool2d(self: "Tensor", kernel_size: Size, stride: Optional[Size] = None, padding: Size = 0,
                   ceil_mode: bool = False, count_include_pad: bool = True,
                   divisor_override: Optional[int] = None) -> "Tensor":
        """Mean over each window of the last two axes, as PyTorch's: zero padding counts unless
        count_include_pad=False; the extra that ceil_mode adds never counts."""
        return self._avg_pool(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, 2,
                              "avg_pool2d")

    def avg_pool3d(self: "Tensor", kernel_size: Size, stride: Optional[Size] = None, padding: Size = 0,
                   ceil_mode: bool = False, count_include_pad: bool = True,
                   divisor_override: Optional[int] = None) -> "Tensor":
        """Mean over each window of the last three axes."""
        return self._avg_pool(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, 3,
                              "avg_pool3d")

    @rounded_once
    def _adaptive_avg_pool(self: "Tensor", output_size: Any, dims: int, op: str) -> "Tensor":
        """Each output element the mean of its adaptive window: one product with an averaging matrix per axis."""
        if self.ndim not in (dims + 1, dims + 2):
            raise ShapeError(f"{op} needs (C, *spatial) or (N, C, *spatial) with {dims} spatial dimensions, got "
                             f"{self.shape}")
        sizes = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size,) * dims
        if len(sizes) != dims:
            raise ValueError(f"{op}: output_size needs {dims} sizes, got {output_size!r}")
        spatial = self.shape[self.ndim - dims:]
        sizes = tuple(size if out is None else operator.index(out) for size, out in zip(spatial, sizes))
        if any(out <= 0 for out in sizes) or 0 in spatial:
            raise ShapeError(f"{op}: output_size {sizes} and the spatial sizes of input {self.shape} must be positive")
        x = self._float()
        for axis, (size, out) in enumerate(zip(spatial, sizes)):
            if size == out:
                continue
            matrix = self._data(averaging_matrix(size, out).T, x.dtype)  # (size, out)
            last = self.ndim - dims + axis
            moved = x.transpose(last, -1).unsqueeze(-1)  # (a product written out: `@` would take autocast's dtype)
            x = (moved * matrix).sum(-2).transpose(last, -1)
        return x

    def adaptive_avg_pool1d(self: "Tensor", output_size: Any) -> "Tensor":
        """Mean over `output_size` windows of the last axis, sized to fit any length (PyTorch's windows)."""
        return self._adaptive_avg_pool(output_size, 1, "adaptive_avg_pool1d")

    def adaptive_avg_pool2d(self: "Tensor", output_size: Any) -> "Tensor":
        """Mean over adaptive windows of the last two axes to an (H, W) output; an int is both, None keeps that
        axis's size."""
        return self._adaptive_avg_pool(output_size, 2, "adaptive_avg_pool2d")

    def pixel_shuffle(self: "Tensor", upscale_factor: int) -> "Tensor":
        """(*, C r^2, H, W) to (*, C, H r, W r): each group of r^2 channels becomes an r x r block of pixels."""
        r = operator.index(upscale_factor)
        if self.ndim < 3 or r <= 0 or self.shape[-3] % (r * r):
            raise ShapeError(f"pixel_shuffle: input {self.shape} needs (*, C, H, W) with C divisible by "
                             f"upscale_factor^2 = {r * r}")
        *lead, channels, height, width = self.shape
        blocks = self.reshape(*lead, channels // (r * r), r, r, height, width)
        k = len(lead)
        order = list(range(k)) + [k, k + 3, k + 1, k + 4, k + 2]
        return blocks.permute(order).reshape(*lead, channels // (r * r), height * r, width * r)

    def pixel_unshuffle(self: "Tensor", downscale_factor: int) -> "Tensor":
        """(*, C, H r, W r) to (*, C r^2, H, W): pixel_shuffle undone, each r x r block made r^2 channels."""
        r = operator.index(downscale_factor)
        if self.ndim < 3 or r <= 0 or self.shape[-2] % r or self.shape[-1] % r:
            raise ShapeError(f"pixel_unshuffle: input {self.shape} needs (*, C, H, W) with H and W divisible by "
                             f"downscale_factor = {r}")
        *lead, channels, height, width = self.shape
        blocks = self.reshape(*lead, channels, height // r, r, width // r, r)
        k = len(lead)
        order = list(range(k)) + [k, k + 2, k + 4, k + 1, k + 3]
        return blocks.permute(order).reshape(*lead, channels * r * r, height // r, width // r)
