"""Matrix products on NVIDIA's tensor cores (compute capability 8.0 and newer), through inline PTX in OpenCL C.

A work group of 8 warps (256 items) computes a block of 128 rows by 4·W columns (W = 64, or 32 where local memory is
short). Warp w owns 64 rows (from 64·(w // 4)) by W columns (from W·(w % 4)): 4 x W/8 tiles of 16 x 8 outputs, each
accumulated by one mma.sync per step of the reduced axis (`MatrixMultiply`). Per slice of the reduced axis (128 or
64 bytes of each row: 4 or 2 mma steps) the group stages both operands in local memory as rows along k: [row][k] for
the left operand and [column][k] for the right, so both fragments load with ldmatrix and nothing is transposed
(`MatrixLoad`). Each row is padded by 16 bytes, so the 8 rows one ldmatrix reads fall in 8 distinct 16-byte bank
groups. Wide warp tiles and long slices matter most (a hand-written kernel on the H200, bfloat16 8192³: warps of
64 x 32 and 64-byte slices 174 TFLOP/s, 64 x 64 and 128-byte slices 257).

Operands are staged the way the float32 path (matmul.py) stages them: any fused prologue (a cast, a view, an
elementwise op) is computed per element and rounded to the operand dtype where stored, rows and columns past the
ends read the last ones (their outputs are never stored), a slice past the end of k stages zeros. The epilogue
(bias, activation, the cast of the result) is fused into the stores of the per-element float32 accumulators, and
the slices are double-buffered by the same transform (transforms/double_buffer.py).

Which products: float16 and bfloat16 ones (autocast's), accumulated in float32; float32 ones in TF32 where the
user allowed it (`zyx.set_float32_matmul_precision("high")`, as in PyTorch).
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import dataclass
from typing import Optional

from ..dtypes import DType, float32, int16, uint32
from ..trace.node import Node
from ..trace.ops import Op
from .kernel_ir import (ROUND_TF32, Alu, Barrier, Const, Define, Lane, Load, LocalArray, LocalStore, Loop, MatrixLoad, MatrixMultiply,
                        Operand, Reg)
from .lower import Index, Lowering, _Value, linear, unravel
from .matmul import GROUP, LocalTileLowering, TilePlan, product_axes
from .symbolic import Expr
from .tiling import matmul_axes

BLOCK = 128          # outputs per group along n
WARP = 32
WARP_ROWS = 64       # a warp's outputs along n: 4 mma tiles of 16
PAD_BYTES = 16       # after each staged row
VECTOR = 8           # half-precision elements one 16-byte copy moves
# (warp columns, bytes of each row a slice stages, local buffers): the first that fits the device's local memory.
# Double buffering first: on the H200 (48 KiB) 64 x 32 warps double-buffered ran 3000x700x5000 in bfloat16 at 110
# TFLOP/s and 1021³ at 45, 64 x 64 warps single-buffered at 89 and 26 (8192³: 120 and 126).
SHAPES = ((64, 64, 2), (32, 64, 2), (64, 128, 1), (64, 64, 1), (32, 64, 1))
KINDS = {"bfloat16": "bf16", "float16": "f16", "float32": "tf32"}  # PTX's name of each operand dtype


@dataclass
class TensorCorePlan(TilePlan):
    """A TilePlan whose group multiplies on tensor cores: `kind` names the operands' type in PTX."""

    kind: str = "bf16"
    warp_columns: int = 64  # a warp's outputs along m: mma tiles of 8

    @property
    def block_m(self) -> int:
        return 4 * self.warp_columns

    @property
    def group(self) -> int:
        """Items in the work group: 8 warps (a float32 plan's follow from its block and per-item tile)."""
        return GROUP

    @property
    def k_step(self) -> int:
        """Reduced elements one mma.sync takes: 16 of 16-bit operands (m16n8k16), 8 of TF32 (m16n8k8)."""
        return 8 if self.kind == "tf32" else 16

    @property
    def stride(self) -> int:
        """Elements from one staged row to the next."""
        return self.bk + PAD_BYTES // self.stored.itemsize

    @property
    def stored(self) -> DType:
        return self.product.dtype


def plan_tensor_cores(root: Node, product: Optional[Node], kinds: tuple[str, ...],
                      local_memory: int) -> Optional[TensorCorePlan]:
    """A plan where the kernel's product multiplies two operands of its own dtype, the device runs that dtype on
    tensor cores (`kinds`: "bf16", "f16", "tf32"), the output's axes map onto the kernel's (matmul.py), and the
    staged slices fit `local_memory` bytes (the widest warps and longest slices that do)."""
    if product is None or product.src[0].op is not Op.MUL:
        return None
    kind = KINDS.get(product.dtype.name)
    if kind not in kinds or any(s.dtype != product.dtype for s in product.src[0].src):
        return None
    placed = product_axes(root, product)
    if placed is None:
        return None
    n_axis, m_axis = matmul_axes(product)  # type: ignore[misc]
    if min(product.shape[n_axis], product.shape[m_axis]) < 16:  # a vector, not a matrix: the float path does better
        return None
    fitting = [(w, b, n) for w, b, n in SHAPES if n * (BLOCK + 4 * w) * (b + PAD_BYTES) <= local_memory]
    if not fitting:
        return None
    columns, row_bytes, buffers = fitting[0]
    return TensorCorePlan(product, placed[0], placed[1], BLOCK, 0, placed[2], row_bytes // product.dtype.itemsize,
                          buffers, kind=kind, warp_columns=columns)


