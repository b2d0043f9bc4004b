"""Normalization layers: BatchNorm (with running statistics), LayerNorm, RMSNorm and GroupNorm, and their
functional forms (batch_norm, layer_norm, rms_norm, group_norm)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from ..autocast import in_float32
from ..devices import Device, default_device
from ..dtypes import int64
from ..errors import ShapeError
from ..tensor import Tensor
from ..tensor_base import rounded_once
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


def _trailing_shape(normalized_shape: ShapeSpec) -> tuple[int, ...]:
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)


def _check_trailing(layer: str, x: Tensor, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The trailing axes that `shape` names in x, or a ShapeError."""
    if x.shape[x.ndim - len(shape):] != shape:
        raise ShapeError(f"{layer}: input shape {x.shape} does not end with normalized shape {shape}")
    return tuple(range(x.ndim - len(shape), x.ndim))


@rounded_once
def batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, training: bool = False,
               momentum: Union[float, Tensor] = 0.1, eps: float = 1e-5) -> Tensor:
    """Normalize each channel (axis 1) over the batch and every other axis (PyTorch's functional batch_norm).

    Training (or without running statistics) uses the batch's statistics and, given running ones, moves them
    in place towards the batch's by `momentum` (the variance unbiased); otherwise the running ones are used.
    Half precision is normalized in float32 and given back in its own dtype (PyTorch's, autocast or not).
    """
    if input.ndim < 2:
        raise ShapeError(f"batch_norm: expected input of at least 2 dimensions (N, C, ...), got shape {input.shape}")
    channels = input.shape[1]
    axes = (0,) + tuple(range(2, input.ndim))
    shape = (1, channels) + (1,) * (input.ndim - 2)
    if training or running_mean is None or running_var is None:
        normalized, mean, var = _standardize(input, axes, eps)
        if training and running_mean is not None and running_var is not None:
            count = input.numel() // max(channels, 1)
            if count < 2:
                raise ValueError(f"batch_norm: training needs more than one value per channel, got input shape "
                                 f"{input.shape}")
            running_mean.assign(running_mean * (1 - momentum) + mean.reshape(-1).detach() * momentum)
            unbiased = var.reshape(-1).detach() * (count / (count - 1))
            running_var.assign(running_var * (1 - momentum) + unbiased * momentum)
    else:
        normalized = (input - running_mean.reshape(shape)) * (running_var.reshape(shape) + eps).rsqrt()
    return _apply_affine(normalized, weight, bias, shape)


@in_float32
@rounded_once
def layer_norm(input: Tensor, normalized_shape: ShapeSpec, weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5) -> Tensor:
    """Normalize each sample over its trailing `normalized_shape` axes (PyTorch's functional layer_norm)."""
    shape = _trailing_shape(normalized_shape)
    axes = _check_trailing("layer_norm", input, shape)
    return _apply_affine(_standardize(input, axes, eps)[0], weight, bias, shape)


@in_float32
def rms_norm(input: Tensor, normalized_shape: ShapeSpec, weight: Optional[Tensor] = None,
             eps: Optional[float] = None) -> Tensor:
    """x / sqrt(mean(x^2) + eps) over the trailing axes; eps=None: the input dtype's machine epsilon."""
    shape = _trailing_shape(normalized_shape)
    axes = _check_trailing("rms_norm", input, shape)
    eps = eps if eps is not None else float(np.finfo(input.dtype.np).eps)
    return _root_mean_square_normalized(input, axes, weight, shape, eps)


@rounded_once
def _root_mean_square_normalized(x: Tensor, axes: tuple[int, ...], weight: Optional[Tensor],
                                 shape: tuple[int, ...], eps: float) -> Tensor:
    return _apply_affine(x * ((x * x).mean(axes, keepdim=True) + eps).rsqrt(), weight, None, shape)


@in_float32
@rounded_once
def group_norm(input: Tensor, num_groups: int, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               eps: float = 1e-5) -> Tensor:
    """Normalize each sample over groups of channels (axis 1) and all spatial axes."""
    if input.ndim < 2 or input.shape[1] % num_groups:
        raise ShapeError(f"group_norm: input of shape {input.shape} needs channels on axis 1 divisible by "
                         f"num_groups={num_groups}")
    grouped = input.reshape(input.shape[0], num_groups, -1)
    normalized = _standardize(grouped, (2,), eps)[0].reshape(input.shape)
    return _apply_affine(normalized, weight, bias, (1, input.shape[1]) + (1,) * (input.ndim - 2))


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
        tracking = self.training and self.num_batches_tracked is not None
        factor: Union[float, Tensor] = 0.0
        if tracking:
            if x.numel() // self.num_features < 2:
                raise ValueError(f"{type(self).__name__}: training needs more than one value per channel, got "
                                 f"input shape {x.shape}")
            assert self.num_batches_tracked is not None
            self.num_batches_tracked.assign(self.num_batches_tracked + 1)
            factor = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked.float()
        out = batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training or self.running_mean is None, factor, self.eps)
        if tracking:
            for buffer in (self.num_batches_tracked, self.running_mean, self.running_var):
                defer_realize(buffer)  # type: ignore[arg-type]
        return out

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.weight is not None}, "
                f"track_running_stats={self.running_mean is not None}")


class BatchNorm1d(_BatchNorm):
    """Over (N, C) or (N, C, L)."""

    input_ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Over (N, C, H, W)."""

    input_ndims = (4,)


class LayerNorm(Module):
    """Normalizes each sample over its trailing `normalized_shape` axes."""

    def __init__(self, normalized_shape: ShapeSpec, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device: Optional[Device] = None):
        self.normalized_shape, self.eps = _trailing_shape(normalized_shape), eps
        self.weight, self.bias = _affine_params(self.normalized_shape, elementwise_affine,
                                                elementwise_affine and bias, device or default_device())

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.weight is not None}, "
                f"bias={self.bias is not None}")


class RMSNorm(Module):
    """x / sqrt(mean(x^2) + eps) over the trailing axes: LayerNorm without centring. eps=None: the dtype's eps."""

    def __init__(self, normalized_shape: ShapeSpec, eps: Optional[float] = None, elementwise_affine: bool = True,
                 device: Optional[Device] = None):
        self.normalized_shape, self.eps = _trailing_shape(normalized_shape), eps
        self.weight, _ = _affine_params(self.normalized_shape, elementwise_affine, False, device or default_device())

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.weight is not None}"


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
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.weight is not None}"
