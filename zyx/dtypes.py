"""Data types and the promotion rules (PyTorch's: bool < ints < floats; a Python scalar never widens a tensor).

bfloat16 lives on the host as ml_dtypes' numpy dtype; devices compute it (as float16) in float32. ml_dtypes is
imported where a bfloat16 value first reaches the host: loading its extension takes 0.3-1 s, most of a start.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class DType:
    """One element type: its name, numpy twin and OpenCL C spelling.

    The dtypes below are the only ones (unpickling gives them back too), so equality is identity and the kind
    tests are attributes: tracing compares and tests dtypes at every node, where a Python call each adds up."""

    name: str
    itemsize: int
    kind: str  # "bool", "int" (signed and unsigned) or "float"
    cl_name: str  # how it is stored in an OpenCL buffer
    is_float: bool = field(init=False, repr=False)  # float16, bfloat16, float32 or float64
    is_int: bool = field(init=False, repr=False)  # a signed or unsigned integer dtype (not bool)
    is_bool: bool = field(init=False, repr=False)
    is_unsigned: bool = field(init=False, repr=False)  # uint8 or uint32

    def __post_init__(self) -> None:
        for attribute, value in (("is_float", self.kind == "float"), ("is_int", self.kind == "int"),
                                 ("is_bool", self.kind == "bool"), ("is_unsigned", self.name.startswith("uint"))):
            object.__setattr__(self, attribute, value)

    def __reduce__(self) -> tuple:
        return to_dtype, (self.name,)

    @property
    def np(self) -> np.dtype:
        """The numpy dtype of host copies (ml_dtypes' for bfloat16)."""
        if self.name == "bfloat16":
            import ml_dtypes  # slow to load (see the module docstring)
            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(self.name)

    @property
    def is_narrow_float(self) -> bool:
        """float16 and bfloat16: computed in float32 and rounded when stored, so partial sums must not be stored
        in them."""
        return self.is_float and self.itemsize == 2

    @property
    def accumulated(self) -> "DType":
        """What sums of this dtype add in: float32 for float16 and bfloat16 (see is_narrow_float), else itself."""
        return float32 if self.is_narrow_float else self

    def __repr__(self) -> str:
        return f"zyx.{self.name}"


bool_ = DType("bool", 1, "bool", "uchar")
uint8 = DType("uint8", 1, "int", "uchar")
int8 = DType("int8", 1, "int", "char")
int16 = DType("int16", 2, "int", "short")
int32 = DType("int32", 4, "int", "int")
uint32 = DType("uint32", 4, "int", "uint")
int64 = DType("int64", 8, "int", "long")
float16 = DType("float16", 2, "float", "half")
bfloat16 = DType("bfloat16", 2, "float", "ushort")  # the upper half of a float32's bits
float32 = DType("float32", 4, "float", "float")
float64 = DType("float64", 8, "float", "double")

ALL_DTYPES = (bool_, uint8, int8, int16, int32, uint32, int64, float16, bfloat16, float32, float64)
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


@functools.cache  # asked for at every integer constant
def int_range(dtype: DType) -> tuple[int, int]:
    """The smallest and largest value of an integer dtype (two's complement, or unsigned)."""
    bits = 8 * dtype.itemsize
    if dtype.is_unsigned:
        return 0, (1 << bits) - 1
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


_SIGNED_BY_SIZE = {1: int8, 2: int16, 4: int32, 8: int64}


def promote(a: DType, b: DType) -> DType:
    """The dtype of a binary op on two tensors: PyTorch's table (uint8 with int8 is int16, float16 with bfloat16
    is float32), and numpy's for uint32, which PyTorch does not promote (with a signed int: the next wider one)."""
    if a == b or b.is_bool:
        return a
    if a.is_bool:
        return b
    if a.is_float != b.is_float:
        return a if a.is_float else b
    if a.is_float and a.itemsize == b.itemsize:  # float16 and bfloat16
        return float32
    if a.is_unsigned != b.is_unsigned:
        unsigned, signed = (a, b) if a.is_unsigned else (b, a)
        return signed if signed.itemsize > unsigned.itemsize else _SIGNED_BY_SIZE[min(2 * unsigned.itemsize, 8)]
    return a if a.itemsize >= b.itemsize else b


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
    if kind.is_bool or kind.kind == tensor_dtype.kind or tensor_dtype.is_float:
        return tensor_dtype
    return DEFAULT_FLOAT if kind.is_float else DEFAULT_INT
