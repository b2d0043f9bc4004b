"""Matrix products on GPUs: work groups that stage tiles of both operands in local memory.

A work group of 16 x 16 items computes a 128 x 128 block of outputs, each item an 8 x 8 tile of it (64 x 64 and
4 x 4, or 32 x 32 and 2 x 2, where the sizes do not divide or the big blocks leave too few groups). A tuned
choice may give an item another tile (the group then has (block / per_item)² items), make blocks and tiles `wide`
(twice as long along m as along n) and split the reduced axis across groups (split.py; the heuristics split a long
k where 128-blocks are few, and a shorter one where the blocks leave compute units without a group:
`filling_split`). For every BK slice of the reduced axis the group copies a tile of each operand into local memory
(each element read once per group, neighbouring items reading neighbouring addresses whichever way the operand
lies: operand_layout.py), both as [k][row] so that both tiles are read as float4 vectors along the output axes.
Every item then walks the slice: per step it reads its fragments (a column of its left rows, a row of its right
columns) into registers and does per_item² multiply-adds. An item's rows (and columns) are
groups of four spaced 64 apart, so the 16 items of a half-warp read 16 consecutive vectors of the right tile
and one vector of the left (no bank conflicts).

The lowering stages one slice per trip of a loop (two barriers per slice); the scheduler double-buffers the tiles
(`buffers=2`, transforms/double_buffer.py): while the group computes on one slice, each item holds its share of
the next in registers and writes it to the other buffer, so one barrier per slice suffices and global latency
hides behind the multiply-adds. The operands are rendered like any other value, so casts, views and elementwise
prologues fuse into the tile loads, and the epilogue (bias, activation) into the stores of the per-element
accumulators.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
from dataclasses import dataclass
from typing import Optional

from ..trace.node import Node
from ..trace.ops import Op
from ..dtypes import float32
from .choices import FAMILIES, Choice, Options
from .kernel_ir import (Axis, Barrier, Cond, Const, Define, Lane, LocalArray, LocalLoad, LocalStore, Loop, MultiplyAdd,
                        Operand, Reg, Role, Select)
from .lower import PARAM_LIMIT, Index, Lowering, _Value, linear, unravel
from .operand_layout import runs_along
from .view_index import reads
from .symbolic import Expr
from .tiling import matmul_axes, space_axes

BK = 16            # reduced elements staged per slice
SIDE = 16          # the heuristics' work group is SIDE x SIDE items (tensor_cores.py's: 8 warps)
GROUP = SIDE * SIDE
SIDES = (8, 16, 32)  # sides a tuned work group may have (fewer items than 64 leave warps idle; 1024 is the most)
MAX_ACCUMULATORS = 64  # outputs per item (8 x 8): more would spill registers
BLOCKS = ((128, 8), (64, 4), (32, 2))  # (outputs per group along n and m, per item): 16 x 16 items, big blocks first
MIN_GROUPS = 96    # fewer groups than this leave a large GPU idle (an H100 has 132 SMs): try smaller blocks
FULL = 0.8         # a bigger block is chosen only if at least this share of its outputs exist
MIN_USED = 0.5     # the smallest block must hold at least this share of outputs that exist (else no local tiles)
FEW_GROUPS = 16    # fewer groups than this, each walking at least LONG_K reduced elements, leave the GPU idle:
LONG_K = 1024      # a work group per output does better (long products with few outputs are split: rewrite.py)
SPLIT_MIN_BLOCK = 64  # a split of k is of blocks this big or bigger (smaller ones leave groups enough)
PAD = 4            # floats after each row of the left tile: its transposing stores hit 2 banks, not 16
SPLIT_GROUPS = 512  # a product whose k may be split (split.split_options) is, into 128-blocks, until it has this
# many groups (about four per SM of an H200: GPT-2's weight gradients over 16384 tokens, 144 groups of 128 x 128,
# ran as two waves on its 132 SMs, the second nearly empty; 768 x 768 took 64-blocks, 4x4 per item) ...
LONG_CHUNK = 2048   # ... keeping chunks at least this long (their partial sums then cost little next to them)
FILL_GROUPS_PER_UNIT = 0  # where set (ZYX_FILL_GROUPS_PER_UNIT), a product whose block leaves some of a GPU's
# compute units without a group has its k split (where split.split_options allows) until it has this many groups a
# unit (W4's 784 x 512 weight gradient, k = 512: 104 groups of 64 x 64 on the H200's 132 SMs; 32 x 32 blocks of
# 2 x 2 per item took 47.5 µs where 64 x 64 took 29.4 on an H100). Off (0) by default: over two interleaved rounds on
# the H200 W4's step read 0.31 / 0.31 ms (SGD) unsplit, 0.32 / 0.31 split 2, 0.34 / 0.29 split 4, within the run's
# noise, while the partials raised W6's peak from 0.94 to 1.65 x its minimum (bench/GPU.md)


@dataclass
class TilePlan:
    """Where the product sits in the kernel: its node, and the kernel axes holding its n and m axes."""

    product: Node
    n_space_axis: int
    m_space_axis: int
    block: int = 128   # outputs per group along n and m
    per_item: int = 8  # outputs per item along n and m
    space: Optional[tuple[int, ...]] = None  # the product's shape where the kernel stores it reshaped, else None
    bk: int = BK       # reduced elements staged per slice
    buffers: int = 2   # local buffers per tile: 2 double-buffers them (transforms/double_buffer.py)
    split: int = 1     # groups sharing an output block, each over a chunk of the reduced axis (split.py)
    wide: int = 1      # blocks and tiles are this many times longer along m than along n

    @property
    def choice(self) -> Choice:
        return Choice.of("local_tiles", block=self.block, per_item=self.per_item, bk=self.bk, buffers=self.buffers,
                         split=self.split, wide=self.wide)

    @property
    def block_n(self) -> int:
        """Outputs per group along n."""
        return self.block

    @property
    def block_m(self) -> int:
        """Outputs per group along m."""
        return self.block * self.wide

    @property
    def side(self) -> int:
        """Items along each side of the work group."""
        return self.block // self.per_item

    @property
    def group(self) -> int:
        """Items in the work group."""
        return self.side ** 2

    def extent(self, along_m: bool) -> int:
        """Outputs per group along n (m)."""
        return self.block_m if along_m else self.block_n

    def per(self, along_m: bool) -> int:
        """Outputs per item along n (m)."""
        return self.per_item * (self.wide if along_m else 1)

    def width(self, along_m: bool) -> int:
        """Floats per vector read from the left (right) tile."""
        return min(self.per(along_m), 4)

    def offset(self, item: Expr, t: int, along_m: bool) -> Expr:
        """Where, along n (m), the t-th row (column) of the item at `item` along n (m) sits in the block."""
        width = self.width(along_m)
        return (t // width) * (self.side * width) + item * width + t % width


def local_bytes(block: int, bk: int = BK, buffers: int = 2, wide: int = 1) -> int:
    """Local memory a group of `block` x `block * wide` tiles takes: two operands, `buffers` slices of `bk` each,
    float32."""
    return buffers * bk * (block + PAD + block * wide + PAD) * 4


def plan_local_tiles(root: Node, product: Optional[Node], local_memory: int = 1 << 16,
                     choice: Optional[Choice] = None, splits: tuple[int, ...] = (1,),
                     compute_units: int = 0) -> Optional[TilePlan]:
    """A plan when the kernel's product (`hosted_matmul`) lies along two of its axes, is float32 and multiplies
    without a cast in between: `choice`'s parameters, else 128-blocks at least FULL full with k split in the least
    of `splits` (what the product's k allows: split.split_options) making SPLIT_GROUPS groups (else the most),
    where more than one of them leaves chunks of LONG_CHUNK, else the biggest block that leaves
    MIN_GROUPS groups at least FULL full (blocks hang over the ends of n and m), else the smallest block if it is
    at least MIN_USED full (an axis much shorter than 32 gets no local tiles, nor a long product with very few
    groups); a block leaving fewer groups than the device's `compute_units` then gets k split as `filling_split`
    says. Only blocks whose tiles fit the device's `local_memory` bytes are considered."""
    if product is None or product.dtype.name != "float32" or product.src[0].op is not Op.MUL:
        return None
    placed = product_axes(root, product)
    if placed is None:
        return None
    space_n, space_m, space = placed
    if choice is not None:
        return TilePlan(product, space_n, space_m, choice["block"], choice["per_item"], space, choice["bk"],
                        choice["buffers"], choice["split"], choice["wide"])
    n_axis, m_axis = matmul_axes(product)  # type: ignore[misc]
    n, m = product.shape[n_axis], product.shape[m_axis]
    batch = product.numel // (n * m)

    def groups(block: int) -> int:
        return batch * -(-n // block) * -(-m // block)

    def used(block: int) -> float:  # the share of a block's outputs that exist
        return n * m * batch / (groups(block) * block * block)

    blocks = [(b, p) for b, p in BLOCKS if local_bytes(b) <= local_memory]
    k = product.src[0].shape[product.arg[0]]
    long = [s for s in splits if s == 1 or k >= s * LONG_CHUNK]
    if len(long) > 1 and blocks[0] == BLOCKS[0] and used(BLOCKS[0][0]) >= FULL:
        split = next((s for s in long if groups(BLOCKS[0][0]) * s >= SPLIT_GROUPS), long[-1])
        return TilePlan(product, space_n, space_m, *BLOCKS[0], space, split=split)
    chosen = next(((b, p) for b, p in blocks if groups(b) >= MIN_GROUPS and used(b) >= FULL), None)
    chosen = chosen or next(((b, p) for b, p in reversed(blocks) if used(b) >= MIN_USED), None)
    if chosen is None or (groups(chosen[0]) < FEW_GROUPS and k >= LONG_K):
        return None
    block, per_item = chosen
    split = filling_split(groups(block), splits, compute_units) if block >= SPLIT_MIN_BLOCK else 1
    return TilePlan(product, space_n, space_m, block, per_item, space, split=split)


def filling_split(groups: int, splits: tuple[int, ...], compute_units: int) -> int:
    """Chunks of k for a product whose blocks make `groups` work groups, fewer than the device's `compute_units`
    (some would idle): the least of `splits` making FILL_GROUPS_PER_UNIT groups a unit, else the most; 1 (no
    split) where the groups reach every unit, the units are unknown (0) or `splits` holds no split."""
    per_unit = int(os.environ.get("ZYX_FILL_GROUPS_PER_UNIT", FILL_GROUPS_PER_UNIT))
    more = [s for s in splits if s > 1]
    if not more or not per_unit or groups >= compute_units:
        return 1
    return next((s for s in more if groups * s >= per_unit * compute_units), more[-1])


def product_axes(root: Node, product: Node) -> Optional[tuple[int, int, Optional[tuple[int, ...]]]]:
    """(the kernel axis holding the product's n axis, the one holding its m axis, the product's shape where the
    kernel stores it reshaped, else None) where the kernel's outputs are the product's; None where it has no
    outputs, nothing to reduce, or its axes do not map onto the kernel's."""
    axes, space = space_axes(root, product), None
    if axes is None and _reshaped(root, product):  # (a convolution's weight gradient: the weight's shape)
        axes, space = matmul_axes(product), product.shape
    if axes is None or product.src[0].numel == 0:
        return None
    return axes[0], axes[1], space


@functools.lru_cache(maxsize=None)
def local_tile_options(splits: tuple[int, ...], local_memory: int, max_group_size: int) -> Options:
    """The values a search may try for a product: of each parameter those some feasible combination takes
    (`feasible`); of `split`, the given `splits` (split.py: what the product's reduced axis allows). Cached:
    every GPU product asks, and there are few devices and splits."""
    family = {name: values for name, values in FAMILIES["local_tiles"].items() if name != "split"}
    names = sorted(family)
    combinations = [dict(zip(names, values)) for values in itertools.product(*(family[name] for name in names))]
    possible = [c for c in combinations if feasible(Choice.of("local_tiles", split=1, **c), local_memory, max_group_size)]
    return tuple(sorted([(name, tuple(v for v in family[name] if any(c[name] == v for c in possible)))
                         for name in names] + [("split", splits)]))


def feasible(choice: Choice, local_memory: int, max_group_size: int) -> bool:
    """Whether `choice` can be lowered on a device with `local_memory` bytes per group and work groups of at most
    `max_group_size` items: its tiles fit, its work group is square with a side in SIDES, each item stages whole
    elements of every slice, its accumulators fit registers, tiles of 2 x 2 only in blocks of 32 (they read local
    memory for every two multiply-adds: worth it only where bigger tiles leave too few groups), and a split of k
    is of blocks of 64 or 128 (smaller ones leave groups enough)."""
    block, per_item, bk, wide = choice["block"], choice["per_item"], choice["bk"], choice["wide"]
    side = block // per_item
    return (local_bytes(block, bk, choice["buffers"], wide) <= local_memory and block % per_item == 0
            and side in SIDES and side * side <= max_group_size and block * bk % (side * side) == 0
            and per_item * per_item * wide <= MAX_ACCUMULATORS and (per_item > 2 or block == 32)
            and (choice["split"] == 1 or block >= SPLIT_MIN_BLOCK))


def _reshaped(root: Node, product: Node) -> bool:
    """Whether `root` reads `product` only at its own position in element order: the product through reshapes and
    permutes that keep its elements in order (a convolution's weight gradient: the weight's shape), under an
    elementwise epilogue or not (GELU's backward over an MLP's flattened (16384, 3072) input gradient: untiled, one
    output per item, 156 ms of a GPT-2 step on the H200)."""
    index = tuple(Expr.var(f"i{a}", size) for a, size in enumerate(root.shape))
    flat = linear(index, root.shape)
    found = [at for node, at in reads(root, index, lambda node: node is product) if node is product]
    return bool(found) and all(linear(at, product.shape) == flat for at in found)


class LocalTileLowering(Lowering):
    """Lowering whose work items are the items of square groups of outputs, each owning a square tile."""

    def __init__(self, root: Node, materialized: dict[int, Node], produced: set[int], plan: TilePlan,
                 stored_apart: frozenset = frozenset(), param_limit: int = PARAM_LIMIT):
        super().__init__(root, materialized, produced, False, stored_apart, param_limit)
        self.plan, self.kind = plan, "m"
        self.space = plan.space or root.shape
        blocks = {plan.n_space_axis: plan.block_n, plan.m_space_axis: plan.block_m}
        grid = tuple(-(-size // blocks.get(axis, 1)) for axis, size in enumerate(self.space))
        self.groups = math.prod(grid)
        self.lid = Expr.var("lid", plan.group)
        cell = self._block(grid)
        self.corner = tuple(c * blocks[a] if a in blocks else c for a, c in enumerate(cell))
        self.elements, self.guards = [], []  # per element: its index, and the condition that it exists
        for along_n, along_m in self._element_offsets():
            exact, guard = self._placed(along_n, along_m)
            self.guards.append(guard)
            # an element past the end computes (and never stores) a copy of the last one: its reads stay in range
            self.elements.append(tuple(Expr.minimum(exact[a], self.space[a] - 1) if a in exact else c
                                       for a, c in enumerate(self.corner)))
        self.positions = [linear(element, self.space) for element in self.elements]

    def _placed(self, along_n: Expr, along_m: Expr) -> tuple[dict[int, Expr], Cond]:
        """Output (along_n, along_m) of the block: its index along the n and m axes, and the guard that it exists."""
        exact = {self.plan.n_space_axis: self.corner[self.plan.n_space_axis] + along_n,
                 self.plan.m_space_axis: self.corner[self.plan.m_space_axis] + along_m}
        return exact, tuple((e, "lt", self.space[a]) for a, e in sorted(exact.items()) if e.hi >= self.space[a])

    def _block(self, grid: tuple[int, ...]) -> Index:
        """Which block of `grid` the group computes: groups in row-major order of the blocks."""
        return unravel(Expr.var("gid", self.groups), grid)

    def _element_offsets(self) -> list[tuple[Expr, Expr]]:
        """Where, from the block's corner along n and m, each output of this item lies: rows and columns in groups
        of `plan.width` spaced a group's side apart (see `TilePlan.offset`)."""
        plan = self.plan
        return [(plan.offset(self.lid // plan.side, t, False), plan.offset(self.lid % plan.side, u, True))
                for t, u in itertools.product(range(plan.per(False)), range(plan.per(True)))]

    def _axes(self) -> tuple[Axis, ...]:
        return (Axis("gid", self.groups, Role.GLOBAL), *self._loops, Axis("lid", self.plan.group, Role.LOCAL),
                Axis("tile", len(self.elements), Role.UPCAST))

    def _element_read(self, element: int) -> tuple[Index, Cond]:
        """Read unguarded, at its index in the root's shape (the product's may differ: `plan.space`)."""
        index = self.elements[element] if self.plan.space is None else unravel(self.positions[element], self.root.shape)
        return index, ()

    def _reduce(self, node: Node) -> list[_Value]:
        """One loop over the slices of k: the group stages both operands' slice in local memory, waits, each item
        multiplies it into its accumulators, the group waits again (double buffering is a transform:
        transforms/double_buffer.py)."""
        if node is not self.plan.product:
            return super()._reduce(node)
        plan = self.plan
        steps = -(-node.src[0].shape[node.arg[0]] // plan.bk)  # the last slice may hang over the end: zeros
        self._longest_reduction = max(self._longest_reduction, node.src[0].shape[node.arg[0]])
        tiles = (self.names.fresh("tile_a"), self.names.fresh("tile_b"))
        accumulators = [Reg(self.names.fresh("acc"), float32) for _ in self.elements]
        lines = self._scopes[0]
        lines += [LocalArray(name, float32, plan.bk * (plan.extent(along_m) + PAD) // plan.width(along_m),
                             plan.width(along_m)) for name, along_m in zip(tiles, (False, True))]
        lines += [Define(acc, Const(0.0, float32)) for acc in accumulators]
        step = self.names.fresh("k")
        self._open_loop(step, steps)
        stores = self._stage(node, Expr.var(step, steps) * plan.bk, tiles)
        body = self._close_loop() + stores + [Barrier()] + self._multiply(tiles, accumulators) + [Barrier()]
        lines.append(Loop(step, steps, tuple(body)))
        return [_Value(acc, 0) for acc in accumulators]

    def _stage(self, node: Node, k_base: Expr, tiles: tuple[str, str]) -> list:
        """Lower (into the current scope) this item's share of both operands' slice at `k_base`; return the
        statements that store it into the local tiles, both as [k][row] (the left one's rows are n, the right
        one's m). Rows and columns past the ends of n and m read the last ones (their outputs are never stored); a
        slice past the end of k stages zeros."""
        n_axis, m_axis = matmul_axes(node)  # type: ignore[misc]
        corner = unravel(linear(self.corner, self.space), node.shape)
        left, right = node.src[0].src[0], node.src[0].src[1]
        return (self._stage_tile(left, n_axis, False, corner, k_base, tiles[0])
                + self._stage_tile(right, m_axis, True, corner, k_base, tiles[1]))

    def _stage_tile(self, operand: Node, row_axis: int, along_m: bool, corner: Index, k_base: Expr,
                    tile: str) -> list:
        """One operand's share: neighbouring items stage neighbouring elements along the axis its reads run along
        (operand_layout.py; k for a row-major left operand, m for a row-major right one), so a warp's reads are
        coalesced whichever way the operand lies in memory; the local stores then hit distinct banks, or 2 per
        bank with rows padded by PAD."""
        plan, k_axis, bk = self.plan, self.plan.product.arg[0], self.plan.bk
        rows = plan.extent(along_m)
        preferred = (row_axis, k_axis) if along_m else (k_axis, row_axis)
        by_rows = runs_along(operand, preferred, self.materialized) == row_axis
        stores = []
        for copy in range(rows * bk // plan.group):
            flat = self.lid + copy * plan.group
            row, k = (flat % rows, flat // rows) if by_rows else (flat // bk, flat % bk)
            value = self._operand(operand, corner, {row_axis: row, k_axis: k_base + k})
            stores.append(LocalStore(tile, k * (rows + PAD) + row, value, element=True))
        return stores

    def _operand(self, operand: Node, corner: Index, offsets: dict[int, Expr]) -> Operand:
        """One operand element, lowered at the block corner plus `offsets`, each clamped to its axis; zero
        where the reduced index is past its end."""
        k_axis, past_end = self.plan.product.arg[0], ()
        index = []
        for axis, size in enumerate(operand.shape):
            exact = corner[axis] + offsets[axis] if axis in offsets else corner[axis]
            if exact.hi >= size and axis == k_axis:
                past_end = ((exact, "lt", size),)
            index.append(Expr.minimum(exact, size - 1))
        value = self.value(operand, tuple(index), ())
        if not past_end:
            return value.operand
        depth = max(value.depth, self._depth_of((), past_end))
        return self._emit(depth, lambda out: Select(Reg(out, float32), past_end, value.operand,
                                                    Const(0.0, float32))).operand

    def _multiply(self, tiles: tuple[str, str], accumulators: list[Reg]) -> list:
        """The multiply-adds of one staged slice: per kk, fragments of both tiles into vector registers, then the
        outer product of the fragments into the accumulators, their lanes read in place (copied into scalars
        first, NVIDIA's compiler ran the 4000³ product slower on the H200: bench/GPU.md)."""
        plan = self.plan
        counter = self.names.fresh("kk")
        kk = Expr.var(counter, plan.bk)
        body: list = []
        lanes = []
        for tile, item, along_m in ((tiles[0], self.lid // plan.side, False), (tiles[1], self.lid % plan.side, True)):
            width, per = plan.width(along_m), plan.per(along_m)
            row = (plan.extent(along_m) + PAD) // width
            fragments = [Reg(self.names.fresh("f"), float32, width) for _ in range(per // width)]
            body += [LocalLoad(f, tile, kk * row + item + v * plan.side) for v, f in enumerate(fragments)]
            lanes.append([Lane(fragments[t // width], f"s{t % width}") for t in range(per)])
        body += [MultiplyAdd(acc, lanes[0][t], lanes[1][u])
                 for acc, (t, u) in zip(accumulators, itertools.product(range(plan.per(False)), range(plan.per(True))))]
        return [Loop(counter, plan.bk, tuple(body), unroll=True)]
