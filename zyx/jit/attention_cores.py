"""Attention forward on NVIDIA tensor cores for 16-bit q, k, v (ZYX_ATTENTION_FORM=cores), FlashAttention-2's order.

A work group of 4 warps owns 64 consecutive query rows of one batch entry, warp w rows 16w .. 16w + 15, and walks
blocks of 64 keys:
- the group copies its query rows into local memory once (then each warp holds its rows' A fragments, ldmatrix), and
  each block's keys and values (16-bit, rows padded by 16 bytes so the 8 rows an ldmatrix reads lie in distinct
  bank groups), between barriers, or where k and v are stored in 16 bits by cp.async a block ahead;
- S = Q Kᵀ: per 16 of the head dimension and 8 keys one mma.sync m16n8k16 (the keys' B fragments by ldmatrix), into
  8 tiles of 16 x 8 float32 accumulators a warp; lane l holds rows l / 4 and l / 4 + 8 at keys 2 (l % 4) and
  2 (l % 4) + 1 of each tile, so a row's 64 scores lie on the 4 lanes of a quad;
- the rest of X (scale, mask) is lowered from the trace at each accumulator's (row, key), as attention_tiled.py
  does at its register tile's, a causal mask's positions (the arange leaf) computed from where they are read, not
  read (WarpTiles._load); keys past the end score -inf;
- the online softmax in registers: each lane's row maximum over its 16 scores, then over the quad by two butterfly
  shuffles (WarpShuffle); the running sums rescaled once per block;
- P = exp(X - m) rounded to the product's dtype is, packed two to a word (PackHalves), the A fragment of P V: the
  accumulators of tiles 2t and 2t + 1 are m16n8k16's A for keys 16t .. 16t + 15; V's B fragments by transposing
  ldmatrix from its [key][column] stage. Nothing goes through local memory.
A lane's running sum covers its own keys; the quad adds them up once, after the blocks. Blocks a causal mask hides
from every row of the group are skipped (attention_tiles.py), blocks it hides nothing of run a copy of the block
without its selects (WarpTiles._peel_visible); exponentials and divisions are the hardware's approximations
(transforms/approximate_math). The row statistics are stored where a backward reads them (attention.py), the outputs
in the trace's dtype. Only where the scores' product and P V multiply operands of one 16-bit dtype the device
multiplies on tensor cores, head and value dimensions are multiples of 16 up to MAX_DIM and the stages fit the local
memory; else attention_tiled.py's kernel. The warps' layouts, staging and products: attention_warp_tiles.py.
"""
from __future__ import annotations

import math
from typing import Optional

from ..dtypes import float32
from ..trace.node import Node
from ..trace.ops import Op
from .attention import FLOAT_LOWEST, AttentionLowering, AttentionPattern, NotAttention
from .attention_tiles import StagedAttentionLowering, TileScores, _at, _scores_product
from .attention_warp_tiles import BLOCK, PAD, TILE_N, WarpTiles, fits_tiles
from .kernel_ir import Accumulate, Alu, Barrier, Const, Define, LocalArray, Reg, Select
from .lower import PARAM_LIMIT, Index, LoweredKernel, linear, unravel
from .symbolic import Expr
from .tensor_cores import KINDS


