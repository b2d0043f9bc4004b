"""Elementwise kernels for CPUs, written with OpenCL vector types.

PoCL vectorizes plain arithmetic across work items but calls exp, tanh and the like one lane at a time;
written with floatN values the same math runs on whole vectors. Each work item computes W consecutive
outputs, and each node is rendered at the W lanes' indices at once: views map every lane's index; a load
whose lanes are consecutive is one `vloadW`, one whose lanes all read one element is a broadcast, any other
is gathered lane by lane. Comparisons give intW masks (-1 true, 0 false), as OpenCL's vector relations do.

Kernels this does not cover (reductions, random numbers, integer or float64 values, a recomputed value
blowing up) raise NotVectorizable, and the scheduler renders them with the scalar KernelBuilder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..dtypes import DType
from ..trace.node import Node
from ..trace.ops import ELEMENTWISE_OPS, Op, REDUCE_OPS
from . import opencl_c as c
from .render import RECOMPUTE_LIMIT, Index, KernelBuilder, _Scope, _Value, linear, source_index, unravel
from .symbolic import Expr

Lanes = tuple[Index, ...]
LaneGuards = tuple[tuple[str, ...], ...]

MATH_OPS = {Op.NEG, Op.RECIP, Op.SQRT, Op.EXP, Op.LOG, Op.SIN, Op.COS, Op.TANH, Op.SIGMOID, Op.FLOOR, Op.CEIL,
            Op.RINT, Op.DETACH, Op.ADD, Op.MUL, Op.DIV, Op.POW, Op.MAX, Op.CMPLT, Op.CMPEQ, Op.WHERE, Op.CAST}
MASK_OPS = {Op.NOT, Op.AND, Op.OR, Op.ADD, Op.MUL, Op.MAX, Op.CMPEQ, Op.WHERE, Op.CAST, Op.DETACH}


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

    def __post_init__(self) -> None:
        self.space = self.root.shape
        self.numel = math.prod(self.space)
        if self.numel == 0 or self.numel % self.width or self.root.op in REDUCE_OPS:
            raise NotVectorizable(self.root)
        _kind(self.root.dtype)
        self.work_items = self.numel // self.width
        self.gid = Expr.var("gid", self.work_items)
        self.positions = [self.gid * self.width + lane for lane in range(self.width)]
        self.lanes: Lanes = tuple(unravel(position, self.space) for position in self.positions)
        self.elements = [self.lanes[0]]
        self._scopes = [_Scope(0)]

    def _vector_type(self, dtype: DType) -> str:
        return f"{'float' if _kind(dtype) == 'float' else 'int'}{self.width}"

    def _broadcast(self, text: str, dtype: DType) -> str:
        return f"(({self._vector_type(dtype)})({text}))"

    def _emit(self, depth: int, dtype: DType, text: str) -> _Value:
        name = self._fresh("v")
        self._scopes[0].lines.append(f"{self._vector_type(dtype)} {name} = {text};")
        return _Value(name, 0)

    # ---- rendering at all lanes at once ------------------------------------------------------------------
    def build(self):
        value = self.vrender(self.root, self.lanes, ((),) * self.width)
        self._store(self.root, value)
        return self._finish()

    def _store(self, node: Node, value: _Value) -> None:
        out = self._param("store", node)
        if node not in self.outputs:
            self.outputs.append(node)
        self.produced.add(id(node))
        self._local_outputs.add(id(node))
        text = value.text if _kind(node.dtype) == "float" else f"convert_uchar{self.width}(-{value.text})"
        self._stores.append(f"vstore{self.width}({text}, gid, {out});")

    def vrender(self, node: Node, lanes: Lanes, guards: LaneGuards) -> _Value:
        key = (id(node), tuple(tuple(e.key for e in index) for index in lanes), guards)
        if key not in self._values:
            self._values[key] = self._vrender(node, lanes, guards)
        return self._values[key]

    def _hosted(self, node: Node, lanes: Lanes, guards: LaneGuards) -> bool:
        """Every lane reads the node at this work item's own output positions."""
        return (not any(guards) and node.numel == self.numel
                and all(linear(index, node.shape) == position for index, position in zip(lanes, self.positions)))

    def _vrender(self, node: Node, lanes: Lanes, guards: LaneGuards) -> _Value:
        if node is not self.root and id(node) in self.materialized:
            if id(node) in self._local_outputs:
                return self._vcompute(node, lanes, guards)
            if (id(node) in self.produced or id(node) in self.stored_apart or not self.allow_extra_outputs
                    or node.op is Op.BUFFER or not self._hosted(node, lanes, guards)):
                return self._vload(node, lanes, guards)
            value = self._vcompute(node, lanes, guards)
            self._store(node, value)
            return value
        if node.op is Op.BUFFER:
            return self._vload(node, lanes, guards)
        return self._vcompute(node, lanes, guards)

    def _vcompute(self, node: Node, lanes: Lanes, guards: LaneGuards) -> _Value:
        op = node.op
        if op is Op.CONST:
            literal = c.literal(node.arg, node.dtype) if _kind(node.dtype) == "float" else ("-1" if node.arg else "0")
            return _Value(self._broadcast(literal, node.dtype), 0)
        if op in REDUCE_OPS:
            if self._hosted(node, lanes, guards):
                raise NotVectorizable(node)  # a reduction computed here needs a loop: the scalar builder's
            self.materialized[id(node)] = node
            return self._vload(node, lanes, guards)
        if op in ELEMENTWISE_OPS:
            count = self._renders.get(id(node), (0, node))[0] + 1
            self._renders[id(node)] = (count, node)
            if count > RECOMPUTE_LIMIT:
                raise NotVectorizable(node)
            sources = [self.vrender(s, lanes, guards) for s in node.src]
            return self._emit(0, node.dtype, self._vexpression(node, [s.text for s in sources]))
        if op in (Op.RAND,):
            raise NotVectorizable(node)
        return self._vmovement(node, lanes, guards)

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
        if op is Op.MAX and _kind(dtype) == "float":  # NaN wins, as in zyx_max_float
            return f"select({args[1]},{args[0]},({args[0]}>{args[1]})|isnan({args[0]}))"
        if len(args) == 1:
            return c.unary(op, args[0], dtype)
        return c.binary(op, args[0], args[1], operand)

    def _vmovement(self, node: Node, lanes: Lanes, guards: LaneGuards) -> _Value:
        inners, conditions = [], []
        for index in lanes:
            inner, condition = source_index(node, index)
            if inner is None:  # this lane lies in the padding: read any valid element, then discard it
                inner, condition = tuple(Expr(0) for _ in node.src[0].shape), "0"
            inners.append(inner)
            conditions.append(condition)
        if not any(conditions):
            return self.vrender(node.src[0], tuple(inners), guards)
        inner_guards = tuple(g + (cond,) if cond else g for g, cond in zip(guards, conditions))
        value = self.vrender(node.src[0], tuple(inners), inner_guards)
        fill = self._vcompute_const(node.arg[1], node.dtype)
        if len(set(conditions)) == 1:
            return self._emit(0, node.dtype, f"(({conditions[0]})?{value.text}:{fill})")
        mask = ",".join(f"-(int)({cond})" if cond else "-1" for cond in conditions)
        return self._emit(0, node.dtype, f"select({fill},{value.text},(int{self.width})({mask}))")

    def _vcompute_const(self, value: object, dtype: DType) -> str:
        return self._broadcast(c.literal(value, dtype) if _kind(dtype) == "float" else ("-1" if value else "0"), dtype)

    def _vload(self, node: Node, lanes: Lanes, guards: LaneGuards) -> _Value:
        kind = _kind(node.dtype)
        if node.op is not Op.BUFFER and id(node) not in self.produced and node not in self.needs:
            self.needs.append(node)
        name = self._param("load", node)
        flats = [linear(index, node.shape) for index, guard in zip(lanes, guards)]
        if any(guards) or flats != self.positions:
            self._misaligned.add(id(node))
        width, first = self.width, flats[0]
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
            elements = []
            for flat, guard in zip(flats, guards):
                element = f"{name}[{flat.render()}]" if kind == "float" else f"-({name}[{flat.render()}]!=0)"
                elements.append(f"(({'&&'.join(guard)})?{element}:0)" if guard else element)
            text = f"({self._vector_type(node.dtype)})({','.join(elements)})"
        if shared_guard:
            text = f"(({'&&'.join(shared_guard)})?{text}:{self._vcompute_const(0, node.dtype)})"
        return self._emit(0, node.dtype, text)

    def _launch_shape(self) -> tuple[int, Optional[int]]:
        return self.work_items, None
