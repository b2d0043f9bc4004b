"""Collectives in a program: a value combined across processes (`zyx.distributed`) as two host steps.

The scheduler gives a COLLECTIVE node no kernel: its sources are stored by kernels (or are inputs), and the node
becomes one `collective_kernel`. `build_program` turns that into two steps: `START` right after the launches that
store its sources (the runtime enqueues their copies into one flat host buffer, a bucket, and hands combining it to
the communication thread) and `FINISH` right before the first launch that reads the result (it waits for the
communication and copies the result back). Kernels between the two run on the device while the host
communicates, and `program._launch_order` puts there every kernel that does not wait for a collective. A step
names its collective as text, "all_reduce sum float32" or "broadcast 0 int64", so a stored program says what it
does.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from ..runtime.collectives import FINISH, START, describe
from ..trace.node import Node
from ..trace.ops import Op
from .kernel_ir import Param, RenderedKernel

__all__ = ["collective_kernel", "place_steps"]


def collective_kernel(node: Node, produced: set[int]) -> RenderedKernel:
    """The scheduler's record of a COLLECTIVE node: it loads its sources and stores itself, with no source code."""
    produced.add(id(node))
    params = [Param("load", source, f"in{i}", source.dtype) for i, source in enumerate(node.src)]
    return RenderedKernel(START, "", node.shape, [*params, Param("store", node, "out", node.dtype)], [node],
                          list(node.src), [s for s in node.src if s.op is not Op.BUFFER], set(), node.numel, None,
                          collective=describe(node.arg, node.dtype.name))


def place_steps(launches: Sequence[Any]) -> list[Any]:
    """Each collective launch (a START: its sources, then its result) moved right after the launches that store its
    sources, and a FINISH (reading only the result's slot) added right before the first later launch reading it."""
    placed: list[Any] = []
    for launch in launches:
        if launch.name != START:
            placed.append(launch)
            continue
        writers = [next(k for k, earlier in enumerate(placed) if source in earlier.args)  # a slot's first user
                   for source in launch.args[:-1] if source[0] == "slot"]
        placed.insert(max(writers, default=-1) + 1, launch)
    ordered: list[Any] = []
    finishes: dict[tuple[str, int], Any] = {}
    for launch in placed:
        for arg in launch.args:
            if arg in finishes:
                ordered.append(finishes.pop(arg))
        ordered.append(launch)
        if launch.name == START:
            result = launch.args[-1]
            finishes[result] = dataclasses.replace(launch, name=FINISH, local_size=None, args=(result,), flops=0,
                                                   bytes_moved=0)  # (a Launch: program.py imports this module)
    return ordered + list(finishes.values())
