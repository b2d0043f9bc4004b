"""Structural hashing: the same program on same-shaped inputs hashes equal in any process.

Input data, random seeds and offsets, object ids and Python's `hash()` never enter the hash; the order in
which leaves are first met does, so the caches keyed on it can bind inputs by position.
"""
from __future__ import annotations

from typing import Optional, Sequence

import xxhash

from .node import Node, toposort
from .ops import Op


def describe(node: Node, numbering: dict[int, int]) -> str:
    """One node as text: op, shape, dtype, the arg that changes semantics, and its sources by number."""
    if node.key is None:  # the part that depends on the node alone is kept on it
        arg = "" if node.op in (Op.BUFFER, Op.RAND) else repr(_arg_text(node.arg))
        node.key = f"{node.op.name}|{node.shape}|{node.dtype.name}|{arg}|"
    return node.key + ",".join([str(numbering[id(s)]) for s in node.src])


def _arg_text(arg: object) -> object:
    if isinstance(arg, float):
        return arg.hex()  # exact, and distinguishes -0.0 and nan payloads alike in every process
    if isinstance(arg, tuple):
        return tuple(_arg_text(a) for a in arg)
    return arg if not hasattr(arg, "name") else arg.name  # DType args hash by name


def structural_hash(roots: Sequence[Node]) -> str:
    """The xxh3-128 hex digest of the graph below `roots` (in that order)."""
    return signature(roots)[0]


def signature(roots: Sequence[Node], order: Optional[list[Node]] = None) -> tuple[str, list[Node], list[Node]]:
    """The structural hash, with the BUFFER leaves and RAND nodes in the order the hash numbered them.

    A program cached under the hash binds its inputs by these positions. `order`: `toposort(roots)`, if known.
    """
    numbering: dict[int, int] = {}
    leaves: list[Node] = []
    rands: list[Node] = []
    parts = []
    for node in (toposort(roots) if order is None else order):
        numbering[id(node)] = len(numbering)
        if node.op is Op.BUFFER:
            leaves.append(node)
        elif node.op is Op.RAND:
            rands.append(node)
        parts.append(describe(node, numbering))
    digest = xxhash.xxh3_128(";".join(parts).encode())
    digest.update(("roots:" + ",".join(str(numbering[id(r)]) for r in roots)).encode())
    return digest.hexdigest(), leaves, rands
