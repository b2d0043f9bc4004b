"""Attention's backward on GPUs with register tiles, in FlashAttention-2's order (ZYX_ATTENTION_FORM=tiled).

attention_grad_tiles.py's staged kernels give each item one row (a key's dK and dV rows, or a query's dQ row) and
walk blocks of the other axis staged in local memory: every staged value read serves that row alone. Here, as
attention_tiled.py's forward does, a work group of 8 x TY items owns 4 x TY consecutive rows of one batch entry
(keys for dK and dV, one kernel; queries for dQ), item (ty, tx) = (lid / 8, lid % 8) rows ty*4 .. ty*4+3, and
- copies its rows' side of each nested product (X's and dP's products over the head dimension: k and v for dK and
  dV, q and dO for dQ) into local memory once, before the walk;
- for every block of 8 x CK walked rows copies their side of those products and the outer products' other
  operands (q and dO; k and v) into local memory, rows KEY_PAD floats apart, and waits;
- computes each nested product as a register tile, its 4 rows against walked rows tx + 8c (c < CK): 4 + CK
  float4 reads serve 16 CK multiply-adds (TileLoops);
- lowers each outer product's P side (P, dS: the mask, the row statistics and D read as any kernel reads them)
  from the trace at those 4 x CK pairs, 0 past the last walked row, into a local array [row][walked], and waits;
- adds each outer product's terms to its 4 rows x W / 8 columns (TileLoops._weigh_tile), and waits again before
  the next block's copies.
Blocks a causal mask hides from all the group's rows are skipped (attention_tiles.py's test). So dK and dV share
their walk and P's recomputation: two kernels per attention (dK with dV, dQ) plus D's row sums. Only in float32,
where every output width is a multiple of 32 and every nested product's of 4, and where the stages fit the local
memory (the tile: the first of GRADIENT_TILES that fits, or ZYX_ATTENTION_GRAD_TILE="TY,CK", and for kernels of
one product, dQ's, ZYX_ATTENTION_GRAD_DQ_TILE); else the staged kernels. The local memory is what the device is
known to build (DeviceTraits.search_local_memory: 200 KiB on the H200, which reports 48): there at W7's shape (16 x
12 heads, T = 1024, d = 64, causal) the tile 16 x 4 (68 KiB) took 2.58 + 1.89 ms (dK with dV, dQ) against 8 x 4's
(in 48 KiB) 2.92 + 2.27, and 8 x 8 5.04 + 4.57.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from ..dtypes import float32
from ..trace.node import Node
from .attention import NotAttention
from .attention_grad import GradientProduct
from .attention_grad_tiles import (StagedGradientLowering, _distinct, _keys, _position, _probability_index, _scores,
                                   _stage_key)
from .attention_tiled import ITEM_ROWS, KEY_PAD, LANES, ROW_ITEMS, TileLoops, tile
from .kernel_ir import Barrier, Const, Define, LocalArray, LocalStore, Loop, Reg, Select
from .lower import PARAM_LIMIT, Index, LoweredKernel, Step, _Value, unravel
from .symbolic import Expr
from .view_index import reads

# (TY, CK) by preference: the first whose stages fit the local memory. At W7's shape (d = 64) on the H200: 16 x 4,
# 64 rows (keys for dK with dV, queries for dQ) and 128 items a group, blocks of 32 walked rows.
GRADIENT_TILES = ((16, 4), (8, 4), (4, 4), (4, 2))


class TiledGradientLowering(TileLoops, StagedGradientLowering):
    """A work group per 4 x TY rows of one batch entry, an item per 4 rows x a slice of walked rows and of outputs;
    see the module's docstring."""

    def __init__(self, plan: GradientProduct, siblings: Sequence[GradientProduct], materialized: dict[int, Node],
                 produced: set[int], local_memory: int, max_group_size: int, skips: bool = True,
                 stored_apart: frozenset = frozenset(), param_limit: int = PARAM_LIMIT):
        self.tile_rows, self.key_chunks = GRADIENT_TILES[0]  # (until _fit chooses)
        super().__init__(plan, siblings, materialized, produced, local_memory, max_group_size, skips, stored_apart,
                         param_limit)
        setting = tile("ZYX_ATTENTION_GRAD_TILE", None)
        if len(self.plans) == 1:
            setting = tile("ZYX_ATTENTION_GRAD_DQ_TILE", setting)
        self.tiles = [setting] if setting else list(GRADIENT_TILES)
        if not all(map(may_tile, self.plans)):
            raise NotAttention(plan.product)
        self._tile_values: dict[tuple, Reg] = {}
        self._tiled: set[int] = set()  # the nested products (their ids): only their tiles' registers compute them
        self._tile_depth = 0

    @property
    def group_items(self) -> int:
        return ROW_ITEMS * self.tile_rows

    def _layout(self, plan: GradientProduct) -> tuple[Index, tuple]:
        """Groups of 4 x TY consecutive rows along the last of the rows' axes, within a batch entry; the item's
        index at the group's row `row_name` (each item's four rows substitute it)."""
        *batch, self._items = plan.rows
        self.row_name = self.names.fresh("r")
        self._batch_size, self._batch_shape = math.prod(batch), tuple(batch)
        self._lay_out_groups()
        return self._item(Expr.var(self.row_name, self.rows_per_group)), ()

    def _lay_out_groups(self) -> None:
        """The groups, the item's (ty, tx) and its batch entry for the tile (TY, CK)."""
        self.rows_per_group, self.keys_per_block = ITEM_ROWS * self.tile_rows, ROW_ITEMS * self.key_chunks
        blocks = -(-self._items // self.rows_per_group)
        self.groups = self._batch_size * blocks
        self.lid = Expr.var("lid", self.group_items)
        group = Expr.var("gid", self.groups)
        self._batch = unravel(group // blocks, self._batch_shape)
        self._first_row = (group % blocks) * self.rows_per_group
        self._ty, self._tx = self.lid // ROW_ITEMS, self.lid % ROW_ITEMS

    def _item(self, row: Expr) -> Index:
        """The index among the plans' rows of the group's row `row` (the last row past the end)."""
        return (*self._batch, Expr.minimum(self._first_row + row, self._items - 1))

    def _item_row(self, i: int) -> Expr:
        return self._ty * ITEM_ROWS + i

    def _lower_outputs(self) -> None:
        walk_name, block_name = self.names.fresh("j"), self.names.fresh("kb")
        # the operands' sizes first: the tile they fit decides the blocks, and so where the walk reads them
        self._fit(*self._operands(Expr.minimum(Expr.var(walk_name, self.trips), self.trips - 1), walk_name))
        blocks = -(-self.trips // self.keys_per_block)
        block = self._walked_block(block_name, blocks, self.keys_per_block, walk_name)
        walked = Expr.minimum(block * self.keys_per_block + Expr.var(walk_name, self.keys_per_block), self.trips - 1)
        products, walked_stages = self._operands(walked, walk_name)
        row_stages, stages, p_stages = self._declare_stages(products, walked_stages)
        accs = [[[Reg(self.names.fresh("acc"), float32) for _ in range(plan.product.shape[plan.width] // ROW_ITEMS)]
                 for _ in range(ITEM_ROWS)] for plan in self.plans]
        self._scopes[0] += [Define(acc, Const(0.0, float32)) for plan in accs for row in plan for acc in row]
        for (_, factors, name, size, _, row_side), stage in zip(products, row_stages):
            self._stage(row_side, factors, self.row_name, name, size, stage, keys=self.rows_per_group)
        probability = _probability_index(self.plans[0], self.item, walked, self._is_materialized)
        mask = self._mask(_scores(self.plans[0]), probability, walk_name) if self.skips and probability else []
        rows_extreme = self._rows_extreme(mask)  # once, before the blocks
        self._open_loop(block_name, blocks)
        block_test = self._block_test(mask, rows_extreme, walk_name, block_name) if mask else None
        skippable = len(self._scopes[-1])
        for (node, index, name, size), stage in zip(walked_stages, stages):
            self._stage(node, index, walk_name, name, size, stage, pitch=size + KEY_PAD)
        self._scopes[-1].append(Barrier())
        tiles = [self._product_tile(row_stage, stages[_stage_of(walked_stages, side, factors, name, size)], size,
                                    size + KEY_PAD)
                 for (_, factors, name, size, side, _), row_stage in zip(products, row_stages)]
        self._know_tiles(products, tiles, block)
        for plan, stage in zip(self.plans, p_stages):
            self._store_p_side(plan, stage, block)
        self._scopes[-1].append(Barrier())
        for plan, plan_accs, p_stage in zip(self.plans, accs, p_stages):
            name, width = self.names.fresh("e"), plan.product.shape[plan.width]
            stage = stages[_stage_of(walked_stages, plan.w_side, plan.index(self.item, Expr.var(name, width), walked),
                                     name, width)]
            self._scopes[-1].append(self._weigh_tile(p_stage, self._p_pitch, stage, width + KEY_PAD, width, plan_accs))
        self._scopes[-1].append(Barrier())  # every item is done with the stages before the next block's copies
        body = self._close_loop()
        self._skip_unneeded(body, skippable, block_test)
        self._scopes[0].append(Loop(block_name, blocks, tuple(body)))
        self._store_outputs(accs)

    def _operands(self, walked: Expr, walk_name: str) -> tuple[list, list]:
        """(the nested products, as StagedGradientLowering._nested_products finds them, and what the group stages
        per block of walked rows: _walked_stages); NotAttention where a product is no multiple of 4 long or one is
        read at two places."""
        products = self._nested_products(walked, walk_name)
        if (not products or any(size % LANES for _, _, _, size, _, _ in products)
                or len({id(product) for product, *_ in products}) < len(products)):
            raise NotAttention(self.root)
        return products, self._walked_stages(products, walked, walk_name)

    @property
    def _p_pitch(self) -> int:
        """Floats between the rows of a P side's local array."""
        return self.keys_per_block + KEY_PAD

    def _declare_stages(self, products: list, walked_stages: list) -> tuple[list[str], list[str], list[str]]:
        """The local arrays: the group's rows of each nested product ([row][size]), each walked stage ([walked
        row][size + KEY_PAD]) and each plan's P side ([row][walked + KEY_PAD]); their names."""
        row_stages = [self.names.fresh("r_stage") for _ in products]
        stages = [self.names.fresh("stage") for _ in walked_stages]
        p_stages = [self.names.fresh("p_stage") for _ in self.plans]
        self._scopes[0] += [LocalArray(name, float32, self.rows_per_group * size // LANES, LANES)
                            for name, (_, _, _, size, _, _) in zip(row_stages, products)]
        self._scopes[0] += [LocalArray(name, float32, self.keys_per_block * (size + KEY_PAD) // LANES, LANES)
                            for name, (_, _, _, size) in zip(stages, walked_stages)]
        self._scopes[0] += [LocalArray(name, float32, self.rows_per_group * self._p_pitch // LANES, LANES)
                            for name in p_stages]
        return row_stages, stages, p_stages

    def _walked_at(self, block: Expr, c: int) -> Expr:
        """The item's walked row tx + 8c of the block (the last one past the end)."""
        return Expr.minimum(self._exact_walked(block, c), self.trips - 1)

    def _exact_walked(self, block: Expr, c: int) -> Expr:
        return block * self.keys_per_block + self._tx + ROW_ITEMS * c

    def _store_outputs(self, accs: list[list[list[Reg]]]) -> None:
        """Each plan's accumulators at the item's 4 rows and its columns."""
        columns = max(len(row) for plan_accs in accs for row in plan_accs)
        for plan, plan_accs in zip(self.plans, accs):
            for i, row in enumerate(plan_accs):
                for k, (column, acc) in enumerate(zip(self._columns(plan.product.shape[plan.width]), row)):
                    self._element = i * columns + k
                    self._store(plan.product, _Value(acc, 0), _position(plan, self._item(self._item_row(i)), column))

    def _fit(self, products: list, walked_stages: list) -> None:
        """Take the first tile of `self.tiles` whose stages fit the local memory (and whose group the device
        allows), laying out the groups for it; NotAttention where none does."""
        for rows, chunks in self.tiles:
            row_floats = ITEM_ROWS * rows * sum(size for _, _, _, size, _, _ in products)
            walked_floats = ROW_ITEMS * chunks * sum(size + KEY_PAD for _, _, _, size in walked_stages)
            p_floats = len(self.plans) * ITEM_ROWS * rows * (ROW_ITEMS * chunks + KEY_PAD)
            if (4 * (row_floats + walked_floats + p_floats) <= self.local_memory
                    and ROW_ITEMS * rows <= self.max_group_size):
                self.tile_rows, self.key_chunks = rows, chunks
                self._lay_out_groups()
                self._set_outputs()
                return
        raise NotAttention(self.root)

    def _set_outputs(self) -> None:
        """The item's outputs: the first plan's positions, every plan's guards (4 rows x its widest columns)."""
        plan = self.plans[0]
        columns = max(other.product.shape[other.width] for other in self.plans) // ROW_ITEMS
        self.positions, self.guards = [], []
        for i in range(ITEM_ROWS):
            exact = self._first_row + self._item_row(i)
            guard = ((exact, "lt", self._items),) if exact.hi >= self._items else ()
            self.guards += [guard] * columns
            self.positions += [_position(plan, self._item(self._item_row(i)), column)
                               for column in self._columns(plan.product.shape[plan.width])]
        self.elements = [unravel(position, self.space) for position in self.positions]
        self.item = self._item(Expr.var(self.row_name, self.rows_per_group))

    def _walked_stages(self, products: list, walked: Expr, walk_name: str) -> list[tuple[Node, Index, str, int]]:
        """What the group stages per block of walked rows: the nested products' walked side and the outer
        products' other operand, each once, as (node, index with an inner variable `name` of `size`, name,
        size); NotAttention where one depends on the group's rows or a size is no multiple of 4."""
        stages = [(side, factors, name, size) for _, factors, name, size, side, _ in products]
        for plan in self.plans:
            name, size = self.names.fresh("e"), plan.product.shape[plan.width]
            stages.append((plan.w_side, plan.index(self.item, Expr.var(name, size), walked), name, size))
        if any(self.row_name in self._variables(node, index) or size % LANES for node, index, _, size in stages):
            raise NotAttention(self.root)
        return _distinct(stages)

    def _know_tiles(self, products: list, tiles: list, block: Expr) -> None:
        """Each tile register under the key of its product where the outer products' P sides read it at the
        item's row i and walked row c (found as the lowering will find it: from the P sides' own index)."""
        self._tile_depth = len(self._scopes) - 1
        registers = {id(product): tile_registers for (product, *_), tile_registers in zip(products, tiles)}
        self._tiled = set(registers)
        for i in range(ITEM_ROWS):
            item = self._item(self._item_row(i))
            for c in range(self.key_chunks):
                for plan in self.plans:
                    for node, index in reads(plan.p_side, plan.index(item, 0, self._walked_at(block, c)),
                                             self._is_materialized):
                        if id(node) in registers:
                            self._tile_values[(id(node), _keys(index))] = registers[id(node)][i][c]

    def _store_p_side(self, plan: GradientProduct, stage: str, block: Expr) -> None:
        """`plan`'s P side (P, dS) at the item's 4 x CK pairs into `stage` [row][walked], 0 past the last walked
        row."""
        for i in range(ITEM_ROWS):
            item = self._item(self._item_row(i))
            for c in range(self.key_chunks):
                value = self.value(plan.p_side, plan.index(item, 0, self._walked_at(block, c)), ()).operand
                exact = self._exact_walked(block, c)
                if exact.hi >= self.trips:  # the last block hangs over the end
                    value = self._line(lambda out, x=value, k=exact: Select(out, ((k, "lt", self.trips),), x,
                                                                             Const(0.0, float32)))
                at = self._item_row(i) * self._p_pitch + self._tx + ROW_ITEMS * c
                self._scopes[-1].append(LocalStore(stage, at, value, element=True))

    def _compute(self, node: Node, index: Index, guard: tuple) -> Step:
        """A nested product: its tile's register (see _know_tiles); other values as any kernel computes them."""
        if id(node) not in self._tiled:
            return (yield from super()._compute(node, index, guard))
        register = self._tile_values.get((id(node), _keys(index)))
        if guard or register is None:
            raise NotAttention(node)
        return _Value(register, self._tile_depth)


def may_tile(plan: GradientProduct) -> bool:
    """Whether the tiled kernel may store `plan`'s product: float32 throughout, an output width a multiple of 32
    (an item's columns are float4 groups tx*4 + 32g). (It may still not, where the stages do not fit.)"""
    return (all(node.dtype == float32 for node in (plan.product, plan.p_side, plan.w_side))
            and plan.product.shape[plan.width] % (LANES * ROW_ITEMS) == 0)


def _stage_of(stages: list, node: Node, index: Index, name: str, size: int) -> int:
    """The position in `stages` of the one holding `node` at `index` (inner variable `name`)."""
    key = _stage_key(node, index, name, size)
    return next(s for s, stage in enumerate(stages) if _stage_key(*stage) == key)


def lower_tiled_attention_gradient(plan: GradientProduct, siblings: Sequence[GradientProduct],
                                   materialized: dict[int, Node], produced: set[int], local_memory: int,
                                   max_group_size: int, skips: bool = True, stored_apart: frozenset = frozenset(),
                                   param_limit: int = PARAM_LIMIT) -> Optional[LoweredKernel]:
    """The tiled kernel storing `plan`'s product and its siblings' that walk alike (see the module), or None where
    it does not apply (then the staged kernels do). Without `skips` every block is computed."""
    try:
        return TiledGradientLowering(plan, siblings, materialized, produced, local_memory, max_group_size, skips,
                                     stored_apart, param_limit).lower()
    except NotAttention:
        return None
