"""Indexing by data as one load: `sum over r of where(idx == arange[r], X[.., r, ..], 0)` lowers to `X[.., idx, ..]`.

Tensor indexing, embeddings, gather and take_along_dim select with a one-hot mask summed over the indexed axis
(tensor_indexing._take): n selects per output, 50 304 per element of a GPT-2 embedding (633 G for one forward
at batch 16). Where the mask compares the marked arange leaf (trace.node.ARANGE), read at the reduced counter r,
with an index that does not vary along r, and the other branch is 0, at most one term of the sum is nonzero, the
one at r = idx: lowering reads it directly, a Load whose address adds the index (a register) times X's stride
along r (kernel_ir.Load.indirect). The index is clamped into [0, n) first: that only keeps the read inside the
buffer, since an index outside the range never shows (its RangeCheck raises IndexError before any result does).

The rewrite is keyed on the reduction's op like lower's other patterns; the match follows views (never a PAD,
whose guard would change what the sum reads) down to the WHERE, its CMPEQ and the arange.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..trace.node import ARANGE, Node
from ..trace.ops import MOVEMENT_OPS, Op
from . import view_index
from .kernel_ir import substitute
from .symbolic import Expr

from .view_index import Index


@dataclass(frozen=True)
class Take:
    """What a matched reduction reads: `index` (a node, read at `at`) picks along `size` elements of `source`,
    whose element `base + index * stride` (flat) is the sum's value."""

    index: Node
    at: Index
    source: Node
    base: Expr
    stride: int
    size: int


COUNTER = "taken"  # the reduced axis's counter while matching: a variable that never reaches a kernel


def match_take(node: Node, position: Index) -> Optional[Take]:
    """The Take that the SUM `node` at `position` (an index in its shape) is, or None."""
    source, axes = node.src[0], node.arg
    if node.op is not Op.SUM or len(axes) != 1 or node.dtype.is_bool:
        return None
    size, var = source.shape[axes[0]], COUNTER
    if size < 2:
        return None
    counter = Expr.var(var, size)
    full = list(position)
    full[axes[0]] = counter
    where, at = resolve(source, tuple(full))
    if where.op is not Op.WHERE or where.dtype != node.dtype or not _is_zero(where.src[2]):
        return None
    compare, compared_at = resolve(where.src[0], at)
    if compare.op is not Op.CMPEQ:
        return None
    for arange, index in (compare.src, compare.src[::-1]):
        leaf, leaf_at = resolve(arange, compared_at)
        if (leaf.op is Op.BUFFER and leaf.arg == ARANGE and leaf_at == (counter,)
                and independent(index, compared_at, var)):
            picked, picked_at = resolve(where.src[1], at)
            flat = view_index.linear(picked_at, picked.shape)
            base = substitute(flat, {var: Expr(0)})
            stride = (flat - base).terms.get(next(iter(counter.terms)), 0)
            if stride and flat - base == counter * stride:
                fixed = tuple(substitute(e, {var: Expr(0)}) for e in compared_at)
                return Take(index, fixed, picked, base, stride, size)
    return None


def resolve(node: Node, index: Index) -> tuple[Node, Index]:
    """The first node below `node` that is not a view (PADs excepted), and where it is read for `index`."""
    while node.op in MOVEMENT_OPS and node.op is not Op.PAD:
        index, _ = view_index.source_index(node, index)
        node = node.src[0]
    return node, index


def independent(node: Node, index: Index, var: str) -> bool:
    """Whether `node` at `index` reads nothing (no buffer, reduction or view's guard) that depends on `var`."""
    conditions: set = set()
    found = view_index.reads(node, index, lambda _: False, conditions)
    return var not in conditions and not any(var in e.variables() for _, at in found for e in at)


def _is_zero(node: Node) -> bool:
    while node.op in MOVEMENT_OPS and node.op is not Op.PAD:
        node = node.src[0]
    return node.op is Op.CONST and node.arg == 0
