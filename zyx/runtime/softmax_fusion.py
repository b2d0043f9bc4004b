"""The softmax family's row reductions as one library call each: log_softmax, logsumexp and their gradients
(torch.log_softmax and its backward, torch.logsumexp, torch.softmax), not ~12 ops forward and ~5 back.

The trace spells `x.logsumexp(axis)` as `log(S) + p` with `S = sum(E, axis)`, `E = exp(x - p)` and `p` the row's
maximum made safe for infinities (tensor_reduce.logsumexp); `x.log_softmax(axis)` is `x - lse`. Autodiff spells
the gradient of log(S) as `E * (h / S)` for the upstream `h` (of size 1 along the axis): softmax(x) * h; and the
gradient of a log_softmax as `g + E * (sum(-g, axis) / S)`. All of them hold for any shift `p` constant along
the axis, so the matchers only check that shape and that the pieces share `x`, `p`, the exp and the sum:
- a log_softmax whose lse nothing else reads becomes Fused.LOG_SOFTMAX (x), and its gradient
  Fused.LOG_SOFTMAX_GRAD (g, the forward's value);
- any other lse becomes Fused.LOGSUMEXP (x) (a log_softmax reading it is then `x - lse`, one subtraction: the
  cross-entropy's form, whose loss reads the lse too), and any other `E * (h / S)` Fused.LOGSUMEXP_GRAD (x, h).
Cross-entropy's rows (nn.cross_entropy without label smoothing) read the lse beside the target's logit, picked
by a one-hot mask (`SUM(WHERE(idx == arange, x, 0))`, the mask made by one_hot_mask):
- `lse * w + -(x[idx]) * w` becomes Fused.CROSS_ENTROPY (x, idx, w): torch's cross_entropy per row (log_softmax
  and nll_loss, two kernels where torch.logsumexp alone runs nine on CUDA) times w;
- its gradient `softmax(x) * h + onehot(idx) * c` becomes Fused.CROSS_ENTROPY_GRAD (x, h, idx, c): softmax, a
  product and a scatter-add of c at the targets, with no one-hot matrix.
Only a mask whose range check raises for an index outside the classes fuses (one_hot_mask's), and both steps clamp
the index into the classes first: an entry out of range fails the realize's range check (an IndexError naming
it) and must not reach a gather (a device-side assert on CUDA). They have no generic form (interpret.py):
only float32 and float64 rows fuse, which torch's own kernels compute.
Every node of the spellings that nothing outside them reads is then left uncomputed (the maximum, the exp, the
sums); what something else reads (an exp a softmax also uses) is still computed. One axis only: a logsumexp over
several axes stays as the trace spells it.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Optional, Sequence

from ..dtypes import float32, float64, int64
from ..trace.checks import guards_range
from ..trace.node import ARANGE, Node
from ..trace.ops import Op
from .fusions import FusedNode, constant_of
from .steps import Fused

_WALKED = 64  # nodes searched per fused node for what it leaves unread (a shift `p` is a handful of nodes)


class _Row(NamedTuple):
    """The pieces every spelling shares: S = sum(E, axis), E = exp(x - p), p of size 1 along the axis."""

    x: Node
    total: Node  # S
    exponential: Node  # E
    shift: Node  # p
    axis: int


def fuse(order: Sequence[Node], readers: dict[int, int], wanted: set[int], skipped: set[int],
         fused: dict[int, FusedNode]) -> list[Node]:
    """Add the log_softmaxes, logsumexps and their gradients of `order` (a toposort) to `fused` (id -> the step
    computing the node), and the nodes that then go unread to `skipped` (see `fusions.fuse` for the arguments).
    Returns `order` with each fused log_softmax moved before its gradient where it came after it (the trace's
    gradient does not read it; the fused one does, and the forward reads only x, which the gradient's exp reads
    too)."""
    heads: list[Node] = []
    ends: set[int] = set()  # ids of the fused steps' sources, where the search for unread nodes stops
    within: set[int] = set()  # ids of spellings' nodes a fused step computes inside itself (a log_softmax's lse)

    def free(node: Node) -> bool:
        return id(node) not in fused and id(node) not in skipped and id(node) not in within

    def claim(node: Node, step: FusedNode) -> None:
        fused[id(node)] = step
        heads.append(node)
        ends.update(id(source) for source in step[2])

    forwards: dict[int, tuple[Node, _Row]] = {}  # id(exp) -> a fused log_softmax reading it, and its row
    for node in order:
        match = _log_softmax(node) if free(node) else None
        if match is not None and id(match[0]) in _unread([node], {id(match[1].x)}, readers,
                                                          wanted | skipped | set(fused)):
            lse, row = match
            claim(node, (Fused.LOG_SOFTMAX, row.axis, (row.x,)))
            forwards[id(row.exponential)] = node, row
            within.add(id(lse))
    ahead: dict[int, Node] = {}  # id(gradient) -> its forward, to be computed just before it
    for node in order:
        gradient = _log_softmax_grad(node) if free(node) else None
        forward = forwards.get(id(gradient[2].exponential)) if gradient is not None else None
        if forward is not None and gradient[2].total is forward[1].total:
            g, product, row = gradient
            claim(node, (Fused.LOG_SOFTMAX_GRAD, row.axis, (g, forward[0])))
            within.add(id(product))
            ahead[id(node)] = forward[0]
    for node in order:
        entropy = _cross_entropy(node) if free(node) else None
        gradient = _cross_entropy_grad(node) if free(node) and entropy is None else None
        if entropy is not None:
            row, pick, weight = entropy
            claim(node, (Fused.CROSS_ENTROPY, row.axis, (row.x, pick.index, weight)))
        elif gradient is not None:
            (upstream, row), index, scale = gradient
            claim(node, (Fused.CROSS_ENTROPY_GRAD, row.axis, (row.x, upstream, index, scale)))
    for node in order:
        row = _logsumexp(node) if free(node) else None
        product = _softmax_times(node) if free(node) and row is None else None
        if row is not None:
            claim(node, (Fused.LOGSUMEXP, row.axis, (row.x,)))
        elif product is not None:
            upstream, row = product
            claim(node, (Fused.LOGSUMEXP_GRAD, row.axis, (row.x, upstream)))
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


def _exp_sum(total: Node) -> Optional[_Row]:
    """The row where `total` is S = sum(exp(x - p), axis) over one axis, in float."""
    if total.op is not Op.SUM or len(total.arg) != 1 or not total.dtype.is_float or total.src[0].op is not Op.EXP:
        return None
    exponential = total.src[0]
    shifted = _minus(exponential.src[0])
    if shifted is None or not _broadcast_along(shifted[1], total.arg[0]) or shifted[1].src[0].shape != total.shape:
        return None
    return _Row(shifted[0], total, exponential, shifted[1].src[0], total.arg[0])


def _logsumexp(node: Node) -> Optional[_Row]:
    """The row where `node` is `log(S) + p`."""
    if node.op is not Op.ADD:
        return None
    for log, shift in _orders(node.src):
        row = _exp_sum(log.src[0]) if log.op is Op.LOG else None
        if row is not None and row.shift is shift:
            return row
    return None


def _log_softmax(node: Node) -> Optional[tuple[Node, _Row]]:
    """(lse, its row) where `node` is `x - lse` (lse = log(S) + p broadcast along the axis)."""
    difference = _minus(node)
    if difference is None or difference[1].op is not Op.EXPAND:
        return None
    x, expanded = difference
    row = _logsumexp(expanded.src[0])
    if row is None or row.x is not x or not _broadcast_along(expanded, row.axis):
        return None
    return expanded.src[0], row


def _softmax_times(node: Node) -> Optional[tuple[Node, _Row]]:
    """(h, the row) where `node` is `E * (h * (1 / S))`, the scale broadcast along the axis: softmax(x) * h."""
    if node.op is not Op.MUL:
        return None
    for scale, exponential in _orders(node.src):
        if scale.op is not Op.EXPAND or scale.src[0].op is not Op.MUL:
            continue
        for upstream, reciprocal in _orders(scale.src[0].src):
            row = _exp_sum(reciprocal.src[0]) if reciprocal.op is Op.RECIP else None
            if row is not None and row.exponential is exponential and _broadcast_along(scale, row.axis):
                return upstream, row
    return None


class _Pick(NamedTuple):
    """`x[idx]` along `axis` as the trace spells it: SUM(WHERE(hits, x, 0), axis), `hits` idx's one-hot mask."""

    x: Node
    index: Node  # int64, of size 1 along the axis
    axis: int


