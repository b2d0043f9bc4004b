"""Which way a product operand's stored elements run, so that the items staging it read neighbouring addresses.

A weight gradient xᵀ·dY reads both operands along their rows (the reduced axis is the slow one: "MN-major"); a
layer's forward x·Wᵀ reads W along k. Staged with neighbouring items at neighbouring k, an MN-major operand has
the 32 items of a warp read 32 rows of memory, a float each: a quarter of every 32-byte sector fetched is used.
The staging asks this module which axis to spread neighbouring items along instead.
"""
from __future__ import annotations

from ..trace.node import Node
from ..trace.ops import ELEMENTWISE_OPS, MOVEMENT_OPS, Op
from .lower import Index, linear, source_index
from .symbolic import Expr


def contiguous_reads(operand: Node, axis: int, materialized: dict[int, Node]) -> int:
    """How many of the memory reads computing `operand` (buffers and stored nodes under its elementwise ops and
    views) find its next element along `axis` at the next address."""
    probe = [Expr.var(f"i{a}", size - (a == axis)) for a, size in enumerate(operand.shape)]
    here = _reads(operand, tuple(probe), materialized)
    probe[axis] = probe[axis] + 1
    there = _reads(operand, tuple(probe), materialized)
    return sum(1 for key, flat in here.items() if key in there and there[key] - flat == Expr(1))


def _reads(node: Node, index: Index, materialized: dict[int, Node]) -> dict[int, Expr]:
    """The flat index each memory read under `node` (by the id of the node read) takes at `index`; each node is
    followed once (a value read through two views counts the first)."""
    found: dict[int, Expr] = {}
    stack, seen = [(node, index)], set()
    while stack:
        node, index = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op is Op.BUFFER or id(node) in materialized:
            found[id(node)] = linear(index, node.shape)
        elif node.op in ELEMENTWISE_OPS:
            stack.extend((source, index) for source in node.src)
        elif node.op in MOVEMENT_OPS:
            inner, _ = source_index(node, index)
            if inner is not None:
                stack.append((node.src[0], inner))
    return found


def runs_along(operand: Node, axes: tuple[int, int], materialized: dict[int, Node]) -> int:
    """Which of `axes` (the first where neither has more) more of `operand`'s reads run along: the axis whose
    neighbouring elements neighbouring items should stage."""
    first, second = (contiguous_reads(operand, axis, materialized) for axis in axes)
    return axes[1] if second > first else axes[0]
