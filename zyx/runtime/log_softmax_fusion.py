"""log_softmax and its gradient as one library call each (torch.log_softmax and its backward), not ~12 and ~5.

The trace spells `x.log_softmax(axis)` as `x - (log(S) + p)` with `S = sum(exp(x - p), axis)` and `p` the
row's maximum made safe for infinities (tensor_reduce.logsumexp), and autodiff spells its gradient
`g + exp(x - p) * (sum(-g, axis) / S)` (reading the forward's exp and sum). Both are log_softmax for any shift
`p` constant along the axis, so `fuse` only checks that shape and that the two spellings share `x`, `p`, the exp
and the sum: the forward becomes Fused.LOG_SOFTMAX (x), the gradient Fused.LOG_SOFTMAX_GRAD (g, the forward's
value). Every node of the spellings that nothing outside them reads is then left uncomputed (the maximum, the
exp, the sums); what something else reads (an exp a softmax also uses) is still computed.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from ..trace.node import Node
from ..trace.ops import Op
from .fusions import FusedNode, constant_of
from .steps import Fused

_WALKED = 64  # nodes searched per fused node for what it leaves unread (a shift `p` is a handful of nodes)


def fuse(order: Sequence[Node], readers: dict[int, int], wanted: set[int], skipped: set[int],
         fused: dict[int, FusedNode]) -> list[Node]:
    """Add the log_softmaxes of `order` (a toposort) and their gradients to `fused` (id -> the step computing
    the node), and the nodes that then go unread to `skipped` (see `fusions.fuse` for the arguments). Returns
    `order` with each fused forward moved before its gradient where it came after it (the trace's gradient does
    not read it; the fused one does, and the forward reads only x, which the gradient's exp reads too)."""
    forwards: dict[int, tuple[Node, Node, Node, int]] = {}  # id(exp) -> (head, x, sum, axis)
    for node in order:
        match = _log_softmax(node)
        if match is not None and id(node) not in fused and id(node) not in skipped:
            x, total, exponential, axis = match
            forwards[id(exponential)] = (node, x, total, axis)
            fused[id(node)] = (Fused.LOG_SOFTMAX, axis, (x,))
    heads = [head for head, _, _, _ in forwards.values()]
    ends = {id(x) for _, x, _, _ in forwards.values()}
    ahead: dict[int, Node] = {}  # id(gradient) -> its forward, to be computed just before it
    for node in order:
        match = _gradient(node)
        forward = forwards.get(id(match[2])) if match is not None else None
        if forward is not None and match[1] is forward[2] and match[3] == forward[3] \
                and id(node) not in fused and id(node) not in skipped:
            fused[id(node)] = (Fused.LOG_SOFTMAX_GRAD, forward[3], (match[0], forward[0]))
            heads.append(node)
            ends.add(id(match[0]))
            ahead[id(node)] = forward[0]
    if heads:
        skipped |= _unread(heads, ends, readers, wanted | skipped | set(fused))
    return _forwards_first(order, ahead)


def _forwards_first(order: Sequence[Node], ahead: dict[int, Node]) -> list[Node]:
    """`order` with each node of `ahead`'s values moved just before the node keyed by it, where it came later."""
    met: set[int] = set()
    moved = {id(forward) for forward in ahead.values()}
    result: list[Node] = []
    for node in order:
        forward = ahead.get(id(node))
        if forward is not None and id(forward) not in met:
            result.append(forward)
            met.add(id(forward))
        if id(node) not in moved or id(node) not in met:
            result.append(node)
            met.add(id(node))
    return result


def _log_softmax(node: Node) -> Optional[tuple[Node, Node, Node, int]]:
    """(x, S, exp(x - p), axis) where `node` is `x - (log(S) + p)`, S = sum(exp(x - p), axis), in float."""
    difference = _minus(node)
    if difference is None or not node.dtype.is_float:
        return None
    x, offset = difference
    if offset.op is not Op.EXPAND or offset.src[0].op is not Op.ADD:
        return None
    for log, shift in _orders(offset.src[0].src):
        if log.op is Op.LOG and log.src[0].op is Op.SUM and len(log.src[0].arg) == 1:
            total = log.src[0]
            exponential = total.src[0]
            shifted = _minus(exponential.src[0]) if exponential.op is Op.EXP else None
            if shifted is not None and shifted[0] is x and _broadcast_of(shifted[1], shift, total.arg[0]) and \
                    _broadcast_of(offset, offset.src[0], total.arg[0]) and total.shape == shift.shape:
                return x, total, exponential, total.arg[0]
    return None


def _gradient(node: Node) -> Optional[tuple[Node, Node, Node, int]]:
    """(g, S, E, axis) where `node` is `g + E * (sum(-g, axis) / S)` (the scale broadcast along the axis)."""
    if node.op is not Op.ADD or not node.dtype.is_float:
        return None
    for gradient, product in _orders(node.src):
        if product.op is not Op.MUL:
            continue
        for scale, exponential in _orders(product.src):
            if scale.op is not Op.EXPAND or scale.src[0].op is not Op.MUL:
                continue
            for negated_sum, reciprocal in _orders(scale.src[0].src):
                if reciprocal.op is Op.RECIP and negated_sum.op is Op.SUM and len(negated_sum.arg) == 1 and \
                        _is_negation_of(negated_sum.src[0], gradient) and \
                        _broadcast_of(scale, scale.src[0], negated_sum.arg[0]):
                    return gradient, reciprocal.src[0], exponential, negated_sum.arg[0]
    return None


def _minus(node: Node) -> Optional[tuple[Node, Node]]:
    """(a, b) where `node` is a - b (`a + -b`)."""
    if node.op is not Op.ADD:
        return None
    for a, negation in _orders(node.src):
        if negation.op is Op.NEG:
            return a, negation.src[0]
    return None


def _is_negation_of(node: Node, value: Node) -> bool:
    """Whether `node` is `value * -1` (autodiff's negation of a gradient) or `-value`."""
    if node.op is Op.NEG:
        return node.src[0] is value
    if node.op is not Op.MUL:
        return False
    return any(a is value and constant_of(b) is not None and constant_of(b).arg == -1 for a, b in _orders(node.src))


def _broadcast_of(expanded: Node, source: Node, axis: int) -> bool:
    """Whether `expanded` is `source` (of size 1 along `axis`) expanded along that axis only."""
    return expanded.op is Op.EXPAND and expanded.src[0] is source and source.shape[axis] == 1 and \
        all(old == new for k, (old, new) in enumerate(zip(source.shape, expanded.shape)) if k != axis)


def _orders(pair: Sequence[Node]) -> Iterable[tuple[Node, ...]]:
    """Both orders of a binary node's sources."""
    return (tuple(pair), tuple(pair[::-1])) if len(pair) == 2 else ()


def _unread(heads: Sequence[Node], ends: set[int], readers: dict[int, int], kept: set[int]) -> set[int]:
    """Ids of the nodes between `heads` and the nodes they stop at (`ends`) whose every reader is a head or
    another such node, now that the heads read none of them; `kept`: ids never to add (targets, nodes other
    fusions compute or already skip)."""
    found: dict[int, Node] = {}
    stack = [source for head in heads for source in head.src]
    while stack and len(found) < _WALKED * len(heads):
        node = stack.pop()
        if id(node) in found or id(node) in ends or id(node) in kept:
            continue
        found[id(node)] = node
        stack.extend(node.src)
    while True:
        inside: dict[int, int] = {}
        for node in [*heads, *found.values()]:
            for source in node.src:
                inside[id(source)] = inside.get(id(source), 0) + 1
        read_elsewhere = [key for key in found if inside.get(key, 0) != readers[key]]
        if not read_elsewhere:
            return set(found)
        for key in read_elsewhere:
            del found[key]
