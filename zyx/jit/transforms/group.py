"""A work group per output: its items stride over each reduction together (coalesced reads on a GPU), then
combine their partial results in local memory, halving."""
from __future__ import annotations

import dataclasses

from ..kernel_ir import (Alu, Axis, Barrier, Break, If, Kernel, LocalArray, LocalLoad, LocalStore, Loop, Operand,
                         Reg, Role, Store)
from ..symbolic import Expr
from . import accumulators, copy_body, rename_all


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
            body.append(Loop(statement.var, trips, exit_early + copy_body(statement.body, {statement.var: index}, "", {})))
            for acc, op in accumulators(statement):
                body += _tree(acc, op, lid, group, names)
        else:
            body.append(statement)
    axes = tuple(Axis(a.name, trips_of.get(a.name, a.size), a.role) for a in kernel.axes) + (Axis("lid", group, Role.LOCAL),)
    return dataclasses.replace(kernel, kind="g", axes=axes, body=tuple(body))


def _tree(acc: Reg, op, lid: Expr, group: int, names: dict[str, Operand]) -> list:
    """Every item's `acc` into local memory, combined pairwise (vectors lane by lane); `acc` renamed to the
    total, which every item reads."""
    shared = f"{acc.name}_shared"
    lines: list = [LocalArray(shared, acc.dtype, group, acc.width), LocalStore(shared, lid, acc), Barrier()]
    step = group // 2
    while step:
        mine, theirs, total = (Reg(f"{acc.name}_{part}{step}", acc.dtype, acc.width) for part in ("a", "b", "c"))
        lines += [If(((lid, "lt", step),), (LocalLoad(mine, shared, lid), LocalLoad(theirs, shared, lid + step),
                                            Alu(total, op, (mine, theirs)), LocalStore(shared, lid, total))),
                  Barrier()]
        step //= 2
    result = Reg(f"{acc.name}_total", acc.dtype, acc.width)
    names[acc.name] = result
    return lines + [LocalLoad(result, shared, Expr(0))]
