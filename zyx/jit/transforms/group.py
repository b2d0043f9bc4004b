"""A work group per output: its items stride over each reduction together (coalesced reads on a GPU), then
combine their partial results in local memory, halving. A vector accumulator's lanes are combined first, so the
tree moves scalars (on the H200 a softmax row kernel's float4 trees cost a quarter of its bandwidth).

Where the reduced values lie far apart and adjacent outputs' values side by side (a column sum: a bias's
gradient over 16 384 tokens), items striding along the reduction would each read a value of its own 32-byte
sector; a group then takes COLUMNS adjacent outputs, its items in slices of COLUMNS along them, so that neighbouring
items read neighbouring values, and the tree combines the slices of each column.

Where the device has NVIDIA's warp shuffles (`shuffles`: a device running PTX, tensor_cores.py), float32 partials are
combined within each warp of 32 items by shuffles first, then each warp's one per column through local memory after
a single barrier, every item adding the warps' values: the local-memory tree took a barrier a level (W7's row sums over
768 bf16 values in groups of 256 read 0.94 TB/s on an H100, where rows twice as long read 2.4-2.7)."""
from __future__ import annotations

import dataclasses

from ...dtypes import float32
from ...trace.ops import Op
from ..kernel_ir import (Alu, Axis, Barrier, Break, Broadcast, If, Kernel, LaneSelect, Load, LocalArray, LocalLoad,
                         LocalStore, Loop, Operand, Reg, Role, Store, WarpShuffle, reduce_start, substitute, walk)
from ..symbolic import Expr
from . import accumulators, copy_body, fold_lanes, rename_all
from .online_sums import online_pairs, rescaled

# Strided loops of at most this many trips per item are unrolled whole (a row kernel's passes: 2-8 vectors each).
UNROLLED_TRIPS = 8
COLUMNS = 8  # adjacent outputs per group where the reduction reads far apart: 8 floats fill a 32-byte sector
# ... where that leaves this many groups at least: on the H200 a bias gradient over 16 384 tokens ran faster in
# 384 groups (3072 columns) than strided, and 30 times slower in 96 (768 columns: too few items to hide latency)
COLUMN_MIN_GROUPS = 384
GROUP_MAX_OUTPUTS = 1 << 16  # with more outputs than this the device is busy enough without groups (schedule.py)
WARP = 32  # items a shuffle reaches


