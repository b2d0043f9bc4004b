"""Data parallelism: every rank starts from the same parameters and applies the same averaged gradients.

Gradients are all-reduced in buckets, as PyTorch's DistributedDataParallel does: one flat buffer per device and
dtype of at most BUCKET_BYTES, filled from the last parameter backwards (the order backward computes them), so a
model of hundreds of tensors makes a few MPI calls per step, not hundreds.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ..trace.capture import check_not_capturing
from ..realize import realize
from ..runtime.collectives import process_group
from ..tensor import Tensor
from .ops import combined, source_rank

__all__ = ["BUCKET_BYTES", "average_gradients", "broadcast_parameters"]

BUCKET_BYTES = 25 << 20
"""Most bytes one all-reduce combines (PyTorch DDP's default bucket size)."""


def average_gradients(grads: Sequence[Optional[Tensor]], bucket_bytes: int = BUCKET_BYTES) -> list[Optional[Tensor]]:
    """Each gradient averaged over every rank (None stays None), in buckets of at most `bucket_bytes`: call it
    between `loss.backward(params)` and the optimizer's update, inside `@zyx.jit` or not."""
    size = process_group().size
    averaged = list(grads)
    for bucket in buckets(grads, bucket_bytes):
        for position, summed in zip(bucket, combined([grads[p] for p in bucket], "all_reduce", "sum")):
            averaged[position] = summed / size
    return averaged


def broadcast_parameters(params: Sequence[Tensor], src: int = 0) -> None:
    """Give every rank's parameters (or any tensors: buffers, optimizer state) rank `src`'s values, in place; call
    it once after building the model, before the first step."""
    check_not_capturing("zyx.distributed.broadcast_parameters")
    src = source_rank(src, "broadcast_parameters")
    params = list(params)
    for bucket in buckets(params, BUCKET_BYTES):
        for position, value in zip(bucket, combined([params[p] for p in bucket], "broadcast", src)):
            params[position].assign(value)
    realize(*params)


def buckets(tensors: Sequence[Optional[Tensor]], limit: int) -> list[list[int]]:
    """Positions of the tensors (None skipped) grouped by device and dtype, from the last backwards, each group
    cut before it would pass `limit` bytes (a tensor larger than `limit` is a bucket of its own)."""
    if limit <= 0:
        raise ValueError(f"the bucket size must be a positive number of bytes, got {limit}")
    done: list[list[int]] = []
    filling: dict[tuple[int, str], tuple[list[int], int]] = {}  # (device, dtype) -> (positions, bytes)
    for position in reversed(range(len(tensors))):
        t = tensors[position]
        if t is None:
            continue
        key, nbytes = (id(t.device), t.dtype.name), t.node.numel * t.dtype.itemsize
        positions, held = filling.get(key, ([], 0))
        if positions and held + nbytes > limit:
            done.append(positions)
            positions, held = [], 0
        filling[key] = (positions + [position], held + nbytes)
    return done + [positions for positions, _ in filling.values()]
