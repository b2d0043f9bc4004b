"""Layers with weights (Linear, Conv2d, Embedding) and the parameter-free ones that sit between them."""
from __future__ import annotations

from typing import Any, Optional, Union

from ..creation import arange
from ..devices import Device, default_device
from ..tensor import Tensor
from ..interpolate import interpolate
from ..tensor_conv import Size, as_tuple, fold, unfold
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
        self.weight, self.bias = init.layer_parameters(shape, out_features if bias else None, device)

    def forward(self, x: Tensor) -> Tensor:
        return x.linear(self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class _ConvNd(Module):
    """Convolution over `dims` spatial axes, weight (out, in/groups, *kernel); the arguments in PyTorch's order."""

    dims = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Size, stride: Size = 1,
                 padding: Union[Size, str] = 0, dilation: Size = 1, groups: int = 1, bias: bool = True,
                 device: Optional[Device] = None):
        self._build((out_channels, in_channels), out_channels, kernel_size, stride, padding, dilation, groups, bias,
                    device)

    def _build(self, channels: tuple[int, int], out_channels: int, kernel_size: Size, stride: Size,
               padding: Union[Size, str], dilation: Size, groups: int, bias: bool, device: Optional[Device]) -> None:
        """Check the options and make the weight, shaped channels[0], channels[1] / groups, *kernel."""
        name = type(self).__name__
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"{name}: groups must be a positive int, got {groups!r}")
        if channels[0] % groups or channels[1] % groups:
            raise ValueError(f"{name}: in and out channels {sorted(channels)} must be divisible by groups {groups}")
        device = device or default_device()
        shape = (channels[0], channels[1] // groups) + as_tuple(kernel_size, self.dims, "kernel_size", name, 1)
        self.stride = as_tuple(stride, self.dims, "stride", name, 1)
        self.dilation = as_tuple(dilation, self.dims, "dilation", name, 1)
        self.padding = padding if isinstance(padding, str) else as_tuple(padding, self.dims, "padding", name, 0)
        self.groups = groups
        # fans from this shape, as PyTorch
        self.weight, self.bias = init.layer_parameters(shape, out_channels if bias else None, device)

    def extra_repr(self) -> str:
        """PyTorch's: options left at their defaults are not shown."""
        first, second, *kernel = self.weight.shape  # (out, in/groups) or, transposed, (in, out/groups)
        channels = (first, second * self.groups) if isinstance(self, _ConvTransposeNd) else (second * self.groups, first)
        text = f"{channels[0]}, {channels[1]}, kernel_size={tuple(kernel)}, stride={self.stride}"
        if self.padding not in ((0,) * self.dims, "valid"):
            text += f", padding={self.padding}"
        if self.dilation != (1,) * self.dims:
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        return text + (", bias=False" if self.bias is None else "")

    def forward(self, x: Tensor) -> Tensor:
        return x._conv(self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups, self.dims,
                       type(self).__name__)


class _ConvTransposeNd(_ConvNd):
    """The adjoint of a convolution, weight (in, out/groups, *kernel); the arguments in PyTorch's order."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Size, stride: Size = 1, padding: Size = 0,
                 output_padding: Size = 0, groups: int = 1, bias: bool = True, dilation: Size = 1,
                 device: Optional[Device] = None):
        self._build((in_channels, out_channels), out_channels, kernel_size, stride, padding, dilation, groups, bias,
                    device)
        self.output_padding = as_tuple(output_padding, self.dims, "output_padding", type(self).__name__, 0)

    def forward(self, x: Tensor) -> Tensor:
        return x._conv_transpose(self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                 self.groups, self.dilation, self.dims, type(self).__name__)


class Conv1d(_ConvNd):
    """1-D convolution over (N, C, L)."""

    dims = 1


class Conv2d(_ConvNd):
    """2-D convolution over (N, C, H, W); weight (out, in/groups, kh, kw)."""

    dims = 2


class Conv3d(_ConvNd):
    """3-D convolution over (N, C, D, H, W)."""

    dims = 3


class ConvTranspose1d(_ConvTransposeNd):
    """The adjoint of Conv1d; weight (in, out/groups, k)."""

    dims = 1


class ConvTranspose2d(_ConvTransposeNd):
    """The adjoint of Conv2d ("deconvolution"); weight (in, out/groups, kh, kw)."""

    dims = 2


class ConvTranspose3d(_ConvTransposeNd):
    """The adjoint of Conv3d; weight (in, out/groups, kd, kh, kw)."""

    dims = 3


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


class _PoolNd(Module):
    """What pooling modules share: PyTorch's repr (the stride is the kernel size when not given)."""

    shown: tuple[str, ...] = ()  # options printed after kernel_size, stride and padding, as PyTorch prints them

    def extra_repr(self) -> str:
        stride = self.stride if self.stride is not None else self.kernel_size
        return ", ".join([f"kernel_size={self.kernel_size}", f"stride={stride}", f"padding={self.padding}",
                          *(f"{name}={getattr(self, name)}" for name in self.shown)])


class _MaxPoolNd(_PoolNd):
    """Maximum over windows of the last `dims` axes (see Tensor.max_pool2d for the options)."""

    dims = 2

    def __init__(self, kernel_size: Size, stride: Optional[Size] = None, padding: Size = 0, dilation: Size = 1,
                 return_indices: bool = False, ceil_mode: bool = False):
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode

    shown = ("dilation", "ceil_mode")

    def forward(self, x: Tensor) -> Any:
        return x._max_pool(self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                           self.return_indices, self.dims, type(self).__name__)


class MaxPool1d(_MaxPoolNd):
    """Maximum over windows of (N, C, L)."""

    dims = 1


class MaxPool2d(_MaxPoolNd):
    """Maximum over windows of (N, C, H, W)."""

    dims = 2


class MaxPool3d(_MaxPoolNd):
    """Maximum over windows of (N, C, D, H, W)."""

    dims = 3


class _AvgPoolNd(_PoolNd):
    """Mean over windows of the last `dims` axes; zero padding counts towards the mean unless
    count_include_pad=False (PyTorch's default)."""

    dims = 2

    def __init__(self, kernel_size: Size, stride: Optional[Size] = None, padding: Size = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: Optional[int] = None):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad, self.divisor_override = ceil_mode, count_include_pad, divisor_override

    def forward(self, x: Tensor) -> Tensor:
        return x._avg_pool(self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                           self.divisor_override, self.dims, type(self).__name__)


class AvgPool1d(_AvgPoolNd):
    """Mean over windows of (N, C, L)."""

    dims = 1


class AvgPool2d(_AvgPoolNd):
    """Mean over windows of (N, C, H, W)."""

    dims = 2


class AvgPool3d(_AvgPoolNd):
    """Mean over windows of (N, C, D, H, W)."""

    dims = 3


class _AdaptiveAvgPoolNd(Module):
    """Mean over adaptive windows to a fixed `output_size`, whatever the input's size."""

    dims = 2

    def __init__(self, output_size: Any):
        self.output_size = output_size

    def forward(self, x: Tensor) -> Tensor:
        return x._adaptive_avg_pool(self.output_size, self.dims, type(self).__name__)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveAvgPool1d(_AdaptiveAvgPoolNd):
    """Mean over adaptive windows of (N, C, L) or (C, L) to output_size."""

    dims = 1


class AdaptiveAvgPool2d(_AdaptiveAvgPoolNd):
    """Mean over adaptive windows of (N, C, H, W) or (C, H, W) to output_size (H, W); None keeps that axis."""

    dims = 2


class PixelShuffle(Module):
    """(*, C r^2, H, W) to (*, C, H r, W r), r = upscale_factor (sub-pixel convolution's upsampling)."""

    def __init__(self, upscale_factor: int):
        self.upscale_factor = upscale_factor

    def forward(self, x: Tensor) -> Tensor:
        return x.pixel_shuffle(self.upscale_factor)

    def extra_repr(self) -> str:
        return f"upscale_factor={self.upscale_factor}"


class PixelUnshuffle(Module):
    """(*, C, H r, W r) to (*, C r^2, H, W), r = downscale_factor: PixelShuffle undone."""

    def __init__(self, downscale_factor: int):
        self.downscale_factor = downscale_factor

    def forward(self, x: Tensor) -> Tensor:
        return x.pixel_unshuffle(self.downscale_factor)

    def extra_repr(self) -> str:
        return f"downscale_factor={self.downscale_factor}"


class Upsample(Module):
    """Resize the spatial axes (see zyx.nn.interpolate)."""

    def __init__(self, size: Any = None, scale_factor: Any = None, mode: str = "nearest",
                 align_corners: Optional[bool] = None):
        self.size, self.scale_factor, self.mode, self.align_corners = size, scale_factor, mode, align_corners

    def forward(self, x: Tensor) -> Tensor:
        return interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners)