class CoreAttentionLowering(WarpTiles, TileScores, StagedAttentionLowering):
    """A work group of 4 warps per 64 query rows, scores and outputs in mma.sync accumulators; see the module."""

    def __init__(self, root: Node, pattern: AttentionPattern, materialized: dict[int, Node], produced: set[int],
                 local_memory: int, max_group_size: int, kinds: tuple[str, ...], stored_apart: frozenset = frozenset(),
                 param_limit: int = PARAM_LIMIT):
        AttentionLowering.__init__(self, root, pattern, materialized, produced, stored_apart, param_limit)
        product, self.stage_dtype = pattern.product, pattern.w_side.dtype
        if (len(product.shape) < 3 or KINDS.get(self.stage_dtype.name) not in kinds
                or pattern.p_side.dtype != self.stage_dtype or self.group_items > max_group_size
                or not fits_tiles(product.shape[-2])):
            raise NotAttention(product)
        self.local_memory, self.skips = local_memory, True
        self.queries, self.width = product.shape[-3], product.shape[-2]
        self.rows_per_group, self.keys_per_block = self.group_rows, BLOCK
        batch = product.shape[:-3]
        self.query_blocks = -(-self.queries // self.rows_per_group)
        self.groups = math.prod(batch) * self.query_blocks
        self.lid = Expr.var("lid", self.group_items)
        self.row_name = self.names.fresh("r")  # the group's row in the indices analysed before the tiles exist
        group = Expr.var("gid", self.groups)
        self._batch = unravel(group // self.query_blocks, batch)
        self._first_row = (group % self.query_blocks) * self.rows_per_group
        self.leading = self._leading(Expr.var(self.row_name, self.rows_per_group))
        self.positions, self.guards = [], []
        for half in range(2):
            exact = self._first_row + self._row(half)
            guard = ((exact, "lt", self.queries),) if exact.hi >= self.queries else ()
            for column in self._columns():
                self.positions.append(linear((*self._leading(self._row(half)), column, Expr(0)), product.shape))
                self.guards.append(guard)
        self.elements = [unravel(position, self.space) for position in self.positions]
        self._tile_scores: dict[tuple, Reg] = {}
        self._product: Optional[Node] = None
        self._tile_depth = 0

    def _leading(self, row: Expr) -> Index:
        """The batch entry's index and the query row `row` of the group (the last row past the end)."""
        return (*self._batch, Expr.minimum(self._first_row + row, self.queries - 1))

    def _columns(self) -> list[Expr]:
        """The output columns a lane holds per row, in its accumulators' order."""
        return [self._column(tile, pair) for tile in range(self.width // TILE_N) for pair in range(2)]

    def _lower_outputs(self) -> None:
        pattern, rows, keys, width, dtype = self.pattern, self.group_rows, BLOCK, self.width, self.stage_dtype
        product = _scores_product(pattern, self._is_materialized)
        head_dim = product.src[0].shape[product.arg[0]]
        total_keys = pattern.product.src[0].shape[-1]
        q_pitch = head_dim + PAD
        if not fits_tiles(head_dim):
            raise NotAttention(product)
        (blocks, block_name, key_name, value_name, head_name, block, key, probability, factor_index, query_side,
         key_side, weights) = self._key_walk(product, total_keys, keys, width, head_dim)
        if query_side.dtype != dtype or key_side.dtype != dtype or self.row_name in self._variables(pattern.w_side,
                                                                                                     weights):
            raise NotAttention(product)
        shared_q = rows > keys  # (8 warps: the queries staged where the keys go, before the walk, as the backward
        # stages its items: a stage of its own beside double-buffered keys and values would not fit 48 KiB at d = 64)
        own_q_stage = None if shared_q else self.names.fresh("q_stage")
        maxima = [Reg(self.names.fresh("m"), float32) for _ in range(2)]
        totals = [Reg(self.names.fresh("l"), float32) for _ in range(2)]
        copies = [(key_side, factor_index, head_name, head_dim), (pattern.w_side, weights, value_name, width)]
        (k_stage, v_stage), chunks = self._walked_stages(
            copies, key_name, self.local_memory - (0 if shared_q else dtype.itemsize * rows * q_pitch),
            rows if shared_q else 0)
        q_stage = own_q_stage or k_stage
        self._scopes[0] += [*((LocalArray(own_q_stage, dtype, rows * q_pitch, aligned=True),) if own_q_stage else ()),
                            *(Define(m, Const(FLOAT_LOWEST, float32)) for m in maxima),
                            *(Define(total, Const(0.0, float32)) for total in totals)]
        outputs = self._tiles(width)
        self._stage_rows(query_side, factor_index, self.row_name, head_name, head_dim, q_stage, q_pitch, keys=rows)
        self._scopes[0].append(Barrier())
        queries = self._row_fragments(q_stage, q_pitch, head_dim)
        if shared_q:
            self._scopes[0].append(Barrier())  # every warp holds its fragments before the stage takes the keys
        mask = self._mask(pattern.scores, probability, key_name)
        rows_extreme = self._rows_extreme(mask)  # once, before the blocks
        rows_lowest = self._rows_extreme(mask, other=True)
        self._open_loop(block_name, blocks)
        k_offset, v_offset = self._stage_walked(copies, [k_stage, v_stage], chunks, key_name, block_name, blocks)
        block_test = self._block_test(mask, rows_extreme, key_name, block_name) if mask else None
        skippable = len(self._scopes[-1])
        visible = self._visible(mask, rows_lowest, key_name) if mask else None
        scores = self._score_tiles(queries, k_stage, k_offset, q_pitch, probability, key_name)
        for tile, row in enumerate(scores):
            for register, score in enumerate(row):
                exact = block * keys + self._column(tile, register % 2)
                if exact.hi >= total_keys:  # the last block hangs over the end
                    row[register] = self._line(lambda out, x=score, k=exact: Select(
                        out, ((k, "lt", total_keys),), x, Const(-math.inf, float32)))
        weights_of: list[list] = [[None] * 4 for _ in scores]
        for half in range(2):
            values = [row[2 * half + pair] for row in scores for pair in range(2)]
            block_max = self._across_quad(self._combined(values, Op.MAX, FLOAT_LOWEST), Op.MAX)
            lowered = self._rescale(maxima[half], block_max,
                                    [totals[half], *(tile[2 * half + pair] for tile in outputs for pair in range(2))])
            for tile, row in enumerate(scores):
                for pair in range(2):
                    exponential, weight = self._exponential(row[2 * half + pair], lowered, self._scopes[-1])
                    self._scopes[-1].append(Accumulate(totals[half], Op.ADD, exponential))
                    weights_of[tile][2 * half + pair] = weight
        self._multiply(self._packed_fragments(weights_of), v_stage, width + PAD, outputs, True, v_offset)
        if visible is not None:
            self._peel_visible(visible)
        self._close_blocks(block_name, blocks, block_test, skippable, chunks is not None)
        for half in range(2):
            total = self._across_quad(totals[half], Op.ADD)
            first = half * len(self._columns())
            self._store_statistics(_at(probability, {self.row_name: self._row(half)}), maxima[half], total, first)
            for element, (tile, pair) in enumerate(((t, p) for t in range(len(outputs)) for p in range(2)), first):
                out = self._line(lambda out, acc=outputs[tile][2 * half + pair]: Alu(out, Op.DIV, (acc, total)))
                self._store_output(out, element)

    def _score_tiles(self, queries: list, k_stage: str, offset: Expr, pitch: int, probability: Index,
                     key_name: str) -> list[list]:
        """X at the warp's 16 rows x the block's 64 keys (staged from element `offset` of `k_stage`): the scores'
        products by mma.sync into 8 tiles of 4 accumulators, then the rest of X lowered at each accumulator's (row,
        key) (`_compute` reads the products from the tiles)."""
        self._tile_depth = len(self._scopes) - 1
        tiles = self._tiles(self.keys_per_block)
        self._multiply(queries, k_stage, pitch, tiles, False, offset)
        scores = []
        for tile, accumulators in enumerate(tiles):
            row = []
            for register, acc in enumerate(accumulators):
                at = _at(probability, {self.row_name: self._row(register // 2),
                                       key_name: self._column(tile, register % 2)})
                self._tile_scores[tuple(e.key for e in self._product_index(self._product, at))] = acc
                row.append(self.value(self.pattern.scores, at, ()).operand)
            scores.append(row)
        return scores


def lower_core_attention(root: Node, pattern: AttentionPattern, materialized: dict[int, Node], produced: set[int],
                         local_memory: int, max_group_size: int, kinds: tuple[str, ...],
                         stored_apart: frozenset = frozenset(), param_limit: int = PARAM_LIMIT
                         ) -> Optional[LoweredKernel]:
    """The tensor-core kernel storing `root` (see the module), or None where it does not apply."""
    try:
        return CoreAttentionLowering(root, pattern, materialized, produced, local_memory, max_group_size, kinds,
                                     stored_apart, param_limit).lower()
    except NotAttention:
        return None
