"""Making tensors: from data, constants (lazy, no memory until used) and the random stream (lazy too)."""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from .devices import Device, default_device
from .dtypes import DEFAULT_FLOAT, int64, scalar_dtype, to_dtype
from .leaves import arange_leaf, data_leaf, rand_leaf
from .tensor import Tensor
from .trace import node as n


def shape_of(args: tuple[Any, ...]) -> tuple[int, ...]:
    """Accept f(2, 3), f((2, 3)) and f([2, 3])."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    shape = tuple(int(s) for s in args)
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    return shape


def _device(device: Optional[Device]) -> Device:
    return device if device is not None else default_device()


def tensor(data: Any, device: Optional[Device] = None, dtype: Any = None) -> Tensor:
    """A tensor holding a copy of `data` (nested lists, numbers, numpy arrays or tensors)."""
    device = _device(device)
    if isinstance(data, Tensor):
        data = data.numpy()
    return Tensor(data_leaf(data, device, dtype))


def from_numpy(array: np.ndarray, device: Optional[Device] = None) -> Tensor:
    """A tensor holding a copy of a numpy array, its dtype kept (PyTorch's from_numpy shares the array's memory; a
    zyx tensor is a device's value, never a view of host memory, so later writes to the array do not reach it)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy: expected a numpy.ndarray, got {type(array).__name__}")
    return tensor(array, device)


def from_dlpack(source: Any, device: Optional[Device] = None) -> Tensor:
    """A tensor holding a copy of a DLPack exporter's data (a torch tensor, a numpy array, a zyx tensor), on
    `device` (default: zyx.default_device()). Device memory (a CUDA tensor, a zyx.Torch('cuda') tensor) is
    imported through torch, where torch is installed; host memory through numpy."""
    if _in_device_memory(source):
        from .devices import import_torch
        from .torch_interop import from_torch  # (torch: optional, slow to import)
        return from_torch(import_torch().from_dlpack(source), _device(device))
    try:
        array = np.from_dlpack(source)
    except (BufferError, RuntimeError, TypeError) as error:
        raise TypeError(f"from_dlpack: cannot import {type(source).__name__} ({error}); host (CPU) memory is "
                        "imported in the dtypes numpy knows") from None
    return tensor(array, device)


def _in_device_memory(source: Any) -> bool:
    """Whether a DLPack exporter's memory is a device's, not the host's (DLPack's kDLCPU, 1, or kDLCUDAHost, 3)."""
    where = getattr(source, "__dlpack_device__", None)
    return where is not None and int(where()[0]) not in (1, 3)


def full(shape: Any, value: Any, device: Optional[Device] = None, dtype: Any = None) -> Tensor:
    """A tensor of `shape` filled with `value` (lazy: a constant takes no memory until used)."""
    shape = shape_of((shape,)) if not isinstance(shape, int) else (shape,)
    target = to_dtype(dtype) if dtype is not None else scalar_dtype(value)
    return Tensor(n.const(value, shape, target, _device(device)))


def zeros(*shape: Any, device: Optional[Device] = None, dtype: Any = None) -> Tensor:
    """A tensor of zeros (float32 unless `dtype` is given)."""
    return full(shape_of(shape), 0.0, device, dtype or DEFAULT_FLOAT)


def ones(*shape: Any, device: Optional[Device] = None, dtype: Any = None) -> Tensor:
    """A tensor of ones (float32 unless `dtype` is given)."""
    return full(shape_of(shape), 1.0, device, dtype or DEFAULT_FLOAT)


def zeros_like(t: Tensor, dtype: Any = None) -> Tensor:
    """Zeros with t's shape and device (and dtype unless given)."""
    return full(t.shape, 0, t.device, dtype or t.dtype)


def ones_like(t: Tensor, dtype: Any = None) -> Tensor:
    """Ones with t's shape and device (and dtype unless given)."""
    return full(t.shape, 1, t.device, dtype or t.dtype)


def full_like(t: Tensor, value: Any, dtype: Any = None) -> Tensor:
    """`value` in t's shape, on t's device, in t's dtype unless `dtype` says otherwise (lazy)."""
    return full(t.shape, value, t.device, dtype or t.dtype)


def rand(*shape: Any, device: Optional[Device] = None, dtype: Any = None) -> Tensor:
    """Uniform in [0, 1), lazy: drawn from the counter-based generator when realized."""
    values = Tensor(rand_leaf(shape_of(shape), _device(device)))
    return values.cast(dtype) if dtype is not None else values


RANDINT_SPAN = 1 << 24  # the most integers randint draws among: a float32 draw scaled to more would skip some


def randint(*args: Any, device: Optional[Device] = None, dtype: Any = None) -> Tensor:
    """Integers uniform in [low, high): randint(high, size) or randint(low, high, size), as PyTorch's; int64
    unless `dtype` says otherwise; lazy like `rand`, whose float32 draw it scales (so high - low is at most
    RANDINT_SPAN)."""
    if len(args) not in (2, 3):
        raise TypeError(f"randint takes (high, size) or (low, high, size), got {len(args)} arguments")
    low, high, size = (0, *args) if len(args) == 2 else args
    if not all(isinstance(v, (int, np.integer)) for v in (low, high)):
        raise TypeError(f"randint: low and high must be integers, got {low!r} and {high!r}")
    if not low < high <= low + RANDINT_SPAN:
        raise ValueError(f"randint: expected low < high <= low + {RANDINT_SPAN}, got low={low}, high={high}")
    drawn = (rand(size, device=device) * (high - low)).floor().minimum(high - low - 1).cast(int64) + int(low)
    return drawn if dtype is None else drawn.cast(dtype)


def uniform(*shape: Any, low: float = 0.0, high: float = 1.0, device: Optional[Device] = None,
            dtype: Any = None) -> Tensor:
    """Uniform in [low, high), lazy like `rand`."""
    return rand(*shape, device=device, dtype=dtype) * (high - low) + low


def randn(*shape: Any, device: Optional[Device] = None, dtype: Any = None) -> Tensor:
    """Standard normal by Box-Muller over two uniform draws."""
    dims = shape_of(shape)
    u1, u2 = rand(dims, device=device), rand(dims, device=device)
    radius = ((1.0 - u1).log() * -2.0).sqrt()
    values = radius * (u2 * (2 * math.pi)).cos()
    return values.cast(dtype) if dtype is not None else values


def arange(*args: Any, device: Optional[Device] = None, dtype: Any = None) -> Tensor:
    """arange(stop), arange(start, stop[, step]) as numpy; int64 unless a bound is a float."""
    if not 1 <= len(args) <= 3:
        raise TypeError("arange takes stop, or start, stop and an optional step")
    start, stop, step = (0, args[0], 1) if len(args) == 1 else (args[0], args[1], args[2] if len(args) == 3 else 1)
    if step == 0:
        raise ValueError("arange: step must not be zero")
    inferred = DEFAULT_FLOAT if any(isinstance(v, float) for v in (start, stop, step)) else to_dtype(np.int64)
    target = to_dtype(dtype) if dtype is not None else inferred
    if (start, step) == (0, 1) and isinstance(stop, (int, np.integer)) and target == to_dtype(np.int64):
        # the marked leaf (leaves.arange_leaf): kernels may read its values off their index (a causal mask's)
        return Tensor(arange_leaf(int(stop), _device(device)))
    return tensor(np.arange(start, stop, step), device, target)


def eye(n_rows: int, n_cols: Optional[int] = None, device: Optional[Device] = None, dtype: Any = None) -> Tensor:
    """The identity matrix, n_rows x n_cols (square by default)."""
    n_cols = n_rows if n_cols is None else n_cols
    rows = arange(n_rows, device=device).reshape(n_rows, 1)
    cols = arange(n_cols, device=device).reshape(1, n_cols)
    return (rows == cols).cast(dtype or DEFAULT_FLOAT)


def linspace(start: float, end: float, steps: int, device: Optional[Device] = None, dtype: Any = None) -> Tensor:
    """`steps` evenly spaced values from start to end inclusive (computed in float64, then cast)."""
    if steps < 0:
        raise ValueError(f"linspace: steps must be non-negative, got {steps}")
    return tensor(np.linspace(start, end, steps, dtype=np.float64), device, dtype or DEFAULT_FLOAT)


def empty(*shape: Any, device: Optional[Device] = None, dtype: Any = None) -> Tensor:
    """A tensor to be overwritten: zyx has no uninitialised memory, so this is zeros (lazy, no memory until
    used)."""
    return zeros(*shape, device=device, dtype=dtype)


def empty_like(t: Tensor, dtype: Any = None) -> Tensor:
    """empty() in t's shape, device and dtype."""
    return zeros_like(t, dtype)
