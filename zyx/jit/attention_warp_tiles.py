"""What the tensor-core attention kernels share (attention_cores.py's forward, attention_grad_cores.py's backward):
a work group of 4 warps owning 64 rows (warp w rows 16w .. 16w + 15; ZYX_ATTENTION_WARPS=8: 8 warps, 128 rows, each
walked block staged once for twice the rows), operands staged in local memory in 16 bits, and products of mma.sync
m16n8k16 whose accumulators stay in registers.

m16n8k16's layouts (PTX ISA, "Matrix fragments for mma.m16n8k16"): lane l of a warp holds, of each 16 x 8 tile of
accumulators, rows l / 4 (registers 0, 1) and l / 4 + 8 (2, 3) at columns 2 (l % 4) and 2 (l % 4) + 1; its A words
hold the same rows at k 2 (l % 4), + 1 (words 0, 1) and 8 more (words 2, 3), so the accumulators of tiles 2t and
2t + 1 of one product, rounded and packed two to a word (PackHalves), are the A fragment of the next product over
those 16 columns (attention's P, and dS, times a staged operand). A fragments of a staged [row][k] operand and B
fragments of a staged [n][k] one come by ldmatrix, of a staged [k][n] one by transposing ldmatrix; rows are padded
by 16 bytes so the 8 rows one ldmatrix reads lie in 8 distinct bank groups. Operands a product stored in 16 bits
(under views) are copied 16 bytes at a time as stored, and where a walked block has such operands, those are
copied by cp.async a block ahead into double-buffered stages while the previous block is multiplied.
"""
from __future__ import annotations

import dataclasses
import os
from functools import cached_property
from typing import Any, Optional

from ..dtypes import DType, bool_, float32, int16, uint32
from ..trace.node import ARANGE, Node
from ..trace.ops import Op
from .attention_tiles import BlockTest, StagedBlocks, _at
from .attention import NotAttention
from .kernel_ir import (Accumulate, Alu, AsyncCommit, AsyncCopy, AsyncWait, Barrier, Cond, Const, Define, If, Lane,
                        Load, LocalArray, LocalStore, Loop, MatrixLoad, MatrixMultiply, Operand, PackHalves, Position,
                        Reg, WarpShuffle, substitute)
from .lower import Index, LoweredKernel, linear
from .print_common import aligned
from .symbolic import Expr
from .tensor_cores import KINDS
from .transforms import rename_all
from .transforms.approximate_math import approximate_math

WARPS = 4            # warps a work group has (ZYX_ATTENTION_WARPS: WARP_SETTINGS)
WARP_SETTINGS = ("4", "8")
WARP = 32
WARP_ROWS = 16       # rows a warp owns: one m16 tile
BLOCK = 64           # rows of the walked axis a block stages
MMA_K = 16           # reduced elements one m16n8k16 takes
TILE_N = 8           # its outputs' columns
PAD = 8              # 16-bit elements after each staged row (16 bytes)
COPY = 8             # 16-bit elements one copy moves (16 bytes)
MAX_DIM = 128        # head and value dimensions beyond this keep the other kernels (registers)


def attention_warps() -> int:
    """The warps of a work group: ZYX_ATTENTION_WARPS (4 or 8), else WARPS. With 8 a group owns 128 rows and copies
    each walked block once for them (FlashAttention-2's 128-row blocks, though each warp keeps one m16 tile)."""
    setting = os.environ.get("ZYX_ATTENTION_WARPS")
    if setting is None:
        return WARPS
    if setting not in WARP_SETTINGS:
        raise ValueError(f"ZYX_ATTENTION_WARPS={setting!r}: expected one of {', '.join(WARP_SETTINGS)}")
    return int(setting)


def fits_tiles(size: int) -> bool:
    """Whether an operand axis of `size` (a head or value dimension) is taken by m16n8k16 tiles here."""
    return size % MMA_K == 0 and size <= MAX_DIM


