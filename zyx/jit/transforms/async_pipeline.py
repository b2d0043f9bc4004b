"""Multi-stage pipelines of asynchronous copies: a staging loop whose slices are copied global -> local without
registers (AsyncCopy: NVIDIA's cp.async, tensor_cores.py) runs `stages` buffers deep, so up to stages - 1 slices
are in flight while the group computes on one, with one barrier per slice and no registers holding the next slice.

With ahead = min(stages - 1, trips) slices issued (each closed by an AsyncCommit) before the loop, step s:
  issue slice s + ahead (where it exists) into buffer (s + ahead) % stages, commit (an empty group past the end,
  so that the count stays uniform), compute slice s from buffer s % stages, wait until at most ahead - 1 groups
  are in flight (slice s + 1 has landed), barrier.
The buffer slice s + ahead goes to was last read at step s + ahead - stages < s, before the previous step's barrier.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from ..kernel_ir import AsyncCommit, AsyncCopy, AsyncWait, Barrier, If, Kernel, LocalArray, Loop, Statement, simplify_cond
from ..symbolic import Expr
from .double_buffer import at_step


def pipeline(kernel: Kernel, stages: int) -> Optional[Kernel]:
    """`kernel` with its staging loop pipelined over `stages` buffers of each local array it copies into; None
    where it has no staging loop made of AsyncCopies only."""
    if stages < 2:
        raise ValueError(f"a pipeline needs 2 stages or more, not {stages}")
    position = next((p for p, s in enumerate(kernel.body) if _copying(s) is not None), None)
    if position is None:
        return None
    loop: Loop = kernel.body[position]
    copies, compute = _copying(loop)  # type: ignore[misc]
    copied = {s.array for s in copies}
    halves = {s.name: s for s in kernel.body[:position] if isinstance(s, LocalArray) and s.name in copied}
    steps = loop.trips
    ahead = min(stages - 1, steps)
    step = Expr.var(loop.var, steps)
    lines: list = []
    for s in range(ahead):
        lines += [*at_step(copies, loop.var, Expr(s), Expr(s), halves, ""), AsyncCommit()]
    lines += [AsyncWait(ahead - 1), Barrier()]
    cond = simplify_cond(((step + ahead, "lt", steps),))
    following = at_step(copies, loop.var, step + ahead, (step + ahead) % stages, halves, "")
    issue = () if cond is None else (If(cond, following),)
    computed = at_step(compute, loop.var, step, step % stages, halves, "")
    lines.append(Loop(loop.var, steps, (*issue, AsyncCommit(), *computed, AsyncWait(ahead - 1), Barrier())))
    arrays = tuple(dataclasses.replace(s, size=stages * s.size) if isinstance(s, LocalArray) and s.name in halves else s
                   for s in kernel.body[:position])
    return dataclasses.replace(kernel, body=arrays + tuple(lines) + kernel.body[position + 1:])


def _copying(statement: Statement) -> Optional[tuple[tuple, tuple]]:
    """(copies, compute) of a staging loop whose body is AsyncCopies, a Barrier, statements computing from the
    local arrays, a Barrier; None for any other statement."""
    if not isinstance(statement, Loop) or len(statement.body) < 3 or statement.body[-1] != Barrier():
        return None
    first = next((p for p, s in enumerate(statement.body) if isinstance(s, Barrier)), None)
    copies, compute = statement.body[:first], statement.body[first + 1:-1]
    if not copies or not all(isinstance(s, AsyncCopy) for s in copies) or any(isinstance(s, Barrier) for s in compute):
        return None
    return copies, compute
