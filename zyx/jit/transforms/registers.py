"""A GPU row kernel's row kept in registers: every pass reads the item's share of the row again (softmax: the
max, the sum, the outputs; a layer norm: mean, variance, outputs), and NVIDIA's compiler loads it again after
each barrier that the reductions between passes need. The passes' loops (the few strided trips each item takes,
group.UNROLLED_TRIPS at most) are unrolled whole, and a load that a later pass repeats (the same buffer,
element, guard and mode) reads the first load's register instead."""
from __future__ import annotations

import dataclasses

from ..kernel_ir import Kernel, Load, Loop, Operand, Reg
from ..symbolic import Expr
from . import copy_body, rename_all


def rows_in_registers(kernel: Kernel) -> Kernel:
    """`kernel` (group.group_reductions's) with its unrolled top-level loops straight-line code and each load
    of an element made once."""
    body: list = []
    names: dict[str, Operand] = {}
    first: dict[tuple, Reg] = {}
    unrolled = set()
    for statement in kernel.body:
        lines = (statement,)
        if isinstance(statement, Loop) and statement.unroll:
            unrolled.add(statement.var)
            lines = sum((copy_body(statement.body, {statement.var: Expr(trip)}, f"_{statement.var}{trip}", {})
                         for trip in range(statement.trips)), ())
        for line in lines:
            line, = rename_all((line,), names)
            if isinstance(line, Load):
                key = (line.buffer, line.index.key, tuple((e.key, op, k) for e, op, k in line.guard), line.mode,
                       line.indirect)
                if key in first:
                    names[line.out.name] = first[key]
                    continue
                first[key] = line.out
            body.append(line)
    axes = tuple(a for a in kernel.axes if a.name not in unrolled)
    return dataclasses.replace(kernel, axes=axes, body=tuple(body))
