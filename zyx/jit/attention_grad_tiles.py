"""Attention's backward on GPUs: a work group per block of rows, the walked rows' operands staged in local memory.

attention_grad.py's kernels give every item a row and let it walk the other axis reading each walked row's
operands from global memory, with loops over the head dimension for X's and dP's products. Here, as
attention_tiles.py does for the forward, a work group of ROWS items owns ROWS consecutive rows of one batch entry
(the item axis: keys for dK and dV, queries for dQ) and
- holds its row's side of each nested product (X's, dP's) in registers: k and v for dK and dV, q and dO for dQ;
- for every block of walked rows copies their side of those products and the outer products' other operands
  (q and dO; k and v) into local memory (consecutive items copy consecutive elements) and waits;
- walks the block: each nested product is the item's registers times a staged row (float4 reads that the whole
  group makes at once), every other value (the mask, P = exp(X - m) / l, dS) lowered from the trace as it is;
then waits again before the next block overwrites the stage. Walked rows past the end read the last row and add
nothing; items past the end compute the last row and store nothing. Blocks that a causal mask hides from all the
group's rows are skipped (attention_tiles.py's test, on the scores P is recomputed from): there P and dS are 0.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

from ..dtypes import float32
from ..trace.attention_grad import softmax_of
from ..trace.node import Node
from ..trace.ops import ELEMENTWISE_OPS, MOVEMENT_OPS, REDUCE_OPS, Op
from .attention import NotAttention
from .attention_grad import AttentionGradientLowering, GradientProduct
from .attention_tiles import StagedBlocks, _at, _lane, _lanes, block_choices, rows_per_group, walks_back
from .kernel_ir import (Alu, Barrier, Const, Define, If, LocalArray, LocalLoad, LocalStore, Loop, MultiplyAdd,
                        Operand, Reg)
from .lower import PARAM_LIMIT, Index, LoweredKernel, Step, _Value, linear, source_index, unravel
from .view_index import reads
from .symbolic import Expr


class StagedGradientLowering(StagedBlocks, AttentionGradientLowering):
    """A work group per block of rows of one batch entry, an item per row; see the module's docstring."""

    def __init__(self, plan: GradientProduct, siblings: Sequence[GradientProduct], materialized: dict[int, Node],
                 produced: set[int], local_memory: int, max_group_size: int, skips: bool = True,
                 stored_apart: frozenset = frozenset(), param_limit: int = PARAM_LIMIT):
        self.local_memory, self.max_group_size, self.skips = local_memory, max_group_size, skips
        super().__init__(plan, siblings, materialized, produced, stored_apart, param_limit)
        # by node: (index, its inner variable, the inner axis' size, stage, lanes)
        self._stages: dict[int, list[tuple[Index, str, int, str, int]]] = {}
        self._nested: dict[tuple, tuple[list[Operand], str, int]] = {}      # (product, index): registers, stage
        self._stage_reads: dict[tuple[str, int], Reg] = {}                  # (stage, vector): its register
        self._p_stages: list[str] = []  # two passes: a local array per plan of its P side, [walked row][item]

    def _layout(self, plan: GradientProduct) -> tuple[Index, tuple]:
        """Groups of rows_per_group consecutive rows along the last of the rows' axes, within a batch entry."""
        *batch, items = plan.rows
        self.rows_per_group = rows_per_group(items, math.prod(batch), self.max_group_size) or 0
        if not self.rows_per_group:
            raise NotAttention(plan.product)
        blocks = -(-items // self.rows_per_group)
        self.groups = math.prod(batch) * blocks
        self.lid = Expr.var("lid", self.rows_per_group)
        group = Expr.var("gid", self.groups)
        exact = (group % blocks) * self.rows_per_group + self.lid
        item = (*unravel(group // blocks, tuple(batch)), Expr.minimum(exact, items - 1))
        return item, (((exact, "lt", items),) if exact.hi >= items else ())

    def _walked_block(self, block_name: str, blocks: int, block: int, walk_name: str) -> Expr:
        """The block of `block` walked rows the walk takes at its counter `block_name`: in order, or last first
        where a causal mask hides the first blocks and then none (`walks_back`: the keys' gradient walking query
        rows), so that the walk stops at the first hidden one."""
        counter = Expr.var(block_name, blocks)
        walked = Expr.minimum(counter * block + Expr.var(walk_name, block), self.trips - 1)
        probability = _probability_index(self.plans[0], self.item, walked, self._is_materialized)
        mask = self._mask(_scores(self.plans[0]), probability, walk_name) if self.skips and probability else []
        return Expr(blocks - 1) - counter if walks_back(mask, block_name) else counter

    def _lower_outputs(self) -> None:
        trips, block_name = self.trips, self.names.fresh("kb")
        walk_name = self._walk_name = self.names.fresh("j")
        probe = Expr.var(walk_name, trips)  # the walked row, to find what the walk reads before its blocks exist
        products = self._nested_products(probe, walk_name)
        walked_operands = self._walked_operands(products, probe, walk_name)
        stages = _distinct(walked_operands)
        nested, outer = walked_operands[:len(products)], walked_operands[len(products):][:len(self.plans)]
        two_passes = walk_passes() == 2 and bool({_stage_key(*s) for s in nested} & {_stage_key(*s) for s in outer})
        block = self.keys_per_block = self._block_size(sum(size for _, _, _, size in stages),
                                                       two_passes * len(self.plans) * self.rows_per_group)
        blocks = -(-trips // block)
        exact = self._walked_block(block_name, blocks, block, walk_name) * block + Expr.var(walk_name, block)
        walked = Expr.minimum(exact, trips - 1)
        copies = self._declare_stages(stages, {walk_name: walked})
        if two_passes:
            self._p_stages = [self.names.fresh("p_stage") for _ in self.plans]
            self._scopes[0] += [LocalArray(name, float32, block * self.rows_per_group) for name in self._p_stages]
        self._hold_item_sides(products, walk_name, walked)
        accs = [[Reg(self.names.fresh("acc"), float32) for _ in range(plan.product.shape[plan.width])]
                for plan in self.plans]
        self._scopes[0] += [Define(acc, Const(0.0, float32)) for row in accs for acc in row]
        probability = _probability_index(self.plans[0], self.item, walked, self._is_materialized)
        mask = self._mask(_scores(self.plans[0]), probability, walk_name) if self.skips and probability else []
        rows_extreme = self._rows_extreme(mask)  # once, before the blocks
        self._open_loop(block_name, blocks)
        block_test = self._block_test(mask, rows_extreme, walk_name, block_name) if mask else None
        skippable = len(self._scopes[-1])
        for node, index, name, size, stage in copies:
            self._stage(node, index, walk_name, name, size, stage)
        self._scopes[-1].append(Barrier())
        self._walk_block(accs, walked, exact)
        self._scopes[-1].append(Barrier())  # every item is done with the stage before the next block overwrites it
        body = self._close_loop()
        self._skip_unneeded(body, skippable, block_test)
        self._scopes[0].append(Loop(block_name, blocks, tuple(body)))
        for plan, row in zip(self.plans, accs):
            for e, acc in enumerate(row):
                self._element = e
                self._store(plan.product, _Value(acc, 0), _position(plan, self.item, e))

    def _walked_operands(self, products: list, walked: Expr, walk_name: str) -> list[tuple[Node, Index, str, int]]:
        """What the walk reads at the walked row alone, to stage: the nested products' walked side, the outer
        products' other operand, the values of the walked row (-m, l, -D); each as (node, index with an inner
        variable `name` of `size` where it has a row of values, name, size)."""
        stages = [(side, index, name, size) for _, index, name, size, side, _ in products]
        for plan in self.plans:
            name, size = self.names.fresh("e"), plan.product.shape[plan.width]
            stages.append((plan.w_side, plan.index(self.item, Expr.var(name, size), walked), name, size))
        stages += [(node, index, self.names.fresh("c"), 1) for node, index in self._row_values(walked, walk_name)]
        if any("lid" in self._variables(node, index) for node, index, _, _ in stages):
            raise NotAttention(self.root)
        return stages

    def _block_size(self, width: int, p_sides: int) -> int:
        """Walked rows per block: the most of block_choices whose stage (`width` floats a row) fits their budget
        (by default half the local memory: two groups share a multiprocessor's) and, with two passes, whose P
        sides' arrays (`p_sides` floats a walked row) fit beside it, fewer where fewer hold every walked row. (The
        P sides may take from the other half: the backward's items hold 150-250 registers, so registers, not
        local memory, bound the groups a multiprocessor holds.)"""
        choices, budget = block_choices(self.local_memory)
        fitting = [block for block in choices if 4 * block * width <= budget
                   and 4 * block * (width + p_sides) <= self.local_memory]
        if not fitting:
            raise NotAttention(self.root)
        return min((block for block in fitting if block >= self.trips), default=fitting[0])

    def _declare_stages(self, stages: list, walk: dict[str, Expr]) -> list[tuple[Node, Index, str, int, str]]:
        """A local array per stage (float4 rows where they divide), known to `_stage_of`; the copies to make."""
        copies = []
        for node, index, name, size in stages:
            stage, lanes, index = self.names.fresh("stage"), _lanes(size), _at(index, walk)
            self._scopes[0].append(LocalArray(stage, float32, self.keys_per_block * size // lanes, lanes))
            self._stages.setdefault(id(node), []).append((index, name, size, stage, lanes))
            copies.append((node, index, name, size, stage))
        return copies

    def _hold_item_sides(self, products: list, walk_name: str, walked: Expr) -> None:
        """The item's side of each nested product in registers, before the walk; the product known to `_compute`."""
        for product, index, name, size, side, item_side in products:
            stage = self._stage_of(side, _at(index, {walk_name: walked}))
            registers = [self.value(item_side, _at(index, {name: Expr(h), walk_name: walked}), ()).operand
                         for h in range(size)]
            key = (id(product), _keys(_at(_reduced(product, index), {walk_name: walked})))
            self._nested[key] = (registers, stage[0], stage[1])  # type: ignore[index]

    def _walk_block(self, accs: list[list[Reg]], walked: Expr, exact: Expr) -> None:
        """The loop over the block's walked rows adding each outer product's terms to its accumulators; with two
        passes (`_p_stages`) the P sides are computed by a loop of their own first (`_store_p_sides`) and read
        back here."""
        if self._p_stages:
            self._store_p_sides(walked)
        self._open_loop(self._walk_name, self.keys_per_block)
        self._stage_reads.clear()
        row = Expr.var(self._walk_name, self.keys_per_block) * self.rows_per_group + self.lid
        for plan, accumulators, stage in zip(self.plans, accs, self._p_stages or [None] * len(self.plans)):
            p_side = None
            if stage is not None:
                p_side = self._line(lambda out, stage=stage: LocalLoad(out, stage, row))
            for e, acc in enumerate(accumulators):
                index = plan.index(self.item, e, walked)
                a, b = ((p_side if p_side is not None and side is plan.p_side else self.value(side, index, ()).operand)
                        for side in plan.product.src[0].src)
                self._scopes[-1].append(MultiplyAdd(acc, a, b))
        walk = self._close_loop()
        if exact.hi >= self.trips:  # the last block hangs over the end: its rows past it add nothing
            walk = [If(((exact, "lt", self.trips),), tuple(walk))]
        self._scopes[-1].append(Loop(self._walk_name, self.keys_per_block, tuple(walk)))

    def _store_p_sides(self, walked: Expr) -> None:
        """The first of two passes: a loop over the block's walked rows storing each plan's P side (P, dS) into
        the item's column of its `_p_stages` array. The staged rows the nested products read (q and dO, or k and
        v) then live in registers only while those products run, not on until the outer products use them:
        the registers an item holds are its rows and accumulators (see walk_passes)."""
        self._open_loop(self._walk_name, self.keys_per_block)
        depth = len(self._scopes) - 1
        self._stage_reads.clear()
        row = Expr.var(self._walk_name, self.keys_per_block) * self.rows_per_group + self.lid
        for plan, stage in zip(self.plans, self._p_stages):
            value = self.value(plan.p_side, plan.index(self.item, 0, walked), ())
            self._scopes[-1].append(LocalStore(stage, row, value.operand))
        self._scopes[-2].append(Loop(self._walk_name, self.keys_per_block, tuple(self._close_loop())))
        for key in [key for key, value in self._values.items() if value.depth >= depth]:
            del self._values[key]  # registers of this loop's body: the second pass is another loop

    def _nested_products(self, walked: Expr, walk_name: str) -> list[tuple[Node, Index, str, int, Node, Node]]:
        """The products over the head dimension that P's recomputation reads at the item's row and the walked one,
        each as (product, its operands' index with the head counter `name` of `size`, name, size, the operand
        read at the walked row alone, the operand read at the item's row alone)."""
        found, seen = [], set()
        for plan in self.plans:
            for node, index in reads(plan.p_side, plan.index(self.item, 0, walked), self._is_materialized):
                key = (id(node), _keys(index))
                if node.op not in REDUCE_OPS or not self._nests(node, index, ()) or key in seen:
                    continue
                seen.add(key)
                if node.op is not Op.SUM or len(node.arg) != 1 or node.src[0].op is not Op.MUL:
                    raise NotAttention(node)
                size, name = node.src[0].shape[node.arg[0]], self.names.fresh("h")
                factors = tuple(Expr.var(name, size) if a == node.arg[0] else e for a, e in enumerate(index))
                item_side, walked_side = self._split(node.src[0], factors, walk_name)
                found.append((node, factors, name, size, walked_side, item_side))
        return found

    def _row_values(self, walked: Expr, walk_name: str) -> list[tuple[Node, Index]]:
        """The float values P's recomputation and dS read at the walked row alone (-m, l, -D): computed once per
        group into the stage rather than by every item, each where the walk first reads it."""
        found, seen = [], set()
        stack = [(plan.p_side, plan.index(self.item, 0, walked)) for plan in self.plans]
        while stack:
            node, index = stack.pop()
            key = (id(node), _keys(index))
            if key in seen or node.op is Op.CONST:
                continue
            seen.add(key)
            if node.op in MOVEMENT_OPS and not self._is_materialized(node):
                inner, condition = source_index(node, index)
                if inner is not None and condition is None:
                    stack.append((node.src[0], inner))
                continue
            read = self._variables(node, index)
            if node.dtype.is_float and walk_name in read and "lid" not in read:
                found.append((node, index))
            elif node.op in ELEMENTWISE_OPS and not self._is_materialized(node):
                stack += [(source, index) for source in node.src]
        return found

    def _stage_of(self, node: Node, index: Index) -> Optional[tuple[str, int, int, Expr]]:
        """(stage, lanes, size, the inner axis' value) holding `node` at `index`, None if no stage does."""
        for template, name, size, stage, lanes in self._stages.get(id(node), ()):
            axis = next((a for a, e in enumerate(template) if name in e.variables()), None)
            column = Expr(0) if axis is None else index[axis]
            if _keys(_at(template, {name: column})) == _keys(index):
                return stage, lanes, size, column
        return None

    def _staged(self, stage: str, lanes: int, size: int, column: int) -> Operand:
        """Column `column` of the walked row's stage: one vector read per `lanes` columns, shared by every use."""
        key = (stage, column // lanes)
        if key not in self._stage_reads:
            register = self._stage_reads[key] = Reg(self.names.fresh("s"), float32, lanes)
            row = Expr.var(self._walk_name, self.keys_per_block)
            self._scopes[-1].append(LocalLoad(register, stage, row * (size // lanes) + column // lanes))
        return _lane(self._stage_reads[key], column % lanes)

    def _lower(self, node: Node, index: Index, guard: tuple) -> Step:
        """A staged value (an outer product's other operand, a walked row's value) from the stage at its column."""
        staged = self._stage_of(node, index) if id(node) in self._stages and not guard else None
        if staged is not None and staged[3].lo == staged[3].hi:
            stage, lanes, size, column = staged
            return _Value(self._staged(stage, lanes, size, column.lo), len(self._scopes) - 1)
        return (yield from super()._lower(node, index, guard))

    def _compute(self, node: Node, index: Index, guard: tuple) -> Step:
        """A nested product: the item's registers times the walked row's stage, LANES accumulators summed."""
        nested = self._nested.get((id(node), _keys(index))) if not guard else None
        if nested is None:
            return (yield from super()._compute(node, index, guard))
        registers, stage, lanes = nested
        accs = [Reg(self.names.fresh("acc"), float32) for _ in range(lanes)]
        self._scopes[-1].extend(Define(acc, Const(0.0, float32)) for acc in accs)
        for h, register in enumerate(registers):
            staged = self._staged(stage, lanes, len(registers), h)
            self._scopes[-1].append(MultiplyAdd(accs[h % lanes], register, staged))
        total: Operand = accs[0]
        for acc in accs[1:]:
            total = self._line(lambda out, a=total, b=acc: Alu(out, Op.ADD, (a, b)))
        value = _Value(total, len(self._scopes) - 1)
        return self._rounded(value, node.dtype) if node.dtype.is_narrow_float else value


def _keys(index: Index) -> tuple:
    return tuple(e.key for e in index)


def _reduced(product: Node, factors: Index) -> Index:
    """The product's own index from its operands' (the head counter back to 0)."""
    return tuple(Expr(0) if a == product.arg[0] else e for a, e in enumerate(factors))


def _distinct(stages: list) -> list:
    """The stages, each node at each index once (whatever its inner variable is called)."""
    found, seen = [], set()
    for node, index, name, size in stages:
        key = _stage_key(node, index, name, size)
        if key not in seen:
            seen.add(key)
            found.append((node, index, name, size))
    return found


def _stage_key(node: Node, index: Index, name: str, size: int) -> tuple:
    """What a stage holds: `node` at `index` whatever its inner variable `name` is called, seen through the
    broadcasts and permutes above it (dV's dO, laid out for its product by rewrite._width_last, is the dP nest's)."""
    while node.op in (Op.EXPAND, Op.PERMUTE):
        node, index = node.src[0], source_index(node, index)[0]
    return id(node), _keys(_at(index, {name: Expr.var("inner", size)}))


def _position(plan: GradientProduct, item: Index, e: int) -> Expr:
    return linear(plan.index(item, e, Expr(0)), plan.product.shape)


def _scores(plan: GradientProduct) -> Node:
    return softmax_of(plan.probabilities).scores  # type: ignore[union-attr]


def _probability_index(plan: GradientProduct, item: Index, walked: Expr, materialized) -> Optional[Index]:
    """Where the plan's P side reads P at the item's first output."""
    for node, index in reads(plan.p_side, plan.index(item, 0, walked), lambda n: n is plan.probabilities
                              or materialized(n)):
        if node is plan.probabilities:
            return index
    return None


def walk_passes() -> int:
    """How a block of walked rows is walked (ZYX_ATTENTION_GRAD_PASSES, default 1): 1, once, each outer
    product's P side (P, dS) computed where its terms are added, the staged rows the nested products read kept in
    registers for the outer products that read them again (in the dK-dV kernel q and dO: 128 floats besides k, v
    and the 128 accumulators, past the 255 registers an NVIDIA item has); 2, a first loop storing the P sides
    into local memory and a second adding the terms, reading the staged rows again (bench/attention.py --backward),
    where an outer product reads a staged row that a nested product reads too (not in a kernel of dV alone)."""
    setting = os.environ.get("ZYX_ATTENTION_GRAD_PASSES", "1")
    if setting not in ("1", "2"):
        raise ValueError(f"ZYX_ATTENTION_GRAD_PASSES={setting!r}: expected 1 or 2")
    return int(setting)


def lower_staged_attention_gradient(plan: GradientProduct, siblings: Sequence[GradientProduct],
                                    materialized: dict[int, Node], produced: set[int], local_memory: int,
                                    max_group_size: int, skips: bool = True, stored_apart: frozenset = frozenset(),
                                    param_limit: int = PARAM_LIMIT) -> Optional[LoweredKernel]:
    """The staged kernel storing `plan`'s product and its siblings' (see the module), or None where it does not
    apply (then attention_grad.py's kernel does). Without `skips` every block is computed (WGSL)."""
    try:
        return StagedGradientLowering(plan, siblings, materialized, produced, local_memory, max_group_size, skips,
                                      stored_apart, param_limit).lower()
    except NotAttention:
        return None
