"""Matrix products on CPUs: vector accumulators over a packed copy of the right operand.

A work item computes ROWS x WIDTH outputs (8 x 32: sixteen `float16` accumulators, one AVX-512 register each).
Per step of the reduced axis it loads WIDTH consecutive values of the right operand (WIDTH / 16 `vload16`s)
and ROWS scalars of the left operand, each broadcast into one fused multiply-add per accumulator vector.

The right operand is first copied by a kernel of its own into panels, [batch][m / WIDTH][k][WIDTH], so that a
work item reads its panel as one contiguous stream whatever the operand's layout (transposed, strided, or an
elementwise expression: casts, views and prologues fuse into the copy). Work items walk down the rows first,
so the items after one (on both threads) reuse its panel from cache. The left operand is rendered like any
value, so its views and prologues fuse into the loads, and the accumulators' lanes (`acc.s0`..`acc.sf`) are
handed back as the outputs' values, so the epilogue (bias, activation) fuses into the stores.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..trace import node as n
from ..trace.node import Node
from ..trace.ops import Op
from .render import Index, KernelBuilder, _Scope, _Value, linear, unravel
from .symbolic import Expr
from .tiling import hosted_matmul, matmul_axes, space_axes

ROWS = 8                # left operand rows per work item (fewer where the row count is not a multiple)
WIDTHS = (32, 16)       # output columns per work item: the first that divides the column count
LANES = 16              # floats per vector (one AVX-512 register)
MIN_MACS = 1 << 18      # smaller products stay in one kernel (a copy kernel costs more than it saves)


@dataclass
class CpuPlan:
    """The product, its axes (n: rows, m: columns, k: reduced) and the kernel axes holding n and m, the tile,
    and the packed right operand: `packed` shaped (other axes of the operand..., m / width, k, width)."""

    product: Node
    n_axis: int
    m_axis: int
    k_axis: int
    space_n: int
    space_m: int
    rows: int
    width: int
    operand: Node  # the right operand before its broadcast (casts applied)
    packed: Node


def plan_cpu_matmul(root: Node, materialized: dict[int, Node]) -> Optional[CpuPlan]:
    """A plan when the kernel hosts a float32 product with whole vectors of columns; None for the plain path."""
    product = hosted_matmul(root, materialized)
    if product is None or product.dtype.name != "float32" or len(product.arg) != 1:
        return None
    if product.src[0].op is not Op.MUL:
        return None
    axes = space_axes(root, product)
    if axes is None:
        return None
    n_axis, m_axis = matmul_axes(product)  # type: ignore[misc]
    k_axis = product.arg[0]
    shape = product.src[0].shape
    width = next((w for w in WIDTHS if shape[m_axis] % w == 0), 0)
    if not width or product.src[0].numel < MIN_MACS:
        return None
    operand = _unbroadcast(product.src[0].src[1])
    if operand is None or operand.shape[k_axis] != shape[k_axis]:
        return None
    rows = math.gcd(shape[n_axis], ROWS)
    packed = _pack(operand, m_axis, k_axis, width)
    return CpuPlan(product, n_axis, m_axis, k_axis, axes[0], axes[1], rows, width, operand, packed)


def _unbroadcast(right: Node) -> Optional[Node]:
    """The source of the broadcast under `right`'s casts, with the casts applied to it."""
    casts = []
    while right.op is Op.CAST:
        casts.append(right.dtype)
        right = right.src[0]
    if right.op is not Op.EXPAND:
        return None
    operand = right.src[0]
    for dtype in reversed(casts):
        operand = n.cast(operand, dtype)
    return operand


