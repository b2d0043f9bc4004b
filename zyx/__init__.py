"""Zyx: lazy tensors, autodiff of any order, and a fusing OpenCL JIT with a persistent kernel cache."""
from __future__ import annotations

from .creation import (arange, eye, full, ones, ones_like, rand, randn, tensor, uniform, zeros, zeros_like)
from .devices import CPU, Device, OpenCL, default_device, set_default_device, synchronize
from .dtypes import DType, bool_, float16, float32, float64, int32, int64
from .errors import AxisError, OutOfMemoryError, ShapeError
from .random import manual_seed
from .realize import realize
from .counters import reset_stats, stats
from .jit.jit import jit
from .memory import memory_stats, reset_peak_memory
from .profiler import Profiler, profile
from .tensor import Tensor, where
from .tensor_combine import cat, stack

bool = bool_  # noqa: A001  (zyx.bool, as torch.bool)

__version__ = "0.1.0"

__all__ = [
    "jit", "memory_stats", "reset_peak_memory", "nn", "save", "load",
    "Tensor", "Device", "CPU", "OpenCL", "DType", "ShapeError", "AxisError", "OutOfMemoryError", "tensor", "zeros",
    "ones", "full", "eye", "arange",
    "rand", "randn", "uniform", "zeros_like", "ones_like", "manual_seed", "realize", "where", "cat", "stack",
    "default_device", "set_default_device", "stats", "reset_stats", "float16", "float32", "float64", "int32",
    "int64", "bool", "bool_", "synchronize", "profile", "Profiler", "viz",
]
from . import nn
from .serialization import save, load
from .trace_graph import viz
