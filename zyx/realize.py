"""Asking for values: realize many tensors at once, so shared work is done once per device."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from .trace.capture import check_not_capturing
from .trace.checks import RangeCheck, checks_in
from .trace.hashing import Walk
from .trace.node import Node
from .trace.ops import Op
from .trace.origin import Origin, Origins

if TYPE_CHECKING:
    from .tensor import Tensor


def realize(*tensors: "Tensor") -> None:
    """Compute the values of `tensors` together; each node becomes a buffer leaf that remembers its origin.

    The range checks in their traces (index tensors) are computed in the same run; if one fails, IndexError is
    raised and no tensor is realized.
    """
    if len(tensors) == 1:  # (`t.realize()`: no grouping to do)
        realize_one(tensors[0])
        return
    check_not_capturing("realize")
    pending: dict[int, Node] = {}
    for t in tensors:
        if not t.node.realized and id(t.node) not in pending:
            pending[id(t.node)] = t.node
    by_device: dict[int, list[Node]] = {}
    for node in pending.values():
        by_device.setdefault(id(node.device), []).append(node)
    for nodes in by_device.values():
        _realize_on_device(nodes)


def realize_one(tensor: "Tensor") -> None:
    """`realize(tensor)`: `Tensor.realize`'s, without the grouping of many tensors."""
    check_not_capturing("realize")
    node = tensor.node
    if node.op is not Op.BUFFER:
        _realize_on_device([node])


def _realize_on_device(nodes: list[Node]) -> None:
    """Realize `nodes` (distinct, unrealized, on one device) in one run."""
    walk = Walk(nodes)
    checks = checks_in(walk.order)
    if checks:  # their counts are computed in the same run
        walk = Walk(nodes + [check.outside for check in checks])
    device = nodes[0].device
    buffers = device.realize_walk(walk)
    if checks:
        _raise_if_failed(checks, buffers[len(nodes):], device)
    origins, plan = Origins(walk, device), walk.plan
    for node, buffer, position, key in zip(nodes, buffers, plan.roots, plan.root_keys):
        node.become_buffer(buffer, Origin(origins, position), key)


def _raise_if_failed(checks: Sequence[RangeCheck], counts: Sequence[Any], device: Any) -> None:
    """The first failed check's IndexError; its values are realized again (only then) to name the offender."""
    for check, count in zip(checks, counts):
        if device.download(count, (), check.outside.dtype).item():
            values: Node = check.values
            buffer = values.buffer if values.realized else device.realize([values])[0]
            raise check.error(device.download(buffer, values.shape, values.dtype))
