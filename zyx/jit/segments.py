"""One-hot products as segmented sums: `sum over t of (index[t] == arange[v]) * G[t, ..]` for every v, walking t once.

An embedding's weight gradient (trace/autodiff.py: the one-hot mask as numbers times dY, summed over the tokens) is
the product one-hotᵀ·dY. As a dense product it is 50 304 x 768 x 16 384 multiply-adds for GPT-2 small (1.27 TFLOP of
mostly zeros: 36 ms of a step on the H200, torch's embedding backward takes 1). Here a work item owns `rows`
consecutive entries along the arange's axis (vocabulary rows) times `columns` outputs along the last other axis. It
walks the reduced axis (the tokens) in order, reads each token's index once for all its outputs (the same for every
item of a row block: one cached read), and only where the index falls among its rows reads the token's G values and
adds each to the row it hits (a select per row: the rows are few). Each output is summed in the same fixed order on
every run (no atomics), as the dense product sums it, but for its zero terms. On GPUs the items of a row block (a
work group) share each token's test: a chunk of one token per item at a time, each item writes the row its token
hits (-1: none) to local memory, then every item walks the chunk's rows there (a local read per token instead of a
global int64 read and its index arithmetic). PoCL runs that form 24-85x slower (its work-group loops split at each
barrier): CPUs test each token in every item.

The match is keyed on the reduction and follows views like jit/indirect.py's: the SUM's source is a MUL whose one
operand is a cast bool mask comparing an index with the arange leaf (trace.node.ARANGE) read along one output axis,
the index and the other operand not varying along that axis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..dtypes import bool_, int32
from ..trace.node import ARANGE, Node
from ..trace.ops import MOVEMENT_OPS, Op
from .indirect import COUNTER, independent, resolve
from .kernel_ir import (Accumulate, Alu, Axis, Barrier, Cond, Const, Define, If, LocalArray, LocalLoad, LocalStore,
                        Loop, Operand, Reg, Role, Select, substitute)
from .lower import PARAM_LIMIT, Index, Lowering, _Value, linear, unravel
from .symbolic import Expr
from .tiling import env_sizes

# outputs per work item (rows of the arange's axis, columns of the last other axis): few items (each walks every
# token), within the registers; CPUs' 8 x 32 measured fastest on PoCL. ZYX_SEGMENTS=ROWSxCOLUMNS overrides.
GPU_BLOCK = (16, 4)
CPU_BLOCK = (8, 32)


@dataclass(frozen=True)
class OneHotProduct:
    """A SUM (`product`) that is a one-hot product: where `index` (read at `index_at`) equals the `arange` leaf read
    at the product's `row_axis`, the term is `other` (read at `other_at`), else 0. Both indices are over the probe
    variables `probe(a)` of the product's axes and the reduced axis's COUNTER."""

    product: Node
    row_axis: int
    arange: Node
    index: Node
    index_at: Index
    other: Node
    other_at: Index


def probe(axis: int) -> str:
    """The variable standing for the product's output index along `axis` while matching."""
    return f"probed{axis}"


def match_one_hot_product(node: Node) -> Optional[OneHotProduct]:
    """The OneHotProduct that the SUM `node` is, or None."""
    if node.op is not Op.SUM or len(node.arg) != 1 or not node.dtype.is_float or node.src[0].op is not Op.MUL:
        return None
    source, reduced = node.src[0], node.arg[0]
    full = tuple(Expr.var(COUNTER if axis == reduced else probe(axis), size) for axis, size in enumerate(source.shape))
    for mask, other in (source.src, source.src[::-1]):
        found = _compare_with_arange(mask, full, reduced)
        if found is not None:
            row_axis, arange, index, index_at = found
            if independent(other, full, probe(row_axis)):
                return OneHotProduct(node, row_axis, arange, index, index_at, other, full)
    return None


