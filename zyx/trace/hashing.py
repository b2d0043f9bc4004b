"""Structural hashing: the same program on same-shaped inputs hashes equal in any process.

Input data, random seeds and offsets, object ids and Python's `hash()` never enter the hash; the order in
which leaves are first met does, so the caches keyed on it can bind inputs by position.
"""
from __future__ import annotations

from typing import Sequence

import xxhash

from .node import Node, toposort
from .ops import Op


def describe(node: Node, numbering: dict[int, int]) -> str:
    """One node as text: op, shape, dtype, the arg that changes semantics, and its sources by number."""
    arg = "" if node.op in (Op.BUFFER, Op.RAND) else repr(_arg_text(node.arg))
    sources = ",".join(str(numbering[id(s)]) for s in node.src)
    return f"{node.op.name}|{node.shape}|{node.dtype.name}|{arg}|{sources}"


def _arg_text(arg: object) -> object:
    if isinstance(arg, float):
        return arg.hex()  # exact, and distinguishes -0.0 and nan payloads alike in every process
    if isinstance(arg, tuple):
        return tuple(_arg_text(a) for a in arg)
    return arg if not hasattr(arg, "name") else arg.name  # DType args hash by name


def structural_hash(roots: Sequence[Node]) -> str:
    """The xxh3-128 hex digest of the graph below `roots` (in that order)."""
    return signature(roots)[0]


def signature(roots: Sequence[Node]) -> tuple[str, list[Node], list[Node]]:
    """The structural hash, with the BUFFER leaves and RAND nodes in the order the hash numbered them.

    A program cached under the hash binds its inputs by these positions.
    """
    digest = xxhash.xxh3_128()
    numbering: dict[int, int] = {}
    leaves: list[Node] = []
    rands: list[Node] = []
    for node in toposort(roots):
        numbering[id(node)] = len(numbering)
        if node.op is Op.BUFFER:
            leaves.append(node)
        elif node.op is Op.RAND:
            rands.append(node)
        digest.update(describe(node, numbering).encode())
        digest.update(b";")
    digest.update(("roots:" + ",".join(str(numbering[id(r)]) for r in roots)).encode())
    return digest.hexdigest(), leaves, rands
