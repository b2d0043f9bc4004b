"""A warpgroup product's 16-bit outputs stored, and its epilogue's bfloat16 inputs read, 16 bytes an item: the 4
items of a quad (lanes 4i to 4i + 3 of a warp) hold, for each row they share, one 32-bit pair of columns of each
8-column chunk (wgmma.accumulator_position), so a direct access moves 4 bytes an item, 16 bytes of each of 8 rows a
warp (half of each sector; on the H100 the stores were half of W7's MLP-up kernel: bench/GPU.md, session 61).
Here 4 chunks' pairs are transposed across the quad by warp shuffles (a 4 x 4 transpose of words in two butterfly
stages, xor 2 then xor 1, each a block transpose: two shuffles and selects on the item's place in the quad). Stores:
after it each item holds a whole chunk, 8 neighbouring columns, and stores it as one 16-byte word. Loads (an
epilogue reading a bfloat16 value at each output: GELU's backward reads its pre-activation): each item reads a whole
chunk as one word, and the same transpose (its own inverse) hands each item its pairs. A quarter of the memory
instructions, each warp access 64 whole bytes of each of 8 rows, with no local memory and no barrier (the staged
experiments, STAGED_COLUMNS in tensor_cores.py, took a stage that cost long products a buffer).

Where: a warpgroup product not computed transposed, whose 16-bit rows lie whole along the buffer's last axis (a
multiple of 8 elements: a chunk is stored whole or not at all), and each chunk's index a multiple of 8; loads where
moreover the blocks divide the output (no guards) and the epilogue reads the buffer at every output's own index
(ZYX_WGMMA_QUAD_STORES=0 turns both off, ZYX_WGMMA_QUAD_LOADS=0 the loads; else tensor_cores.TensorCoreLowering
stores pairs, which transforms/paired_stores.py joins, and reads them so). The loads were checked on PoCL only (the
emulated wgmma): no GPU has timed them yet (bench/README, session 61).
"""
from __future__ import annotations

import os
from typing import Callable, Optional

from ..dtypes import DType, bfloat16, uint32
from .kernel_ir import (Cond, Extract, If, Load, Operand, Pack, PackHalves, Reg, Select, Store, UnpackHalves,
                        WarpShuffle)
from .print_common import aligned
from .symbolic import Expr

QUAD = 4     # items sharing a row of each 8-column chunk
CHUNK = 8    # columns of a chunk: one 16-byte word of 16-bit elements
PAIRS = 4    # accumulator registers a chunk takes in an item (2 rows x a pair of columns)
Place = Callable[[Expr, Expr], tuple[Expr, Cond]]  # a block's (row, column) -> its buffer index, the guard it exists


def quad_stores_wanted(dtype: DType, m_axis: int, space: tuple[int, ...]) -> bool:
    """Whether a warpgroup product storing `dtype` with its columns along axis `m_axis` of `space` may store by
    quads: 16-bit outputs whose rows lie whole, 8-element aligned, along the buffer's last axis (but axes of 1)."""
    return (os.environ.get("ZYX_WGMMA_QUAD_STORES") != "0" and dtype.itemsize == 2 and space[m_axis] % CHUNK == 0
            and all(size == 1 for size in space[m_axis + 1:]))


def quad_loads_wanted() -> bool:
    """Whether an epilogue's bfloat16 inputs may be read by quads (ZYX_WGMMA_QUAD_LOADS=0: not)."""
    return os.environ.get("ZYX_WGMMA_QUAD_LOADS") != "0"