def _compare_with_arange(mask: Node, at: Index, reduced: int) -> Optional[tuple[int, Node, Node, Index]]:
    """(row axis, arange leaf, index, where the index is read) when `mask` at `at` is a cast bool CMPEQ of an index
    with the arange read at one output axis's probe, the index not varying along that axis."""
    while mask.op is Op.CAST or (mask.op in MOVEMENT_OPS and mask.op is not Op.PAD):
        if mask.op is Op.CAST and not mask.src[0].dtype.is_bool:
            return None
        mask, at = resolve(mask.src[0], at) if mask.op is Op.CAST else resolve(mask, at)
    if mask.op is not Op.CMPEQ:
        return None
    for arange, index in (mask.src, mask.src[::-1]):
        leaf, leaf_at = resolve(arange, at)
        if leaf.op is not Op.BUFFER or leaf.arg != ARANGE:
            continue
        rows = [axis for axis in range(len(at)) if axis != reduced and probe(axis) in at[axis].variables()
                and leaf_at == (at[axis],)]
        if rows and independent(index, at, probe(rows[0])):
            return rows[0], leaf, index, at
    return None


def block_sizes(gpu: bool) -> tuple[int, int]:
    """(rows, columns) of outputs per work item: the device's default, or ZYX_SEGMENTS=ROWSxCOLUMNS."""
    return env_sizes("ZYX_SEGMENTS", GPU_BLOCK if gpu else CPU_BLOCK)


@dataclass(frozen=True)
class SegmentPlan:
    """Where the one-hot product sits in the kernel's space (`row_axis`, `column_axis`: None where no other axis
    has more than one element), how many of its outputs a work item computes along them, and `group`: on GPUs the
    items of one row block's columns that share each token's test (0: every item tests every token itself)."""

    match: OneHotProduct
    row_axis: int
    column_axis: Optional[int]
    rows: int
    columns: int
    group: int = 0


