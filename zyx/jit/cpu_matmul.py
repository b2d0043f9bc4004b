"""Matrix products on CPUs: vector accumulators, operands read as contiguous streams.

A work item computes ROWS x WIDTH outputs (8 x 32: sixteen `float16` accumulators, one AVX-512 register each).
Per step of the reduced axis k it loads WIDTH consecutive values of the right operand (WIDTH / 16 `vload16`s)
and ROWS scalars of the left operand, each broadcast into one fused multiply-add per accumulator vector.

The left operand is read as it lies (a tile hanging over its last row reads that row again, its outputs guarded):
a view of memory in place, and one that computes (a ReLU's gradient, exp(S) of attention) stored first as it is by
a kernel of its own, so it is computed once, not once per tile. The right operand, and a half-precision left one
(converted to float32 once), are copied first into panels ([batch][m / WIDTH][k][WIDTH], [batch][n / ROWS][k][ROWS],
padded with zeros to whole tiles), unless the right one is contiguous along the columns and small (a large one read
in place runs at two thirds of the speed: a new page every row; smaller on AVX2 CPUs, and a search tries both).
So a transposed or strided right operand is still read as one stream. Where the left operand would be read a page
apart along k and the right one would not (a weight gradient of a wide gradient and a narrow activation), the two
are read the other way round. Work items walk down the rows first, so the items after one (on both threads) reuse
its right panel from cache. The epilogue (bias, activation) fuses into the stores: computed on whole accumulators
where it vectorizes (`lower_cpu_matmul`), else on each accumulator's lanes (`acc.s0`..`acc.sf`) handed back as the
outputs' values; tiles that hang over the end of a row or column guard those outputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..trace import node as n
from ..trace.node import Node
from ..trace.ops import MOVEMENT_OPS, Op
from ..dtypes import float32
from .choices import FAMILIES, Choice, Options
from .kernel_ir import (Alu, Axis, Broadcast, Cond, Const, Define, Extract, Gather, Kernel, Load, Loop, MultiplyAdd,
                        Reg, Role, Select, Store, walk)
from .lower import Index, LoweredKernel, Lowering, Step, _Value, linear, source_index, unravel
from .transforms.upcast import upcast
from .transforms.vector import vectorize, vectorize_lanes
from .view_index import contiguous_strides
from .symbolic import Expr
from .tiling import matmul_axes, space_axes

ACCUMULATORS = 16       # float16 registers per work item (AVX-512 has 32)
WIDTHS = (32, 16)       # output columns per work item: the first that divides the column count
LANES = 16              # floats per vector
NARROW_ACCUMULATORS = 4  # the same on CPUs with 8-float vectors (AVX2: 16 registers, a float16 takes two)
NARROW_WIDTHS = (16,)
COPY_OUTPUTS = 64       # outputs per work item of a packed operand's copy (a block of rows, several steps of k)
COPY_STATEMENTS = 16
"""A copy whose one output takes more statements than this, or reads through a guard (a padded input: a
convolution's windows), takes one block an item (copy_tile's `small`): a half-precision expression (each load
converted, each result rounded) 64 times over took PoCL 18 s to compile (char_gpt's first float16 step, PoCL 3.1);
a 3 x 3 convolution's guarded window reads, 0.7-1.2 s where one block an item takes 0.3 s."""
MIN_MACS = 1 << 18
"""Smaller products stay in one kernel (the copies cost more than they save), but for float16 ones: on the plain
path each work item converts its tile's operands from 16 bits (vload_half) at every step of k, which PoCL's
work-item vectorizer took 14 s to compile for a 64 x 80 x 48 product (PoCL 3.1, AVX2; float32 0.2 s), where the
three kernels of a plan (two converting copies) took 0.3 s. A small bfloat16 product's conversions are shifts:
planned, a bf16 attention forward over 37 x 37 blocks compiled in 14.5 s, plain in 6.4 s."""
ROW_BAND_BYTES = 1 << 20
"""The rows of the left operand the items sweep the columns with before moving on (a band of row tiles this
many bytes long): each right panel is read once per band, and the band's rows come from cache. W3 2048³ on PoCL
3.1, AMD EPYC (Zen 3): 1.3x the speed of sweeping every row (16 MiB, read from memory once per column tile)."""
PAGE_FLOATS = 1024  # a left operand this many floats apart along k reads a new page each step (`_read_swapped`)
IN_PLACE_BYTES = 2 << 20  # a right operand this small is read in place if it can be (packing pays above)
NARROW_IN_PLACE_BYTES = 64 << 10
"""The same on CPUs with 8-float vectors. Measured on PoCL 3.1, AMD EPYC (Zen 3: AVX2, 512 KiB of L2 per core):
W4's products read right operands of 1-1.6 MiB in place (a new cache line and a new page every row of the
reduced axis) in 12% more of the step's CPU time than with them packed, copies included."""


@dataclass
class Operand:
    """An operand before its broadcast (`source`, casts applied) and its packed copy: `source` viewed as
    (its other axes..., size / block, k, block) for its output axis `axis`, then materialized (padded with
    zeros to whole blocks)."""

    source: Node
    axis: int
    k_axis: int
    block: int
    packed: Node = field(init=False)

    def __post_init__(self) -> None:
        size = self.source.shape[self.axis]
        padded = n.pad(self.source, [(0, -size % self.block if a == self.axis else 0)
                                     for a in range(len(self.source.shape))])
        shape = padded.shape
        split = n.reshape(padded, shape[:self.axis] + (shape[self.axis] // self.block, self.block)
                          + shape[self.axis + 1:])
        moved = {a: a + (a > self.axis) for a in range(len(shape))}  # axes of `source` in `split`
        others = [moved[a] for a in range(len(shape)) if a not in (self.axis, self.k_axis)]
        self.packed = n.permute(split, others + [self.axis, moved[self.k_axis], self.axis + 1])

    def start(self, index: list[Expr]) -> Expr:
        """Flat index into the packed copy of the block holding `index` (the block's first element)."""
        others = [Expr(0) if self.source.shape[a] == 1 else e for a, e in enumerate(index)
                  if a not in (self.axis, self.k_axis)]
        return linear(tuple(others) + (index[self.axis] // self.block, index[self.k_axis], Expr(0)),
                      self.packed.shape)


@dataclass
class CpuPlan:
    """The product, its axes (n: rows, m: columns, k: reduced), the kernel axes holding n and m, and the
    operands; each work item computes `left.block` x `right.block` outputs."""

    product: Node
    n_axis: int
    m_axis: int
    k_axis: int
    space_n: int
    space_m: int
    left: Operand
    right: Operand
    left_in_place: bool  # the left operand is read as it lies (a tile past the last row reads that row again): a
    left_stored: bool  # view of memory along k, or (`left_stored`) computed and stored as it is by its own kernel
    right_in_place: bool  # the right operand also is small, contiguous along m and in whole tiles

    right_readable: bool  # the right operand could be read in place (contiguous along m, in whole tiles)
    sources: tuple[int, int] = (0, 1)  # which of the product's multiplied operands is the left and the right one

    @property
    def choice(self) -> Choice:
        return Choice.of("cpu_matmul", rows=self.left.block, width=self.right.block,
                         packed=int(not self.right_in_place))

    @property
    def options(self) -> Options:
        return matmul_options(self.product.src[0].shape[self.n_axis], self.product.src[0].shape[self.m_axis],
                              self.right_readable)


def plan_cpu_matmul(root: Node, product: Optional[Node], materialized: dict[int, Node], native_width: int = LANES,
                    choice: Optional[Choice] = None, latency: int = 4) -> Optional[CpuPlan]:
    """A plan when the kernel hosts a `product` summed in float32 (tiling.hosted_matmul; float16 and bfloat16
    ones too) with whole vectors of columns; None for the plain path. Its tile and packing are `choice`'s, else as
    the device's vector registers (`native_width` floats) and multiply-adds (`latency` cycles) allow. A
    half-precision product's operands are packed as float32 (each value converted once, in its copy, not once per
    tile), so the kernel is the float32 one with its results rounded: on the plain path, 128 scalar accumulators a
    work item, PoCL took 16 s to compile a 64 x 64 float16 product. A float32 left operand is read in place where
    it lies along k (or is computed: then stored as it is first), else packed too: a view of memory read across k
    (a weight gradient's activations, tokens first) takes a new cache line each step of k for a tile's few rows;
    W7's 256 x 2048 @ 2048 x 1024 ran in 9.0-10.2 ms so and 5.8-6.8 ms packed, the copy 0.25 ms (PoCL 3.1, Zen 2)."""
    if product is None or product.dtype.accumulated != float32 or len(product.arg) != 1:
        return None
    if product.src[0].op is not Op.MUL:
        return None
    axes = space_axes(root, product)
    if axes is None:
        return None
    n_axis, m_axis = matmul_axes(product)  # type: ignore[misc]
    k_axis = product.arg[0]
    shape = product.src[0].shape
    if product.src[0].numel < MIN_MACS and product.dtype.name != "float16":
        return None
    left, right = (_unbroadcast(s) for s in product.src[0].src)
    if left is None or right is None or left.shape[k_axis] != shape[k_axis] or right.shape[k_axis] != shape[k_axis]:
        return None
    narrow = product.dtype.is_narrow_float  # operands read only from their float32 copies
    left, right = (n.cast(s, float32) if narrow else s for s in (left, right))
    sources = (0, 1)
    if not narrow and _read_swapped(product, left, right, k_axis, materialized):
        sources, n_axis, m_axis, axes, left, right = (1, 0), m_axis, n_axis, axes[::-1], right, left
    viewed = _view_index(product.src[0].src[sources[0]], _probe(shape), materialized) is not None
    left_in_place = not narrow and not (viewed and _k_stride(product.src[0].src[sources[0]], left, k_axis,
                                                             materialized) > 1)
    rows, width = ((choice["rows"], choice["width"]) if choice
                   else default_tile(shape[n_axis], shape[m_axis], native_width, latency, viewed or left_in_place))
    readable = (not narrow and shape[m_axis] % width == 0
                and _contiguous(product.src[0].src[sources[1]], m_axis, materialized))
    limit = IN_PLACE_BYTES if native_width >= LANES else NARROW_IN_PLACE_BYTES
    packed = choice["packed"] if choice else shape[m_axis] * shape[k_axis] * 4 > limit
    return CpuPlan(product, n_axis, m_axis, k_axis, axes[0], axes[1], Operand(left, n_axis, k_axis, rows),
                   Operand(right, m_axis, k_axis, width), left_in_place, left_in_place and not viewed,
                   readable and not packed, readable, sources)


def default_tile(n: int, m: int, native_width: int, latency: int = 4, overhang_cheap: bool = True) -> tuple[int, int]:
    """Rows and columns per work item: as many accumulators as the vector registers hold, in tiles that divide the
    outputs where one does (else the last tiles of a row or column hang over its end). On AVX-512 (16 floats per
    register, 32 registers) 8 x 32; on AVX2 (8 floats, 16 registers, a float16 takes two) 4 x 16, about twice
    as fast there as 8 x 32, which spills (W3 1024³ and 2048³ on PoCL 3.1, AMD EPYC; ZYX_TUNE finds more). Where
    multiply-adds take 5 cycles (`latency`: Zen 2), AVX2 tiles are 5 x 16: ten accumulators keep both pipes busy
    (a hand-written 1024³ kernel: 100 GFLOP per CPU-second against 79 with 4 x 16, the peak 106), taken whatever
    the rows once there are 16 tiles or more where a tile hanging over the end costs little (`overhang_cheap`:
    the left operand read in place, the last tile reading its last row again, or packed from memory by a copy);
    one packed from a computation (half precision, converted into float32 panels) keeps a tile that divides its
    rows if there is one of over half the registers' rows: padded to 5-row panels, the copy of exp(S) for
    attention's P @ V (8 x 4 x 256 x 256) took 3-7 times a 4-row copy's time, more than the 5-row product gained
    (PoCL 3.1, Zen 2, when float32 lefts that compute were packed too)."""
    accumulators, widths = ((ACCUMULATORS, WIDTHS) if native_width >= LANES else
                            (NARROW_ACCUMULATORS * latency // 4, NARROW_WIDTHS))
    width = next((w for w in widths if m % w == 0), widths[0] if m > LANES else LANES)
    most = accumulators * LANES // width
    if latency > 4 and native_width < LANES and n >= 16 * most and (overhang_cheap or n % most == 0):
        return most, width
    rows = max(d for d in range(1, most + 1) if n % d == 0)
    return (rows if 2 * rows > most else most), width


def row_band(tiles: int, tile_bytes: int) -> int:
    """Row tiles per band (see ROW_BAND_BYTES): the most that fit and divide `tiles`; all of them where they fit.
    Where no divisor comes within half of that (narrow bands would read the right operand again per band), the
    fewest above it that divide, up to twice as many; else all (W3 2048³ in 5-row tiles, 410 of them: bands of 41
    ran at 97 GFLOP per CPU-second, all rows at once at 80, on a Zen 2)."""
    most = max(ROW_BAND_BYTES // tile_bytes, 1)
    band = max(d for d in range(1, min(most, tiles) + 1) if tiles % d == 0)
    if 2 * band > most:
        return band
    return next((d for d in range(most + 1, min(2 * most, tiles) + 1) if tiles % d == 0), tiles)


def matmul_options(n: int, m: int, readable: bool) -> Options:
    """The tiles a search may try for an n x m product: rows up to n, columns up to m (in whole vectors); and
    the right operand read in place or packed, where it can be read in place."""
    rows, widths = FAMILIES["cpu_matmul"]["rows"], FAMILIES["cpu_matmul"]["width"]
    return (("packed", (0, 1) if readable else (1,)), ("rows", tuple(r for r in rows if r <= max(n, 1))),
            ("width", tuple(w for w in widths if w < m + LANES)))


def fits_registers(choice: Choice) -> bool:
    """Whether a tile's accumulators fit twice the registers of AVX-512 (more spill whatever the CPU)."""
    return choice["rows"] * choice["width"] <= 2 * ACCUMULATORS * LANES


def _probe(shape: tuple[int, ...], short: int = -1) -> list[Expr]:
    """Any index into `shape` (one but the last along axis `short`)."""
    return [Expr.var(f"i{a}", size - (a == short)) for a, size in enumerate(shape)]


def _contiguous(node: Node, axis: int, materialized: dict[int, Node]) -> bool:
    """Whether `node` views memory in which its consecutive elements along `axis` are adjacent."""
    return _view_step(node, axis, materialized) == Expr(1)


def _view_step(node: Node, axis: int, materialized: dict[int, Node]) -> Optional[Expr]:
    """How far apart in memory `node`'s consecutive elements along `axis` lie, where it views memory; else None."""
    index = _probe(node.shape, axis)
    here = _view_index(node, index, materialized)
    index[axis] = index[axis] + 1
    there = _view_index(node, index, materialized)
    return None if here is None or there is None else there[1] - here[1]


def _view_index(node: Node, index: list[Expr], materialized: dict[int, Node]) -> Optional[tuple[Node, Expr]]:
    """The node in memory that a chain of views reads (a buffer, or a node another kernel stores) and the flat
    index it reads at `index`; None if the chain computes anything (a padding that needs a condition too)."""
    position: Index = tuple(index)
    while node.op is not Op.BUFFER and id(node) not in materialized:
        if node.op not in MOVEMENT_OPS:
            return None
        inner, condition = source_index(node, position)
        if inner is None or condition is not None:
            return None
        position, node = inner, node.src[0]
    return node, linear(position, node.shape)


def _read_swapped(product: Node, left: Node, right: Node, k_axis: int, materialized: dict[int, Node]) -> bool:
    """Whether the product's operands are better read the other way round (the outputs' columns then the rows of
    the tiles, stored lane by lane): where the left one, read in place, lies PAGE_FLOATS or more apart along k (a
    new page each step of k) and the right one less (a weight gradient dY^T X of a 1024-wide dY and a 256-wide X:
    W7's 1024 x 256 ones, k = 2048, ran at 60-100 GFLOP/s where 256-row ones ran at 115, PoCL 3.1, Zen 2)."""
    a, b = product.src[0].src
    return (_k_stride(a, left, k_axis, materialized) >= PAGE_FLOATS
            and 0 < _k_stride(b, right, k_axis, materialized) < PAGE_FLOATS)


def _k_stride(viewer: Node, source: Node, k_axis: int, materialized: dict[int, Node]) -> int:
    """Elements between an operand's consecutive values along k, as a product reads it in place: through its views
    (`viewer`), or as `source` is stored where it computes (0 where that is no constant)."""
    step = _view_step(viewer, k_axis, materialized)
    if step is None:
        return contiguous_strides(source.shape)[k_axis]
    return step.const if step.is_const else 0


def _unbroadcast(operand: Node) -> Optional[Node]:
    """The source of the broadcast under `operand`'s casts, with the casts applied to it."""
    casts = []
    while operand.op is Op.CAST:
        casts.append(operand.dtype)
        operand = operand.src[0]
    if operand.op is not Op.EXPAND:
        return None
    source = operand.src[0]
    for dtype in reversed(casts):
        source = n.cast(source, dtype)
    return source


def copy_tile(root: Node, small: bool) -> Optional[dict[int, int]]:
    """For a kernel storing a packed operand (Operand.packed): a block of outputs per work item, so the index
    arithmetic is done once per block and the block's loads and stores are adjacent (4x faster than one
    output per item). A block narrower than a vector (a left operand's rows) is taken over several steps of k
    too, up to COPY_OUTPUTS outputs, unless the copy is `small`: PoCL's cost per work item dominated the copy,
    W4's first ReLU copied into 4-row panels (512 x 512) took 0.7-0.8 ms of CPU with 4 outputs per item, 0.2 ms
    with 64 (PoCL 3.1, haswell); but a small copy runs for less time than PoCL's optimizer spends on 64 copies
    of its expression (W5's 10 x 512 softmax gradient: 2.2 s to compile). (Wider blocks, the right operand's,
    copied no faster so.)"""
    if root.op is not Op.PERMUTE or root.src[0].op is not Op.RESHAPE or len(root.shape) < 3:
        return None
    if root.arg[-1] != root.arg[-3] + 1 or not 1 < root.shape[-1] <= max(FAMILIES["cpu_matmul"]["width"]):
        return None
    block, steps = root.shape[-1], root.shape[-2]
    tile = {len(root.shape) - 1: block}
    if block < LANES and not small:
        tile[len(root.shape) - 2] = max(s for s in (1, 2, 4, 8, 16) if steps % s == 0 and s * block <= COPY_OUTPUTS)
    return tile


COPY_STEPS = 4
"""Steps of k an item of a right operand's panel copy takes (`panel_copy`)."""


def panel_copy(kernel: Kernel, root: Node, width: int) -> Optional[Kernel]:
    """The copy `kernel` of a right operand into column panels (blocks of whole vectors along m: `root` is the
    packed operand) with a block's values as vectors, COPY_STEPS steps of k an item, consecutive items taking
    consecutive panels: they read the source's rows in order and each writes whole lines. One step of k an item,
    the items walking down a panel, read a line per row a page apart: copying [2048, 1024] into 16-column
    panels took 1.22 ms so and 0.69 ms so (written by hand: 0.84 ms as vectors walking down the panels, 0.27-0.36
    ms so; PoCL 3.1, Zen 2).
    None where the block is no whole number of vectors, k no multiple of COPY_STEPS or the copy does not
    vectorize into vector loads."""
    block, steps = root.shape[-1], root.shape[-2]
    if width < 2 or block % width or steps % COPY_STEPS:
        return None
    vector = vectorize(kernel, width)
    if vector is None or any(isinstance(statement, Gather) for statement in walk(vector.body)):
        return None  # (a source not contiguous along m: its columns' values gathered one by one)
    space = root.shape[:-1] + (block // width,)  # (the vector kernel's items: its lanes along the block)
    return upcast(vector, space, {len(space) - 2: COPY_STEPS}, fastest=len(space) - 3)


class PackedCopyLowering(Lowering):
    """The kernel of a packed operand's copy (`copy_tile`). The padding to whole tiles is zeros, but only
    products hanging over the operand's end read it, and they store nothing there: its values are computed from
    the operand's last row (the index clamped), then zeroed by a select, instead of read under a guard. The
    loads are then unconditional, so PoCL vectorizes a block's steps of k: exp(S) packed into 5-row panels for
    attention's P @ V (8 x 4 x 256 x 256) took 14.2 ms with guarded loads, one block an item, against 2.1 ms for
    4-row panels, which need no padding (PoCL 3.1, Zen 2)."""

    def _movement(self, node: Node, index: Index, guard: Cond) -> Step:
        clamped = _padding_clamped(node, index)
        if clamped is None:
            return (yield from super()._movement(node, index, guard))
        inner, condition = clamped
        value = yield node.src[0], inner, guard
        fill = Const(node.arg[1], node.dtype)
        return self._emit(max(value.depth, self._depth_of(index, guard + condition)),
                          lambda out: Select(Reg(out, node.dtype), condition, value.operand, fill))


def _padding_clamped(node: Node, index: Index) -> Optional[tuple[Index, Cond]]:
    """For a PAD padding only after its source's end along the axes `index` may pass it: the source's index
    clamped to the last element there, and the condition of being inside; None for any other node or index."""
    if node.op is not Op.PAD:
        return None
    inner, condition = [], []
    for e, (before, _), size in zip(index, node.arg[0], node.src[0].shape):
        shifted = e - before
        if shifted.lo < 0:
            return None
        if shifted.hi >= size:
            condition.append((shifted, "lt", size))
            shifted = Expr.minimum(shifted, size - 1)
        inner.append(shifted)
    return (tuple(inner), tuple(condition)) if condition else None


LANE = "lane"  # the variable of an accumulator's lane in an epilogue lowered once per accumulator


class ScalarEpilogue(Exception):
    """A product's epilogue that does not run on whole accumulators (CpuMatmulLowering's `vector_epilogue`)."""


def lower_cpu_matmul(root: Node, materialized: dict[int, Node], produced: set[int], plan: CpuPlan,
                     stored_apart: frozenset = frozenset()) -> LoweredKernel:
    """The kernel of a planned product, its epilogue computed on whole accumulators where it can be (a float32
    product whose epilogue vectorizes: one vector statement per 16 outputs), else lane by lane: PoCL calls exp and
    erf one lane at a time in scalar code, and vectorizes none of an epilogue's loads and stores. W7 at the CPU
    size (PoCL 3.1, Zen 2): its seven products adding a bias and the residual, 23.1 ms a step lane by lane, 16.4
    so; attention's dS (P times dP minus its row sums, exp per output) 4.9 ms a layer with its scores read."""
    if plan.product.dtype == float32 and plan.sources == (0, 1):  # (read the other way round, lanes lie apart)
        try:
            return CpuMatmulLowering(root, materialized, produced, plan, stored_apart, vector_epilogue=True).lower()
        except ScalarEpilogue:
            pass
    return CpuMatmulLowering(root, materialized, produced, plan, stored_apart).lower()


class _Lanes(Sequence[_Value]):
    """The product's values at a work item's outputs, each extracted from its accumulator when first read."""

    def __init__(self, lowering: "CpuMatmulLowering"):
        self.lowering, self.read = lowering, {}

    def __len__(self) -> int:
        return len(self.lowering.lanes)

    def __getitem__(self, element):  # type: ignore[override]
        if element not in self.read:
            self.read[element] = self.lowering._lane(element)
        return self.read[element]


class CpuMatmulLowering(Lowering):
    """Lowering whose work items each own a rows x width tile of the product, accumulated in vectors."""

    def __init__(self, root: Node, materialized: dict[int, Node], produced: set[int], plan: CpuPlan,
                 stored_apart: frozenset = frozenset(), vector_epilogue: bool = False):
        super().__init__(root, materialized, produced, False, stored_apart)
        self.plan, self.kind, self.local_size = plan, "m", 1  # one item per group: PoCL hands the groups out
        self.vector_epilogue = vector_epilogue
        tile = {plan.space_n: plan.left.block, plan.space_m: plan.right.block}  # to its threads in order
        grid = [-(-size // tile.get(axis, 1)) for axis, size in enumerate(self.space)]
        # the row tiles vary fastest (consecutive items share the right operand's panel), a band of them at a time
        band = row_band(grid[plan.space_n], plan.left.block * plan.product.src[0].shape[plan.k_axis] * 4)
        order = ["band"] + [a for a in range(len(grid)) if a != plan.space_n] + [plan.space_n]
        sizes = {"band": grid[plan.space_n] // band, **dict(enumerate(grid)), plan.space_n: band}
        self.items = math.prod(grid)
        cell = dict(zip(order, unravel(Expr.var("gid", self.items), tuple(sizes[a] for a in order))))
        cell[plan.space_n] = cell.pop("band") * band + cell[plan.space_n]
        self.corner = tuple(cell[a] * tile.get(a, 1) for a in range(len(grid)))
        self.elements, self.guards, self.lanes = [], [], []  # lanes: (row, column) in the tile of each element
        self.positions = []
        # each row's and column's index is built once, and an unguarded output's position is the corner's plus a
        # constant (the same expression `linear` gives: offsets add to the constant only): 256 outputs a tile
        axes = (plan.space_n, plan.space_m)
        offsets = [[(self.corner[a] + o, o * stride) for o in range(block)]
                   for a, block, stride in zip(axes, (plan.left.block, plan.right.block),
                                               (contiguous_strides(self.space)[a] for a in axes))]
        if vector_epilogue:  # one output per accumulator, its column's lane the variable LANE
            lane = Expr.var(LANE, LANES)
            offsets[1] = [(column + lane, shift) for column, shift in offsets[1][::LANES]]
        ranges = [[(e.lo, e.hi) for e, _ in along] for along in offsets]
        corner_position = linear(self.corner, self.space)
        for t, (row, row_shift) in enumerate(offsets[0]):
            for u, (column, column_shift) in enumerate(offsets[1]):
                lane = {plan.space_n: row, plan.space_m: column}
                (row_lo, row_hi), (column_lo, column_hi) = ranges[0][t], ranges[1][u]
                if row_lo >= self.space[plan.space_n] or column_lo >= self.space[plan.space_m]:
                    continue  # past the end in every tile
                ragged = [a for a, hi in zip(axes, (row_hi, column_hi)) if hi >= self.space[a]]
                self.guards.append(tuple((lane[a], "lt", self.space[a]) for a in ragged))
                # where the guard holds the index is in range: an opaque value with that range (as in a PAD)
                element = tuple(Expr.clamped(lane[a], 0, self.space[a] - 1) if a in ragged else lane.get(a, c)
                                for a, c in enumerate(self.corner))
                self.elements.append(element)
                self.positions.append(linear(element, self.space) if ragged or vector_epilogue
                                      else corner_position + (row_shift + column_shift))
                self.lanes.append((t, u * LANES if vector_epilogue else u))
        self._accumulators: list[list[Reg]] = []  # [row][vector], once the product is lowered
        self._rounded_vectors: dict[str, Reg] = {}  # a half-precision product's accumulators, rounded
        self._whole_vectors = self._stores_whole_vectors()

    def _stores_whole_vectors(self) -> bool:
        """Whether the kernel stores the product as it is (no epilogue) and every accumulator's lanes land on
        consecutive elements of the output, none of them guarded: then each accumulator is one vector store.
        (A reshape keeps the elements' order: the root may be the product reshaped, as `a @ b` is.)"""
        node = self.root
        while node.op is Op.RESHAPE:
            node = node.src[0]
        if node is not self.plan.product or self.plan.right.block % LANES or any(self.guards):
            return False
        if len(self.lanes) != self.plan.left.block * self.plan.right.block:
            return False
        first = self.positions[::LANES]  # each accumulator's first lane; its other lanes follow it one by one
        return all(position.terms == start.terms and position.const == start.const + i % LANES
                   for i, (position, start) in enumerate(zip(self.positions, (s for s in first for _ in range(LANES)))))

    def _lower_outputs(self) -> None:
        """A product stored as it is in whole vectors: each accumulator stored by one vector store (`vstore16`),
        not extracted and stored lane by lane. The values are the same; the kernel has 16x fewer statements to
        lower, print and compile (a W5 product's front end took 0.06 s less of PoCL's CPU, of 0.15-0.2 s).
        Otherwise the product's loop still comes first, so that what the epilogue reads (SGD's weights) is loaded
        after it, each output's lane taken from its accumulator where the output is computed and stored
        (`_lane`, `_store`): neither held across the loop nor all live at once after it, where they took registers
        from the accumulators (a 6 x 16 tile on AVX2 spilled one: in W4 twice the kernel's time)."""
        self._element = 0
        product = self.plan.product
        if not self._whole_vectors:
            self._reductions[id(product)] = self._reduce(product)
            start = len(self._scopes[0])
            super()._lower_outputs()
            if self.vector_epilogue:
                self._scopes[0][start:] = self._epilogue_vectors(self._scopes[0][start:])
            return
        self._reduce(product)
        out = self._output(self.root)
        # self.lanes runs over each row's columns in order: lanes i..i+15 are one accumulator's
        self._stores += [Store(out, self.positions[i], self._accumulators[t][u // LANES], product.dtype, "vector")
                         for i, (t, u) in enumerate(self.lanes) if u % LANES == 0]

    def _epilogue_vectors(self, epilogue: list) -> list:
        """The epilogue, lowered once per accumulator for its lane LANE, as statements on its 16 lanes at once
        (transforms.vector.vectorize_lanes); raises ScalarEpilogue where that does not apply."""
        accumulators = frozenset(acc.name for row in self._accumulators for acc in row)
        if id(self.plan.product) in self._needed:  # (not hosted at the lanes' positions: read from memory)
            raise ScalarEpilogue(self.root)
        vectors = vectorize_lanes(tuple(epilogue), LANE, LANES, accumulators, tuple(self.params))
        if vectors is None:
            raise ScalarEpilogue(self.root)
        return list(vectors)

    def _axes(self) -> tuple[Axis, ...]:
        return (Axis("gid", self.items, Role.GLOBAL), *self._loops,
                Axis("rows", self.plan.left.block, Role.UPCAST), Axis("columns", self.plan.right.block, Role.VECTOR))

    def _reduce(self, node: Node) -> Sequence[_Value]:
        plan = self.plan
        if node is not plan.product:
            return super()._reduce(node)
        count = node.src[0].shape[plan.k_axis]
        self._longest_reduction = max(self._longest_reduction, count)
        step = self.names.fresh("k")
        index = list(unravel(linear(self.corner, self.space), node.shape))
        index[plan.k_axis] = Expr.var(step, count)
        self._open_loop(step, count)
        body = self._scopes[-1]
        if plan.right_in_place:
            memory, b_start = _view_index(node.src[0].src[plan.sources[1]], index,  # type: ignore[misc]
                                          self.materialized)
            right = self._read(memory)
        else:
            right, b_start = self._read(plan.right.packed), plan.right.start(index)
        vectors = plan.right.block // LANES
        b = [Reg(self.names.fresh("b"), float32, LANES) for _ in range(vectors)]
        body += [Load(name, right, b_start + v * LANES, (), "vector") for v, name in enumerate(b)]
        last = node.shape[plan.n_axis] - 1  # a tile hanging over the last row reads that row again (its outputs
        rows = [tuple(Expr.minimum(e + t, last) if axis == plan.n_axis else e for axis, e in enumerate(index))
                for t in range(plan.left.block)]  # are guarded)
        if plan.left_stored:
            stored = plan.left.source
            left = self._read(stored)
            a_values = [Reg(self.names.fresh("a"), float32) for _ in rows]
            body += [Load(a, left, linear(tuple(Expr(0) if size == 1 else e for e, size in zip(row, stored.shape)),
                                          stored.shape)) for a, row in zip(a_values, rows)]
        elif plan.left_in_place:
            a_values = [self.value(node.src[0].src[plan.sources[0]], row, ()).operand for row in rows]
        else:
            left, a_start = self._read(plan.left.packed), plan.left.start(index)
            a_values = [Reg(self.names.fresh("a"), float32) for _ in range(plan.left.block)]
            body += [Load(a, left, a_start + t) for t, a in enumerate(a_values)]
        accumulators = [[Reg(self.names.fresh("acc"), float32, LANES) for _ in range(vectors)]
                        for _ in range(plan.left.block)]
        for value, row in zip(a_values, accumulators):
            a = Reg(self.names.fresh("a"), float32, LANES)
            body.append(Broadcast(a, value))
            body += [MultiplyAdd(acc, a, b_v) for acc, b_v in zip(row, b)]
        loop = Loop(step, count, tuple(self._close_loop()))
        self._scopes[0] += [Define(acc, Const(0.0, float32, LANES)) for row in accumulators for acc in row] + [loop]
        self._accumulators = accumulators
        return _Lanes(self)  # (unread where stored whole by _lower_outputs)

    def _lane(self, element: int) -> _Value:
        """The product at the work item's output `element`: its lane of an accumulator (after the loop), rounded
        where the product is in half precision."""
        t, u = self.lanes[element]
        vector, dtype = self._accumulators[t][u // LANES], self.plan.product.dtype
        if self.vector_epilogue:  # (the accumulator itself, read for one lane: vectorize_lanes widens it)
            return _Value(Reg(vector.name, dtype), 0)
        if dtype.is_narrow_float:  # the accumulator rounded once, its 16 lanes together
            if vector.name not in self._rounded_vectors:
                self._rounded_vectors[vector.name] = self._emit(0, lambda out: Alu(Reg(out, dtype, LANES), Op.CAST,
                                                                                   (vector,))).operand
            vector = self._rounded_vectors[vector.name]
        return self._emit(0, lambda out: Extract(Reg(out, dtype), vector, f"s{u % LANES:x}"))

    def _store(self, node: Node, value: _Value, position: Expr) -> None:
        """Stored where computed (after the product's loop), not with every other store at the end."""
        stores = len(self._stores)
        super()._store(node, value, position)
        self._scopes[0] += self._stores[stores:]
        del self._stores[stores:]

    def _read(self, node: Node) -> str:
        """The kernel argument reading `node` from memory: a buffer, or a node (a packed copy) another kernel
        stores."""
        if node.op is not Op.BUFFER and id(node) not in self.materialized:
            self._needed[id(node)] = node
        self._misaligned.add(id(node))
        return self._input(node)
