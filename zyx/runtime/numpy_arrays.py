"""numpy as the interpreter's array library: the reference semantics zyx.CPU() computes with.

It favours plain numpy over speed. Half precision (float16, bfloat16) is computed in float32, as OpenCL kernels
do and PyTorch does inside a product or a sum, and each op's result rounded to its dtype, as PyTorch's are.
"""
from __future__ import annotations

import math
from typing import Any, Callable, ContextManager, Sequence

import numpy as np

from ..dtypes import DType
from ..trace.ops import Op
from ..trace.philox import philox_uniform
from .arrays import ArrayLibrary, Shape
from .collectives import combine


def computed_as(dtype: np.dtype) -> np.dtype:
    """The numpy dtype values of `dtype` are computed in: float32 for float16 and bfloat16, else itself."""
    return np.dtype(np.float32) if dtype.kind in "fV" and dtype.itemsize == 2 else dtype


def _own(value: np.ndarray) -> np.ndarray:
    """A contiguous array that does not keep a bigger one alive (a realized slice must not pin its source)."""
    array = np.asarray(value, order="C")
    if array.base is not None and np.asarray(array.base).nbytes > array.nbytes:
        array = array.copy()
    return array


def _erf(x: Any) -> Any:
    """numpy has no erf: math.erf of each element (exact; the reference checks, it need not be fast)."""
    return np.asarray(np.frompyfunc(math.erf, 1, 1)(x), dtype=np.float64).astype(x.dtype)


class NumpyArrays(ArrayLibrary):
    """numpy arrays; buffers are C-contiguous arrays of the node's shape and dtype."""

    unary: dict[Op, Callable[[Any], Any]] = {
        Op.NEG: np.negative, Op.RECIP: np.reciprocal, Op.SQRT: np.sqrt, Op.EXP: np.exp, Op.LOG: np.log,
        Op.SIN: np.sin, Op.COS: np.cos, Op.TANH: np.tanh, Op.SIGMOID: lambda x: 1 / (1 + np.exp(-x)),
        Op.ERF: _erf,
        Op.DETACH: lambda x: x, Op.FLOOR: np.floor, Op.CEIL: np.ceil, Op.RINT: np.rint, Op.NOT: np.invert,
    }
    binary: dict[Op, Callable[[Any, Any], Any]] = {
        Op.ADD: np.add, Op.MUL: np.multiply, Op.POW: np.power, Op.MAX: np.maximum, Op.CMPLT: np.less,
        Op.CMPEQ: np.equal, Op.AND: np.bitwise_and, Op.OR: np.bitwise_or, Op.XOR: np.bitwise_xor,
    }

    def load(self, buffer: np.ndarray, dtype: DType) -> np.ndarray:
        return buffer.astype(computed_as(buffer.dtype), copy=False)

    def conform(self, value: Any, dtype: DType) -> Any:
        if dtype.is_narrow_float:  # rounded where computed, as where stored: fusion never changes a result
            return value.astype(dtype.np).astype(np.float32)
        return value.astype(computed_as(dtype.np), copy=False)

    def outputs(self, values: Sequence[Any], steps: Sequence[Any], inputs: Sequence[Any]) -> list[np.ndarray]:
        return [_own(value.astype(step.dtype.np, copy=False)).reshape(step.shape)
                for value, step in zip(values, steps)]

    def quiet(self) -> ContextManager[Any]:
        return np.errstate(all="ignore")

    def constant(self, value: Any, dtype: DType) -> np.ndarray:
        return np.array(value, dtype=computed_as(dtype.np))

    def full(self, shape: Shape, value: Any, like: Any) -> np.ndarray:
        return np.full(shape, value, dtype=np.asarray(like).dtype)

    def rand(self, stream: tuple[int, int], shape: Shape, dtype: DType) -> np.ndarray:
        seed, offset = stream
        count = int(np.prod(shape))
        return philox_uniform(seed, offset, count).reshape(shape).astype(computed_as(dtype.np))

    def cast(self, x: Any, dtype: DType) -> Any:
        if dtype.is_narrow_float:  # rounded where cast (as OpenCL kernels do), then computed in float32
            return x.astype(dtype.np).astype(np.float32)
        return x.astype(computed_as(dtype.np))

    def where(self, condition: Any, a: Any, b: Any) -> Any:
        return np.where(condition, a, b)

    def shift_raw(self, a: Any, b: Any, left: bool) -> Any:
        return np.left_shift(a, b) if left else np.right_shift(a, b)

    def sum(self, x: Any, axes: tuple[int, ...], dtype: DType) -> Any:
        return np.sum(x, axis=axes, keepdims=True, dtype=computed_as(dtype.np))

    def collective(self, sources: Sequence[Any], dtype: DType, kind: str, parameter: Any) -> Any:
        """One flat bucket, combined as stored (halves rounded), as the OpenCL host step does."""
        return combine(np.concatenate([x.astype(dtype.np).reshape(-1) for x in sources]), kind, parameter)

    def amax(self, x: Any, axes: tuple[int, ...]) -> Any:
        return np.max(x, axis=axes, keepdims=True)

    def reshape(self, x: Any, shape: Shape) -> Any:
        return x.reshape(shape)

    def permute(self, x: Any, order: tuple[int, ...]) -> Any:
        return x.transpose(order)

    def expand(self, x: Any, shape: Shape) -> Any:
        return np.broadcast_to(x, shape)

    def flip(self, x: Any, axes: tuple[int, ...]) -> Any:
        return np.flip(x, axes)