class Dropout(Module):
    """Zero elements with probability p while training; the identity in eval mode."""

    def __init__(self, p: float = 0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"{type(self).__name__} probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return x.dropout(self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Dropout1d(Dropout):
    """Zero whole channels of (N, C, L) or (C, L) with probability p while training; the identity in eval mode."""

    def forward(self, x: Tensor) -> Tensor:
        return x.dropout1d(self.p, self.training)


class Dropout2d(Dropout):
    """Zero whole channels of (N, C, H, W) with probability p while training (a 3-D input as (N, C, L), as
    PyTorch); the identity in eval mode."""

    def forward(self, x: Tensor) -> Tensor:
        return x.dropout2d(self.p, self.training)


class Dropout3d(Dropout):
    """Zero whole channels of (N, C, D, H, W) or (C, D, H, W) with probability p while training; the identity in
    eval mode."""

    def forward(self, x: Tensor) -> Tensor:
        return x.dropout3d(self.p, self.training)


class Unfold(Module):
    """im2col: (N, C, H, W) to (N, C kh kw, L) sliding blocks (see zyx.nn.functional.unfold)."""

    def __init__(self, kernel_size: Any, dilation: Any = 1, padding: Any = 0, stride: Any = 1):
        self.kernel_size, self.dilation, self.padding, self.stride = kernel_size, dilation, padding, stride

    def forward(self, x: Tensor) -> Tensor:
        return unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, dilation={self.dilation}, padding={self.padding}, stride={self.stride}"


class Fold(Module):
    """col2im: (N, C kh kw, L) blocks summed into (N, C, *output_size) (see zyx.nn.functional.fold)."""

    def __init__(self, output_size: Any, kernel_size: Any, dilation: Any = 1, padding: Any = 0, stride: Any = 1):
        self.output_size, self.kernel_size = output_size, kernel_size
        self.dilation, self.padding, self.stride = dilation, padding, stride

    def forward(self, x: Tensor) -> Tensor:
        return fold(x, self.output_size, self.kernel_size, self.dilation, self.padding, self.stride)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
                f"padding={self.padding}, stride={self.stride}")


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
