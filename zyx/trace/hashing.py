"""Structural hashing: the same program on same-shaped inputs hashes equal in any process.

Input data, random seeds and offsets, object ids and Python's `hash()` never enter the hash; the order in
which leaves are first met does, so the caches keyed on it can bind inputs by position.

A realize walks its graph once (`Walk`): one depth-first pass that only numbers nodes, sources before users.
The keys each node made when it was built (`Node.key`) and its sources' numbers are then gathered at C speed
into an exact key of the structure, and what is the same for every graph of that structure (where its leaves
and random nodes sit, a number standing for it) is planned once and kept (`Plan`): a structure seen before is
found by one lookup, without hashing any text, and its number keys the in-memory caches above. The xxh3
digest, which the disk caches need and which is the same in every process, is made from the walk only when
asked for (`Walk.digest`), once per walk.
"""
from __future__ import annotations

import itertools
from operator import attrgetter
from typing import Optional, Sequence

import xxhash

from .. import counters
from .node import Node, buffer_key
from .ops import Op

PLANS_KEPT = 1 << 16  # structures planned and remembered (as many as node keys, `node.KEYS_KEPT`); one met again
# after that many others is planned again, under a new number (the in-memory caches then miss it once)
_sources, _key, _buffer, _arg = attrgetter("src"), attrgetter("key"), attrgetter("buffer"), attrgetter("arg")
_chain = itertools.chain.from_iterable
_structure_numbers = itertools.count()


class Plan:
    """What every graph of one structure shares, worked out at its first walk: the positions (in walk order) of
    its BUFFER leaves, RAND nodes and roots; the key each root takes when it becomes a buffer leaf; the graph
    spelled out (`nodes`: per node its op, semantic arg, shape, dtype and sources' positions, what an origin's copy
    is made from); and `number`, standing for the structure in the in-memory caches (never given to another)."""

    __slots__ = ("number", "leaves", "rands", "roots", "root_keys", "nodes")

    def __init__(self, order: list[Node], numbering: dict[Node, int], roots: Sequence[Node]):
        self.number = next(_structure_numbers)
        self.leaves = tuple([k for k, node in enumerate(order) if node.op is Op.BUFFER])
        self.rands = tuple([k for k, node in enumerate(order) if node.op is Op.RAND])
        self.roots = tuple([numbering[root] for root in roots])
        self.root_keys = tuple([buffer_key(root.shape, root.dtype) for root in roots])
        self.nodes = tuple([(node.op, None if node.op is Op.RAND else node.arg, node.shape, node.dtype,
                             tuple(map(numbering.__getitem__, node.src))) for node in order])


_plans: dict[tuple, Plan] = {}  # by the exact key of a structure (`Walk.__init__`)


class Walk:
    """The graph below some roots, met once: its nodes sources first (`order`, `numbering`), their BUFFER leaves
    and RAND nodes in that order, and `structure`, a number equal for two walks exactly when their graphs are
    (op, shape, dtype, semantic arg of each node; which sources each reads; which nodes are the roots)."""

    __slots__ = ("roots", "order", "numbering", "leaves", "rands", "plan", "structure", "_digest")

    def __init__(self, roots: Sequence[Node]):
        self.roots = roots = list(roots)
        self.order, self.numbering = order, numbering = _depth_first(roots)
        number_of, sources = numbering.__getitem__, list(map(_sources, order))
        # one flat tuple (quick to hash and compare), read back unambiguously: the node count, each node's key,
        # each node's source count, all sources' numbers, the roots' numbers
        parts = [len(order)]
        parts += map(_key, order)
        parts += map(len, sources)
        parts += map(number_of, _chain(sources))
        parts += map(number_of, roots)
        key = tuple(parts)
        plan = _plans.get(key)
        if plan is None:
            if len(_plans) >= PLANS_KEPT:
                del _plans[next(iter(_plans))]  # the oldest
            plan = _plans[key] = Plan(order, numbering, roots)
        self.plan, self.structure = plan, plan.number
        self.leaves: list[Node] = list(map(order.__getitem__, plan.leaves))
        self.rands: list[Node] = list(map(order.__getitem__, plan.rands)) if plan.rands else []
        self._digest: Optional[str] = None

    def buffers(self) -> list:
        """The leaves' buffers, in the leaves' order (a program's inputs)."""
        return list(map(_buffer, self.leaves))

    def rand_args(self) -> list:
        """The RAND nodes' (seed, offset) args, in their order."""
        return list(map(_arg, self.rands))

    def digest(self) -> str:
        """The xxh3-128 hex digest of the structure, equal in every process (computed once per walk)."""
        if self._digest is None:
            counters.bump("structure_digests")
            numbering = self.numbering
            text = ";".join(describe(node, numbering) for node in self.order)
            digest = xxhash.xxh3_128(text.encode())
            digest.update(("roots:" + ",".join(str(numbering[r]) for r in self.roots)).encode())
            self._digest = digest.hexdigest()
        return self._digest


