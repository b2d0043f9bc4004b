"""What computing a node costs: the FLOPs and bytes the profiler reports against a device's peak.

FLOPs are the useful work of the trace (one per output element of an elementwise op, one per input element of a
reduction, so a matrix product's multiply and sum come to 2·m·n·k), not what a kernel executes when it recomputes
a fused value; views, casts and leaves cost nothing.
"""
from __future__ import annotations

from typing import Iterable

from .node import Node
from .ops import ELEMENTWISE_OPS, Op, REDUCE_OPS

FREE_OPS = frozenset({Op.CAST, Op.DETACH})  # a conversion or an identity: no arithmetic


def node_flops(node: Node) -> int:
    """Arithmetic operations needed to compute `node` from its sources."""
    if node.op in REDUCE_OPS:
        return node.src[0].numel
    if node.op in ELEMENTWISE_OPS and node.op not in FREE_OPS:
        return node.numel
    return 0


def total_flops(nodes: Iterable[Node]) -> int:
    return sum(node_flops(node) for node in nodes)


def buffer_bytes(node: Node) -> int:
    """Bytes of the buffer that holds `node`'s value."""
    return node.numel * node.dtype.itemsize
