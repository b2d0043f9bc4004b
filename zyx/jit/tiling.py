"""Choosing how many outputs each work item computes.

A matrix product (a sum over k of a product of two operands, one broadcast along each output axis) reads
each operand value once per output; a work item computing a TM x TN tile of outputs reads TM + TN values
per k for TM * TN multiply-adds. The product is recognised in the trace by its shape, not its history:
SUM over one axis of MUL(EXPAND(a), EXPAND(b)), casts allowed, a and b broadcast along different axes.
"""
from __future__ import annotations

import os
from typing import Container, Optional

from ..trace.node import Node
from ..trace.ops import ELEMENTWISE_OPS, MOVEMENT_OPS, Op

CPU_TILE = (8, 16)  # fastest on PoCL 3.1 here (16 = one AVX-512 vector of B per k)
GPU_TILE = (4, 4)


def _strip_casts(node: Node) -> Node:
    while node.op is Op.CAST:
        node = node.src[0]
    return node


def broadcast_axes(node: Node) -> set[int]:
    """Axes along which an EXPAND repeats its source."""
    if node.op is not Op.EXPAND:
        return set()
    return {axis for axis, (s, t) in enumerate(zip(node.src[0].shape, node.shape)) if s == 1 and t != 1}


def matmul_axes(node: Node) -> Optional[tuple[int, int]]:
    """(n axis, m axis) of the reduction's input if `node` is a matrix product, else None."""
    if node.op is not Op.SUM or len(node.arg) != 1:
        return None
    product = _strip_casts(node.src[0])
    if product.op is not Op.MUL:
        return None
    left, right = (_strip_casts(s) for s in product.src)
    along_left, along_right = broadcast_axes(left), broadcast_axes(right)
    k = node.arg[0]
    m_axes = sorted(along_left - along_right - {k})
    n_axes = sorted(along_right - along_left - {k})
    if not m_axes or not n_axes:
        return None
    return n_axes[-1], m_axes[-1]


def hosted_matmul(root: Node, materialized: dict[int, Node], loaded: Container[int] = ()) -> Optional[Node]:
    """The matrix product this kernel computes at its own output positions, if any (an empty one, k or the output
    of no elements, is no product to plan: its kernel sums nothing). A product among `loaded`, the ids of stored
    values the kernel reads (earlier kernels store them, or kernels of their own), is none of its own (one it
    stores itself beside its root is: W7's dY·W_outᵀ, read again elsewhere, untiled at 15.5 ms where a
    `materialized` product was skipped too): GELU's backward, dY·W_outᵀ times a function of the stored
    pre-activation x̂·W_fcᵀ, planned the pre-activation's tiles and walked its own product from memory, untiled
    (4.3 ms on the H200 where the product alone took 1.6), and elementwise kernels reading a stored product were
    shaped as products (on tensor cores 128 outputs an item, written out one by one)."""
    stack, seen = [root], set()
    while stack:
        node = stack.pop()
        if id(node) in seen or (node is not root and id(node) in loaded):
            continue
        seen.add(id(node))
        if matmul_axes(node) is not None and node.numel == root.numel and node.src[0].numel:
            return node
        if node is not root and id(node) in materialized:
            continue
        if node.op in ELEMENTWISE_OPS or node.op in MOVEMENT_OPS or node is root:
            stack.extend(node.src)
    return None


def env_sizes(name: str, default: tuple[int, int]) -> tuple[int, int]:
    """ROWSxCOLS from the environment variable `name` (to tune a new device), else `default`."""
    text = os.environ.get(name)
    if text:
        rows, cols = text.lower().split("x")
        return int(rows), int(cols)
    return default


def _tile_sizes(gpu: bool) -> tuple[int, int]:
    """ZYX_TILE=ROWSxCOLS overrides the device's default."""
    return env_sizes("ZYX_TILE", GPU_TILE if gpu else CPU_TILE)


def _largest_divisor(size: int, limit: int) -> int:
    factor = limit
    while factor > 1 and size % factor:
        factor //= 2
    return max(factor, 1)


def space_axes(root: Node, product: Node) -> Optional[tuple[int, int]]:
    """The kernel axes holding the product's n and m axes, if the product's non-unit axes line up with the
    kernel's (same element order)."""
    n_axis, m_axis = matmul_axes(product)  # type: ignore[misc]
    product_axes = [a for a, s in enumerate(product.shape) if s != 1]
    kernel_axes = [a for a, s in enumerate(root.shape) if s != 1]
    if [product.shape[a] for a in product_axes] != [root.shape[a] for a in kernel_axes]:
        return None
    to_space = dict(zip(product_axes, kernel_axes))
    if n_axis not in to_space or m_axis not in to_space:
        return None
    return to_space[n_axis], to_space[m_axis]


def tile_axes(root: Node, materialized: dict[int, Node], loaded: Container[int] = ()) -> Optional[tuple[int, int]]:
    """The kernel axes holding the n and m axes of the product the kernel hosts (`hosted_matmul`), if it hosts one
    that lines up."""
    product = hosted_matmul(root, materialized, loaded)
    return None if product is None else space_axes(root, product)


def choose_tile(root: Node, axes: tuple[int, int], gpu: bool = False) -> dict[int, int]:
    """Outputs per work item along the product's axes in the kernel (`tile_axes`); 1 where none divides."""
    rows, cols = _tile_sizes(gpu)
    return {axes[0]: _largest_divisor(root.shape[axes[0]], rows), axes[1]: _largest_divisor(root.shape[axes[1]], cols)}
