"""TensorBase: what the tensor mixins build on. A tensor is a handle on a trace node; the mixins (tensor_*.py)
make up the Tensor class (tensor.py) together, so they recognise tensors and make new ones through this base
instead of importing the class they are part of."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

import numpy as np

from .dtypes import float32, int64, promote, to_dtype
from .leaves import arange_leaf, data_leaf, rand_leaf
from .trace import node as n

if TYPE_CHECKING:
    from .tensor import Tensor

F = TypeVar("F", bound=Callable[..., Any])


def computed_in_float32(compute: Callable[..., "Tensor"], *operands: "Tensor") -> "Tensor":
    """`compute(*operands)`, where their common dtype is float16 or bfloat16 computed in float32 and rounded once to
    it, as PyTorch computes composite functions, reductions and norms of half tensors (in half ops every step
    rounds: a bfloat16 GELU differed from torch's in 39% of its elements, a log_softmax by up to 39 units in the
    last place, a cumsum by 750); other dtypes as they are."""
    dtype = functools.reduce(promote, (operand.dtype for operand in operands))
    if not dtype.is_narrow_float:
        return compute(*operands)
    return compute(*(operand.cast(float32) for operand in operands)).cast(dtype)


def rounded_once(fn: F) -> F:
    """`fn(x, ...)` (a method, or a function taking its tensor first) `computed_in_float32` where x is float16 or
    bfloat16; integers and other floats as they are."""
    @functools.wraps(fn)
    def in_float32(x: "Tensor", *args: Any, **kwargs: Any) -> Any:
        return computed_in_float32(lambda y: fn(y, *args, **kwargs), x)
    return in_float32  # type: ignore[return-value]


class TensorBase:
    """Every Tensor is one: `isinstance(x, TensorBase)` is the mixins' test for a tensor."""

    __slots__ = ()
    node: n.Node

    def _wrap(self, node: n.Node) -> "Tensor":
        """A tensor on `node`."""
        return type(self)(node)  # type: ignore[call-arg]

    def _full(self, shape: Sequence[int], value: Any, dtype: Any) -> "Tensor":
        """`value` in `shape` and `dtype` on this tensor's device (lazy: a constant takes no memory until used)."""
        return self._wrap(n.const(value, tuple(shape), to_dtype(dtype), self.node.device))

    def _data(self, data: Any, dtype: Any = None) -> "Tensor":
        """A copy of host data on this tensor's device: `zyx.tensor(data, device=self.device, dtype=dtype)`."""
        return self._wrap(data_leaf(data, self.node.device, dtype))

    def _arange(self, *args: int) -> "Tensor":
        """numpy's arange(stop) or arange(start, stop) in int64 on this tensor's device (`zyx.arange`'s); arange(stop)
        is the marked leaf that indexing's one-hot masks are recognised by (leaves.arange_leaf)."""
        if len(args) == 1:
            return self._wrap(arange_leaf(args[0], self.node.device))
        return self._data(np.arange(*args), int64)

    def _rand(self, shape: Sequence[int]) -> "Tensor":
        """float32 uniform in [0, 1) on this tensor's device: `zyx.rand(shape, device=self.device)`."""
        return self._wrap(rand_leaf(tuple(shape), self.node.device))

    @classmethod
    def _from_host(cls, array: np.ndarray, device: Any, dtype: Any) -> "Tensor":
        """A tensor holding a copy of `array` on `device`: what a pickled tensor is made from again."""
        return cls(data_leaf(array, device, dtype))  # type: ignore[return-value, call-arg]