def _pack(operand: Node, m_axis: int, k_axis: int, width: int) -> Node:
    """`operand` viewed as (its other axes..., m / width, k, width): materialized, that is the panel layout."""
    shape = operand.shape
    split = n.reshape(operand, shape[:m_axis] + (shape[m_axis] // width, width) + shape[m_axis + 1:])
    moved = {a: a + (a > m_axis) for a in range(len(shape))}  # axes of `operand` in `split`
    others = [moved[a] for a in range(len(shape)) if a not in (m_axis, k_axis)]
    return n.permute(split, others + [m_axis, moved[k_axis], m_axis + 1])


@dataclass
class CpuMatmulBuilder(KernelBuilder):
    """KernelBuilder whose work items each own a rows x width tile of the product, accumulated in vectors."""

    plan: Optional[CpuPlan] = None
    kind = "m"

    def __post_init__(self) -> None:
        plan = self.plan
        assert plan is not None
        self.space = self.root.shape
        self.numel = math.prod(self.space)
        self.allow_extra_outputs = False
        tile = {plan.space_n: plan.rows, plan.space_m: plan.width}
        grid = [size // tile.get(axis, 1) for axis, size in enumerate(self.space)]
        # the row blocks vary fastest: consecutive items share the right operand's panel
        order = [a for a in range(len(grid)) if a != plan.space_n] + [plan.space_n]
        self.work_items = math.prod(grid)
        self.gid = Expr.var("gid", self.work_items)
        cell = dict(zip(order, unravel(self.gid, tuple(grid[a] for a in order))))
        self.corner = tuple(cell[a] * tile.get(a, 1) for a in range(len(grid)))
        self.elements: list[Index] = []
        for t in range(plan.rows):
            for u in range(plan.width):
                offsets = {plan.space_n: t, plan.space_m: u}
                self.elements.append(tuple(c + offsets.get(a, 0) for a, c in enumerate(self.corner)))
        self.positions = [linear(element, self.space) for element in self.elements]
        self._scopes = [_Scope(0)]

    def _reduce_all(self, node: Node) -> list[_Value]:
        plan = self.plan
        assert plan is not None
        if node is not plan.product:
            return super()._reduce_all(node)
        count = node.src[0].shape[plan.k_axis]
        self._has_loop = True
        self._longest_reduction = max(self._longest_reduction, count)
        corner = list(unravel(linear(self.corner, self.space), node.shape))
        vectors = plan.width // LANES
        accumulators = [[self._fresh("acc") for _ in range(vectors)] for _ in range(plan.rows)]
        step = self._fresh("k")
        k = Expr.var(step, count)
        corner[plan.k_axis] = k
        self._loop_depth[step] = 1
        self._scopes.append(_Scope(1))
        panel = self._panel(corner, vectors)
        for t, row in enumerate(accumulators):
            index = list(corner)
            index[plan.n_axis] = index[plan.n_axis] + t
            a = self.render(node.src[0].src[0], tuple(index), ())
            self._scopes[1].lines += [f"{acc} = fma((float16)({a.text}), {b}, {acc});" for acc, b in zip(row, panel)]
        body = self._scopes.pop()
        lines = self._scopes[0].lines
        lines += [f"float16 {acc} = 0.0f;" for row in accumulators for acc in row]
        lines.append(f"for (int {step} = 0; {step} < {count}; {step}++) {{\n"
                     + "\n".join("  " + line for line in body.lines) + "\n}")
        return [_Value(f"{row[u // LANES]}.s{u % LANES:x}", 0) for row in accumulators for u in range(plan.width)]

    def _panel(self, index: list[Expr], vectors: int) -> list[str]:
        """Load the packed right operand's `width` values at `index` (the tile's first column) as vectors."""
        plan = self.plan
        assert plan is not None
        packed = plan.packed
        self.materialized.setdefault(id(packed), packed)
        if id(packed) not in self.produced and packed not in self.needs:
            self.needs.append(packed)
        self._misaligned.add(id(packed))
        name = self._param("load", packed)
        others = [Expr(0) if plan.operand.shape[a] == 1 else index[a] for a in range(len(index))
                  if a not in (plan.m_axis, plan.k_axis)]
        start = linear(tuple(others) + (index[plan.m_axis] // plan.width, index[plan.k_axis], Expr(0)), packed.shape)
        names = [self._fresh("b") for _ in range(vectors)]
        self._scopes[1].lines += [f"float16 {b} = vload16(0, {name} + {(start + v * LANES).render()});"
                                  for v, b in enumerate(names)]
        return names

    def _launch_shape(self) -> tuple[int, Optional[int]]:
        return self.work_items, 1  # one item per group: PoCL hands the groups out to its threads in order
