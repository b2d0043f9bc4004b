"""Several outputs per work item as the lanes of vector registers (CPUs).

PoCL vectorizes plain arithmetic across work items but calls exp, tanh and the like one lane at a time;
written with floatN values the same math runs on whole vectors. Each lane is the scalar kernel with one
variable substituted: the work item's output (`gid` -> gid*W + lane), or with `uniform` (one output per item,
every lane at it) each loop's counter (r -> r*W + lane), the lanes then combined across at the loop's end. With
`tails`, a loop whose steps W does not divide leaves the last ones to a scalar loop of its own, which reads the
values from outside it (the same in every lane) by their first lane.
A load whose lanes' indices are consecutive becomes one vector load, one whose lanes all read one element a
broadcast, any other a gather lane by lane. Comparisons give masks (bool lanes; OpenCL's intN, -1 true).
A value the same in every lane (math on broadcast elements and constants: Adam's bias corrections, powers of its
step count) is computed once, as a scalar, and broadcast into the lanes: PoCL computes `pow` of a vector one lane
at a time. Integers the same in every lane (an embedding's index) stay scalars that only scalar math reads. The one integer
that differs between lanes is the marked arange leaf read at consecutive elements (a one-hot mask's classes, a
cross-entropy gradient's): its lanes are first, first+1, ..., so compared with a scalar s they are the mask
`float(s - first) == (0, 1, ..., W-1)`, from one scalar load.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from ...dtypes import float32
from ...trace.node import ARANGE
from ...trace.ops import Op
from ..kernel_ir import (LESS_EQUAL, Accumulate, Alu, Axis, Broadcast, Const, Define, Extract, Gather, If, Kernel,
                         LaneSelect, Load, Loop, Operand, Param, Reg, Role, Select, Statement, Store, rewrite,
                         simplify_cond, substitute, walk)
from ..symbolic import Expr
from . import accumulators, copy_body, defined_register, fold_lanes, widen

MATH_OPS = {Op.NEG, Op.RECIP, Op.SQRT, Op.EXP, Op.LOG, Op.SIN, Op.COS, Op.TANH, Op.SIGMOID, Op.ERF, Op.FLOOR, Op.CEIL,
            Op.RINT, Op.DETACH, Op.ADD, Op.MUL, Op.DIV, Op.POW, Op.MAX, Op.CMPLT, Op.CMPEQ, Op.WHERE, Op.CAST,
            LESS_EQUAL}
# math PoCL runs one lane at a time in a scalar kernel (library calls): vector lanes pay for a kernel that gathers
TRANSCENDENTAL_OPS = {Op.RECIP, Op.SQRT, Op.EXP, Op.LOG, Op.SIN, Op.COS, Op.TANH, Op.SIGMOID, Op.ERF, Op.DIV, Op.POW}
MASK_OPS = {Op.NOT, Op.AND, Op.OR, Op.XOR, Op.ADD, Op.MUL, Op.MAX, Op.CMPEQ, Op.WHERE, Op.CAST, Op.DETACH}


class NotVectorizable(Exception):
    """The kernel needs something vector lanes do not express (random numbers, integers that differ between
    lanes, float64 values, reductions whose lengths the width does not divide) or that would not pay (a gather
    inside a loop; with `scalar_gathers`, outputs apart that only gather, without math PoCL calls lane by lane)."""


def vectorize(kernel: Kernel, width: int, uniform: bool = False, tails: bool = False,
              scalar_gathers: bool = False, narrow: bool = False) -> Optional[Kernel]:
    """`kernel` with `width` lanes per work item (see the module docstring), or None where it does not apply;
    with `scalar_gathers` (CPU drivers) also None for outputs apart whose every load is a gather and that compute
    no math PoCL calls lane by lane: each lane's guarded index written out (a padded copy, a pad's gradient: 47-144
    KB of source for 16 lanes) took PoCL 2-3x longer to compile than the scalar kernel, which it vectorizes itself.
    With `narrow` (GPUs), bfloat16 and float16 values are lanes too (read as vectors of 16-bit words, computed in
    float, rounded as a single value is): W7's bf16 elementwise kernels on an H100 moved one 2-byte element an item,
    1.0-1.3 TB/s."""
    try:
        return _Vectorizer(kernel, width, uniform, tails, scalar_gathers, narrow).run()
    except NotVectorizable:
        return None


class _Vectorizer:
    narrow = False  # half-precision values as lanes (`vectorize`)

    def __init__(self, kernel: Kernel, width: int, uniform: bool, tails: bool, scalar_gathers: bool,
                 narrow: bool = False):
        self.kernel, self.width, self.uniform, self.scalar_gathers = kernel, width, uniform, scalar_gathers
        self.narrow = narrow
        items = kernel.work_items
        loops = [a for a in kernel.axes if a.role is Role.REDUCE]
        if not items or any(a.size == 0 for a in loops) or (items % width and not uniform):
            raise NotVectorizable(kernel)
        if uniform:
            if all(a.size < width for a in loops) or (not tails and any(a.size % width for a in loops)):
                raise NotVectorizable(kernel)
            self.trips = {a.name: a.size // width for a in loops}
            self.lanes = [{a.name: Expr.var(a.name, a.size // width) * width + lane for a in loops}
                          for lane in range(width)]
            self.items = items
        else:
            self.trips = {a.name: a.size for a in loops}
            gid = Expr.var("gid", items // width)
            self.lanes = [{"gid": gid * width + lane} for lane in range(width)]
            self.items = items // width
        self._start(kernel.params)

    def _start(self, params: tuple[Param, ...]) -> None:
        """What the lanes learn on the way through the statements."""
        self.memos: list[dict] = [{} for _ in range(self.width)]
        self.names: dict[str, Operand] = {}
        self.scalars: dict[str, Reg] = {}  # the scalar of each register the same in every lane (its broadcast)
        self.aranges = {p.name for p in params if p.kind == "load" and p.node.op is Op.BUFFER
                        and p.node.arg == ARANGE}
        self.ramps: dict[str, Reg] = {}    # arange lanes at consecutive elements: the scalar of their first lane
        self.ramp_guards: dict[str, tuple] = {}  # a ramp read under a condition every lane shares (0s where not)
        self.depth = 0
        self.loads = {"vector": 0, "gather": 0}

    def run(self) -> Kernel:
        body = self._body(self.kernel.body)
        if self.scalar_gathers and self.loads["gather"] and not self.loads["vector"] and not any(
                isinstance(s, Alu) and s.op in TRANSCENDENTAL_OPS for s in walk(self.kernel.body)):
            raise NotVectorizable("gathers only")
        axes = tuple(Axis(a.name, self.items if a.role is Role.GLOBAL else self.trips.get(a.name, a.size), a.role)
                     for a in self.kernel.axes) + (Axis("lane", self.width, Role.VECTOR),)
        return dataclasses.replace(self.kernel, axes=axes, body=body)

    def _body(self, body: tuple) -> tuple:
        return tuple(line for statement in body for line in self._statement(statement))

    def _exprs(self, expr: Expr) -> list[Expr]:
        return [substitute(expr, values, memo) for values, memo in zip(self.lanes, self.memos)]

    def _conds(self, cond: tuple) -> list:
        """The condition in each lane (`_lane_bounds`: a concatenation's pieces, each a multiple of W wide, are
        bounds every lane passes or fails with the first)."""
        lanes = list(zip(*(self._lane_bounds(bound) for bound in cond))) or [()] * self.width
        return [simplify_cond(bounds) for bounds in lanes]

    def _lane_bounds(self, bound: tuple) -> list[tuple]:
        """`e >= k` or `e < k` in each lane; the first lane's in all of them where e's lanes are E, E+1, ...,
        E+W-1 with E and k multiples of W (W divides the distance from E to k: every lane passes where the first
        does). (W7's input gradient of its q, k, v product, the three gradients side by side in 768 columns:
        guarded lane by lane, every load gathered, its kernel stayed scalar, 6 ms a layer on PoCL 3.1.)"""
        expr, op, limit = bound
        lanes = self._exprs(expr)
        first = lanes[0]
        if (limit % self.width or first.const % self.width or any(c % self.width for c in first.terms.values())
                or any(e != first + lane for lane, e in enumerate(lanes))):
            return [(e, op, limit) for e in lanes]
        return [(first, op, limit)] * self.width

    def _floating(self, dtype) -> bool:
        """Whether values of `dtype` may be lanes: float32 and masks, half precision where `narrow`."""
        return dtype.name == "float32" or dtype.is_bool or (self.narrow and dtype.is_narrow_float)

    def _check_kind(self, dtype) -> None:
        if not self._floating(dtype):
            raise NotVectorizable(dtype.name)

    def _reg(self, reg: Reg) -> Reg:
        self._check_kind(reg.dtype)
        return Reg(reg.name, reg.dtype, self.width)

    def _operand(self, operand: Operand) -> Operand:
        self._check_kind(operand.dtype)
        if isinstance(operand, Reg) and operand.name in self.names:
            return self.names[operand.name]
        return widen(operand, self.width)

    def _statement(self, statement: Statement) -> list:
        if isinstance(statement, Load):
            return self._load(statement)
        if isinstance(statement, Alu):
            if statement.op in (Op.CMPEQ, Op.CMPLT) and any(isinstance(a, Reg) and a.name in self.ramps
                                                            for a in statement.args):
                return self._against_ramp(statement)
            scalars = [self._scalar(arg) for arg in statement.args]
            if None not in scalars:
                return self._uniform(Alu(self._scalar_reg(statement.out), statement.op, tuple(scalars)), statement.out)
            operand = statement.args[-1].dtype  # WHERE's condition is its first source; the values decide
            kinds = {a.dtype.is_bool for a in statement.args} | {statement.out.dtype.is_bool}
            if statement.op not in (MATH_OPS if False in kinds else MASK_OPS) or not self._floating(operand):
                raise NotVectorizable(statement.op)
            return [Alu(self._reg(statement.out), statement.op, tuple(map(self._operand, statement.args)))]
        if isinstance(statement, Select):
            return self._select(statement)
        if isinstance(statement, Define):
            return [Define(self._reg(statement.out), self._operand(statement.start))]
        if isinstance(statement, Accumulate):
            return [Accumulate(self._reg(statement.acc), statement.op, self._operand(statement.value))]
        if isinstance(statement, Loop):
            return self._loop(statement)
        if isinstance(statement, Store):
            return self._store(statement)
        raise NotVectorizable(statement)  # random numbers, and what only transforms make

    def _load(self, load: Load) -> list:
        flats, guards = self._exprs(load.index), self._conds(load.guard)
        first = flats[0]
        indirect = self._indirect(load)

        def read(out: Reg, mode: str = "element") -> Load:
            return Load(out, load.buffer, first, guards[0], mode, indirect)
        if all(guard is not None and guard == guards[0] for guard in guards) and all(flat == first for flat in flats):
            if load.out.dtype.is_bool:  # (a broadcast mask's lanes are -1 where true: read as one)
                return [read(self._reg(load.out), "broadcast")]
            return self._uniform(read(self._scalar_reg(load.out)), load.out)
        if (load.buffer in self.aranges and indirect is None and guards[0] is not None
                and all(guard == guards[0] for guard in guards)
                and all(flat == first + lane for lane, flat in enumerate(flats))):
            self.ramps[load.out.name] = self._scalar_reg(load.out)
            if guards[0]:
                self.ramp_guards[load.out.name] = guards[0]
            return [read(self.ramps[load.out.name])]
        out = self._reg(load.out)
        if all(guard is None for guard in guards):
            self.names[out.name] = Const(0, out.dtype, self.width)
            return []
        if all(guard is not None and guard == guards[0] for guard in guards):
            if all(flat == first + lane for lane, flat in enumerate(flats)):
                self.loads["vector"] += 1
                return [read(out, "vector")]
        if self.depth or indirect is not None:  # gathered on every trip: slower than scalar code; an indirect
            raise NotVectorizable(load)         # read whose lanes are not one row stays scalar
        self.loads["gather"] += 1
        return [Gather(out, load.buffer, tuple(zip(flats, guards)))]

    def _indirect(self, load: Load) -> Optional[tuple]:
        """An indirect load's index register as the scalar it is in every lane (an embedding's row: its features
        are the lanes, read as one vector); an index that differs between lanes is not vectorized."""
        if load.indirect is None:
            return None
        reg, size, stride = load.indirect
        scalar = self._scalar(reg)
        if not isinstance(scalar, Reg):
            raise NotVectorizable(load)
        return scalar, size, stride

    def _against_ramp(self, compare: Alu) -> list:
        """`s == arange lanes`, `s < arange lanes` or `arange lanes < s` (s the same in every lane: a one-hot
        class, a causal mask's query position) as a mask of `float(s - first)` against (0, 1, ..., W-1): exact, as
        a difference a float32 rounds is far outside [0, W). (With the int64 arange in the lanes the kernel stayed
        scalar: a cross-entropy gradient 15 ms against 4 on PoCL, W7's causal softmax 7 ms a layer.) A ramp read
        under a condition (a CPU product's epilogue in a tile's rows past the end: W7's causal softmax gradient)
        is 0 in every lane where that fails: the mask is then s compared with 0, selected under the condition."""
        ramp_first = isinstance(compare.args[0], Reg) and compare.args[0].name in self.ramps
        ramp, other = compare.args if ramp_first else compare.args[::-1]
        scalar = self._scalar(other)
        if scalar is None or not scalar.dtype.is_int or ramp.dtype != scalar.dtype:
            raise NotVectorizable(compare)
        name, dtype = compare.out.name, scalar.dtype
        below, offset = Reg(f"{name}_first", dtype), Reg(f"{name}_offset", dtype)
        lane, lanes = Reg(f"{name}_lane", float32), Reg(f"{name}_lanes", float32, self.width)
        steps = Const(tuple(float(k) for k in range(self.width)), float32, self.width)
        # s - first against lane k: s == first + k, s < first + k (offset < k), first + k < s (k < offset)
        operands = (steps, lanes) if compare.op is Op.CMPLT and ramp_first else (lanes, steps)
        guard, out = self.ramp_guards.get(ramp.name), self._reg(compare.out)
        mask = Reg(f"{name}_ramp", out.dtype, self.width) if guard else out
        lines: list = [Alu(below, Op.NEG, (self.ramps[ramp.name],)), Alu(offset, Op.ADD, (scalar, below)),
                       Alu(lane, Op.CAST, (offset,)), Broadcast(lanes, lane), Alu(mask, compare.op, operands)]
        if guard:
            zero, filled = Const(0, dtype), Reg(f"{name}_zero", compare.out.dtype)
            zeros = Reg(f"{name}_zeros", out.dtype, self.width)
            lines += [Alu(filled, compare.op, (zero, scalar) if ramp_first else (scalar, zero)),
                      Broadcast(zeros, filled), Select(out, guard, mask, zeros)]
        return lines

    @staticmethod
    def _scalar_reg(reg: Reg) -> Reg:
        return Reg(f"{reg.name}_1", reg.dtype)

    def _uniform(self, statement: Statement, reg: Reg) -> list:
        """`statement`, defining the scalar of `reg`, the same in every lane; then, for a float or a mask, its
        broadcast into the lanes under `reg`'s name. An integer stays a scalar (lanes hold no integers): only
        math on scalars reads it (an embedding's index, compared with the row it picks)."""
        scalar = defined_register(statement)
        self.scalars[reg.name] = scalar  # type: ignore[assignment]
        if not self._floating(reg.dtype):
            return [statement]
        return [statement, Broadcast(self._reg(reg), scalar)]  # type: ignore[arg-type]

    def _scalar(self, operand: Operand) -> Optional[Operand]:
        """`operand` as a scalar where it is the same in every lane, else None."""
        if isinstance(operand, Reg):
            if operand.name in self.scalars:
                return self.scalars[operand.name]
            operand = self.names.get(operand.name, operand)  # type: ignore[assignment]
        return Const(operand.value, operand.dtype) if isinstance(operand, Const) else None

    def _select(self, select: Select) -> list:
        out, conds = self._reg(select.out), self._conds(select.cond)
        value, fill = self._operand(select.value), self._operand(select.fill)
        if all(cond is None for cond in conds) or all(cond == () for cond in conds):  # (never; always: the value)
            self.names[out.name] = fill if conds[0] is None else value
            return []
        if all(cond is not None and cond == conds[0] for cond in conds):
            return [Select(out, conds[0], value, fill)]
        lanes = tuple(False if cond is None else cond or True for cond in conds)
        return [LaneSelect(out, lanes, value, fill)]

    def _loop(self, loop: Loop) -> list:
        lines: list = []
        if self.trips[loop.var]:
            self.depth += 1
            lines.append(Loop(loop.var, self.trips[loop.var], self._body(loop.body)))
            self.depth -= 1
            if self.uniform:
                for acc, op in accumulators(loop):
                    lines += self._across(self._reg(acc), op)
        rest = loop.trips - self.trips[loop.var] * self.width if self.uniform else 0
        return lines + self._scalar_tail(loop, rest) if rest else lines

    def _scalar_tail(self, loop: Loop, rest: int) -> list:
        """The loop's last `rest` steps as scalar code, its accumulators broadcast again after it."""
        var = f"{loop.var}t"
        body = copy_body(loop.body, {loop.var: Expr.var(var, rest) + loop.trips - rest}, "_t", {})
        defined = {reg.name for reg in map(defined_register, body) if reg is not None}
        lines: list = []
        scalars: dict[str, Operand] = {}
        for acc, _ in accumulators(loop):
            first, scalar = Reg(f"{acc.name}_first", acc.dtype), Reg(f"{acc.name}_t", acc.dtype)
            lines += [Extract(first, self._operand(acc), "s0"), Define(scalar, first)]  # type: ignore[arg-type]
            scalars[acc.name] = scalar

        def first_lane(reg: Reg) -> Operand:
            if reg.name in self.scalars and reg.name not in defined:
                return self.scalars[reg.name]
            if reg.name in scalars or reg.name in defined:
                return scalars.get(reg.name, reg)
            value = self._operand(reg)
            if isinstance(value, Const):
                return Const(value.value, value.dtype)
            if value.name not in scalars:  # (registers renamed to one vector share its first lane)
                scalars[value.name] = Reg(f"{value.name}_{var}", value.dtype)
                lines.append(Extract(scalars[value.name], value, "s0"))  # type: ignore[arg-type]
            return scalars[value.name]
        tail = tuple(rewrite(statement, lambda e: e, first_lane) for statement in body)
        lines.append(Loop(var, rest, tail))
        for acc, _ in accumulators(loop):
            self.names[acc.name] = Reg(f"{acc.name}_tail", acc.dtype, self.width)
            lines.append(Broadcast(self.names[acc.name], scalars[acc.name]))  # type: ignore[arg-type]
        return lines

    def _across(self, acc: Reg, op: Op) -> list:
        """The lanes of `acc` combined, halving, then broadcast to every lane (named for `acc` from here on)."""
        lines, total = fold_lanes(Reg(acc.name, acc.dtype, self.width), op)
        everywhere = Reg(f"{acc.name}_all", acc.dtype, self.width)
        self.names[acc.name] = everywhere
        return lines + [Broadcast(everywhere, total)]

    def _store(self, store: Store) -> list:
        """Consecutive lanes' elements as one vector (every store without `uniform`, a row kernel's stores in
        its last pass with it); else (one output per item, every lane at it) lane 0's."""
        flats, value = self._exprs(store.index), self._operand(store.value)
        if all(flat == flats[0] + lane for lane, flat in enumerate(flats)):
            return [Store(store.buffer, flats[0], value, store.dtype, "vector")]
        if not self.uniform or any(flat != flats[0] for flat in flats):
            raise NotVectorizable(store)
        if isinstance(value, Const):
            return [Store(store.buffer, flats[0], Const(value.value, value.dtype), store.dtype)]
        first = Reg(f"{value.name}_s0", value.dtype)
        return [Extract(first, value, "s0"), Store(store.buffer, flats[0], first, store.dtype)]


def vectorize_lanes(body: tuple, var: str, width: int, vectors: frozenset[str],
                    params: tuple[Param, ...]) -> Optional[tuple]:
    """Statements written for one lane, the variable `var` (0 <= var < width), as statements on all `width` lanes
    at once; registers named in `vectors` already hold the lanes (a CPU product's accumulators, whose epilogue
    this vectorizes: cpu_matmul.py). As `vectorize`, and None also where `body` reads a register from outside it
    (not in `vectors`) or branches on a condition that differs between lanes."""
    try:
        return _LaneVectorizer(body, var, width, vectors, params).statements()
    except NotVectorizable:
        return None


class _LaneVectorizer(_Vectorizer):
    """The lanes of a variable of a kernel's body rather than of its work items (`vectorize_lanes`)."""

    def __init__(self, body: tuple, var: str, width: int, vectors: frozenset[str], params: tuple[Param, ...]):
        self.body, self.width, self.uniform, self.scalar_gathers = body, width, False, False
        self.trips = {s.var: s.trips for s in walk(body) if isinstance(s, Loop)}
        self.lanes = [{var: Expr(lane)} for lane in range(width)]
        self.known = set(vectors) | {reg.name for reg in map(defined_register, walk(body)) if reg is not None}
        self._start(params)

    def statements(self) -> tuple:
        return self._body(self.body)

    def _operand(self, operand: Operand) -> Operand:
        if isinstance(operand, Reg) and operand.name not in self.known:
            raise NotVectorizable(operand)  # (its lanes, or whether it has any, are not known here)
        return super()._operand(operand)

    def _statement(self, statement: Statement) -> list:
        if not isinstance(statement, If):
            return super()._statement(statement)
        conds = self._conds(statement.cond)
        if statement.when is not None or any(cond != conds[0] for cond in conds):
            raise NotVectorizable(statement)
        if conds[0] is None:
            return []
        body = list(self._body(statement.body))
        return [If(conds[0], tuple(body))] if conds[0] else body
