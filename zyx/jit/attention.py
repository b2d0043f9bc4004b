"""Attention forward in one kernel: softmax(S) V with an online softmax, no L x S matrix in memory.

This module finds the pattern, decides where it is fused (MIN_PROBABILITY_BYTES, GPU_MIN_PROBABILITY_BYTES) and in
which form (FORMS), and lowers the "rows" form described here; attention_tiles.py lowers the "staged" one, the
default, which reuses this module's pattern and lowering.

The pattern, as the trace holds it (scaled_dot_product_attention, or the same written by hand): a product
O[.., i, e] = sum_j P[.., i, j] W[.., i, e, j] whose left operand views P = softmax over its last axis, written
exp(X - max_j X) / sum_j exp(X - max_j X), where X[.., i, j] is any elementwise value (the scores: a product
over the head dimension, scaled, masked). Lowered as products are, P would be stored whole (L x S per head).
Here a work item owns a row of outputs O[.., i, :] and walks the keys j once, keeping the running maximum m, the
running sum l of exp(X - m) and the running sum acc of exp(X - m) W, each rescaled by exp(m_old - m_new) when
the maximum grows (one acc per output of the row, the scores shared); the outputs are acc / l. X is lowered inside the walk, its own reductions (the scores'
product over the head dimension) as loops nested in it, so every value is computed from q, k, v (and the
mask's sources) as the key loop reaches it.

Only where no other kernel stores P, its exponentials or X, and where P would take at least MIN_PROBABILITY_BYTES
(ZYX_ATTENTION_MIN_BYTES). Where a backward reads the row statistics (trace/attention_grad.py writes the gradient
so that P is recomputed from them, attention_grad.py's kernels), this kernel stores them too: the row maximum and
sum it computes anyway. PoCL vectorizes the kernel across work items (rows); no transform applies.

Under autocast the pattern is half precision (float16, bfloat16): scaled_dot_product_attention's whole trace, or a
float32 softmax whose P is cast down for the product (attention written out). Every form computes in float32 and
rounds where the unfused trace rounds: the scores' product, X's elementwise ops (as any kernel lowers them), x - m
and exp(x - m) where the softmax is half precision, the weight multiplying W where the product's P side is, the
output where stored. Only P = exp(x - M) / l is never formed (online softmax): its exponentials round against the
running maximum, before the division by l, as FlashAttention's do.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from ..dtypes import DType, float32
from ..trace.attention_grad import attention_product, under_views
from ..trace.node import Node
from ..trace.ops import Op, REDUCE_OPS
from .kernel_ir import Accumulate, Alu, Const, Define, Loop, MultiplyAdd, Operand, Reg
from .lower import PARAM_LIMIT, Index, LoweredKernel, Lowering, Step, _Value, linear, source_index, unravel
from .symbolic import Expr

FLOAT_LOWEST = -3.4028234663852886e38  # the running maximum starts here, not at -inf: exp(-inf - -inf) is nan
# Smaller probability matrices keep the products and the row softmax: those kernels are faster (on PoCL the fused
# kernel took 7x their time at 4 heads x 1024 x 1024, bench/attention.py), and the memory they save is small.
# ZYX_ATTENTION_MIN_BYTES sets another threshold (0: fuse every attention; a setting, so it keys the programs).
MIN_PROBABILITY_BYTES = 1 << 26
# GPUs fuse every attention they can (the staged kernel, attention_tiles.py): on the H200 (batch 4, 12 heads, d=64,
# causal, kernel time) it took 0.58 ms against the unfused kernels' 0.67 at T=1024, 5.8 against 15.5 at T=4096, and
# 20.7 ms at T=8192 where the unfused ones ran out of memory (12 GiB of probabilities); memory 12 MiB against 204
# at T=1024 (bench/GPU.md). None would keep their products.
GPU_MIN_PROBABILITY_BYTES: Optional[int] = 0
# The fused kernel's form (ZYX_ATTENTION_FORM; "cores" on GPUs with 16-bit tensor cores, "tiled" on other GPUs,
# "staged" elsewhere): "staged" (attention_tiles.py: a work group per
# block of query rows, keys and values staged in local memory, causal blocks skipped) or "rows" (this module's: a
# work item per query row, every key read from global memory). On PoCL (2 cores) "staged" took a quarter to a
# third of "rows"' CPU time (causal, 4 heads, d=64: 60 vs 218 ms at T=1024, 230 vs 868 ms at T=2048); the unfused
# kernels took half of "staged"'s or less (25 and 102 ms), hence MIN_PROBABILITY_BYTES (bench/README.md, A1).
# "tiled" (attention_tiled.py, OpenCL only, else "staged"): FlashAttention-2's order with register tiles, an item
# per 4 query rows x a slice of keys and outputs; its backward too (attention_grad_tiled.py: dK with dV, dQ).
# ZYX_ATTENTION_GRAD_FORM gives the backward a form of its own (gradient_form): "staged" beside "tiled".
# On the H200 at W7's shape (16 x 12 heads, T=1024, d=64, causal) the tiled forward took 1.16 ms against
# "staged"'s 1.63 (forward + backward 7.37 against 7.92, the backward staged; bench/GPU.md, ninth session). On
# PoCL it has no such edge: a CPU item has no registers to tile into.
# "cores" (attention_cores.py, the default on GPUs with 16-bit tensor cores): 16-bit q, k, v multiplied by mma.sync,
# the rest as "tiled" (which it falls back to where it does not apply).
FORMS = ("staged", "rows", "tiled", "cores")


def min_probability_bytes(gpu: bool = False) -> Optional[int]:
    """The smallest probability matrix, in bytes, that the fused kernel replaces (None: none)."""
    setting = os.environ.get("ZYX_ATTENTION_MIN_BYTES")
    if setting is not None:
        return int(setting)
    return GPU_MIN_PROBABILITY_BYTES if gpu else MIN_PROBABILITY_BYTES


def attention_form(gpu: bool, tensor_cores: bool = False) -> str:
    """Which fused kernel a device gets: ZYX_ATTENTION_FORM, else "cores" on GPUs with 16-bit `tensor_cores`,
    "tiled" on other GPUs and "staged" elsewhere."""
    return _form("ZYX_ATTENTION_FORM", "staged" if not gpu else "cores" if tensor_cores else "tiled")


def gradient_form(gpu: bool) -> str:
    """Which form the backward's kernels take where they are not on tensor cores: ZYX_ATTENTION_GRAD_FORM, else
    the forward's (attention_form), so that the backward can be timed in one form against another beside the same
    forward."""
    return _form("ZYX_ATTENTION_GRAD_FORM", attention_form(gpu))


def _form(variable: str, default: str) -> str:
    form = os.environ.get(variable) or default
    if form not in FORMS:
        raise ValueError(f"{variable}={form!r}: expected one of {', '.join(FORMS)}")
    return form


@dataclass(frozen=True)
class AttentionPattern:
    """The nodes of softmax(X) W that the kernel reads: the product, its P-side and W-side operands, P, X, and
    the softmax's row statistics (stored too where a backward reads them: attention_grad.py)."""

    product: Node  # SUM over its last axis of MUL(p_side, w_side)
    p_side: Node
    w_side: Node
    probabilities: Node  # P: DIV(exp(X - max), sum(exp(X - max)))
    scores: Node  # X
    maximum: Node  # RMAX(X) over the last axis
    total: Node  # SUM(exp(X - max)) over the last axis


