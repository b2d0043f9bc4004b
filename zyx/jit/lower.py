"""Lowering: a fused group of trace nodes to the kernel IR, once, at one output per work item.

A kernel owns an output space (the shape of what it stores). Every node it contains is lowered at an index:
a tuple of symbolic expressions over the work item's id and loop counters. Views only rewrite that index (no
copies); elementwise ops become ALU statements; a reduction becomes a loop whose body is lowered at the
reduced axes' counter; a value needed in another shape, or a reduction the space cannot host, is read from a
buffer that an earlier kernel writes. Lowering only describes: the nodes it needs stored elsewhere and those it
stores are in the result, and the scheduler decides what to do with them. How many outputs a work item computes,
in vectors or work groups, is for the transforms (transforms/) to change.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generator, Optional

import numpy as np

from ..dtypes import bool_
from ..trace.attention_grad import under_views
from ..trace.node import Node
from ..trace.ops import ELEMENTWISE_OPS, MOVEMENT_OPS, Op, REDUCE_OPS
from .kernel_ir import (LESS_EQUAL, Accumulate, Alu, Axis, Cond, Const, Define, If, Kernel, Load, Loop, Names,
                        Operand, Param, Rand, Reg, Role, Select, Store, reduce_start)
from .indirect import Take, match_take
from .symbolic import Expr
from .device_traits import PARAM_LIMIT
from .view_index import Index, linear, source_index, unravel

Request = tuple  # (node, index, guard): a value a lowering step needs before it can go on

STATEMENT_LIMIT = 384  # per kernel: a kernel growing past this stores a value in a kernel of its own
RECOMPUTE_LIMIT = 16   # a value computed more often than this is stored instead
# A one-hot pick (indirect.py) of at most this many values that a kernel reads elsewhere than at its own outputs is
# read where it is needed, one load, instead of stored by a kernel of its own first: a cross-entropy's target
# logits, one a row, read by its loss's sum over the rows. (Larger picks, embeddings read by many kernels, stay
# stored once.)
INLINE_TAKES = 1 << 16
# ops whose result is one of their operands (or its negation): of operands rounded to a half-precision dtype, the
# result is too, and rounding it again costs an instruction a value for nothing (a causal mask's select in each
# attention score, a ReLU after a product)
SELECTING_OPS = frozenset({Op.NEG, Op.MAX, Op.WHERE, Op.DETACH})


class KernelTooLarge(Exception):
    """Lowering blew up (a value reused at many indices is recomputed at each, or too many values or buffers
    fused into one kernel); `node` is the value to store in a kernel of its own. `frontier`: where the kernel
    outgrew its statements, the other values computed whole that values still being computed wait for, which the
    next attempt would compute again (the scheduler stores them too once a kernel has been cut often)."""

    def __init__(self, node: Node, frontier: tuple[Node, ...] = ()):
        super().__init__(node)
        self.node, self.frontier = node, frontier


class ScheduleConflict(Exception):
    """A kernel would need to read back a reduction it stores itself; the scheduler retries without fusing it."""


@dataclass
class LoweredKernel:
    """A kernel's IR and what the scheduler needs to know of it."""

    ir: Kernel
    space: tuple[int, ...]
    outputs: list[Node]
    needs: list[Node]          # nodes this kernel reads that must be stored by others
    misaligned: set[int]       # ids of loaded nodes read somewhere other than the position being stored
    longest_reduction: int = 0  # elements the longest reduction in this kernel walks
    summed_apart: tuple[Node, ...] = ()  # products it reads as the partial sums another kernel stores (split.py)

    @property
    def params(self) -> tuple[Param, ...]:
        return self.ir.params


@dataclass
class _Value:
    operand: Operand
    depth: int  # the innermost loop the value depends on (0: none)


# A lowering step: a generator that yields a Request for each value it needs, is sent that value back, and
# returns the value it lowers (Lowering.value runs the steps on an explicit stack).
Step = Generator[Request, _Value, _Value]


