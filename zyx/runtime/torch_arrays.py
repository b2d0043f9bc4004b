"""torch as the interpreter's array library: what zyx.Torch() computes each primitive op with.

Values are computed in the dtypes the numpy reference uses: float16 and bfloat16 in float32 (rounded when
stored), and uint32, which torch stores but barely computes with, in int64 wrapped to 32 bits after every op.
A sum of a product (matrix products and their gradients) goes to `torch.einsum` on the operands without their
broadcast axes, so the product is never stored and cuBLAS (or MKL, MPS...) does the work.
"""
from __future__ import annotations

import math
import string
from typing import Any, Callable, ContextManager, Sequence

import ml_dtypes
import numpy as np
import torch

from ..dtypes import ALL_DTYPES, DType
from ..trace.ops import Op
from ..trace.philox import FLOAT_MANTISSA_BITS, philox_bits_int64
from .arrays import ArrayLibrary, Shape

TORCH_DTYPES: dict[str, torch.dtype] = {dtype.name: getattr(torch, dtype.name) for dtype in ALL_DTYPES}
_COMPUTED = {"float16": torch.float32, "bfloat16": torch.float32, "uint32": torch.int64}
_WORD = 0xFFFFFFFF
_UNIFORM_SCALE = 2.0 ** -FLOAT_MANTISSA_BITS
_OUT_FUNCTIONS = {Op.DIV: torch.div, Op.WHERE: torch.where}  # the overwriting ops outside the two tables


def computed_dtype(dtype: DType) -> torch.dtype:
    """The torch dtype values of `dtype` are computed in."""
    return _COMPUTED.get(dtype.name) or TORCH_DTYPES[dtype.name]


def storage_key(tensor: torch.Tensor) -> int:
    """Which memory a tensor uses: its storage's address (views share it)."""
    return tensor.untyped_storage().data_ptr()


