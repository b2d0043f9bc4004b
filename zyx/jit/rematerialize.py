"""Large cheap values computed again for the backward pass instead of being kept alive through the forward.

A training step's forward pass stores values that its backward reads again much later: GELU(h) in a GPT's MLP is
read by the next product at once and by that product's weight gradient after the rest of the forward and most of
the backward, while h itself stays alive for GELU's backward anyway. Kept, each such value is held across the
whole step's peak (W7: 12 x 192 MiB of GELU outputs, 2.3 of 12.7 GiB planned). Here each late use of such a value
reads a copy of it instead: the same elementwise ops over the same stored sources, as new nodes, stored just
before the backward's kernels read it (a write and a read of the value, ~0.1 ms at W7's size on the H200). The
original is then freed after its forward readers. torch.compile's partitioner makes the same trade.

Only on GPUs: a CPU's product copies a computed operand into panels for itself (cpu_matmul.py), which it frees
after the product, so no computed operand outlives its first reader there.

"When" is measured in levels (the longest chain of ops from the leaves): a kernel reading a value runs at the
level of the reduction or stored value its read feeds, so a use feeding a kernel REMAT_MIN_LEVELS levels above
the value is late. A value is copied only where it is at least REMAT_MIN_BYTES, computed by elementwise ops and
views alone from stored values and leaves (no product, no random numbers: copied, nothing but a cheap elementwise
kernel is added), its large sources (more than a REMAT_SMALL-th of its size) are read late anyway by other
kernels (so the copy holds no extra memory), and it has early uses too (else it is computed late once anyway).
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

from ..trace import node as n
from ..trace.node import Node, toposort
from ..trace.ops import ELEMENTWISE_OPS, LEAF_OPS, MOVEMENT_OPS, Op, REDUCE_OPS
from .tiling import matmul_axes

REMAT_MIN_BYTES = 16 << 20  # smaller values cost little memory kept, and a launch copied
REMAT_MIN_LEVELS = 64       # a use this many levels above the value is late (a GPT block's forward spans ~60)
REMAT_SLACK = 16            # large sources read this many levels before a late use count as alive there
REMAT_SMALL = 64            # sources this many times smaller than the value (biases) may be held beyond it
REMAT_MAX_NODES = 64        # values computed by more ops than this are not copied


def rematerialize(targets: Sequence[Node], stored: dict[int, Node], users: dict[int, list[Node]],
                  kept: Callable[[Node], bool]) -> tuple[list[Node], list[Node]]:
    """The targets of an equivalent graph whose late uses of large cheap values read copies of them, and the
    copies (to store before their readers); `stored`: the values the scheduler stores whatever happens; `kept`:
    whether a value takes enough ops that a product reading it stores it first (values of fewer ops are
    computed where they are read, and a copy would hold no memory less).
    ZYX_REMATERIALIZE=0 keeps the graph as it is."""
    if os.environ.get("ZYX_REMATERIALIZE", "1") == "0":
        return list(targets), []
    order = toposort(targets)
    level: dict[int, int] = {}
    for node in order:
        level[id(node)] = 1 + max((level[id(s)] for s in node.src), default=-1)
    target_ids = {id(t) for t in targets}
    feeds: dict[int, int] = {}  # the highest level of a kernel reading each node's value (through fused ops)
    for node in reversed(order):
        reads = [level[id(u)] if _kernel_root(u, stored) else feeds[id(u)] for u in users.get(id(node), ())]
        feeds[id(node)] = max(reads + ([level[id(node)]] if id(node) in target_ids else []), default=level[id(node)])
    copies: dict[int, Node] = {}      # value id -> its copy
    late_users: dict[int, set[int]] = {}  # value id -> ids of the users that read the copy
    for value in order:
        found = _late_uses(value, stored, users, level, feeds, kept)
        if found is not None:
            late, recipe = found
            copies[id(value)], late_users[id(value)] = _copy(value, recipe), late
    if not copies:
        return list(targets), []
    replaced: dict[int, Node] = {}
    for node in order:
        sources = tuple(copies[id(s)] if id(s) in copies and id(node) in late_users[id(s)] else replaced.get(id(s), s)
                        for s in node.src)
        if any(a is not b for a, b in zip(sources, node.src)):
            replaced[id(node)] = n.Node(node.op, sources, node.arg, node.shape, node.dtype, node.device)
    return [replaced.get(id(t), t) for t in targets], [_under_views(copy) for copy in copies.values()]


def _under_views(value: Node) -> Node:
    """The value a chain of views shows: what a copy stores (a view stored would be as large as it shows)."""
    while value.op in MOVEMENT_OPS:
        value = value.src[0]
    return value


def _kernel_root(node: Node, stored: dict[int, Node]) -> bool:
    """Whether a kernel of its own computes `node` (a reduction, a stored value, a leaf), rather than its readers."""
    return node.op in REDUCE_OPS or node.op in LEAF_OPS or id(node) in stored


def _late_uses(value: Node, stored: dict[int, Node], users: dict[int, list[Node]], level: dict[int, int],
               feeds: dict[int, int], kept: Callable[[Node], bool]) -> Optional[tuple[set[int], set[int]]]:
    """The ids of `value`'s users that read it late where copying it for them pays (see the module), and the ids
    of the nodes computing it; else None."""
    if not (value.op in ELEMENTWISE_OPS or value.op in MOVEMENT_OPS) or id(value) in stored:
        return None
    computed = _under_views(value)
    if (computed.op not in ELEMENTWISE_OPS or id(computed) in stored
            or computed.numel * computed.dtype.itemsize < REMAT_MIN_BYTES or not kept(computed)):
        return None
    uses = {id(u): (level[id(u)] if _kernel_root(u, stored) else feeds[id(u)]) for u in users.get(id(value), ())}
    late = {key for key, at in uses.items() if at - level[id(value)] >= REMAT_MIN_LEVELS}
    if not late or len(late) == len(uses):
        return None
    first_late = min(uses[key] for key in late)
    recipe, sources = _recipe(value, stored)
    if recipe is None:
        return None
    large = [source for source in sources if source.numel * REMAT_SMALL > computed.numel]
    if not large or any(_read_until(source, value, stored, users, level) < first_late - REMAT_SLACK
                        for source in large):
        return None
    return late, recipe


def _recipe(value: Node, stored: dict[int, Node]) -> tuple[Optional[set[int]], list[Node]]:
    """The ids of the nodes computing `value` from stored values, products and leaves, and those sources; (None,
    []) where it takes another reduction (a layer norm's or softmax's row statistics: attention's fused kernels
    know their probabilities by the nodes, and rows kernels may compute statistics where they are read), random
    numbers, a collective, or more than REMAT_MAX_NODES ops."""
    recipe: set[int] = set()
    sources: dict[int, Node] = {}
    stack = [value]
    while stack:
        node = stack.pop()
        if id(node) in recipe or id(node) in sources:
            continue
        if node is not value and (id(node) in stored or node.op in (Op.BUFFER, Op.CONST)):
            sources[id(node)] = node
        elif node.op is Op.SUM and matmul_axes(node) is not None:
            sources[id(node)] = node  # a product: stored by a tiled kernel
        elif node.op in ELEMENTWISE_OPS or node.op in MOVEMENT_OPS:
            recipe.add(id(node))
            if len(recipe) > REMAT_MAX_NODES:
                return None, []
            stack.extend(node.src)
        else:
            return None, []
    return recipe, list(sources.values())


def _read_until(source: Node, value: Node, stored: dict[int, Node], users: dict[int, list[Node]],
                level: dict[int, int]) -> int:
    """The highest level of a kernel reading `source` other than through `value` (through the ops computing it
    too: another kernel fusing them reads `source`)."""
    latest, stack, seen = -1, [source], set()
    while stack:
        for user in users.get(id(stack.pop()), ()):
            if id(user) in seen or user is value:
                continue
            seen.add(id(user))
            if _kernel_root(user, stored):
                latest = max(latest, level[id(user)])
            else:
                stack.append(user)
    return latest


def _copy(value: Node, recipe: set[int]) -> Node:
    """New nodes for the `recipe` computing `value`, over the same sources."""
    made: dict[int, Node] = {}
    stack = [(value, False)]
    while stack:
        node, ready = stack.pop()
        if id(node) in made:
            continue
        if not ready:
            stack.append((node, True))
            stack.extend((s, False) for s in node.src if id(s) in recipe and id(s) not in made)
            continue
        made[id(node)] = n.Node(node.op, tuple(made.get(id(s), s) for s in node.src), node.arg, node.shape,
                                node.dtype, node.device)
    return made[id(value)]
