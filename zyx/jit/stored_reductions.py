"""A reduction stored once is read, not summed again: kernels built before another kernel stored a reduction they
compute are built again reading it.

The scheduler builds kernels latest first, and a kernel computes every reduction it can host (lower.py). A reduction
that a kernel built later reads at another shape (summed again, say) is stored then, by a kernel of its own; the
kernels built before still compute it. W7's AdamW update of a bias summed the bias's gradient over the 16 384 token
rows again, beside the kernel storing that gradient for the gradient clipping's norm. Once every kernel is built,
each computing a reduction another kernel stores is built again (the scheduler's `rebuild`), and the new kernel takes
the old one's place where it computes fewer such reductions. Kernels whose values nothing reads any more (what only
the old kernel read) are then left out.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from ..trace.node import Node
from ..trace.ops import REDUCE_OPS
from .kernel_ir import RenderedKernel
from .kernel_nodes import contained_nodes

# the kernel at a position built again with every value other kernels store read from memory; None where that build
# would store other values than the kernel does, or need a value no kernel stores
Rebuild = Callable[[int], Optional[RenderedKernel]]


def recomputed_reductions(kernel: RenderedKernel, produced: set[int]) -> list[Node]:
    """The reductions `kernel` computes that another kernel stores (`produced`: the ids of every kernel's stores)."""
    own = {id(node) for node in kernel.outputs}
    return [node for node in contained_nodes(kernel)
            if node.op in REDUCE_OPS and id(node) in produced and id(node) not in own]


def read_stored_reductions(kernels: list[RenderedKernel], roots: list[Node], produced: set[int],
                           targets: Sequence[Node], rebuild: Rebuild) -> tuple[list[RenderedKernel], list[Node]]:
    """`kernels` (with their `roots`, by position) where each kernel computing a reduction another stores is built
    again to read it, if that build computes fewer such reductions, without the kernels whose stores no kernel reads
    then and no target is: new lists, or `kernels` and `roots` themselves where no kernel was built again."""
    reading = list(kernels)
    for k, kernel in enumerate(kernels):
        recomputed = recomputed_reductions(kernel, produced)
        if not recomputed:
            continue
        again = rebuild(k)
        if again is not None and len(recomputed_reductions(again, produced)) < len(recomputed):
            reading[k] = again
    if all(a is b for a, b in zip(reading, kernels)):
        return kernels, roots
    return _read_only(reading, roots, targets)


def _read_only(kernels: list[RenderedKernel], roots: list[Node], targets: Sequence[Node]
               ) -> tuple[list[RenderedKernel], list[Node]]:
    """The kernels and roots without the kernels none of whose stores a target is or a kept kernel reads."""
    kept = list(range(len(kernels)))
    while True:
        wanted = {id(node) for node in targets} | {id(node) for k in kept for node in kernels[k].loads}
        read = [k for k in kept if any(id(node) in wanted for node in kernels[k].outputs)]
        if len(read) == len(kept):
            return [kernels[k] for k in kept], [roots[k] for k in kept]
        kept = read
