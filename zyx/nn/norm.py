"""Normalization layers: BatchNorm (with running statistics), LayerNorm, RMSNorm and GroupNorm."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from ..devices import Device, default_device
from ..dtypes import int64
from ..errors import ShapeError
from ..tensor import Tensor
from . import init
from .deferred import defer_realize
from .module import Module

ShapeSpec = Union[int, Sequence[int]]


def _standardize(x: Tensor, axes: tuple[int, ...], eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(x - mean) / sqrt(var + eps) over `axes` with the biased variance; also returns mean and var."""
    mean = x.mean(axes, keepdim=True)
    var = x.var(axes, keepdim=True, correction=0)
    return (x - mean) * (var + eps).rsqrt(), mean, var


def _affine_params(shape: tuple[int, ...], weight: bool, bias: bool, device: Device) -> tuple[Optional[Tensor], ...]:
    """Scale (ones) and shift (zeros), each only if asked for: the norms start as the identity map."""
    return (init.filled(shape, 1.0, device) if weight else None), (init.filled(shape, 0.0, device) if bias else None)


def _apply_affine(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], shape: tuple[int, ...]) -> Tensor:
    if weight is not None:
        x = x * weight.reshape(shape)
    return x + bias.reshape(shape) if bias is not None else x


class _BatchNorm(Module):
    """Normalizes each channel (axis 1) over the batch and every other axis.

    Training uses the batch's statistics and moves the running ones towards them by `momentum`
    (momentum=None: a cumulative average); eval mode uses the running statistics. The running statistics
    are realized with the next optimizer update; without one, `zyx.realize(*model.buffers())` does it.
    """

    input_ndims: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Optional[Device] = None):
        device = device or default_device()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight, self.bias = _affine_params((num_features,), affine, affine, device)
        self.running_mean = self.running_var = self.num_batches_tracked = None
        if track_running_stats:
            self.register_buffer("running_mean", init.filled((num_features,), 0.0, device))
            self.register_buffer("running_var", init.filled((num_features,), 1.0, device))
            self.register_buffer("num_batches_tracked", init.filled((), 0, device, int64))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim not in self.input_ndims or x.shape[1] != self.num_features:
            raise ShapeError(f"{type(self).__name__}({self.num_features}): expected input of "
                             f"{' or '.join(map(str, self.input_ndims))} dimensions with {self.num_features} "
                             f"channels on axis 1, got shape {x.shape}")
        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, self.num_features) + (1,) * (x.ndim - 2)
        if self.training or self.running_mean is None:
            normalized, mean, var = _standardize(x, axes, self.eps)
            if self.training and self.running_mean is not None:
                self._track(mean.reshape(-1).detach(), var.reshape(-1).detach(), x.numel() // self.num_features)
        else:
            normalized = (x - self.running_mean.reshape(shape)) * (self.running_var.reshape(shape) + self.eps).rsqrt()
        return _apply_affine(normalized, self.weight, self.bias, shape)

    def _track(self, mean: Tensor, var: Tensor, count: int) -> None:
        """Move the running statistics towards this batch's (the variance unbiased, as PyTorch)."""
        if count < 2:
            raise ValueError(f"{type(self).__name__}: training needs more than one value per channel")
        assert self.running_mean is not None and self.running_var is not None and self.num_batches_tracked is not None
        self.num_batches_tracked.assign(self.num_batches_tracked + 1)
        factor = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked.float()
        self.running_mean.assign(self.running_mean * (1 - factor) + mean * factor)
        self.running_var.assign(self.running_var * (1 - factor) + var * (count / (count - 1)) * factor)
        for buffer in (self.num_batches_tracked, self.running_mean, self.running_var):
            defer_realize(buffer)


class BatchNorm1d(_BatchNorm):
    """Over (N, C) or (N, C, L)."""

    input_ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Over (N, C, H, W)."""

    input_ndims = (4,)


def _trailing_shape(normalized_shape: ShapeSpec) -> tuple[int, ...]:
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)


def _check_trailing(layer: str, x: Tensor, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The trailing axes that `shape` names in x, or a ShapeError."""
    if x.shape[x.ndim - len(shape):] != shape:
        raise ShapeError(f"{layer}: input shape {x.shape} does not end with normalized shape {shape}")
    return tuple(range(x.ndim - len(shape), x.ndim))


class LayerNorm(Module):
    """Normalizes each sample over its trailing `normalized_shape` axes."""

    def __init__(self, normalized_shape: ShapeSpec, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device: Optional[Device] = None):
        self.normalized_shape, self.eps = _trailing_shape(normalized_shape), eps
        self.weight, self.bias = _affine_params(self.normalized_shape, elementwise_affine,
                                                elementwise_affine and bias, device or default_device())

    def forward(self, x: Tensor) -> Tensor:
        axes = _check_trailing("LayerNorm", x, self.normalized_shape)
        return _apply_affine(_standardize(x, axes, self.eps)[0], self.weight, self.bias, self.normalized_shape)


class RMSNorm(Module):
    """x / sqrt(mean(x^2) + eps) over the trailing axes: LayerNorm without centring. eps=None: the dtype's eps."""

    def __init__(self, normalized_shape: ShapeSpec, eps: Optional[float] = None, elementwise_affine: bool = True,
                 device: Optional[Device] = None):
        self.normalized_shape, self.eps = _trailing_shape(normalized_shape), eps
        self.weight, _ = _affine_params(self.normalized_shape, elementwise_affine, False, device or default_device())

    def forward(self, x: Tensor) -> Tensor:
        axes = _check_trailing("RMSNorm", x, self.normalized_shape)
        eps = self.eps if self.eps is not None else float(np.finfo(x.dtype.np).eps)
        normalized = x * ((x * x).mean(axes, keepdim=True) + eps).rsqrt()
        return _apply_affine(normalized, self.weight, None, self.normalized_shape)


class GroupNorm(Module):
    """Normalizes each sample over groups of channels (axis 1) and all spatial axes; batch-size independent."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device: Optional[Device] = None):
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels {num_channels} must be divisible by num_groups {num_groups}")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.weight, self.bias = _affine_params((num_channels,), affine, affine, device or default_device())

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ShapeError(f"GroupNorm: expected {self.num_channels} channels on axis 1, got shape {x.shape}")
        grouped = x.reshape(x.shape[0], self.num_groups, -1)
        normalized = _standardize(grouped, (2,), self.eps)[0].reshape(x.shape)
        return _apply_affine(normalized, self.weight, self.bias, (1, self.num_channels) + (1,) * (x.ndim - 2))
