"""Several independent accumulators per reduction loop: the adds no longer wait on each other, and compilers
vectorize them."""
from __future__ import annotations

import dataclasses
from typing import Callable

from ..kernel_ir import Alu, Axis, Define, Kernel, Loop, Operand, Reg, reduce_start, walk
from ..symbolic import Expr
from . import accumulators, copy_body, rename_all

# Statements an unrolled loop body may reach: a long fused body (an LSTM cell's gate gradients, hundreds of
# statements) gains nothing from more accumulators, while eight copies of it took PoCL 40 s to compile.
UNROLLED_STATEMENTS = 256


def unroll_reductions(kernel: Kernel, factor: Callable[[int], int]) -> Kernel:
    """Each top-level loop of `trips` steps with factor(trips) = f > 1 walks f steps per trip, one accumulator
    each (a second loop takes the remainder into the first), then combines them pairwise, for accuracy and short
    dependency chains. f is halved while f copies of the body would exceed UNROLLED_STATEMENTS."""
    body: list = []
    names: dict[str, Operand] = {}
    trips_of: dict[str, int] = {}
    for statement in kernel.body:
        statement, = rename_all((statement,), names)  # accumulators combined by an earlier loop's unrolling
        f = factor(statement.trips) if isinstance(statement, Loop) else 1
        if f > 1:
            statements = sum(1 for _ in walk(statement.body))
            while f > 1 and f * statements > UNROLLED_STATEMENTS:
                f //= 2
        if f <= 1:
            body.append(statement)
            continue
        body += _unrolled(statement, f, names)
        trips_of[statement.var] = statement.trips // f
    axes = tuple(Axis(a.name, trips_of.get(a.name, a.size), a.role) for a in kernel.axes)
    return dataclasses.replace(kernel, axes=axes, body=tuple(body))


def _unrolled(loop: Loop, f: int, names: dict[str, Operand]) -> list:
    accs = accumulators(loop)
    copies = [[acc if j == 0 else Reg(f"{acc.name}_{j}", acc.dtype, acc.width) for j in range(f)] for acc, _ in accs]
    lines: list = [Define(copy, reduce_start(op, acc.dtype, acc.width))
                   for (acc, op), row in zip(accs, copies) for copy in row[1:]]
    step = Expr.var(loop.var, loop.trips // f) * f
    main: list = []
    for j in range(f):
        main += copy_body(loop.body, {loop.var: step + j}, f"_{j}", {acc.name: row[j] for (acc, _), row in zip(accs, copies)})
    lines.append(Loop(loop.var, loop.trips // f, tuple(main)))
    if loop.trips % f:
        rest = f"{loop.var}t"
        tail = {loop.var: Expr.var(rest, loop.trips % f) + loop.trips // f * f}
        lines.append(Loop(rest, loop.trips % f, copy_body(loop.body, tail, "_t", {})))
    for (acc, op), row in zip(accs, copies):
        level = 0
        while len(row) > 1:
            pairs = [Reg(f"{acc.name}_p{level}_{i}", acc.dtype, acc.width) for i in range(len(row) // 2)]
            lines += [Alu(pair, op, (a, b)) for pair, a, b in zip(pairs, row[::2], row[1::2])]
            row, level = pairs + row[len(pairs) * 2:], level + 1
        names[acc.name] = row[0]
    return lines
