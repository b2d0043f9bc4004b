"""Matrix products on GPUs: work groups that stage tiles of both operands in local memory.

A work group of 256 items computes a BM x BN block of outputs, each item a TM x TN tile of it. For every BK
slice of the reduced axis the group copies a BM x BK tile of the left operand and a BK x BN tile of the right
one into local memory (coalesced reads, each element read from global memory once per group), then every
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

BM = BN = 64       # outputs per group along n and m
BK = 16            # reduced elements staged per step
TM = TN = 4        # outputs per item along n and m
GROUP = (BM // TM) * (BN // TN)


@dataclass
class TilePlan:
    """Where the product sits in the kernel: its node, and the kernel axes holding its n and m axes."""

    product: Node
    n_space_axis: int
    m_space_axis: int


def plan_local_tiles(root: Node, tile: Optional[dict[int, int]], product: Optional[Node]) -> Optional[TilePlan]:
    """A plan when the register-tiled product is float32, multiplies without a cast in between, and its sizes
    divide into whole blocks."""
    if not tile or product is None or product.dtype.name != "float32" or len(tile) != 2:
        return None
    if product.src[0].op is not Op.MUL:
        return None
    n_axis, m_axis = matmul_axes(product)  # type: ignore[misc]
    k = math.prod(product.src[0].shape[a] for a in product.arg)
    if product.shape[n_axis] % BM or product.shape[m_axis] % BN or k % BK or k == 0:
        return None
    space_n, space_m = sorted(tile, key=lambda axis: (root.shape[axis] != product.shape[n_axis], axis))
    if root.shape[space_n] != product.shape[n_axis] or root.shape[space_m] != product.shape[m_axis]:
        return None
    return TilePlan(product, space_n, space_m)


@dataclass
class LocalTileBuilder(KernelBuilder):
    """KernelBuilder whose work items are the items of BM x BN groups, each owning a TM x TN tile."""

    plan: Optional[TilePlan] = None

    def __post_init__(self) -> None:
        self.space = self.root.shape
        self.numel = math.prod(self.space)
        self.allow_extra_outputs = False
        assert self.plan is not None
        blocks = {self.plan.n_space_axis: BM, self.plan.m_space_axis: BN}
        grid = tuple(size // blocks.get(axis, 1) for axis, size in enumerate(self.space))
        self.work_items = math.prod(grid)  # groups
        self.gid = Expr.var("gid", self.work_items)
        lid = Expr.var("lid", GROUP)
        row, col = lid // (BN // TN), lid % (BN // TN)
        cell = unravel(self.gid, grid)
        self.corner = tuple(c * blocks[a] if a in blocks else c for a, c in enumerate(cell))
        self.elements: list[Index] = []
        for t, u in itertools.product(range(TM), range(TN)):
            offsets = {self.plan.n_space_axis: row * TM + t, self.plan.m_space_axis: col * TN + u}
            self.elements.append(tuple(c + offsets[a] if a in offsets else c for a, c in enumerate(self.corner)))
        self.positions = [linear(element, self.space) for element in self.elements]
        self._scopes = [_Scope(0)]

    def _reduce_all(self, node: Node) -> list[_Value]:
        if node is not self.plan.product:  # type: ignore[union-attr]
            return super()._reduce_all(node)
        self._has_loop = True
        n_axis, m_axis = matmul_axes(node)  # type: ignore[misc]
        k_axis = node.arg[0]
        count = node.src[0].shape[k_axis]
        corner = unravel(linear(self.corner, self.space), node.shape)
        left, right = node.src[0].src[0], node.src[0].src[1]
        a, b, step = self._fresh("tile_a"), self._fresh("tile_b"), self._fresh("k")
        accumulators = [self._fresh("acc") for _ in self.elements]
        lines = self._scopes[0].lines
        lines += [f"__local float {a}[{BK}][{BM}];", f"__local float {b}[{BK}][{BN}];"]
        lines += [f"float {acc} = 0.0f;" for acc in accumulators]
        self._loop_depth[step] = 1
        self._scopes.append(_Scope(1))
        k_base = Expr.var(step, count // BK) * BK
        lid = Expr.var("lid", GROUP)
        for copy in range(BM * BK // GROUP):
            flat = lid + copy * GROUP
            self._stage(left, corner, {n_axis: flat // BK, k_axis: k_base + flat % BK}, n_axis, k_axis,
                        f"{a}[{(flat % BK).render()}][{(flat // BK).render()}]")
        for copy in range(BK * BN // GROUP):
            flat = lid + copy * GROUP
            self._stage(right, corner, {m_axis: flat % BN, k_axis: k_base + flat // BN}, m_axis, k_axis,
                        f"{b}[{(flat // BN).render()}][{(flat % BN).render()}]")
        row, col = (lid // (BN // TN)).render(), (lid % (BN // TN)).render()
        body = self._scopes.pop()
        products = "\n".join(f"    {acc} += {a}[kk][{row}*{TM}+{t}] * {b}[kk][{col}*{TN}+{u}];"
                             for acc, (t, u) in zip(accumulators, itertools.product(range(TM), range(TN))))
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
