"""Asking for values: realize many tensors at once, so shared work is done once per device."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .trace.node import toposort
from .trace.origin import detached_copy

if TYPE_CHECKING:
    from .tensor import Tensor


def realize(*tensors: "Tensor") -> None:
    """Compute the values of `tensors` together; each node becomes a buffer leaf that remembers its origin."""
    from .jit.capture import check_not_capturing
    check_not_capturing("realize")
    pending: dict[int, object] = {}
    for t in tensors:
        if not t.node.realized and id(t.node) not in pending:
            pending[id(t.node)] = t.node
    by_device: dict[int, list] = {}
    for node in pending.values():
        by_device.setdefault(id(node.device), []).append(node)  # type: ignore[attr-defined]
    for nodes in by_device.values():
        order = toposort(nodes)
        origins = detached_copy(nodes, order=order)
        buffers = nodes[0].device.realize(nodes, order)
        for node, buffer, origin in zip(nodes, buffers, origins):
            node.become_buffer(buffer, origin)
