"""Attention forward on GPUs with register tiles, in FlashAttention-2's order (ZYX_ATTENTION_FORM=tiled).

attention_tiles.py's staged kernel gives each item one query row: every key and value row it reads from local
memory serves that row alone (4 multiply-adds per float4 read), and the row's query and outputs hold 128 registers
at head dimension 64. Here a work group of 8 x TY items owns 4 x TY consecutive query rows of one batch entry, item
(ty, tx) = (lid / 8, lid % 8) rows ty*4 .. ty*4+3, and walks blocks of 8 x CK keys:
- the group copies the block's keys and values into local memory (the query rows once, before the blocks); the
  keys' rows KEY_PAD floats apart, so that the 8 items of a quarter warp, reading keys tx + 8c, read 8 banks apart;
- each item computes its 4 rows' scores against keys tx + 8c (c < CK) as a register tile: per float4 of the head
  dimension 4 query reads (each read by the 8 items of a row at once) and CK key reads serve 16 CK multiply-adds;
  the rest of X (scale, mask) is lowered from the trace at each of those (row, key) pairs, keys past the end -inf;
- the block's row maxima go through local memory (8 items share a row); each item rescales its running sums once
  per block and stores exp(X - m) into local memory [row][key] over the keys (every item is done with them);
- each item adds P V to its 4 rows x W / 8 columns (float4 groups tx*4 + 32g): P read as float4 along the keys.
An item's running sum covers its own keys only (every item of a row rescales by the same factors); the row's sum
is added up across its 8 items once, after the blocks. Blocks a causal mask hides from every row of the group are
skipped as in attention_tiles.py. Only where the head dimension is a multiple of 4, the value width of 32 and the
stages fit the local memory; else the staged kernel. TILE (ZYX_ATTENTION_TILE="TY,CK") sets the tile.
"""
from __future__ import annotations

import math
import os
from typing import Optional

from ..dtypes import float32
from ..trace.node import Node
from ..trace.ops import Op
from .attention import FLOAT_LOWEST, AttentionLowering, AttentionPattern, NotAttention
from .attention_tiles import LANES, StagedAttentionLowering, TileScores, _at, _scores_product
from .kernel_ir import (Accumulate, Alu, Barrier, Const, Define, Lane, LocalArray, LocalLoad, LocalStore, Loop,
                        MultiplyAdd, Names, Reg, Select)
from .lower import PARAM_LIMIT, Index, LoweredKernel, linear, unravel
from .symbolic import Expr

TILE = (16, 4)          # (TY, CK): 64 query rows and 128 items a group, blocks of 32 keys
TILE_ROWS_SETTINGS = (4, 8, 16, 32)  # what ZYX_ATTENTION_TILE's TY may be
TILE_KEYS_SETTINGS = (2, 4, 8)       # and its CK
ITEM_ROWS = 4           # query rows an item owns
ROW_ITEMS = 8           # items sharing a row (tx)
KEY_PAD = 4             # floats between staged key rows past the head dimension (and between P's rows)


def tile(variable: str = "ZYX_ATTENTION_TILE", default: Optional[tuple[int, int]] = TILE
         ) -> Optional[tuple[int, int]]:
    """(TY, CK) as the setting `variable` says ("16,4"), else `default`."""
    setting = os.environ.get(variable)
    if setting is None:
        return default
    parts = setting.split(",")
    if (len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[0]) not in TILE_ROWS_SETTINGS
            or int(parts[1]) not in TILE_KEYS_SETTINGS):
        raise ValueError(f"{variable}={setting!r}: expected 'TY,CK' with TY one of {TILE_ROWS_SETTINGS} "
                         f"and CK one of {TILE_KEYS_SETTINGS}")
    return int(parts[0]), int(parts[1])