class Lowering:
    """Lowers one kernel. `materialized` nodes are read from buffers unless this kernel stores them; neither it
    nor `produced` (nodes earlier kernels store) is written."""

    def __init__(self, root: Node, materialized: dict[int, Node], produced: set[int],
                 allow_extra_outputs: bool = True, stored_apart: frozenset = frozenset(), param_limit: int = PARAM_LIMIT):
        self.root, self.materialized, self.produced = root, materialized, produced
        self.allow_extra_outputs, self.stored_apart, self.param_limit = allow_extra_outputs, stored_apart, param_limit
        self.space = root.shape
        self.numel = math.prod(self.space)
        self.gid = Expr.var("gid", self.numel)
        # the outputs of a work item: their indices, flat positions and the conditions they exist under
        self.elements: list[Index] = [unravel(self.gid, self.space)] if self.numel else []
        self.positions: list[Expr] = [self.gid] if self.numel else []
        self.guards: list[Cond] = [()] if self.numel else []
        self._element = 0
        self.kind = ""  # the name's prefix, if a plan names its kernels (else r or e)
        self.local_size: Optional[int] = None
        self.names = Names()
        self.params: list[Param] = []
        self.outputs: list[Node] = []
        self.needs: list[Node] = []
        self._needed: dict[int, Node] = {}  # reductions this kernel reads from memory that nobody stores yet
        self._stored: set[int] = set()      # nodes this kernel stores
        self._param_names: dict = {}
        self._values: dict = {}
        self._index_keys: dict = {}  # id(index) -> (index, its key): see _key
        self._scopes: list[list] = [[]]
        self._trips: list[int] = [1]
        self._loop_depth: dict[str, int] = {}
        self._loops: list[Axis] = []
        self._stores: list[Store] = []
        self._reductions: dict[int, list[_Value]] = {}
        self._misaligned: set[int] = set()
        self._renders: dict = {}
        self._accumulated: set[int] = set()  # the terms sums add up: kept in float, as a product's are
        self._draws: dict = {}  # random values drawn per RAND node, loops' trips counted
        self._statements = 0
        self._last_computed: Optional[Node] = None  # the elementwise value whose statement was emitted last
        self._pending: list[list] = []  # value()'s stacks of (key, step, node) being lowered, innermost last
        self._longest_reduction = 0

    # ---- the result --------------------------------------------------------------------------------------
    def lower(self) -> LoweredKernel:
        self._lower_outputs()
        if not self.elements:  # an empty output: declared, never launched
            self._output(self.root)
        kernel = Kernel(self.kind or ("r" if self._loops else "e"), tuple(self.params), self._axes(),
                        tuple(self._scopes[0] + self._stores), self.local_size)
        return LoweredKernel(kernel, self.space, self.outputs, self.needs, self._misaligned, self._longest_reduction)

    def _lower_outputs(self) -> None:
        """The root's value at each of the work item's outputs, stored."""
        for element in range(len(self.elements)):
            self._element = element
            self._store(self.root, self.value(self.root, *self._element_read(element)), self.positions[element])

    def _axes(self) -> tuple[Axis, ...]:
        return (Axis("gid", self._work_items(), Role.GLOBAL), *self._loops)

    def _element_read(self, element: int) -> tuple[Index, Cond]:
        """Where the root is read for an output of the work item, and under which guard (the one its store
        is under: its loads read nothing past the ends)."""
        return self.elements[element], self.guards[element]

    # ---- names and limits --------------------------------------------------------------------------------
    def _param(self, kind: str, node: Node) -> str:
        key = (kind, id(node))
        if key not in self._param_names:
            if len(self.params) >= self.param_limit:
                self._cut()
            name = {"load": "in", "store": "out", "seed": "seed", "offset": "offset"}[kind] + str(len(self.params))
            self._param_names[key] = name
            self.params.append(Param(kind, node, name, node.dtype))
        return self._param_names[key]

    def _is_materialized(self, node: Node) -> bool:
        return id(node) in self.materialized or id(node) in self._needed

    def _depth_of(self, index: Index, guard: Cond = ()) -> int:
        """The innermost loop an index (and the guard it is read under) depends on."""
        depth = 0
        for expr in (*index, *(bound[0] for bound in guard)):
            for name in expr.variables():
                depth = max(depth, self._loop_depth.get(name, 0))
        return depth

    def _cut(self) -> None:
        """The kernel outgrew a limit: raise KernelTooLarge with the value to store apart. That is the most
        recomputed value if one is computed more than once, else the value computed last (its sources are all
        in this kernel, so the kernel storing it has room: chains are cut near the limit). A kernel that
        computed nothing yet (only loads and views) grows on."""
        count, worst = max(self._renders.values(), key=lambda item: item[0], default=(0, None))
        if count > max(len(self.elements), 1):
            raise KernelTooLarge(worst)
        if self._last_computed is not None:
            raise KernelTooLarge(self._last_computed, self._frontier())

    def _frontier(self) -> tuple[Node, ...]:
        """The elementwise values computed whole (this kernel counted their renders) that the values still being
        lowered read, but the last computed one and those being lowered."""
        lowering = {id(node) for stack in self._pending for _, _, node in stack}
        found: dict[int, Node] = {}
        for stack in self._pending:
            for _, _, node in stack:
                for source in node.src:
                    if (id(source) in self._renders and id(source) not in lowering and source is not self.root
                            and source is not self._last_computed and not self._is_materialized(source)):
                        found.setdefault(id(source), source)
        return tuple(found.values())

    def _emit(self, depth: int, make) -> _Value:
        """Append the statement `make(out)` defining a fresh register at loop depth `depth`."""
        self._statements += 1
        if self._statements > STATEMENT_LIMIT * max(len(self.elements), 1):
            self._cut()
        out = make(self.names.fresh("v"))
        self._scopes[depth].append(out)
        return _Value(out.out, depth)

    # ---- lowering ----------------------------------------------------------------------------------------
    def _output(self, node: Node) -> str:
        """Register `node` as stored by this kernel; its buffer's parameter name."""
        out = self._param("store", node)
        if node not in self.outputs:
            self.outputs.append(node)
        self._stored.add(id(node))
        return out

    def _store(self, node: Node, value: _Value, position: Expr) -> None:
        """Store `value` at `position` of `node`'s buffer: after everything else, or inside the loop whose counter
        the position depends on (a row kernel's pass over the row)."""
        store = Store(self._output(node), position, value.operand, node.dtype)
        guard = self.guards[self._element]
        depth = self._depth_of((position,))
        (self._scopes[depth] if depth else self._stores).append(If(guard, (store,)) if guard else store)

    def _open_loop(self, var: str, trips: int) -> None:
        """From here statements at `var`'s depth go into the body of a loop of `trips` steps."""
        self._loops.append(Axis(var, trips, Role.REDUCE))
        self._loop_depth[var] = len(self._scopes)
        self._scopes.append([])
        self._trips.append(trips)

    def _close_loop(self) -> list:
        """The body of the innermost loop opened (see _open_loop)."""
        self._trips.pop()
        return self._scopes.pop()

    def value(self, node: Node, index: Index, guard: Cond) -> _Value:
        """The value of `node` at `index` (under `guard`), lowering first every value it needs.

        The steps ask for their sources' values by yielding requests; this loop runs them on an explicit stack,
        so a chain of 100 000 fused ops needs no deeper Python stack than a single op."""
        key = self._key(node, index, guard)
        if key in self._values:
            return self._values[key]
        stack: list[tuple[tuple, Step, Node]] = [(key, self._lower(node, index, guard), node)]
        self._pending.append(stack)
        answer: Optional[_Value] = None
        try:
            while stack:
                step_key, step, _ = stack[-1]
                try:
                    request = step.send(answer)  # type: ignore[arg-type]
                except StopIteration as done:
                    stack.pop()
                    answer = self._values[step_key] = done.value
                    continue
                request_key = self._key(*request)
                answer = self._values.get(request_key)
                if answer is None:
                    stack.append((request_key, self._lower(*request), request[0]))
        finally:
            self._pending.pop()
        return self._values[key]

    def _key(self, node: Node, index: Index, guard: Cond) -> tuple:
        """What a lowered value is memoized under: the node, where it is read, and under which guard.

        An index's key is kept by the index object's identity (holding the object, so its id stays its own):
        an elementwise op reads its sources at its own index object, so a fused chain builds that key once."""
        known = self._index_keys.get(id(index))
        if known is None:
            known = self._index_keys[id(index)] = (index, tuple(e.key for e in index))
        return id(node), known[1], tuple((e.key, op, k) for e, op, k in guard)

    def _lower(self, node: Node, index: Index, guard: Cond) -> Step:
        op = node.op
        if node is not self.root and self._is_materialized(node):
            if id(node) in self._stored:  # stored by this very kernel: never read it back here
                if op in REDUCE_OPS:
                    raise ScheduleConflict(node)
                return (yield from self._compute(node, index, guard))
            if (id(node) in self.produced or id(node) in self.stored_apart or not self.allow_extra_outputs
                    or not self._can_host(node, index, guard)):
                return self._load(node, index, guard)
            value = yield from self._compute(node, index, guard)
            self._store(node, value, linear(index, node.shape))
            return value
        if op is Op.BUFFER:
            return self._load(node, index, guard)
        constant = _viewed_constant(node) if op in MOVEMENT_OPS else None
        if constant is not None:  # a broadcast scalar (`w - 0.01 * g`): its literal, whatever the index
            return (yield constant, index, guard)
        return (yield from self._compute(node, index, guard))

    def _can_host(self, node: Node, index: Index, guard: Cond) -> bool:
        """A node computes here (once per work item) only at this kernel's own output position."""
        own = self.guards[self._element]
        if (guard[len(own):] if guard[:len(own)] == own else guard) or node.numel != self.numel or node.op is Op.BUFFER:
            return False
        return linear(index, node.shape) == self.positions[self._element]

    def _compute(self, node: Node, index: Index, guard: Cond) -> Step:
        op = node.op
        if op is Op.CONST:
            return _Value(Const(node.arg, node.dtype), 0)
        if op is Op.RAND:
            return self._rand(node, index)
        if op in REDUCE_OPS:
            if self._can_host(node, index, guard) or node is self.root:
                if id(node) not in self._reductions:
                    values = self._reduce(node)
                    if node.dtype.is_narrow_float:
                        values = [self._rounded(v, node.dtype) for v in values]
                    self._reductions[id(node)] = values
                return self._reductions[id(node)][self._element]
            take = None if guard or id(node) in self.materialized or node.numel > INLINE_TAKES else (
                match_take(node, index))
            if take is not None:  # a small one-hot pick read elsewhere than here: one load where it is read
                return self._take(take)
            if id(node) not in self.materialized:
                self._needed[id(node)] = node
            return self._load(node, index, guard)
        if op in ELEMENTWISE_OPS:
            compared = _less_or_equal(node)
            sources = yield from _request_all(compared or node.src, index, guard)
            if node is not self.root and self._count_render(node) > RECOMPUTE_LIMIT * max(len(self.elements), 1):
                raise KernelTooLarge(node)
            depth = max([s.depth for s in sources] + [0])
            args = tuple(s.operand for s in sources)
            value = self._emit(depth, lambda out: Alu(Reg(out, node.dtype), LESS_EQUAL if compared else op, args))
            if (node.dtype.is_narrow_float and op is not Op.CAST and id(node) not in self._accumulated
                    and not (compared is None and self._selects_rounded(node, sources))):
                value = self._rounded(value, node.dtype)
            if node is not self.root:
                self._last_computed = node
            return value
        return (yield from self._movement(node, index, guard))

    def _selects_rounded(self, node: Node, sources: list) -> bool:
        """Whether `node` (a half-precision result) picks among values already rounded to its dtype (SELECTING_OPS):
        each operand of its dtype computed here (rounded where computed, unless a sum's term kept in float), read
        (exact) or a literal the dtype holds exactly."""
        if node.op not in SELECTING_OPS:
            return False
        for position, (src, value) in enumerate(zip(node.src, sources)):
            if node.op is Op.WHERE and position == 0:  # (the condition)
                continue
            if src.dtype != node.dtype:
                return False
            if isinstance(value.operand, Const):
                lanes = value.operand.value if isinstance(value.operand.value, tuple) else (value.operand.value,)
                if not all(_holds_exactly(v, node.dtype) for v in lanes):
                    return False
            elif id(under_views(src)) in self._accumulated:
                return False
        return True

    def _rounded(self, value: _Value, dtype) -> _Value:
        """A half-precision value rounded to its dtype where computed, as storing it would: a kernel's result must
        not depend on which values the schedule keeps in registers (float) and which it stores (rounded)."""
        return self._emit(value.depth, lambda out: Alu(Reg(out, dtype), Op.CAST, (value.operand,)))

    def _count_render(self, node: Node) -> int:
        """How often `node` has been computed in this kernel, this time included (to find a value worth storing)."""
        count = self._renders.get(id(node), (0, node))[0] + 1
        self._renders[id(node)] = (count, node)
        return count

    def _movement(self, node: Node, index: Index, guard: Cond) -> Step:
        inner, condition = source_index(node, index)
        if inner is None:
            return _Value(Const(node.arg[1], node.dtype), 0)  # entirely in the padding
        if condition is None:
            return (yield node.src[0], inner, guard)
        value = yield node.src[0], inner, guard + condition
        depth = max(value.depth, self._depth_of(index, guard + condition))
        fill = Const(node.arg[1], node.dtype)
        return self._emit(depth, lambda out: Select(Reg(out, node.dtype), condition, value.operand, fill))

    def _input(self, node: Node) -> str:
        """The parameter reading `node` from memory (a node that is not a buffer: one another kernel stores)."""
        if node.op is not Op.BUFFER and id(node) not in self.produced and node not in self.needs:
            self.needs.append(node)
        return self._param("load", node)

    def _load(self, node: Node, index: Index, guard: Cond) -> _Value:
        name = self._input(node)
        flat = linear(index, node.shape)
        if guard or flat != self.positions[self._element]:
            self._misaligned.add(id(node))
        return self._emit(self._depth_of(index, guard), lambda out: Load(Reg(out, node.dtype), name, flat, guard))

    def _rand(self, node: Node, index: Index) -> _Value:
        depth = self._depth_of(index)
        self._count_draws(node, depth)
        seed, offset = self._param("seed", node), self._param("offset", node)
        position = linear(index, node.shape)
        return self._emit(depth, lambda out: Rand(Reg(out, node.dtype), seed, offset, position))

    def _count_draws(self, node: Node, depth: int) -> None:
        """A random value drawn inside loops is drawn again on every trip of them; when the kernel would draw the
        node's values more than twice over (a dropout mask read by a weight gradient's loop), it is stored once."""
        draws = self._work_items() * math.prod(self._trips[1:depth + 1])
        self._draws[id(node)] = self._draws.get(id(node), 0) + draws
        if self._draws[id(node)] > 2 * node.numel:
            raise KernelTooLarge(node)

    def _work_items(self) -> int:
        return self.numel // max(len(self.elements), 1)

    def _reduced_positions(self, node: Node) -> list[Expr]:
        """Where (flat, in `node`'s shape) this kernel computes the reduction `node` it hosts: at its outputs."""
        return self.positions

    def _reduce(self, node: Node) -> list[_Value]:
        """One loop at the kernel's top level, accumulating the reduced source at each of the positions it is
        hosted at (the values of the reduction at them)."""
        positions = [unravel(position, node.shape) for position in self._reduced_positions(node)]
        takes = [match_take(node, position) for position in positions]
        if takes and None not in takes:
            return [self._take(take) for take in takes]  # type: ignore[arg-type]
        count = math.prod(node.src[0].shape[a] for a in node.arg)
        self._longest_reduction = max(self._longest_reduction, count)
        if not count:
            accumulators = [Reg(self.names.fresh("acc"), node.dtype) for _ in positions]
            self._scopes[0] += [Define(acc, reduce_start(node.op, node.dtype)) for acc in accumulators]
            self._loops.append(Axis(self.names.fresh("r"), count, Role.REDUCE))
            return [_Value(acc, 0) for acc in accumulators]
        return [_Value(acc, 0) for acc in self._reduction_loop(node, 0, positions, reduce_start(node.op, node.dtype))]

    def _take(self, take: Take) -> _Value:
        """The one element a one-hot sum picks, read at the index it compares (indirect.py): the index clamped into
        range (only to keep the read inside the buffer: a RangeCheck reports an index outside it), then one load,
        cast as the picked value is where it is a cast of a stored value (`_stored_under_casts`)."""
        picked, casts = self._stored_under_casts(take.source)
        if id(picked) in self._stored:
            raise ScheduleConflict(picked)
        if picked.op is not Op.BUFFER and not self._is_materialized(picked):
            self._needed[id(picked)] = picked  # computed values are read from memory: another kernel stores them
        index = self.value(take.index, take.at, ())
        dtype, zero = take.index.dtype, Const(0, take.index.dtype)
        low = self._emit(index.depth, lambda out: Alu(Reg(out, dtype), Op.MAX, (index.operand, zero)))
        inside = self._emit(index.depth, lambda out: Alu(Reg(out, bool_), Op.CMPLT,
                                                         (low.operand, Const(take.size, dtype))))
        clamped = self._emit(index.depth, lambda out: Alu(Reg(out, dtype), Op.WHERE,
                                                          (inside.operand, low.operand, zero)))
        name = self._input(picked)
        self._misaligned.add(id(picked))
        indirect = (clamped.operand, take.size, take.stride)
        depth = max(index.depth, self._depth_of((take.base,)))
        value = self._emit(depth, lambda out: Load(Reg(out, picked.dtype), name, take.base, (), indirect=indirect))
        for cast in casts:
            value = self._emit(depth, lambda out: Alu(Reg(out, cast.dtype), Op.CAST, (value.operand,)))
        return value

    def _stored_under_casts(self, picked: Node) -> tuple[Node, list[Node]]:
        """`picked`, or the stored value it casts (through reshapes, which keep flat positions) and the casts from
        it outward: a cross-entropy's target logit is picked from logits a bf16 product stored, not from their
        float32 cast, which would be stored for the pick alone (GPT-2's: 3.3 GB)."""
        casts, node = [], picked
        while node.op in (Op.CAST, Op.RESHAPE) and not self._is_materialized(node) and node.op is not Op.BUFFER:
            if node.op is Op.CAST:
                casts.append(node)
            node = node.src[0]
        if not casts or not (node.op is Op.BUFFER or self._is_materialized(node)):
            return picked, []
        return node, casts[::-1]

    def _reduction_loop(self, node: Node, depth: int, positions: list[Index], start: Operand) -> list[Reg]:
        """A loop in scope `depth` over `node`'s reduced axes, accumulating its source at each of `positions`
        (indices in `node`'s shape) into an accumulator starting at `start`; the accumulators."""
        source, axes = node.src[0], node.arg
        sizes = tuple(source.shape[a] for a in axes)
        count = math.prod(sizes)
        accumulators = [Reg(self.names.fresh("acc"), node.dtype) for _ in positions]
        self._scopes[depth] += [Define(acc, start) for acc in accumulators]
        if node.op is Op.SUM:  # a maximum of rounded values is the rounded maximum: MAX's terms stay rounded
            self._accumulated.add(id(under_views(source)))
        var = self.names.fresh("r")
        self._open_loop(var, count)
        reduced = unravel(Expr.var(var, count), sizes)
        for position, acc in zip(positions, accumulators):
            full = list(position)
            for axis, expr in zip(axes, reduced):
                full[axis] = expr
            value = self.value(source, tuple(full), ())
            self._scopes[-1].append(Accumulate(acc, Op.ADD if node.op is Op.SUM else Op.MAX, value.operand))
        self._scopes[depth].append(Loop(var, count, tuple(self._close_loop())))
        return accumulators

