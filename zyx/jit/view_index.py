"""Index arithmetic through views: where a view reads its source, flat offsets of contiguous shapes, and what a
value reads from memory. Shared by lowering and by the patterns it matches (indirect.py), so neither imports the
other."""
from __future__ import annotations

import functools
from typing import Optional

from ..trace.node import Node
from ..trace.ops import ELEMENTWISE_OPS, MOVEMENT_OPS, Op
from .kernel_ir import Cond
from .symbolic import Expr

Index = tuple[Expr, ...]


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, running = [], 1
    for size in reversed(shape):
        strides.append(running if size != 1 else 0)
        running *= size
    return tuple(reversed(strides))


@functools.lru_cache(maxsize=1 << 16)  # kernels map the same indices through the same views
def linear(index: Index, shape: tuple[int, ...]) -> Expr:
    total = Expr(0)
    for expr, stride in zip(index, contiguous_strides(shape)):
        if stride:
            total = total + expr * stride
    return total


@functools.lru_cache(maxsize=1 << 16)
def unravel(flat: Expr, shape: tuple[int, ...]) -> Index:
    """`flat` as an index of `shape`; of a shape without elements, zeros (nothing is read there, and its strides
    would divide by 0)."""
    if 0 in shape:
        return (Expr(0),) * len(shape)
    return tuple(Expr(0) if size == 1 else (flat // stride) % size
                 for size, stride in zip(shape, contiguous_strides(shape)))


def source_index(node: Node, index: Index) -> tuple[Optional[Index], Optional[Cond]]:
    """Where a view reads its source for the element at `index`, and the condition under which that read is
    valid (a PAD's inside), None when always valid; (None, None) when `index` lies in the padding."""
    op, arg, source = node.op, node.arg, node.src[0]
    if op is Op.RESHAPE:
        return unravel(linear(index, node.shape), source.shape), None
    if op is Op.PERMUTE:
        inner: list[Expr] = [Expr(0)] * len(arg)
        for position, axis in enumerate(arg):
            inner[axis] = index[position]
        return tuple(inner), None
    if op is Op.EXPAND:
        return tuple(Expr(0) if s == 1 else e for s, e in zip(source.shape, index)), None
    if op is Op.SHRINK:
        return tuple(e + start for e, (start, _) in zip(index, arg)), None
    if op is Op.FLIP:
        return tuple((Expr(0) - e) + (s - 1) if axis in arg else e
                     for axis, (e, s) in enumerate(zip(index, source.shape))), None
    conditions: list = []
    padded = []
    for e, (before, _), size in zip(index, arg[0], source.shape):
        shifted = e - before
        if shifted.hi < 0 or shifted.lo >= size:
            return None, None
        if shifted.lo >= 0 and shifted.hi < size:
            padded.append(shifted)
            continue
        if shifted.lo < 0:
            conditions.append((shifted, "ge", 0))
        if shifted.hi >= size:
            conditions.append((shifted, "lt", size))
        # inside the valid region the index is in [0, size): an opaque variable with that range
        padded.append(Expr.clamped(shifted, 0, size - 1))
    return tuple(padded), tuple(conditions) or None


def reads(node: Node, index: Index, materialized, conditions: Optional[set] = None) -> list[tuple[Node, Index]]:
    """The nodes `node` reads at `index` from memory or from reductions (through elementwise ops and views), each
    with its index; the variables of the views' conditions go into `conditions`."""
    found, stack, seen = [], [(node, index)], set()
    while stack:
        node, index = stack.pop()
        key = (id(node), tuple(e.key for e in index))
        if key in seen:
            continue
        seen.add(key)
        if node.op is Op.CONST:
            continue
        if node.op in ELEMENTWISE_OPS and not materialized(node):
            stack += [(source, index) for source in node.src]
        elif node.op in MOVEMENT_OPS and not materialized(node):
            inner, condition = source_index(node, index)
            if inner is not None:
                stack.append((node.src[0], inner))
            for bound in condition or ():
                if conditions is not None:
                    conditions |= bound[0].variables()
        else:
            found.append((node, index))
    return found
