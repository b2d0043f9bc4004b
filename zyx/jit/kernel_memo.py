"""Kernels of regions met before, found again: a GPT's twelve layers are one layer's kernels twelve times.

Building a kernel (lowering, shaping, printing) is most of a schedule's time: W7's 520 kernels took 11 minutes of
Python on a 2-core CPU. What a kernel becomes depends on its region: the nodes the scheduler walks from its roots
(the node to store, and the attention-gradient products that may share its kernel) down to what it reads from
memory, and what the scheduler decided of each before the build (to store it, stored by an earlier kernel, stored
apart, an early reduction: `Facts`). The traits, the tuned choices and whether extra outputs are allowed are fixed
per memo (one per schedule call) or part of its key, as is the choice shaping the kernel of a node the scheduler
made (a split product's partials, W7's four weight gradients a layer: 96 builds of 3 s otherwise). A region met
again, node for node (each node's own key, `Node.key`, its sources, the decisions), gets the first region's kernel
with its nodes re-bound by position, and the build's decisions again (the values it stored apart).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

from .. import counters
from ..trace.node import Node
from ..trace.ops import Op
from .choices import Choice
from .kernel_ir import RenderedKernel
from .kernel_nodes import contained_nodes


@dataclass(frozen=True)
class Facts:
    """What the scheduler had decided before a kernel's build, by node id."""

    materialized: set[int] | dict
    produced: set[int]
    apart: set[int]
    early: set[int]

    def of(self, node: Node) -> int:
        key = id(node)
        return ((key in self.materialized) | (key in self.produced) << 1 | (key in self.apart) << 2
                | (key in self.early) << 3)


@dataclass(frozen=True)
class _Entry:
    """A kernel built for a region: the region's walk (`_walk`), where the walk stopped, the region's nodes by
    position, and the nodes the build stored apart."""

    parts: tuple
    stops: tuple[bool, ...]
    nodes: tuple[Node, ...]
    kernel: RenderedKernel
    stored_apart: tuple[Node, ...]
    planned: tuple[tuple[Node, Choice], ...]  # nodes the build made (a split product's partials), their choices


class KernelMemo:
    """The kernels of one schedule call, by region."""

    def __init__(self) -> None:
        self._entries: dict[tuple, list[_Entry]] = {}

    def find(self, roots: Sequence[Node], facts: Facts, extra_outputs: bool, choice: Optional[Choice] = None
             ) -> Optional[tuple[RenderedKernel, list[Node], list[tuple[Node, Choice]]]]:
        """The kernel a build for `roots` (shaped with `choice` where the scheduler planned one) would give, the
        nodes it would store apart and the nodes it would make with their kernels' choices (made anew from this
        region's nodes); None if no region met before is this one."""
        for entry in self._entries.get(_index(roots, facts, extra_outputs, choice), ()):
            stops = entry.stops  # (a walk reaching past the entry's nodes departs from its parts there)
            walked = _walk(roots, facts, lambda position, node: position < len(stops) and stops[position],
                           entry.parts)
            if walked is not None:
                counters.bump("kernel_memo_hits")
                mapping = {id(old): new for old, new in zip(entry.nodes, walked[1])}
                made = [(_remade(node, mapping), made_choice) for node, made_choice in entry.planned]
                return (_rebound(entry.kernel, mapping), [mapping[id(node)] for node in entry.stored_apart],
                        made)
        return None

    def remember(self, roots: Sequence[Node], facts: Facts, extra_outputs: bool, kernel: RenderedKernel,
                 stored_apart: Sequence[Node], choice: Optional[Choice] = None,
                 planned: Sequence[tuple[Node, Choice]] = ()) -> None:
        """Keep `kernel`, built for `roots` (with the planned `choice`, if any) when the scheduler knew `facts`,
        storing `stored_apart` apart and making the nodes `planned` names for kernels of their own (a split
        product's partials, W7's four weight gradients a layer: 0.06 s each here); a kernel naming a node outside
        its region that is not one of those, or one of those made from a node outside it, is not kept. The region
        goes on below the values stored apart: the attempts that chose them lowered what is below them, and through
        what the kernel loads to a value stored apart below it (a value the build chose to store under a product
        it left to a kernel of its own: W7's attention gradient, the projection weight's cast)."""
        computed = {id(node) for node in contained_nodes(kernel)}
        loaded = {id(node) for node in kernel.loads}
        walked_on = {id(node) for node in (*roots, *stored_apart)}  # (what a kernel cut to fit was built from too)

        def stops(position: int, node: Node) -> bool:
            key = id(node)
            return key not in walked_on and key not in computed and (
                node.op is Op.BUFFER or key in loaded or key in facts.materialized)

        parts, nodes = _walk(roots, facts, stops)
        region = {id(node) for node in nodes}
        if any(id(node) not in region for node in stored_apart):
            walked_on |= _leading_to(roots, {id(node) for node in stored_apart}, facts)
            parts, nodes = _walk(roots, facts, stops)
            region = {id(node) for node in nodes}
        made = _made_below(tuple(node for node, _ in planned), region)
        if made is None:
            return
        named = [*(p.node for p in kernel.params), *kernel.outputs, *kernel.loads, *kernel.needs, *stored_apart,
                 *kernel.summed_apart]
        if any(id(node) not in region and id(node) not in made for node in named) or not kernel.misaligned <= (
                region | made):
            return
        stop_at = tuple(stops(position, node) for position, node in enumerate(nodes))
        entry = _Entry(parts, stop_at, tuple(nodes), kernel, tuple(stored_apart), tuple(planned))
        for allowed in (extra_outputs, False) if _stores_roots_only(kernel, roots) else (extra_outputs,):
            self._entries.setdefault(_index(roots, facts, allowed, choice), []).append(entry)