def lower(root: Node, materialized: dict[int, Node], produced: set[int], allow_extra_outputs: bool = True,
          stored_apart: frozenset = frozenset(), param_limit: int = PARAM_LIMIT) -> LoweredKernel:
    """The IR of the kernel storing `root` (see Lowering)."""
    return Lowering(root, materialized, produced, allow_extra_outputs, stored_apart, param_limit).lower()


def _holds_exactly(value: object, dtype) -> bool:
    """Whether half-precision `dtype` holds the number `value` exactly (nan and the infinities: yes)."""
    number = float(value)  # type: ignore[arg-type]
    with np.errstate(over="ignore"):  # (past the dtype's largest value: infinity, not held)
        return not math.isfinite(number) or float(np.array(number).astype(dtype.np)) == number


def _viewed_constant(node: Node) -> Optional[Node]:
    """The CONST that `node` views through reshapes, expands, permutes, shrinks and flips, if it is one."""
    while node.op in MOVEMENT_OPS and node.op is not Op.PAD:
        node = node.src[0]
    return node if node.op is Op.CONST else None


def _request_all(nodes: tuple[Node, ...], index: object, guard: object) -> Generator[Request, _Value, list[_Value]]:
    """Inside a lowering step: the values of `nodes`, all at `index` under `guard`."""
    values = []
    for node in nodes:
        values.append((yield node, index, guard))
    return values