def _depth_first(roots: Sequence[Node]) -> tuple[list[Node], dict[Node, int]]:
    """Every node below `roots`, sources before users in `toposort`'s order, and its position in that order (nodes
    hash by identity); a leaf is numbered where it is met. Recursive (`_number`), the quickest pass for the usual
    trace; one deeper than the interpreter's recursion limit is walked again iteratively."""
    order: list[Node] = []
    numbering: dict[Node, int] = {}
    try:
        for root in roots:
            if root not in numbering:
                _number(root, numbering, order)
    except RecursionError:
        return _depth_first_iterative(roots)
    return order, numbering


def _number(node: Node, numbering: dict[Node, int], order: list[Node]) -> None:
    """Number what `node` depends on that is not numbered yet, then `node` (a module function, not a closure: a
    closure calling itself is a reference cycle, which would keep the walk's nodes alive until a collection)."""
    for source in node.src:
        if source not in numbering:
            if source.src:
                _number(source, numbering, order)
            else:
                numbering[source] = len(order)
                order.append(source)
    numbering[node] = len(order)
    order.append(node)


def _depth_first_iterative(roots: Sequence[Node]) -> tuple[list[Node], dict[Node, int]]:
    """`_depth_first` for traces of any depth. A node on the stack is never a source of one above it (a trace has
    no cycles), so "not numbered" is "not met yet"."""
    order: list[Node] = []
    numbering: dict[Node, int] = {}
    append = order.append
    for root in roots:
        if root in numbering:
            continue
        stack = [(root, iter(root.src))]
        push, pop = stack.append, stack.pop
        while stack:
            node, sources = stack[-1]
            for source in sources:
                if source not in numbering:
                    if source.src:
                        push((source, iter(source.src)))
                        break
                    numbering[source] = len(order)
                    append(source)
            else:
                pop()
                numbering[node] = len(order)
                append(node)
    return order, numbering


def describe(node: Node, numbering: dict[Node, int]) -> str:
    """One node as text: op, shape, dtype, the arg that changes semantics, and its sources by number."""
    arg = "" if node.op is Op.RAND or node.arg is None and node.op is Op.BUFFER else repr(_arg_text(node.arg))
    return f"{node.op.name}|{node.shape}|{node.dtype.name}|{arg}|" + ",".join([str(numbering[s]) for s in node.src])


def _arg_text(arg: object) -> object:
    if isinstance(arg, float):
        return arg.hex()  # exact, and distinguishes -0.0 and nan payloads alike in every process
    if isinstance(arg, tuple):
        return tuple(_arg_text(a) for a in arg)
    return arg if not hasattr(arg, "name") else arg.name  # DType args hash by name


def structural_hash(roots: Sequence[Node]) -> str:
    """The xxh3-128 hex digest of the graph below `roots` (in that order)."""
    return Walk(roots).digest()


def signature(roots: Sequence[Node]) -> tuple[str, list[Node], list[Node]]:
    """The structural hash, with the BUFFER leaves and RAND nodes in the order the hash numbered them.

    A program cached under the hash binds its inputs by these positions.
    """
    walk = Walk(roots)
    return walk.digest(), walk.leaves, walk.rands
