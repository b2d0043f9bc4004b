"""Attention forward on GPUs: a work group per block of query rows, keys and values staged in local memory.

attention.py's kernel gives every work item a query row and lets it walk all keys and values in global memory,
so each key is read once per query row (on the H200 ten times slower than the unfused products). Here a work
group of ROWS items owns ROWS consecutive query rows of one batch entry (an item per row). For every block of
`keys` keys the group copies the block's keys and values into local memory (coalesced: consecutive items read
consecutive elements), waits, and each item then
- computes its row's scores against the staged keys (the scores' product over the head dimension: its query
  row held in registers, each staged key read as float4 vectors that the whole group reads at once), the rest
  of X (scale, mask) as lowered from the trace, keeping them in its own column of a local score block;
- takes the block's maximum, rescales its running sum and output accumulators once per block by
  exp(m_old - m_new) (online softmax), and adds exp(x - m_new) times each staged value row;
then the group waits again before the next block overwrites the stage. Keys past the end (the last block)
read the last key and score -inf; rows past the end compute the last row and store nothing.

Blocks of keys that a causal mask hides from all the group's rows are skipped: where X is where(a < b, -inf, ...)
with a read at the query row alone and b at the key alone (rows < cols: scaled_dot_product_attention's is_causal)
or the converse, the group takes a's largest value and b's smallest (the rows' once, the keys' per block), and
computes the block only where that is not a < b (every item reaches the same answer, so the branch may hold the
barriers; the mask is data, an arange compared, so the kernel cannot know the diagonal before it runs). Such a
block's scores would all be -inf, which changes neither the maximum, the sum nor the accumulators: skipping it
gives the same values (except that a NaN or inf among the values of keys that no row of the group sees no longer
reaches those rows, as 0 x NaN does where the block is computed).

Only where X holds the scores' product itself (not a stored one: then the products are kept on GPUs); its operands
must split into a query side that does not depend on the key and a key side, and the value operand, that do not
depend on the query row. In a training step the kernel stores the row statistics too (attention.py). The kernel IR
and Lowering machinery are the ones matmul.py's tiles use; StagedBlocks is what the staged backward
(attention_grad_tiles.py) shares with it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

from ..dtypes import DType, bool_, float32
from ..trace.node import ARANGE, Node
from ..trace.ops import ELEMENTWISE_OPS, MOVEMENT_OPS, Op, REDUCE_OPS
from .attention import FLOAT_LOWEST, AttentionLowering, AttentionPattern, NotAttention
from .kernel_ir import (Accumulate, Alu, Axis, Barrier, Break, Const, Define, If, Lane, LocalArray, LocalLoad,
                        LocalStore, Loop, MultiplyAdd, Operand, Reg, Role, Select, reduce_start, substitute)
from .lower import (PARAM_LIMIT, Index, LoweredKernel, Lowering, Step, _Value, _viewed_constant, linear,
                    source_index, unravel)
from .view_index import reads
from .symbolic import Expr

ROWS = (64, 32)        # query rows (work items) per group: 32 where a batch entry has at most 32 rows, or where 64
MIN_GROUPS = 528       # would make fewer groups than this (4 per multiprocessor of an H200's 132): a GPU idling
ROWS_SETTINGS = ("16", "32", "64", "128", "256")  # what ZYX_ATTENTION_ROWS may set
KEYS = (64, 32, 16)    # keys per staged block: the largest whose stage takes at most half the local memory
KEYS_SETTINGS = ("16", "32", "64", "128")  # what ZYX_ATTENTION_KEYS may set
LANES = 4              # floats per local read of a staged key or value row (where the head dimension allows)


def rows_per_group(queries: int, batch: int, max_group_size: int) -> Optional[int]:
    """The most rows of ROWS that the device's groups may hold, fewer where fewer hold all `queries` or where the
    `batch` entries' queries would fill fewer than MIN_GROUPS groups; ZYX_ATTENTION_ROWS sets it (the forward's and
    the backward's: rows per group against groups per multiprocessor, for measuring), None past max_group_size."""
    setting = os.environ.get("ZYX_ATTENTION_ROWS")
    if setting is not None:
        if setting not in ROWS_SETTINGS:
            raise ValueError(f"ZYX_ATTENTION_ROWS={setting!r}: expected one of {', '.join(ROWS_SETTINGS)}")
        return int(setting) if int(setting) <= max_group_size else None
    fitting = [rows for rows in ROWS if rows <= max_group_size]
    enough = [rows for rows in fitting if batch * -(-queries // rows) >= MIN_GROUPS] or fitting[-1:]
    return next((rows for rows in reversed(enough) if rows >= queries), enough[0] if enough else None)


def block_choices(local_memory: int) -> tuple[tuple[int, ...], int]:
    """(the keys per staged block to choose from, largest first; the bytes of local memory their stage may take):
    KEYS in half the local memory (two groups share a multiprocessor's), or the one ZYX_ATTENTION_KEYS sets
    (forward and backward, for measuring) in all of it."""
    setting = os.environ.get("ZYX_ATTENTION_KEYS")
    if setting is None:
        return KEYS, local_memory // 2
    if setting not in KEYS_SETTINGS:
        raise ValueError(f"ZYX_ATTENTION_KEYS={setting!r}: expected one of {', '.join(KEYS_SETTINGS)}")
    return (int(setting),), local_memory


def keys_per_block(rows: int, head_dim: int, value_dim: int, keys: int, local_memory: int) -> Optional[int]:
    """The most keys of block_choices whose stage fits their budget, fewer where fewer hold all `keys`; None
    where even the fewest do not fit."""
    choices, budget = block_choices(local_memory)
    fitting = [block for block in choices if local_bytes(rows, block, head_dim, value_dim) <= budget]
    return min((block for block in fitting if block >= keys), default=fitting[0] if fitting else None)


def local_bytes(rows: int, keys: int, head_dim: int, value_dim: int) -> int:
    """The stage's float32s: a block of keys, of values, and the group's scores against it."""
    return 4 * keys * (head_dim + value_dim + rows)


@dataclass(frozen=True)
class BlockTest:
    """A block of keys tested against a causal mask (StagedBlocks._block_test): the bool register saying whether
    its scores are all -inf (`masked`), and whether such a block means every later block's are too (`final`: the
    walk may stop there)."""

    masked: Reg
    final: bool


class StagedBlocks(Lowering):
    """What staged kernels share (this module's forward, attention_grad_tiles.py's backward): a work group of
    `rows_per_group` items (`lid`) walking blocks of `keys_per_block` rows of the other axis, copying operands of a
    block into local memory, and skipping blocks a causal mask hides from every item of the group."""

    groups: int
    rows_per_group: int
    keys_per_block: int
    lid: Expr
    row_name = "lid"  # the variable an index reads the group's rows at (attention_tiled.py's items own several)
    mask_compare: Optional[Node] = None  # the causal mask's a < b, where `_mask` found one

    @property
    def group_items(self) -> int:
        """Items per work group: one per row here."""
        return self.rows_per_group

    def _axes(self) -> tuple[Axis, ...]:
        return (Axis("gid", self.groups, Role.GLOBAL), *self._loops, Axis("lid", self.group_items, Role.LOCAL))

    def _line(self, make, dtype: DType = float32) -> Reg:
        """A statement at the end of the innermost open scope; its register."""
        out = Reg(self.names.fresh("v"), dtype)
        self._scopes[-1].append(make(out))
        return out

    def _mask(self, scores: Node, probability: Index, key_name: str) -> list[tuple[Node, Index, bool, bool]]:
        """Where X is where(a < b, -inf, ...) with a and b each depending on the query row alone or on the key
        alone (a causal mask: rows < cols): [(a, its index, False, over rows), (b, its index, True, over rows)].
        A block of keys where the smallest b exceeds the group's largest a throughout scores -inf throughout, and
        is skipped. Empty where X is not so (then every block is computed). X may be widened from half precision
        first (a half softmax computed in float32 keeps its -inf). The comparison a < b is kept (`mask_compare`)."""
        where = _through_views(scores, probability)
        if where is not None and _widened(where[0]):
            where = _through_views(where[0].src[0], where[1])
        if where is None or where[0].op is not Op.WHERE or self._is_materialized(where[0]):
            return []
        fill = _viewed_constant(where[0].src[1])
        compared = _through_views(where[0].src[0], where[1])
        if fill is None or fill.arg != -math.inf or compared is None or compared[0].op is not Op.CMPLT:
            return []
        (node, index), found = compared, []
        if self._is_materialized(node) or node.src[0].dtype.is_bool or node.src[0].dtype.is_unsigned:
            return []  # (the smallest b is found as -max(-b))
        for side, lowest in zip(node.src, (False, True)):
            read = self._variables(side, index)
            if (self.row_name in read) == (key_name in read):
                return []
            found.append((side, index, lowest, self.row_name in read))
        if found[0][3] == found[1][3]:
            return []
        self.mask_compare = node
        return found

    def _rows_extreme(self, mask: list[tuple[Node, Index, bool, bool]], other: bool = False) -> dict[Node, Reg]:
        """The rows' side of `mask` (_mask) at its extreme over the group's rows, once before the walk: the largest
        a, which the block test takes, or (`other`) the smallest."""
        return {side: self._extreme(side, index, self.row_name, self.rows_per_group, lowest != other)
                for side, index, lowest, over_rows in mask if over_rows}

    def _extremes_compared(self, mask: list[tuple[Node, Index, bool, bool]], rows_extreme: dict[Node, Reg],
                           key_name: str, other: bool = False) -> Reg:
        """a < b between the extremes of the mask's sides, the same in every item of the group: the rows' from
        `rows_extreme`, the keys' over the block; the largest a against the smallest b (true: the block is hidden
        from every row), or (`other`) the smallest a against the largest b (false: hidden from none)."""
        values = tuple(rows_extreme[side] if over_rows else
                       self._extreme(side, index, key_name, self.keys_per_block, lowest != other)
                       for side, index, lowest, over_rows in mask)
        return self._line(lambda out: Alu(out, Op.CMPLT, values), bool_)

    def _block_test(self, mask: list[tuple[Node, Index, bool, bool]], rows_extreme: dict[Node, Reg],
                    key_name: str, block_name: str) -> BlockTest:
        """Whether a block of keys scores -inf throughout (see _mask), the same in every item of the group: the
        keys' side's extreme over the block against the rows' (`rows_extreme`); and whether such a block ends the
        walk (`_ends_walk`)."""
        return BlockTest(self._extremes_compared(mask, rows_extreme, key_name), _ends_walk(mask, block_name))

    def _skip_unneeded(self, body: list, skippable: int, test: Optional[BlockTest]) -> None:
        """The block loop's `body` with its statements from `skippable` on only where the block is needed (`test`;
        None: always): where no later block can be needed either, the loop's break before them."""
        if test is None:
            return
        if test.final:
            body.insert(skippable, If((), (Break(),), test.masked))
            return
        needed = Reg(self.names.fresh("v"), bool_)
        body[skippable:] = [Alu(needed, Op.NOT, (test.masked,)), If((), tuple(body[skippable:]), needed)]

    def _extreme(self, node: Node, index: Index, name: str, trips: int, lowest: bool) -> Reg:
        """The largest value of `node` at `index` (`lowest`: the smallest) as the variable `name` runs over
        `trips`, in a loop in the innermost open scope; where `node` is a view of the arange leaf read at an
        index that never falls as `name` rises (a causal mask's positions), the one element at its end."""
        leaf = _through_views(node, index)
        if (leaf is not None and leaf[0].op is Op.BUFFER and leaf[0].arg == ARANGE
                and all(_never_falls(e, name) for e in leaf[1])):
            return self.value(node, _at(index, {name: Expr(0 if lowest else trips - 1)}), ()).operand
        counter = self.names.fresh("x")
        acc = Reg(self.names.fresh("acc"), node.dtype)
        self._scopes[-1].append(Define(acc, reduce_start(Op.RMAX, node.dtype)))
        self._open_loop(counter, trips)
        value = self.value(node, _at(index, {name: Expr.var(counter, trips)}), ()).operand
        if lowest:
            value = self._line(lambda out: Alu(out, Op.NEG, (value,)), node.dtype)
        self._scopes[-1].append(Accumulate(acc, Op.MAX, value))
        self._scopes[-2].append(Loop(counter, trips, tuple(self._close_loop())))
        return self._line(lambda out: Alu(out, Op.NEG, (acc,)), node.dtype) if lowest else acc

    def _stage(self, node: Node, index: Index, key_name: str, inner_name: str, inner: int, stage: str,
               keys: int = 0, pitch: int = 0, dtype: Optional[DType] = None) -> None:
        """The group's copy of `node` for the block's keys (`keys` of them: by default keys_per_block) into `stage`
        as [key][inner], rows `pitch` elements apart (by default `inner`): `index` reads it at the key counter
        `key_name` and the inner counter `inner_name`; consecutive items copy consecutive elements. `dtype`: the
        stage's, where it is half precision (the values rounded to it), else float32."""
        size, items = (keys or self.keys_per_block) * inner, self.group_items
        for copy in range(-(-size // items)):
            flat = self.lid + copy * items
            value = self.value(node, _at(index, {key_name: flat // inner, inner_name: flat % inner}), ())
            at = (flat // inner) * pitch + flat % inner if pitch and pitch != inner else flat
            store = LocalStore(stage, at, value.operand, element=True, dtype=dtype)
            self._scopes[-1].append(If(((flat, "lt", size),), (store,)) if flat.hi >= size else store)

    def _key_walk(self, product: Node, total_keys: int, keys: int, width: int, head_dim: int) -> tuple:
        """The names and indices of a walk over blocks of `keys` keys that tiled forms share (attention_tiled.py,
        attention_cores.py): (blocks, the block, key, value and head variables' names, the block, the key (clamped
        to the last), P's index, the scores' factors' index, the query and key sides, the weights' index); the
        scores' `product` kept for `_compute`."""
        pattern = self.pattern
        blocks = -(-total_keys // keys)
        block_name, key_name, value_name, head_name = (self.names.fresh(p) for p in ("kb", "j", "e", "h"))
        block = Expr.var(block_name, blocks)
        key = Expr.minimum(block * keys + Expr.var(key_name, keys), total_keys - 1)
        value_e = Expr.var(value_name, width)
        probability = self._probability_index((*self.leading, value_e, key))
        if any(value_name in e.variables() for e in probability):  # a row's outputs must share their scores
            raise NotAttention(pattern.probabilities)
        product_index = self._product_index(product, probability)
        self._product = product
        factor_index = tuple(Expr.var(head_name, head_dim) if a == product.arg[0] else e
                             for a, e in enumerate(product_index))
        query_side, key_side = self._split(product.src[0], factor_index, key_name)
        return (blocks, block_name, key_name, value_name, head_name, block, key, probability, factor_index,
                query_side, key_side, (*self.leading, value_e, key))

    def _split(self, factors: Node, index: Index, key_name: str) -> tuple[Node, Node]:
        """(query side, key side) of the scores' product: the operand that does not depend on the key, and the
        one that does not depend on the query row."""
        for query_side, key_side in (factors.src, factors.src[::-1]):
            if (key_name not in self._variables(query_side, index)
                    and self.row_name not in self._variables(key_side, index)):
                return query_side, key_side
        raise NotAttention(factors)

    def _variables(self, node: Node, index: Index) -> set[str]:
        """The variables of every index and condition `node` reads memory at."""
        names: set[str] = set()
        for _, read in reads(node, index, self._is_materialized, names):
            for expr in read:
                names |= expr.variables()
        return names


class TileScores(Lowering):
    """The scores' product read from the registers a tile of the kernel computed them in (the tiled and the
    tensor-core forwards): `_tile_scores` holds each score's accumulator by its index in the product, lowered at
    `_tile_depth`; a score the tile did not compute (or a guarded one) is no attention this kernel takes."""

    _product: Optional[Node]
    _tile_scores: dict[tuple, Reg]
    _tile_depth: int

    def _compute(self, node: Node, index: Index, guard: tuple) -> Step:
        if node is not self._product:
            return (yield from Lowering._compute(self, node, index, guard))
        acc = self._tile_scores.get(tuple(e.key for e in index))
        if guard or acc is None:
            raise NotAttention(node)
        score = _Value(acc, self._tile_depth)
        return self._rounded(score, node.dtype) if node.dtype.is_narrow_float else score


class StagedAttentionLowering(StagedBlocks, AttentionLowering):
    """A work group per block of query rows of one batch entry, an item per row; see the module's docstring."""

    def __init__(self, root: Node, pattern: AttentionPattern, materialized: dict[int, Node], produced: set[int],
                 local_memory: int, max_group_size: int, skips: bool = True, stored_apart: frozenset = frozenset(),
                 param_limit: int = PARAM_LIMIT):
        super().__init__(root, pattern, materialized, produced, stored_apart, param_limit)
        product = pattern.product
        if len(product.shape) < 3:
            raise NotAttention(product)
        self.local_memory, self.skips = local_memory, skips
        self.queries, self.width = product.shape[-3], product.shape[-2]
        batch = product.shape[:-3]
        self.rows_per_group = rows_per_group(self.queries, math.prod(batch), max_group_size) or 0
        self.keys_per_block = 0
        if not self.rows_per_group:
            raise NotAttention(product)
        self.query_blocks = -(-self.queries // self.rows_per_group)
        self.groups = math.prod(batch) * self.query_blocks
        self.lid = Expr.var("lid", self.rows_per_group)
        group = Expr.var("gid", self.groups)
        exact_row = (group % self.query_blocks) * self.rows_per_group + self.lid
        self.leading = (*unravel(group // self.query_blocks, batch), Expr.minimum(exact_row, self.queries - 1))
        row_guard = ((exact_row, "lt", self.queries),) if exact_row.hi >= self.queries else ()
        self.positions = [linear((*self.leading, Expr(e), Expr(0)), product.shape) for e in range(self.width)]
        self.elements = [unravel(position, self.space) for position in self.positions]
        self.guards = [row_guard] * self.width

    def _lower_outputs(self) -> None:
        pattern, rows = self.pattern, self.rows_per_group
        product = _scores_product(pattern, self._is_materialized)
        head_dim = product.src[0].shape[product.arg[0]]
        total_keys = pattern.product.src[0].shape[-1]
        keys = self.keys_per_block = keys_per_block(rows, head_dim, self.width, total_keys, self.local_memory) or 0
        if not keys:
            raise NotAttention(product)
        blocks = -(-total_keys // keys)
        block_name, key_name, value_name = (self.names.fresh(prefix) for prefix in ("kb", "j", "e"))
        exact_key = Expr.var(block_name, blocks) * keys + Expr.var(key_name, keys)
        value_e = Expr.var(value_name, self.width)
        key = Expr.minimum(exact_key, total_keys - 1)
        probability = self._probability_index((*self.leading, value_e, key))
        if any(value_name in e.variables() for e in probability):  # a row's outputs must share their scores
            raise NotAttention(pattern.probabilities)
        product_index = self._product_index(product, probability)
        self._product, self._product_reads, self._key_name = product, product_index, key_name
        head_name = self.names.fresh("h")
        factor_index = tuple(Expr.var(head_name, head_dim) if a == product.arg[0] else e
                             for a, e in enumerate(product_index))
        query_side, key_side = self._split(product.src[0], factor_index, key_name)
        weights = (*self.leading, value_e, key)
        if "lid" in self._variables(pattern.w_side, weights):
            raise NotAttention(pattern.w_side)
        self._query = [self.value(query_side, _at(factor_index, {head_name: Expr(h)}), ()).operand
                       for h in range(head_dim)]
        names = [self.names.fresh(prefix) for prefix in ("k_stage", "v_stage", "scores")]
        self._key_stage, value_stage, score_stage = names
        self._head_lanes, value_lanes = _lanes(head_dim), _lanes(self.width)
        maximum, total = Reg(self.names.fresh("m"), float32), Reg(self.names.fresh("l"), float32)
        accs = [Reg(self.names.fresh("acc"), float32) for _ in range(self.width)]
        self._scopes[0] += [LocalArray(self._key_stage, float32, keys * head_dim // self._head_lanes, self._head_lanes),
                            LocalArray(value_stage, float32, keys * self.width // value_lanes, value_lanes),
                            LocalArray(score_stage, float32, keys * rows),
                            Define(maximum, Const(FLOAT_LOWEST, float32)), Define(total, Const(0.0, float32)),
                            *(Define(acc, Const(0.0, float32)) for acc in accs)]
        mask = self._mask(pattern.scores, probability, key_name) if self.skips else []
        rows_extreme = self._rows_extreme(mask)  # once, before the blocks
        self._open_loop(block_name, blocks)
        block_test = self._block_test(mask, rows_extreme, key_name, block_name) if mask else None
        skippable = len(self._scopes[-1])
        self._stage(key_side, factor_index, key_name, head_name, head_dim, self._key_stage)
        self._stage(pattern.w_side, weights, key_name, value_name, self.width, value_stage)
        self._scopes[-1].append(Barrier())
        block_max = self._score(probability, exact_key, total_keys, score_stage)
        lowered = self._rescale(maximum, block_max, [total, *accs])
        self._scopes[-1].append(self._weigh(score_stage, value_stage, value_lanes, lowered, total, accs))
        self._scopes[-1].append(Barrier())  # every item is done with the stage before the next block overwrites it
        body = self._close_loop()
        self._skip_unneeded(body, skippable, block_test)
        self._scopes[0].append(Loop(block_name, blocks, tuple(body)))
        self._store_statistics(probability, maximum, total)
        for element, acc in enumerate(accs):
            out = Reg(self.names.fresh("v"), float32)
            self._scopes[0].append(Alu(out, Op.DIV, (acc, total)))
            self._store_output(out, element)

    def _score(self, probability: Index, exact_key: Expr, total_keys: int, score_stage: str) -> Reg:
        """The loop computing the item's scores X against the staged keys into its column of `score_stage` (-inf
        past the last key); their maximum."""
        block_max = Reg(self.names.fresh("mb"), float32)
        self._scopes[-1].append(Define(block_max, Const(FLOAT_LOWEST, float32)))
        self._open_loop(self._key_name, self.keys_per_block)
        score = self.value(self.pattern.scores, probability, ()).operand
        if exact_key.hi >= total_keys:  # the last block hangs over the end
            score = self._line(lambda out: Select(out, ((exact_key, "lt", total_keys),), score,
                                                  Const(-math.inf, float32)))
        key = Expr.var(self._key_name, self.keys_per_block)
        self._scopes[-1] += [LocalStore(score_stage, key * self.rows_per_group + self.lid, score),
                             Accumulate(block_max, Op.MAX, score)]
        self._scopes[-2].append(Loop(self._key_name, self.keys_per_block, tuple(self._close_loop())))
        return block_max

    def _rescale(self, maximum: Reg, block_max: Reg, sums: list[Reg]) -> Reg:
        """Raise the running maximum to the block's, rescaling the running `sums` by exp(m_old - m_new); -m_new."""
        new_maximum = self._line(lambda out: Alu(out, Op.MAX, (maximum, block_max)))
        lowered = self._line(lambda out: Alu(out, Op.NEG, (new_maximum,)))
        shift = self._line(lambda out: Alu(out, Op.ADD, (maximum, lowered)))
        rescale = self._line(lambda out: Alu(out, Op.EXP, (shift,)))
        self._scopes[-1] += [*(Accumulate(running, Op.MUL, rescale) for running in sums),
                             Accumulate(maximum, Op.MAX, block_max)]
        return lowered

    def _weigh(self, score_stage: str, value_stage: str, lanes: int, lowered: Reg, total: Reg,
               accs: list[Reg]) -> Loop:
        """The loop over the staged keys adding exp(x - m) to the running sum and exp(x - m) times the key's
        value row to the accumulators (`lowered` is -m)."""
        name = self.names.fresh("j")
        key = Expr.var(name, self.keys_per_block)
        score = Reg(self.names.fresh("v"), float32)
        body: list = [LocalLoad(score, score_stage, key * self.rows_per_group + self.lid)]
        exponential, weight = self._exponential(score, lowered, body)
        body.append(Accumulate(total, Op.ADD, exponential))
        for start in range(0, self.width, lanes):
            row = Reg(self.names.fresh("w"), float32, lanes)
            body.append(LocalLoad(row, value_stage, key * (self.width // lanes) + start // lanes))
            body += [MultiplyAdd(accs[start + lane], weight, _lane(row, lane)) for lane in range(lanes)]
        return Loop(name, self.keys_per_block, tuple(body))

    def _product_index(self, product: Node, probability: Index) -> Index:
        """Where X reads the scores' product (at one index only)."""
        found = {tuple(e.key for e in index): index for node, index in
                 reads(self.pattern.scores, probability, self._is_materialized) if node is product}
        if len(found) != 1:
            raise NotAttention(product)
        return next(iter(found.values()))

    def _compute(self, node: Node, index: Index, guard: tuple) -> Step:
        """The scores' product: the item's query row times the staged key, as LANES-wide local reads into one
        accumulator per lane (independent chains of multiply-adds), summed at the end. Other reductions (a
        projection of q or k) are read from memory, as any kernel reads them (the per-row kernel would nest them)."""
        if node is not self._product:
            return (yield from Lowering._compute(self, node, index, guard))
        if guard or tuple(e.key for e in index) != tuple(e.key for e in self._product_reads):
            raise NotAttention(node)
        depth = len(self._scopes) - 1
        lanes, head_dim = self._head_lanes, len(self._query)
        accs = [Reg(self.names.fresh("acc"), float32) for _ in range(lanes)]
        lines: list = [Define(acc, Const(0.0, float32)) for acc in accs]
        key = Expr.var(self._key_name, self.keys_per_block)
        for start in range(0, head_dim, lanes):
            row = Reg(self.names.fresh("k"), float32, lanes)
            lines.append(LocalLoad(row, self._key_stage, key * (head_dim // lanes) + start // lanes))
            lines += [MultiplyAdd(acc, self._query[start + lane], _lane(row, lane)) for lane, acc in enumerate(accs)]
        total: Operand = accs[0]
        for acc in accs[1:]:
            out = Reg(self.names.fresh("v"), float32)
            lines.append(Alu(out, Op.ADD, (total, acc)))
            total = out
        self._scopes[depth] += lines
        return self._rounded(_Value(total, depth), node.dtype) if node.dtype.is_narrow_float else _Value(total, depth)


def _widened(node: Node) -> bool:
    """Whether `node` casts a float to a wider float (every value, -inf too, kept as it is)."""
    return (node.op is Op.CAST and node.dtype.is_float and node.src[0].dtype.is_float
            and node.src[0].dtype.itemsize < node.dtype.itemsize)


def _through_views(node: Node, index: Index) -> Optional[tuple[Node, Index]]:
    """The first node under `node`'s views and where it is read, None where a view pads."""
    while node.op in MOVEMENT_OPS:
        inner, condition = source_index(node, index)
        if inner is None or condition is not None:
            return None
        node, index = node.src[0], inner
    return node, index


def _never_falls(expr: Expr, name: str) -> bool:
    """Whether `expr` never decreases as the variable `name` rises (the others fixed)."""
    return _direction(expr, name) in (0, 1)


def _direction(expr: Expr, name: str) -> Optional[int]:
    """How `expr` moves as the variable `name` rises (the others fixed): 1 it never falls, -1 it never rises, 0 it
    does not depend on `name`; None where that is not known (a modulo of it, or terms moving each way). A floor
    division, a minimum or a clamp moves as its expression."""
    moves = 0
    for atom, factor in expr.terms.items():
        inner = atom.expr
        if atom.kind == "var" or inner is None or name not in inner.variables():
            term = int(atom.kind == "var" and atom.name == name)
        elif atom.kind == "mod":
            return None
        else:
            found = _direction(inner, name)
            if found is None:
                return None
            term = found
        term *= 1 if factor > 0 else -1
        if term and moves and term != moves:
            return None
        moves = moves or term
    return moves


def _arange_moves(node: Node, index: Index, name: str) -> Optional[int]:
    """How the values of `node` read at `index` move as the variable `name` rises (`_direction`), where `node` is a
    view of the arange leaf (whose values are their positions); else None."""
    leaf = _through_views(node, index)
    if leaf is None or leaf[0].op is not Op.BUFFER or leaf[0].arg != ARANGE:
        return None
    directions = {_direction(e, name) for e in leaf[1]} - {0}
    return None if None in directions or len(directions) > 1 else (directions.pop() if directions else 0)


def _walks_stop() -> bool:
    """Whether causal walks may stop at a hidden block (and walk backwards to): not with ZYX_ATTENTION_BREAK=0."""
    return os.environ.get("ZYX_ATTENTION_BREAK") != "0"


def walks_back(mask: list[tuple[Node, Index, bool, bool]], block_name: str) -> bool:
    """Whether a walk over blocks should take them last first: where the side of `mask` read at the walked row is
    the compared a (a < b hides), an arange rising with the block `block_name` (the keys' gradient walking query
    rows under a causal mask: the first blocks hidden, then none), so that walked backwards the hidden blocks come
    last and the walk stops at the first of them (`_ends_walk`). Not with ZYX_ATTENTION_BREAK=0."""
    return _walks_stop() and any(not lowest and _arange_moves(side, index, block_name) == 1
               for side, index, lowest, over_rows in mask if not over_rows)


def _ends_walk(mask: list[tuple[Node, Index, bool, bool]], block_name: str) -> bool:
    """Whether a block that `mask` hides means every later block is hidden too: the side read at the walked row is
    the compared b (a < b hides), an arange never falling as the block `block_name` rises, so each block's smallest
    b is at least the last one's (a causal mask walked over keys: the forward, the queries' gradient); or the
    compared a, an arange never rising (query rows walked last first: `walks_back`). ZYX_ATTENTION_BREAK=0: never
    (each block tested)."""
    return _walks_stop() and any(_arange_moves(side, index, block_name) in ((0, 1) if lowest else (0, -1))
               for side, index, lowest, over_rows in mask if not over_rows)


def _at(index: Index, values: dict[str, Expr]) -> Index:
    return tuple(substitute(e, values) for e in index)


def _lanes(size: int) -> int:
    return LANES if size % LANES == 0 else 1


def _lane(register: Reg, lane: int) -> Operand:
    return Lane(register, f"s{lane}") if register.width > 1 else register


def _scores_product(pattern: AttentionPattern, materialized) -> Node:
    """The one reduction X computes (not a stored one): a product over the head dimension."""
    stack, seen, found = [pattern.scores], set(), []
    while stack:
        node = stack.pop()
        if id(node) in seen or materialized(node):
            continue
        seen.add(id(node))
        if node.op in REDUCE_OPS:
            found.append(node)
        elif node.op in ELEMENTWISE_OPS or node.op in MOVEMENT_OPS:
            stack += node.src
    if len(found) != 1 or found[0].op is not Op.SUM or len(found[0].arg) != 1 or found[0].src[0].op is not Op.MUL:
        raise NotAttention(pattern.scores)
    return found[0]


def lower_staged_attention(root: Node, pattern: AttentionPattern, materialized: dict[int, Node], produced: set[int],
                           local_memory: int, max_group_size: int, skips: bool = True,
                           stored_apart: frozenset = frozenset(), param_limit: int = PARAM_LIMIT
                           ) -> Optional[LoweredKernel]:
    """The staged kernel storing `root` (see the module), or None where it does not apply. Without `skips` it
    computes every block of keys (WGSL's uniformity analysis refuses barriers under a branch on loaded values)."""
    try:
        return StagedAttentionLowering(root, pattern, materialized, produced, local_memory, max_group_size, skips,
                                       stored_apart, param_limit).lower()
    except NotAttention:
        return None
