"""Resizing the spatial axes of (N, C, *spatial) tensors (torch.nn.functional.interpolate): nearest and
(bi/tri)linear, one axis at a time. Source positions and weights depend only on sizes, so they are computed on
the host with PyTorch's formulas; the tensor is gathered at them (a fused one-hot select) and blended, so
gradients flow back to the input."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

from .errors import ShapeError
from .tensor_base import rounded_once

if TYPE_CHECKING:
    from .tensor import Tensor

LINEAR_MODES = {"linear": 1, "bilinear": 2, "trilinear": 3}
MODES = ("nearest", "nearest-exact") + tuple(LINEAR_MODES)


def _out_sizes(x: "Tensor", size: Union[int, Sequence[int], None], scale_factor: Union[float, Sequence[float], None],
               dims: int) -> tuple[list[int], list[Optional[float]]]:
    """Output size per spatial axis and the scale factor given for it (None when a size was given)."""
    spatial = x.shape[2:]
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor")
    if size is not None:
        sizes = [int(size)] * dims if isinstance(size, (int, np.integer)) else [int(s) for s in size]
        if len(sizes) != dims:
            raise ValueError(f"interpolate: size {size} needs {dims} values for input of shape {x.shape}")
        return sizes, [None] * dims
    factors = [float(scale_factor)] * dims if isinstance(scale_factor, (int, float)) else [float(f) for f in scale_factor]
    if len(factors) != dims or any(f <= 0 for f in factors):
        raise ValueError(f"interpolate: scale_factor {scale_factor} needs {dims} positive values for input of "
                         f"shape {x.shape}")
    return [math.floor(s * f) for s, f in zip(spatial, factors)], factors  # type: ignore[misc]


def _scale(length: int, out: int, factor: Optional[float], align_corners: bool) -> float:
    """Input positions per output position (PyTorch's area_pixel_compute_scale)."""
    if align_corners:
        return (length - 1) / (out - 1) if out > 1 else 0.0
    return 1 / factor if factor is not None else length / out


def _nearest(length: int, out: int, factor: Optional[float], exact: bool) -> list[int]:
    scale = np.float32(_scale(length, out, factor, False))
    positions = np.arange(out, dtype=np.float32) + np.float32(0.5 if exact else 0.0)
    return np.minimum(np.floor(positions * scale).astype(np.int64), length - 1).tolist()


def _linear(length: int, out: int, factor: Optional[float], align_corners: bool
            ) -> tuple[list[int], list[int], np.ndarray]:
    """Left and right source positions and the right one's weight, per output position."""
    scale = _scale(length, out, factor, align_corners)
    positions = np.arange(out, dtype=np.float64)
    source = positions * scale if align_corners else np.maximum((positions + 0.5) * scale - 0.5, 0.0)
    left = np.minimum(np.floor(source).astype(np.int64), length - 1)
    right = np.minimum(left + 1, length - 1)
    return left.tolist(), right.tolist(), source - left


@rounded_once
def interpolate(input: "Tensor", size: Union[int, Sequence[int], None] = None,
                scale_factor: Union[float, Sequence[float], None] = None, mode: str = "nearest",
                align_corners: Optional[bool] = None) -> "Tensor":
    """Resize the spatial axes of an (N, C, *spatial) tensor to `size` (or by `scale_factor`), as
    torch.nn.functional.interpolate with mode 'nearest', 'nearest-exact', 'linear' (1 spatial axis),
    'bilinear' (2) or 'trilinear' (3)."""
    if mode not in MODES:
        raise ValueError(f"interpolate: mode must be one of {MODES}, got {mode!r}")
    dims = input.ndim - 2
    if dims < 1 or (mode in LINEAR_MODES and LINEAR_MODES[mode] != dims):
        raise ShapeError(f"interpolate: mode {mode!r} does not fit input of shape {input.shape} (N, C, *spatial)")
    if align_corners is not None and mode not in LINEAR_MODES:
        raise ValueError(f"interpolate: align_corners only applies to the linear modes, not {mode!r}")
    sizes, factors = _out_sizes(input, size, scale_factor, dims)
    x = input if mode not in LINEAR_MODES else input._float()
    for axis, (out, factor) in enumerate(zip(sizes, factors), start=2):
        length = x.shape[axis]
        if mode.startswith("nearest"):
            x = x.index_select(axis, _nearest(length, out, factor, mode == "nearest-exact"))
            continue
        left, right, weight = _linear(length, out, factor, bool(align_corners))
        w = x._data(weight.reshape((-1,) + (1,) * (x.ndim - axis - 1)), x.dtype)
        x = x.index_select(axis, left) * (1 - w) + x.index_select(axis, right) * w
    return x
