"""Neighbouring outputs stored by one vector store, and neighbouring bfloat16 inputs read by one vector load: a
warpgroup product's item holds its outputs in pairs of neighbouring columns (wgmma.accumulator_position: registers
4j and 4j + 1, 4j + 2 and 4j + 3), which the lowering stores one element at a time; two 16-bit stores become one of
32 bits (the hand-written probe stored float2).
On by default for warpgroup products (ZYX_WGMMA_PAIRED_STORES=0 turns it off): the epilogue's 2-byte stores were
a third of W7's short products (bfloat16 16384 x 768 x 3072 on an H100: 0.310 ms, 0.188 paired, where k = 3072
took 0.577 and 0.474), once the pairs were printed as 32-bit words (print_opencl._words; vstore2 of 16-bit elements
compiled to two stores on NVIDIA). An epilogue reading a bfloat16 value at each output (GELU's backward reads the
pre-activation) reads it in the same pairs (`paired_loads`).
A 16-bit value rounded where it is cast and then stored (or packed) is stored from its float source: the store
rounds to nearest even once more, which leaves a rounded value as it is, so the first rounding was a conversion
each output did twice (three a pair: two roundings and the pair's own), in the epilogue the tensor cores wait on.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Iterator, Optional

from ...dtypes import bfloat16, float16, float32
from ..kernel_ir import (PURE, Alu, Extract, Gather, If, Kernel, Load, Loop, Operand, Pack, PackHalves, Reg, Statement,
                         Store, walk)
from ..print_common import aligned
from ...trace.ops import Op

WIDTH = 2
FLOATS = (float32, float16, bfloat16)  # registers of these hold a float: rounded to a half dtype twice, once


def paired_stores(kernel: Kernel) -> Kernel:
    """`kernel` with each element Store at an even index (a whole vector) whose buffer's next Store, with only pure
    statements and other buffers' stores between, none reading its buffer, stores the next element of the same
    dtype, made one vector Store where the second's value is defined (attention's forward stores its output to two
    buffers, element by element in turn)."""
    names = (f"pair{n}" for n in itertools.count())
    return dataclasses.replace(kernel, body=_unrounded(_paired(kernel.body, names)))


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


def _unrounded(body: tuple, outer: Optional[dict] = None) -> tuple:
    """`body` with each 16-bit Store, Pack stored by one and PackHalves reading a value cast to its dtype from a
    float register (float32, or a half value computed in float and not rounded yet) earlier in the same body or
    before an If holding it (no statement but pure ones and stores between, so its source still holds what was
    cast) reading that source instead (the cast, then unread, is left to the compiler)."""
    out: list = []
    # a cast's register -> (its source, the dtype cast to); what `outer`'s body knew before this If
    rounded: dict[str, tuple[Operand, object]] = dict(outer or {})
    packed: dict[str, Reg] = {}  # a Pack's register -> the same register holding the sources
    sources = {getattr(cast[0], "name", None) for cast in rounded.values()}  # names of registers some cast read

    def source(value: Operand, dtype: object) -> Optional[Operand]:
        found = rounded.get(value.name) if isinstance(value, Reg) else None
        return found[0] if found is not None and found[1] == dtype else None
    for statement in body:
        if isinstance(statement, (Loop, If)):  # (a loop's body runs again after what it defines: nothing from before)
            statement = dataclasses.replace(statement, body=_unrounded(statement.body,
                                                                       rounded if isinstance(statement, If) else None))
        defined = getattr(statement, "out", None)
        if isinstance(defined, Reg) and (defined.name in rounded or defined.name in sources):
            rounded = _forgetting(rounded, {defined.name})
        if isinstance(statement, Alu) and statement.op is Op.CAST and statement.out.width == 1 \
                and statement.out.dtype.is_narrow_float and statement.args[0].dtype in FLOATS:
            rounded[statement.out.name] = (statement.args[0], statement.out.dtype)
            sources.add(getattr(statement.args[0], "name", None))
        elif isinstance(statement, Pack) and statement.out.dtype.is_narrow_float:
            lanes = [source(lane, statement.out.dtype) for lane in statement.lanes]
            if all(lane is not None for lane in lanes):
                packed[statement.out.name] = Reg(statement.out.name, float32, statement.out.width)
                statement = Pack(packed[statement.out.name], tuple(lanes))  # type: ignore[arg-type]
        elif isinstance(statement, PackHalves):
            low, high = source(statement.low, statement.dtype), source(statement.high, statement.dtype)
            if low is not None and high is not None:
                statement = dataclasses.replace(statement, low=low, high=high)
        elif isinstance(statement, Store) and statement.dtype.is_narrow_float and isinstance(statement.value, Reg):
            unrounded = packed.get(statement.value.name) if statement.mode == "vector" else \
                source(statement.value, statement.dtype)
            if unrounded is not None:
                statement = dataclasses.replace(statement, value=unrounded)
        elif isinstance(statement, If) and all(isinstance(s, PURE + (Store, If)) for s in walk(statement.body)):
            rounded = _forgetting(rounded, {s.out.name for s in walk(statement.body)
                                            if isinstance(getattr(s, "out", None), Reg)})
        elif not isinstance(statement, PURE + (Store,)):
            rounded.clear()
        out.append(statement)
    return tuple(out)


def _forgetting(rounded: dict, defined: set) -> dict:
    """`_unrounded`'s casts less those whose register or source is among `defined` (registers defined again, which
    no longer hold what was cast or read)."""
    return {name: cast for name, cast in rounded.items()
            if name not in defined and getattr(cast[0], "name", None) not in defined}


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