def plan_segments(root: Node, product: Optional[Node], materialized: dict[int, Node], gpu: bool,
                  max_group: int) -> Optional[SegmentPlan]:
    """The segmented sum computing the product this kernel hosts (tiling.hosted_matmul; not one another kernel
    stores, which this one reads), if it is a one-hot product whose axes line up with the kernel's; else None.
    On GPUs the items of a row block (up to `max_group`) test the tokens together where the index does not vary
    along the columns."""
    if product is None or (product is not root and id(product) in materialized):
        return None
    found = match_one_hot_product(product)
    if found is None:
        return None
    to_space = _space_axes(root, product)
    if to_space is None or found.row_axis not in to_space:
        return None
    row_axis = to_space[found.row_axis]
    others = [axis for axis, size in enumerate(root.shape) if axis != row_axis and size > 1]
    rows, columns = block_sizes(gpu)
    column_axis = others[-1] if others else None
    rows = min(rows, root.shape[row_axis])
    if column_axis is None:
        return SegmentPlan(found, row_axis, None, rows, 1)
    columns = min(columns, root.shape[column_axis])
    along = next(axis for axis, kernel_axis in to_space.items() if kernel_axis == column_axis)
    shared = gpu and independent(found.index, found.index_at, probe(along))
    group = min(-(-root.shape[column_axis] // columns), max_group) if shared else 0
    return SegmentPlan(found, row_axis, column_axis, rows, columns, group)


def _space_axes(root: Node, product: Node) -> Optional[dict[int, int]]:
    """The kernel axis of each of the product's axes of more than one element, where those line up in order."""
    product_axes = [axis for axis, size in enumerate(product.shape) if size != 1]
    kernel_axes = [axis for axis, size in enumerate(root.shape) if size != 1]
    if [product.shape[a] for a in product_axes] != [root.shape[a] for a in kernel_axes]:
        return None
    return dict(zip(product_axes, kernel_axes))


class SegmentLowering(Lowering):
    """Lowering whose work items each own a rows x columns block of a one-hot product's outputs (see module doc);
    with `plan.group`, work groups of that many items own the blocks of a row block's consecutive columns."""

    def __init__(self, root: Node, materialized: dict[int, Node], produced: set[int], plan: SegmentPlan,
                 stored_apart: frozenset = frozenset(), param_limit: int = PARAM_LIMIT):
        super().__init__(root, materialized, produced, False, stored_apart, param_limit)
        self.plan, self.kind = plan, "s"
        block = {plan.row_axis: plan.rows}
        if plan.column_axis is not None:
            block[plan.column_axis] = plan.columns
        grid = [-(-size // block.get(axis, 1)) for axis, size in enumerate(self.space)]
        self.lid = Expr.var("lid", plan.group)
        if plan.group:  # the groups walk the grid, each item one column block of its group's
            grid[plan.column_axis] = -(-grid[plan.column_axis] // plan.group)  # type: ignore[index]
        self.items = math.prod(grid)
        cell = list(unravel(Expr.var("gid", self.items), tuple(grid)))
        if plan.group:
            cell[plan.column_axis] = cell[plan.column_axis] * plan.group + self.lid  # type: ignore[index]
        corner = tuple(c * block.get(axis, 1) for axis, c in enumerate(cell))
        self.elements, self.guards, self.offsets = [], [], []  # offsets: (row, column) of each element in the block
        for row in range(plan.rows):
            for column in range(plan.columns):
                offsets = {plan.row_axis: row, plan.column_axis: column}
                exact = {axis: corner[axis] + offsets[axis] for axis in block}
                self.guards.append(tuple((e, "lt", self.space[a]) for a, e in sorted(exact.items())
                                         if e.hi >= self.space[a]))
                # an element past the end computes (and never stores) a copy of the last one: its reads stay in range
                self.elements.append(tuple(Expr.minimum(exact[axis], self.space[axis] - 1) if axis in exact else c
                                           for axis, c in enumerate(corner)))
                self.offsets.append((row, column))
        self.positions = [linear(element, self.space) for element in self.elements]

    def _axes(self) -> tuple[Axis, ...]:
        group = (Axis("lid", self.plan.group, Role.LOCAL),) if self.plan.group else ()
        return (Axis("gid", self.items, Role.GLOBAL), *self._loops, *group,
                Axis("block", len(self.elements), Role.UPCAST))

    def _element_read(self, element: int) -> tuple[Index, Cond]:
        return self.elements[element], ()

    def _reduce(self, node: Node) -> list[_Value]:
        """Accumulators for every element, zero; one pass over the reduced axis testing each token's index against
        the block's rows and, where it hits one, adding the token's terms to that row's accumulators."""
        match = self.plan.match
        if node is not match.product:
            return super()._reduce(node)
        count = node.src[0].shape[node.arg[0]]
        self._longest_reduction = max(self._longest_reduction, count)
        at = [unravel(position, node.shape) for position in self._reduced_positions(node)]
        start = self.value(match.arange, (at[0][match.row_axis],), ())  # where the block's rows start
        back = self._emit(0, lambda out: Alu(Reg(out, start.operand.dtype), Op.NEG, (start.operand,))).operand
        kind = node.dtype.accumulated
        accumulators = [Reg(self.names.fresh("acc"), kind) for _ in self.elements]
        self._scopes[0] += [Define(acc, Const(0.0, kind)) for acc in accumulators]
        if self.plan.group:
            self._scan_together(count, at, back, accumulators)
        else:
            self._scan(count, at, back, accumulators)
        return [_Value(acc, 0) for acc in accumulators]

    def _scan(self, count: int, at: list[Index], back: Operand, accumulators: list[Reg]) -> None:
        """Every item walks the tokens, testing each one's index (per column, where it varies along them)."""
        step = self.names.fresh("t")
        self._open_loop(step, count)
        token = Expr.var(step, count)
        match = self.plan.match
        columns: dict[str, list[int]] = {}  # the index's register: the elements of the first row reading it
        indices = {}
        for element, (row, _) in enumerate(self.offsets):
            if row == 0:
                index = self.value(match.index, self._probed(match.index_at, at[element], token), ())
                columns.setdefault(index.operand.name, []).append(element)  # type: ignore[union-attr]
                indices[index.operand.name] = index  # type: ignore[union-attr]
        for name, firsts in columns.items():
            offset, hit = self._offset(indices[name].operand, back)
            self._add_hits(firsts, offset, hit, at, token, step, accumulators)
        self._scopes[0].append(Loop(step, count, tuple(self._close_loop())))

    def _scan_together(self, count: int, at: list[Index], back: Operand, accumulators: list[Reg]) -> None:
        """The group walks the tokens a chunk at a time: each item tests one token of the chunk and writes the row it
        hits (-1: none) to local memory, and marks the chunk as hit where its token hits; then, only in a chunk
        marked, every item walks the chunk's rows there (one cheap read a token). A block of 16 of GPT-2's 50 304
        rows is hit by about 5 of 16 384 tokens, so most chunks cost their test and two barriers alone (the walk of
        every chunk took 6.3 ms on the H200). The mark alternates between two words by the chunk's parity: each
        chunk clears the next one's, last read by the chunk before it (every item is past that read by now)."""
        group, match = self.plan.group, self.plan.match
        chunks = -(-count // group)
        hits, marks = self.names.fresh("hits"), self.names.fresh("marked")
        # (declared first, as local arrays are; both marks cleared before the first chunk's barrier)
        self._scopes[0][:0] = [LocalArray(hits, int32, group), LocalArray(marks, int32, 2)]
        self._scopes[0] += [LocalStore(marks, Expr(0), Const(0, int32)), LocalStore(marks, Expr(1), Const(0, int32))]
        chunk = self.names.fresh("c")
        self._open_loop(chunk, chunks)
        at_chunk = Expr.var(chunk, chunks)
        mine = at_chunk * group + self.lid
        index = self.value(match.index, self._probed(match.index_at, at[0], Expr.minimum(mine, count - 1)), ())
        offset, hit = self._offset(index.operand, back)
        depth = len(self._scopes) - 1
        row = self._emit(depth, lambda out: Alu(Reg(out, int32), Op.CAST, (offset,))).operand
        row = self._emit(depth, lambda out: Alu(Reg(out, int32), Op.WHERE, (hit, row, Const(-1, int32)))).operand
        if mine.hi >= count:  # the last chunk's tokens past the end hit nothing
            row = self._emit(depth, lambda out: Select(Reg(out, int32), ((mine, "lt", count),), row,
                                                       Const(-1, int32))).operand
        hits_mine = self._emit(depth, lambda out: Alu(Reg(out, bool_), Op.CMPLT, (Const(-1, int32), row))).operand
        parity = at_chunk % 2
        mark = If((), (LocalStore(marks, parity, Const(1, int32)),), hits_mine)  # type: ignore[arg-type]
        self._scopes[depth] += [Barrier(), LocalStore(hits, self.lid, row), mark, Barrier(),
                                LocalStore(marks, (at_chunk + 1) % 2, Const(0, int32))]
        marked = self._emit(depth, lambda out: LocalLoad(Reg(out, int32), marks, parity)).operand
        walked = self._emit(depth, lambda out: Alu(Reg(out, bool_), Op.CMPLT, (Const(0, int32), marked))).operand
        step = self.names.fresh("u")
        self._open_loop(step, group)
        token = Expr.minimum(at_chunk * group + Expr.var(step, group), count - 1)
        read = self._emit(depth + 1, lambda out: LocalLoad(Reg(out, int32), hits, Expr.var(step, group))).operand
        found = self._emit(depth + 1, lambda out: Alu(Reg(out, bool_), Op.CMPLT, (Const(-1, int32), read))).operand
        firsts = [element for element, (r, _) in enumerate(self.offsets) if r == 0]
        self._add_hits(firsts, read, found, at, token, step, accumulators)
        inner = Loop(step, group, tuple(self._close_loop()))
        self._scopes[depth].append(If((), (inner,), walked))  # type: ignore[arg-type]
        self._scopes[0].append(Loop(chunk, chunks, tuple(self._close_loop())))

    def _offset(self, index: Operand, back: Operand) -> tuple[Operand, Operand]:
        """In the innermost loop: the index's row in the block (index - start) and whether it is one of the block's."""
        kind, rows, depth = index.dtype, self.plan.rows, len(self._scopes) - 1
        offset = self._emit(depth, lambda out: Alu(Reg(out, kind), Op.ADD, (index, back))).operand
        below = self._emit(depth, lambda out: Alu(Reg(out, bool_), Op.CMPLT, (offset, Const(rows, kind)))).operand
        above = self._emit(depth, lambda out: Alu(Reg(out, bool_), Op.CMPLT, (Const(-1, kind), offset))).operand
        return offset, self._emit(depth, lambda out: Alu(Reg(out, bool_), Op.AND, (below, above))).operand

    def _add_hits(self, firsts: list[int], offset: Operand, hit: Operand, at: list[Index], token: Expr, step: str,
                  accumulators: list[Reg]) -> None:
        """In the loop over `step`: a branch, taken where `hit`, adding the token's terms of the columns of the first
        row's elements `firsts` to the accumulators of the row `offset` names (a select per row)."""
        match, rows = self.plan.match, self.plan.rows
        depth = len(self._scopes) - 1
        self._scopes.append([])  # the branch's body: what depends on the step is lowered into it from here
        self._trips.append(1)
        self._loop_depth[step] += 1
        equal = [self._emit(depth + 1, lambda out, row=row: Alu(Reg(out, bool_), Op.CMPEQ,
                                                                (offset, Const(row, offset.dtype))))
                 for row in range(rows)]
        for first in firsts:
            term = self._term(self.value(match.other, self._probed(match.other_at, at[first], token), ()))
            for element in range(first, len(self.elements), self.plan.columns):
                row = self.offsets[element][0]
                picked = self._emit(depth + 1, lambda out, row=row: Alu(
                    Reg(out, term.dtype), Op.WHERE, (equal[row].operand, term, Const(0.0, term.dtype))))
                self._scopes[-1].append(Accumulate(accumulators[element], Op.ADD, picked.operand))
        self._loop_depth[step] -= 1
        self._trips.pop()
        body = self._scopes.pop()
        self._scopes[depth].append(If((), tuple(body), hit))  # type: ignore[arg-type]

    def _term(self, value: _Value) -> Operand:
        """A term as the accumulators add it (float32 for half precision, as a product's terms are, lower.py)."""
        kind = self.plan.match.product.dtype.accumulated
        if value.operand.dtype == kind:
            return value.operand
        return self._emit(len(self._scopes) - 1, lambda out: Alu(Reg(out, kind), Op.CAST, (value.operand,))).operand

    def _probed(self, index: Index, position: Index, token: Expr) -> Index:
        """`index` (over the probes and COUNTER) at the product's `position` and the reduced axis's `token`."""
        values = {probe(axis): e for axis, e in enumerate(position)}
        values[COUNTER] = token
        return tuple(substitute(e, values) for e in index)


def lower_segments(root: Node, materialized: dict[int, Node], produced: set[int], plan: SegmentPlan,
                   stored_apart: frozenset = frozenset(), param_limit: int = PARAM_LIMIT):
    """The IR of the kernel storing `root`, whose one-hot product is summed as `plan` says."""
    return SegmentLowering(root, materialized, produced, plan, stored_apart, param_limit).lower()
