"""Matrix products on GPUs: work groups that stage tiles of both operands in local memory.

A work group of 256 items computes a 64 x 64 block of outputs (32 x 32 where that leaves too few groups), each
item a 4 x 4 (2 x 2) tile of it. For every BK slice of the reduced axis the group copies a tile of each operand
into local memory (coalesced reads, each element read from global memory once per group), then every
item accumulates its tile from local memory. The operands are rendered like any other value, so casts, views
and elementwise prologues fuse into the tile loads, and the epilogue (bias, activation) into the stores.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional

from ..trace.node import Node
from ..trace.ops import Op
from .render import Index, KernelBuilder, _Scope, _Value, linear, unravel
from .symbolic import Expr
from .tiling import matmul_axes

BK = 16            # reduced elements staged per step
GROUP = 256        # items per work group
BLOCKS = ((64, 4), (32, 2))  # (outputs per group along n and m, per item): big blocks first
MIN_GROUPS = 256   # fewer groups than this leave a large GPU idle: try smaller blocks


@dataclass
class TilePlan:
    """Where the product sits in the kernel: its node, and the kernel axes holding its n and m axes."""

    product: Node
    n_space_axis: int
    m_space_axis: int
    block: int = 64    # outputs per group along n and m
    per_item: int = 4  # outputs per item along n and m


def plan_local_tiles(root: Node, tile: Optional[dict[int, int]], product: Optional[Node]) -> Optional[TilePlan]:
    """A plan when the register-tiled product is float32, multiplies without a cast in between, and its sizes
    divide into whole blocks."""
    if not tile or product is None or product.dtype.name != "float32" or len(tile) != 2:
        return None
    if product.src[0].op is not Op.MUL:
        return None
    n_axis, m_axis = matmul_axes(product)  # type: ignore[misc]
    k = math.prod(product.src[0].shape[a] for a in product.arg)
    space_n, space_m = sorted(tile, key=lambda axis: (root.shape[axis] != product.shape[n_axis], axis))
    if root.shape[space_n] != product.shape[n_axis] or root.shape[space_m] != product.shape[m_axis]:
        return None
    if k % BK or k == 0:
        return None
    fitting = [(block, per_item) for block, per_item in BLOCKS
               if product.shape[n_axis] % block == 0 and product.shape[m_axis] % block == 0]
    if not fitting:
        return None
    block, per_item = next(((b, p) for b, p in fitting if product.numel // (b * b) >= MIN_GROUPS), fitting[-1])
    return TilePlan(product, space_n, space_m, block, per_item)


@dataclass
class LocalTileBuilder(KernelBuilder):
    """KernelBuilder whose work items are the items of square groups of outputs, each owning a square tile."""

    plan: Optional[TilePlan] = None

    def __post_init__(self) -> None:
        self.space = self.root.shape
        self.numel = math.prod(self.space)
        self.allow_extra_outputs = False
        assert self.plan is not None
        size, per_item = self.plan.block, self.plan.per_item
        blocks = {self.plan.n_space_axis: size, self.plan.m_space_axis: size}
        grid = tuple(size // blocks.get(axis, 1) for axis, size in enumerate(self.space))
        self.work_items = math.prod(grid)  # groups
        self.gid = Expr.var("gid", self.work_items)
        lid = Expr.var("lid", GROUP)
        row, col = lid // (size // per_item), lid % (size // per_item)
        cell = unravel(self.gid, grid)
        self.corner = tuple(c * blocks[a] if a in blocks else c for a, c in enumerate(cell))
        self.elements: list[Index] = []
        for t, u in itertools.product(range(per_item), range(per_item)):
            offsets = {self.plan.n_space_axis: row * per_item + t, self.plan.m_space_axis: col * per_item + u}
            self.elements.append(tuple(c + offsets[a] if a in offsets else c for a, c in enumerate(self.corner)))
        self.positions = [linear(element, self.space) for element in self.elements]
        self._scopes = [_Scope(0)]

    def _reduce_all(self, node: Node) -> list[_Value]:
        if node is not self.plan.product:  # type: ignore[union-attr]
            return super()._reduce_all(node)
        self._has_loop = True
        size, per_item = self.plan.block, self.plan.per_item  # type: ignore[union-attr]
        n_axis, m_axis = matmul_axes(node)  # type: ignore[misc]
        k_axis = node.arg[0]
        count = node.src[0].shape[k_axis]
        corner = unravel(linear(self.corner, self.space), node.shape)
        left, right = node.src[0].src[0], node.src[0].src[1]
        a, b, step = self._fresh("tile_a"), self._fresh("tile_b"), self._fresh("k")
        accumulators = [self._fresh("acc") for _ in self.elements]
        lines = self._scopes[0].lines
        lines += [f"__local float {a}[{BK}][{size}];", f"__local float {b}[{BK}][{size}];"]
        lines += [f"float {acc} = 0.0f;" for acc in accumulators]
        self._loop_depth[step] = 1
        self._scopes.append(_Scope(1))
        k_base = Expr.var(step, count // BK) * BK
        lid = Expr.var("lid", GROUP)
        for copy in range(size * BK // GROUP):
            flat = lid + copy * GROUP
            self._stage(left, corner, {n_axis: flat // BK, k_axis: k_base + flat % BK}, n_axis, k_axis,
                        f"{a}[{(flat % BK).render()}][{(flat // BK).render()}]")
        for copy in range(BK * size // GROUP):
            flat = lid + copy * GROUP
            self._stage(right, corner, {m_axis: flat % size, k_axis: k_base + flat // size}, m_axis, k_axis,
                        f"{b}[{(flat // size).render()}][{(flat % size).render()}]")
        row, col = (lid // (size // per_item)).render(), (lid % (size // per_item)).render()
        body = self._scopes.pop()
        products = "\n".join(f"    {acc} += {a}[kk][{row}*{per_item}+{t}] * {b}[kk][{col}*{per_item}+{u}];"
                             for acc, (t, u) in zip(accumulators, itertools.product(range(per_item), repeat=2)))
        lines.append(f"for (int {step} = 0; {step} < {count // BK}; {step}++) {{\n"
                     + "\n".join("  " + line for line in body.lines)
                     + f"\n  barrier(CLK_LOCAL_MEM_FENCE);\n  for (int kk = 0; kk < {BK}; kk++) {{\n{products}\n  }}"
                     + "\n  barrier(CLK_LOCAL_MEM_FENCE);\n}")
        return [_Value(acc, 0) for acc in accumulators]

    def _stage(self, operand: Node, corner: Index, offsets: dict[int, Expr], along: int, k_axis: int,
               target: str) -> None:
        """Copy one operand element (rendered at the block corner plus `offsets`) into local memory."""
        index = tuple(corner[a] + offsets[a] if a in offsets else corner[a] for a in range(len(corner)))
        value = self.render(operand, index, ())
        self._scopes[1].lines.append(f"{target} = {value.text};")

    def _header(self, index_type: str) -> str:
        return f"  {index_type} gid = get_group_id(0);\n  int lid = get_local_id(0);\n"

    def _launch_shape(self) -> tuple[int, Optional[int]]:
        return self.work_items * GROUP, GROUP
