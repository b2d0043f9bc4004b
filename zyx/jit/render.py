"""Turning a fused group of trace nodes into one OpenCL C kernel.

A kernel owns an output space (the shape of what it stores). Every node it contains is rendered at an index:
a tuple of symbolic expressions over the work-item id and loop variables. Views only rewrite that index
(no copies); elementwise ops become C expressions; a reduction becomes a loop whose body is rendered at
the reduced axes' loop index; a value needed in another shape, or a reduction the space cannot host, is
read from a buffer that an earlier kernel writes (the scheduler decides which).
"""
from __future__ import annotations

import functools
import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Generator, Optional

import xxhash

from ..dtypes import DType
from ..trace.node import Node
from ..trace.ops import ELEMENTWISE_OPS, MOVEMENT_OPS, Op, REDUCE_OPS
from . import opencl_c as c
from .symbolic import Expr

Index = tuple[Expr, ...]
Request = tuple  # (node, index, guard): a value a rendering step needs before it can go on


UNROLL = 8  # accumulators per reduction loop
_LOOP_VARIABLE = re.compile(r"\br\d+\b")


STATEMENT_LIMIT = 384  # per output of a work item: a kernel growing past this stores a value in a kernel of its own
RECOMPUTE_LIMIT = 16   # per output of a work item: a value computed more often than this is stored instead
PARAM_LIMIT = 128      # kernel arguments: OpenCL guarantees 1024 bytes of them, 128 pointers


class KernelTooLarge(Exception):
    """Rendering blew up (a value reused at many indices is recomputed at each, or too many values or buffers
    fused into one kernel); `node` is the value to store in a kernel of its own."""

    def __init__(self, node: Node):
        super().__init__(node)
        self.node = node


class ScheduleConflict(Exception):
    """A kernel would need to read back a reduction it stores itself; the scheduler retries without fusing it."""


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, running = [], 1
    for size in reversed(shape):
        strides.append(running if size != 1 else 0)
        running *= size
    return tuple(reversed(strides))


@functools.lru_cache(maxsize=1 << 16)  # kernels (and vector lanes) map the same indices through the same views
def linear(index: Index, shape: tuple[int, ...]) -> Expr:
    total = Expr(0)
    for expr, stride in zip(index, contiguous_strides(shape)):
        if stride:
            total = total + expr * stride
    return total


