"""How a realized node was computed, kept for autodiff without pinning memory.

Realizing a node turns it into a buffer leaf. So that `loss.item()` followed by `loss.backward(params)`
still works, the node keeps a detached copy of its graph (its `origin`):

- every interior node is copied as a `Recorded` node that names the node it copies weakly, so autodiff can
  go back to the live node (a source the user still holds is found again) while the copy pins nothing;
- every realized node inside is a `Recorded` placeholder, again weak: holding it would chain each step of a
  `w = w - lr * g` loop to all the steps before it;
- data leaves (buffers made from user data, which have no history) are held as they are: they cannot chain,
  and a gradient usually needs their values (inputs, labels, `arange` inside `one_hot`).

A gradient that needs the value of a realized tensor nobody holds any more cannot be formed: realizing it
raises a RuntimeError that says so.
"""
from __future__ import annotations

import weakref
from typing import Any, Optional, Sequence

from .node import Node, toposort
from .ops import Op


class Recorded(Node):
    """A node inside an origin copy; `target` weakly names the live node it stands for."""

    __slots__ = ("target",)

    def __init__(self, op: Op, src: tuple[Node, ...], arg: Any, live: Node):
        super().__init__(op, src, arg, live.shape, live.dtype, live.device)
        self.target = weakref.ref(live)

    @property
    def placeholder(self) -> bool:
        """Stands for a realized node (it has no buffer of its own)."""
        return self.op is Op.BUFFER


def is_data_leaf(node: Node) -> bool:
    return node.op is Op.BUFFER and node.origin is None and not isinstance(node, Recorded)


def detached_copy(roots: Sequence[Node], copies: Optional[dict[int, Node]] = None,
                  order: Optional[list[Node]] = None) -> list[Node]:
    """Copies of the unrealized graphs below `roots` (shared work is copied once per `copies` dict;
    `order`: `toposort(roots)`, if known)."""
    copies = {} if copies is None else copies
    for node in (toposort(roots) if order is None else order):
        if id(node) in copies:
            continue
        if isinstance(node, Recorded) or is_data_leaf(node):
            copies[id(node)] = node
        elif node.op is Op.BUFFER:
            copies[id(node)] = Recorded(Op.BUFFER, (), None, node)
        else:
            copies[id(node)] = Recorded(node.op, tuple(copies[id(s)] for s in node.src), node.arg, node)
    return [copies[id(r)] for r in roots]


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
        return node.origin
    return node
