"""Which way a product operand's stored elements run, so that the items staging it read neighbouring addresses,
and whether such an operand, computed under the product, costs less stored first.

A weight gradient xᵀ·dY reads both operands along their rows (the reduced axis is the slow one: "MN-major"); a
layer's forward x·Wᵀ reads W along k. Staged with neighbouring items at neighbouring k, an MN-major operand has
the 32 items of a warp read 32 rows of memory, a float each: a quarter of every 32-byte sector fetched is used.
The staging asks this module which axis to spread neighbouring items along instead. Reads count as neighbouring
within aligned runs of RUN elements (what neighbouring items take together): a head layout's channels,
(c % 64) + (c / 64)·65536, run along 64 elements at a time.
"""
from __future__ import annotations

from typing import Optional

from ..trace.node import Node
from ..trace.ops import ELEMENTWISE_OPS, MOVEMENT_OPS, Op
from .kernel_ir import substitute
from .lower import Index, linear, source_index
from .symbolic import Expr

RUN = 16       # neighbouring items staging an operand: reads next to each other within aligned runs of this many
STRIDED = 8    # what a read not next to its neighbour's costs, in contiguous reads: a 32-byte sector for a float


def contiguous_reads(operand: Node, axis: int, materialized: dict[int, Node]) -> int:
    """How many of the memory reads computing `operand` (buffers and stored nodes under its elementwise ops and
    views) find its next element along `axis` at the next address."""
    return sum(1 for _, stride in _read_strides(operand, axis, materialized) if stride == Expr(1))


def runs_along(operand: Node, axes: tuple[int, int], materialized: dict[int, Node]) -> int:
    """Which of `axes` (the first where neither has more) more of `operand`'s reads run along: the axis whose
    neighbouring elements neighbouring items should stage."""
    first, second = (contiguous_reads(operand, axis, materialized) for axis in axes)
    return axes[1] if second > first else axes[0]


def read_cost(operand: Node, axis: int, materialized: dict[int, Node]) -> float:
    """What computing one element of `operand` reads from memory, staged along `axis`, in contiguous reads: each
    read under it costs 1 where neighbours read neighbouring addresses, nothing where they read the same one,
    STRIDED otherwise, weighed by the share of the operand's elements it serves (its node's elements over the
    operand's, at most 1: a part of a concatenation serves its share, a bias or a row's statistic next to none)."""
    cost = 0.0
    for node, stride in _read_strides(operand, axis, materialized):
        each = 0 if stride == Expr(0) else 1 if stride == Expr(1) else STRIDED
        cost += each * min(1.0, node.numel / max(operand.numel, 1))
    return cost


def cheaper_stored(operand: Node, value: Node, axes: tuple[int, int], passes: int,
                   materialized: dict[int, Node]) -> bool:
    """Whether a product whose staging computes `operand` (the operand before its broadcast, in the product's
    axes) `passes` times (once per block of outputs along the axis it is broadcast along) moves less memory with
    `value` (the computed value under it) stored first: computed once (read along its last axis), written, and
    read `passes` times, against computing it each pass; both staged along the better of `axes` (k and the
    operand's row axis). A concatenation of attention's dQ, dKᵀ and dV read as (tokens, 3d) is strided along
    either axis in two of its parts; a bias or a layer norm's x̂ reads what a stored value would."""
    if not value.shape:
        return False
    fused = min(read_cost(operand, axis, materialized) for axis in axes)
    stored = min(read_cost(operand, axis, {**materialized, id(value): value}) for axis in axes)
    once = read_cost(value, len(value.shape) - 1, materialized)
    return passes * fused > once + 1 + passes * stored


def _read_strides(operand: Node, axis: int, materialized: dict[int, Node]) -> list[tuple[Node, Optional[Expr]]]:
    """Each memory read under `operand` with how far its address moves between neighbouring elements along
    `axis` (within aligned runs of RUN elements, where RUN divides the axis): an expression, constant where the
    views make it one."""
    here, there = _probe(operand.shape, axis)
    ahead = _reads(operand, there, materialized)
    return [(node, ahead[key][1] - flat if key in ahead else None)
            for key, (node, flat) in _reads(operand, here, materialized).items()]


def _probe(shape: tuple[int, ...], axis: int) -> tuple[Index, Index]:
    """An index into `shape` and the one next to it along `axis`."""
    probe = [Expr.var(f"i{a}", size) for a, size in enumerate(shape)]
    size = shape[axis]
    if size % RUN == 0 and size > RUN:
        here = Expr.var(f"i{axis}", size // RUN) * RUN + Expr.var("lane", RUN - 1)
    else:
        here = Expr.var(f"i{axis}", size - 1)
    probe[axis] = here
    ahead = list(probe)
    ahead[axis] = here + 1
    return tuple(probe), tuple(ahead)


def _reads(node: Node, index: Index, materialized: dict[int, Node]) -> dict[int, tuple[Node, Expr]]:
    """The node and flat index of each memory read under `node` (by the id of the node read) at `index`; each
    node is followed once (a value read through two views counts the first)."""
    found: dict[int, tuple[Node, Expr]] = {}
    stack, seen = [(node, index)], set()
    while stack:
        node, index = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op is Op.BUFFER or id(node) in materialized:
            found[id(node)] = (node, linear(index, node.shape))
        elif node.op in ELEMENTWISE_OPS:
            stack.extend((source, index) for source in node.src)
        elif node.op in MOVEMENT_OPS:
            inner, _ = source_index(node, _rebased(node, index) or index if node.op is Op.PAD else index)
            if inner is not None:
                stack.append((node.src[0], inner))
    return found


def _rebased(pad: Node, index: Index) -> Optional[Index]:
    """`index` with the probe variable that `pad` shifts by whole steps (a concatenation's parts at multiples of
    RUN) restarted at the part's start, so that the index lies inside the part (source_index would make it an
    opaque value there, whose runs the simplifier no longer sees); None where a padded axis's index is no such
    step."""
    values = {}
    for expr, (before, _), size in zip(index, pad.arg[0], pad.src[0].shape):
        shifted = expr - before
        if shifted.lo >= 0 and shifted.hi < size:
            continue
        step = next(((atom, c) for atom, c in shifted.terms.items()
                     if atom.kind == "var" and c > 1 and before % c == 0 and size % c == 0), None)
        if step is None:
            return None
        atom, c = step
        within = shifted + before - Expr(0, {atom: c})
        if within.lo < 0 or within.hi >= c:
            return None
        values[atom.name] = Expr.var(f"{atom.name}@{before}", size // c) + before // c
    return tuple(substitute(expr, values) for expr in index)
