"""Data types and the promotion rules (PyTorch's: bool < ints < floats; a Python scalar never widens a tensor)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    """One element type: its name, numpy twin and OpenCL C spelling."""

    name: str
    itemsize: int
    kind: str  # "bool", "int" or "float"
    rank: int  # promotion order within all dtypes
    cl_name: str

    @property
    def np(self) -> np.dtype:
        return np.dtype(self.name)

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def is_int(self) -> bool:
        return self.kind == "int"

    @property
    def is_bool(self) -> bool:
        return self.kind == "bool"

    def __repr__(self) -> str:
        return f"zyx.{self.name}"


bool_ = DType("bool", 1, "bool", 0, "uchar")
int32 = DType("int32", 4, "int", 1, "int")
int64 = DType("int64", 8, "int", 2, "long")
float16 = DType("float16", 2, "float", 3, "half")
float32 = DType("float32", 4, "float", 4, "float")
float64 = DType("float64", 8, "float", 5, "double")

ALL_DTYPES = (bool_, int32, int64, float16, float32, float64)
_BY_NAME = {d.name: d for d in ALL_DTYPES}
DEFAULT_FLOAT = float32
DEFAULT_INT = int64


def to_dtype(spec: object) -> DType:
    """Accept a DType, a numpy dtype, a Python type or a name; reject what zyx cannot hold."""
    if isinstance(spec, DType):
        return spec
    if spec is bool:
        return bool_
    if spec is int:
        return DEFAULT_INT
    if spec is float:
        return DEFAULT_FLOAT
    try:
        name = np.dtype(spec).name  # type: ignore[arg-type]
    except TypeError:
        name = str(spec)
    if name in _BY_NAME:
        return _BY_NAME[name]
    raise TypeError(f"zyx does not support dtype {spec!r}; use one of {[d.name for d in ALL_DTYPES]}")


def int_range(dtype: DType) -> tuple[int, int]:
    """The smallest and largest value of an integer dtype (two's complement)."""
    bits = 8 * dtype.itemsize
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def wrap_int(value: int, dtype: DType) -> int:
    """`value` reduced to `dtype`'s range as two's complement, as PyTorch does with a Python int operand that
    fits 64 bits (`int32 + 0xFFFFFFFF` is `int32 - 1`); one beyond 64 bits raises OverflowError."""
    low, high = int_range(int64)
    if not low <= value <= high:
        raise OverflowError(f"Python integer {value} does not fit int64 (range {low} to {high}), so it cannot "
                            f"be an operand of a {dtype.name} tensor")
    low, high = int_range(dtype)
    return (value - low) % (high - low + 1) + low


def promote(a: DType, b: DType) -> DType:
    """The dtype of a binary op on two tensors."""
    return a if a.rank >= b.rank else b


def scalar_dtype(value: object) -> DType:
    if isinstance(value, (bool, np.bool_)):
        return bool_
    if isinstance(value, (int, np.integer)):
        return DEFAULT_INT
    if isinstance(value, (float, np.floating)):
        return DEFAULT_FLOAT
    raise TypeError(f"expected a number, got {type(value).__name__}")


def promote_with_scalar(tensor_dtype: DType, value: object) -> DType:
    """A Python scalar only lifts the kind (int tensor + 0.5 -> float32), never the width."""
    kind = scalar_dtype(value)
    if kind.rank <= tensor_dtype.rank or kind.kind == tensor_dtype.kind:
        return tensor_dtype
    if kind.is_float:
        return DEFAULT_FLOAT
    return DEFAULT_INT if tensor_dtype.is_bool else tensor_dtype
