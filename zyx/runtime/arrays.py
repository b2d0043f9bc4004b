"""What the trace interpreter needs of an array library, and the op semantics every library shares.

`ArrayLibrary` has one method (or table entry) per primitive op; numpy (`numpy_arrays.py`, zyx.CPU()) and torch
(`torch_arrays.py`, zyx.Torch()) fill them in. Where Zyx defines a result that the libraries do not agree on
(shifts past the width, integer division by zero, the max of nothing), the rule is written once here in terms
of the library's own primitives, so the two devices cannot drift apart.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import Any, Callable, ContextManager, Mapping, Optional, Sequence

from ..dtypes import DType, int_range
from ..trace.ops import Op

Shape = tuple[int, ...]


def lowest(dtype: DType) -> Any:
    """The identity of max for `dtype`: what the max over no elements is."""
    if dtype.is_float:
        return float("-inf")
    if dtype.is_bool:
        return False
    return int_range(dtype)[0]


class ArrayLibrary(ABC):
    """An array library as the interpreter (`interpret.py`) sees it. Values between steps are the library's
    arrays in the dtype each zyx dtype is computed in (`conform`); buffers are what a device stores."""

    unary: Mapping[Op, Callable[[Any], Any]]   # every unary op but CAST
    binary: Mapping[Op, Callable[[Any, Any], Any]]  # ADD, MUL, POW, MAX, CMPLT, CMPEQ, AND, OR, XOR
    contracts: bool = False  # whether `contract` computes a sum of products without the product

    # ---- representation -----------------------------------------------------------------------------------
    @abstractmethod
    def load(self, buffer: Any, dtype: DType) -> Any:
        """A stored buffer as a value of `dtype` (in the dtype it is computed in)."""

    @abstractmethod
    def conform(self, value: Any, dtype: DType) -> Any:
        """An op's result in the form values of `dtype` are kept in (half precision as float32, for one)."""

    @abstractmethod
    def outputs(self, values: Sequence[Any], steps: Sequence[Any], inputs: Sequence[Any]) -> list[Any]:
        """Buffers holding `values` (of `steps`' shapes and dtypes), each owning its memory alone: none shares
        an input's or another output's, nor keeps a larger array alive."""

    def write(self, buffer: Any, value: Any, fresh: bool = False) -> None:
        """Overwrite a stored buffer with a value of its shape (a jitted step's in-place update); `fresh`: the
        value's memory is known to be no input's (a view of the buffer itself needs copying first)."""
        raise NotImplementedError(f"{type(self).__name__} writes no buffer in place")

    def written(self, buffer: Any, value: Any) -> Any:
        """What later steps read after `value` was written into `buffer`: the buffer where it holds the value in
        the computed form (so the value's own memory can go), else the value."""
        return value

    def loads_as_stored(self, dtype: DType) -> bool:
        """Whether `load` returns a buffer of `dtype` itself (it is stored as it is computed; `written` then
        returns the buffer)."""
        return False

    def step_function(self, step: Any, sources: Sequence[Any]) -> Optional[Callable[..., Any]]:
        """A callable computing a computing or view step (a `steps.Step`) from its sources' values faster than the
        generic one (`program_code.step_function`), given the source steps; None where there is none."""
        return None

    def out_function(self, step: Any, sources: Sequence[Any]) -> Optional[Callable[..., Any]]:
        """A callable computing an elementwise step from its sources' values into a buffer of its shape and dtype
        given as `out=` (the step's result as stored), given the source steps; None where there is none."""
        return None

    def group_function(self, step: Any, sources: Sequence[Any], kinds: Sequence[Any],
                       in_place: bool) -> Optional[Callable[..., Any]]:
        """A callable computing a group of steps like `step` (of these source steps) on different buffers in one
        call (`foreach_groups.py`), given its operands' kinds (`foreach_groups.operand_kinds`: LIST, TENSOR or a
        constant's value) and whether it writes over its first operand list; None where there is none (each member
        runs alone)."""
        return None

    def quiet(self) -> ContextManager[Any]:
        """The context a program runs in (numpy: no floating-point warnings; torch: no autograd, float32 products
        at zyx's precision)."""
        return contextlib.nullcontext()

    # ---- leaves --------------------------------------------------------------------------------------------
    @abstractmethod
    def constant(self, value: Any, dtype: DType) -> Any:
        """A 0-d value."""

    @abstractmethod
    def full(self, shape: Shape, value: Any, like: Any) -> Any:
        """An array of `shape` filled with `value`, of `like`'s dtype (and device)."""

    @abstractmethod
    def rand(self, stream: Any, shape: Shape, dtype: DType) -> Any:
        """Philox uniforms in [0, 1) for one random stream (as the backend bound it: seed and offset)."""

    # ---- elementwise ---------------------------------------------------------------------------------------
    @abstractmethod
    def cast(self, x: Any, dtype: DType) -> Any:
        """`x` converted to `dtype`, rounded where the devices round (half precision at the cast)."""

    @abstractmethod
    def where(self, condition: Any, a: Any, b: Any) -> Any:
        """a where condition holds, else b (either may be a Python scalar)."""

    def divide(self, a: Any, b: Any, dtype: DType) -> Any:
        """True division of floats; floor division of integers, where dividing by zero divides by one."""
        if dtype.is_float:
            return a / b
        return a // self.where(b == 0, 1, b)

    @abstractmethod
    def shift_raw(self, a: Any, b: Any, left: bool) -> Any:
        """The library's own shift, for counts in [0, bits)."""

    def shift(self, a: Any, b: Any, dtype: DType, left: bool) -> Any:
        """a << b or a >> b, where a count outside [0, bits of `dtype`) shifts every bit out: 0, or -1 for a
        negative a >> b (as PyTorch)."""
        inside = (b >= 0) & (b < 8 * dtype.itemsize)
        shifted = self.shift_raw(a, self.where(inside, b, 0), left)
        outside = 0 if left else self.where(a < 0, -1, 0)
        return self.where(inside, shifted, outside)

    # ---- reductions ----------------------------------------------------------------------------------------
    @abstractmethod
    def sum(self, x: Any, axes: tuple[int, ...], dtype: DType) -> Any:
        """The sum over `axes`, which stay with size 1."""

    @abstractmethod
    def amax(self, x: Any, axes: tuple[int, ...]) -> Any:
        """The max over `axes` of a non-empty `x`, which stay with size 1."""

    def rmax(self, x: Any, axes: tuple[int, ...], shape: Shape, dtype: DType) -> Any:
        """The max over `axes`; over no elements it is the identity of max (-inf, the lowest integer, False)."""
        if any(x.shape[axis] == 0 for axis in axes):
            return self.full(shape, lowest(dtype), x)
        return self.amax(x, axes)

    def overwrite(self, op: Op, sources: Sequence[Any], into: int) -> Any:
        """A unary or binary op, or WHERE, computed into `sources[into]` (see `memory_plan.overwrites`)."""
        raise NotImplementedError(f"{type(self).__name__} computes nothing in place")

    def collective(self, sources: Sequence[Any], dtype: DType, kind: str, parameter: Any) -> Any:
        """The sources flattened into one bucket and combined across the processes of zyx.distributed."""
        raise NotImplementedError(f"{type(self).__name__} runs no collectives")

    def contract(self, a: Any, b: Any, axes: tuple[int, ...], size: Shape, dims: tuple[tuple[int, ...], ...],
                 shape: Shape, addend: Any = None) -> Any:
        """sum(a * b) over `axes` (kept with size 1) of a and b broadcast to `size`, reshaped to `shape`, plus
        `addend` where given, without storing a * b; `dims`: which axes of `size` each axis of a and of b is;
        only when `contracts`."""
        raise NotImplementedError(f"{type(self).__name__} does not contract products")

    # ---- movement ------------------------------------------------------------------------------------------
    @abstractmethod
    def reshape(self, x: Any, shape: Shape) -> Any: ...

    @abstractmethod
    def permute(self, x: Any, order: tuple[int, ...]) -> Any: ...

    @abstractmethod
    def expand(self, x: Any, shape: Shape) -> Any: ...

    @abstractmethod
    def flip(self, x: Any, axes: tuple[int, ...]) -> Any: ...

    def shrink(self, x: Any, bounds: tuple[tuple[int, int], ...]) -> Any:
        """The view of `x` inside `bounds`, one (start, end) per axis."""
        return x[tuple(slice(start, end) for start, end in bounds)]

    def pad(self, x: Any, padding: tuple[tuple[int, int], ...], value: Any, shape: Shape) -> Any:
        """`x` inside a new array of `shape` filled with `value`, (before, after) elements per axis."""
        out = self.full(shape, value, x)
        out[tuple(slice(before, size - after) for (before, after), size in zip(padding, shape))] = x
        return out
