"""A warpgroup product's 16-bit outputs stored 16 bytes an item: the 4 items of a quad (lanes 4i to 4i + 3 of a warp)
hold, for each row they share, one 32-bit pair of columns of each 8-column chunk (wgmma.accumulator_position), so
a direct store writes 4 bytes an item, 16 bytes of each of 8 rows a warp. Here 4 chunks' pairs are transposed
across the quad by warp shuffles (a 4 x 4 transpose of words in two butterfly stages, xor 2 then xor 1, each a
block transpose: two shuffles and selects on the item's place in the quad), after which each item holds a whole
chunk, 8 neighbouring columns, and stores it as one 16-byte word: a quarter of the store instructions, each warp
store writing 64 whole bytes of each of 8 rows. With no local memory (the staged experiments, STAGED_COLUMNS in
tensor_cores.py, took a stage that cost long products a buffer) and no barrier.

Where: a warpgroup product not computed transposed, whose 16-bit rows lie whole along the buffer's last axis (a
multiple of 8 elements: a chunk is stored whole or not at all), and each chunk's index a multiple of 8
(ZYX_WGMMA_QUAD_STORES=0 turns it off; else tensor_cores.TensorCoreLowering stores pairs, which
transforms/paired_stores.py joins).
"""
from __future__ import annotations

import os
from typing import Callable, Optional

from ..dtypes import DType, uint32
from .kernel_ir import Cond, If, Operand, Pack, PackHalves, Reg, Select, Store, WarpShuffle
from .print_common import aligned
from .symbolic import Expr

QUAD = 4     # items sharing a row of each 8-column chunk
CHUNK = 8    # columns of a chunk: one 16-byte word of 16-bit elements
PAIRS = 4    # accumulator registers a chunk takes in an item (2 rows x a pair of columns)


def quad_stores_wanted(dtype: DType, m_axis: int, space: tuple[int, ...]) -> bool:
    """Whether a warpgroup product storing `dtype` with its columns along axis `m_axis` of `space` may store by
    quads: 16-bit outputs whose rows lie whole, 8-element aligned, along the buffer's last axis (but axes of 1)."""
    return (os.environ.get("ZYX_WGMMA_QUAD_STORES") != "0" and dtype.itemsize == 2 and space[m_axis] % CHUNK == 0
            and all(size == 1 for size in space[m_axis + 1:]))


def quad_stores(values: list[Operand], rows: list[Expr], quad: Expr, columns: int, out: str, dtype: DType,
                place: Callable[[Expr, Expr], tuple[Expr, Cond]], fresh: Callable[[str], str]) -> Optional[list]:
    """The statements storing `values` (an item's accumulators' outputs in wgmma's order, in tiles of `columns`
    columns: register 4j + i of a tile at column 8j + 2·quad + i % 2 of row `rows[...]`) by quads, or None where
    a chunk's index is not a multiple of 8. `quad`: the item's place in its quad (lane % 4); `place(row, column)`:
    the buffer index of a block's output and the guard that it exists; `fresh(prefix)`: a new register name."""
    per_tile = columns // 2
    odd_half, odd = ((quad, "ge", 2),), ((quad % 2, "ge", 1),)
    lines: list = []

    def word(register: int) -> Reg:
        lines.append(PackHalves(Reg(fresh("quad_word"), uint32), values[register], values[register + 1], dtype))
        return lines[-1].out

    def swapped(words: list[Reg], mask: int, cond: Cond) -> list[Reg]:
        """A butterfly stage: items where `cond` holds trade their words `i` for their partner's `i ^ mask`."""
        new = list(words)
        for low in (i for i in range(QUAD) if not i & mask):
            high = low | mask
            send, got = Reg(fresh("quad_send"), uint32), Reg(fresh("quad_got"), uint32)
            lines.extend((Select(send, cond, words[low], words[high]), WarpShuffle(got, send, mask)))
            new[low], new[high] = Reg(fresh("quad_word"), uint32), Reg(fresh("quad_word"), uint32)
            lines.extend((Select(new[low], cond, got, words[low]), Select(new[high], cond, words[high], got)))
        return new

    for tile in range(0, len(values), per_tile):
        for half in (0, 2):  # (registers 4j, 4j + 1: the first row; 4j + 2, 4j + 3: 8 rows down)
            for first in range(0, columns // CHUNK, QUAD):
                registers = [tile + PAIRS * (first + c) + half for c in range(QUAD)]
                words = swapped(swapped([word(r) for r in registers], 2, odd_half), 1, odd)
                index, guard = place(rows[registers[0]], quad * CHUNK + first * CHUNK)
                if not aligned(index, CHUNK):
                    return None
                chunk = Reg(fresh("quad_chunk"), uint32, QUAD)
                store = Store(out, index, chunk, dtype, "bits")
                lines.extend((Pack(chunk, tuple(words)), If(guard, (store,)) if guard else store))
    return lines
