"""Matrix products on NVIDIA's tensor cores (compute capability 8.0 and newer), through inline PTX in OpenCL C.

A work group of 8 warps (256 items) computes a block of 128 rows by 4·W columns (W = 64, or 32 where local memory is
short or the product narrow or small: `_spread`); local memory is device_traits.LOCAL_MEMORY where measured (200 KiB
on compute capability 9.0, where NVIDIA's OpenCL reports 48), else the reported size. Warp w owns 64 rows (from 64·(w
// 4)) by W columns (from W·(w % 4)): 4 x W/8 tiles of 16 x 8 outputs, each accumulated by one mma.sync per step of
the reduced axis (`MatrixMultiply`). Per slice of the reduced axis (128 or 64 bytes of each row: 4 or 2 mma steps)
the group stages both operands in local memory as rows along k: [row][k] for the left operand and [column][k] for the
right, so both fragments load with ldmatrix and nothing is transposed (`MatrixLoad`); a right operand stored
row-major lies instead as [k][column], read by transposing ldmatrix. The 8 rows one ldmatrix reads fall in 8 distinct
16-byte bank groups: each row is padded by 16 bytes, or (pipelined) its 16-byte chunks are swizzled (`TileLayout`).
Wide warp tiles and long slices matter most (a hand-written kernel on the H200, bfloat16 8192³: warps of 64 x 32 and
64-byte slices 174 TFLOP/s, 64 x 64 and 128-byte slices 257).

A 16-bit operand stored in a buffer whose neighbours along the staged rows lie in 16 aligned bytes (else 8 or 4) is
copied global -> local by cp.async (`AsyncCopy`) into unpadded, swizzled tiles; where one operand is, the slices are
pipelined 3 or 4 stages deep where local memory holds them (transforms/async_pipeline.py; ZYX_TC_PIPELINE=0 turns
it off). Other operands are staged through registers the way the float32 path (matmul.py) stages them: any fused
prologue (a cast, a view, an elementwise op) computed per element and rounded to the operand dtype where stored,
rows and columns past the ends reading the last ones (their outputs are never stored), a slice past the end of k
staging zeros. Where neither operand is copied by cp.async (or TF32), tiles are padded, operands stored in buffers
staged 16 bytes at a time through registers, and the slices double-buffered by the same transform as there
(transforms/double_buffer.py). The epilogue (bias, activation, the cast of the result) is fused into the stores of
the float32 accumulators; a warpgroup product's 16-bit outputs whose rows lie whole leave 16 bytes an item,
transposed across the items of each quad by shuffles (quads.py; in two experiments, off by default, they go
through a local stage instead, and out in rows or by the asynchronous proxy: `STAGED_COLUMNS`).

On compute capability 9.x (Hopper) products pipelined by cp.async multiply by warpgroups instead (wgmma, sm_90a:
jit/wgmma.py, ptx_patch.py), two warpgroups of 64 rows by the whole block; where every operand is copied by
cp.async, a third warpgroup only copies the slices and hands them over by named barriers while the other two only
multiply and store (transforms/warp_roles.py; ZYX_WGMMA_PRODUCER=0: all three jobs in every item); in ping-pong
(`PINGPONG`, opt-in) each of two consumer warpgroups multiplies a 128 x 128 block of its own. A 16-bit left
operand lying across k (a weight gradient's `x.T @ dy`, x stored [tokens, features]) is copied there 16 bytes at a
time along its rows into the MN-major atoms a right operand across k takes, and read by wgmma transposed
(imm-trans-a: `_left_orientations`); on warps (ldmatrix) it is staged element by element. TF32 operands
are float32 copied as they are (16, 8 or 4 bytes at a time) into the same 128-byte swizzled rows (32 floats), but
wgmma takes TF32 only K-major from local memory, so a right operand lying across k (`x @ w`, w row-major) cannot be
its b: the product is computed transposed (`_register_products`), each warpgroup reading 64 columns of the right
tile into registers as wgmma's a (rounded to TF32 to nearest there, as mma.sync's operands are), the left tile (rows
along k) as b, in 128 x 256 or 128 x 128 blocks; each item then holds outputs by columns. The left tile is rounded
in place once each slice has landed (transforms: the producer's items, or every item, round what they copied), as
cuBLAS rounds both operands; ZYX_TF32_ROUND_TILES=0 leaves it to the tensor cores, which drop its 13 low bits.

Which products: float16 and bfloat16 ones (autocast's), accumulated in float32; float32 ones in TF32 where the
user allowed it (`zyx.set_float32_matmul_precision("high")`, as in PyTorch): on warpgroups where some operand is
copied by cp.async, else on warps staged through registers, rounded.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
from dataclasses import dataclass
from typing import Optional

from ..dtypes import DType, float32, int16, uint32
from ..trace.node import Node
from ..trace.ops import Op
from . import wgmma
from .choices import FAMILIES, Choice, Options
from .device_traits import WGMMA
from .kernel_ir import (ROUND_TF32, Alu, AsyncCopy, AsyncProxyFence, Barrier, BulkCommit, BulkStore, BulkWait, Cond,
                        Const, Define, If, Kernel, Lane, Load, LocalArray, LocalLoad, LocalStore, Loop, MatrixLoad,
                        MatrixMultiply, NamedBarrier, Operand, Pack, Reg, Store, WarpgroupCommit, WarpgroupFence,
                        WarpgroupMma, WarpgroupWait)
from .lower import Index, LoweredKernel, Lowering, _Value, linear, unravel
from .matmul import GROUP, LocalTileLowering, TilePlan, product_axes
from .operand_layout import runs_along
from .print_common import aligned
from .print_opencl import STATEMENTS
from .quads import quad_loads, quad_loads_wanted, quad_stores, quad_stores_wanted
from .rows import kernel_nodes
from .split import split_options
from .symbolic import Expr
from .tiling import matmul_axes
from .transforms.async_pipeline import pipeline
from .transforms.double_buffer import double_buffer
from .transforms.paired_stores import paired_loads, paired_stores
from .transforms.warp_roles import resident_groups, warp_roles

BLOCK = 128          # outputs per group along n
WARP = 32
WARP_ROWS = 64       # a warp's outputs along n: 4 mma tiles of 16
PAD_BYTES = 16       # after each staged row
VECTOR = 8           # half-precision elements one 16-byte copy moves
COPY_BYTES = 16      # the widest copy
# (warp columns, bytes of each row a slice stages, local buffers): the first that fits the device's local memory.
# Double buffering first: on the H200 (48 KiB) 64 x 32 warps double-buffered ran 3000x700x5000 in bfloat16 at 110
# TFLOP/s and 1021³ at 45, 64 x 64 warps single-buffered at 89 and 26 (8192³: 120 and 126).
SHAPES = ((64, 64, 2), (32, 64, 2), (64, 128, 1), (64, 64, 1), (32, 64, 1))
# (warp columns, bytes of each row a slice stages, stages) where an operand is copied by cp.async: swizzled tiles (no
# padding); the first that fits. On the H200, bfloat16 8192³: 64 x 128 bytes x 3 (128 x 256 blocks, 144 KiB) 308
# TFLOP/s, 32 x 128 x 3 (96 KiB) 273, 64 x 64 x 3 (72 KiB) 268, 32 x 64 x 3 (what 48 KiB hold) 239.
PIPELINED = ((64, 128, 3), (32, 128, 3), (64, 64, 3), (32, 64, 4), (32, 64, 3), (64, 64, 2), (32, 64, 2))
# (warp columns, bytes of each row a slice stages, stages) of warpgroup products (wgmma, compute capability 9.x):
# 128 x 256 blocks (m64n256 per warpgroup), else 128 x 128; slices of 128-byte swizzled rows. On the H200 (bench/
# wgmma_probe, 128 x 256, 4 stages, one batch waited for per slice) bfloat16 8192³ 650 TFLOP/s, 0.82 of cuBLAS.
# 128 x 192 (m64n192) where fewer waves of blocks make up for narrower blocks (`_spread`): W7's MLP weight gradients
# (768 x 3072 outputs) in 96 blocks, one wave on 132 SMs, where 128 x 128 took two (144 blocks) and 128 x 256 left
# 60 SMs idle (72 blocks).
WARPGROUP_SHAPES = ((64, 128, 4), (48, 128, 4), (32, 128, 4))
# The relative time a warpgroup block's column takes by the block's width (narrower blocks read more of their
# operands per multiply-add): what `_spread` weighs waves of blocks with.
COLUMN_COST = {256: 1.0, 192: 1.06, 128: 1.12}
# The slices of k a block's epilogue takes as long as (session 47: 5.8 of a k = 768 block's 15 µs on the H100)
EPILOGUE_SLICES = 8
WARP_COLUMNS = (32, 64)  # a warp plan's columns (mma.sync tiles in pairs: 48 is a warpgroup plan's only)
FITTED_COLUMNS = (48,)   # warp columns a plan takes only where the waves of blocks say so (the SMs known)
# TF32 takes the same: its a lies in registers, 4 per k8 step and 64 columns, held until the slice's batch is waited
# for (two slices' with a batch in flight): 128 x 256 blocks hold 128 accumulators and 64 of them, more than the 168
# registers an item of a 384-item group has; its consumers take the producer's (232 each, transforms/warp_roles.py:
# no spills). On the H200 at 4096³: 128 x 128 with each batch waited for 188.7 TFLOP/s, 128 x 256 with a batch in
# flight 252.1, 208.9 with the left tile rounded in place (bench/GPU.md).
# A warpgroup product's 16-bit outputs staged in local memory STAGED_COLUMNS columns of the block at a time, then
# stored 16 bytes an item along the rows, or by the asynchronous proxy a row at a time (ZYX_WGMMA_STAGED=1, 2:
# experiments, off by default): each item holds its outputs as pairs 8 rows apart, so a warp's direct store writes 16
# bytes of each of 8 rows, half of each 32-byte sector, while the tensor cores wait. The consumers wait on named
# barrier STAGED_BARRIER around each pass (warp_roles takes 1 to 2 x stages).
STAGED_COLUMNS = 128
STAGED_BARRIER = 15
BULK_STAGED = 2  # ZYX_WGMMA_STAGED=2: the stage's rows stored by the asynchronous proxy (cp.async.bulk)
# A warpgroup product in ping-pong (ZYX_WGMMA_PINGPONG=1, or a tuned choice's warpgroup=PINGPONG): the lowered group
# is one warpgroup multiplying a whole 128 x 128 block (both m64 tiles of its rows, m64n128 each: 128 accumulators an
# item, as a 128 x 256 block's two warpgroups hold), and transforms/warp_roles.py runs two such consumers beside the
# producer, each taking every other block of a persistent group, so that one's epilogue runs while the other's
# products do (a k = 768 block of 128 x 256 spent about 10 µs outside its 12 slices' ~6 on the H100: bench/GPU.md,
# session 58). Its slices are 32 KiB (of 48 for 128 x 256), 6 stages deep. Measured on an H100 (session 61, before
# quads.py) it was slower: W7's k = 768 products 0.65 -> 0.52 of cuBLAS, W7 bf16 52.1 -> 55.7 ms; the epilogue's
# half-sector stores were most of those 10 µs, which quads.py removed instead.
PINGPONG = 2
PINGPONG_SHAPE = (32, 128, 6)
PINGPONG_LONGEST = 0  # the longest reduction a product takes ping-pong for by default: none (see above)
BANDS = (8, 4, 2)    # rows of blocks a warpgroup plan's groups take at once (TensorCoreLowering._block)
MIN_BLOCKS = 128     # blocks of outputs a wide shape should give (the H200 has 132 SMs), else the shape giving most
KINDS = {"bfloat16": "bf16", "float16": "f16", "float32": "tf32"}  # PTX's name of each operand dtype


@dataclass
class TensorCorePlan(TilePlan):
    """A TilePlan whose group multiplies on tensor cores: `kind` names the operands' type in PTX."""

    kind: str = "bf16"
    operands: Optional[DType] = None  # the operands' dtype where it is not the product's (half products' partials)
    warp_columns: int = 64  # a warp's outputs along m: mma tiles of 8
    pipelined: bool = False  # `buffers` stages of swizzled tiles, some operand copied by cp.async (else registers)
    warpgroup: bool = False  # multiplied by warpgroups (wgmma: 2 x 64 rows by block_m), else by warps (mma.sync)
    staged: int = 0  # outputs staged in local memory, STAGED_COLUMNS at a time (`_staging_wanted`): 1, or BULK_STAGED
    pingpong: bool = False  # a warpgroup plan whose one warpgroup multiplies all BLOCK rows (`_pingpong_wanted`)

    @property
    def block_m(self) -> int:
        return 4 * self.warp_columns

    @property
    def group(self) -> int:
        """Items in the work group: 8 warps, or a ping-pong plan's one warpgroup (a float32 plan's follow from its
        block and per-item tile)."""
        return wgmma.WARPGROUP if self.pingpong else GROUP

    @property
    def row_tiles(self) -> int:
        """The m64 tiles of rows each warpgroup multiplies: both of the block's in a ping-pong plan, else its own."""
        return BLOCK // wgmma.ROWS if self.pingpong else 1

    @property
    def k_step(self) -> int:
        """Reduced elements one mma.sync or wgmma takes: 16 of 16-bit operands (m16n8k16), 8 of TF32 (m16n8k8)."""
        return wgmma.K_STEPS[self.kind]

    @property
    def row(self) -> int:
        """Elements in a warpgroup plan's 128-byte swizzled row: 64 of 16 bits, 32 of TF32."""
        return wgmma.ROW_BYTES // self.stored.itemsize

    @property
    def right_in_registers(self) -> bool:
        """Whether the product is computed transposed, the right tile read into registers as wgmma's a (TF32 on
        warpgroups: `TensorCoreLowering._register_products`)."""
        return self.warpgroup and self.kind == "tf32"

    @property
    def stored(self) -> DType:
        """The dtype of the staged operands."""
        return self.operands or self.product.dtype

    @property
    def choice(self) -> Choice:
        warpgroup = PINGPONG if self.pingpong else int(self.warpgroup)
        return Choice.of("tensor_cores", columns=self.warp_columns, row_bytes=self.bk * self.stored.itemsize,
                         buffers=self.buffers, pipelined=int(self.pipelined), warpgroup=warpgroup, split=self.split)

    def layout(self, length: int) -> "TileLayout":
        """How a tile whose rows hold `length` elements lies in local memory (a warpgroup's: rows of 128 bytes,
        wgmma.py; a tile across k in atoms of 64 columns, `across_index`)."""
        if self.warpgroup:
            return TileLayout(length, 0, self.row)
        if self.pipelined:
            return TileLayout(length, 0, length)
        return TileLayout(length, PAD_BYTES // self.stored.itemsize, 0)


    def across_index(self, k: Expr, column: Expr) -> Expr:
        """Where element (k, column) of a tile lying across k ([k][column]) is: a right tile's rows of k, or in a
        warpgroup plan atoms of a row's columns (64, or 32 of TF32), each [k][row] (wgmma's MN-major layout), the
        left tile's too (its rows as columns: `x.T @ y`, 16-bit operands)."""
        if self.warpgroup:
            row = self.row
            return (column // row) * (self.bk * row) + k * row + column % row
        return k * self.layout(self.block_m).stride + column

    def tile_index(self, row: Expr, k: Expr, across: bool) -> Expr:
        """Where element (row, k) of a staged tile is: in rows along k, or (`across`) `across_index`."""
        return self.across_index(k, row) if across else row * self.layout(self.bk).stride + k

    def leading_bytes(self, across: bool) -> int:
        """A warpgroup tile's descriptor's leading byte offset: across k (MN-major) from one atom of 64 rows or
        columns to the next (a whole slice of k between them); along k unused by the 128-byte swizzle (16)."""
        return self.bk * wgmma.ROW_BYTES if across else 16


@dataclass(frozen=True)
class TileLayout:
    """A staged tile's rows in local memory: `length` elements, then `pad` more, or (`swizzle`, the row length) no
    padding and each row's 16-byte chunks permuted (print_opencl.swizzled). Either way the 8 rows one ldmatrix
    reads at one column lie in 8 distinct 16-byte bank groups."""

    length: int
    pad: int
    swizzle: int

    @property
    def stride(self) -> int:
        """Elements from one row to the next."""
        return self.length + self.pad


class NotCopied(Exception):
    """Neither operand of a pipelined plan's product is copied 16 bytes at a time (each is computed, strided,
    unaligned or straddles an end)."""


def plan_tensor_cores(root: Node, product: Optional[Node], kinds: tuple[str, ...], local_memory: int,
                      pipelined: bool = False, choice: Optional[Choice] = None,
                      warpgroup: bool = False, compute_units: int = 0,
                      pingpong: bool = True, materialized: Optional[dict[int, Node]] = None
                      ) -> Optional[TensorCorePlan]:
    """A plan where the kernel's product multiplies two operands of its own dtype (or, `multiplied`, half operands
    into float32), the device runs that dtype on tensor cores (`kinds`: "bf16", "f16", "tf32"), the output's axes
    map onto the kernel's (matmul.py), and the staged slices fit `local_memory` bytes: `choice`'s shape, else the
    first of SHAPES, or `pipelined` of PIPELINED (`warpgroup`: of WARPGROUP_SHAPES), that does and spreads over the
    device (`_spread`, warpgroup shapes by the waves of blocks its `compute_units` take; ZYX_TC_SHAPE forces one:
    `_forced_shape`); in ping-pong (PINGPONG_SHAPE) where `choice` says so, else where `_pingpong_wanted` and
    `pingpong` (`materialized`: the nodes read from buffers, where the epilogue stops)."""
    if product is None or product.src[0].op is not Op.MUL:
        return None
    dtype = multiplied(product.src[0].src[0]).dtype
    kind = KINDS.get(dtype.name)
    if (kind not in kinds or any(multiplied(s).dtype != dtype for s in product.src[0].src)
            or product.dtype not in (dtype, dtype.accumulated)):
        return None
    placed = product_axes(root, product)
    if placed is None:
        return None
    n_axis, m_axis = matmul_axes(product)  # type: ignore[misc]
    if min(product.shape[n_axis], product.shape[m_axis]) < 16:  # a vector, not a matrix: the float path does better
        return None
    shapes = WARPGROUP_SHAPES if warpgroup else PIPELINED if pipelined else SHAPES
    staging = _staging_wanted(root, kind, placed[1], placed[2] or root.shape) if warpgroup else 0
    if staging:  # (a stage beside 4 buffers of 128 x 256 blocks is more than the 200 KiB: 3 buffers then, each
        # shape's right after it, so that a block keeps its width with fewer buffers rather than narrowing)
        shapes = tuple(shape for w, b, n in shapes for shape in ((w, b, n), (w, b, 3))[:2 if n > 3 else 1])
    pingpong = warpgroup and kind != "tf32" and (
        choice["warpgroup"] == PINGPONG if choice is not None else pingpong and _pingpong_wanted(
            root, product, n_axis, m_axis, compute_units, materialized or {}))
    if pingpong:
        shapes, staging = (PINGPONG_SHAPE,), 0
    fitting = [(w, b, n) for w, b, n in shapes
               if _fits(local_memory, w, b, n, pipelined, warpgroup, _stage_bytes(staging, w))]
    fitting = _spread(fitting, product, n_axis, m_axis, compute_units if warpgroup else 0)
    forced = None if warpgroup else _forced_shape()
    if forced is not None:  # (one buffer: registers)
        fitting = [forced] if forced[2] > 1 or not pipelined else []
    if choice is not None and not pingpong:
        fitting = [(choice["columns"], choice["row_bytes"], choice["buffers"])]
    if kind == "tf32" and warpgroup:  # (its a in registers: 64 columns to each wgmma, a warpgroup's half of the block)
        fitting = [shape for shape in fitting if 4 * shape[0] % (2 * wgmma.ROWS) == 0]
    if not fitting:
        return None
    columns, row_bytes, buffers = fitting[0]
    split = 1 if pingpong else choice["split"] if choice is not None else _filling_split(
        product, n_axis, m_axis, 4 * columns, kind, compute_units if warpgroup else 0, row_bytes // dtype.itemsize)
    stage = _stage_bytes(staging, columns)
    staged = staging if stage and _fits(local_memory, columns, row_bytes, buffers, pipelined, warpgroup, stage) else 0
    return TensorCorePlan(product, placed[0], placed[1], BLOCK, 0, placed[2], row_bytes // dtype.itemsize,
                          buffers, split=split, kind=kind,
                          operands=None if dtype == product.dtype else dtype, warp_columns=columns,
                          pipelined=pipelined, warpgroup=warpgroup, staged=staged, pingpong=pingpong)


def _pingpong_wanted(root: Node, product: Node, n_axis: int, m_axis: int, units: int,
                     materialized: dict[int, Node]) -> bool:
    """Whether a 16-bit warpgroup product is planned in ping-pong: where it reduces at most PINGPONG_LONGEST
    elements (ZYX_WGMMA_PINGPONG=1: any number, =0: none, =erf: those whose epilogue computes an erf, GELU's
    backward, whose arithmetic a block takes about as long as its products) and its 128 x 128 blocks make
    persistent groups (warp_roles.resident_groups, the device's compute `units` known) of at least two blocks each,
    one for each consumer."""
    setting = os.environ.get("ZYX_WGMMA_PINGPONG")
    if setting == "erf":  # (the epilogue: what the kernel computes above the product, kernel_nodes stopping there)
        wanted = any(node.op is Op.ERF for node in kernel_nodes(root, materialized, (product,)).values())
    else:
        wanted = setting == "1" or (setting != "0" and product.src[0].shape[product.arg[0]] <= PINGPONG_LONGEST)
    if not wanted or units <= 0:
        return False
    blocks = _blocks(product, n_axis, m_axis, 4 * PINGPONG_SHAPE[0])
    return blocks // resident_groups(blocks, units) >= 2


def _staging_wanted(root: Node, kind: str, m_axis: int, space: tuple[int, ...]) -> int:
    """How a warpgroup product storing `root` (its outputs' columns along axis `m_axis` of `space`) stages them
    (ZYX_WGMMA_STAGED: 1, BULK_STAGED), 0: not. Only 16-bit outputs of products not computed transposed, whose rows
    lie whole in the buffer: the columns along its last axis, 16-byte aligned (a multiple of 8 elements). Whether
    the block allows it: `_stage_bytes`."""
    mode = os.environ.get("ZYX_WGMMA_STAGED")
    wanted = int(mode) if mode in ("1", str(BULK_STAGED)) else 0
    rows_whole = m_axis == len(space) - 1 and space[m_axis] % VECTOR == 0
    return wanted if root.dtype.itemsize == 2 and kind != "tf32" and rows_whole else 0


def _stage_bytes(staging: int, columns: int) -> int:
    """The local memory staged outputs take beside the tiles (BLOCK rows of STAGED_COLUMNS 16-bit outputs, padded
    by 16 bytes where the asynchronous proxy reads them, aligned to 128 bytes at run time), 0 where a block of 4 x
    `columns` is not staged (not a multiple of STAGED_COLUMNS)."""
    if not staging or 4 * columns % STAGED_COLUMNS:
        return 0
    return BLOCK * (STAGED_COLUMNS + (VECTOR if staging == BULK_STAGED else 0)) * 2 + 128


def _blocks(product: Node, n_axis: int, m_axis: int, width: int) -> int:
    """The blocks of BLOCK x `width` outputs `product` takes, over its batch (the last ones hanging over the ends)."""
    rows, columns = product.shape[n_axis], product.shape[m_axis]
    return math.prod(product.shape) // (rows * columns) * -(-rows // BLOCK) * -(-columns // width)


def _filling_split(product: Node, n_axis: int, m_axis: int, width: int, kind: str, units: int, bk: int) -> int:
    """Chunks of k for a 16-bit warpgroup product whose blocks of BLOCK x `width` outputs fill at most half the
    device's compute `units` (W7's attention-projection weight gradient, 768 x 768 over 16384 tokens: 36 of the
    H100's 132 SMs), their float32 partials summed by the kernel of the product's root (split.py): of the splits
    split.split_options allows that cut k into whole slices of `bk` (a padded chunk is staged element by element),
    the one taking the least waves of blocks times (a chunk + EPILOGUE_SLICES slices); else 1. ZYX_TC_SPLIT=0 splits
    none (on the H100 W7's 768 x 768 x 16384 took 0.076 ms split in 8, 0.106 whole); =fill also splits products
    filling more than half the units, where that takes less by the same measure (W7's MLP weight gradients, 96
    blocks of 128 x 192 on 132 SMs: 4 chunks in 3 waves; the partials' bytes not counted: to be measured)."""
    setting = os.environ.get("ZYX_TC_SPLIT")
    if units <= 0 or kind == "tf32" or setting == "0":
        return 1
    blocks = _blocks(product, n_axis, m_axis, width)
    count = product.src[0].shape[product.arg[0]]
    if 2 * blocks > units and setting != "fill":
        return 1
    splits = [s for s in split_options(product, "tensor_cores") if count % (s * bk) == 0] or [1]
    return min(splits, key=lambda s: -(-s * blocks // units) * (count // s + EPILOGUE_SLICES * bk))


def _band(rows: int) -> int:
    """Rows of blocks a band takes (TensorCoreLowering._block): the largest of BANDS dividing `rows` and fewer than
    them, 1 where none; ZYX_TC_BAND=N takes N where it does (unset or empty: the default)."""
    wanted = int(os.environ.get("ZYX_TC_BAND") or 0)
    return next((b for b in ((wanted,) if wanted else ()) + BANDS if rows % b == 0 and rows > b), 1)


def multiplied(operand: Node) -> Node:
    """What a product's operand multiplies on tensor cores: a half operand's broadcast cast to float32 (the float32
    partials of a half product split along k: split.py) multiplies as the half values, whose products float32
    holds exactly; any other operand as it is."""
    if operand.op is Op.CAST and operand.src[0].dtype.is_narrow_float and operand.dtype == float32:
        return operand.src[0]
    return operand


def _spread(shapes: list[tuple[int, int, int]], product: Node, n_axis: int, m_axis: int,
            units: int = 0) -> list[tuple[int, int, int]]:
    """`shapes` in the order to prefer them for `product`: blocks no wider than its columns; then, where the device's
    compute `units` are known (warpgroup shapes), the least waves of blocks times the blocks' width weighed by
    COLUMN_COST (the earlier shape where that ties; FITTED_COLUMNS' shapes only where they tile the columns, and
    not with ZYX_WGMMA_FITTED=0); else those giving at least MIN_BLOCKS blocks of outputs, else
    the most (1021³ in 128 x 256 blocks occupies 32 of the H200's 132 SMs), of shapes other than FITTED_COLUMNS'."""
    columns = product.shape[m_axis]
    narrow = [s for s in shapes if 4 * s[0] <= columns] or shapes

    def blocks(shape: tuple[int, int, int]) -> int:
        return _blocks(product, n_axis, m_axis, 4 * shape[0])
    if units > 0:  # (fitted shapes only where their blocks tile the columns: an edge stores element by element)
        fitted = os.environ.get("ZYX_WGMMA_FITTED") != "0"
        narrow = [s for s in narrow if s[0] not in FITTED_COLUMNS or fitted and columns % (4 * s[0]) == 0]
        return sorted(narrow, key=lambda s: -(-blocks(s) // units) * 4 * s[0] * COLUMN_COST.get(4 * s[0], 1.0))
    narrow = [s for s in narrow if s[0] not in FITTED_COLUMNS] or narrow
    return [s for s in narrow if blocks(s) >= MIN_BLOCKS] or sorted(narrow, key=lambda s: -blocks(s))


def _fits(local_memory: int, columns: int, row_bytes: int, buffers: int, pipelined: bool,
          warpgroup: bool = False, extra: int = 0) -> bool:
    """Whether the tiles of that shape and `extra` bytes fit `local_memory` bytes (padded rows unless `pipelined`; a
    warpgroup plan's two tiles each aligned to wgmma.SWIZZLE_PERIOD at run time, taking up to that much more)."""
    slack = 2 * wgmma.SWIZZLE_PERIOD if warpgroup else 0
    return (buffers * (BLOCK + 4 * columns) * (row_bytes + (0 if pipelined else PAD_BYTES)) + slack + extra
            <= local_memory)


def feasible_on_tensor_cores(choice: Choice, local_memory: int) -> bool:
    """Whether a tensor_cores choice's tiles fit `local_memory` bytes and its buffers suit its staging: one or two
    through registers (double buffering), two to four pipelined; warpgroup products pipelined in 128-byte rows, in
    ping-pong PINGPONG_SHAPE unsplit."""
    pipelined, buffers, warpgroup = bool(choice["pipelined"]), choice["buffers"], bool(choice["warpgroup"])
    if warpgroup and (not pipelined or choice["row_bytes"] != wgmma.ROW_BYTES):
        return False
    if choice["warpgroup"] == PINGPONG:
        shape = (choice["columns"], choice["row_bytes"], buffers)
        return shape == PINGPONG_SHAPE and choice["split"] == 1 and _fits(local_memory, *shape, True, True)
    if buffers > 4:
        return False
    if not warpgroup and choice["columns"] not in WARP_COLUMNS:
        return False
    return (buffers >= 2 if pipelined else buffers <= 2) and _fits(local_memory, choice["columns"],
                                                                   choice["row_bytes"], buffers, pipelined, warpgroup)


def tensor_core_options(local_memory: int, pipelined: bool, warpgroup: bool = False,
                        splits: tuple[int, ...] = (1,), pingpong: bool = False) -> Options:
    """The values a search may try for a product on tensor cores: of each parameter those some feasible combination
    takes (`pipelined`: whether the kernel can have a pipeline, some operand copied by cp.async; `warpgroup`:
    whether its heuristics' plan is a warpgroup one: the search may then try warps too, and ping-pong where
    `pingpong` (16-bit operands); `splits`: of its reduced axis across groups, split.split_options)."""
    warpgroups = ((0, 1, PINGPONG) if pingpong else (0, 1)) if pipelined and warpgroup else (0,)
    family = {**FAMILIES["tensor_cores"], "pipelined": (0, 1) if pipelined else (0,), "warpgroup": warpgroups,
              "split": splits}
    names = sorted(family)
    possible = [dict(zip(names, values)) for values in itertools.product(*(family[name] for name in names))
                if feasible_on_tensor_cores(Choice.of("tensor_cores", **dict(zip(names, values))), local_memory)]
    return tuple((name, tuple(v for v in family[name] if any(c[name] == v for c in possible))) for name in names)


def _forced_shape() -> Optional[tuple[int, int, int]]:
    """The shape ZYX_TC_SHAPE="warp columns,row bytes,buffers" asks for (to measure it, whatever the device's local
    memory), if set."""
    text = os.environ.get("ZYX_TC_SHAPE")
    if not text:
        return None
    shape = tuple(int(v) for v in text.split(",") if v.strip().isdigit())
    if len(shape) != 3 or shape[0] not in (32, 64) or shape[1] not in (64, 128) or not 1 <= shape[2] <= 8:
        raise ValueError(f"ZYX_TC_SHAPE={text!r}: expected warp columns (32 or 64), bytes of each row a slice stages "
                         f"(64 or 128) and buffers (1 to 8; a pipeline takes 2 or more), as in 32,64,3")
    return shape  # type: ignore[return-value]


def lower_tensor_cores(root: Node, materialized: dict[int, Node], produced: set[int], product: Optional[Node],
                       kinds: tuple[str, ...], local_memory: int, stored_apart: frozenset, param_limit: int,
                       choice: Optional[Choice] = None, compute_units: int = 0,
                       pingpong: bool = True) -> Optional[tuple[LoweredKernel, Kernel, TensorCorePlan]]:
    """The kernel computing `root`'s product on tensor cores, the lowering it came from and its plan (`choice`'s
    where it can be lowered, else the heuristics'), or None where it is not planned there: a pipeline where a 16-bit
    operand is copied by cp.async (unless ZYX_TC_PIPELINE=0): by warpgroups where `kinds` has "wgmma", else by
    warps; else operands staged through registers, double-buffered where local memory allows. `compute_units`: the
    device's, for warpgroup products in persistent groups (warp_roles.resident_groups). The heuristics' ping-pong
    plan (unless not `pingpong`) is planned again without it where its producer cannot form persistent groups
    (copies under 16 bytes): a lone warpgroup copying and multiplying would be slower than either."""
    piped = os.environ.get("ZYX_TC_PIPELINE") != "0"
    attempts = [(True, None, True)] if piped and WGMMA in kinds else []
    attempts += [(pipelined, None, False) for pipelined in ((True, False) if piped else (False,))]
    if choice is not None:
        attempts.insert(0, (bool(choice["pipelined"]), choice, bool(choice["warpgroup"])))
    for pipelined, chosen, warpgroup in attempts:
        plan = plan_tensor_cores(root, product, kinds, local_memory, pipelined, chosen, warpgroup,
                                 compute_units, pingpong, materialized)
        if plan is None or (pipelined and plan.kind == "tf32" and not plan.warpgroup):  # (warps: TF32 rounded)
            continue
        try:
            lowered = TensorCoreLowering(root, materialized, produced, plan, stored_apart, param_limit).lower()
        except NotCopied:
            continue
        if not pipelined:
            return lowered, (double_buffer(lowered.ir) if plan.buffers == 2 else None) or lowered.ir, plan
        round_tiles = os.environ.get("ZYX_TF32_ROUND_TILES") != "0"
        roles = _warp_roles(lowered.ir, plan, round_tiles, compute_units) if plan.warpgroup else None
        if roles is None and plan.pingpong and chosen is None and os.environ.get("ZYX_WGMMA_PRODUCER") != "0":
            return lower_tensor_cores(root, materialized, produced, product, kinds, local_memory, stored_apart,
                                      param_limit, choice, compute_units, pingpong=False)
        kernel = roles or pipeline(lowered.ir, plan.buffers, round_tiles)
        if kernel is not None and plan.warpgroup and os.environ.get("ZYX_WGMMA_PAIRED_STORES") != "0":
            kernel = paired_loads(paired_stores(kernel))  # (bf16 16384x768x3072 on an H100: 249 -> 411 TFLOP/s)
        if kernel is not None:
            return lowered, kernel, plan
    return None


def _warp_roles(kernel: Kernel, plan: TensorCorePlan, round_tiles: bool, units: int) -> Optional[Kernel]:
    """A warpgroup product with a producer warpgroup (transforms/warp_roles.py) unless ZYX_WGMMA_PRODUCER=0; its
    consumers keep one batch in flight unless ZYX_WGMMA_WAIT_ONE=0 and, where their a lies in registers (TF32: the
    batch in flight still reads them while the next slice's are loaded, so ptxas keeps both sets), take registers
    from the producer. The producer hands each landed slice over before it refills a buffer (on the H200 TF32 4096³
    ran 267 TFLOP/s so against 209 the other way, bfloat16 8192³ the same: bench/GPU.md); ZYX_WGMMA_EARLY_HAND_OVER=0
    refills first. 16-bit products with more blocks than `units` take them in persistent groups; TF32's do not (on
    an H100 TF32 2000 x 777 x 4000 in a @ b.T came out wrong so, its cause not found and a group a block unmeasured
    there at that shape: bench/GPU.md, session 47).

    float16 consumers keep no batch in flight: on the H200 (driver 580.159.04) a float16 product with k >= 2048 (a
    loop of slices) and a batch in flight came out wrong, its last slice only ~70 % counted, as if the epilogue's
    float16 conversions read accumulators the last batch was still writing (128 x 4096 x 128, both hand-over
    orders); waiting for each batch made it right (4096^3 561 TFLOP/s, 443 without a producer), and bfloat16's
    epilogues are right with the batch in flight (bench/GPU.md, twelfth session)."""
    if os.environ.get("ZYX_WGMMA_PRODUCER") == "0":
        return None
    wait_one = os.environ.get("ZYX_WGMMA_WAIT_ONE") != "0" and plan.kind != "f16"
    return warp_roles(kernel, plan.buffers, wait_one, plan.right_in_registers, round_tiles,
                      os.environ.get("ZYX_WGMMA_EARLY_HAND_OVER") != "0", units if plan.kind != "tf32" else 0,
                      plan.pingpong)


def _copy_position(flat: Expr, per_row: int, width: int, along_k: bool) -> tuple[Expr, Expr]:
    """(row, k) of the first element of copy `flat` of a slice (copies of `width` elements, `per_row` to a row of
    the tile; neighbouring items take neighbouring copies): along k, a row's copies one after another, else a k's.
    Copies of one element along k (4 bytes: an operand lying across k, x.T, whose wider copies along k do not
    apply) go 8 rows by 4 k to a warp instead, the warps of a group at successive 4 k: where rows lie next to each
    other in memory a warp reads 4 whole 32-byte sectors (a row's 32 k would lie in 32 sectors) and writes 32
    distinct banks (the swizzle puts 8 rows' same 16-byte chunk in 8 bank groups), and an item's k stays the same
    from copy to copy (where the group's warps cover the row's k: one swizzled place per item, the copies 8 rows
    apart)."""
    if along_k and width == 1:
        lane, warp, groups = flat % WARP, flat // WARP, per_row // 4
        return (warp // groups) * 8 + lane % 8, (warp % groups) * 4 + lane // 8
    return (flat // per_row, flat % per_row * width) if along_k else (flat % per_row * width, flat // per_row)


_WARPGROUPS_BUILD: dict[int, bool] = {}


def warpgroup_probe_source() -> str:
    """A kernel of one m64n8k16 warpgroup product (what warpgroups_build builds)."""
    acc = tuple(Reg(f"acc{i}", float32) for i in range(4))
    product = WarpgroupMma(acc, "tile", Expr(0), "tile", Expr(wgmma.ROWS * wgmma.ROW), 8, "bf16")
    body = "\n  ".join(STATEMENTS[type(s)](s) for s in (WarpgroupFence(), product, WarpgroupCommit(), WarpgroupWait(0)))
    return (f"__kernel void zyx_wgmma_probe(__global float* out) {{\n  __local ushort tile[{2 * wgmma.ROWS * wgmma.ROW}] "
            f"__attribute__((aligned(16)));\n  float {', '.join(f'{a.name} = 0.0f' for a in acc)};\n  {body}\n"
            f"  out[get_local_id(0)] = {' + '.join(a.name for a in acc)};\n}}\n")


def warpgroups_build(runtime: object) -> bool:
    """Whether `runtime`'s OpenCL (NVIDIA's, compute capability 9.x) builds a warpgroup product through the PTX
    patch (ptx_patch.py): a driver whose compiler or PTX loader would reject it keeps the warps' products instead of
    failing every half-precision product. Asked once per device and process, through the kernel cache: a warm
    start loads the probe's binary (the loader's check) instead of compiling it (0.3-0.4 s with NVIDIA's)."""
    from .cache import default_cache  # (pyopencl: only devices with a runtime get here)
    device = getattr(runtime, "device", None)
    if device is None:
        return False
    key = device.int_ptr
    if key not in _WARPGROUPS_BUILD:
        source = warpgroup_probe_source()
        try:
            cache = default_cache()
            cache.commit(cache.build(runtime.context, device, source))  # type: ignore[attr-defined]
            # (stored now: it is never launched, and the cache stores a binary after its program's first launch)
            _WARPGROUPS_BUILD[key] = True
        except Exception:  # KernelBuildError, or a driver error loading the PTX
            _WARPGROUPS_BUILD[key] = False
    return _WARPGROUPS_BUILD[key]


class TensorCoreLowering(LocalTileLowering):
    """LocalTileLowering whose items are the lanes of 8 warps, each lane holding the accumulators of its mma
    fragments."""

    plan: TensorCorePlan

    @property
    def _lane(self) -> Expr:
        return self.lid % WARP

    def _warp_corner(self) -> tuple[Expr, Expr]:
        """Where the item's warp's outputs start in the block, along n and m."""
        warp = self.lid // WARP
        return (warp // 4) * WARP_ROWS, (warp % 4) * self.plan.warp_columns

    def _block(self, grid: tuple[int, ...]) -> Index:
        """A warpgroup plan's groups take the blocks of each product in bands of `_band` rows of blocks, down each
        column of the band before the next: the groups running at once share their slices of both operands in L2
        (the probe's 650 TFLOP/s at bfloat16 8192³ were measured in bands of 8). A batched product's rows of blocks
        count as one column, batch after batch (`x @ w.T` of x [16, 1024, 768]: 128 rows of blocks, not 16 times
        8), so that a band reads each slice of a weight shared by the batch once. Other plans: row-major."""
        n_axis, m_axis = self.plan.n_space_axis, self.plan.m_space_axis
        rows, columns = grid[n_axis], grid[m_axis]
        others = [a for a in range(len(grid)) if a not in (n_axis, m_axis)]
        all_rows = rows * math.prod(grid[a] for a in others)
        band = _band(all_rows)
        if not self.plan.warpgroup or band == 1:
            return super()._block(grid)
        gid = Expr.var("gid", self.groups)
        inside = gid % (band * columns)
        row = gid // (band * columns) * band + inside % band
        cell = dict(zip(others, unravel(row // rows, tuple(grid[a] for a in others))))
        cell[n_axis], cell[m_axis] = row % rows, inside // band
        return tuple(cell[a] for a in range(len(grid)))

    def _element_offsets(self) -> list[tuple[Expr, Expr]]:
        """The mma accumulator layout: in tile (i, j) lane l holds rows l // 4 and l // 4 + 8, columns 2·(l % 4) and
        the next, in the order c0 c1 (first row) c2 c3 (second). A warpgroup plan's: those of each m64 tile of rows
        its warpgroup multiplies (`_row_tiles`), each item's registers as wgmma.accumulator_position says."""
        if self.plan.right_in_registers:  # (transposed: accumulator rows are columns, columns rows)
            places = [wgmma.accumulator_position(self.lid % wgmma.WARPGROUP, r) for r in range(BLOCK // 2)]
            return [(row, self._register_column(piece, column)) for piece in range(len(self._register_columns()))
                    for column, row in places]
        if self.plan.warpgroup:
            places = [wgmma.accumulator_position(self.lid % wgmma.WARPGROUP, r) for r in range(self.plan.block_m // 2)]
            return [(first + row, column) for first in self._row_tiles() for row, column in places]
        rows, columns = self._warp_corner()
        group, pair = self._lane // 4, (self._lane % 4) * 2
        return [(rows + i * 16 + group + 8 * (c // 2), columns + j * 8 + pair + c % 2)
                for i, j, c in itertools.product(range(WARP_ROWS // 16), range(self.plan.warp_columns // 8),
                                                   range(4))]

    def _lower_outputs(self) -> None:
        """Staged (`plan.staged`): each pass over STAGED_COLUMNS of the block's columns stores the items' pairs of
        outputs there into local memory and waits for the consumers; then either (ZYX_WGMMA_STAGED=1) the items
        store the rows 16 bytes an item, neighbouring items along a row (the stage's rows swizzled as the tiles are:
        the 8 rows a warp's pair stores reach land in 8 bank groups) and wait again before the next pass, or (2)
        each of the first BLOCK items hands its row to the asynchronous proxy (`BulkStore`: rows padded by 16 bytes
        instead, which it reads as they lie), which stores it while the consumers go on; the next pass, and the
        block's end, wait until the rows have been read."""
        if not self.plan.staged:
            if not self._stored_by_quads():
                super()._lower_outputs()
            return
        plan, root = self.plan, self.root
        bulk = plan.staged == BULK_STAGED
        stage = self.names.fresh("staged")
        row_length = STAGED_COLUMNS + (VECTOR if bulk else 0)
        self._scopes[0].insert(0, LocalArray(stage, root.dtype, BLOCK * row_length, aligned=True, alignment=128))
        offsets = self._element_offsets()
        values = self._root_values()
        out = self._output(root)
        wait = NamedBarrier(Expr(STAGED_BARRIER), plan.group, True)
        swizzle = 0 if bulk else STAGED_COLUMNS
        for first in range(0, plan.block_m, STAGED_COLUMNS):
            if bulk and first:
                self._stores += [BulkWait(0), wait]
            for element in range(0, len(offsets), 2):  # (registers 2i and 2i + 1: neighbouring columns)
                row, column = offsets[element]
                if column.lo // STAGED_COLUMNS * STAGED_COLUMNS != first:
                    continue
                pair = Reg(self.names.fresh("staged_pair"), values[element].dtype, 2)
                self._stores += [Pack(pair, (values[element], values[element + 1])),
                                 LocalStore(stage, row * row_length + column - first, pair, dtype=root.dtype,
                                            swizzle=swizzle)]
            if bulk:
                self._stores += [AsyncProxyFence(), wait, *self._bulk_rows(out, stage, first, row_length)]
            else:
                self._stores += [wait, *self._stored_rows(out, stage, first), wait]
        if bulk:
            self._stores.append(BulkWait(0))

    def _stored_by_quads(self) -> bool:
        """Whether the outputs were stored 16 bytes an item, transposed across quads, and the epilogue's bfloat16
        inputs read so (quads.py)."""
        plan, root = self.plan, self.root
        if not plan.warpgroup or plan.right_in_registers or \
                not quad_stores_wanted(root.dtype, plan.m_space_axis, self.space):
            return False
        values = self._root_values()
        rows = [row for row, _ in self._element_offsets()]
        lines = quad_stores(values, rows, self._lane % 4, plan.block_m, self._output(root), root.dtype,
                            self._staged_place, self.names.fresh)
        if lines is None:
            return False
        if not any(self.guards) and quad_loads_wanted():  # (the blocks divide the output: every chunk read lies in it)
            self._scopes[0] = quad_loads(self._scopes[0], self.positions, rows, self._lane % 4, plan.block_m,
                                         self._staged_place, self.names.fresh)
        self._stores += lines
        return True

    def _root_values(self) -> list[Operand]:
        """The root's value at each of the item's outputs, lowered in their order (before any is stored)."""
        values = []
        for element in range(len(self.elements)):
            self._element = element
            values.append(self.value(self.root, *self._element_read(element)).operand)
        return values

    def _staged_place(self, row: Expr, column: Expr) -> tuple[Expr, Cond]:
        """Where output (row, column) of the block lies in the root's buffer, and the guard that it exists."""
        exact, guard = self._placed(row, column)
        return linear(tuple(exact.get(a, c) for a, c in enumerate(self.corner)), self.space), guard

    def _stored_rows(self, out: str, stage: str, first: int) -> list:
        """The pass's rows from the swizzled stage, 16 bytes an item (8 elements: the buffer's row ends are whole)."""
        chunks, items, lines = STAGED_COLUMNS // VECTOR, self.plan.group, []
        for copy in range(BLOCK * chunks // items):
            flat = self.lid + copy * items
            row, column = flat // chunks, flat % chunks * VECTOR
            bits = Reg(self.names.fresh("staged_bits"), int16, VECTOR)
            index, guard = self._staged_place(row, first + column)
            store = Store(out, index, bits, self.root.dtype, "bits")
            lines += [LocalLoad(bits, stage, row * STAGED_COLUMNS + column, swizzle=STAGED_COLUMNS),
                      If(guard, (store,)) if guard else store]
        return lines

    def _bulk_rows(self, out: str, stage: str, first: int, row_length: int) -> list:
        """Item r < BLOCK hands row r of the pass to the asynchronous proxy: its columns up to the buffer's end."""
        row = Expr.clamped(self.lid, 0, BLOCK - 1)
        index, guard = self._staged_place(row, Expr(first))
        m_axis = self.plan.m_space_axis
        columns = Expr.minimum(Expr(self.space[m_axis] - first) - self.corner[m_axis], STAGED_COLUMNS)
        mine = ((self.lid, "lt", BLOCK),) + guard
        return [BulkStore(out, index, stage, row * row_length, columns * self.root.dtype.itemsize, mine), BulkCommit()]

    def _reduce(self, node: Node) -> list[_Value]:
        """One loop over the slices of k: the group stages both operands' slice in local memory, waits, each warp
        multiplies it into its accumulators, the group waits again."""
        if node is not self.plan.product:
            return Lowering._reduce(self, node)
        plan = self.plan
        steps = -(-node.src[0].shape[node.arg[0]] // plan.bk)
        self._longest_reduction = max(self._longest_reduction, node.src[0].shape[node.arg[0]])
        tiles = (self.names.fresh("tile_a"), self.names.fresh("tile_b"))
        accumulators = [Reg(self.names.fresh("acc"), float32) for _ in self.elements]
        step = self.names.fresh("k")
        self._open_loop(step, steps)
        stores, (left_across, across) = self._stage(node, Expr.var(step, steps) * plan.bk, tiles)
        if plan.warpgroup and not plan.right_in_registers:
            products = self._warpgroup_products(tiles, accumulators, (left_across, across))
        else:  # (the left tile lies along k)
            multiply = self._register_products if plan.right_in_registers else self._multiply_fragments
            products = multiply(tiles, accumulators, across)
        body = self._close_loop() + stores + [Barrier()] + products + [Barrier()]
        lines = self._scopes[0]
        alignment = wgmma.SWIZZLE_PERIOD if plan.warpgroup else 16
        lines += [LocalArray(tile, plan.stored, self._tile_elements(rows, tile_across), aligned=True,
                             alignment=alignment)
                  for tile, rows, tile_across in ((tiles[0], BLOCK, left_across), (tiles[1], plan.block_m, across))]
        lines += [Define(acc, Const(0.0, float32)) for acc in accumulators]
        lines.append(Loop(step, steps, tuple(body)))  # (pipelined or double-buffered: lower_tensor_cores)
        return [_Value(acc, 0) for acc in accumulators]

    def _stage(self, node: Node, k_base: Expr, tiles: tuple[str, str]) -> tuple[list, tuple[bool, bool]]:
        """Lower this item's share of both operands' slice at `k_base`; return the stores into the tiles, and whether
        the left and the right tile lie across k ([k][row], [k][column]: MN-major in a warpgroup plan, the right one
        read by transposing ldmatrix in a warp plan) instead of along it ([row][k], [column][k]).

        A half-precision operand read straight from a buffer where 8 elements lie one after another along k (the
        left operand, and a transposed right one: `x @ w.T`) is copied 16 bytes at a time into rows along k; a
        right operand whose 8 consecutive elements lie along its columns (row-major) 16 bytes at a time into rows
        along its columns (past the end of k, zeros; past the ends of rows and columns, the last ones), where the
        8 never straddle an end, and in a warpgroup plan a left operand whose 8 lie along its rows (`x.T @ y`,
        wgmma's a transposed: `_left_orientations`) likewise; any other operand (fused prologues, views, such edges,
        TF32 on warps) element by element into rows along k, neighbouring items reading neighbouring k of the left
        operand and neighbouring columns of the right, as row-major operands lie. A pipelined plan copying neither
        operand raises NotCopied before staging anything element by element (the slowest part of lowering a product
        with a fused prologue)."""
        plan = self.plan
        n_axis, m_axis = matmul_axes(node)  # type: ignore[misc]
        k_axis = node.arg[0]
        corner = unravel(linear(self.corner, self.space), node.shape)
        left, right = (multiplied(side) for side in node.src[0].src)
        place = (corner, k_base, k_axis)
        copied = self._copied(left, n_axis, BLOCK, tiles[0], place, self._left_orientations)
        right_copied = (self._copied(right, m_axis, plan.block_m, tiles[1], place, (True, False)) if plan.pipelined
                        else None)
        if plan.pipelined and copied is None and right_copied is None:
            raise NotCopied(node)  # (before either operand is staged element by element, for nothing)
        stores = copied[0] if copied else self._elements(left, n_axis, BLOCK, tiles[0], place,
                                                         k_fastest=self._runs_along_k(left, n_axis, k_axis, True))
        left_across = copied is not None and not copied[1]
        if not plan.pipelined:  # (after the left operand's: copies through registers emit their loads)
            right_copied = self._copied(right, m_axis, plan.block_m, tiles[1], place, (True, False))
        if right_copied is not None:
            return stores + right_copied[0], (left_across, not right_copied[1])
        return stores + self._elements(right, m_axis, plan.block_m, tiles[1], place,
                                       k_fastest=self._runs_along_k(right, m_axis, k_axis, False)), (left_across, False)

    @property
    def _left_orientations(self) -> tuple[bool, ...]:
        """How the left operand may be copied (along k or not, `_copied`): also across k where wgmma reads it
        through a descriptor transposed (imm-trans-a: 16-bit operands only; a TF32 product's left tile is its b,
        K-major), else along k only (ldmatrix reads the warps' left fragments from rows along k)."""
        transposable = self.plan.warpgroup and not self.plan.right_in_registers
        return (True, False) if transposable else (True,)

    def _tile_elements(self, rows: int, across: bool) -> int:
        """Elements of one stage of a tile of `rows` rows: a slice of k per row along k, `rows` per k across it."""
        plan = self.plan
        return plan.bk * plan.layout(rows).stride if across else rows * plan.layout(plan.bk).stride

    def _runs_along_k(self, operand: Node, axis: int, k_axis: int, left: bool) -> bool:
        """Whether neighbouring items staging `operand` element by element take neighbouring k (else rows along
        `axis`): the way more of the reads under it run (operand_layout.runs_along; a tie: the left operand's k, as
        a row-major left operand lies, the right one's rows). A weight gradient's xᵀ, whose tokens (k) are its
        rows, read a k per item, had a warp read 32 rows 2 bytes each: GPT-2's ran at 26 TFLOP/s on the H200."""
        return runs_along(operand, (k_axis, axis) if left else (axis, k_axis), self.materialized) == k_axis

    def _elements(self, operand: Node, axis: int, rows: int, tile: str, place: tuple, k_fastest: bool) -> list:
        """Element by element into rows along k, neighbouring items at neighbouring k (`k_fastest`) or rows."""
        plan, (corner, k_base, k_axis) = self.plan, place
        layout = plan.layout(plan.bk)
        stores = []
        for copy in range(rows * plan.bk // plan.group):
            flat = self.lid + copy * plan.group
            row, k = (flat // plan.bk, flat % plan.bk) if k_fastest else (flat % rows, flat // rows)
            value = self._operand(operand, corner, {axis: row, k_axis: k_base + k})
            stores.append(LocalStore(tile, row * layout.stride + k, self._staged(value), dtype=plan.stored,
                                     swizzle=layout.swizzle))
        return stores

    def _copied(self, operand: Node, axis: int, rows: int, tile: str, place: tuple,
                orientations: tuple[bool, ...]) -> Optional[tuple[list, bool]]:
        """The widest copies of `operand` that apply (`_copies`) in any of `orientations` (along k or not, the
        first where widths tie), and that orientation: of 16 bytes, or in a pipelined plan of 8 or 4 (cp.async
        takes rows aligned to those: a product with k = 700 has rows of 1400 bytes; a float32 operand is copied
        4 bytes at a time either way, but 16 bytes in only one)."""
        vector = COPY_BYTES // self.plan.stored.itemsize
        widths = (vector, vector // 2, vector // 4) if self.plan.pipelined else (vector,)
        tried = ((self._copies(operand, axis, rows, tile, place, along_k, width), along_k)
                 for width in widths for along_k in orientations)
        return next(((copies, along_k) for copies, along_k in tried if copies is not None), None)

    def _copies(self, operand: Node, axis: int, rows: int, tile: str, place: tuple, along_k: bool,
                width: int) -> Optional[list]:
        """Copies of `width` elements (16 bytes through registers) into rows along k (`along_k`) or along `axis` (a
        row of `rows` elements per k): AsyncCopies in a pipelined plan, else loads into registers and stores; None,
        with nothing emitted, where the operand's `width` consecutive elements that way are not consecutive in one
        buffer (in a pipelined plan, aligned to their size) or would straddle an end (`_inside`)."""
        plan, (corner, k_base, k_axis) = self.plan, place
        layout = plan.layout(plan.bk if along_k else rows)
        per_row = layout.length // width
        loads, stores = [], []
        for copy in range(rows * plan.bk // width // plan.group):
            row, k = _copy_position(self.lid + copy * plan.group, per_row, width, along_k)
            along = k_axis if along_k else axis
            inside = self._inside(operand, corner, {axis: row, k_axis: k_base + k}, along, width)
            if inside is None:
                return None
            offsets, guard = inside
            load = self._consecutive(operand, corner, offsets, along, width)
            if load is None or (plan.pipelined and not aligned(load.index, width)):
                return None
            index = plan.tile_index(row, k, not along_k)
            if plan.pipelined:
                stores.append(AsyncCopy(tile, index, load.buffer, load.index, guard, layout.swizzle, width,
                                        plan.stored.itemsize))
                continue
            bits = Reg(self.names.fresh("bits"), int16, VECTOR)
            loads.append(dataclasses.replace(load, out=bits, mode="bits", guard=guard))
            stores.append(LocalStore(tile, index, bits, dtype=plan.stored))
        self._scopes[-1].extend(loads)
        return stores

    def _inside(self, operand: Node, corner: Index, offsets: dict[int, Expr], along: int,
                elements: int) -> Optional[tuple[dict[int, Expr], Cond]]:
        """Offsets of a copy of `elements` along axis `along` moved to where all of them exist, and the guard under
        which they count: past the end of k the copy stages zeros (the guard fails), past the end of rows or columns
        it copies the last ones (their outputs are never stored); None where they may straddle an end (its size is
        not a multiple of `elements`). Rows past the end of the other axis are clamped by `_operand`."""
        k_axis, moved, guard = self.plan.product.arg[0], dict(offsets), ()
        for axis, offset in offsets.items():
            size, width = operand.shape[axis], elements if axis == along else 1
            exact = corner[axis] + offset
            if exact.hi + width <= size or (axis != along and axis != k_axis):
                continue
            if size % width:
                return None
            moved[axis] = Expr.minimum(exact // width, size // width - 1) * width - corner[axis]  # (whole vectors)
            guard += ((exact, "lt", size),) if axis == k_axis else ()
        return moved, guard

    def _consecutive(self, operand: Node, corner: Index, offsets: dict[int, Expr], axis: int,
                     width: int) -> Optional[Load]:
        """The Load reading `operand` at `offsets` where it is a buffer element of the staged dtype whose next
        `width` - 1 along `axis` are the next elements of the same buffer, none past an end (all are lowered and
        compared: an edge clamps or pads them, a permuting view reorders them); nothing it lowered is kept either
        way. (TF32 on warps: None, its operands are rounded where staged.)"""
        if self.plan.kind == "tf32" and not self.plan.warpgroup:
            return None
        known, marks = set(self._values), [len(scope) for scope in self._scopes]
        reads = [self._defining_load(self._operand(operand, corner, {**offsets, axis: offsets[axis] + step}))
                 for step in range(width)]
        for scope, mark in zip(self._scopes, marks):  # (a single slice's values lie outside its loop)
            del scope[mark:]
        for key in set(self._values) - known:
            del self._values[key]
        first = reads[0]
        if any(read is None or read.buffer != first.buffer or read.index - first.index != Expr(step)
               for step, read in enumerate(reads)):
            return None
        return first

    def _defining_load(self, value: Operand) -> Optional[Load]:
        """The unguarded element Load of the staged dtype defining `value`, if that is what defines it."""
        found = self._load_position(value)
        load = None if found is None else found[0][found[1]]
        return None if load is None or load.guard else load

    def _load_position(self, value: Operand) -> Optional[tuple[list, int]]:
        """The scope (innermost first) and the position in it of the element Load of the staged dtype (half
        precision, or float32 of a TF32 warpgroup plan) defining `value`, if one does."""
        for scope in reversed(self._scopes):
            position = next((p for p in range(len(scope) - 1, -1, -1)
                             if isinstance(scope[p], Load) and scope[p].out == value), None)
            if position is not None:
                staged = scope[position].mode == "element" and value.dtype == self.plan.stored
                return (scope, position) if staged else None
        return None

    def _staged(self, value: Operand) -> Operand:
        """What is stored of an operand value: float32 rounded to TF32, half precision as its bits (`_bits`)."""
        if self.plan.kind != "tf32":
            return self._bits(value)
        out = Reg(self.names.fresh("tf"), float32)
        self._scopes[-1].append(Alu(out, ROUND_TF32, (value,)))
        return out

    def _bits(self, value: Operand) -> Operand:
        """A half-precision operand read straight from a buffer, read instead as its stored bits (the load becomes
        a "bits" Load), so staging copies it rather than converting it to float and back; any other operand as
        it is. (Staged values have no other reader.)"""
        found = self._load_position(value)
        if found is None:
            return value
        scope, position = found
        bits = Reg(self.names.fresh("bits"), int16)
        scope[position] = dataclasses.replace(scope[position], out=bits, mode="bits")
        return bits

    def _warpgroup_products(self, tiles: tuple[str, str], accumulators: list[Reg],
                            across: tuple[bool, bool]) -> list:
        """Per k16 step of the slice one wgmma of each of the warpgroup's m64 tiles of rows by the block's columns
        (each tile read along k or, `across`, MN-major), the batch waited for before the slice's closing barrier
        (its buffer is refilled after it)."""
        plan, (left, right) = self.plan, across
        share = plan.block_m // 2  # accumulators of an m64 tile of rows
        products = [WarpgroupMma(tuple(accumulators[t * share:(t + 1) * share]), tiles[0],
                                 plan.tile_index(first, Expr(k), left), tiles[1],
                                 plan.tile_index(Expr(0), Expr(k), right), plan.block_m, plan.kind, right,
                                 plan.leading_bytes(right), a_mn_major=left, a_leading=plan.leading_bytes(left))
                    for k in range(0, plan.bk, plan.k_step) for t, first in enumerate(self._row_tiles())]
        return [WarpgroupFence(), *products, WarpgroupCommit(), WarpgroupWait(0)]

    def _row_tiles(self) -> list[Expr]:
        """The first row of each m64 tile of the block's rows this item's warpgroup multiplies: 64·g for warpgroup g,
        or (ping-pong: one warpgroup) 0 and 64."""
        tiles = self.plan.row_tiles
        return [((self.lid // wgmma.WARPGROUP) * tiles + t) * wgmma.ROWS for t in range(tiles)]

    def _register_columns(self) -> list[Expr]:
        """The first of each 64 columns of the block this item's warpgroup multiplies in a transposed product: its
        half of the block's columns."""
        half = self.plan.block_m // 2
        return [(self.lid // wgmma.WARPGROUP) * half + first for first in range(0, half, wgmma.ROWS)]

    @property
    def _vector_registers(self) -> bool:
        """Whether a transposed TF32 product's rows are permuted (`_register_column`) so that a tile lying across k
        reads its a registers a vector at a time (ZYX_TF32_VECTOR_A=1)."""
        return os.environ.get("ZYX_TF32_VECTOR_A") == "1"

    def _register_column(self, piece: int, row: Expr) -> Expr:
        """The block column row `row` (0-63, an Expr) of a transposed TF32 product's wgmma `piece` stands for: the
        piece's first column + row, or (`_vector_registers`) permuted so that an item's registers at one k (rows r
        and r + 8 of every piece) are 2·pieces neighbouring columns, one vector load from a tile lying across k: row
        16w + 8h + i is column 2·pieces·(8w + c(i)) + 2·piece + h of the warpgroup's, c(i) = i / 2 + 4 (i % 2)
        putting the 4 k rows an 8-item phase of a 16-byte load reads in 8 distinct bank groups (any bijection
        computes the same product: the accumulators are stored by the same map)."""
        if not self._vector_registers:
            return self._register_columns()[piece] + row
        pieces = len(self._register_columns())
        w, h, i = row // 16, row % 16 // 8, row % 8
        first = (self.lid // wgmma.WARPGROUP) * (self.plan.block_m // 2)
        return first + 2 * pieces * (8 * w + i // 2 + 4 * (i % 2)) + 2 * piece + h

    def _register_products(self, tiles: tuple[str, str], accumulators: list[Reg], across: bool) -> list:
        """A TF32 slice multiplied transposed: per k8 step and 64 of the warpgroup's columns, one wgmma of those
        columns of the right tile (read into registers, rounded to TF32) by all BLOCK rows of the left tile (read
        K-major through its descriptor), into 64 accumulators; the batch waited for before the slice's closing
        barrier (`across`: the right tile lies as [k][column] in atoms, else as [column][k])."""
        plan = self.plan
        swizzle = plan.layout(plan.bk).swizzle  # (a warpgroup plan's tiles: 128-byte rows either way)
        item = self.lid % wgmma.WARPGROUP
        pieces, vector = len(self._register_columns()), self._vector_registers and across
        loads, products = [], []
        for step in range(plan.bk // plan.k_step):
            values: dict[tuple[int, int], Operand] = {}  # (piece, register) -> its value as read
            for piece, register in itertools.product(range(pieces), range(4)):
                if (piece, register) in values:
                    continue
                row, k = wgmma.fragment_position(item, register)
                column, k = self._register_column(piece, row), k + step * plan.k_step
                index = plan.tile_index(column, k, across)
                if vector:  # (registers 0 and 1, 2 and 3: rows r and r + 8 at one k)
                    read = Reg(self.names.fresh("fr"), float32, 2 * pieces)
                    values.update({(p, register + h): Lane(read, f"s{2 * p + h}") for p in range(pieces)
                                   for h in range(2)})
                else:
                    read = values[piece, register] = Reg(self.names.fresh("fr"), float32)
                loads.append(LocalLoad(read, tiles[1], index, swizzle))
            for piece in range(pieces):
                registers = tuple(Reg(self.names.fresh("tf"), float32) for _ in range(4))
                loads += [Alu(rounded, ROUND_TF32, (values[piece, register],))
                          for register, rounded in enumerate(registers)]
                share = tuple(accumulators[piece * BLOCK // 2:(piece + 1) * BLOCK // 2])
                products.append(WarpgroupMma(share, "", Expr(0), tiles[0], Expr(step * plan.k_step), BLOCK, plan.kind,
                                             a_registers=registers))
        fenced = tuple(r for product in products for r in product.a_registers)
        return [*loads, WarpgroupFence(fenced), *products, WarpgroupCommit(), WarpgroupWait(0)]

    def _multiply_fragments(self, tiles: tuple[str, str], accumulators: list[Reg], across: bool) -> list:
        """Per mma step of the slice: the warp's left fragments (one ldmatrix of four 8 x 8 matrices per 16 rows),
        its right fragments (one per 16 columns: two tiles' worth; transposing where the tile lies `across`), then
        an mma per tile of 16 x 8 outputs."""
        plan = self.plan
        half = plan.k_step // 2  # elements of k in one 8 x 8 matrix of 16-bit words
        counter = self.names.fresh("kk")
        k = Expr.var(counter, plan.bk // plan.k_step) * plan.k_step
        rows, columns = self._warp_corner()
        lane = self._lane
        along, right_layout = plan.layout(plan.bk), plan.layout(plan.block_m if across else plan.bk)
        body: list = []
        left = []
        for i in range(WARP_ROWS // 16):  # matrices: rows 0-7 and 8-15 at k, then both at k + half
            out = Reg(self.names.fresh("fa"), uint32, 4)
            index = (rows + i * 16 + lane % 16) * along.stride + k + (lane // 16) * half
            body.append(MatrixLoad(out, tiles[0], index, swizzle=along.swizzle))
            left.append(tuple(Lane(out, f"s{w}") for w in range(4)))
        right = []
        for j in range(0, plan.warp_columns // 8, 2):  # matrices: tile j at k, at k + half, tile j + 1 at both
            out = Reg(self.names.fresh("fb"), uint32, 4)
            if across:  # rows of k: k, k + 8 of tile j, then of tile j + 1
                row = k + lane % 8 + ((lane // 8) % 2) * 8
                index = row * right_layout.stride + columns + j * 8 + (lane // 16) * 8
            else:
                index = (columns + j * 8 + lane % 8 + (lane // 16) * 8) * along.stride + k + ((lane // 8) % 2) * half
            body.append(MatrixLoad(out, tiles[1], index, transposed=across, swizzle=right_layout.swizzle))
            right += [(Lane(out, "s0"), Lane(out, "s1")), (Lane(out, "s2"), Lane(out, "s3"))]
        shape = f"m16n8k{plan.k_step}"
        tiles_of = itertools.product(range(WARP_ROWS // 16), range(plan.warp_columns // 8))
        for t, (i, j) in enumerate(tiles_of):
            body.append(MatrixMultiply(tuple(accumulators[4 * t:4 * t + 4]), left[i], right[j], shape, plan.kind))
        return [Loop(counter, plan.bk // plan.k_step, tuple(body), unroll=True)]

