"""Reverse-mode autodiff over the trace: each rule turns an output gradient into new (lazy) nodes.

Gradients are ordinary nodes, so differentiating them again gives higher orders. Rules read the forward
node itself where the derivative needs it (exp, tanh, sqrt), so realizing a value and its gradients
together computes it once.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

from . import node as n
from .attention_grad import attention_gradients, attention_product
from .node import Node
from .ops import MOVEMENT_OPS, Op
from .origin import canonical, recorded_structure

Grads = tuple[Optional[Node], ...]


def _const(value: float, like: Node) -> Node:
    return n.const(value, like.shape, like.dtype, like.device)


def _add(a: Node, b: Node) -> Node:
    return n.binary(Op.ADD, a, b)


def _mul(a: Node, b: Node) -> Node:
    return n.binary(Op.MUL, a, b)


def _neg(a: Node) -> Node:
    return n.unary(Op.NEG, a)


def _zeros_where(mask: Node, g: Node) -> Node:
    return n.where(mask, g, _const(0, g))


def _grad_add(node: Node, out: Node, g: Node) -> Grads:
    return g, g


def _grad_mul(node: Node, out: Node, g: Node) -> Grads:
    a, b = node.src
    return _mul(g, b), _mul(g, a)


def _grad_div(node: Node, out: Node, g: Node) -> Grads:
    a, b = node.src
    gb = _neg(n.binary(Op.DIV, _mul(g, out), b))
    return n.binary(Op.DIV, g, b), gb


def _grad_pow(node: Node, out: Node, g: Node) -> Grads:
    a, b = node.src
    # d/da a**b = b * a**(b-1); defined as 0 where b == 0 (the 0 * inf at a == 0 would be nan), as PyTorch
    ga = _zeros_where(n.unary(Op.NOT, n.binary(Op.CMPEQ, b, _const(0, b))),
                      _mul(g, _mul(b, n.binary(Op.POW, a, _add(b, _const(-1, b))))))
    # d/db a**b = a**b * log(a); defined as 0 where a == 0 and b >= 0, as PyTorch does
    zero_base = n.binary(Op.AND, n.binary(Op.CMPEQ, a, _const(0, a)),
                         n.unary(Op.NOT, n.binary(Op.CMPLT, b, _const(0, b))))
    gb = _zeros_where(n.unary(Op.NOT, zero_base), _mul(g, _mul(out, n.unary(Op.LOG, a))))
    return ga, gb


def _grad_max(node: Node, out: Node, g: Node) -> Grads:
    """Ties share the gradient equally."""
    a, b = node.src
    a_wins = n.cast(n.binary(Op.CMPLT, b, a), a.dtype)
    tie = n.cast(n.binary(Op.CMPEQ, a, b), a.dtype)
    share_a = _add(a_wins, _mul(tie, _const(0.5, tie)))
    share_b = _add(_const(1, share_a), _neg(share_a))
    return _mul(g, share_a), _mul(g, share_b)


def _grad_where(node: Node, out: Node, g: Node) -> Grads:
    condition, _, _ = node.src
    chosen = _mul(n.cast(condition, g.dtype), g) if _is_one_hot(condition) else _zeros_where(condition, g)
    return None, chosen, n.where(condition, _const(0, g), g)


def _is_one_hot(mask: Node) -> bool:
    """Whether `mask` compares entries with the arange leaf: indexing's one-hot mask (tensor_indexing._hits).

    Its branch's gradient is then the mask (as numbers) times the incoming gradient rather than a select: summed
    over the index entries (an embedding's weight gradient) that is a product, one-hot^T @ dY, which kernels run as
    segmented sums (jit/segments.py: each token's row of dY added to the row it indexes, 633 G selects with every
    item reading its column of dY again otherwise). Deterministic (each sum in a fixed order), unlike an atomic
    scatter-add; a non-finite entry of dY stays in its own row there (a dense product, as the CPU reference runs
    it, spreads it over its column: 0 * inf)."""
    mask = _unviewed(mask)
    return mask.op is Op.CMPEQ and any(_unviewed(s).op is Op.BUFFER and _unviewed(s).arg == n.ARANGE
                                       for s in mask.src)


def _unviewed(node: Node) -> Node:
    while node.op in MOVEMENT_OPS and node.op is not Op.PAD:
        node = node.src[0]
    return node


def _grad_unary(derivative: Callable[[Node, Node], Node]) -> Callable[[Node, Node, Node], Grads]:
    def rule(node: Node, out: Node, g: Node) -> Grads:
        return (_mul(g, derivative(node.src[0], out)),)
    return rule


UNARY_DERIVATIVES: dict[Op, Callable[[Node, Node], Node]] = {
    Op.NEG: lambda x, out: _const(-1, x),
    Op.RECIP: lambda x, out: _neg(_mul(out, out)),
    Op.SQRT: lambda x, out: n.unary(Op.RECIP, _mul(out, _const(2, out))),
    Op.EXP: lambda x, out: out,
    Op.LOG: lambda x, out: n.unary(Op.RECIP, x),
    Op.SIN: lambda x, out: n.unary(Op.COS, x),
    Op.COS: lambda x, out: _neg(n.unary(Op.SIN, x)),
    Op.TANH: lambda x, out: _add(_const(1, out), _neg(_mul(out, out))),
    Op.SIGMOID: lambda x, out: _mul(out, _add(_const(1, out), _neg(out))),
    Op.ERF: lambda x, out: _mul(_const(2 / math.sqrt(math.pi), x), n.unary(Op.EXP, _neg(_mul(x, x)))),
}


def _grad_cast(node: Node, out: Node, g: Node) -> Grads:
    source = node.src[0]
    return (n.cast(g, source.dtype) if source.dtype.is_float else None,)


def _grad_sum(node: Node, out: Node, g: Node) -> Grads:
    return (n.expand(g, node.src[0].shape),)


def _grad_rmax(node: Node, out: Node, g: Node) -> Grads:
    """Tied maxima share the gradient equally."""
    x = node.src[0]
    winners = n.cast(n.binary(Op.CMPEQ, x, n.expand(out, x.shape)), x.dtype)
    count = n.reduce(Op.SUM, winners, node.arg)
    share = n.binary(Op.DIV, g, count)
    return (_mul(n.expand(share, x.shape), winners),)


def _grad_reshape(node: Node, out: Node, g: Node) -> Grads:
    return (n.reshape(g, node.src[0].shape),)


def _grad_permute(node: Node, out: Node, g: Node) -> Grads:
    inverse = [0] * len(node.arg)
    for position, axis in enumerate(node.arg):
        inverse[axis] = position
    return (n.permute(g, inverse),)


def _grad_expand(node: Node, out: Node, g: Node) -> Grads:
    source = node.src[0]
    axes = [i for i, (s, t) in enumerate(zip(source.shape, out.shape)) if s != t]
    return (n.reduce(Op.SUM, g, axes),)


def _grad_pad(node: Node, out: Node, g: Node) -> Grads:
    padding, _ = node.arg
    return (n.shrink(g, [(b, b + s) for (b, _), s in zip(padding, node.src[0].shape)]),)


def _grad_shrink(node: Node, out: Node, g: Node) -> Grads:
    padding = [(s, n_ - e) for (s, e), n_ in zip(node.arg, node.src[0].shape)]
    return (n.pad(g, padding, 0),)


def _grad_flip(node: Node, out: Node, g: Node) -> Grads:
    return (n.flip(g, node.arg),)


def _grad_collective(node: Node, out: Node, g: Node) -> Grads:
    """Each process differentiates its own use of a sum over processes: the sum's gradient is the sum of theirs,
    cut back into the sources' pieces. A max, min or broadcast picks one process's value, which no rule here can
    express."""
    if node.arg != ("all_reduce", "sum"):
        raise NotImplementedError(f"no gradient flows through {node.arg[0]} ({node.arg[1]}) across processes; "
                                  "detach its input, or differentiate an all_reduce sum")
    summed = n.collective([g], "all_reduce", "sum")
    pieces, start = [], 0
    for source in node.src:
        pieces.append(n.reshape(n.shrink(summed, [(start, start + source.numel)]), source.shape))
        start += source.numel
    return tuple(pieces)


RULES: dict[Op, Callable[[Node, Node, Node], Grads]] = {
    Op.ADD: _grad_add, Op.MUL: _grad_mul, Op.DIV: _grad_div, Op.POW: _grad_pow, Op.MAX: _grad_max,
    Op.WHERE: _grad_where, Op.CAST: _grad_cast, Op.SUM: _grad_sum, Op.RMAX: _grad_rmax,
    Op.RESHAPE: _grad_reshape, Op.PERMUTE: _grad_permute, Op.EXPAND: _grad_expand, Op.PAD: _grad_pad,
    Op.SHRINK: _grad_shrink, Op.FLIP: _grad_flip, Op.COLLECTIVE: _grad_collective,
    **{op: _grad_unary(d) for op, d in UNARY_DERIVATIVES.items()},
}
# FLOOR, CEIL, RINT, comparisons and logic are flat or discrete, DETACH is a wall: no gradient flows through.


def _or(node: Optional[Node], fallback: Node) -> Node:
    return fallback if node is None else node


def _differentiable(node: Node) -> bool:
    return node.dtype.is_float


class _Graph:
    """The graph below a root as autodiff sees it.

    A realized node expands through its recorded origin; a copy inside an origin is replaced by the live node
    it copies while that node lives (so a source the user holds is found), and a placeholder whose node died
    ends the walk there (that part of the history was released; the placeholder is a leaf with no value).
    Every node gets a `live` twin whose sources are live nodes, for the rules to build on: copies inside
    origins never enter a gradient graph.
    """

    def __init__(self, root: Node):
        self.sources_of: dict[int, tuple[Node, ...]] = {}
        self.structure: dict[int, Node] = {}
        self.order: list[Node] = []
        stack: list[tuple[Node, bool]] = [(root, False)]
        while stack:
            node, ready = stack.pop()
            if ready:
                self.order.append(node)
                continue
            if id(node) in self.structure:
                continue
            body = recorded_structure(node)
            # a placeholder whose realized node died stays in as a leaf without a value: gradients that need
            # its value fail loudly when realized, instead of silently missing a dependency
            sources = tuple(_or(canonical(s), s) for s in body.src)
            self.structure[id(node)] = body
            self.sources_of[id(node)] = sources  # type: ignore[assignment]
            stack.append((node, True))
            stack.extend((s, False) for s in reversed(sources) if id(s) not in self.structure)
        self.live: dict[int, Node] = {}
        self._by_live: Optional[dict[int, Node]] = None
        for node in self.order:
            self.live[id(node)] = self._live(node)

    def _live(self, node: Node) -> Node:
        if node.op is Op.BUFFER or not self.sources_of[id(node)]:
            return node
        sources = tuple(self.live[id(s)] for s in self.sources_of[id(node)])
        if len(sources) == len(node.src) and all(a is b for a, b in zip(sources, node.src)):
            return node
        return Node(node.op, sources, node.arg, node.shape, node.dtype, node.device)

    def by_live(self) -> dict[int, Node]:
        """The graph's nodes by the id of their live twins."""
        if self._by_live is None:
            self._by_live = {id(self.live[id(node)]): node for node in self.order}
        return self._by_live

    def rule_input(self, node: Node) -> Node:
        """A node with the recorded op and arg over live sources, for the gradient rules to read."""
        body, sources = self.structure[id(node)], self.sources_of[id(node)]
        if node.op is not Op.BUFFER or body is node:
            return self.live[id(node)]
        return Node(body.op, tuple(self.live[id(s)] for s in sources), body.arg, node.shape, node.dtype, node.device)


def _attention_rule(graph: _Graph, recorded: Node, g: Node) -> Optional[tuple[tuple[Node, ...], Grads]]:
    """softmax(X) W's gradient given to X and W's operand directly, P recomputed from the row statistics
    (attention_grad.py), as (the graph's nodes, their gradients); None where the ordinary rules apply."""
    pattern = attention_product(recorded) if recorded.op is Op.SUM else None
    found = attention_gradients(pattern, g, RULES) if pattern is not None else None
    if found is None:
        return None
    by_live = graph.by_live()
    nodes = tuple(by_live.get(id(live)) for live in (pattern.softmax.scores, pattern.w_side))
    if any(node is None for node in nodes):
        return None
    return nodes, found  # type: ignore[return-value]


def gradients(root: Node, sources: Sequence[Node], seed: Node) -> list[Optional[Node]]:
    """d(root)/d(source) for each source, seeded with `seed` (root's shape).

    A source `root` does not depend on, or one that is not a float tensor (no gradient), gets None; one it
    depends on only through flat ops (comparisons, floor, detach...) gets zeros.
    """
    graph = _Graph(root)
    wanted = {id(s) for s in sources}
    on_path: set[int] = set()  # only nodes between a source and the root need gradients
    for node in graph.order:
        if id(node) in wanted or any(id(s) in on_path for s in graph.sources_of[id(node)]):
            on_path.add(id(node))
    grads: dict[int, Node] = {id(root): seed}
    for node in reversed(graph.order):
        g = grads.get(id(node)) if id(node) in wanted else grads.pop(id(node), None)
        if g is None or not _differentiable(node) or not graph.sources_of[id(node)]:
            continue
        recorded = graph.rule_input(node)
        if recorded.op not in RULES:
            continue
        out = graph.live[id(node)]
        attention = _attention_rule(graph, recorded, g)
        targets, rule_grads = attention or (graph.sources_of[id(node)], RULES[recorded.op](recorded, out, g))
        for source, source_grad in zip(targets, rule_grads):
            if source_grad is None or id(source) not in on_path or not _differentiable(source):
                continue
            previous = grads.get(id(source))
            grads[id(source)] = source_grad if previous is None else _add(previous, source_grad)
    results: list[Optional[Node]] = []
    for source in sources:
        if id(source) not in graph.structure or not _differentiable(source):
            results.append(None)
        elif id(source) in grads:
            results.append(grads[id(source)])
        else:
            results.append(n.const(0, source.shape, source.dtype, source.device))
    return results
