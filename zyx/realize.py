"""Asking for values: realize many tensors at once, so shared work is done once per device."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from .trace.capture import check_not_capturing
from .trace.checks import RangeCheck, checks_in
from .trace.hashing import Walk
from .trace.node import Node
from .trace.origin import record_origins

if TYPE_CHECKING:
    from .tensor import Tensor


def realize(*tensors: "Tensor") -> None:
    """Compute the values of `tensors` together; each node becomes a buffer leaf that remembers its origin.

    The range checks in their traces (index tensors) are computed in the same run; if one fails, IndexError is
    raised and no tensor is realized.
    """
    check_not_capturing("realize")
    if len(tensors) == 1:  # (`t.realize()`: no grouping to do)
        if not tensors[0].node.realized:
            _realize_on_device([tensors[0].node])
        return
    pending: dict[int, Node] = {}
    for t in tensors:
        if not t.node.realized and id(t.node) not in pending:
            pending[id(t.node)] = t.node
    by_device: dict[int, list[Node]] = {}
    for node in pending.values():
        by_device.setdefault(id(node.device), []).append(node)
    for nodes in by_device.values():
        _realize_on_device(nodes)


def _realize_on_device(nodes: list[Node]) -> None:
    """Realize `nodes` (distinct, unrealized, on one device) in one run."""
    walk = Walk(nodes)
    checks = checks_in(walk.order)
    if checks:  # their counts are computed in the same run
        walk = Walk(nodes + [check.outside for check in checks])
    device = nodes[0].device
    buffers = device.realize(walk.roots, walk)
    _raise_if_failed(checks, buffers[len(nodes):], device)
    for node, buffer, origin in zip(nodes, buffers, record_origins(walk, device)):
        node.become_buffer(buffer, origin)


def _raise_if_failed(checks: Sequence[RangeCheck], counts: Sequence[Any], device: Any) -> None:
    """The first failed check's IndexError; its values are realized again (only then) to name the offender."""
    for check, count in zip(checks, counts):
        if device.download(count, (), check.outside.dtype).item():
            values: Node = check.values
            buffer = values.buffer if values.realized else device.realize([values])[0]
            raise check.error(device.download(buffer, values.shape, values.dtype))