@functools.lru_cache(maxsize=1 << 16)
def unravel(flat: Expr, shape: tuple[int, ...]) -> Index:
    return tuple(Expr(0) if size == 1 else (flat // stride) % size
                 for size, stride in zip(shape, contiguous_strides(shape)))


def source_index(node: Node, index: Index) -> tuple[Optional[Index], Optional[str]]:
    """Where a view reads its source for the element at `index`, and the condition (C text) under which that
    read is valid (a PAD's inside), None when always valid; (None, None) when `index` lies in the padding."""
    op, arg, source = node.op, node.arg, node.src[0]
    if op is Op.RESHAPE:
        return unravel(linear(index, node.shape), source.shape), None
    if op is Op.PERMUTE:
        inner: list[Expr] = [Expr(0)] * len(arg)
        for position, axis in enumerate(arg):
            inner[axis] = index[position]
        return tuple(inner), None
    if op is Op.EXPAND:
        return tuple(Expr(0) if s == 1 else e for s, e in zip(source.shape, index)), None
    if op is Op.SHRINK:
        return tuple(e + start for e, (start, _) in zip(index, arg)), None
    if op is Op.FLIP:
        return tuple((Expr(0) - e) + (s - 1) if axis in arg else e
                     for axis, (e, s) in enumerate(zip(index, source.shape))), None
    conditions, padded = [], []
    for e, (before, _), size in zip(index, arg[0], source.shape):
        shifted = e - before
        if shifted.hi < 0 or shifted.lo >= size:
            return None, None
        if shifted.lo >= 0 and shifted.hi < size:
            padded.append(shifted)
            continue
        text = shifted.render()
        if shifted.lo < 0:
            conditions.append(f"({text}>=0)")
        if shifted.hi >= size:
            conditions.append(f"({text}<{size})")
        # inside the valid region the index is in [0, size): an opaque variable with that range
        padded.append(Expr.clamped(shifted, 0, size - 1))
    return tuple(padded), "&&".join(conditions) or None


@dataclass
class Param:
    """One kernel argument: a buffer (read or written) or a random stream's seed/offset."""

    kind: str          # "load", "store", "seed", "offset"
    node: Node
    name: str
    dtype: DType


@dataclass
class RenderedKernel:
    name: str
    source: str
    space: tuple[int, ...]
    params: list[Param]
    outputs: list[Node]
    loads: list[Node]
    needs: list[Node]          # nodes this kernel reads that must be materialized by others
    misaligned: set[int]       # ids of loaded nodes read somewhere other than the position being stored
    global_size: int
    local_size: Optional[int]
    longest_reduction: int = 0  # elements the longest reduction computed in this kernel walks
    collective: str = ""  # not a kernel but a value combined across processes ("all_reduce sum float32"): collective.py


class _Scope:
    def __init__(self, depth: int, trips: int = 1):
        self.depth, self.trips, self.lines = depth, trips, []


@dataclass
class _Value:
    text: str
    depth: int


# A rendering step: a generator that yields a Request for each value it needs, is sent that value back, and
# returns the value it renders (KernelBuilder.render runs the steps on an explicit stack).
Rendering = Generator[Request, _Value, _Value]


@dataclass
class KernelBuilder:
    """Renders one kernel. `materialized` nodes are read from buffers unless this kernel produces them."""

    root: Node
    materialized: dict[int, Node]
    produced: set[int]
    allow_extra_outputs: bool = True
    tile: Optional[dict[int, int]] = None  # space axis -> outputs per work item along it
    group: int = 0  # >0: a work group of this many items cooperates on each output's reductions (GPUs)
    stored_apart: frozenset = frozenset()  # ids of nodes always read from their own kernel's buffer
    params: list[Param] = field(default_factory=list)
    outputs: list[Node] = field(default_factory=list)
    needs: list[Node] = field(default_factory=list)
    _values: dict = field(default_factory=dict)
    _index_keys: dict = field(default_factory=dict)  # id(index) -> (index, its key): see _key
    _param_names: dict = field(default_factory=dict)
    _scopes: list = field(default_factory=list)
    _loop_depth: dict = field(default_factory=dict)
    _counter: int = 0
    _stores: list = field(default_factory=list)
    _local_outputs: set = field(default_factory=set)
    _reductions: dict = field(default_factory=dict)
    _misaligned: set = field(default_factory=set)
    _renders: dict = field(default_factory=dict)
    _draws: dict = field(default_factory=dict)  # random values drawn per RAND node, loops' trips counted
    _statements: int = 0
    _last_computed: Optional[Node] = None  # the elementwise value whose statement was emitted last
    _has_loop: bool = False
    _longest_reduction: int = 0
    _element: int = 0
    uses_double: bool = False
    uses_rand: bool = False
    kind = ""  # the kernel name's prefix, if a subclass names its kernels (else r, g or e: see _finish)

    def __post_init__(self) -> None:
        self.space = self.root.shape
        self.numel = math.prod(self.space)
        tile = self.tile or {}
        if self.numel == 0:  # nothing to compute: the kernel is never launched
            tile = {}
        if tile:
            self.allow_extra_outputs = False
        grid = tuple(size // tile.get(axis, 1) for axis, size in enumerate(self.space))
        self.work_items = math.prod(grid)
        self.gid = Expr.var("gid", self.work_items)
        cell = unravel(self.gid, grid) if self.work_items else ()
        self.elements: list[Index] = []
        if not self.work_items:
            self.positions: list[Expr] = []
            self._scopes = [_Scope(0)]
            return
        for offsets in itertools.product(*(range(tile.get(axis, 1)) for axis in range(len(self.space)))):
            self.elements.append(tuple(e * tile[axis] + o if axis in tile else e
                                       for axis, (e, o) in enumerate(zip(cell, offsets))))
        self.positions = [linear(element, self.space) for element in self.elements]
        self._scopes = [_Scope(0)]

    # ---- names -----------------------------------------------------------------------------------------
    def _fresh(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def _param(self, kind: str, node: Node) -> str:
        key = (kind, id(node))
        if key not in self._param_names:
            if len(self.params) >= PARAM_LIMIT:
                self._cut()
            name = {"load": "in", "store": "out", "seed": "seed", "offset": "offset"}[kind] + str(len(self.params))
            self._param_names[key] = name
            self.params.append(Param(kind, node, name, node.dtype))
        return self._param_names[key]

    def _depth_of(self, index: Index, guard: tuple[str, ...] = ()) -> int:
        """The innermost loop an index (and the guard it is read under) depends on."""
        depth = 0
        for expr in index:
            for name in expr.variables():
                depth = max(depth, self._loop_depth.get(name, 0))
        for condition in guard:
            for name in _LOOP_VARIABLE.findall(condition):
                depth = max(depth, self._loop_depth.get(name, 0))
        return depth

    def _cut(self) -> None:
        """The kernel outgrew a limit: raise KernelTooLarge with the value to store apart. That is the most
        recomputed value if one is computed more than once per output, else the value computed last (its
        sources are all in this kernel, so the kernel storing it has room: chains are cut near the limit).
        A kernel that computed nothing yet (only loads and views) grows on."""
        per_output = max(len(self.elements), 1)
        count, worst = max(self._renders.values(), key=lambda item: item[0], default=(0, None))
        if count > per_output:
            raise KernelTooLarge(worst)
        if self._last_computed is not None:
            raise KernelTooLarge(self._last_computed)

    def _emit(self, depth: int, dtype: DType, text: str) -> _Value:
        self._statements += 1
        if self._statements > STATEMENT_LIMIT * max(len(self.elements), 1):
            self._cut()
        name = self._fresh("v")
        self._scopes[depth].lines.append(f"{c.register_type(dtype)} {name} = {text};")
        if dtype.name == "float64":
            self.uses_double = True
        return _Value(name, depth)

    # ---- rendering ---------------------------------------------------------------------------------------
    def build(self) -> RenderedKernel:
        if not self.elements:  # an empty output: declared, never launched
            self._param("store", self.root)
            self.outputs.append(self.root)
            self.produced.add(id(self.root))
        for element, index in enumerate(self.elements):
            self._element = element
            self._store(self.root, self.render(self.root, index, ()))
        return self._finish()

    def _output(self, node: Node) -> str:
        """Register `node` as stored by this kernel; its buffer's parameter name."""
        out = self._param("store", node)
        if node not in self.outputs:
            self.outputs.append(node)
        self.produced.add(id(node))
        self._local_outputs.add(id(node))
        return out

    def _store(self, node: Node, value: _Value) -> None:
        out = self._output(node)
        position = self.positions[self._element].render()
        line = c.store(node.dtype, out, position, value.text)
        self._stores.append(f"if (lid == 0) {line}" if self.group else line)

    def render(self, node: Node, index: Index, guard: tuple[str, ...]) -> _Value:
        """The value of `node` at `index` (under `guard`), rendering first every value it needs.

        The rendering steps ask for their sources' values by yielding requests; this loop runs them on an explicit
        stack, so a chain of 100 000 fused ops needs no deeper Python stack than a single op."""
        key = self._key(node, index, guard)
        if key in self._values:
            return self._values[key]
        stack: list[tuple[tuple, Rendering]] = [(key, self._render(node, index, guard))]
        answer: Optional[_Value] = None
        while stack:
            step_key, step = stack[-1]
            try:
                request = step.send(answer)  # type: ignore[arg-type]
            except StopIteration as done:
                stack.pop()
                answer = self._values[step_key] = done.value
                continue
            request_key = self._key(*request)
            answer = self._values.get(request_key)
            if answer is None:
                stack.append((request_key, self._render(*request)))
        return self._values[key]

    def _key(self, node: Node, index: Index, guard: tuple[str, ...]) -> tuple:
        """What a rendered value is memoized under: the node, where it is read, and under which guard.

        An index's key is kept by the index object's identity (holding the object, so its id stays its own):
        an elementwise op reads its sources at its own index object, so a fused chain builds that key once."""
        known = self._index_keys.get(id(index))
        if known is None:
            known = self._index_keys[id(index)] = (index, self._index_key(index))
        return id(node), known[1], guard

    def _index_key(self, index: Index) -> tuple:
        return tuple(e.key for e in index)

    def _render(self, node: Node, index: Index, guard: tuple[str, ...]) -> Rendering:
        op = node.op
        if node is not self.root and id(node) in self.materialized:
            if id(node) in self._local_outputs:  # stored by this very kernel: never read it back here
                if op in REDUCE_OPS:
                    raise ScheduleConflict(node)
                return (yield from self._compute(node, index, guard))
            if (id(node) in self.produced or id(node) in self.stored_apart or not self.allow_extra_outputs
                    or not self._can_host(node, index, guard)):
                return self._load(node, index, guard)
            value = yield from self._compute(node, index, guard)
            self._store(node, value)
            return value
        if op is Op.BUFFER:
            return self._load(node, index, guard)
        constant = _viewed_constant(node) if op in MOVEMENT_OPS else None
        if constant is not None:  # a broadcast scalar (`w - 0.01 * g`): its literal, whatever the index
            return (yield constant, index, guard)
        return (yield from self._compute(node, index, guard))

    def _can_host(self, node: Node, index: Index, guard: tuple[str, ...]) -> bool:
        """A node computes here (once per work item) only at this kernel's own output position."""
        if guard or node.numel != self.numel or node.op is Op.BUFFER:
            return False
        return linear(index, node.shape) == self.positions[self._element]

    def _compute(self, node: Node, index: Index, guard: tuple[str, ...]) -> Rendering:
        op = node.op
        if op is Op.CONST:
            return _Value(c.literal(node.arg, node.dtype), 0)
        if op is Op.RAND:
            return self._rand(node, index)
        if op in REDUCE_OPS:
            if self._can_host(node, index, guard) or (node is self.root):
                return self._reduce(node, index)
            if id(node) not in self.materialized:
                self.materialized[id(node)] = node
            return self._load(node, index, guard)
        if op in ELEMENTWISE_OPS:
            sources = yield from _request_all(node.src, index, guard)
            if node is not self.root and self._count_render(node) > RECOMPUTE_LIMIT * max(len(self.elements), 1):
                raise KernelTooLarge(node)
            depth = max([s.depth for s in sources] + [0])
            return self._emit_computed(node, depth, self._expression(node, [s.text for s in sources]))
        return (yield from self._movement(node, index, guard))

    def _emit_computed(self, node: Node, depth: int, text: str) -> _Value:
        """The statement computing elementwise `node`; it becomes the last value computed (where _cut cuts)."""
        value = self._emit(depth, node.dtype, text)
        if node is not self.root:
            self._last_computed = node
        return value

    def _count_render(self, node: Node) -> int:
        """How often `node` has been computed in this kernel, this time included (to find a value worth storing)."""
        count = self._renders.get(id(node), (0, node))[0] + 1
        self._renders[id(node)] = (count, node)
        return count

    def _expression(self, node: Node, args: list[str]) -> str:
        op = node.op
        if op is Op.CAST:
            return c.cast(args[0], node.src[0].dtype, node.dtype)
        if op is Op.WHERE:
            return f"({args[0]}?{args[1]}:{args[2]})"
        if len(args) == 1:
            return c.unary(op, args[0], node.dtype)
        return c.binary(op, args[0], args[1], node.src[0].dtype)

    def _movement(self, node: Node, index: Index, guard: tuple[str, ...]) -> Rendering:
        inner, condition = source_index(node, index)
        if inner is None:
            return _Value(c.literal(node.arg[1], node.dtype), 0)  # entirely in the padding
        if condition is None:
            return (yield node.src[0], inner, guard)
        value = yield node.src[0], inner, guard + (condition,)
        depth = max(value.depth, self._depth_of(index, guard + (condition,)))
        return self._emit(depth, node.dtype, f"(({condition})?{value.text}:{c.literal(node.arg[1], node.dtype)})")

    def _input(self, node: Node) -> str:
        """The parameter reading `node` from memory (a node that is not a buffer: one another kernel stores)."""
        if node.op is not Op.BUFFER and id(node) not in self.produced and node not in self.needs:
            self.needs.append(node)
        return self._param("load", node)

    def _load(self, node: Node, index: Index, guard: tuple[str, ...]) -> _Value:
        name = self._input(node)
        flat = linear(index, node.shape)
        if guard or not self.positions or flat != self.positions[self._element]:
            self._misaligned.add(id(node))
        position = flat.render()
        text = c.load(node.dtype, name, position)
        if guard:
            text = f"(({'&&'.join(guard)})?{text}:{c.literal(0, node.dtype)})"
        return self._emit(self._depth_of(index, guard), node.dtype, text)

    def _rand(self, node: Node, index: Index) -> _Value:
        self._count_draws(node, self._depth_of(index))
        self.uses_rand = True
        seed, offset = self._param("seed", node), self._param("offset", node)
        position = linear(index, node.shape).render()
        text = f"zyx_philox_uniform({seed},{offset}+(ulong)({position}))"
        return self._emit(self._depth_of(index), node.dtype, text)

    def _count_draws(self, node: Node, depth: int) -> None:
        """A random value drawn inside loops is drawn again on every trip of them; when the kernel would draw the
        node's values more than twice over (a dropout mask read by a weight gradient's loop), it is stored once."""
        launched, _ = self._launch_shape()
        draws = launched * math.prod(scope.trips for scope in self._scopes[1:depth + 1])
        self._draws[id(node)] = self._draws.get(id(node), 0) + draws
        if self._draws[id(node)] > 2 * node.numel:
            raise KernelTooLarge(node)

    def _reduce(self, node: Node, index: Index) -> _Value:
        """One loop at the kernel's top level computing this reduction for every output of the work item;
        a lone output gets several independent accumulators instead, so compilers vectorize."""
        if id(node) not in self._reductions:
            self._reductions[id(node)] = self._reduce_all(node)
        return self._reductions[id(node)][self._element]

    def _reduce_all(self, node: Node) -> list[_Value]:
        source, axes = node.src[0], node.arg
        count = math.prod(source.shape[a] for a in axes)
        self._has_loop = True
        self._longest_reduction = max(self._longest_reduction, count)
        dtype = node.dtype
        start = c.literal(0, dtype) if node.op is Op.SUM else c.lowest(dtype)
        combine = Op.ADD if node.op is Op.SUM else Op.MAX
        indices = [unravel(position, node.shape) for position in self.positions]
        if self.group:
            return [self._group_reduce(node, indices[0], count, start, combine)]
        unroll = UNROLL if len(indices) == 1 and count >= 2 * UNROLL else 1
        accumulators = [[self._fresh("acc") for _ in range(unroll)] for _ in indices]
        for accumulator in itertools.chain(*accumulators):
            self._scopes[0].lines.append(f"{c.register_type(dtype)} {accumulator} = {start};")
        if count // unroll:
            self._loop(node, indices, count // unroll, lambda r: [r * unroll + j for j in range(unroll)],
                       accumulators, combine)
        if count % unroll:
            base = (count // unroll) * unroll
            self._loop(node, indices, count % unroll, lambda r: [r + base], [a[:1] for a in accumulators], combine)
        return [self._combine_tree(element_accumulators, combine, dtype) for element_accumulators in accumulators]

    def _group_reduce(self, node: Node, index: Index, count: int, start: str, combine: Op) -> _Value:
        """Each item of the group strides over the reduction (coalesced reads), then a tree in local memory."""
        dtype, group = node.dtype, self.group
        accumulator, shared = self._fresh("acc"), self._fresh("shared")
        kind = c.register_type(dtype)
        self._scopes[0].lines.append(f"{kind} {accumulator} = {start};")
        trips = -(-count // group)
        if count:
            lid = Expr.var("lid", group)
            self._loop(node, [index], trips,
                       lambda r: [Expr.clamped(r * group + lid, 0, count - 1) if count % group else r * group + lid],
                       [[accumulator]], combine,
                       stop=None if count % group == 0 else lambda r: f"if ({(r * group + lid).render()} >= {count}) break;")
        merged = c.binary(combine, f"{shared}[lid]", f"{shared}[lid + step]", dtype)
        self._scopes[0].lines += [
            f"__local {kind} {shared}[{group}];",
            f"{shared}[lid] = {accumulator};",
            "barrier(CLK_LOCAL_MEM_FENCE);",
            f"for (int step = {group // 2}; step > 0; step >>= 1) {{\n"
            f"  if (lid < step) {shared}[lid] = {merged};\n  barrier(CLK_LOCAL_MEM_FENCE);\n}}",
        ]
        return self._emit(0, dtype, f"{shared}[0]")

    def _combine_tree(self, accumulators: list[str], combine: Op, dtype: DType) -> _Value:
        """Pairwise, for accuracy and short dependency chains."""
        while len(accumulators) > 1:
            pairs = [self._emit(0, dtype, c.binary(combine, a, b, dtype)).text
                     for a, b in zip(accumulators[::2], accumulators[1::2])]
            accumulators = pairs + accumulators[len(pairs) * 2:]
        return _Value(accumulators[0], 0)

    def _loop(self, node: Node, indices: list[Index], trips: int, positions, accumulators: list[list[str]],
              combine: Op, stop=None) -> None:
        """`for r < trips`: add the reduced source at each of positions(r) into the matching accumulator
        (`stop(r)` renders a line that leaves the loop early)."""
        source, axes = node.src[0], node.arg
        sizes = tuple(source.shape[a] for a in axes)
        loop_var = self._fresh("r")
        self._loop_depth[loop_var] = len(self._scopes)
        self._scopes.append(_Scope(len(self._scopes), trips))
        loop_expr = Expr.var(loop_var, trips)
        if stop is not None:
            self._scopes[-1].lines.append(stop(loop_expr))
        flats = positions(loop_expr)
        for index, element_accumulators in zip(indices, accumulators):
            for accumulator, flat in zip(element_accumulators, flats):
                full = list(index)
                for axis, expr in zip(axes, unravel(flat, sizes)):
                    full[axis] = expr
                value = self.render(source, tuple(full), ())
                self._scopes[-1].lines.append(
                    f"{accumulator} = {c.binary(combine, accumulator, value.text, node.dtype)};")
        body = self._scopes.pop()
        counter = "long" if trips >= 2**31 else "int"
        self._scopes[0].lines.append(
            f"for ({counter} {loop_var} = 0; {loop_var} < {trips}; {loop_var}++) {{\n"
            + "\n".join("  " + line for line in body.lines) + "\n}")

    def _finish(self) -> RenderedKernel:
        kind = self.kind or (("g" if self.group else "r") if self._has_loop else "e")
        signature = []
        for p in self.params:
            if p.kind in ("seed", "offset"):
                signature.append(f"ulong {p.name}")
            elif p.kind == "load":
                signature.append(f"__global const {c.storage_type(p.dtype)}* restrict {p.name}")
            else:
                signature.append(f"__global {c.storage_type(p.dtype)}* restrict {p.name}")
            if p.dtype.name == "float64":
                self.uses_double = True
        index_type = "long" if self.work_items >= 2**31 else "int"
        body = (f"({', '.join(signature)}) {{\n" + self._header(index_type)
                + "\n".join("  " + line.replace("\n", "\n  ") for line in self._scopes[0].lines + self._stores)
                + "\n}\n")
        # named by content, not shape: a contiguous elementwise kernel serves every shape, compiled once
        name = f"{kind}_{xxhash.xxh3_64_hexdigest(body.encode())[:12]}"
        helpers = c.prelude(self.uses_double, self.uses_rand, c.calls_shift_helpers(body), body)
        source = helpers + f"__kernel void {name}" + body
        loads = [p.node for p in self.params if p.kind == "load"]
        global_size, local_size = self._launch_shape()
        return RenderedKernel(name, source, self.space, self.params, self.outputs, loads, self.needs,
                              self._misaligned, global_size, local_size, self._longest_reduction)

    def _header(self, index_type: str) -> str:
        if self.group:
            return f"  {index_type} gid = get_group_id(0);\n  int lid = get_local_id(0);\n"
        return f"  {index_type} gid = get_global_id(0);\n"

    def _launch_shape(self) -> tuple[int, Optional[int]]:
        return self.work_items * max(self.group, 1), self.group or None


def _viewed_constant(node: Node) -> Optional[Node]:
    """The CONST that `node` views through reshapes, expands, permutes, shrinks and flips, if it is one."""
    while node.op in MOVEMENT_OPS and node.op is not Op.PAD:
        node = node.src[0]
    return node if node.op is Op.CONST else None


def _request_all(nodes: tuple[Node, ...], index: object, guard: object) -> Generator[Request, _Value, list[_Value]]:
    """Inside a rendering step: the values of `nodes`, all at `index` under `guard`."""
    values = []
    for node in nodes:
        values.append((yield node, index, guard))
    return values
