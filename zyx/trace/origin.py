"""How a realized node was computed, kept for autodiff without pinning memory.

Realizing a node turns it into a buffer leaf. So that `loss.item()` followed by `loss.backward(params)`
still works, the node keeps a detached copy of its graph: interior nodes are copied, and every realized
node inside is replaced by a weak placeholder. The copy holds no buffer alive, so `w = w - lr * g` loops
stay flat; a gradient asked through a realized tensor that nobody holds any more cannot be formed (None).
"""
from __future__ import annotations

import weakref
from typing import Optional

from .node import Node, toposort
from .ops import Op


class Placeholder(Node):
    """Stands for a realized node inside an origin copy, without keeping it alive."""

    __slots__ = ("target",)

    def __init__(self, realized: Node):
        super().__init__(Op.BUFFER, (), None, realized.shape, realized.dtype, realized.device)
        self.target = weakref.ref(realized)


def detached_copy(root: Node) -> Node:
    """Copy the unrealized graph below `root`, with placeholders for realized nodes."""
    copies: dict[int, Node] = {}
    for node in toposort([root]):
        if node.op is Op.BUFFER:
            copies[id(node)] = node if isinstance(node, Placeholder) else Placeholder(node)
            continue
        copy = Node(node.op, tuple(copies[id(s)] for s in node.src), node.arg, node.shape, node.dtype, node.device)
        copies[id(node)] = copy
    return copies[id(root)]


def canonical(node: Node) -> Optional[Node]:
    """The real node a placeholder stands for (None once it died); any other node is itself."""
    return node.target() if isinstance(node, Placeholder) else node


def recorded_structure(node: Node) -> Node:
    """The node whose op, sources and arg say how `node` was computed: its origin if it was realized."""
    if node.op is Op.BUFFER and node.origin is not None:
        return node.origin
    return node
