"""A work group per output: its items stride over each reduction together (coalesced reads on a GPU), then
combine their partial results in local memory, halving. A vector accumulator's lanes are combined first, so the
tree moves scalars (on the H200 a softmax row kernel's float4 trees cost a quarter of its bandwidth)."""
from __future__ import annotations

import dataclasses

from ...dtypes import float32
from ..kernel_ir import (Alu, Axis, Barrier, Break, Broadcast, If, Kernel, LaneSelect, LocalArray, LocalLoad,
                         LocalStore, Loop, Operand, Reg, Role, Store, reduce_start)
from ..symbolic import Expr
from . import accumulators, copy_body, fold_lanes, rename_all

# Strided loops of at most this many trips per item are unrolled whole (a row kernel's passes: 2-8 vectors each).
UNROLLED_TRIPS = 8


def group_reductions(kernel: Kernel, group: int) -> Kernel:
    """`kernel` with `group` (a power of two) items per output: every top-level loop strided over the items
    (a reducing loop then combines their accumulators, a loop storing a row kernel's outputs stores each item's
    share); a store outside loops by the first item only."""
    lid = Expr.var("lid", group)
    body: list = []
    names: dict[str, Operand] = {}
    trips_of: dict[str, int] = {}
    for statement in kernel.body:
        statement, = rename_all((statement,), names)
        if isinstance(statement, Store):
            body.append(If(((lid, "lt", 1),), (statement,)))
        elif isinstance(statement, Loop):
            trips = -(-statement.trips // group)
            trips_of[statement.var] = trips
            index = Expr.var(statement.var, trips) * group + lid
            exit_early: tuple = ()
            if statement.trips % group:
                exit_early = (If(((index, "ge", statement.trips),), (Break(),)),)
                index = Expr.clamped(index, 0, statement.trips - 1)
            body.append(Loop(statement.var, trips, exit_early + copy_body(statement.body, {statement.var: index}, "", {}),
                             unroll=not exit_early and trips <= UNROLLED_TRIPS))
            for acc, op in accumulators(statement):
                body += _tree(acc, op, lid, group, names)
        else:
            body.append(statement)
    axes = tuple(Axis(a.name, trips_of.get(a.name, a.size), a.role) for a in kernel.axes) + (Axis("lid", group, Role.LOCAL),)
    return dataclasses.replace(kernel, kind="g", axes=axes, body=tuple(body))


def _tree(acc: Reg, op, lid: Expr, group: int, names: dict[str, Operand]) -> list:
    """Every item's `acc` into local memory, combined pairwise; `acc` renamed to the total, which every item
    reads. A vector `acc` is combined lane by lane first; its total is then lane 0 of a vector whose other lanes
    hold `op`'s identity, so that code combining `acc`'s lanes later finds the total."""
    lines: list = []
    value = acc
    if acc.width > 1:
        lines, value = fold_lanes(acc, op, f"{acc.name}_item")
    shared = f"{acc.name}_shared"
    kept = float32 if acc.dtype.is_narrow_float else acc.dtype  # partial sums of half precision stay float32
    lines += [LocalArray(shared, kept, group, 1), LocalStore(shared, lid, value), Barrier()]
    step = group // 2
    while step:
        mine, theirs, total = (Reg(f"{acc.name}_{part}{step}", acc.dtype) for part in ("a", "b", "c"))
        lines += [If(((lid, "lt", step),), (LocalLoad(mine, shared, lid), LocalLoad(theirs, shared, lid + step),
                                            Alu(total, op, (mine, theirs)), LocalStore(shared, lid, total))),
                  Barrier()]
        step //= 2
    result = Reg(f"{acc.name}_total", acc.dtype)
    lines.append(LocalLoad(result, shared, Expr(0)))
    if acc.width > 1:
        spread, lanes = Reg(f"{acc.name}_spread", acc.dtype, acc.width), Reg(f"{acc.name}_lanes", acc.dtype, acc.width)
        identity = reduce_start(op, acc.dtype, acc.width)
        lines += [Broadcast(spread, result), LaneSelect(lanes, (True,) + (False,) * (acc.width - 1), spread, identity)]
        result = lanes
    names[acc.name] = result
    return lines
