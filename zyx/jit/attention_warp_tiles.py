"""What the tensor-core attention kernels share (attention_cores.py's forward, attention_grad_cores.py's backward):
a work group of 4 warps owning 64 rows (warp w rows 16w .. 16w + 15), operands staged in local memory in 16 bits,
and products of mma.sync m16n8k16 whose accumulators stay in registers.

m16n8k16's layouts (PTX ISA, "Matrix fragments for mma.m16n8k16"): lane l of a warp holds, of each 16 x 8 tile of
accumulators, rows l / 4 (registers 0, 1) and l / 4 + 8 (2, 3) at columns 2 (l % 4) and 2 (l % 4) + 1; its A words
hold the same rows at k 2 (l % 4), + 1 (words 0, 1) and 8 more (words 2, 3), so the accumulators of tiles 2t and
2t + 1 of one product, rounded and packed two to a word (PackHalves), are the A fragment of the next product over
those 16 columns (attention's P, and dS, times a staged operand). A fragments of a staged [row][k] operand and B
fragments of a staged [n][k] one come by ldmatrix, of a staged [k][n] one by transposing ldmatrix; rows are padded
by 16 bytes so the 8 rows one ldmatrix reads lie in 8 distinct bank groups.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from ..dtypes import DType, float32, int16, uint32
from ..trace.node import Node
from ..trace.ops import Op
from .attention_tiles import StagedBlocks, _at
from .kernel_ir import (Accumulate, Alu, Const, Define, If, Lane, Load, LocalStore, MatrixLoad, MatrixMultiply,
                        Operand, PackHalves, Reg, WarpShuffle)
from .lower import Index
from .print_common import aligned
from .symbolic import Expr
from .tensor_cores import KINDS

WARPS = 4            # warps a work group has
WARP = 32
WARP_ROWS = 16       # rows a warp owns: one m16 tile
ROWS = WARPS * WARP_ROWS
BLOCK = 64           # rows of the walked axis a block stages
MMA_K = 16           # reduced elements one m16n8k16 takes
TILE_N = 8           # its outputs' columns
PAD = 8              # 16-bit elements after each staged row (16 bytes)
COPY = 8             # 16-bit elements one copy moves (16 bytes)
MAX_DIM = 128        # head and value dimensions beyond this keep the other kernels (registers)


def fits_tiles(size: int) -> bool:
    """Whether an operand axis of `size` (a head or value dimension) is taken by m16n8k16 tiles here."""
    return size % MMA_K == 0 and size <= MAX_DIM


class WarpTiles(StagedBlocks):
    """The lane geometry, staging and products of a group of 4 warps on tensor cores (see the module); `lid` is
    the item, `stage_dtype` the 16-bit dtype operands are staged and multiplied in."""

    stage_dtype: DType

    @property
    def group_items(self) -> int:
        return WARPS * WARP

    @property
    def kind_name(self) -> str:
        """PTX's name of the staged dtype."""
        return KINDS[self.stage_dtype.name]

    @property
    def _lane(self) -> Expr:
        return self.lid % WARP

    def _row(self, half: int) -> Expr:
        """The group's row this lane's accumulators of `half` (registers 0, 1: 0; 2, 3: 1) hold."""
        return (self.lid // WARP) * WARP_ROWS + self._lane // 4 + 8 * half

    def _column(self, tile: int, pair: int) -> Expr:
        """The column of register `pair` (0, 1; 2, 3 likewise) of tile `tile` in this lane."""
        return tile * TILE_N + 2 * (self._lane % 4) + pair

    def _tiles(self, columns: int) -> list[list[Reg]]:
        """Zeroed accumulators of the warp's 16 rows x `columns`: a tile of 4 per 8 columns."""
        tiles = [[Reg(self.names.fresh("acc"), float32) for _ in range(4)] for _ in range(columns // TILE_N)]
        self._scopes[-1] += [Define(acc, Const(0.0, float32)) for tile in tiles for acc in tile]
        return tiles

    def _row_fragments(self, stage: str, pitch: int, size: int) -> list[tuple[Lane, ...]]:
        """The warp's 16 rows of a staged [row][k] operand as A fragments, one per 16 of its `size` k (ldmatrix x4:
        rows 0-7 and 8-15 at k, then at k + 8)."""
        fragments, lane = [], self._lane
        for step in range(size // MMA_K):
            out = Reg(self.names.fresh("fa"), uint32, 4)
            index = ((self.lid // WARP) * WARP_ROWS + lane % 16) * pitch + step * MMA_K + (lane // 16) * 8
            self._scopes[-1].append(MatrixLoad(out, stage, index))
            fragments.append(tuple(Lane(out, f"s{w}") for w in range(4)))
        return fragments

    def _packed_fragments(self, tiles: list[list[Operand]]) -> list[tuple[Reg, ...]]:
        """Values at the places of a product's accumulators (tiles of 4) as the A fragments of a product over their
        columns: tiles 2t and 2t + 1 packed, rounded to the staged dtype, two to a word."""
        fragments = []
        for low, high in zip(tiles[::2], tiles[1::2]):
            pairs = ((low[0], low[1]), (low[2], low[3]), (high[0], high[1]), (high[2], high[3]))
            fragments.append(tuple(self._line(lambda out, a=a, b=b: PackHalves(out, a, b, self.stage_dtype), uint32)
                                   for a, b in pairs))
        return fragments

    def _multiply(self, fragments: list[tuple], stage: str, pitch: int, tiles: list[list[Reg]], across: bool) -> None:
        """tiles += A B: A the warp's fragments (one per 16 of k), B staged as [n][k] rows `pitch` elements apart, or
        (`across`) as [k][n]: per 16 of k and 16 columns one ldmatrix (transposing `across`) of both tiles' B."""
        lane = self._lane
        for step, fragment in enumerate(fragments):
            for pair in range(0, len(tiles), 2):  # matrices: tile `pair` at k, k + 8, then tile `pair` + 1 at both
                out = Reg(self.names.fresh("fb"), uint32, 4)
                if across:
                    index = (step * MMA_K + lane % 8 + (lane // 8) % 2 * 8) * pitch + pair * TILE_N + lane // 16 * 8
                else:
                    index = (pair * TILE_N + lane % 8 + lane // 16 * 8) * pitch + step * MMA_K + (lane // 8) % 2 * 8
                self._scopes[-1].append(MatrixLoad(out, stage, index, transposed=across))
                for tile, words in ((pair, ("s0", "s1")), (pair + 1, ("s2", "s3"))):
                    self._scopes[-1].append(MatrixMultiply(tuple(tiles[tile]), fragment,
                                                           tuple(Lane(out, w) for w in words), "m16n8k16",
                                                           self.kind_name))

    def _combined(self, values: list[Operand], op: Op, start: float) -> Reg:
        """`values` combined by `op` (MAX or ADD) in one accumulator."""
        acc = Reg(self.names.fresh("mb"), float32)
        self._scopes[-1] += [Define(acc, Const(start, float32)), *(Accumulate(acc, op, value) for value in values)]
        return acc

    def _across_quad(self, value: Reg, op: Op) -> Reg:
        """`value` combined by `op` over the 4 lanes of this lane's quad (the lanes holding one row): two butterfly
        shuffles."""
        for mask in (1, 2):
            other = self._line(lambda out, v=value, m=mask: WarpShuffle(out, v, m))
            value = self._line(lambda out, a=value, b=other: Alu(out, op, (a, b)))
        return value

    # ---- staging -----------------------------------------------------------------------------------------------
    def _stage_rows(self, node: Node, index: Index, key_name: str, inner_name: str, inner: int, stage: str,
                    pitch: int, keys: int = 0) -> None:
        """The group's copy of `node` into `stage` as StagedBlocks._stage makes it, but 16 bytes at a time (as
        stored: no conversion) where each row's COPY elements from a multiple of COPY are consecutive elements of
        one buffer of the staged dtype (an operand a product stored, under views); else element by element."""
        rows = keys or self.keys_per_block
        chunks, per_row = rows * inner // COPY, inner // COPY
        lines = []
        for copy in range(-(-chunks // self.group_items) if inner % COPY == 0 else 0):
            flat = self.lid + copy * self.group_items
            row, column = flat // per_row, flat % per_row * COPY
            load = self._consecutive(node, _at(index, {key_name: row}), inner_name, column)
            if load is None:
                break
            bits = Reg(self.names.fresh("bits"), int16, COPY)
            store = LocalStore(stage, row * pitch + column, bits, dtype=self.stage_dtype)
            lines += [dataclasses.replace(load, out=bits, mode="bits"),
                      If(((flat, "lt", chunks),), (store,)) if flat.hi >= chunks else store]
        else:
            if lines:
                self._scopes[-1] += lines
                return
        self._stage(node, index, key_name, inner_name, inner, stage, keys=keys, pitch=pitch, dtype=self.stage_dtype)

    def _consecutive(self, node: Node, index: Index, inner_name: str, column: Expr) -> Optional[Load]:
        """The unguarded element Load of the staged dtype reading `node` at `index` where the inner variable is
        `column`, if the COPY - 1 after it along that variable read the next elements of the same buffer and it
        lies at a multiple of COPY; nothing lowered is kept either way."""
        known, marks = set(self._values), [len(scope) for scope in self._scopes]
        values = [self.value(node, _at(index, {inner_name: column + step}), ()).operand for step in range(COPY)]
        reads = [self._defining_load(value) for value in values]
        for scope, mark in zip(self._scopes, marks):
            del scope[mark:]
        for key in set(self._values) - known:
            del self._values[key]
        first = reads[0]
        if first is None or not aligned(first.index, COPY) or any(
                read is None or read.buffer != first.buffer or read.index - first.index != Expr(step)
                for step, read in enumerate(reads)):
            return None
        return first

    def _defining_load(self, value: Operand) -> Optional[Load]:
        """The unguarded element Load of the staged dtype defining `value`, if that is what defines it."""
        for scope in reversed(self._scopes):
            for statement in scope:
                if isinstance(statement, Load) and statement.out == value:
                    plain = statement.mode == "element" and not statement.guard and statement.indirect is None
                    return statement if plain and value.dtype == self.stage_dtype else None
        return None
