"""The leaves of new tensors: host data copied to a device (its dtype inferred, its values checked to fit) and
random draws. Node-level, so both zyx.creation and the tensor mixins make tensors through them."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import random as zrandom
from .dtypes import DEFAULT_FLOAT, DType, float32, int64, int_range, to_dtype
from .trace import node as n
from .trace.capture import record_created


def data_leaf(data: Any, device: Any, dtype: Any = None) -> n.Node:
    """A buffer leaf on `device` holding a copy of `data` (nested lists, numbers, numpy arrays), in `dtype` or the
    one inferred from the data (float32 for Python floats, int64 for integers)."""
    array = _as_array(data)
    target = to_dtype(dtype) if dtype is not None else _infer_dtype(array, data)
    if target.is_int:
        _check_fits(array, target)
    # (np.asarray, as ascontiguousarray makes 0-d 1-d)
    return owned_leaf(np.asarray(array.astype(target.np, copy=False), order="C"), device)


def owned_leaf(array: np.ndarray, device: Any) -> n.Node:
    """A buffer leaf on `device` holding `array` as it is, not copied first: an array the caller made for it and no
    one else writes (the CPU device keeps it as the buffer; OpenCL copies it after the call returns)."""
    leaf = n.buffer_leaf(device.upload(array), array.shape, to_dtype(array.dtype), device)
    record_created(leaf)
    return leaf


def torch_leaf(source: Any, dtype: DType, device: Any) -> n.Node:
    """A buffer leaf on the torch device `device` that is the torch tensor `source` itself (no copy)."""
    leaf = n.buffer_leaf(device.runtime.adopt(source), tuple(source.shape), dtype, device)
    record_created(leaf)
    return leaf


def arange_leaf(size: int, device: Any) -> n.Node:
    """0, 1, ..., size-1 in int64, marked as such (node.ARANGE): what indexing's one-hot masks compare with."""
    array = np.arange(size, dtype=np.int64)
    leaf = n.buffer_leaf(device.upload(array), array.shape, int64, device, n.ARANGE)
    record_created(leaf)
    return leaf


def rand_leaf(shape: tuple[int, ...], device: Any) -> n.Node:
    """float32 uniform in [0, 1) of `shape`, drawn from the counter-based generator when realized."""
    seed, offset = zrandom.reserve(math.prod(shape))
    return n.rand(seed, offset, shape, float32, device)


def _infer_dtype(array: np.ndarray, data: Any) -> DType:
    if isinstance(data, np.ndarray) or isinstance(data, np.generic):
        if array.dtype == np.float64 and isinstance(data, np.ndarray):
            return to_dtype(np.float64)
        return to_dtype(array.dtype)
    if array.dtype.kind == "f":
        return DEFAULT_FLOAT
    if array.dtype.kind in "iu":
        return to_dtype(np.int64)
    return to_dtype(array.dtype)


def _as_array(data: Any) -> np.ndarray:
    """numpy's array of `data`; Python integers beyond int64 raise (numpy would hold them as uint64 or objects)."""
    try:
        array = np.array(data)
    except ValueError as error:
        raise ValueError(f"tensor: ragged nested sequence, every row needs the same length ({error})") from None
    from_python = not isinstance(data, (np.ndarray, np.generic))
    if array.dtype == object and all(isinstance(v, int) and not isinstance(v, bool) for v in array.flat):
        _check_fits(np.array([min(array.flat), max(array.flat)], dtype=object), int64)
    if array.dtype == object:
        raise ValueError("tensor: ragged nested sequence or non-numeric data; every row needs the same length")
    if array.dtype == np.uint64 and from_python:
        _check_fits(array, int64)
    return array


def _check_fits(array: np.ndarray, target: DType) -> None:
    """Values an integer dtype cannot hold raise, as numpy and PyTorch do, instead of wrapping."""
    if array.size == 0 or array.dtype.kind == "b":
        return
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"tensor: {array[~np.isfinite(array)].flat[0]} cannot be converted to {target.name}")
    low, high = int_range(target)
    for value in (array.min(), array.max()):
        value = value.item() if isinstance(value, np.generic) else value
        if not low <= value <= high:
            raise OverflowError(f"tensor: value {value} does not fit {target.name} (range {low} to {high})")