def _picked(node: Node) -> Optional[_Pick]:
    """The pick `node` is, its summed axis kept or dropped by a reshape."""
    total = node.src[0] if node.op is Op.RESHAPE else node
    if total.op is not Op.SUM or len(total.arg) != 1:
        return None
    axis = total.arg[0]
    if node is not total and node.shape != total.shape[:axis] + total.shape[axis + 1:]:
        return None
    chosen = total.src[0]
    if chosen.op is not Op.WHERE or constant_of(chosen.src[2]) is None or constant_of(chosen.src[2]).arg != 0:
        return None
    index = _one_hot_index(chosen.src[0], axis)
    return _Pick(chosen.src[1], index, axis) if index is not None else None


def _one_hot_index(mask: Node, axis: int) -> Optional[Node]:
    """idx where `mask` is `idx == arange` along `axis` (idx int64, of size 1 along the axis; arange the marked
    leaf 0..C-1 with C the axis' size), and a range check on the mask raises for an idx outside [0, C) (one_hot_mask
    attaches it: the fused steps gather and scatter at idx, where the mask would hit no class)."""
    if mask.op is not Op.CMPEQ or not guards_range(mask, 0, mask.shape[axis]):
        return None
    for index, classes in _orders(mask.src):
        if _broadcast_along(index, axis) and index.src[0].dtype is int64 and _arange_along(classes, axis):
            return index.src[0]
    return None