def _less_or_equal(node: Node) -> Optional[tuple[Node, Node]]:
    """(a, b) when `node` is `(a < b) | (a == b)` on floats (how `<=`, `>=` and relu are composed): one
    comparison instead of two and an or (4% of W1b)."""
    if node.op is not Op.OR or {s.op for s in node.src} != {Op.CMPLT, Op.CMPEQ}:
        return None
    less, equal = sorted(node.src, key=lambda s: s.op is Op.CMPEQ)
    if not less.src[0].dtype.is_float:
        return None
    if all(map(_same_value, less.src, equal.src)) or all(map(_same_value, less.src, equal.src[::-1])):
        return less.src[0], less.src[1]
    return None


def _same_value(a: Node, b: Node) -> bool:
    """The same node, or the same constant or view of the same node (`x <= 0` builds its 0 twice); compared
    pair by pair from an explicit stack, as two long chains built alike would be too deep for recursion."""
    pairs, compared = [(a, b)], set()
    while pairs:
        a, b = pairs.pop()
        if a is b or (id(a), id(b)) in compared:
            continue
        compared.add((id(a), id(b)))
        if (a.op is not b.op or a.op in (Op.BUFFER, Op.RAND) or (a.arg, a.shape, a.dtype) != (b.arg, b.shape, b.dtype)
                or len(a.src) != len(b.src)):
            return False
        pairs.extend(zip(a.src, b.src))
    return True
