"""Layers with weights (Linear, Conv2d, Embedding) and the parameter-free ones that sit between them."""
from __future__ import annotations

import math
from typing import Optional, Union

from ..creation import arange
from ..devices import Device, default_device
from ..tensor import Tensor
from ..tensor_layers import Pair, as_pair
from ..trace.checks import RangeCheck, attach
from . import init
from .module import Module



def embedding(input: Tensor, weight: Tensor, padding_idx: Optional[int] = None) -> Tensor:
    """Rows of `weight` picked by the integer `input` (PyTorch's functional embedding). The `padding_idx` row
    gets no gradient; an index outside [0, rows) raises IndexError when realized (none counts from the end)."""
    if not input.dtype.is_int:
        raise TypeError(f"embedding needs integer indices, got {input.dtype.name}")
    size = weight.shape[0]
    if padding_idx is not None:
        on_padding_row = arange(size, device=weight.device).reshape(-1, 1) == padding_idx % size
        weight = on_padding_row.where(weight.detach(), weight)
    rows = weight[input]
    if input.numel():
        attach(rows.node, RangeCheck(input.node, 0, size,
                                     f"Embedding: index {{value}} is out of range for num_embeddings={size}"))
    return rows


class Linear(Module):
    """y = x W^T + b, W shaped (out_features, in_features) as PyTorch's."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Optional[Device] = None):
        device = device or default_device()
        shape = (out_features, in_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = init.kaiming_uniform(shape, a=math.sqrt(5), device=device)
        self.bias = init.uniform((out_features,), init.bias_bound(shape), device) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return x.linear(self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


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

    def extra_repr(self) -> str:
        """PyTorch's: options left at their defaults are not shown."""
        out_channels, group_channels, *kernel = self.weight.shape
        text = f"{group_channels * self.groups}, {out_channels}, kernel_size={tuple(kernel)}, stride={self.stride}"
        if self.padding not in ((0, 0), "valid"):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        return text + (", bias=False" if self.bias is None else "")


class Embedding(Module):
    """A lookup table: row i of `weight` for index i. The `padding_idx` row starts at zero and gets no gradient."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: Optional[int] = None,
                 device: Optional[Device] = None):
        device = device or default_device()
        self.padding_idx = None if padding_idx is None else padding_idx % num_embeddings
        weight = init.normal((num_embeddings, embedding_dim), device=device)
        if self.padding_idx is not None:
            on_padding_row = arange(num_embeddings, device=device).reshape(-1, 1) == self.padding_idx
            weight = on_padding_row.where(0, weight).realize()
        self.weight = weight

    def forward(self, indices: Tensor) -> Tensor:
        return embedding(indices, self.weight, self.padding_idx)

    def extra_repr(self) -> str:
        rows, width = self.weight.shape
        return f"{rows}, {width}" + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")


class _Pool2d(Module):
    """A window of `kernel_size` moved by `stride` (the kernel size when None) over zero or -inf `padding`."""

    def __init__(self, kernel_size: Pair, stride: Optional[Pair] = None, padding: Pair = 0):
        self.kernel_size, self.stride, self.padding = kernel_size, stride if stride is not None else kernel_size, padding

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Maximum over each window."""

    def forward(self, x: Tensor) -> Tensor:
        return x.max_pool2d(self.kernel_size, self.stride, self.padding)


class AvgPool2d(_Pool2d):
    """Mean over each window; zero padding counts towards the mean (PyTorch's default)."""

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

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Flatten(Module):
    """Axes start_dim to end_dim made one (by default all but the batch axis)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """Returns its input (a placeholder where a layer is optional)."""

    def forward(self, x: Tensor) -> Tensor:
        return x