def tensor_core_kinds(compute_capability: Optional[tuple[int, int]]) -> tuple[str, ...]:
    """The 16-bit operand types an NVIDIA device of `compute_capability` multiplies on tensor cores with
    m16n8k16 (8.0, Ampere, and newer); none elsewhere or where ZYX_TENSOR_CORES=0. TF32 is the user's choice
    (`zyx.set_float32_matmul_precision`), added where products are scheduled."""
    if compute_capability is None or compute_capability < (8, 0) or os.environ.get("ZYX_TENSOR_CORES") == "0":
        return ()
    return ("bf16", "f16")


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

    def _element_offsets(self) -> list[tuple[Expr, Expr]]:
        """The mma accumulator layout: in tile (i, j) lane l holds rows l // 4 and l // 4 + 8, columns 2·(l % 4) and
        the next, in the order c0 c1 (first row) c2 c3 (second)."""
        rows, columns = self._warp_corner()
        group, pair = self._lane // 4, (self._lane % 4) * 2
        return [(rows + i * 16 + group + 8 * (c // 2), columns + j * 8 + pair + c % 2)
                for i, j, c in itertools.product(range(WARP_ROWS // 16), range(self.plan.warp_columns // 8),
                                                   range(4))]

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
        stores, across = self._stage(node, Expr.var(step, steps) * plan.bk, tiles)
        body = (self._close_loop() + stores + [Barrier()] + self._multiply_fragments(tiles, accumulators, across)
                + [Barrier()])
        right_size = plan.bk * (plan.block_m + PAD_BYTES // 2) if across else plan.block_m * plan.stride
        lines = self._scopes[0]
        lines += [LocalArray(tiles[0], plan.stored, BLOCK * plan.stride, aligned=True),
                  LocalArray(tiles[1], plan.stored, right_size, aligned=True)]
        lines += [Define(acc, Const(0.0, float32)) for acc in accumulators]
        lines.append(Loop(step, steps, tuple(body)))  # (double-buffered by the scheduler where plan.buffers is 2)
        return [_Value(acc, 0) for acc in accumulators]

    def _stage(self, node: Node, k_base: Expr, tiles: tuple[str, str]) -> tuple[list, bool]:
        """Lower this item's share of both operands' slice at `k_base`; return the stores into the tiles, and whether
        the right tile lies across ([k][column], read by transposing ldmatrix) instead of along k ([column][k]).

        A half-precision operand read straight from a buffer where 8 elements lie one after another along k (the
        left operand, and a transposed right one: `x @ w.T`) is copied 16 bytes at a time into rows along k; a
        right operand whose 8 consecutive elements lie along its columns (row-major) 16 bytes at a time into rows
        along its columns; any other operand (fused prologues, edges clamped or padded, TF32) element by element
        into rows along k, neighbouring items reading neighbouring k of the left operand and neighbouring columns of
        the right, as row-major operands lie."""
        plan = self.plan
        n_axis, m_axis = matmul_axes(node)  # type: ignore[misc]
        k_axis = node.arg[0]
        corner = unravel(linear(self.corner, self.space), node.shape)
        left, right = node.src[0].src[0], node.src[0].src[1]
        place = (corner, k_base, k_axis)
        stores = self._copies(left, n_axis, BLOCK, tiles[0], place, along_k=True)
        if stores is None:
            stores = self._elements(left, n_axis, BLOCK, tiles[0], place, k_fastest=True)
        for along_k in (True, False):
            copied = self._copies(right, m_axis, plan.block_m, tiles[1], place, along_k)
            if copied is not None:
                return stores + copied, not along_k
        return stores + self._elements(right, m_axis, plan.block_m, tiles[1], place, k_fastest=False), False

    def _elements(self, operand: Node, axis: int, rows: int, tile: str, place: tuple, k_fastest: bool) -> list:
        """Element by element into rows along k, neighbouring items at neighbouring k (`k_fastest`) or rows."""
        plan, (corner, k_base, k_axis) = self.plan, place
        stores = []
        for copy in range(rows * plan.bk // GROUP):
            flat = self.lid + copy * GROUP
            row, k = (flat // plan.bk, flat % plan.bk) if k_fastest else (flat % rows, flat // rows)
            value = self._operand(operand, corner, {axis: row, k_axis: k_base + k})
            stores.append(LocalStore(tile, row * plan.stride + k, self._staged(value), dtype=plan.stored))
        return stores

    def _copies(self, operand: Node, axis: int, rows: int, tile: str, place: tuple, along_k: bool) -> Optional[list]:
        """16-byte copies into rows along k (`along_k`) or along `axis` (rows of `rows` + 8 elements, one per k);
        None, with nothing emitted, where the operand's 8 consecutive elements that way are not 16 consecutive
        bytes of one buffer."""
        plan, (corner, k_base, k_axis) = self.plan, place
        per_row = (plan.bk if along_k else rows) // VECTOR
        loads, stores = [], []
        for copy in range(rows * plan.bk // VECTOR // GROUP):
            flat = self.lid + copy * GROUP
            row, k = (flat // per_row, flat % per_row * VECTOR) if along_k else (flat % per_row * VECTOR, flat // per_row)
            load = self._consecutive(operand, corner, {axis: row, k_axis: k_base + k}, k_axis if along_k else axis)
            if load is None:
                return None
            bits = Reg(self.names.fresh("bits"), int16, VECTOR)
            loads.append(dataclasses.replace(load, out=bits, mode="bits"))
            index = row * plan.stride + k if along_k else k * (rows + PAD_BYTES // 2) + row
            stores.append(LocalStore(tile, index, bits, dtype=plan.stored))
        self._scopes[-1].extend(loads)
        return stores

    def _consecutive(self, operand: Node, corner: Index, offsets: dict[int, Expr], axis: int) -> Optional[Load]:
        """The Load reading `operand` at `offsets` where it is a half-precision buffer element whose next 7 along
        `axis` are the next elements of the same buffer, none past an end (all 8 are lowered and compared: an edge
        clamps or pads them, a permuting view reorders them); nothing it lowered is kept either way."""
        if self.plan.kind == "tf32":
            return None
        scope, known, mark = self._scopes[-1], set(self._values), len(self._scopes[-1])
        reads = [self._defining_load(self._operand(operand, corner, {**offsets, axis: offsets[axis] + step}))
                 for step in range(VECTOR)]
        del scope[mark:]
        for key in set(self._values) - known:
            del self._values[key]
        first = reads[0]
        if any(read is None or read.buffer != first.buffer or read.index - first.index != Expr(step)
               for step, read in enumerate(reads)):
            return None
        return first

    def _defining_load(self, value: Operand) -> Optional[Load]:
        """The unguarded element Load of half precision defining `value` in the innermost scope, if that is what
        defines it."""
        position = self._load_position(value)
        load = None if position is None else self._scopes[-1][position]
        return None if load is None or load.guard else load

    def _load_position(self, value: Operand) -> Optional[int]:
        """Where in the innermost scope an element Load of half precision defines `value`, if one does."""
        scope = self._scopes[-1]
        position = next((p for p in range(len(scope) - 1, -1, -1)
                         if isinstance(scope[p], Load) and scope[p].out == value), None)
        if position is None or scope[position].mode != "element" or not value.dtype.is_narrow_float:
            return None
        return position

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
        scope, position = self._scopes[-1], self._load_position(value)
        if position is None:
            return value
        bits = Reg(self.names.fresh("bits"), int16)
        scope[position] = dataclasses.replace(scope[position], out=bits, mode="bits")
        return bits

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
        body: list = []
        left = []
        for i in range(WARP_ROWS // 16):  # matrices: rows 0-7 and 8-15 at k, then both at k + half
            out = Reg(self.names.fresh("fa"), uint32, 4)
            index = (rows + i * 16 + lane % 16) * plan.stride + k + (lane // 16) * half
            body.append(MatrixLoad(out, tiles[0], index))
            left.append(tuple(Lane(out, f"s{w}") for w in range(4)))
        right = []
        for j in range(0, plan.warp_columns // 8, 2):  # matrices: tile j at k, at k + half, tile j + 1 at both
            out = Reg(self.names.fresh("fb"), uint32, 4)
            if across:  # rows of k: k, k + 8 of tile j, then of tile j + 1
                row = k + lane % 8 + ((lane // 8) % 2) * 8
                index = row * (plan.block_m + PAD_BYTES // 2) + columns + j * 8 + (lane // 16) * 8
            else:
                index = (columns + j * 8 + lane % 8 + (lane // 16) * 8) * plan.stride + k + ((lane // 8) % 2) * half
            body.append(MatrixLoad(out, tiles[1], index, transposed=across))
            right += [(Lane(out, "s0"), Lane(out, "s1")), (Lane(out, "s2"), Lane(out, "s3"))]
        shape = f"m16n8k{plan.k_step}"
        tiles_of = itertools.product(range(WARP_ROWS // 16), range(plan.warp_columns // 8))
        for t, (i, j) in enumerate(tiles_of):
            body.append(MatrixMultiply(tuple(accumulators[4 * t:4 * t + 4]), left[i], right[j], shape, plan.kind))
        return [Loop(counter, plan.bk // plan.k_step, tuple(body), unroll=True)]