def _groups(count: int, columns: int) -> list[list[int]]:
    """The registers of each 4 chunks of a row, in tiles of `columns` columns (register 4j + i of a tile at column
    8j + 2·quad + i % 2, rows 8 apart for i < 2 and i >= 2): for each, the first register of each chunk."""
    return [[tile + PAIRS * (first + c) + half for c in range(QUAD)]
            for tile in range(0, count, columns // 2) for half in (0, 2)
            for first in range(0, columns // CHUNK, QUAD)]


def _chunk_place(place: Place, rows: list[Expr], registers: list[int], quad: Expr, columns: int) -> tuple[Expr, Cond]:
    """Where the chunk the item holds after the transpose of `registers` (a `_groups` entry) lies, and its guard:
    chunk `quad` of the 4, in the row of their first register."""
    first = registers[0] % (columns // 2) // PAIRS  # (the tile's chunk of the group's first register)
    return place(rows[registers[0]], (quad + first) * CHUNK)


class _Transpose:
    """Statements transposing 4 words across each quad; `fresh(prefix)` names new registers."""

    def __init__(self, quad: Expr, fresh: Callable[[str], str]):
        self.lines: list = []
        self.fresh = fresh
        self.stages = ((2, ((quad, "ge", 2),)), (1, ((quad % 2, "ge", 1),)))

    def words(self, words: list[Operand]) -> list[Reg]:
        for mask, cond in self.stages:
            words = self._swapped(words, mask, cond)
        return words  # type: ignore[return-value]

    def _swapped(self, words: list[Operand], mask: int, cond: Cond) -> list[Operand]:
        """A butterfly stage: items where `cond` holds trade their words `i` for their partner's `i ^ mask`."""
        new = list(words)
        for low in (i for i in range(QUAD) if not i & mask):
            high = low | mask
            send, got = Reg(self.fresh("quad_send"), uint32), Reg(self.fresh("quad_got"), uint32)
            new[low], new[high] = Reg(self.fresh("quad_word"), uint32), Reg(self.fresh("quad_word"), uint32)
            self.lines += [Select(send, cond, words[low], words[high]), WarpShuffle(got, send, mask),
                           Select(new[low], cond, got, words[low]), Select(new[high], cond, words[high], got)]
        return new


def quad_stores(values: list[Operand], rows: list[Expr], quad: Expr, columns: int, out: str, dtype: DType,
                place: Place, fresh: Callable[[str], str]) -> Optional[list]:
    """The statements storing `values` (an item's accumulators' outputs in wgmma's order, in tiles of `columns`
    columns, register r at row `rows[r]`) by quads, or None where a chunk's index is not a multiple of 8. `quad`:
    the item's place in its quad (lane % 4)."""
    transpose = _Transpose(quad, fresh)
    for registers in _groups(len(values), columns):
        words = []
        for register in registers:
            words.append(Reg(fresh("quad_word"), uint32))
            transpose.lines.append(PackHalves(words[-1], values[register], values[register + 1], dtype))
        words = transpose.words(words)
        index, guard = _chunk_place(place, rows, registers, quad, columns)
        if not aligned(index, CHUNK):
            return None
        chunk = Reg(fresh("quad_chunk"), uint32, QUAD)
        store = Store(out, index, chunk, dtype, "bits")
        transpose.lines += [Pack(chunk, tuple(words)), If(guard, (store,)) if guard else store]
    return transpose.lines


def quad_loads(body: list, positions: list[Expr], rows: list[Expr], quad: Expr, columns: int, place: Place,
               fresh: Callable[[str], str]) -> list:
    """`body` with each bfloat16 buffer it reads by unguarded element Loads at every output's own index
    (`positions[r]`, output r in wgmma's order) read by quads instead: for each 4 chunks of a row, one 16-byte Load
    and the transpose where the first of their Loads was, each Load then a lane of its pair."""
    at = {position: register for register, position in enumerate(positions)}
    reads: dict[str, dict[int, int]] = {}  # buffer -> output -> the place of its Load in `body`
    for place_in_body, s in enumerate(body):
        if isinstance(s, Load) and s.mode == "element" and s.indirect is None and not s.guard \
                and s.out.width == 1 and s.out.dtype == bfloat16 and s.index in at:
            reads.setdefault(s.buffer, {})[at[s.index]] = place_in_body
    out: dict[int, list] = {}  # place in `body` -> what replaces the statement there
    for buffer, loads in reads.items():
        if len(loads) < len(positions):
            continue
        for registers in _groups(len(positions), columns):
            index, _ = _chunk_place(place, rows, registers, quad, columns)
            if not aligned(index, CHUNK):
                return body
            transpose = _Transpose(quad, fresh)
            chunk = Reg(fresh("quad_chunk"), uint32, QUAD)
            words = [Reg(fresh("quad_word"), uint32) for _ in range(QUAD)]
            transpose.lines += [Load(chunk, buffer, index, mode="bits")]
            transpose.lines += [Extract(word, chunk, f"s{c}") for c, word in enumerate(words)]
            for register, word in zip(registers, transpose.words(words)):
                pair = Reg(fresh("quad_pair"), bfloat16, 2)
                transpose.lines.append(UnpackHalves(pair, word))
                transpose.lines += [Extract(body[loads[register + lane]].out, pair, f"s{lane}") for lane in (0, 1)]
            places = [loads[register + lane] for register in registers for lane in (0, 1)]
            out[min(places)] = transpose.lines
            out.update({p: [] for p in places if p != min(places)})
    return [line for p, s in enumerate(body) for line in out.get(p, [s])]