def from_numpy(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing `array`'s memory (bfloat16, which torch cannot import from numpy, through its bits)."""
    if array.dtype == np.dtype(ml_dtypes.bfloat16):
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A host tensor's values as a numpy array (bfloat16 as ml_dtypes' bfloat16)."""
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def _broadcast_free(x: torch.Tensor, letters: str) -> tuple[torch.Tensor, str]:
    """`x` without its broadcast axes (stride 0, size > 1), and the einsum letters of the axes it keeps."""
    kept = [axis for axis in range(x.dim()) if x.stride(axis) != 0 or x.shape[axis] <= 1]
    index = tuple(slice(None) if axis in kept else 0 for axis in range(x.dim()))
    return x[index], "".join(letters[axis] for axis in kept)


def _product(left: torch.Tensor, left_axes: str, right: torch.Tensor, right_axes: str, kept: str) -> torch.Tensor:
    """einsum(left_axes,right_axes->kept), as `torch.matmul` where every letter is kept or summed over both
    factors (what products and their gradients are): cuBLAS's plain gemm for 2-D products, where einsum would
    call its batched form; einsum itself for the rest (a sum over one factor's axis)."""
    shared = set(left_axes) & set(right_axes)
    batch = [c for c in kept if c in shared]
    summed = [c for c in left_axes if c in shared and c not in kept]
    free_left, free_right = [c for c in left_axes if c not in shared], [c for c in right_axes if c not in shared]
    sizes = {c: n for c, n in zip(right_axes, right.shape)} | {c: n for c, n in zip(left_axes, left.shape)}
    if not summed or any(c not in kept for c in free_left + free_right) or \
            any(left.shape[left_axes.index(c)] != right.shape[right_axes.index(c)] for c in summed):
        return torch.einsum(f"{left_axes},{right_axes}->{kept}", left, right)

    def arranged(x: torch.Tensor, axes: str, rows: list[str], columns: list[str]) -> torch.Tensor:
        """x with its batch axes first, then `rows` and `columns` each flattened into one axis."""
        x = x.permute([axes.index(c) for c in batch + rows + columns])
        return x.reshape((*x.shape[:len(batch)], math.prod(sizes[c] for c in rows),
                          math.prod(sizes[c] for c in columns)))

    result = torch.matmul(arranged(left, left_axes, free_left, summed), arranged(right, right_axes, summed, free_right))
    result = result.reshape((*result.shape[:len(batch)], *(sizes[c] for c in free_left + free_right)))
    order = batch + free_left + free_right
    return result.permute([order.index(c) for c in kept])


class TorchArrays(ArrayLibrary):
    """torch tensors on one device; buffers are contiguous tensors of the node's shape and dtype."""

    contracts = True
    unary: dict[Op, Callable[[Any], Any]] = {
        Op.NEG: torch.neg, Op.RECIP: torch.reciprocal, Op.SQRT: torch.sqrt, Op.EXP: torch.exp, Op.LOG: torch.log,
        Op.SIN: torch.sin, Op.COS: torch.cos, Op.TANH: torch.tanh, Op.SIGMOID: torch.sigmoid,
        Op.DETACH: lambda x: x, Op.FLOOR: torch.floor, Op.CEIL: torch.ceil, Op.RINT: torch.round,
        Op.NOT: torch.bitwise_not,
    }
    binary: dict[Op, Callable[[Any, Any], Any]] = {
        Op.ADD: torch.add, Op.MUL: torch.mul, Op.POW: torch.pow, Op.MAX: torch.maximum, Op.CMPLT: torch.lt,
        Op.CMPEQ: torch.eq, Op.AND: torch.bitwise_and, Op.OR: torch.bitwise_or, Op.XOR: torch.bitwise_xor,
    }

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._constants: dict[tuple[str, str], torch.Tensor] = {}

    # ---- representation -----------------------------------------------------------------------------------
    def load(self, buffer: torch.Tensor, dtype: DType) -> torch.Tensor:
        return buffer.to(computed_dtype(dtype))

    def conform(self, value: torch.Tensor, dtype: DType) -> torch.Tensor:
        computed = computed_dtype(dtype)
        if value.dtype != computed:
            value = value.to(computed)
        return value & _WORD if dtype.name == "uint32" else value

    def outputs(self, values: Sequence[Any], steps: Sequence[Any], inputs: Sequence[Any]) -> list[torch.Tensor]:
        claimed = {storage_key(buffer) for buffer in inputs}
        stored = []
        for value, step in zip(values, steps):
            buffer = value.to(TORCH_DTYPES[step.dtype.name]).reshape(step.shape).contiguous()
            key = storage_key(buffer)
            if key in claimed or buffer.untyped_storage().nbytes() > buffer.nbytes:
                buffer = buffer.clone()
                key = storage_key(buffer)
            claimed.add(key)
            stored.append(buffer)
        return stored

    def write(self, buffer: torch.Tensor, value: torch.Tensor) -> None:
        if not torch.compiler.is_compiling() and storage_key(value) == storage_key(buffer):
            value = value.clone()  # the new value is a view of the old one (w.assign(w.T)): copy_ cannot overlap
        buffer.copy_(value)

    def written(self, buffer: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return buffer if buffer.dtype == value.dtype and buffer.shape == value.shape else value

    def quiet(self) -> ContextManager[Any]:
        return torch.no_grad()

    # ---- leaves --------------------------------------------------------------------------------------------
    def constant(self, value: Any, dtype: DType) -> torch.Tensor:
        """A 0-d tensor, made once per value (a fill on the device, never a copy that would wait for it)."""
        if torch.compiler.is_compiling():
            return torch.full((), value, dtype=computed_dtype(dtype), device=self.device)
        key = (value.hex() if isinstance(value, float) else repr(value), dtype.name)
        if key not in self._constants:
            self._constants[key] = torch.full((), value, dtype=computed_dtype(dtype), device=self.device)
        return self._constants[key]

    def full(self, shape: Shape, value: Any, like: torch.Tensor) -> torch.Tensor:
        return torch.full(shape, value, dtype=like.dtype, device=like.device)

    def rand(self, stream: Sequence[Any], shape: Shape, dtype: DType) -> torch.Tensor:
        """Philox in int64 arithmetic; `stream` is its four 32-bit words (see `philox.philox_words`)."""
        count = 1
        for size in shape:
            count *= size
        index = torch.arange(count, dtype=torch.int64, device=self.device)
        bits = philox_bits_int64(index, stream)
        return (bits.to(torch.float32) * _UNIFORM_SCALE).reshape(shape).to(computed_dtype(dtype))

    # ---- elementwise ---------------------------------------------------------------------------------------
    def cast(self, x: torch.Tensor, dtype: DType) -> torch.Tensor:
        if dtype.name == "bfloat16":  # rounded where cast, as on the other devices, then computed in float32
            return x.to(torch.bfloat16).to(torch.float32)
        return x.to(computed_dtype(dtype))

    def where(self, condition: Any, a: Any, b: Any) -> torch.Tensor:
        return torch.where(condition, a, b)

    def shift_raw(self, a: torch.Tensor, b: torch.Tensor, left: bool) -> torch.Tensor:
        return torch.bitwise_left_shift(a, b) if left else torch.bitwise_right_shift(a, b)

    # ---- reductions ----------------------------------------------------------------------------------------
    def sum(self, x: torch.Tensor, axes: tuple[int, ...], dtype: DType) -> torch.Tensor:
        return torch.sum(x, dim=axes, keepdim=True, dtype=computed_dtype(dtype))

    def amax(self, x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
        return torch.amax(x, dim=axes, keepdim=True)

    def overwrite(self, op: Op, sources: Sequence[Any], into: int) -> torch.Tensor:
        function = self.unary.get(op) or self.binary.get(op) or _OUT_FUNCTIONS[op]  # float ops only
        return function(*sources, out=sources[into])

    def contract(self, a: torch.Tensor, b: torch.Tensor, axes: tuple[int, ...], shape: Shape) -> torch.Tensor:
        letters = string.ascii_letters[:a.dim()]
        (left, left_axes), (right, right_axes) = _broadcast_free(a, letters), _broadcast_free(b, letters)
        present = set(left_axes) | set(right_axes)
        kept = "".join(letter for axis, letter in enumerate(letters) if axis not in axes and letter in present)
        result = _product(left, left_axes, right, right_axes, kept)
        repeats = 1  # a summed axis broadcast in both operands adds the same product that many times
        for axis in axes:
            repeats *= 1 if letters[axis] in present else a.shape[axis]
        if repeats != 1:
            result = result * repeats
        unexpanded = [size if letters[axis] in kept else 1 for axis, size in enumerate(shape)]
        result = result.reshape(unexpanded)
        # an axis neither factor has: stored whole, as a later step may write over the result (memory_plan.py)
        return result if list(shape) == unexpanded else result.expand(shape).contiguous()

    # ---- movement ------------------------------------------------------------------------------------------
    def reshape(self, x: torch.Tensor, shape: Shape) -> torch.Tensor:
        return x.reshape(shape)

    def permute(self, x: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
        return x.permute(order)

    def expand(self, x: torch.Tensor, shape: Shape) -> torch.Tensor:
        return x.expand(shape)

    def flip(self, x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
        return torch.flip(x, axes)