def _leading_to(roots: Sequence[Node], targets: set[int], facts: Facts) -> set[int]:
    """The nodes below `roots` (down to the buffers and the values stored before the build) from which a node of
    `targets` (ids) is reached, by id."""
    leading: set[int] = set()
    done: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False) for root in roots]
    while stack:
        node, sources_done = stack.pop()
        key = id(node)
        if sources_done:
            if key in targets or any(id(source) in leading for source in node.src):
                leading.add(key)
            continue
        if key in done:
            continue
        done.add(key)
        stack.append((node, True))
        if node.op is not Op.BUFFER and (key not in facts.materialized or any(node is root for root in roots)):
            stack.extend((source, False) for source in node.src if id(source) not in done)
    return leading


def _made_below(made: Sequence[Node], region: set[int]) -> Optional[set[int]]:
    """The ids of the nodes the scheduler made from `region`'s (ids): `made` and what they are made of down to the
    region's nodes; None where that reaches a buffer or constant outside the region (a node not made again)."""
    found: set[int] = set()
    stack = list(made)
    while stack:
        node = stack.pop()
        key = id(node)
        if key in region or key in found:
            continue
        if not node.src:
            return None
        found.add(key)
        stack.extend(node.src)
    return found


def _remade(node: Node, mapping: dict[int, Node]) -> Node:
    """`node`, which the scheduler made from a region's nodes, made alike from those `mapping` gives for them (by
    id); what it is made of is made again once, and added to `mapping`."""
    stack: list[tuple[Node, bool]] = [(node, False)]
    while stack:
        current, sources_done = stack.pop()
        if id(current) in mapping:
            continue
        if sources_done:
            mapping[id(current)] = Node(current.op, tuple(mapping[id(s)] for s in current.src), current.arg,
                                        current.shape, current.dtype, current.device)
            continue
        stack.append((current, True))
        stack.extend((source, False) for source in current.src if id(source) not in mapping)
    return mapping[id(node)]


def _stores_roots_only(kernel: RenderedKernel, roots: Sequence[Node]) -> bool:
    """Whether `kernel` stores nothing but its roots: then a build without extra outputs is the same build (the
    lowering stores a value beside its roots only where they are allowed, and otherwise does alike), so the
    kernel serves regions scheduled without them too (a schedule whose cycles were not broken in time is built
    again without any: W7's 12-layer step, whose second full schedule then took as long as its first)."""
    return len(kernel.outputs) == len(roots) and all(any(o is r for r in roots) for o in kernel.outputs)


def _index(roots: Sequence[Node], facts: Facts, extra_outputs: bool, choice: Optional[Choice]) -> tuple:
    """What regions that may be equal share: the root's key, decisions and sources' keys, the number of roots, the
    planned choice."""
    root = roots[0]
    return len(roots), extra_outputs, root.key, facts.of(root), tuple(source.key for source in root.src), choice


def _walk(roots: Sequence[Node], facts: Facts, stop: Callable[[int, Node], bool],
          expected: Optional[tuple] = None) -> Optional[tuple[tuple, list[Node]]]:
    """The region below `roots` as a tuple (nodes depth first, sources in order: a node met before is its
    position, a new one its key, decisions, whether the walk stops there and its sources' count), and its nodes
    by position; `stop(position, node)` says where the walk ends. Given the `expected` tuple, None as soon as
    the walk departs from it."""
    positions: dict[int, int] = {}
    nodes: list[Node] = []
    parts: list = []
    stack = list(reversed(roots))
    while stack:
        node = stack.pop()
        seen = positions.get(id(node))
        if seen is None:
            positions[id(node)] = len(nodes)
            ends = stop(len(nodes), node)
            part: object = (node.key, facts.of(node), ends, len(node.src))
            nodes.append(node)
            if not ends:
                stack.extend(reversed(node.src))
        else:
            part = seen
        if expected is not None and (len(parts) >= len(expected) or expected[len(parts)] != part):
            return None
        parts.append(part)
    if expected is not None and len(parts) != len(expected):
        return None
    return tuple(parts), nodes


def _rebound(kernel: RenderedKernel, mapping: dict[int, Node]) -> RenderedKernel:
    """`kernel` reading and storing the nodes `mapping` gives for its own (by id)."""
    params = {id(param): replace(param, node=mapping[id(param.node)]) for param in kernel.params}
    if kernel.ir is not None:
        params.update((id(param), replace(param, node=mapping[id(param.node)])) for param in kernel.ir.params
                      if id(param) not in params)
    nodes = lambda listed: [mapping[id(node)] for node in listed]  # noqa: E731
    return replace(kernel, params=[params[id(param)] for param in kernel.params], outputs=nodes(kernel.outputs),
                   loads=nodes(kernel.loads), needs=nodes(kernel.needs), summed_apart=tuple(nodes(kernel.summed_apart)),
                   misaligned={id(mapping[key]) for key in kernel.misaligned},
                   ir=None if kernel.ir is None else replace(kernel.ir, params=tuple(params[id(p)]
                                                                                     for p in kernel.ir.params)))