class TileLoops:
    """The register tiles' loops, shared by this module's forward and attention_grad_tiled.py's backward: a group of
    8 x TY items, item (ty, tx) = (lid / 8, lid % 8) owning rows ty*4 .. ty*4+3 of the group's and columns tx + 8c
    (c < CK) of a block of 8 x CK walked rows (keys here); its outputs' columns in float4 groups tx*4 + 32g."""

    key_chunks: int
    keys_per_block: int
    names: Names
    _scopes: list[list]
    _ty: Expr
    _tx: Expr

    def _columns(self, width: int) -> list[Expr]:
        """The output columns an item owns, in its accumulators' order: float4 groups tx*4 + 32g."""
        return [self._tx * LANES + LANES * ROW_ITEMS * g + lane
                for g in range(width // (LANES * ROW_ITEMS)) for lane in range(LANES)]

    def _product_tile(self, row_stage: str, walked_stage: str, size: int, walked_pitch: int) -> list[list[Reg]]:
        """The item's 4 x CK products over `size` of its rows (`row_stage`: [row][size]) with its walked rows
        (`walked_stage`: [walked row][size], rows `walked_pitch` floats apart): a loop over float4 steps appended to
        the innermost scope, 4 row reads (each read by the 8 items of a row at once) and CK walked reads serving
        16 CK multiply-adds; the registers by row."""
        name = self.names.fresh("d")
        step = Expr.var(name, size // LANES)
        accs = [[Reg(self.names.fresh("s"), float32) for _ in range(self.key_chunks)] for _ in range(ITEM_ROWS)]
        rows = [Reg(self.names.fresh("q"), float32, LANES) for _ in range(ITEM_ROWS)]
        walked = [Reg(self.names.fresh("k"), float32, LANES) for _ in range(self.key_chunks)]
        body: list = [LocalLoad(q, row_stage, (self._ty * ITEM_ROWS + i) * (size // LANES) + step)
                      for i, q in enumerate(rows)]
        body += [LocalLoad(k, walked_stage, (self._tx + ROW_ITEMS * c) * (walked_pitch // LANES) + step)
                 for c, k in enumerate(walked)]
        body += [MultiplyAdd(accs[i][c], Lane(q, f"s{lane}"), Lane(k, f"s{lane}"))
                 for lane in range(LANES) for i, q in enumerate(rows) for c, k in enumerate(walked)]
        self._scopes[-1] += [Define(acc, Const(0.0, float32)) for row in accs for acc in row]
        self._scopes[-1].append(Loop(name, size // LANES, tuple(body), unroll=True))
        return accs

    def _weigh_tile(self, p_stage: str, p_pitch: int, w_stage: str, w_pitch: int, width: int,
                    accs: list[list[Reg]]) -> Loop:
        """The loop over the block's walked rows, 4 at a time, adding P times the walked rows of `w_stage` (rows
        `w_pitch` floats apart) to the item's 4 rows x width / 8 columns (P read as float4 along the walked rows
        from `p_stage`, [row][walked] rows `p_pitch` floats apart; the walked rows' float4 groups tx + 8g)."""
        name = self.names.fresh("j")
        step = Expr.var(name, self.keys_per_block // LANES)
        weights = [Reg(self.names.fresh("p"), float32, LANES) for _ in range(ITEM_ROWS)]
        body: list = [LocalLoad(p, p_stage, (self._ty * ITEM_ROWS + i) * (p_pitch // LANES) + step)
                      for i, p in enumerate(weights)]
        groups = width // (LANES * ROW_ITEMS)
        for offset in range(LANES):
            values = [Reg(self.names.fresh("w"), float32, LANES) for _ in range(groups)]
            body += [LocalLoad(w, w_stage, (step * LANES + offset) * (w_pitch // LANES) + self._tx + ROW_ITEMS * g)
                     for g, w in enumerate(values)]
            body += [MultiplyAdd(accs[i][g * LANES + lane], Lane(p, f"s{offset}"), Lane(w, f"s{lane}"))
                     for i, p in enumerate(weights) for g, w in enumerate(values) for lane in range(LANES)]
        return Loop(name, self.keys_per_block // LANES, tuple(body), unroll=True)


class TiledAttentionLowering(TileLoops, TileScores, StagedAttentionLowering):
    """A work group per block of query rows, an item per 4 rows x a slice of keys and of outputs; see the module."""

    def __init__(self, root: Node, pattern: AttentionPattern, materialized: dict[int, Node], produced: set[int],
                 local_memory: int, max_group_size: int, skips: bool = True, stored_apart: frozenset = frozenset(),
                 param_limit: int = PARAM_LIMIT):
        AttentionLowering.__init__(self, root, pattern, materialized, produced, stored_apart, param_limit)
        product = pattern.product
        if len(product.shape) < 3 or product.shape[-2] % (LANES * ROW_ITEMS):
            raise NotAttention(product)
        self.local_memory, self.skips = local_memory, skips
        self.queries, self.width = product.shape[-3], product.shape[-2]
        self.tile_rows, self.key_chunks = tile() or TILE
        self.rows_per_group, self.keys_per_block = ITEM_ROWS * self.tile_rows, ROW_ITEMS * self.key_chunks
        batch = product.shape[:-3]
        self.query_blocks = -(-self.queries // self.rows_per_group)
        self.groups = math.prod(batch) * self.query_blocks
        if self.group_items > max_group_size:
            raise NotAttention(product)
        self.lid = Expr.var("lid", self.group_items)
        self.row_name = self.names.fresh("r")  # the group's row in the indices analysed before the tile exists
        group = Expr.var("gid", self.groups)
        self._batch = unravel(group // self.query_blocks, batch)
        self._first_row = (group % self.query_blocks) * self.rows_per_group
        self.leading = self._leading(Expr.var(self.row_name, self.rows_per_group))
        self._ty, self._tx = self.lid // ROW_ITEMS, self.lid % ROW_ITEMS
        self.positions, self.guards = [], []
        for i in range(ITEM_ROWS):
            exact = self._first_row + self._ty * ITEM_ROWS + i
            guard = ((exact, "lt", self.queries),) if exact.hi >= self.queries else ()
            for column in self._columns(self.width):
                self.positions.append(linear((*self._leading(self._ty * ITEM_ROWS + i), column, Expr(0)),
                                             product.shape))
                self.guards.append(guard)
        self.elements = [unravel(position, self.space) for position in self.positions]
        self._tile_scores: dict[tuple, Reg] = {}
        self._product: Optional[Node] = None
        self._tile_depth = 0

    @property
    def group_items(self) -> int:
        return ROW_ITEMS * self.tile_rows

    def _leading(self, row: Expr) -> Index:
        """The batch entry's index and the query row `row` of the group (the last row past the end)."""
        return (*self._batch, Expr.minimum(self._first_row + row, self.queries - 1))

    def _lower_outputs(self) -> None:
        pattern, rows, keys, width = self.pattern, self.rows_per_group, self.keys_per_block, self.width
        product = _scores_product(pattern, self._is_materialized)
        head_dim = product.src[0].shape[product.arg[0]]
        total_keys = pattern.product.src[0].shape[-1]
        key_pitch, p_pitch = head_dim + KEY_PAD, keys + KEY_PAD
        shared = max(keys * key_pitch, rows * p_pitch)  # the keys' stage, then P's
        if head_dim % LANES or 4 * (rows * head_dim + shared + keys * width + rows * ROW_ITEMS) > self.local_memory:
            raise NotAttention(product)
        (blocks, block_name, key_name, value_name, head_name, block, key, probability, factor_index, query_side,
         key_side, weights) = self._key_walk(product, total_keys, keys, width, head_dim)
        if self.row_name in self._variables(pattern.w_side, weights):
            raise NotAttention(pattern.w_side)
        q_stage, kp_stage, v_stage, exchange = (self.names.fresh(p) for p in ("q_stage", "k_stage", "v_stage", "rows"))
        maxima = [Reg(self.names.fresh("m"), float32) for _ in range(ITEM_ROWS)]
        totals = [Reg(self.names.fresh("l"), float32) for _ in range(ITEM_ROWS)]
        accs = [[Reg(self.names.fresh("acc"), float32) for _ in range(width // ROW_ITEMS)] for _ in range(ITEM_ROWS)]
        self._scopes[0] += [LocalArray(q_stage, float32, rows * head_dim // LANES, LANES),
                            LocalArray(kp_stage, float32, shared // LANES, LANES),
                            LocalArray(v_stage, float32, keys * width // LANES, LANES),
                            LocalArray(exchange, float32, rows * ROW_ITEMS // LANES, LANES),
                            *(Define(m, Const(FLOAT_LOWEST, float32)) for m in maxima),
                            *(Define(total, Const(0.0, float32)) for total in totals),
                            *(Define(acc, Const(0.0, float32)) for row in accs for acc in row)]
        self._stage(query_side, factor_index, self.row_name, head_name, head_dim, q_stage, keys=rows)
        mask = self._mask(pattern.scores, probability, key_name) if self.skips else []
        rows_extreme = self._rows_extreme(mask)  # once, before the blocks
        self._open_loop(block_name, blocks)
        block_test = self._block_test(mask, rows_extreme, key_name, block_name) if mask else None
        skippable = len(self._scopes[-1])
        self._stage(key_side, factor_index, key_name, head_name, head_dim, kp_stage, pitch=key_pitch)
        self._stage(pattern.w_side, weights, key_name, value_name, width, v_stage)
        self._scopes[-1].append(Barrier())
        scores = self._tile(q_stage, kp_stage, head_dim, key_pitch, probability, key_name)
        tile_keys = [block * keys + self._tx + ROW_ITEMS * c for c in range(self.key_chunks)]
        for i, row in enumerate(scores):
            for c, exact in enumerate(tile_keys):
                at = _at(probability, {self.row_name: self._ty * ITEM_ROWS + i, key_name: self._tx + ROW_ITEMS * c})
                row[c] = self.value(pattern.scores, at, ()).operand
                if exact.hi >= total_keys:  # the last block hangs over the end
                    row[c] = self._line(lambda out, x=row[c], k=exact: Select(out, ((k, "lt", total_keys),), x,
                                                                               Const(-math.inf, float32)))
        block_maxima = self._exchange(exchange, [self._largest(row) for row in scores], Op.MAX)
        for i, row in enumerate(scores):
            lowered = self._rescale(maxima[i], block_maxima[i], [totals[i], *accs[i]])
            for c, score in enumerate(row):
                exponential, weight = self._exponential(score, lowered, self._scopes[-1])
                self._scopes[-1] += [Accumulate(totals[i], Op.ADD, exponential),
                                     LocalStore(kp_stage, (self._ty * ITEM_ROWS + i) * p_pitch + self._tx
                                                + ROW_ITEMS * c, weight, element=True)]
        self._scopes[-1].append(Barrier())
        self._scopes[-1].append(self._weigh_tile(kp_stage, p_pitch, v_stage, self.width, self.width, accs))
        self._scopes[-1].append(Barrier())  # every item is done with the stages before the next block's copies
        body = self._close_loop()
        self._skip_unneeded(body, skippable, block_test)
        self._scopes[0].append(Loop(block_name, blocks, tuple(body)))
        row_totals = self._exchange(exchange, totals, Op.ADD)
        for i in range(ITEM_ROWS):
            first = i * len(accs[i])
            self._store_statistics(_at(probability, {self.row_name: self._ty * ITEM_ROWS + i}), maxima[i],
                                   row_totals[i], first)
            for element, acc in enumerate(accs[i], start=first):
                out = Reg(self.names.fresh("v"), float32)
                self._scopes[0].append(Alu(out, Op.DIV, (acc, row_totals[i])))
                self._store_output(out, element)

    def _tile(self, q_stage: str, k_stage: str, head_dim: int, key_pitch: int, probability: Index,
              key_name: str) -> list[list]:
        """The item's 4 x CK scores' products (rows ty*4 + i, keys tx + 8c) from the staged query rows and keys;
        their registers by row, known to `_compute` by where X reads the product."""
        depth = len(self._scopes) - 1
        accs = self._product_tile(q_stage, k_stage, head_dim, key_pitch)
        for i, row in enumerate(accs):
            for c, acc in enumerate(row):
                at = _at(probability, {self.row_name: self._ty * ITEM_ROWS + i, key_name: self._tx + ROW_ITEMS * c})
                self._tile_scores[tuple(e.key for e in self._product_index(self._product, at))] = acc
        self._tile_depth = depth
        return [list(row) for row in accs]

    def _largest(self, values: list) -> Reg:
        best = Reg(self.names.fresh("mb"), float32)
        self._scopes[-1] += [Define(best, Const(FLOAT_LOWEST, float32)),
                             *(Accumulate(best, Op.MAX, value) for value in values)]
        return best

    def _exchange(self, array: str, values: list[Reg], op: Op) -> list[Reg]:
        """Each of the item's rows' `values` combined by `op` over the row's 8 items, through local memory
        (the array [row][tx], read as two float4 vectors), between barriers."""
        scope = self._scopes[-1]
        scope += [LocalStore(array, (self._ty * ITEM_ROWS + i) * ROW_ITEMS + self._tx, value, element=True)
                  for i, value in enumerate(values)]
        scope.append(Barrier())
        combined = []
        for i in range(ITEM_ROWS):
            halves = [Reg(self.names.fresh("x"), float32, LANES) for _ in range(ROW_ITEMS // LANES)]
            scope += [LocalLoad(half, array, (self._ty * ITEM_ROWS + i) * (ROW_ITEMS // LANES) + h)
                      for h, half in enumerate(halves)]
            lanes = [Lane(half, f"s{lane}") for half in halves for lane in range(LANES)]
            total = lanes[0]
            for lane in lanes[1:]:
                total = self._line(lambda out, a=total, b=lane: Alu(out, op, (a, b)))
            combined.append(total)
        return combined  # (the next writes come after the block's later barriers)


def lower_tiled_attention(root: Node, pattern: AttentionPattern, materialized: dict[int, Node], produced: set[int],
                          local_memory: int, max_group_size: int, skips: bool = True,
                          stored_apart: frozenset = frozenset(), param_limit: int = PARAM_LIMIT
                          ) -> Optional[LoweredKernel]:
    """The tiled kernel storing `root` (see the module), or None where it does not apply."""
    try:
        return TiledAttentionLowering(root, pattern, materialized, produced, local_memory, max_group_size, skips,
                                      stored_apart, param_limit).lower()
    except NotAttention:
        return None