class WarpTiles(StagedBlocks):
    """The lane geometry, staging and products of a group of 4 warps on tensor cores (see the module); `lid` is
    the item, `stage_dtype` the 16-bit dtype operands are staged and multiplied in."""

    stage_dtype: DType

    @cached_property
    def warps(self) -> int:
        """The group's warps (`attention_warps`)."""
        return attention_warps()

    @property
    def group_rows(self) -> int:
        """The rows of the item axis a group owns: WARP_ROWS a warp."""
        return self.warps * WARP_ROWS

    @property
    def group_items(self) -> int:
        return self.warps * WARP

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

    def _load(self, node: Node, index: Index, guard: Cond) -> Any:
        """The arange leaf's values (a causal mask's positions) computed from where they are read (Position), not
        read from memory at every score and block; any other leaf loaded as Lowering loads it."""
        if node.op is Op.BUFFER and node.arg == ARANGE:
            flat = linear(index, node.shape)
            return self._emit(self._depth_of(index, guard), lambda out: Position(Reg(out, node.dtype), flat, guard))
        return super()._load(node, index, guard)

    def lower(self) -> LoweredKernel:
        """The kernel, its exponentials and divisions the hardware's approximations (its values are half precision:
        transforms/approximate_math)."""
        lowered = super().lower()  # type: ignore[misc]
        return dataclasses.replace(lowered, ir=approximate_math(lowered.ir))

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
        columns: tiles 2t and 2t + 1 packed, rounded to the staged dtype, two to a word. A value the kernel rounds
        to that dtype is packed as it was before (packing rounds it the same: one instruction a value less)."""
        rounded = {s.out.name: s.args[0] for scope in self._scopes for s in scope
                   if isinstance(s, Alu) and s.op is Op.CAST and s.out.dtype == self.stage_dtype}
        unrounded = [[rounded.get(v.name, v) if isinstance(v, Reg) else v for v in tile] for tile in tiles]
        fragments = []
        for low, high in zip(unrounded[::2], unrounded[1::2]):
            pairs = ((low[0], low[1]), (low[2], low[3]), (high[0], high[1]), (high[2], high[3]))
            fragments.append(tuple(self._line(lambda out, a=a, b=b: PackHalves(out, a, b, self.stage_dtype), uint32)
                                   for a, b in pairs))
        return fragments

    def _multiply(self, fragments: list[tuple], stage: str, pitch: int, tiles: list[list[Reg]], across: bool,
                  offset: Expr = Expr(0)) -> None:
        """tiles += A B: A the warp's fragments (one per 16 of k), B staged from element `offset` of `stage` as
        [n][k] rows `pitch` elements apart, or (`across`) as [k][n]: per 16 of k and 16 columns one ldmatrix
        (transposing `across`) of both tiles' B."""
        lane = self._lane
        for step, fragment in enumerate(fragments):
            for pair in range(0, len(tiles), 2):  # matrices: tile `pair` at k, k + 8, then tile `pair` + 1 at both
                out = Reg(self.names.fresh("fb"), uint32, 4)
                if across:
                    index = (step * MMA_K + lane % 8 + (lane // 8) % 2 * 8) * pitch + pair * TILE_N + lane // 16 * 8
                else:
                    index = (pair * TILE_N + lane % 8 + lane // 16 * 8) * pitch + step * MMA_K + (lane // 8) % 2 * 8
                self._scopes[-1].append(MatrixLoad(out, stage, offset + index, transposed=across))
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
        stored: no conversion) where `_chunks` finds them; else element by element."""
        chunks = self._chunks(node, index, key_name, inner_name, inner, pitch, keys or self.keys_per_block)
        if chunks is None:
            self._stage(node, index, key_name, inner_name, inner, stage, keys=keys, pitch=pitch,
                        dtype=self.stage_dtype)
            return
        for bound, at, load in chunks:
            bits = Reg(self.names.fresh("bits"), int16, COPY)
            store = LocalStore(stage, at, bits, dtype=self.stage_dtype)
            self._scopes[-1] += [dataclasses.replace(load, out=bits, mode="bits"),
                                 If(bound, (store,)) if bound else store]

    def _chunks(self, node: Node, index: Index, key_name: str, inner_name: str, inner: int, pitch: int,
                rows: int) -> Optional[list[tuple[Cond, Expr, Load]]]:
        """This item's copies of `rows` rows of `node` (its rows at `key_name`, `inner` elements at `inner_name`)
        COPY elements at a time, as (the bound the copy exists under, where it goes in a stage of rows `pitch`
        apart, the Load of its first element), where each row's COPY elements from a multiple of COPY are
        consecutive elements of one buffer of the staged dtype (an operand a product stored, under views); None
        where they are not."""
        if inner % COPY:
            return None
        chunks, per_row, found = rows * inner // COPY, inner // COPY, []
        for copy in range(-(-chunks // self.group_items)):
            flat = self.lid + copy * self.group_items
            row, column = flat // per_row, flat % per_row * COPY
            load = self._consecutive(node, _at(index, {key_name: row}), inner_name, column)
            if load is None:
                return None
            found.append((((flat, "lt", chunks),) if flat.hi >= chunks else (), row * pitch + column, load))
        return found

    def _async_copies(self, chunks: list[tuple[Cond, Expr, Load]], stage: str, offset: Expr, block_name: str,
                      block: Expr) -> list:
        """cp.async copies of `chunks` (of the block `block_name` counts) for block `block` instead, into `stage`
        from element `offset`."""
        lines = []
        for bound, at, load in chunks:
            copy = AsyncCopy(stage, offset + at, load.buffer, substitute(load.index, {block_name: block}),
                             width=COPY, itemsize=self.stage_dtype.itemsize)
            lines.append(If(bound, (copy,)) if bound else copy)
        return lines

    def _walked_stages(self, copies: list[tuple[Node, Index, str, int]], walk_name: str, budget: int,
                       rows: int = 0) -> tuple[list[str], Optional[list[Optional[list]]]]:
        """A local array for each of `copies` (node, index, inner variable, inner size: a block's walked rows at
        `walk_name`, each row PAD past its size), in at most `budget` bytes, and how the blocks are copied: each
        copy's `_chunks` (None for those element by element), the arrays of those twice as long (`_stage_walked`),
        where some copy has chunks, ZYX_ATTENTION_CP_ASYNC is not 0 and they fit; else None. Each array holds at
        least `rows` rows too (the backward stages its item side in them before the walk)."""
        def lengths(doubled: list[bool]) -> list[int]:
            return [max(BLOCK * (2 if twice else 1), rows) * (size + PAD)
                    for (_, _, _, size), twice in zip(copies, doubled)]
        chunks: Optional[list] = None
        if os.environ.get("ZYX_ATTENTION_CP_ASYNC") != "0":
            chunks = [self._chunks(node, index, walk_name, name, size, size + PAD, BLOCK)
                      for node, index, name, size in copies]
            doubled = sum(lengths([found is not None for found in chunks]))
            if all(found is None for found in chunks) or self.stage_dtype.itemsize * doubled > budget:
                chunks = None
        sizes = lengths([found is not None for found in chunks or [None] * len(copies)])
        if self.stage_dtype.itemsize * sum(sizes) > budget:
            raise NotAttention(self.root)
        names = [self.names.fresh("stage") for _ in copies]
        self._scopes[0] += [LocalArray(name, self.stage_dtype, size, aligned=True) for name, size in zip(names, sizes)]
        return names, chunks

    def _stage_walked(self, copies: list[tuple[Node, Index, str, int]], stages: list[str],
                      chunks: Optional[list[Optional[list]]], walk_name: str, block_name: str, blocks: int
                      ) -> list[Expr]:
        """The block's walked rows of each of `copies` into its stage (`_walked_stages`), in the open block loop;
        where their first element lies there for this block. With `chunks`, those copied by cp.async were copied
        during the previous block (the first before the loop) into one half of their stage, and the next block's
        are issued into the other half, behind one barrier (two where others are copied now, between them); else
        all are copied now, behind a barrier (and `_end_block`'s closes the block)."""
        scope = self._scopes[-1]
        late = [(copy, stage) for copy, stage, found in zip(copies, stages, chunks or [None] * len(copies))
                if found is None]
        if chunks is not None:
            scope += [AsyncWait(0), Barrier()]
        for (node, index, name, size), stage in late:
            self._stage_rows(node, index, walk_name, name, size, stage, size + PAD)
        if chunks is None or late:
            scope.append(Barrier())
        if chunks is None:
            return [Expr(0)] * len(stages)
        block, offsets = Expr.var(block_name, blocks), []
        following = Expr.minimum(block + 1, blocks - 1)
        for found, stage, (_, _, _, size) in zip(chunks, stages, copies):
            half = BLOCK * (size + PAD)
            offsets.append(block % 2 * half if found else Expr(0))
            if found:
                self._scopes[-2] += self._async_copies(found, stage, Expr(0), block_name, Expr(0))
                scope += self._async_copies(found, stage, (block + 1) % 2 * half, block_name, following)
        self._scopes[-2].append(AsyncCommit())
        scope.append(AsyncCommit())
        return offsets

    def _visible(self, mask: list[tuple[Node, Index, bool, bool]], rows_lowest: dict[Node, Reg],
                 walk_name: str) -> Reg:
        """Whether the mask hides no score of the block from any row of the group: a >= b throughout, the
        smallest a (`rows_lowest`: _rows_extreme's other) against the largest b."""
        hides = self._extremes_compared(mask, rows_lowest, walk_name, other=True)
        return self._line(lambda out: Alu(out, Op.NOT, (hides,)), bool_)

    def _peel_visible(self, visible: Reg) -> None:
        """The block's statements from the first select by the mask's comparison on twice: where the block is
        `visible`, each such select (false throughout) its second operand and the comparisons left unread; else
        as lowered. Most blocks of a causal walk lie below the diagonal (W7: all but the last of each group's),
        and a select and a comparison a score were about a quarter of the forward's instructions a score."""
        body = self._scopes[-1]
        compares = {value.operand.name for key, value in self._values.items()
                    if key[0] == id(self.mask_compare) and isinstance(value.operand, Reg)}
        selects = [s for s in body if isinstance(s, Alu) and s.op is Op.WHERE and isinstance(s.args[0], Reg)
                   and s.args[0].name in compares]
        if not selects:
            return
        first = body.index(selects[0])
        suffix = tuple(body[first:])
        picked = {s.out.name: s.args[2] for s in selects}
        unmasked = rename_all(tuple(s for s in suffix if not (isinstance(s, Alu) and s.out.name in picked)), picked)
        hidden = Reg(self.names.fresh("v"), bool_)
        body[first:] = [If((), unmasked, visible), Alu(hidden, Op.NOT, (visible,)), If((), suffix, hidden)]

    def _close_blocks(self, block_name: str, blocks: int, block_test: Optional[BlockTest], skippable: int,
                      double_buffered: bool) -> None:
        """The block loop closed, its statements from `skippable` on only where the block is needed (`block_test`,
        `_skip_unneeded`; None: always): single-buffered, behind a barrier (every warp done with the stages before
        the next block's copies); double-buffered, the last copies (issued for no block) waited for after it."""
        if not double_buffered:
            self._scopes[-1].append(Barrier())
        body = self._close_loop()
        self._skip_unneeded(body, skippable, block_test)
        self._scopes[-1].append(Loop(block_name, blocks, tuple(body)))
        if double_buffered:
            self._scopes[-1].append(AsyncWait(0))

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
