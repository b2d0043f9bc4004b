"""Layers with weights (Linear, Conv2d, Embedding) and the parameter-free ones that sit between them."""
from __future__ import annotations

import math
from typing import Optional, Union

from ..creation import arange
from ..devices import Device, default_device
from ..tensor import Tensor
from ..tensor_conv import Pair, as_pair
from ..trace.checks import RangeCheck, attach
from . import init
from .module import Module



class Linear(Module):
    """y = x W^T + b, W shaped (out_features, in_features) as PyTorch's."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Optional[Device] = None):
        device = device or default_device()
        shape = (out_features, in_features)
        self.weight = init.kaiming_uniform(shape, a=math.sqrt(5), device=device)
        self.bias = init.uniform((out_features,), init.bias_bound(shape), device) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return x.linear(self.weight, self.bias)


class Conv2d(Module):
    """2-D convolution over (N, C, H, W); weight (out, in/groups, kh, kw)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Pair, stride: Pair = 1,
                 padding: Union[Pair, str] = 0, dilation: Pair = 1, groups: int = 1, bias: bool = True,
                 device: Optional[Device] = None):
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"Conv2d: groups must be a positive int, got {groups!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels {in_channels} and out_channels {out_channels} must be divisible "
                             f"by groups {groups}")
        device = device or default_device()
        shape = (out_channels, in_channels // groups, *as_pair(kernel_size, "kernel_size", "Conv2d", 1))
        self.stride, self.dilation = as_pair(stride, "stride", "Conv2d", 1), as_pair(dilation, "dilation", "Conv2d", 1)
        self.padding = padding if isinstance(padding, str) else as_pair(padding, "padding", "Conv2d", 0)
        self.groups = groups
        self.weight = init.kaiming_uniform(shape, a=math.sqrt(5), device=device)
        self.bias = init.uniform((out_channels,), init.bias_bound(shape), device) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return x.conv2d(self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Embedding(Module):
    """A lookup table: row i of `weight` for index i. The `padding_idx` row starts at zero and gets no gradient."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: Optional[int] = None,
                 device: Optional[Device] = None):
        device = device or default_device()
        self.padding_idx = None if padding_idx is None else padding_idx % num_embeddings
        weight = init.normal((num_embeddings, embedding_dim), device=device)
        self.weight = weight if self.padding_idx is None else self._on_padding_row(weight).where(0, weight).realize()

    def _on_padding_row(self, weight: Tensor) -> Tensor:
        """(num_embeddings, 1) bool, true on the padding row."""
        return arange(weight.shape[0], device=weight.device).reshape(-1, 1) == self.padding_idx

    def forward(self, indices: Tensor) -> Tensor:
        weight = self.weight
        if self.padding_idx is not None:
            weight = self._on_padding_row(weight).where(weight.detach(), weight)
        if not indices.dtype.is_int:
            raise TypeError(f"Embedding needs integer indices, got {indices.dtype.name}")
        rows = weight[indices]
        if indices.numel():  # unlike indexing, no negative index counts from the end (PyTorch's rule)
            size = weight.shape[0]
            attach(rows.node, RangeCheck(indices.node, 0, size,
                                         f"Embedding: index {{value}} is out of range for num_embeddings={size}"))
        return rows


class MaxPool2d(Module):
    def __init__(self, kernel_size: Pair, stride: Optional[Pair] = None, padding: Pair = 0):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return x.max_pool2d(self.kernel_size, self.stride, self.padding)


class AvgPool2d(Module):
    """Mean over each window; zero padding counts towards the mean (PyTorch's default)."""

    def __init__(self, kernel_size: Pair, stride: Optional[Pair] = None, padding: Pair = 0):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return x.avg_pool2d(self.kernel_size, self.stride, self.padding)


class Dropout(Module):
    """Zero elements with probability p while training; the identity in eval mode."""

    def __init__(self, p: float = 0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"Dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return x.dropout(self.p, self.training)


class Flatten(Module):
    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(self.start_dim, self.end_dim)


class Identity(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x