def _arange_along(node: Node, axis: int) -> bool:
    """Whether `node` is 0, 1, ..., C-1 along `axis` (C its size there), broadcast along the other axes (or not
    broadcast at all, where they have size 1)."""
    shaped, size = node.src[0] if node.op is Op.EXPAND else node, node.shape[axis]
    if shaped.op is not Op.RESHAPE:
        return False
    leaf = shaped.src[0]
    return leaf.op is Op.BUFFER and leaf.arg == ARANGE and leaf.shape == (size,) and \
        shaped.shape == tuple(size if k == axis else 1 for k in range(len(node.shape)))


def _cross_entropy(node: Node) -> Optional[tuple[_Row, _Pick, Node]]:
    """(the row, the pick, w) where `node` is `lse * w + -(x[idx]) * w`, lse and the pick of one x and axis (the
    axis dropped from both, or kept by both), in float32 or float64."""
    if node.op is not Op.ADD or node.dtype not in (float32, float64):
        return None
    for first, second in _orders(node.src):
        if first.op is not Op.MUL or second.op is not Op.MUL:
            continue
        for lse, weight in _orders(first.src):
            row = _logsumexp(lse.src[0] if lse.op is Op.RESHAPE else lse)
            for negation, other in _orders(second.src):
                if row is None or not _same_value(other, weight) or negation.op is not Op.NEG or \
                        lse.shape != negation.shape:
                    continue
                pick = _picked(negation.src[0])
                if pick is not None and pick.x is row.x and pick.axis == row.axis:
                    return row, pick, weight
    return None


def _same_value(a: Node, b: Node) -> bool:
    """Whether `a` and `b` are one node, or casts of one node to one dtype (a float32 weight in two float64
    products: each casts it)."""
    return a is b or a.op is Op.CAST and b.op is Op.CAST and a.src[0] is b.src[0] and a.dtype == b.dtype


def _cross_entropy_grad(node: Node) -> Optional[tuple[tuple[Node, _Row], Node, Node]]:
    """((h, the row), idx, c) where `node` is `softmax(x) * h + onehot(idx) * c`, c (of idx's shape) broadcast
    along the axis, in float32 or float64."""
    if node.op is not Op.ADD or node.dtype not in (float32, float64):
        return None
    for product, correction in _orders(node.src):
        softmax = _softmax_times(product)
        if softmax is None or correction.op is not Op.MUL:
            continue
        axis = softmax[1].axis
        for mask, scale in _orders(correction.src):
            if mask.op is not Op.CAST or mask.src[0].dtype.name != "bool" or not _broadcast_along(scale, axis):
                continue
            index = _one_hot_index(mask.src[0], axis)
            if index is not None and scale.src[0].shape == index.shape and scale.dtype == node.dtype:
                return softmax, index, scale.src[0]
    return None


def _log_softmax_grad(node: Node) -> Optional[tuple[Node, Node, _Row]]:
    """(g, the product, its row) where `node` is `g + E * (sum(-g, axis) / S)`."""
    if node.op is not Op.ADD or not node.dtype.is_float:
        return None
    for gradient, product in _orders(node.src):
        match = _softmax_times(product)
        if match is not None and match[0].op is Op.SUM and match[0].arg == (match[1].axis,) and \
                _is_negation_of(match[0].src[0], gradient):
            return gradient, product, match[1]
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


def _broadcast_along(expanded: Node, axis: int) -> bool:
    """Whether `expanded` is an EXPAND of a source of size 1 along `axis`, along that axis only."""
    if expanded.op is not Op.EXPAND:
        return False
    source = expanded.src[0].shape
    return source[axis] == 1 and \
        all(old == new for k, (old, new) in enumerate(zip(source, expanded.shape)) if k != axis)


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
        if id(node) in found or id(node) in ends or id(node) in kept or node.op is Op.BUFFER:
            continue  # (a leaf is an input, bound by its position among the program's leaves: always loaded)
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
