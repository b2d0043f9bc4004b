"""Zyx: lazy tensors, autodiff of any order, and a fusing OpenCL JIT with a persistent kernel cache.

The public names load on first use (PEP 562), so `import zyx` and the `zyx` command line start in milliseconds
and numpy and pyopencl are imported only when a tensor or device is first asked for.
"""
from __future__ import annotations

import functools
import importlib
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# torch.<op>(x, ...) forms of Tensor methods: zyx.<op>(x, ...) is Tensor.<op>
TENSOR_FUNCTIONS = (
    "any", "all", "std_mean", "var_mean", "sort", "argsort", "msort", "topk", "cumprod", "cummax", "cummin",
    "logcumsumexp", "tril", "triu", "diag", "diagonal", "roll", "repeat_interleave", "narrow", "index_select",
    "scatter", "scatter_add", "scatter_reduce", "masked_select", "nonzero", "argwhere", "asin", "acos", "atan",
    "arcsin", "arccos", "arctan", "sinh", "cosh", "asinh", "acosh", "atanh", "arcsinh", "arccosh", "arctanh",
    "log10", "fmod", "remainder", "div", "divide", "copysign", "logaddexp", "logaddexp2", "isclose", "allclose",
    "selu", "celu", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "atan2", "arctan2", "hypot", "logit", "xlogy",
    "nan_to_num", "amax", "amin", "count_nonzero", "bmm", "mv", "outer", "addmm", "tile", "diff", "take_along_dim",
    "nansum", "nanmean", "aminmax", "cross", "kron", "rot90", "tensordot", "bucketize", "histc",
    "erfc", "erfinv", "lgamma", "digamma", "kthvalue", "median", "nanmedian", "quantile", "nanquantile",
)

_EXPORTS: dict[str, tuple[str, str]] = {  # public name -> (module, attribute in it, dotted for a class's)
    **{name: (".creation", name) for name in ("arange", "eye", "from_dlpack", "from_numpy", "full", "ones",
                                               "ones_like", "rand", "randint", "randn", "tensor", "uniform", "zeros",
                                               "zeros_like")},
    **{name: (".devices", name) for name in ("CPU", "Device", "OpenCL", "Torch", "WGPU", "default_device",
                                              "set_default_device", "synchronize")},
    "from_torch": (".torch_interop", "from_torch"),
    **{name: (".dtypes", name) for name in ("DType", "bool_", "uint8", "int8", "int16", "int32", "uint32", "int64",
                                             "float16", "bfloat16", "float32", "float64")},
    "bool": (".dtypes", "bool_"),  # zyx.bool, as torch.bool
    **{name: (".errors", name) for name in ("AxisError", "OutOfMemoryError", "ShapeError")},
    "profile": (".profiler", "profile"), "Profiler": (".profiler", "Profiler"), "viz": (".trace_graph", "viz"),
    "manual_seed": (".random", "manual_seed"),
    "realize": (".realize", "realize"),
    "reset_stats": (".counters", "reset_stats"), "stats": (".counters", "stats"),
    "jit": (".step.jit", "jit"),
    "autocast": (".autocast", "autocast"), "autocast_dtype": (".autocast", "autocast_dtype"),
    "set_float32_matmul_precision": (".precision", "set_float32_matmul_precision"),
    "get_float32_matmul_precision": (".precision", "get_float32_matmul_precision"),
    "memory_stats": (".memory", "memory_stats"), "reset_peak_memory": (".memory", "reset_peak_memory"),
    "Tensor": (".tensor", "Tensor"), "where": (".tensor", "where"),
    **{name: (".tensor_combine", name) for name in ("cat", "stack", "hstack", "vstack")},
    "save": (".serialization", "save"), "load": (".serialization", "load"),
    "nn": (".nn", ""), "distributed": (".distributed", ""),
    "searchsorted": (".tensor_sort", "searchsorted"), "cdist": (".tensor_layers", "cdist"),
    "einsum": (".einsum", "einsum"), "meshgrid": (".tensor_combine", "meshgrid"),
    **{name: (".creation", name) for name in ("linspace", "empty", "empty_like", "full_like")},
    **{name: (".tensor", f"Tensor.{name}") for name in TENSOR_FUNCTIONS},
}

__all__ = [
    "jit", "autocast", "autocast_dtype", "set_float32_matmul_precision", "get_float32_matmul_precision", "memory_stats", "reset_peak_memory", "nn", "distributed", "save", "load",
    "Tensor", "Device", "CPU", "OpenCL", "WGPU", "Torch", "from_torch", "DType", "ShapeError", "AxisError",
    "OutOfMemoryError", "tensor", "zeros",
    "ones", "full", "eye", "arange", "from_dlpack", "from_numpy",
    "rand", "randint", "randn", "uniform", "zeros_like", "ones_like", "manual_seed", "realize", "where", "cat", "stack",
    "hstack", "vstack", "searchsorted", "cdist",
    "default_device", "set_default_device", "stats", "reset_stats", "uint8", "int8", "int16", "int32", "uint32",
    "int64", "float16", "bfloat16", "float32", "float64", "bool", "bool_", "synchronize", "profile", "Profiler", "viz",
    "einsum", "meshgrid", "linspace", "empty", "empty_like", "full_like", *TENSOR_FUNCTIONS,
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'zyx' has no attribute {name!r}")
    module_name, attribute = _EXPORTS[name]
    module = importlib.import_module(module_name, __name__)
    value = functools.reduce(getattr, attribute.split("."), module) if attribute else module
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """Keeps `zyx.jit`, `zyx.tensor` and `zyx.realize` the functions: importing the submodule of the same name
    (`zyx.jit.cache`, `zyx.tensor`) would otherwise set the package's attribute to that submodule, which the
    eager imports used to overwrite."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name, ("", ""))[1]:
            return
        super().__setattr__(name, value)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _Package

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads each on first use
    from . import distributed, nn
    from .autocast import autocast, autocast_dtype
    from .precision import get_float32_matmul_precision, set_float32_matmul_precision
    from .counters import reset_stats, stats
    from .creation import (arange, empty, empty_like, eye, from_dlpack, full, full_like, linspace, ones, ones_like,
                           rand, randn, tensor, uniform, zeros, zeros_like)
    from .einsum import einsum
    from .devices import CPU, WGPU, Device, OpenCL, Torch, default_device, set_default_device, synchronize
    from .dtypes import (DType, bfloat16, bool_, float16, float32, float64, int8, int16, int32, int64, uint8,
                         uint32)
    from .dtypes import bool_ as bool  # noqa: A001
    from .errors import AxisError, OutOfMemoryError, ShapeError
    from .profiler import Profiler, profile
    from .trace_graph import viz
    from .torch_interop import from_torch
    from .step.jit import jit
    from .memory import memory_stats, reset_peak_memory
    from .random import manual_seed
    from .realize import realize
    from .serialization import load, save
    from .tensor import Tensor, where
    from .tensor_combine import cat, hstack, meshgrid, stack, vstack
    from .tensor_layers import cdist
    from .tensor_sort import searchsorted
