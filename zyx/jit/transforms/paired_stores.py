"""Neighbouring outputs stored by one vector store, and neighbouring bfloat16 inputs read by one vector load: a
warpgroup product's item holds its outputs in pairs of neighbouring columns (wgmma.accumulator_position: registers
4j and 4j + 1, 4j + 2 and 4j + 3), which the lowering stores one element at a time; two 16-bit stores become one of
32 bits (the hand-written probe stored float2).
On by default for warpgroup products (ZYX_WGMMA_PAIRED_STORES=0 turns it off): the epilogue's 2-byte stores were
a third of W7's short products (bfloat16 16384 x 768 x 3072 on an H100: 0.310 ms, 0.188 paired, where k = 3072
took 0.577 and 0.474), once the pairs were printed as 32-bit words (print_opencl._words; vstore2 of 16-bit elements
compiled to two stores on NVIDIA). An epilogue reading a bfloat16 value at each output (GELU's backward reads the
pre-activation) reads it in the same pairs (`paired_loads`).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Iterator

from ..kernel_ir import PURE, Extract, Gather, If, Kernel, Load, Loop, Pack, Reg, Statement, Store
from ..print_common import aligned

WIDTH = 2


def paired_stores(kernel: Kernel) -> Kernel:
    """`kernel` with each element Store at an even index (a whole vector) whose buffer's next Store, with only pure
    statements and other buffers' stores between, none reading its buffer, stores the next element of the same
    dtype, made one vector Store where the second's value is defined (attention's forward stores its output to two
    buffers, element by element in turn)."""
    names = (f"pair{n}" for n in itertools.count())
    return dataclasses.replace(kernel, body=_paired(kernel.body, names))


def _paired(body: tuple, names: Iterator[str]) -> tuple:
    out: list = []
    waiting: dict[str, int] = {}  # per buffer, the position in `out` of a Store waiting for its neighbour
    for statement in body:
        if isinstance(statement, (Loop, If)):
            statement = dataclasses.replace(statement, body=_paired(statement.body, names))
        buffer = getattr(statement, "buffer", None)
        first = out[waiting[buffer]] if buffer in waiting else None
        if first is not None and _neighbours(first, statement):
            pair = Reg(next(names), statement.value.dtype, WIDTH)
            out[waiting.pop(buffer)] = None  # (both stored once the second value is defined)
            out += [Pack(pair, (first.value, statement.value)),
                    Store(statement.buffer, first.index, pair, statement.dtype, "vector")]
            continue
        if isinstance(statement, (Store, Load, Gather)):  # (another buffer's: a distinct one, its params restrict)
            waiting.pop(buffer, None)
        elif not isinstance(statement, PURE):
            waiting.clear()
        if _pairable(statement) and aligned(statement.index, WIDTH):
            waiting[buffer] = len(out)
        out.append(statement)
    return tuple(s for s in out if s is not None)


def _pairable(statement: Statement) -> bool:
    return (isinstance(statement, Store) and statement.mode == "element" and statement.value.width == 1
            and statement.dtype.name in ("bfloat16", "float16", "float32"))


def _neighbours(first: Store, statement: Statement) -> bool:
    """Whether `statement` stores the element after `first`'s, of the same buffer and dtype, a value like its."""
    return (_pairable(statement) and statement.buffer == first.buffer and statement.dtype == first.dtype
            and statement.value.dtype == first.value.dtype and statement.index == first.index + 1)


def paired_loads(kernel: Kernel) -> Kernel:
    """`kernel` with each bfloat16 element Load at an even index whose neighbour (the next element of the same buffer,
    under the same guard) is loaded later in the same body, no Store to that buffer between, made one vector Load of
    both (a 32-bit word, print_opencl._words) read first, each value a lane of it."""
    names = (f"duo{n}" for n in itertools.count())
    return dataclasses.replace(kernel, body=_paired_loads(kernel.body, names))


def _paired_loads(body: tuple, names: Iterator[str]) -> tuple:
    out: list = []
    waiting: list[tuple[Load, int, Reg]] = []  # (first Load, its position in `out`, the pair) awaiting a neighbour
    for statement in body:
        if isinstance(statement, (Loop, If)):
            statement = dataclasses.replace(statement, body=_paired_loads(statement.body, names))
            waiting = []
        elif isinstance(statement, Store):
            waiting = [w for w in waiting if w[0].buffer != statement.buffer]
        first = next((w for w in waiting if _loads_after(w[0], statement)), None)
        if first is not None:
            load, position, pair = first
            out[position] = (dataclasses.replace(load, out=pair, mode="vector"), Extract(load.out, pair, "s0"))
            out.append(Extract(statement.out, pair, "s1"))
            waiting.remove(first)
            continue
        if _narrow_element(statement) and aligned(statement.index, WIDTH):
            waiting.append((statement, len(out), Reg(next(names), statement.out.dtype, WIDTH)))
        out.append(statement)
    return tuple(s for item in out for s in (item if isinstance(item, tuple) else (item,)))


def _narrow_element(statement: Statement) -> bool:
    return (isinstance(statement, Load) and statement.mode == "element" and statement.indirect is None
            and statement.out.width == 1 and statement.out.dtype.name == "bfloat16")


def _loads_after(first: Load, statement: Statement) -> bool:
    """Whether `statement` loads the element after `first`'s, of the same buffer, under the same guard."""
    return (_narrow_element(statement) and statement.buffer == first.buffer and statement.guard == first.guard
            and statement.index == first.index + 1)
