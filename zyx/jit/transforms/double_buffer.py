"""Double-buffered local tiles: while a work group computes on one staged slice, each item holds its share of
the next in registers and then writes it to the other half of the (doubled) local arrays, so one barrier per
slice suffices and the global reads' latency hides behind the arithmetic.

The staging loop it rewrites is the one the GPU product lowers to (matmul.py): per trip, values read from
global memory, LocalStores of them, a Barrier, the statements computing from the local arrays, a Barrier.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from ..kernel_ir import (AsyncCopy, Axis, Barrier, Const, Kernel, LocalArray, LocalLoad, LocalRoundTF32, LocalStore, Load,
                         Loop, MatrixLoad, Operand, Select, Statement, WarpgroupMma, simplify_cond)
from ..symbolic import Expr
from . import copy_body, rename_all


def double_buffer(kernel: Kernel) -> Optional[Kernel]:
    """`kernel` with its staging loop of `trips` steps pipelined over two buffers: the first slice staged before
    it, a loop of trips - 1 steps each reading slice s + 1, computing on slice s and storing slice s + 1 into the
    other buffer, then the last slice computed. None where the kernel has no staging loop."""
    position = next((p for p, s in enumerate(kernel.body) if _staging(s) is not None), None)
    if position is None:
        return None
    loop: Loop = kernel.body[position]
    fetch, put, compute = _staging(loop)  # type: ignore[misc]
    stored = {s.array for s in put}
    halves = {s.name: s for s in kernel.body if isinstance(s, LocalArray) and s.name in stored}
    steps = loop.trips
    step = Expr.var(loop.var, steps - 1)
    lines = [*at_step(fetch + put, loop.var, Expr(0), Expr(0), halves, ""), Barrier()]
    if steps > 1:
        following = at_step(fetch + put, loop.var, step + 1, (step + 1) % 2, halves, "_next")
        computed = at_step(compute, loop.var, step, step % 2, halves, "")
        stores = tuple(s for s in following if isinstance(s, LocalStore))
        reads = tuple(s for s in following if not isinstance(s, LocalStore))
        lines.append(Loop(loop.var, steps - 1, reads + computed + stores + (Barrier(),)))
    lines += at_step(compute, loop.var, Expr(steps - 1), Expr((steps - 1) % 2), halves, "_last")
    doubled = tuple(dataclasses.replace(s, size=2 * s.size) if isinstance(s, LocalArray) and s.name in halves else s
                    for s in kernel.body[:position])
    axes = tuple(Axis(a.name, steps - 1, a.role) if a.name == loop.var else a for a in kernel.axes
                 if a.name != loop.var or steps > 1)
    return dataclasses.replace(kernel, axes=axes, body=doubled + tuple(lines) + kernel.body[position + 1:])


def _staging(statement: Statement) -> Optional[tuple[tuple, tuple, tuple]]:
    """(fetch, put, compute) of a staging loop: its statements before the first barrier but its LocalStores,
    those LocalStores, and what lies between the two barriers that close its body; None for any other
    statement."""
    if not isinstance(statement, Loop) or len(statement.body) < 2 or statement.body[-1] != Barrier():
        return None
    body = statement.body[:-1]
    first = next((p for p, s in enumerate(body) if isinstance(s, Barrier)), None)
    if first is None or any(isinstance(s, Barrier) for s in body[first + 1:]):
        return None
    put = tuple(s for s in body[:first] if isinstance(s, LocalStore))
    if not put:
        return None
    return tuple(s for s in body[:first] if not isinstance(s, LocalStore)), put, body[first + 1:]


def at_step(body: tuple, var: str, value: Expr, slot: Expr, halves: dict[str, LocalArray], suffix: str) -> tuple:
    """`body` at `var` = `value` (its registers renamed with `suffix`, the guards that settles dropped), reading
    and writing the local arrays in `halves` (by name: one buffer's declaration) in buffer `slot`."""
    return in_buffer(_settled(copy_body(body, {var: value}, suffix, {})), slot, halves)


def in_buffer(body: tuple, slot: Expr, halves: dict[str, LocalArray]) -> tuple:
    """`body` with each access to an array in `halves` moved to buffer `slot`: by the buffer's vectors, or its
    elements for a LocalStore with `element`."""
    def moved(statement: Statement) -> Statement:
        if isinstance(statement, Loop):
            return dataclasses.replace(statement, body=in_buffer(statement.body, slot, halves))
        if isinstance(statement, (LocalLoad, LocalStore, MatrixLoad, AsyncCopy, LocalRoundTF32)) \
                and statement.array in halves:
            half = halves[statement.array]
            elements = isinstance(statement, LocalStore) and statement.element
            size = half.size * (half.width if elements else 1)
            return dataclasses.replace(statement, index=statement.index + slot * size)
        if isinstance(statement, WarpgroupMma):
            moves = {f"{operand}_index": getattr(statement, f"{operand}_index") + slot * halves[array].size
                     for operand in ("a", "b") if (array := getattr(statement, f"{operand}_array")) in halves}
            return dataclasses.replace(statement, **moves)
        return statement
    return tuple(moved(statement) for statement in body)


def _settled(body: tuple, names: Optional[dict[str, Operand]] = None) -> tuple:
    """`body` with the guards a substitution settled dropped, as lowering at that value would have made them: a
    Select whose condition always (never) holds is its value (fill), a Load whose guard always (never) holds reads
    unguarded (is zero), an AsyncCopy whose guard always holds copies unguarded."""
    names = {} if names is None else names
    settled: list = []
    for statement in body:
        statement, = rename_all((statement,), names)
        if isinstance(statement, Loop):
            settled.append(dataclasses.replace(statement, body=_settled(statement.body, names)))
            continue
        if isinstance(statement, AsyncCopy) and statement.guard:  # (one that never holds copies zeros: kept)
            cond = simplify_cond(statement.guard)
            statement = dataclasses.replace(statement, guard=statement.guard if cond is None else cond)
        elif isinstance(statement, (Select, Load)):
            cond = simplify_cond(statement.cond if isinstance(statement, Select) else statement.guard)
            if isinstance(statement, Select) and cond is not None and cond != ():
                statement = dataclasses.replace(statement, cond=cond)
            elif isinstance(statement, Select):
                names[statement.out.name] = statement.value if cond == () else statement.fill
                continue
            elif cond is None:
                names[statement.out.name] = Const(0, statement.out.dtype, statement.out.width)
                continue
            else:
                statement = dataclasses.replace(statement, guard=cond)
        settled.append(statement)
    return tuple(settled)
