"""Structural hashing: the same program on same-shaped inputs hashes equal in any process.

Input data, random seeds and offsets, object ids and Python's `hash()` never enter the hash; the order in
which leaves are first met does, so the caches keyed on it can bind inputs by position.

A realize walks its graph once (`walk`). The walk gathers each node's own key, made when the node was built
(`Node.key`), and the numbers of its sources into `Walk.structure`: an exact key for the in-memory caches, so a
structure seen before is found without hashing any text. The xxh3 digest, which the disk caches need and which
is the same in every process, is made from the walk only when asked for (`Walk.digest`), once per walk.
"""
from __future__ import annotations

from typing import Optional, Sequence

import xxhash

from .. import counters
from .node import Node
from .ops import Op


class Walk:
    """The graph below some roots, met once: its nodes sources first (`order`), their BUFFER leaves and RAND
    nodes in that order, and its structure as an exact key."""

    __slots__ = ("roots", "order", "leaves", "rands", "structure", "numbering", "_digest")

    def __init__(self, roots: Sequence[Node]):
        self.roots = list(roots)
        self.order: list[Node] = []
        self.numbering: dict[Node, int] = {}  # node -> its position in `order` (nodes hash by identity)
        self.leaves: list[Node] = []
        self.rands: list[Node] = []
        parts: list = []
        for root in self.roots:
            if root not in self.numbering:
                self._visit(root, parts)
        parts.append(tuple([self.numbering[root] for root in self.roots]))
        self.structure = tuple(parts)
        self._digest: Optional[str] = None

    def _visit(self, root: Node, parts: list) -> None:
        """Number `root` and what it depends on that is not numbered yet, sources before users (`toposort`'s order),
        gathering their keys into `parts`: one pass, iterative (traces can be deep). A node on the stack is never
        a source of one above it (a trace has no cycles), so "not numbered" is "not met yet"."""
        numbering, order, append, extend = self.numbering, self.order, parts.append, parts.extend
        number_of, buffer, rand = numbering.__getitem__, Op.BUFFER, Op.RAND
        stack = [(root, iter(root.src))]
        push, pop = stack.append, stack.pop
        while stack:
            node, sources = stack[-1]
            for source in sources:
                if source not in numbering:
                    push((source, iter(source.src)))
                    break
            else:
                pop()
                numbering[node] = len(order)
                order.append(node)
                append(node.key)
                if node.src:
                    extend(map(number_of, node.src))
                elif node.op is buffer:
                    self.leaves.append(node)
                elif node.op is rand:
                    self.rands.append(node)

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