def match_attention(root: Node, materialized: dict[int, Node], gpu: bool = False) -> Optional[AttentionPattern]:
    """The pattern whose product `root` is (or reshapes) when no kernel stores P, its exponentials or X (then
    recomputing them here would save nothing) and P is large enough to be worth not storing
    (min_probability_bytes), else None."""
    if not (root.dtype == float32 or root.dtype.is_narrow_float) or root.numel == 0:
        return None  # (half precision is computed in float32 registers: FLOAT_LOWEST is float32's)
    found = attention_product(root.src[0] if root.op is Op.RESHAPE else root)
    if found is None:
        return None
    probabilities, softmax = found.probabilities, found.softmax
    if any(id(node) in materialized for node in (probabilities, probabilities.src[0], softmax.scores)):
        return None
    threshold = min_probability_bytes(gpu)
    if threshold is None or probabilities.numel * probabilities.dtype.itemsize < threshold:
        return None
    maximum = under_views(softmax.shift.src[0]) if softmax.shift.op is Op.DETACH else softmax.shift
    return AttentionPattern(found.product, found.p_side, found.w_side, probabilities, softmax.scores, maximum,
                            softmax.total)


class NestedReductions(Lowering):
    """A lowering whose reductions met inside its own loop are loops nested there (where `_nests` says so),
    computed where they are read instead of read from memory; reductions met inside those are read from memory."""

    _nesting = False  # inside a nested reduction

    def _nests(self, node: Node, index: Index, guard: tuple) -> bool:
        raise NotImplementedError

    def _compute(self, node: Node, index: Index, guard: tuple) -> Step:
        if node.op not in REDUCE_OPS or self._nesting or not self._nests(node, index, guard):
            return (yield from super()._compute(node, index, guard))
        self._nesting = True
        try:
            depth = len(self._scopes) - 1
            start = Const(0 if node.op is Op.SUM else FLOAT_LOWEST, node.dtype)
            acc, = self._reduction_loop(node, depth, [index], start)
            return self._rounded(_Value(acc, depth), node.dtype) if node.dtype.is_narrow_float else _Value(acc, depth)
        finally:
            self._nesting = False


