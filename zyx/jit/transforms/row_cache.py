"""A GPU row kernel's later passes read its row from local memory, where its first pass left it.

A row kernel (rows.py) passes over its row once per reduction, then once more to store the outputs: a
cross-entropy's gradient over GPT-2's logits (50 304 bf16 values a row, 16 384 rows) passes three times. With a work
group per row, each item strides over every pass alike (transforms/group.py), so an item reads in a later pass the
values it read in the first. Short rows stay in registers (registers.rows_in_registers: passes of at most
UNROLLED_TRIPS vectors an item, unrolled); longer ones were read again from memory, from L2 at best: W7's logits,
1.65 GB in bf16, did not fit an H100's 50 MB and were read three times. Here the first pass also stores each value
of the row it loads in a local array of the row's length (bf16 as stored, two to a 32-bit word), and the later
passes load it from there instead: each item reads back only what it stored itself, so no barrier is needed.
Only where the arrays fit the local memory given (NVIDIA: the 200 KiB static arrays measured to build and run).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from ..kernel_ir import Kernel, Load, LocalArray, LocalLoad, LocalStore, Loop, Reg, substitute
from ..symbolic import Expr
from .group import UNROLLED_TRIPS

WORD_WIDTHS = (2, 4, 8, 16)  # lanes of a bf16 value kept as 32-bit words
ROW = "_row"  # the canonical name a pass's loop variable takes when loads of two passes are compared


def cache_rows(kernel: Kernel, group: int, local_memory: int) -> Kernel:
    """`kernel` (a row kernel, before group_reductions strides it over `group` items) with the values its first
    pass loads along the row kept in local arrays for the later passes (see the module), where it has two passes
    or more over rows of more than UNROLLED_TRIPS vectors an item and the arrays take at most `local_memory`
    bytes; else `kernel` itself."""
    loops = [s for s in kernel.body if isinstance(s, Loop)]
    if len(loops) < 2 or len({loop.trips for loop in loops}) > 1 or loops[0].trips <= UNROLLED_TRIPS * group:
        return kernel
    trips = loops[0].trips
    arrays: dict[tuple, LocalArray] = {}  # a load's key -> the array holding what the first pass loaded
    body: list = []
    for statement in kernel.body:
        if isinstance(statement, Loop):
            statement = dataclasses.replace(statement, body=tuple(_pass(statement, arrays, trips)))
        body.append(statement)
    used = {line.array for loop in body if isinstance(loop, Loop) for line in loop.body if isinstance(line, LocalLoad)}
    kept = [array for array in arrays.values() if array.name in used]
    if not kept or sum(a.size * a.width * a.dtype.itemsize for a in kept) > local_memory:
        return kernel
    return dataclasses.replace(kernel, body=(*kept, *_without_unread_stores(body, {a.name for a in kept})))


def _pass(loop: Loop, arrays: dict[tuple, LocalArray], trips: int) -> list:
    """`loop`'s body: a load of the row a pass before made read from its array, else stored into a new one."""
    at = Expr.var(loop.var, trips)
    lines: list = []
    for line in loop.body:
        key = _row_key(line, loop) if isinstance(line, Load) else None
        if key is None:
            lines.append(line)
        elif key in arrays:
            lines.append(LocalLoad(line.out, arrays[key].name, _index(at, line.out), words=_in_words(line.out)))
        else:
            words, width = _in_words(line.out), line.out.width
            arrays[key] = LocalArray(f"{line.buffer}_row{len(arrays)}", line.out.dtype,
                                     trips * width if words else trips, 1 if words else width)
            lines += [line, LocalStore(arrays[key].name, _index(at, line.out), line.out,
                                       dtype=line.out.dtype if words else None)]
    return lines


def _in_words(value: Reg) -> bool:
    """Whether `value`'s lanes lie in their array as 16-bit elements (bf16, stored and read as 32-bit words),
    indexed by element, rather than as vectors of its dtype indexed by vector."""
    return value.dtype.is_narrow_float


def _index(at: Expr, value: Reg) -> Expr:
    return at * value.width if _in_words(value) else at


def _row_key(load: Load, loop: Loop) -> Optional[tuple]:
    """What identifies the value `load` reads at each step of `loop` whatever the loop's variable is called; None
    for a load that does not move along the row (a row's scalar) or reads through data (indirect)."""
    if load.indirect is not None or loop.var not in load.index.variables():
        return None
    dtype, width = load.out.dtype, load.out.width
    if dtype.name not in ("float32", "bfloat16") or (dtype.is_narrow_float and width not in WORD_WIDTHS):
        return None  # (what else a row kernel loads along its row: its arrays are not printed here)
    row = {loop.var: Expr.var(ROW, loop.trips)}
    guard = tuple((substitute(e, row).key, op, k) for e, op, k in load.guard)
    return load.buffer, substitute(load.index, row).key, guard, load.mode, load.out.dtype, load.out.width


def _without_unread_stores(body: list, kept: set[str]) -> list:
    """`body` without the stores into arrays no later pass reads (loads of the first pass alone)."""
    return [dataclasses.replace(s, body=tuple(line for line in s.body
                                              if not isinstance(line, LocalStore) or line.array in kept))
            if isinstance(s, Loop) else s for s in body]
