"""How a realized node was computed, kept for autodiff without pinning memory.

Realizing a node turns it into a buffer leaf. So that `loss.item()` followed by `loss.backward(params)`
still works, the node keeps a detached copy of its graph (its `origin`):

- every interior node is copied as a `Recorded` node that names the node it copies weakly, so autodiff can
  go back to the live node (a source the user still holds is found again) while the copy pins nothing;
- every realized node inside is a `Recorded` placeholder, again weak: holding it would chain each step of a
  `w = w - lr * g` loop to all the steps before it;
- data leaves (buffers made from user data, which have no history) are held as they are: they cannot chain,
  and a gradient usually needs their values (inputs, labels, `arange` inside `one_hot`).

Most realized values are never differentiated through, so the copy is made when autodiff first asks for it
(`recorded_structure`). A realize keeps only what the copy will need and cannot find later: a weak reference
to each node (the data leaves themselves) and the random streams' seeds; the graph's shape (ops, args, shapes,
sources) is the same for every realize of a structure and is kept once per structure, in its `Plan`.

A gradient that needs the value of a realized tensor nobody holds any more cannot be formed: realizing it
raises a RuntimeError that says so.
"""
from __future__ import annotations

import weakref
from typing import Any, Optional

from .hashing import Walk
from .node import Node
from .ops import Op


class Recorded(Node):
    """A node inside an origin copy; `target` weakly names the live node it stands for."""

    __slots__ = ("target",)

    def __init__(self, op: Op, src: tuple[Node, ...], arg: Any, shape: tuple[int, ...], dtype: Any, device: Any,
                 target: "weakref.ref[Node]"):
        super().__init__(op, src, arg, shape, dtype, device)
        self.target = target

    @property
    def placeholder(self) -> bool:
        """Stands for a realized node (it has no buffer of its own)."""
        return self.op is Op.BUFFER


def is_data_leaf(node: Node) -> bool:
    return node.op is Op.BUFFER and node.origin is None and not isinstance(node, Recorded)


class Origins:
    """The origins of the targets of one realize (they share one copy of its graph), made on first use."""

    __slots__ = ("plan", "held", "rand_args", "device", "copies")

    def __init__(self, walk: Walk, device: Any):
        self.plan = walk.plan
        # per node of the walk: itself (a data leaf, or a copy already) or a weak reference (an interior node, or a
        # realized one, copied as its placeholder)
        order = walk.order
        self.held: list[Any] = list(map(weakref.ref, order))  # (at C speed; then the few held as they are)
        for leaf, position in zip(walk.leaves, walk.plan.leaves):
            if leaf.origin is None:
                self.held[position] = leaf
        if Recorded in set(map(type, order)):
            for position, node in enumerate(order):
                if type(node) is Recorded:
                    self.held[position] = node
        self.rand_args = walk.rand_args() if walk.rands else ()
        self.device = device
        self.copies: Optional[list[Node]] = None

    def copy(self, position: int) -> Node:
        if self.copies is None:
            self.copies = self._copy()
        return self.copies[position]

    def _copy(self) -> list[Node]:
        copies: list[Node] = []
        rands = iter(self.rand_args)
        for (op, arg, shape, dtype, sources), held in zip(self.plan.nodes, self.held):
            if not isinstance(held, weakref.ref):
                copies.append(held)
                continue
            arg = next(rands) if op is Op.RAND else arg
            copies.append(Recorded(op, tuple(copies[s] for s in sources), arg, shape, dtype, self.device, held))
        return copies


class Origin:
    """How one realized node was computed: a position in its realize's `Origins`."""

    __slots__ = ("origins", "position")

    def __init__(self, origins: Origins, position: int):
        self.origins, self.position = origins, position

    def node(self) -> Node:
        """The detached copy of the node's graph (made at the first call, shared by the realize's targets)."""
        return self.origins.copy(self.position)


def canonical(node: Node) -> Optional[Node]:
    """The live node a copy stands for; a copy whose node died is itself, a placeholder's is None."""
    if isinstance(node, Recorded):
        live = node.target()
        if live is not None:
            return live
        return None if node.placeholder else node
    return node


def recorded_structure(node: Node) -> Node:
    """The node whose op, sources and arg say how `node` was computed: its origin if it was realized."""
    if node.op is Op.BUFFER and node.origin is not None:
        return node.origin.node()
    return node
