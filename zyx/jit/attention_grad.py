"""Attention's backward without a T x T matrix: products whose operand recomputes P at every (i, j).

trace/attention_grad.py writes softmax(X) W's gradient so that every (i, j) value is elementwise in X, the row
statistics (which the forward's fused kernel stores, attention.py), D = rowsum(dO O) and products over the head
dimension; the ordinary rules then give the products dQ-side = sum_j dS[i, j] K[j, :], dK-side = sum_i dS[i, j]
Q[i, :] and dV = sum_i P[i, j] dO[i, :] (dS the scores' gradient, P = exp(X - m) / l). Lowered as products are,
dS and P would be stored whole. Here (the "rows" form, ZYX_ATTENTION_FORM; attention_grad_tiles.py lowers the
default "staged" one on this module's plans) a work item owns a row of a product's outputs (a query's row of dQ; a key's
rows of dK and dV together, one kernel, FlashAttention-2's split) and walks the reduced axis once, computing each
(i, j) value once for the row and all its outputs: X's and dP's products over the head dimension as loops nested
in that walk (the reductions as large as P, `_nests`), the row statistics and D (one per row) read from memory.
So two kernels per attention (three where dK and dV do not walk alike), plus D's row sums.
Every product whose operand recomputes P is stored by a kernel of its own (`gradient_products`), where P would
take at least attention.min_probability_bytes.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from ..dtypes import float32
from ..trace.attention_grad import attention_product, softmax_of
from ..trace.node import Node
from ..trace.ops import ELEMENTWISE_OPS, MOVEMENT_OPS, Op
from .attention import NestedReductions, min_probability_bytes
from .kernel_ir import Accumulate, Const, Define, Loop, Reg
from .lower import PARAM_LIMIT, Index, LoweredKernel, _Value, linear, source_index, unravel
from .symbolic import Expr


@dataclass(frozen=True)
class GradientProduct:
    """SUM over `reduced` of MUL(p_side, w_side), p_side spread (EXPAND) along the output axis `width` over a value
    that recomputes `probabilities` (exp(X - m) / l) at each (i, j)."""

    product: Node
    p_side: Node
    w_side: Node
    probabilities: Node
    reduced: int
    width: int

    @property
    def rows(self) -> tuple[int, ...]:
        """The sizes of the output axes an item's row is not along (the items)."""
        return tuple(s for a, s in enumerate(self.product.shape) if a not in (self.reduced, self.width))

    def index(self, item: Index, e: Union[int, Expr], reduced: Expr) -> Index:
        """The product's source index for the item's output `e`, at `reduced` along the reduced axis."""
        rest, column = iter(item), Expr(e) if isinstance(e, int) else e
        return tuple(reduced if a == self.reduced else column if a == self.width else next(rest)
                     for a in range(len(self.product.shape)))


def match_attention_gradient(node: Node, materialized: dict[int, Node], gpu: bool = False
                             ) -> Optional[GradientProduct]:
    """`node` as a product recomputing P (see the module), where P takes at least min_probability_bytes; else None."""
    if (node.op is not Op.SUM or len(node.arg) != 1 or node.src[0].op is not Op.MUL
            or not (node.dtype == float32 or node.dtype.is_narrow_float)):  # (half precision: autocast's products)
        return None
    if attention_product(node) is not None:  # the forward (attention.py's)
        return None
    reduced = node.arg[0]
    for p_side, w_side in (node.src[0].src, node.src[0].src[::-1]):
        if p_side.op is not Op.EXPAND:
            continue
        spread = [a for a, (s, t) in enumerate(zip(p_side.src[0].shape, p_side.shape)) if s != t]
        probabilities = _recomputed_in(p_side.src[0], materialized)
        if len(spread) != 1 or spread[0] == reduced or probabilities is None:
            continue
        threshold = min_probability_bytes(gpu)
        if threshold is None or probabilities.numel * probabilities.dtype.itemsize < threshold:
            return None
        return GradientProduct(node, p_side, w_side, probabilities, reduced, spread[0])
    return None


def _recomputed_in(node: Node, materialized: dict[int, Node]) -> Optional[Node]:
    """The softmax P that `node` computes through elementwise ops and views, where no kernel stores P or its scores
    X (so it is recomputed here from X and the row statistics); None if none."""
    stack, seen = [node], set()
    while stack:
        node = stack.pop()
        if id(node) in seen or id(node) in materialized:
            continue
        seen.add(id(node))
        softmax = softmax_of(node)
        if softmax is not None and id(softmax.scores) not in materialized:
            return node
        if node.op in ELEMENTWISE_OPS or node.op in MOVEMENT_OPS:
            stack += node.src
    return None


def gradients_share_kernels(gpu: bool) -> bool:
    """Whether products walking alike (dK and dV) share a kernel (ZYX_ATTENTION_GRAD_SHARED; by default on CPUs,
    not on `gpu` GPUs): P is recomputed once for both, but an item holds both rows' operands and accumulators (k,
    v, dK, dV: 256 floats at d=64, past the 255 registers an NVIDIA item has: 360 bytes spilled); 0 gives each its
    own kernel and walk. On the H200 at W7's shape (16 x 12 x 1024 x 64, causal) dK and dV took 4.26 ms in one
    kernel, 2.30 + 1.46 ms in two (and 3.81 against 2.53 ms at batch 4)."""
    setting = os.environ.get("ZYX_ATTENTION_GRAD_SHARED", "0" if gpu else "1")
    if setting not in ("0", "1"):
        raise ValueError(f"ZYX_ATTENTION_GRAD_SHARED={setting!r}: expected 0 or 1")
    return setting == "1"


