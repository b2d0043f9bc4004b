"""Realized tensors become buffer leaves: a `w = w - lr * grad` loop keeps its graph and memory flat."""
from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

import zyx
from zyx.trace.node import Node
from zyx.trace.origin import Recorded, recorded_structure


def reachable(*tensors) -> int:
    """Nodes reachable from `tensors` through sources, recorded origins and live copy targets."""
    seen: set[int] = set()
    stack: list[Node] = [t.node for t in tensors]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(node.src)
        if node.origin is not None:
            stack.append(recorded_structure(node))
        if isinstance(node, Recorded) and node.target() is not None:
            stack.append(node.target())
    return len(seen)


def live_nodes() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), Node))  # (isinstance wakes lazy modules)


def sgd_steps(w, x, y, steps, read_loss):
    for _ in range(steps):
        loss = ((x * w - y) ** 2).mean()
        if read_loss:
            loss.item()  # realize the loss first: its graph is released, backward works from its origin
        grad, = loss.backward([w])
        w = w - 0.01 * grad
        w.realize()
    return w, loss


@pytest.mark.long(devices=("cpu", "torch"))  # (the trace's memory: the same on every device; OpenCL's in CI)
def test_sgd_loop_stays_flat(device):
    x = zyx.tensor([1.0, 2.0, -1.5, 0.8], device=device)
    y = zyx.tensor([0.5, -1.0, 2.0, 1.0], device=device)
    w, loss = sgd_steps(zyx.zeros(4, device=device), x, y, 100, read_loss=False)
    graph_100, nodes_100, objects_100 = reachable(w, loss), live_nodes(), len(gc.get_objects())
    w, loss = sgd_steps(w, x, y, 9_600, read_loss=False)
    tracemalloc.start()
    grown = []
    for _ in range(2):  # a leak grows in every window; a shared table that other tests filled may resize in one
        before = tracemalloc.get_traced_memory()[0]
        w, loss = sgd_steps(w, x, y, 300, read_loss=False)
        grown.append(tracemalloc.get_traced_memory()[0] - before)
    tracemalloc.stop()
    graph_10k, nodes_10k, objects_10k = reachable(w, loss), live_nodes(), len(gc.get_objects())
    assert graph_10k == graph_100
    assert nodes_10k <= nodes_100 + 5
    assert objects_10k <= objects_100 + 50
    # one step's graph and origin copy take several KB, so a leak would be ~1 MB here; allow interpreter noise
    assert min(grown) < 64 * 1024, f"memory grew by {grown} bytes over two windows of 300 steps"
    np.testing.assert_allclose(w.numpy(), y.numpy() / x.numpy(), rtol=1e-3)  # it did converge


def test_loop_with_item_then_backward_stays_flat(device):
    x = zyx.tensor([1.0, 2.0, -1.0], device=device)
    y = zyx.tensor([0.5, 1.0, 2.0], device=device)
    w, loss = sgd_steps(zyx.zeros(3, device=device), x, y, 50, read_loss=True)
    graph_50, nodes_50 = reachable(w, loss), live_nodes()
    w, loss = sgd_steps(w, x, y, 1_000, read_loss=True)
    assert reachable(w, loss) == graph_50
    assert live_nodes() <= nodes_50 + 5


def test_realized_node_is_a_buffer_leaf(device):
    x = zyx.tensor([1.0, 2.0], device=device)
    y = (x.exp() * 2).sum()
    assert not y.node.realized and y.node.src
    y.realize()
    assert y.node.realized and y.node.src == () and y.node.buffer is not None
    assert y.node.origin is not None  # kept for backward, as a detached copy


def test_realized_slice_does_not_pin_its_source():
    """CPU backend: realizing a small view of a big intermediate keeps only the small part."""
    device = zyx.CPU()
    x = zyx.tensor(np.ones((500, 500)), device=device)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    rows = (x * 2)[:2]  # a contiguous view of the product
    rows.realize()
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert rows.numpy().sum() == 2000.0
    assert held < 100_000  # the 2 MB product was freed
