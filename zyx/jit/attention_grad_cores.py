"""Attention's backward on NVIDIA tensor cores for 16-bit q, k, v (ZYX_ATTENTION_FORM=cores), FlashAttention-2's order.

attention_grad.py's plans (GradientProduct) are the products of the backward that recompute P: dV = sum_i P dO and
dK = sum_i dS Q walk the queries for a block of keys (one kernel: they share P, recomputed once), dQ = sum_j dS K
walks the keys for a block of queries. Here, as attention_cores.py does for the forward, a work group of 4 warps owns
64 rows of the item axis (keys, or queries), warp w rows 16w .. 16w + 15, and walks blocks of 64 rows of the other:
- the products P's recomputation nests (X's q·k and dP's dO·v) are products of the item's side, staged once and held
  as A fragments, and the walked side, staged per block (by cp.async a block ahead where every staged operand is
  stored in 16 bits: attention_warp_tiles.py): mma.sync into 8 tiles of 16 x 8 accumulators a warp;
- every other value (the mask, P = exp(X - m) / l from the row statistics the forward stored, dS = P (dP - D)) is
  lowered from the trace at each accumulator's (item, walked) place; walked rows past the end add nothing;
- each plan's P side there (P for dV, dS for dK and dQ), rounded and packed two to a word, is the A fragment of its
  product with its other operand (dO, q, k as the trace scales them), staged per block as [walked][column] and read
  by transposing ldmatrix, into the warp's 16 rows x its columns of accumulators, stored after the walk.
Blocks a causal mask hides from every row of the group are skipped (attention_tiles.py's test), blocks it hides
nothing of run without its selects (WarpTiles._peel_visible); exponentials and divisions are approximate
(transforms/approximate_math). Only where every product multiplies operands of one 16-bit dtype the device
multiplies on tensor cores, every head and value dimension is a multiple of 16 up to MAX_DIM and the stages fit the
local memory; else the staged kernels.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from ..dtypes import float32
from ..trace.node import Node
from .attention import NotAttention
from .attention_grad import GradientProduct
from .attention_grad_tiles import StagedGradientLowering, _keys, _probability_index, _scores, _stage_key
from .attention_tiles import _at
from .attention_warp_tiles import BLOCK, PAD, TILE_N, WarpTiles, fits_tiles
from .kernel_ir import Barrier, Const, Reg, Select, substitute
from .lower import PARAM_LIMIT, Index, LoweredKernel, Lowering, Step, _Value, linear, unravel
from .symbolic import Expr
from .tensor_cores import KINDS
from .view_index import reads


def on_tensor_cores(plan: GradientProduct, kinds: tuple[str, ...]) -> bool:
    """Whether `plan`'s product multiplies operands of its own 16-bit dtype, one of `kinds`, into columns the tiles
    take (what this module's kernels need of each product they store; its nested products are checked there)."""
    dtype = plan.product.dtype
    return (KINDS.get(dtype.name) in kinds and all(s.dtype == dtype for s in plan.product.src[0].src)
            and fits_tiles(plan.product.shape[plan.width]))


class CoreGradientLowering(WarpTiles, StagedGradientLowering):
    """A work group of 4 warps per 64 rows of `plan`'s items (and its siblings'), the walked axis in blocks of 64;
    see the module."""

    def __init__(self, plan: GradientProduct, siblings: Sequence[GradientProduct], materialized: dict[int, Node],
                 produced: set[int], local_memory: int, max_group_size: int, kinds: tuple[str, ...],
                 stored_apart: frozenset = frozenset(), param_limit: int = PARAM_LIMIT):
        self.stage_dtype = plan.product.dtype
        if not on_tensor_cores(plan, kinds) or self.group_items > max_group_size:
            raise NotAttention(plan.product)
        super().__init__(plan, siblings, materialized, produced, local_memory, max_group_size, True, stored_apart,
                         param_limit)
        if any(other.product.dtype != self.stage_dtype or not on_tensor_cores(other, kinds) for other in self.plans):
            raise NotAttention(plan.product)
        self.positions, self.guards = [], []
        for half in range(2):
            exact = self._first_row + self._row(half)
            guard = ((exact, "lt", self._items),) if exact.hi >= self._items else ()
            for column in self._columns(plan):
                self.positions.append(linear(plan.index(self._item_at(self._row(half)), column, Expr(0)),
                                             plan.product.shape))
                self.guards.append(guard)
        self.elements = [unravel(position, self.space) for position in self.positions]
        self._nested_tiles: dict[tuple, Reg] = {}
        self._nested_nodes: set[int] = set()
        self._tile_depth = 0

    def _layout(self, plan: GradientProduct) -> tuple[Index, tuple]:
        """Groups of 64 consecutive items along the last of the rows' axes, within a batch entry; the item's index
        at the group's row variable (`row_name`: the tiles put each lane at two rows, `_item_at`)."""
        *batch, self._items = plan.rows
        self.rows_per_group = self.group_rows
        blocks = -(-self._items // self.group_rows)
        self.groups = math.prod(batch) * blocks
        self.lid = Expr.var("lid", self.group_items)
        self.row_name = self.names.fresh("r")
        group = Expr.var("gid", self.groups)
        self._batch = unravel(group // blocks, tuple(batch))
        self._first_row = (group % blocks) * self.group_rows
        return self._item_at(Expr.var(self.row_name, self.group_rows)), ()

    def _item_at(self, row: Expr) -> Index:
        """The item at the group's row `row` (the last item past the end)."""
        return (*self._batch, Expr.minimum(self._first_row + row, self._items - 1))

    def _columns(self, plan: GradientProduct) -> list[Expr]:
        """The output columns a lane holds per row, in its accumulators' order."""
        return [self._column(tile, pair) for tile in range(plan.product.shape[plan.width] // TILE_N)
                for pair in range(2)]

    def _lower_outputs(self) -> None:
        trips, dtype, plans = self.trips, self.stage_dtype, self.plans
        block_name, walk_name = self.names.fresh("kb"), self.names.fresh("j")
        self._walk_name = walk_name
        products = self._nested_products(Expr.var(walk_name, trips), walk_name)
        if not products or any(node.dtype != dtype or not fits_tiles(size) or
                               any(s.dtype != dtype for s in node.src[0].src) for node, _, _, size, _, _ in products):
            raise NotAttention(self.root)
        self._nested_nodes = {id(node) for node, *_ in products}
        self.keys_per_block = BLOCK
        blocks = -(-trips // BLOCK)
        exact = self._walked_block(block_name, blocks, BLOCK, walk_name) * BLOCK + Expr.var(walk_name, BLOCK)
        walked = Expr.minimum(exact, trips - 1)
        value_names = [self.names.fresh("e") for _ in plans]
        outer = [(plan.w_side, plan.index(self.item, Expr.var(name, plan.product.shape[plan.width]), walked), name,
                  plan.product.shape[plan.width]) for plan, name in zip(plans, value_names)]
        if any(self.row_name in self._variables(node, index) for node, index, _, _ in outer):
            raise NotAttention(self.root)
        copies = [(side, _at(factors, {walk_name: walked}), name, size)
                  for _, factors, name, size, side, _ in products] + outer
        distinct: list = []  # (one stage for a value read twice)
        for copy in copies:
            if all(_stage_key(*copy) != _stage_key(*other) for other in distinct):
                distinct.append(copy)
        names, chunks = self._walked_stages(distinct, walk_name, self.local_memory, self.group_rows)
        arrays = {_stage_key(*copy): (name, copy[3] + PAD) for copy, name in zip(distinct, names)}
        stages, outer_stages = ([arrays[_stage_key(*copy)] for copy in part] for part in (copies[:len(products)],
                                                                                           outer))
        if len({stage for stage, _ in stages}) < len(stages):  # (each product's item side is staged in its stage)
            raise NotAttention(self.root)
        fragments = []
        for (node, factors, name, size, _, item_side), (stage, pitch) in zip(products, stages):
            self._stage_rows(item_side, _at(factors, {walk_name: Expr(0)}), self.row_name, name, size, stage, pitch,
                             keys=self.group_rows)
        self._scopes[0].append(Barrier())
        for (node, factors, name, size, _, _), (stage, pitch) in zip(products, stages):
            fragments.append(self._row_fragments(stage, pitch, size))
        self._scopes[0].append(Barrier())  # every warp holds its fragments before the stages take the walked rows
        accumulators = [self._tiles(plan.product.shape[plan.width]) for plan in plans]
        probability = _probability_index(plans[0], self.item, walked, self._is_materialized)
        mask = self._mask(_scores(plans[0]), probability, walk_name) if probability else []
        rows_extreme = self._rows_extreme(mask)  # once, before the blocks
        rows_lowest = self._rows_extreme(mask, other=True)
        self._open_loop(block_name, blocks)
        offsets = dict(zip(names, self._stage_walked(distinct, names, chunks, walk_name, block_name, blocks)))
        block_test = self._block_test(mask, rows_extreme, walk_name, block_name) if mask else None
        skippable = len(self._scopes[-1])
        visible = self._visible(mask, rows_lowest, walk_name) if mask else None
        self._tile_depth = len(self._scopes) - 1
        for (node, *_), held, (stage, pitch) in zip(products, fragments, stages):
            tiles = self._tiles(BLOCK)
            self._multiply(held, stage, pitch, tiles, False, offsets[stage])
            self._register_tiles(node, tiles, walked)
        for plan, tiles, (stage, pitch) in zip(plans, accumulators, outer_stages):
            sides = [[self._p_side(plan, half, tile, pair, walked, exact) for half in range(2) for pair in range(2)]
                     for tile in range(BLOCK // TILE_N)]
            self._multiply(self._packed_fragments(sides), stage, pitch, tiles, True, offsets[stage])
        if visible is not None:
            self._peel_visible(visible)
        self._close_blocks(block_name, blocks, block_test, skippable, chunks is not None)
        for plan, tiles in zip(plans, accumulators):
            for half in range(2):
                self._element = half * len(self._columns(plans[0]))  # (the guard of the half's rows)
                for tile, pair in ((t, p) for t in range(len(tiles)) for p in range(2)):
                    position = linear(plan.index(self._item_at(self._row(half)), self._column(tile, pair), Expr(0)),
                                      plan.product.shape)
                    self._store(plan.product, _Value(tiles[tile][2 * half + pair], 0), position)

    def _place(self, plan: GradientProduct, half: int, tile: int, pair: int, walked: Expr) -> Index:
        """The plan's source index at this lane's accumulator (`half`, `tile`, `pair`) of a block: its item row and
        walked column (output column 0: the P side is spread along the outputs)."""
        column = substitute(walked, {self._walk_name: self._column(tile, pair)})
        return plan.index(self._item_at(self._row(half)), 0, column)

    def _register_tiles(self, product: Node, tiles: list[list[Reg]], walked: Expr) -> None:
        """Where the plans' P sides read `product` at an accumulator's place: that accumulator (`_compute`)."""
        for tile, accumulators in enumerate(tiles):
            for register, acc in enumerate(accumulators):
                for plan in self.plans:
                    place = self._place(plan, register // 2, tile, register % 2, walked)
                    for node, index in reads(plan.p_side, place, self._is_materialized):
                        if node is product:
                            self._nested_tiles[(id(product), _keys(index))] = acc

    def _p_side(self, plan: GradientProduct, half: int, tile: int, pair: int, walked: Expr, exact: Expr) -> Reg:
        """The plan's P side (P, dS) at an accumulator's place, 0 where the walked row is past the end."""
        value = self.value(plan.p_side, self._place(plan, half, tile, pair, walked), ()).operand
        row = substitute(exact, {self._walk_name: self._column(tile, pair)})
        if row.hi < self.trips:
            return value
        return self._line(lambda out: Select(out, ((row, "lt", self.trips),), value, Const(0.0, float32)))

    def _compute(self, node: Node, index: Index, guard: tuple) -> Step:
        """A nested product: its tile's accumulator at this place (`_register_tiles`); other values as any kernel
        computes them (the row statistics and D read from memory)."""
        if id(node) not in self._nested_nodes:
            return (yield from Lowering._compute(self, node, index, guard))
        acc = self._nested_tiles.get((id(node), _keys(index)))
        if guard or acc is None:
            raise NotAttention(node)
        value = _Value(acc, self._tile_depth)
        return self._rounded(value, node.dtype) if node.dtype.is_narrow_float else value


def lower_core_attention_gradient(plan: GradientProduct, siblings: Sequence[GradientProduct],
                                  materialized: dict[int, Node], produced: set[int], local_memory: int,
                                  max_group_size: int, kinds: tuple[str, ...], stored_apart: frozenset = frozenset(),
                                  param_limit: int = PARAM_LIMIT) -> Optional[LoweredKernel]:
    """The tensor-core kernel storing `plan`'s product and its siblings' (see the module), or None where it does not
    apply."""
    try:
        return CoreGradientLowering(plan, siblings, materialized, produced, local_memory, max_group_size, kinds,
                                    stored_apart, param_limit).lower()
    except NotAttention:
        return None
