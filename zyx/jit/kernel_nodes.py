"""Which trace nodes a scheduled kernel computes, and what running it costs.

A kernel stores its `outputs` and reads its `loads` from memory; everything between (walking the outputs'
sources down to a load) is fused into it. The profiler's FLOPs and bytes and `zyx.viz`'s clusters both come
from here. A node fused into two kernels belongs to both (each recomputes it).
"""
from __future__ import annotations

from ..trace.cost import buffer_bytes, total_flops
from ..trace.node import Node
from .kernel_ir import RenderedKernel


def contained_nodes(kernel: RenderedKernel) -> list[Node]:
    """The nodes `kernel` computes (its outputs and everything fused into them), sources first. A product it sums
    from partials another kernel stores (`summed_apart`) is computed here, what is below it in that kernel."""
    apart = {id(node) for node in kernel.summed_apart}
    read = {id(node) for node in kernel.loads} - {id(node) for node in kernel.outputs}
    seen: set[int] = set()
    order: list[Node] = []
    stack = [(node, False) for node in reversed(kernel.outputs)]
    while stack:
        node, sources_done = stack.pop()
        if sources_done:
            order.append(node)
        elif id(node) not in seen and id(node) not in read:
            seen.add(id(node))
            stack.append((node, True))
            if id(node) not in apart:
                stack.extend((src, False) for src in reversed(node.src))
    return order


def kernel_flops(kernel: RenderedKernel) -> int:
    """The useful FLOPs of the nodes fused into the kernel (trace/cost.py says what counts): a product summed from
    partials counts in the kernel storing the partials."""
    apart = {id(node) for node in kernel.summed_apart}
    return total_flops(node for node in contained_nodes(kernel) if id(node) not in apart)


def kernel_bytes(kernel: RenderedKernel) -> int:
    """Bytes of the buffers the kernel reads and writes (each once, however often it reads one)."""
    nodes = {id(node): node for node in [*kernel.loads, *kernel.outputs]}
    return sum(buffer_bytes(node) for node in nodes.values())
