"""Elementwise kernels for CPUs, written with OpenCL vector types.

PoCL vectorizes plain arithmetic across work items but calls exp, tanh and the like one lane at a time;
written with floatN values the same math runs on whole vectors. Each work item computes W consecutive
outputs, and each node is rendered at the W lanes' indices at once: views map every lane's index; a load
whose lanes are consecutive is one `vloadW`, one whose lanes all read one element is a broadcast, any other
is gathered lane by lane. Comparisons give intW masks (-1 true, 0 false), as OpenCL's vector relations do.

Reductions come in two shapes. With W consecutive outputs per item each lane accumulates its own output
(a column sum reads rows of W elements); with one output per item (`uniform`: every lane at the same
output) the lanes walk W consecutive reduced elements and are summed across at the end (a row sum). The
scheduler keeps whichever shape reads its loops' operands as whole vectors.

Kernels this does not cover (random numbers, integer or float64 values, a recomputed value blowing up,
reduced lengths that do not divide) raise NotVectorizable, and the scheduler renders them with the scalar
KernelBuilder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..dtypes import DType
from ..trace.node import Node
from ..trace.ops import ELEMENTWISE_OPS, Op, REDUCE_OPS
from . import opencl_c as c
from .render import (RECOMPUTE_LIMIT, Index, KernelBuilder, Rendering, _Scope, _Value, _request_all,
                     linear, source_index, unravel)
from .symbolic import Expr

Lanes = tuple[Index, ...]
LaneGuards = tuple[tuple[str, ...], ...]

MATH_OPS = {Op.NEG, Op.RECIP, Op.SQRT, Op.EXP, Op.LOG, Op.SIN, Op.COS, Op.TANH, Op.SIGMOID, Op.FLOOR, Op.CEIL,
            Op.RINT, Op.DETACH, Op.ADD, Op.MUL, Op.DIV, Op.POW, Op.MAX, Op.CMPLT, Op.CMPEQ, Op.WHERE, Op.CAST}
MASK_OPS = {Op.NOT, Op.AND, Op.OR, Op.XOR, Op.ADD, Op.MUL, Op.MAX, Op.CMPEQ, Op.WHERE, Op.CAST, Op.DETACH}


class NotVectorizable(Exception):
    """The kernel needs something the vector builder does not render; the scalar builder takes it."""


def _kind(dtype: DType) -> str:
    if dtype.name == "float32":
        return "float"
    if dtype.is_bool:
        return "mask"
    raise NotVectorizable(dtype.name)


@dataclass
class VectorBuilder(KernelBuilder):
    """KernelBuilder whose work items each compute `width` consecutive outputs as one vector."""

    width: int = 16
    uniform: bool = False  # one output per item (all lanes at it), its reductions walked W elements at a time
    gathers_in_loops: int = 0  # loads inside reduction loops whose lanes are not one vector

    def __post_init__(self) -> None:
        self.space = self.root.shape
        self.numel = math.prod(self.space)
        if self.numel == 0 or (self.numel % self.width and not self.uniform):
            raise NotVectorizable(self.root)
        _kind(self.root.dtype)
        self.work_items = self.numel if self.uniform else self.numel // self.width
        self.gid = Expr.var("gid", self.work_items)
        if self.uniform:
            self.positions = [self.gid] * self.width
        else:
            self.positions = [self.gid * self.width + lane for lane in range(self.width)]
        self.lanes: Lanes = tuple(unravel(position, self.space) for position in self.positions)
        self.elements = [self.lanes[0]]
        self._scopes = [_Scope(0)]

    def _vector_type(self, dtype: DType, width: int = 0) -> str:
        width = width or self.width
        return ("float" if _kind(dtype) == "float" else "int") + (str(width) if width > 1 else "")

    def _broadcast(self, text: str, dtype: DType) -> str:
        return f"(({self._vector_type(dtype)})({text}))"

    def _emit(self, depth: int, dtype: DType, text: str, width: int = 0) -> _Value:
        name = self._fresh("v")
        self._scopes[depth].lines.append(f"{self._vector_type(dtype, width)} {name} = {text};")
        return _Value(name, depth)

    # ---- rendering at all lanes at once ------------------------------------------------------------------
    def build(self):
        value = self.render(self.root, self.lanes, ((),) * self.width)
        if self.uniform and not self._has_loop:
            raise NotVectorizable(self.root)  # nothing to walk in vectors: every lane would repeat one output
        self._store(self.root, value)
        return self._finish()

    def _store(self, node: Node, value: _Value) -> None:
        out = self._output(node)
        mask = _kind(node.dtype) == "mask"
        if self.uniform:
            self._stores.append(c.store(node.dtype, out, "gid", f"(-{value.text}.s0)" if mask else f"{value.text}.s0"))
        else:
            text = f"convert_uchar{self.width}(-{value.text})" if mask else value.text
            self._stores.append(f"vstore{self.width}({text}, gid, {out});")

    # KernelBuilder's rendering (its `render` loop, and `_render` deciding between computing, hosting an extra
    # output and loading) runs unchanged; here an index is the lanes' indices and a guard the lanes' guards.
    def _index_key(self, lanes: Lanes) -> tuple:  # type: ignore[override]
        return tuple(tuple(e.key for e in index) for index in lanes)

    def _can_host(self, node: Node, lanes: Lanes, guards: LaneGuards) -> bool:  # type: ignore[override]
        """Every lane reads the node at this work item's own output positions."""
        return (not any(guards) and node.numel == self.numel and node.op is not Op.BUFFER
                and all(linear(index, node.shape) == position for index, position in zip(lanes, self.positions)))

    def _compute(self, node: Node, lanes: Lanes, guards: LaneGuards) -> Rendering:  # type: ignore[override]
        op = node.op
        if op is Op.CONST:
            return _Value(self._constant(node.arg, node.dtype), 0)
        if op in REDUCE_OPS:
            if self._can_host(node, lanes, guards) or node is self.root:
                if id(node) not in self._reductions:
                    self._reductions[id(node)] = self._vreduce(node)
                return self._reductions[id(node)]
            self.materialized[id(node)] = node
            return self._load(node, lanes, guards)
        if op in ELEMENTWISE_OPS:
            compared = _less_or_equal(node)
            sources = yield from _request_all(compared or node.src, lanes, guards)
            if self._count_render(node) > RECOMPUTE_LIMIT:
                raise NotVectorizable(node)
            depth = max([s.depth for s in sources] + [0])
            text = (f"({sources[0].text}<={sources[1].text})" if compared
                    else self._vexpression(node, [s.text for s in sources]))
            return self._emit_computed(node, depth, text)
        if op in (Op.RAND,):
            raise NotVectorizable(node)
        return (yield from self._movement(node, lanes, guards))

    def _vexpression(self, node: Node, args: list[str]) -> str:
        op, dtype = node.op, node.dtype
        operand = node.src[-1].dtype  # WHERE's condition is its first source; the values decide
        kinds = {_kind(s.dtype) for s in node.src} | {_kind(dtype)}
        if (op not in MATH_OPS if "float" in kinds else op not in MASK_OPS) or operand.name not in ("float32", "bool"):
            raise NotVectorizable(node)
        if op is Op.CAST:
            if _kind(dtype) == _kind(operand):
                return args[0]
            if _kind(dtype) == "mask":
                return f"({args[0]}!={self._broadcast('0.0f', operand)})"
            return f"select({self._broadcast('0.0f', dtype)},{self._broadcast('1.0f', dtype)},{args[0]})"
        if op is Op.WHERE:
            return f"select({args[2]},{args[1]},{args[0]})"
        if len(args) == 1:
            return c.unary(op, args[0], dtype)
        return _combine(op, args[0], args[1], operand)

    # ---- reductions --------------------------------------------------------------------------------------
    def _vreduce(self, node: Node) -> _Value:
        """A loop at the kernel's top level; several accumulators keep the adds independent."""
        source, axes, dtype = node.src[0], node.arg, node.dtype
        sizes = tuple(source.shape[a] for a in axes)
        count = math.prod(sizes)
        if count == 0 or (self.uniform and count % self.width):
            raise NotVectorizable(node)
        self._has_loop = True
        self._longest_reduction = max(self._longest_reduction, count)
        combine = Op.ADD if node.op is Op.SUM else Op.MAX
        start = self._constant(0 if node.op is Op.SUM else c.lowest_value(dtype), dtype)
        steps = count // self.width if self.uniform else count
        unroll = next(u for u in (4, 2, 1) if steps % u == 0)
        outputs = [unravel(position, node.shape) for position in self.positions]
        accumulators = [self._fresh("acc") for _ in range(unroll)]
        self._scopes[0].lines += [f"{self._vector_type(dtype)} {acc} = {start};" for acc in accumulators]
        loop_var = self._fresh("r")
        self._loop_depth[loop_var] = len(self._scopes)  # a reduction met inside another's body nests deeper
        self._scopes.append(_Scope(len(self._scopes)))
        step = Expr.var(loop_var, steps // unroll) * unroll
        for u, acc in enumerate(accumulators):
            if self.uniform:
                flats = [(step + u) * self.width + lane for lane in range(self.width)]
            else:
                flats = [step + u] * self.width
            body = []
            for index, flat in zip(outputs, flats):
                full = list(index)
                for axis, expr in zip(axes, unravel(flat, sizes)):
                    full[axis] = expr
                body.append(tuple(full))
            value = self.render(source, tuple(body), ((),) * self.width)
            self._scopes[-1].lines.append(f"{acc} = {_combine(combine, acc, value.text, dtype)};")
        lines = self._scopes.pop().lines
        counter = "long" if steps >= 2**31 else "int"
        self._scopes[0].lines.append(
            f"for ({counter} {loop_var} = 0; {loop_var} < {steps // unroll}; {loop_var}++) {{\n"
            + "\n".join("  " + line for line in lines) + "\n}")
        while len(accumulators) > 1:
            accumulators = [self._emit(0, dtype, _combine(combine, a, b, dtype)).text
                            for a, b in zip(accumulators[::2], accumulators[1::2])]
        if not self.uniform:
            return _Value(accumulators[0], 0)
        total, width = accumulators[0], self.width
        while width > 1:  # across the lanes, halving
            width //= 2
            total = self._emit(0, dtype, _combine(combine, f"{total}.lo", f"{total}.hi", dtype), width).text
        return _Value(self._broadcast(total, dtype), 0)

    def _movement(self, node: Node, lanes: Lanes, guards: LaneGuards) -> Rendering:  # type: ignore[override]
        fill = self._constant(node.arg[1], node.dtype) if node.op is Op.PAD else ""
        inners, conditions, padded = [], [], []
        for index in lanes:
            inner, condition = source_index(node, index)
            padded.append(inner is None)
            if inner is None:  # the lane lies in the padding: read element 0 (always valid), then discard it
                inner = tuple(Expr(0) for _ in node.src[0].shape)
            inners.append(inner)
            conditions.append(condition)
        if all(padded):
            return _Value(fill, 0)
        if not any(conditions) and not any(padded):
            return (yield node.src[0], tuple(inners), guards)
        inner_guards = tuple(g + (cond,) if cond else g for g, cond in zip(guards, conditions))
        value = yield node.src[0], tuple(inners), inner_guards
        depth = max([value.depth] + [self._depth_of(index, guard) for index, guard in zip(lanes, inner_guards)])
        if not any(padded) and len(set(conditions)) == 1:
            return self._emit(depth, node.dtype, f"(({conditions[0]})?{value.text}:{fill})")
        mask = ",".join("0" if out else f"-(int)({cond})" if cond else "-1" for out, cond in zip(padded, conditions))
        return self._emit(depth, node.dtype, f"select({fill},{value.text},(int{self.width})({mask}))")

    def _constant(self, value: object, dtype: DType) -> str:
        return self._broadcast(c.literal(value, dtype) if _kind(dtype) == "float" else ("-1" if value else "0"), dtype)

    def _load(self, node: Node, lanes: Lanes, guards: LaneGuards) -> _Value:  # type: ignore[override]
        kind = _kind(node.dtype)
        name = self._input(node)
        flats = [linear(index, node.shape) for index, guard in zip(lanes, guards)]
        if any(guards) or flats != self.positions:
            self._misaligned.add(id(node))
        width, first = self.width, flats[0]
        depth = max(self._depth_of(index, guard) for index, guard in zip(lanes, guards))
        shared_guard = guards[0] if len(set(guards)) == 1 else None
        if shared_guard is not None and all(flat == first + lane for lane, flat in enumerate(flats)):
            vector = f"vload{width}(gid,{name})" if first == self.positions[0] else \
                f"vload{width}(0,{name}+{first.render()})"
            text = vector if kind == "float" else f"(convert_int{width}({vector})!=(int{width})(0))"
        elif shared_guard is not None and all(flat == first for flat in flats):
            element = f"{name}[{first.render()}]"
            text = self._broadcast(element if kind == "float" else f"-({element}!=0)", node.dtype)
        else:
            shared_guard = ()
            self.gathers_in_loops += depth > 0
            elements = []
            for flat, guard in zip(flats, guards):
                element = f"{name}[{flat.render()}]" if kind == "float" else f"-({name}[{flat.render()}]!=0)"
                elements.append(f"(({'&&'.join(guard)})?{element}:0)" if guard else element)
            text = f"({self._vector_type(node.dtype)})({','.join(elements)})"
        if shared_guard:
            text = f"(({'&&'.join(shared_guard)})?{text}:{self._constant(0, node.dtype)})"
        return self._emit(depth, node.dtype, text)

    def _launch_shape(self) -> tuple[int, Optional[int]]:
        return self.work_items, None


def _less_or_equal(node: Node) -> Optional[tuple[Node, Node]]:
    """(a, b) when `node` is `(a < b) | (a == b)` on floats (how `<=`, `>=` and relu are composed): one vector
    comparison instead of two and an or (4% of W1b)."""
    if node.op is not Op.OR or {s.op for s in node.src} != {Op.CMPLT, Op.CMPEQ}:
        return None
    less, equal = sorted(node.src, key=lambda s: s.op is Op.CMPEQ)
    if _kind(less.src[0].dtype) != "float":
        return None
    if all(map(_same_value, less.src, equal.src)) or all(map(_same_value, less.src, equal.src[::-1])):
        return less.src[0], less.src[1]
    return None


def _same_value(a: Node, b: Node) -> bool:
    """The same node, or the same constant or view of the same node (`x <= 0` builds its 0 twice); compared
    pair by pair from an explicit stack, as two long chains built alike would be too deep for recursion."""
    pairs, compared = [(a, b)], set()
    while pairs:
        a, b = pairs.pop()
        if a is b or (id(a), id(b)) in compared:
            continue
        compared.add((id(a), id(b)))
        if (a.op is not b.op or a.op in (Op.BUFFER, Op.RAND) or (a.arg, a.shape, a.dtype) != (b.arg, b.shape, b.dtype)
                or len(a.src) != len(b.src)):
            return False
        pairs.extend(zip(a.src, b.src))
    return True


def _combine(op: Op, a: str, b: str, dtype: DType) -> str:
    """A binary op on vectors (or scalars) of `dtype`; max lets NaN win, as zyx_max_float does."""
    if op is Op.MAX and _kind(dtype) == "float":
        return f"select({b},{a},({a}>{b})|isnan({a}))"
    return c.binary(op, a, b, dtype)