def group_reductions(kernel: Kernel, group: int, shuffles: bool = False) -> Kernel:
    """`kernel` with `group` (a power of two) items per output: every top-level loop strided over the items
    (a reducing loop then combines their accumulators, a loop storing a row kernel's outputs stores each item's
    share); a store outside loops by the first item only. `shuffles`: float32 partials combined by warp shuffles
    first (see the module)."""
    columns = column_outputs(kernel, group)
    slices = group // columns
    lid = Expr.var("lid", group)
    column, position = lid % columns, lid // columns  # (0 and lid for one column)
    body: list = []
    names: dict[str, Operand] = {}
    trips_of: dict[str, int] = {}
    statements = kernel.body
    output = kernel.axis(Role.GLOBAL)
    if columns > 1:  # output `gid` of the kernel is column `lid % columns` of group `gid`
        trips_of[output.name] = output.size // columns
        statements = copy_body(statements, {output.name: Expr.var(output.name, output.size // columns) * columns
                                            + column}, "", {})
    for statement in statements:
        statement, = rename_all((statement,), names)
        if isinstance(statement, Store):
            body.append(If(((lid, "lt", columns),), (statement,)))
        elif isinstance(statement, Loop):
            body += _strided(statement, slices, position, trips_of)
            online = online_pairs(statement)  # (sums rescaled to a running maximum: after the maximum's tree)
            for acc, op in accumulators(statement):
                if acc not in online:
                    body += _tree(acc, op, lid, group, names, columns, shuffles)
            for acc, maximum in online.items():
                body += rescaled(acc, maximum) + _tree(acc, Op.ADD, lid, group, names, columns, shuffles)
        else:
            body.append(statement)
    axes = tuple(Axis(a.name, trips_of.get(a.name, a.size), a.role) for a in kernel.axes) + (Axis("lid", group, Role.LOCAL),)
    return dataclasses.replace(kernel, kind="g", axes=axes, body=tuple(body))


def _strided(loop: Loop, slices: int, position: Expr, trips_of: dict[str, int]) -> list:
    """`loop` strided over `slices` items (this one at `position`): the trips every item takes as a loop of
    their own, then, where `slices` does not divide the loop, the last one under a guard. (Breaking out of the
    loop past its end instead kept NVIDIA's compiler from unrolling it: a row max over W7's 50 304 logits, a
    load in flight per item at a time, read 650 GB/s on an H100.) Items sharing a loop shorter than `slices`
    leave it once past its end."""
    whole = loop.trips // slices
    if whole == 0:
        trips = -(-loop.trips // slices)
        trips_of[loop.var] = trips
        index = Expr.var(loop.var, trips) * slices + position
        exit_early = If(((index, "ge", loop.trips),), (Break(),))
        return [Loop(loop.var, trips, (exit_early,) + copy_body(
            loop.body, {loop.var: Expr.clamped(index, 0, loop.trips - 1)}, "", {}))]
    trips_of[loop.var] = whole
    index = Expr.var(loop.var, whole) * slices + position
    lines: list = [Loop(loop.var, whole, copy_body(loop.body, {loop.var: index}, "", {}),
                        unroll=whole <= UNROLLED_TRIPS)]
    if loop.trips % slices:
        last = position + whole * slices
        lines.append(If(((last, "lt", loop.trips),),
                        copy_body(loop.body, {loop.var: Expr.clamped(last, 0, loop.trips - 1)}, "_last", {})))
    return lines


def _tree(acc: Reg, op, lid: Expr, group: int, names: dict[str, Operand], columns: int = 1,
          shuffles: bool = False) -> list:
    """Every item's `acc` into local memory, combined pairwise (the slices of each of `columns` columns: items
    `columns` apart), or with `shuffles` within warps first (`_warp_tree`); `acc` renamed to the total, which every
    item of the column reads. A vector `acc` is combined lane by lane first; its total is then lane 0 of a vector
    whose other lanes hold `op`'s identity, so that code combining `acc`'s lanes later finds the total."""
    lines: list = []
    value = acc
    if acc.width > 1:
        lines, value = fold_lanes(acc, op, f"{acc.name}_item")
    result = Reg(f"{acc.name}_total", acc.dtype)
    if shuffles and acc.dtype == float32 and group % WARP == 0 and columns <= WARP:
        lines += _warp_tree(acc.name, value, op, lid, group, columns, result)
    else:
        shared, kept = f"{acc.name}_shared", acc.dtype.accumulated  # partial sums of half precision stay float32
        lines += [LocalArray(shared, kept, group, 1), LocalStore(shared, lid, value), Barrier()]
        step = group // 2
        while step >= columns:
            mine, theirs, total = (Reg(f"{acc.name}_{part}{step}", acc.dtype) for part in ("a", "b", "c"))
            lines += [If(((lid, "lt", step),), (LocalLoad(mine, shared, lid), LocalLoad(theirs, shared, lid + step),
                                                Alu(total, op, (mine, theirs)), LocalStore(shared, lid, total))),
                      Barrier()]
            step //= 2
        lines.append(LocalLoad(result, shared, lid % columns))
    if acc.width > 1:
        spread, lanes = Reg(f"{acc.name}_spread", acc.dtype, acc.width), Reg(f"{acc.name}_lanes", acc.dtype, acc.width)
        identity = reduce_start(op, acc.dtype, acc.width)
        lines += [Broadcast(spread, result), LaneSelect(lanes, (True,) + (False,) * (acc.width - 1), spread, identity)]
        result = lanes
    names[acc.name] = result
    return lines


def _warp_tree(name: str, value: Operand, op, lid: Expr, group: int, columns: int, result: Reg) -> list:
    """`value` (float32) combined over the items of each of `columns` columns into `result`: within each warp by
    butterfly shuffles over the lanes `columns` and more apart (lane l then holds its column's warp total for
    column l % columns), those of lanes below `columns` into local memory, one barrier, and every item combining
    the warps' values of its column in warp order."""
    lines: list = []
    mask = WARP // 2
    while mask >= columns:
        theirs, combined = Reg(f"{name}_x{mask}", float32), Reg(f"{name}_w{mask}", float32)
        lines += [WarpShuffle(theirs, value, mask), Alu(combined, op, (value, theirs))]
        value, mask = combined, mask // 2
    shared, lane, warps = f"{name}_warps", lid % WARP, group // WARP
    lines += [LocalArray(shared, float32, warps * columns, 1),
              If(((lane, "lt", columns),), (LocalStore(shared, lid // WARP * columns + lane, value),)), Barrier()]
    column = lid % columns
    parts = [result] if warps == 1 else [Reg(f"{name}_p{w}", float32) for w in range(warps)]
    lines += [LocalLoad(part, shared, column + w * columns) for w, part in enumerate(parts)]
    total: Operand = parts[0]
    for w, part in enumerate(parts[1:], 1):
        combined = result if w == warps - 1 else Reg(f"{name}_s{w}", float32)
        lines.append(Alu(combined, op, (total, part)))
        total = combined
    return lines


def column_outputs(kernel: Kernel, group: int) -> int:
    """Adjacent outputs a group of `group` items takes: COLUMNS where every value the reductions read lies next
    to the adjacent output's (or is the same for both) and some lies far from the next value of its reduction
    (a column sum), the outputs divide into at least COLUMN_MIN_GROUPS such groups and each reduction is scalar;
    else 1."""
    output = kernel.axis(Role.GLOBAL)
    loops = [s for s in kernel.body if isinstance(s, Loop)]
    if output is None or output.size % COLUMNS or output.size // COLUMNS < COLUMN_MIN_GROUPS or group % COLUMNS \
            or group == COLUMNS or not loops:
        return 1
    if any(acc.width > 1 for loop in loops for acc, _ in accumulators(loop)):
        return 1
    strided = False
    for loop in loops:
        if any(isinstance(s, Store) for s in walk(loop.body)):  # (a row kernel storing along its row)
            return 1
        for load in (s for s in walk(loop.body) if isinstance(s, Load)):
            if load.indirect is not None or load.mode != "element":
                return 1
            at = {name: Expr(0) for name in load.index.variables()}

            def step(name: str) -> int:
                return substitute(load.index, {**at, name: Expr(1)}).const - substitute(load.index, at).const
            across, along = step(output.name), step(loop.var)
            if across not in (0, 1):
                return 1
            strided |= across == 1 and abs(along) > 1
    return COLUMNS if strided else 1
