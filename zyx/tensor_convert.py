"""Conversions: dtype and device moves (PyTorch's `.to`, `.long()`, `.half()`...), `.size()`, `.clone()`,
formatting, pickling and DLPack. Everything that leaves the device goes through the host (numpy)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import numpy as np

from .dtypes import (DEFAULT_FLOAT, DType, bfloat16, bool_, float16, float64, int8, int16, int32, int64, to_dtype,
                     uint8)
from .devices import DEVICE_SPECS, Device, device_from_spec, import_torch
from .errors import AxisError
from .leaves import data_leaf, torch_leaf
from .tensor_movement import normalize_axis
from .trace import node as n

if TYPE_CHECKING:
    from .tensor import Tensor

K_DL_CPU = 1  # DLPack's device type for host memory


def _device_or_dtype(spec: Any) -> tuple[Optional["Device"], Optional[DType]]:
    """What a positional argument of `to` names: (device, None) or (None, dtype)."""
    if isinstance(spec, Device):
        return spec, None
    if isinstance(spec, str):
        try:
            return device_from_spec(spec), None
        except ValueError:
            pass
        try:
            return None, to_dtype(spec)
        except TypeError:
            raise TypeError(f"to: {spec!r} is neither a device ({DEVICE_SPECS}) nor a dtype") from None
    return None, to_dtype(spec)


def _caster(dtype: DType, name: str) -> Callable[["ConvertMixin"], "Tensor"]:
    def cast_to(self: "ConvertMixin") -> "Tensor":
        return self.cast(dtype)

    cast_to.__name__ = cast_to.__qualname__ = name
    cast_to.__doc__ = f"`self.cast(zyx.{dtype.name})`, as PyTorch's `.{name}()`."
    return cast_to


class ConvertMixin:
    __slots__ = ()
    node: Any

    def cast(self, dtype: Any) -> "Tensor":
        """The values as `dtype` (a zyx dtype, a numpy dtype, a Python type or a name such as "float16")."""
        return self._wrap(n.cast(self.node, to_dtype(dtype)))  # type: ignore[attr-defined]

    float = _caster(DEFAULT_FLOAT, "float")
    double = _caster(float64, "double")
    half = _caster(float16, "half")
    bfloat16 = _caster(bfloat16, "bfloat16")
    long = _caster(int64, "long")
    int = _caster(int32, "int")
    short = _caster(int16, "short")
    char = _caster(int8, "char")
    byte = _caster(uint8, "byte")
    bool = _caster(bool_, "bool")

    def to(self, *args: Any, device: Union["Device", str, None] = None, dtype: Any = None) -> "Tensor":
        """PyTorch's `to`: `to(device)`, `to(dtype)`, `to(device, dtype)`, `to(other)` (other's device and dtype),
        or the keywords. A move copies through the host, or between two zyx.Torch() devices as torch copies
        (gradients do not cross devices); a tensor already there, in that dtype, is returned as it is."""
        if len(args) > 2:
            raise TypeError(f"to takes at most a device and a dtype, got {len(args)} arguments")
        device = device_from_spec(device) if isinstance(device, str) else device
        dtype = to_dtype(dtype) if dtype is not None else None
        for arg in args:
            if isinstance(arg, ConvertMixin):
                device, dtype = arg.node.device, arg.node.dtype
                continue
            named_device, named_dtype = _device_or_dtype(arg)
            device, dtype = named_device or device, named_dtype or dtype
        result = self
        if device is not None and device is not self.node.device:
            if device.kind == self.node.device.kind == "torch":  # torch copies device to device (cuda:0 -> cuda:1)
                result = self._wrap(torch_leaf(self.torch(), self.node.dtype, device))  # type: ignore[attr-defined]
            else:
                result = self._wrap(data_leaf(self.numpy(), device, self.node.dtype))  # type: ignore[attr-defined]
        return result.cast(dtype) if dtype not in (None, result.node.dtype) else result  # type: ignore[return-value]

    def size(self, axis: Optional[int] = None) -> Union[tuple[int, ...], int]:
        """The shape (PyTorch's `.size()`), or the length of one axis."""
        shape = self.node.shape
        if axis is None:
            return shape
        if not shape:
            raise AxisError(f"size: a 0-d tensor has no axis {axis}")
        return shape[normalize_axis(axis, len(shape), "size")]

    def clone(self) -> "Tensor":
        """A new tensor with the same value. Values never change in place (`assign` rebinds one tensor), so
        nothing is copied; assigning to the clone leaves this tensor as it was."""
        return self._wrap(self.node)  # type: ignore[attr-defined]

    def __format__(self, spec: str) -> str:
        """`f"{loss:.4f}"` formats a one-element tensor's value; no spec gives `str(self)`."""
        if not spec:
            return str(self)
        if self.node.numel != 1:
            raise TypeError(f"format spec {spec!r} needs a tensor with one element, this one has shape "
                            f"{self.node.shape} (as PyTorch)")
        return format(self.item(), spec)  # type: ignore[attr-defined]

    def __reduce__(self) -> tuple[Callable[..., "Tensor"], tuple[np.ndarray, "Device", str]]:
        """Pickled as its values (computed, then copied to the host), its device and dtype; unpickling uploads
        them again (a leaf: the graph that computed it is not kept)."""
        return self._from_host, (self.numpy(), self.node.device, self.node.dtype.name)  # type: ignore[attr-defined]

    def torch(self) -> Any:
        """The values as a torch tensor, sharing memory on zyx.Torch() (the buffer itself) and zyx.CPU(), else a
        host copy; see `zyx.torch_interop`. Needs PyTorch."""
        import_torch()
        from .runtime.torch_arrays import from_numpy  # (torch: optional, slow to import)
        self.realize()  # type: ignore[attr-defined]
        node = self.node
        if node.device.kind == "torch":
            return node.buffer.reshape(node.shape)
        if node.device.kind == "cpu" and node.buffer.flags.writeable:
            return from_numpy(node.buffer.reshape(node.shape))
        return from_numpy(self.numpy())  # type: ignore[attr-defined]

    def __dlpack__(self, **kwargs: Any) -> Any:
        """A DLPack capsule: on zyx.Torch() of the buffer itself (zero-copy, on its device), elsewhere of a host
        copy of the values (so `torch.tensor(t)` and `torch.from_dlpack(t)` work on every device); keywords go to
        the exporter's `__dlpack__`. bfloat16 has no numpy export."""
        if self.node.device.kind == "torch":
            return self.torch().__dlpack__(**kwargs)
        return self.numpy().__dlpack__(**kwargs)  # type: ignore[attr-defined]

    def __dlpack_device__(self) -> tuple[int, int]:
        """Where `__dlpack__`'s memory is: the torch buffer's device on zyx.Torch(), else the host (kDLCPU)."""
        if self.node.device.kind == "torch":
            return tuple(self.torch().__dlpack_device__())  # type: ignore[return-value]
        return (K_DL_CPU, 0)
