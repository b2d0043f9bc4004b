"""Cutting a trace into kernels.

Start from the nodes to realize; render each as a kernel (render.py fuses every elementwise op, view and
reduction it can host); whatever a kernel must read from memory instead (a reduction used at another
shape, say) becomes a node to materialize, rendered later as its own kernel. Nodes are rendered latest
first, so a kernel computing one reduction can also store another that others need (softmax: one kernel
stores the row max and the row sum, the next divides).
"""
from __future__ import annotations

import heapq
from typing import Sequence

from ..trace.node import Node, toposort
from ..trace.ops import Op
from .rewrite import split_reductions
from .tiling import choose_tile
from .render import KernelBuilder, RenderedKernel, ScheduleConflict


def schedule(targets: Sequence[Node]) -> tuple[list[RenderedKernel], list[Node]]:
    """Kernels, in launch order, that compute every target; and the targets as the kernels know them
    (rewrites may have replaced them; they correspond by position)."""
    targets = split_reductions(targets)
    try:
        return _schedule(targets, allow_extra_outputs=True), targets
    except ScheduleConflict:
        return _schedule(targets, allow_extra_outputs=False), targets


def _schedule(targets: Sequence[Node], allow_extra_outputs: bool) -> list[RenderedKernel]:
    position = {id(node): i for i, node in enumerate(toposort(targets))}
    materialized: dict[int, Node] = {id(t): t for t in targets}
    produced: set[int] = set()
    kernels: list[RenderedKernel] = []
    queue: list[tuple[int, int]] = []
    queued: set[int] = set()

    def enqueue_pending() -> None:
        for key, node in materialized.items():
            if key not in produced and key not in queued:
                queued.add(key)
                heapq.heappush(queue, (-position[key], key))

    enqueue_pending()
    while queue:
        _, key = heapq.heappop(queue)
        if key in produced:
            continue
        root = materialized[key]
        builder = KernelBuilder(root, materialized, produced, allow_extra_outputs, choose_tile(root, materialized))
        kernels.append(builder.build())
        enqueue_pending()
    return _launch_order(kernels, allow_extra_outputs)


def _launch_order(kernels: list[RenderedKernel], allow_extra_outputs: bool) -> list[RenderedKernel]:
    """Producers before consumers; a cycle (only possible through extra outputs) asks for a plainer schedule."""
    producer = {id(node): k for k, kernel in enumerate(kernels) for node in kernel.outputs}
    ordered: list[RenderedKernel] = []
    state: dict[int, int] = {}  # 1 visiting, 2 done

    def visit(k: int) -> None:
        if state.get(k) == 2:
            return
        if state.get(k) == 1:
            if allow_extra_outputs:
                raise ScheduleConflict(kernels[k].outputs[0])
            raise RuntimeError("zyx scheduler produced a cyclic schedule")
        state[k] = 1
        for node in kernels[k].loads:
            if node.op is not Op.BUFFER:
                visit(producer[id(node)])
        state[k] = 2
        ordered.append(kernels[k])

    for k in range(len(kernels)):
        visit(k)
    return ordered
