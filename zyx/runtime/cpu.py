"""The CPU backend: tensors in RAM as numpy arrays, traces evaluated op by op.

It is the reference every other backend is tested against, so it favours plain numpy over speed.
Intermediates are dropped right after their last consumer.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from ..trace.cost import buffer_bytes, total_flops
from ..trace.hashing import Walk
from ..trace.node import Node, short_name
from ..trace.ops import ELEMENTWISE_OPS, Op, REDUCE_OPS
from ..trace.philox import philox_uniform
from . import profiling
from .limits import host_limits

MATERIALIZED_OPS = ELEMENTWISE_OPS | REDUCE_OPS | {Op.RAND, Op.PAD}  # numpy allocates these; other views do not

UNARY: dict[Op, Callable[[np.ndarray], np.ndarray]] = {
    Op.NEG: np.negative, Op.RECIP: np.reciprocal, Op.SQRT: np.sqrt, Op.EXP: np.exp, Op.LOG: np.log,
    Op.SIN: np.sin, Op.COS: np.cos, Op.TANH: np.tanh, Op.SIGMOID: lambda x: 1 / (1 + np.exp(-x)),
    Op.DETACH: lambda x: x, Op.FLOOR: np.floor, Op.CEIL: np.ceil, Op.RINT: np.rint,
    Op.NOT: np.invert,
}


def _shift(a: np.ndarray, b: np.ndarray, shift: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """`shift` by b, where a count outside [0, bits) shifts every bit out (0, or -1 for a negative a >> b)."""
    bits = 8 * a.dtype.itemsize
    inside = (b >= 0) & (b < bits)
    shifted = shift(a, np.where(inside, b, 0))
    if shift is np.left_shift:
        return np.where(inside, shifted, 0)
    return np.where(inside, shifted, np.where(a < 0, -1, 0))


BINARY: dict[Op, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    Op.ADD: np.add, Op.MUL: np.multiply, Op.POW: np.power, Op.MAX: np.maximum, Op.CMPLT: np.less,
    Op.CMPEQ: np.equal, Op.AND: np.bitwise_and, Op.OR: np.bitwise_or, Op.XOR: np.bitwise_xor,
    Op.SHL: lambda a, b: _shift(a, b, np.left_shift), Op.SHR: lambda a, b: _shift(a, b, np.right_shift),
}


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f":
        return np.divide(a, b)
    return np.floor_divide(a, np.where(b == 0, 1, b))  # integer division by zero is defined as a // 1


def _movement(node: Node, x: np.ndarray) -> np.ndarray:
    op, arg = node.op, node.arg
    if op is Op.RESHAPE:
        return x.reshape(arg)
    if op is Op.PERMUTE:
        return x.transpose(arg)
    if op is Op.EXPAND:
        return np.broadcast_to(x, arg)
    if op is Op.PAD:
        padding, value = arg
        return np.pad(x, padding, constant_values=value)
    if op is Op.SHRINK:
        return x[tuple(slice(s, e) for s, e in arg)]
    return np.flip(x, arg)


def evaluate(node: Node, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """One node's value from its inputs' values; half precision (float16, bfloat16) is computed in float32 (as
    OpenCL kernels do, and PyTorch inside a product or a sum) and rounded when realized."""
    op, dtype = node.op, _computed_as(node.dtype.np)
    inputs = [x.astype(_computed_as(x.dtype), copy=False) for x in inputs]
    if op is Op.CONST:
        return np.array(node.arg, dtype=dtype)
    if op is Op.RAND:
        seed, offset = node.arg
        return philox_uniform(seed, offset, node.numel).reshape(node.shape).astype(dtype)
    if op in UNARY:
        return UNARY[op](inputs[0]).astype(dtype, copy=False)
    if op is Op.CAST:
        if node.dtype.name == "bfloat16":  # rounded where cast (as OpenCL kernels do), then computed in float32
            return inputs[0].astype(node.dtype.np).astype(dtype)
        return inputs[0].astype(dtype)
    if op is Op.DIV:
        return _divide(*inputs).astype(dtype, copy=False)
    if op in BINARY:
        return BINARY[op](*inputs).astype(dtype, copy=False)
    if op is Op.WHERE:
        return np.where(*inputs).astype(dtype, copy=False)
    if op is Op.SUM:
        return np.sum(inputs[0], axis=node.arg, keepdims=True, dtype=dtype)
    if op is Op.RMAX:
        x = inputs[0]
        if x.size == 0:  # the max of nothing is the identity of max
            return np.full(node.shape, _lowest(dtype), dtype=dtype)
        return np.max(x, axis=node.arg, keepdims=True)
    return _movement(node, inputs[0])


def _computed_as(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if dtype.kind in "fV" and dtype.itemsize == 2 else dtype  # float16, bfloat16


def _lowest(dtype: np.dtype) -> Any:
    if dtype.kind == "f":
        return -np.inf
    if dtype.kind == "b":
        return False
    return np.iinfo(dtype).min


def _own(value: np.ndarray) -> np.ndarray:
    """A contiguous array that does not keep a bigger one alive (a realized slice must not pin its source)."""
    array = np.asarray(value, order="C")
    if array.base is not None and np.asarray(array.base).nbytes > array.nbytes:
        array = array.copy()
    return array


def _targets_name(targets: Sequence[Node]) -> str:
    more = f" and {len(targets) - 1} more" if len(targets) > 1 else ""
    return short_name(targets[0]) + more


class CPUBackend:
    """Holds tensors as numpy arrays; realizes traces by interpreting them."""

    name = "cpu"

    def __init__(self) -> None:
        self.limits = host_limits()

    def synchronize(self) -> None:
        """Nothing to wait for: numpy has finished by the time `realize` returns."""

    def upload(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array, order="C")  # keeps 0-d arrays 0-d, unlike ascontiguousarray

    def download(self, buffer: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return buffer.reshape(shape).copy()

    def realize(self, walk: Walk) -> list[np.ndarray]:
        """Values of the walk's roots (contiguous arrays), freeing each intermediate after its last use."""
        targets, order = walk.roots, walk.order
        keep = {id(t) for t in targets}
        self.limits.check_nodes(node for node in order if node.op in MATERIALIZED_OPS or id(node) in keep)
        if not profiling.timing_wanted():
            return self._evaluate(targets, order)
        start = time.perf_counter_ns()
        values = self._evaluate(targets, order)
        leaves = [node for node in order if node.op is Op.BUFFER]
        profiling.record(profiling.KernelRecord(
            self, "cpu", "cpu_evaluate", "cpu", _targets_name(targets), (), None,
            sum(buffer_bytes(node) for node in [*leaves, *targets]), total_flops(order), start,
            time.perf_counter_ns()))
        return values

    def _evaluate(self, targets: Sequence[Node], order: list[Node]) -> list[np.ndarray]:
        keep = {id(t) for t in targets}
        remaining_uses: dict[int, int] = {}
        for node in order:
            for src in node.src:
                remaining_uses[id(src)] = remaining_uses.get(id(src), 0) + 1
        values: dict[int, np.ndarray] = {}
        with np.errstate(all="ignore"):
            for node in order:
                if node.op is Op.BUFFER:
                    if node.buffer is None:
                        raise RuntimeError("a gradient needs the value of a tensor that was released; keep a "
                                           "reference to it until its gradients are realized")
                    values[id(node)] = node.buffer
                    continue
                values[id(node)] = evaluate(node, [values[id(s)] for s in node.src])
                for src in node.src:
                    remaining_uses[id(src)] -= 1
                    if remaining_uses[id(src)] == 0 and id(src) not in keep:
                        del values[id(src)]
        return [_own(values[id(t)].astype(t.dtype.np, copy=False)).reshape(t.shape) for t in targets]