def gradient_products(order: Sequence[Node], gpu: bool) -> dict[int, Node]:
    """The products recomputing P among `order`: each is stored by a kernel of its own (this module's)."""
    return {id(node): node for node in order if match_attention_gradient(node, {}, gpu) is not None}


class AttentionGradientLowering(NestedReductions):
    """A work item per row of `plan`'s outputs (and of its siblings': products walking the same axis over the same
    P at the same (i, j)), walking the reduced axis once; see the module."""

    def __init__(self, plan: GradientProduct, siblings: Sequence[GradientProduct], materialized: dict[int, Node],
                 produced: set[int], stored_apart: frozenset = frozenset(), param_limit: int = PARAM_LIMIT):
        super().__init__(plan.product, materialized, produced, False, stored_apart, param_limit)
        self.kind = "a"
        self.item, guard = self._layout(plan)
        self.trips = plan.product.src[0].shape[plan.reduced]
        self.walked = Expr.var(self.names.fresh("j"), self.trips)
        read = _probability_read(plan, self.item, self.walked)
        self.plans = [plan] + [other for other in siblings if other.rows == plan.rows
                               and other.probabilities is plan.probabilities
                               and other.product.src[0].shape[other.reduced] == self.trips
                               and _probability_read(other, self.item, self.walked) == read
                               and not _depends(other.product, plan.product)
                               and not _depends(plan.product, other.product)]
        width = plan.product.shape[plan.width]
        self.positions = [linear(plan.index(self.item, e, Expr(0)), plan.product.shape) for e in range(width)]
        self.elements = [unravel(position, self.space) for position in self.positions]
        self.guards = [guard] * max(other.product.shape[other.width] for other in self.plans)  # (every output's)

    def _layout(self, plan: GradientProduct) -> tuple[Index, tuple]:
        """The item's index among `plan.rows` and the guard its outputs exist under: an item per row."""
        return unravel(Expr.var("gid", math.prod(plan.rows)), plan.rows), ()

    def _nests(self, node: Node, index: Index, guard: tuple) -> bool:
        """Reductions as large as P (X's and dP's products over the head dimension: stored, they would be the T x T
        matrices); the smaller ones (the row statistics, D) are read from memory."""
        return node.numel >= self.plans[0].probabilities.numel

    def _lower_outputs(self) -> None:
        name, trips = next(iter(self.walked.variables())), self.trips
        accs = [[Reg(self.names.fresh("acc"), float32) for _ in range(plan.product.shape[plan.width])]
                for plan in self.plans]
        self._scopes[0] += [Define(acc, Const(0.0, float32)) for row in accs for acc in row]
        self._open_loop(name, trips)
        for plan, row in zip(self.plans, accs):
            for e, acc in enumerate(row):
                value = self.value(plan.product.src[0], plan.index(self.item, e, self.walked), ())
                self._scopes[-1].append(Accumulate(acc, Op.ADD, value.operand))
        self._scopes[0].append(Loop(name, trips, tuple(self._close_loop())))
        for plan, row in zip(self.plans, accs):
            for e, acc in enumerate(row):
                self._element = e
                position = linear(plan.index(self.item, e, Expr(0)), plan.product.shape)
                self._store(plan.product, _Value(acc, 0), position)


def _depends(node: Node, on: Node) -> bool:
    """Whether `node` reads `on` (a kernel storing both would read its own output: a second order's products)."""
    stack, seen = [node], set()
    while stack:
        node = stack.pop()
        if node is on:
            return True
        if id(node) not in seen:
            seen.add(id(node))
            stack += node.src
    return False


def _probability_read(plan: GradientProduct, item: Index, walked: Expr) -> Optional[tuple]:
    """Where (as keys) the product reads P for the item's first output at `walked`: through views
    and elementwise ops from its P side."""
    stack = [(plan.p_side, plan.index(item, 0, walked))]
    while stack:
        node, index = stack.pop()
        if node is plan.probabilities:
            return tuple(e.key for e in index)
        if node.op in MOVEMENT_OPS:
            inner, condition = source_index(node, index)
            if inner is not None and condition is None:
                stack.append((node.src[0], inner))
        elif node.op in ELEMENTWISE_OPS:
            stack += [(source, index) for source in node.src]
    return None


def lower_attention_gradient(plan: GradientProduct, siblings: Sequence[GradientProduct],
                             materialized: dict[int, Node], produced: set[int], stored_apart: frozenset = frozenset(),
                             param_limit: int = PARAM_LIMIT) -> LoweredKernel:
    """The kernel storing `plan`'s product and those of the `siblings` that walk alike (see the module)."""
    return AttentionGradientLowering(plan, siblings, materialized, produced, stored_apart, param_limit).lower()
