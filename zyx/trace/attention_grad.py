"""The gradient of softmax(X) W written so that a fused backward can recompute P instead of storing it.

softmax(X) W appears in the trace as a product O = sum_j P[.., i, j] W[.., i, e, j] whose P-side operand views
P = exp(X - max_j X) / sum_j exp(X - max_j X) (scaled_dot_product_attention, or the same written by hand). The
generic rules differentiate it through P's DIV, EXP and sums: their (i, j) values read P and P's exponentials and
sum them again over j. Here the product's gradient is written directly:
- dW = dO P (as the product's rule gives it) and dP = dO W (through P's views);
- dX = P (dP - D) with D = rowsum(dO O) (= rowsum(P dP), read from the output instead of another T x T sum);
dX then flows on into X's sources by the ordinary rules (the mask's WHERE, the scale, the scores' product).
Every (i, j) value left is elementwise in P (itself elementwise in X and the softmax's row statistics, the
maximum and the sum), dP's product over the head dimension and D: where P is not stored, jit/attention_grad.py
computes the products that read it per block of rows, recomputing P from X and the statistics, which the
forward's fused kernel stores (jit/attention.py); where P is stored (small attention on a CPU), the kernels read
it as the generic rules' did.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from . import node as n
from .node import Node
from .ops import MOVEMENT_OPS, Op



@dataclass(frozen=True)
class Softmax:
    """exp(X - shift) / total over X's last axis: the nodes a recomputation reads."""

    scores: Node  # X
    shift: Node   # the row maximum exp subtracts (RMAX(X), or its DETACH), under its views
    total: Node   # SUM(exp(X - shift)) over the last axis


@dataclass(frozen=True)
class AttentionProduct:
    """softmax(X) W as the trace holds it: SUM over the last axis of MUL(p_side, w_side), p_side viewing P."""

    product: Node
    p_side: Node
    w_side: Node
    probabilities: Node  # P: DIV(exp(X - max), sum(exp(X - max)))
    softmax: Softmax


def under_views(node: Node) -> Node:
    while node.op in MOVEMENT_OPS:
        node = node.src[0]
    return node


def under_cast_down(node: Node) -> Node:
    """The float value `node` casts to half precision (under autocast, a float32 softmax cast down for its product
    with V), else `node`."""
    if node.op is Op.CAST and node.dtype.is_narrow_float and node.src[0].dtype.is_float:
        return node.src[0]
    return node


def softmax_of(node: Node) -> Optional[Softmax]:
    """The softmax's parts when `node` is exp(X - max(X)) / sum(exp(X - max(X))) over the last axis, else None."""
    if node.op is not Op.DIV or not node.dtype.is_float:
        return None
    exp, total = node.src[0], under_views(node.src[1])
    last = (len(node.shape) - 1,)
    if exp.op is not Op.EXP or total.op is not Op.SUM or total.arg != last or total.src[0] is not exp:
        return None
    shifted = exp.src[0]
    if shifted.op is not Op.ADD or shifted.src[1].op is not Op.NEG:
        return None
    scores, shift = shifted.src[0], under_views(shifted.src[1].src[0])
    maximum = under_views(shift.src[0]) if shift.op is Op.DETACH else shift
    if maximum.op is not Op.RMAX or maximum.arg != last or maximum.src[0] is not scores:
        return None
    return Softmax(scores, shift, total)


def attention_product(product: Node) -> Optional[AttentionProduct]:
    """The pattern when `product` is SUM over its last axis of MUL(a, b) with one operand viewing a softmax (or a
    softmax cast down to half precision)."""
    last = len(product.shape) - 1
    if product.op is not Op.SUM or product.arg != (last,) or product.src[0].op is not Op.MUL:
        return None
    for p_side, w_side in (product.src[0].src, product.src[0].src[::-1]):
        probabilities = under_cast_down(under_views(p_side))
        softmax = softmax_of(probabilities)
        if softmax is not None:
            return AttentionProduct(product, p_side, w_side, probabilities, softmax)
    return None


def _rows_spread(pattern: AttentionProduct) -> bool:
    """Whether the product reads P[.., i, j] at its own row i and key j, as a matmul does: P's rows (or P cast
    down) given an axis of W's columns (RESHAPE), spread along it (EXPAND); then D = rowsum(P dP) = rowsum(dO O)
    (P cast down: up to its rounding, as FlashAttention's backward has it)."""
    probabilities, p_side = pattern.probabilities, pattern.p_side
    spread = probabilities.shape[:-1] + (1, probabilities.shape[-1])
    return (p_side.op is Op.EXPAND and p_side.src[0].op is Op.RESHAPE and p_side.src[0].arg == spread
            and under_cast_down(p_side.src[0].src[0]) is probabilities
            and pattern.product.shape[:-2] == probabilities.shape[:-1])


def _back_through_views(view: Node, base: Node, g: Node, rules) -> Node:
    """The gradient of `base` from `g`, the gradient of `view` (movement ops over `base`), by the ordinary rules."""
    while view is not base:
        g = rules[view.op](view, view, g)[0]
        view = view.src[0]
    return g


def attention_gradients(pattern: AttentionProduct, g: Node, rules) -> Optional[tuple[Node, Node]]:
    """(dX, dW-side): the gradients of the scores X and of the product's W-side operand, from `g` (the product's
    gradient; see the module); None where the ordinary rules stay (a product reading P otherwise than a matmul
    does)."""
    if not _rows_spread(pattern):
        return None
    product, mul, probabilities = pattern.product, pattern.product.src[0], pattern.probabilities
    spread = n.expand(g, mul.shape)
    d_weights = n.binary(Op.MUL, spread, pattern.p_side)
    d_probabilities = _back_through_views(pattern.p_side, pattern.probabilities,
                                          n.binary(Op.MUL, spread, pattern.w_side), rules)
    rows = len(product.shape) - 2  # the output's axis of W's columns e: O is (.., L, E, 1)
    dot = n.reduce(Op.SUM, n.binary(Op.MUL, g, product), [rows])  # D = rowsum(dO O): (.., L, 1, 1)
    if dot.dtype != probabilities.dtype:  # P cast down for the product: D in the half-precision product's dtype
        dot = n.cast(dot, probabilities.dtype)
    dot = n.expand(n.reshape(dot, probabilities.shape[:-1] + (1,)), probabilities.shape)
    d_scores = n.binary(Op.MUL, probabilities, n.binary(Op.ADD, d_probabilities, n.unary(Op.NEG, dot)))
    return d_scores, d_weights
