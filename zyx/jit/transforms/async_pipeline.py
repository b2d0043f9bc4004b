"""Multi-stage pipelines of asynchronous copies: a staging loop whose slices are copied global -> local without
registers (AsyncCopy: NVIDIA's cp.async, tensor_cores.py) runs `stages` buffers deep, so up to stages - 1 slices
are in flight while the group computes on one, with one barrier per slice. Values a slice stages through registers
(an operand computed by a fused prologue) are read before the computation and stored after it, as double buffering
does (double_buffer.py), into their own stage of the same depth.

With ahead = min(stages - 1, trips) slices staged (their copies each closed by an AsyncCommit) by a loop before it,
step s: issue the copies of slice s + ahead (where it exists) into buffer (s + ahead) % stages, read its register
values, commit (an empty group past the end, so that the count stays uniform), compute slice s from buffer
s % stages, store the register values into buffer (s + ahead) % stages, wait until at most ahead - 1 groups are in
flight (slice s + 1 has landed), barrier (before it, where warpgroup products read the slices, an AsyncProxyFence). The buffer slice s + ahead goes to was last read at step
s + ahead - stages < s, before the previous step's barrier. Past the last slice the register values read are the
last slice's again (reads stay inside the operands) and are not stored.

A tile TF32 warpgroup products read through a descriptor is rounded to TF32 in place once landed (`tf32_rounding`:
the tensor cores would truncate it): after the wait, before the fence, each item rounds its own copies of slice
s + 1 (cp.async's writes are visible to the item that issued them once waited for).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from ..kernel_ir import (AsyncCommit, AsyncCopy, AsyncProxyFence, AsyncWait, Barrier, If, Kernel, LocalArray,
                         LocalRoundTF32, LocalStore, Loop, Statement, WarpgroupMma, simplify_cond, walk)
from ..symbolic import Expr
from .double_buffer import at_step


def pipeline(kernel: Kernel, stages: int, round_tiles: bool = True) -> Optional[Kernel]:
    """`kernel` with its staging loop pipelined over `stages` buffers of each local array it stages into (the tiles
    TF32 products read through descriptors rounded once landed unless not `round_tiles`); None where it has no
    staging loop with an AsyncCopy."""
    if stages < 2:
        raise ValueError(f"a pipeline needs 2 stages or more, not {stages}")
    position = next((p for p, s in enumerate(kernel.body) if staging_parts(s) is not None), None)
    if position is None:
        return None
    loop: Loop = kernel.body[position]
    fetch, copies, stores, compute = staging_parts(loop)  # type: ignore[misc]
    staged = {s.array for s in copies + stores}
    halves = {s.name: s for s in kernel.body[:position] if isinstance(s, LocalArray) and s.name in staged}
    steps = loop.trips
    ahead = min(stages - 1, steps)
    step = Expr.var(loop.var, steps)
    lines = _fill(fetch + copies + stores, loop.var, ahead, halves)
    rounds = tf32_rounding(copies, compute) if round_tiles else ()
    lines += (AsyncWait(ahead - 1), *at_step(rounds, loop.var, Expr(0), Expr(0), halves, ""), *_proxy_fence(compute),
              Barrier())
    following = when(((step + 1, "lt", steps),), at_step(rounds, loop.var, step + 1, (step + 1) % stages, halves, ""))
    landed = (AsyncWait(ahead - 1), *following, *_proxy_fence(compute), Barrier())
    cond = simplify_cond(((step + ahead, "lt", steps),))
    slot = (step + ahead) % stages
    issue, reads, put = (), (), ()  # type: ignore[var-annotated]
    if cond is not None:
        issue = (If(cond, at_step(copies, loop.var, step + ahead, slot, halves, "")),)
        following = at_step(fetch + stores, loop.var, Expr.minimum(step + ahead, steps - 1), slot, halves, "_next")
        reads = tuple(s for s in following if not isinstance(s, LocalStore))
        put = (If(cond, tuple(s for s in following if isinstance(s, LocalStore))),) if stores else ()
    computed = at_step(compute, loop.var, step, step % stages, halves, "")
    lines.append(Loop(loop.var, steps, (*issue, *reads, AsyncCommit(), *computed, *put, *landed)))
    arrays = tuple(dataclasses.replace(s, size=stages * s.size) if isinstance(s, LocalArray) and s.name in halves else s
                   for s in kernel.body[:position])
    return dataclasses.replace(kernel, body=arrays + tuple(lines) + kernel.body[position + 1:])


def when(cond: tuple, body: tuple) -> tuple:
    """`body` under `cond`, without the If where it always holds, nothing where it never does (or `body` is empty)."""
    settled = simplify_cond(cond)
    return () if settled is None or not body else body if settled == () else (If(settled, body),)


def _fill(staging: tuple, var: str, ahead: int, halves: dict[str, LocalArray]) -> list:
    """The first `ahead` slices staged into buffers 0 .. ahead - 1, each closed by an AsyncCommit: a loop whose body
    is written once (a fused prologue staged element by element is much of a product kernel's code: written out
    per slice, W7's bfloat16 products took up to 4 copies of it), or the one slice where there is one."""
    if ahead == 1:
        return [*at_step(staging, var, Expr(0), Expr(0), halves, "_0"), AsyncCommit()]
    counter = f"{var}_fill"
    at = Expr.var(counter, ahead)
    return [Loop(counter, ahead, (*at_step(staging, var, at, at, halves, "_fill"), AsyncCommit()))]


def _proxy_fence(compute: tuple) -> tuple:
    """An AsyncProxyFence where warpgroup products read the staged slices (wgmma reads local memory through the
    asynchronous proxy: each item fences its landed copies and stores before the barrier), else nothing."""
    return (AsyncProxyFence(),) if any(isinstance(s, WarpgroupMma) for s in walk(compute)) else ()


def tf32_rounding(copies: tuple, compute: tuple) -> tuple:
    """A LocalRoundTF32 of each of `copies` (AsyncCopies) into a tile a TF32 WarpgroupMma in `compute` reads through a
    descriptor: what an item does to its copies of a slice once they landed, before the AsyncProxyFence."""
    products = [s for s in walk(compute) if isinstance(s, WarpgroupMma) and s.kind == "tf32"]
    tiles = {s.b_array for s in products} | {s.a_array for s in products if not s.a_registers}
    return tuple(LocalRoundTF32(c.array, c.index, c.width, c.swizzle) for c in copies if c.array in tiles)


def staging_parts(statement: Statement) -> Optional[tuple[tuple, tuple, tuple, tuple]]:
    """(fetch, copies, stores, compute) of a staging loop with an AsyncCopy: the statements before its first
    Barrier other than AsyncCopies and LocalStores, those AsyncCopies and LocalStores, and what lies between that
    Barrier and the one closing its body; None for any other statement."""
    if not isinstance(statement, Loop) or len(statement.body) < 3 or statement.body[-1] != Barrier():
        return None
    first = next(p for p, s in enumerate(statement.body) if isinstance(s, Barrier))
    before, compute = statement.body[:first], statement.body[first + 1:-1]
    copies = tuple(s for s in before if isinstance(s, AsyncCopy))
    if not copies or any(isinstance(s, Barrier) for s in compute):
        return None
    fetch = tuple(s for s in before if not isinstance(s, (AsyncCopy, LocalStore)))
    return fetch, copies, tuple(s for s in before if isinstance(s, LocalStore)), compute
