"""The steps of an interpreted program, and what they do to memory: which allocate, which share a source's.

A step is one op on numbered slots (`interpret.py` builds and runs them). Its value may be a view of another
slot's memory, or be written over a source's (`into`); `roots` follows such chains, so a program's memory plan
(`memory_plan.py`) can tell when a storage is really dropped.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from ..dtypes import DType
from ..trace.ops import ELEMENTWISE_OPS, MOVEMENT_OPS, Op, REDUCE_OPS
from .arrays import Shape


class Fused(enum.Enum):
    """Steps that stand for more than one node."""

    SUB = enum.auto()  # the first source minus the second (an ADD of a NEG)
    CONTRACT = enum.auto()  # arg (axes, size): SUM over `axes` of the MUL of the step's two sources broadcast to
    # `size`, the product never stored
    LE = enum.auto()  # the first source <= the second (see fusions.py for these six)
    NE = enum.auto()  # the first source != the second
    RELU = enum.auto()  # max(x, 0), nan kept
    RELU_GRAD = enum.auto()  # (g, r): g where the relu output r is above 0, else 0
    MULADD = enum.auto()  # (a, b, c): a + b * c
    MULSUB = enum.auto()  # (a, b, c): a - b * c
    LERP = enum.auto()  # (a, b, w): a + (b - a) * w
    LOG_SOFTMAX = enum.auto()  # arg axis: log_softmax of the source along the axis (softmax_fusion.py)
    LOG_SOFTMAX_GRAD = enum.auto()  # arg axis; (g, y): the gradient g - exp(y) * sum(g) of y = log_softmax(x)
    LOGSUMEXP = enum.auto()  # arg axis: log(sum(exp(x))) along the axis, kept (of size 1)
    LOGSUMEXP_GRAD = enum.auto()  # arg axis; (x, h): softmax(x) * h, the gradient of logsumexp(x) for the
    # upstream h (of size 1 along the axis)
    CROSS_ENTROPY = enum.auto()  # arg axis; (x, idx, w): (logsumexp(x) - x[idx]) * w along the axis, the axis
    # dropped (idx int64 of size 1 along it; softmax_fusion.py)
    CROSS_ENTROPY_GRAD = enum.auto()  # arg axis; (x, h, idx, c): softmax(x) * h + onehot(idx) * c, its gradient
    CAT = enum.auto()  # arg axis: the sources joined along it, in order (cat's zero pads summed: fusions.py)


FUSED_ELEMENTWISE = {Fused.SUB, Fused.LE, Fused.NE, Fused.RELU, Fused.RELU_GRAD, Fused.MULADD, Fused.MULSUB, Fused.LERP}
ELEMENTWISE = ELEMENTWISE_OPS | FUSED_ELEMENTWISE
ROW_OPS = {Fused.LOG_SOFTMAX, Fused.LOG_SOFTMAX_GRAD, Fused.LOGSUMEXP, Fused.LOGSUMEXP_GRAD, Fused.CROSS_ENTROPY,
           Fused.CROSS_ENTROPY_GRAD}  # each value from its row along the step's axis
# views allocate nothing
ALLOCATING = ELEMENTWISE | REDUCE_OPS | ROW_OPS | {Op.RAND, Op.PAD, Op.COLLECTIVE, Fused.CONTRACT, Fused.CAT}
SHARING = {Op.BUFFER, Op.DETACH, Op.CAST} | MOVEMENT_OPS - {Op.PAD}  # may return (a view of) their source
VIEW_OPS = {Op.PERMUTE, Op.EXPAND, Op.SHRINK, Op.DETACH}  # return a view of their source in every library


@dataclass(frozen=True)
class Step:
    """One launch: `op` on the values in `sources` (slots), filling the slot numbered as the step."""

    op: Any  # an Op or a Fused
    arg: Any  # the node's arg; BUFFER: the input's position; RAND: the random stream's position
    shape: Shape
    dtype: DType
    sources: tuple[int, ...]
    compact: Optional[tuple[tuple[int, int], ...]] = None  # elementwise ops: bounds to compute within, then expand
    into: Optional[int] = None  # elementwise ops: which source (its position in `sources`) the result overwrites
    computes: bool = field(init=False)  # whether the library computes new values (not a leaf, not a view)
    shares: Optional[int] = field(init=False)  # the slot whose memory the value always uses (a view, an overwrite)

    def __post_init__(self) -> None:
        object.__setattr__(self, "computes", self.op in ALLOCATING and self.op is not Op.RAND)
        shared = self.sources[self.into] if self.into is not None else \
            self.sources[0] if self.op in VIEW_OPS and self.compact is None else None
        object.__setattr__(self, "shares", shared)


def step_bytes(step: Step) -> int:
    """Bytes of the array a step allocates (none for a view or a leaf)."""
    count = 1
    for size in step.shape:
        count *= size
    return count * step.dtype.itemsize if step.op in ALLOCATING and step.into is None else 0


def roots(steps: Sequence[Step]) -> list[int]:
    """For each slot, the slot whose memory it may share (a view's source, through chains of views)."""
    root: list[int] = []
    for k, step in enumerate(steps):
        if step.into is not None:
            root.append(root[step.sources[step.into]])
        else:
            root.append(root[step.sources[0]] if step.op in SHARING and step.sources else k)
    return root