class AttentionLowering(NestedReductions):
    """A work item owns a row of the product's outputs O[.., i, :] and walks the key axis once with an online
    softmax (see the module's docstring), the scores computed once per key for the whole row; the scores' own
    reductions nest inside that walk."""

    def __init__(self, root: Node, pattern: AttentionPattern, materialized: dict[int, Node], produced: set[int],
                 stored_apart: frozenset = frozenset(), param_limit: int = PARAM_LIMIT):
        super().__init__(root, materialized, produced, False, stored_apart, param_limit)
        self.pattern = pattern
        self.kind = "a"
        self.width = pattern.product.shape[-2]  # outputs per row, consecutive in the root's order
        self.rows = self.numel // self.width
        row = Expr.var("gid", self.rows)
        self.positions = [row * self.width + e for e in range(self.width)]
        self.elements = [unravel(position, self.space) for position in self.positions]
        self.guards = [()] * self.width

    def _lower_outputs(self) -> None:
        pattern, dtype = self.pattern, float32  # (half precision is computed in float32, rounded where the trace is)
        keys = pattern.product.src[0].shape[-1]
        outers = [unravel(linear(element, self.root.shape), pattern.product.shape)[:-1] for element in self.elements]
        maximum, total = Reg(self.names.fresh("m"), dtype), Reg(self.names.fresh("l"), dtype)
        accs = [Reg(self.names.fresh("acc"), dtype) for _ in outers]
        self._scopes[0] += [Define(maximum, Const(FLOAT_LOWEST, dtype)), Define(total, Const(0.0, dtype)),
                            *(Define(acc, Const(0.0, dtype)) for acc in accs)]
        name = self.names.fresh("j")
        key = Expr.var(name, keys)
        self._open_loop(name, keys)
        read = {tuple(e.key for e in index): index for index in (self._probability_index((*outer, key))
                                                                 for outer in outers)}
        if len(read) != 1:  # the row's outputs must share their probabilities (P's index without e)
            raise NotAttention(pattern.probabilities)
        score = self.value(pattern.scores, next(iter(read.values())), ()).operand
        weights = [self.value(pattern.w_side, (*outer, key), ()).operand for outer in outers]
        lowered = self._alu(Op.NEG, self._alu(Op.MAX, maximum, score))
        rescale = self._alu(Op.EXP, self._alu(Op.ADD, maximum, lowered))
        exponential, weighted = self._exponential(score, lowered, self._scopes[-1])
        self._scopes[-1] += [Accumulate(total, Op.MUL, rescale), Accumulate(total, Op.ADD, exponential)]
        for acc, weight in zip(accs, weights):
            self._scopes[-1] += [Accumulate(acc, Op.MUL, rescale), MultiplyAdd(acc, weighted, weight)]
        self._scopes[-1].append(Accumulate(maximum, Op.MAX, score))
        self._scopes[0].append(Loop(name, keys, tuple(self._close_loop())))
        self._store_statistics(next(iter(read.values())), maximum, total)
        for element, acc in enumerate(accs):
            self._element = element
            out = Reg(self.names.fresh("v"), dtype)
            self._scopes[0].append(Alu(out, Op.DIV, (acc, total)))
            self._store_output(out, element)

    def _store_statistics(self, probability: Index, maximum: Reg, total: Reg, element: int = 0) -> None:
        """The row's maximum and sum of exponentials, where a backward reads them (attention_grad.py): this kernel
        computes them, no other could without storing X. `probability`: where the row reads P; `element`: an
        output of that row (its guard is the stores')."""
        self._element = element
        row = (*probability[:-1], Expr(0))
        for node, value in ((self.pattern.maximum, maximum), (self.pattern.total, total)):
            if id(node) in self.materialized and id(node) not in self.produced:
                self._store(node, _Value(value, 0), linear(row, node.shape))

    def _store_output(self, value: Reg, element: int) -> None:
        """An output, into the root and into the product the root reshapes where another kernel reads that (a
        backward's D = rowsum(dO O)): at the same position, both being contiguous."""
        self._element = element
        self._store(self.root, _Value(value, 0), self.positions[element])
        product = self.pattern.product
        if product is not self.root and id(product) in self.materialized and id(product) not in self.produced:
            self._store(product, _Value(value, 0), self.positions[element])

    def _exponential(self, score: Operand, lowered: Operand, lines: list) -> tuple[Operand, Operand]:
        """(exp(x - m), the weight the product multiplies W by) with `lowered` = -m, statements appended to `lines`,
        rounded where the unfused trace rounds (under autocast): x - m and its exponential to P's dtype (a half
        precision softmax), the weight to the product's P-side dtype (a float32 P cast down for the product). The
        running maximum m is the final one for most keys, so most exponentials round as the unfused ones do; P
        itself (exp(x - M) / l) is never formed here, so the weight is rounded before the division by l."""
        softmax, product = self.pattern.probabilities.dtype, self.pattern.p_side.dtype
        shifted = self._rounded_line(self._line_in(lines, Op.ADD, (score, lowered)), softmax, lines)
        exponential = self._rounded_line(self._line_in(lines, Op.EXP, (shifted,)), softmax, lines)
        return exponential, (exponential if product == softmax else self._rounded_line(exponential, product, lines))

    def _line_in(self, lines: list, op: Op, args: tuple) -> Reg:
        """A float32 statement appended to `lines`; its register."""
        out = Reg(self.names.fresh("v"), float32)
        lines.append(Alu(out, op, args))
        return out

    def _rounded_line(self, value: Operand, dtype: DType, lines: list) -> Operand:
        """`value` rounded to `dtype` where that is half precision (a statement appended to `lines`), else itself."""
        if not dtype.is_narrow_float:
            return value
        out = Reg(self.names.fresh("v"), dtype)
        lines.append(Alu(out, Op.CAST, (value,)))
        return out

    def _alu(self, op: Op, *args: object) -> Reg:
        """A statement in the key loop's body; its register."""
        out = Reg(self.names.fresh("v"), float32)
        self._scopes[-1].append(Alu(out, op, tuple(args)))  # type: ignore[arg-type]
        return out

    def _probability_index(self, full: Index) -> Index:
        """Where the product's element `full` reads P: through the views (and a cast down) between the product's
        operand and P. P's last axis must be the key counter alone (else this is not softmax(X) V over the keys)."""
        node, index = self.pattern.p_side, full
        while node is not self.pattern.probabilities:
            if node.op is Op.CAST:  # P cast down for the product (autocast): read where P is
                node = node.src[0]
                continue
            index, condition = source_index(node, index)
            if index is None or condition is not None:
                raise NotAttention(node)
            node = node.src[0]
        key = full[-1]
        if index[-1].key != key.key or any(key.variables() & e.variables() for e in index[:-1]):
            raise NotAttention(node)
        return index

    def _nests(self, node: Node, index: Index, guard: tuple) -> bool:
        """The scores' own reductions (a product over the head dimension) as loops inside the key loop; the
        reductions those read (q's projection) are read from memory, as any kernel reads them."""
        return self._depth_of(index, guard) != 0

class NotAttention(Exception):
    """The product reads P at other positions than softmax(X) V over the keys needs."""


def lower_attention(root: Node, pattern: AttentionPattern, materialized: dict[int, Node], produced: set[int],
                    stored_apart: frozenset = frozenset(), param_limit: int = PARAM_LIMIT) -> Optional[LoweredKernel]:
    """The per-row fused kernel storing `root` (see the module), or None where the product reads P elsewhere."""
    try:
        return AttentionLowering(root, pattern, materialized, produced, stored_apart, param_limit).lower()
    except NotAttention:
        return None
