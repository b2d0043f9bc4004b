"""Collectives on tensors: all_reduce, broadcast (any dtype, any device) and barrier.

Each combines one bucket: its tensors flattened one after another into one buffer, one MPI call for all of them.
Outside `@zyx.jit` the result is computed when called (as PyTorch's collectives are), so every rank runs its
collectives in the order its code calls them; under `@zyx.jit` it is a step of the captured program.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..trace.capture import active_capture, check_not_capturing
from ..realize import realize
from ..runtime.collectives import process_group
from ..tensor import Tensor
from ..trace import node as n

__all__ = ["all_reduce", "barrier", "broadcast", "combined", "source_rank"]

_REDUCTIONS = ("sum", "mean", "max", "min")


def all_reduce(tensor: Tensor, op: str = "sum") -> Tensor:
    """`tensor` combined over every rank by `op`: "sum", "mean" (float dtypes), "max" or "min". A bool tensor sums
    (and maxes) by logical or, mins by logical and; float16 and bfloat16 are summed in float32 and rounded once."""
    if op not in _REDUCTIONS:
        raise ValueError(f"all_reduce: unknown op {op!r}; expected one of {', '.join(_REDUCTIONS)}")
    if op == "mean":
        if not tensor.dtype.is_float:
            raise TypeError(f"all_reduce: the mean of a {tensor.dtype.name} tensor of shape {tensor.shape} is not a "
                            f"{tensor.dtype.name}; cast it to a float dtype, or use op='sum'")
        return all_reduce(tensor, "sum") / process_group().size
    return combined([tensor], "all_reduce", op)[0]


def broadcast(tensor: Tensor, src: int = 0) -> Tensor:
    """Rank `src`'s value of `tensor`, on every rank (a new tensor; `t.assign(broadcast(t))` updates in place)."""
    return combined([tensor], "broadcast", source_rank(src, "broadcast"))[0]


def source_rank(src: Any, what: str) -> int:
    """`src` if it names a rank of the job, else ValueError naming `what`."""
    size = process_group().size
    if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < size:
        raise ValueError(f"{what}: src must be a rank from 0 to {size - 1}, got {src!r}")
    return src


def barrier() -> None:
    """Wait until every rank has called barrier (at most the collective timeout)."""
    check_not_capturing("zyx.distributed.barrier")
    process_group().run(lambda comm: comm.Barrier(), "barrier")


def combined(tensors: Sequence[Tensor], kind: str, parameter: Any) -> list[Tensor]:
    """The tensors combined as one bucket (see `trace.node.collective`), each cut back to its shape. Outside
    `@zyx.jit` they are computed here."""
    process_group()  # a clear error now, not when the value is computed
    if not tensors:
        return []
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"{kind}: expected zyx Tensors, got a {type(t).__name__}")
    flat = n.collective([t.node for t in tensors], kind, parameter)
    pieces, start = [], 0
    for t in tensors:
        pieces.append(Tensor(n.reshape(n.shrink(flat, [(start, start + t.node.numel)]), t.shape)))
        start += t.node.numel
    if active_capture() is None:
        realize(*pieces)
    return pieces
