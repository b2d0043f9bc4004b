"""A row's maximum and its sum of exponentials in one pass (an online softmax's statistics), for rows too long for
registers: a softmax or a cross-entropy row kernel read its row once for the maximum m and once more for
sum(exp(x - m)) (then once more for its outputs). The merged loop keeps the running maximum and rescales the
running sum by exp(m_old - m_new) as the maximum grows, as the fused attention kernels do; `group.py` rescales
each item's (and lane's) partial sum to the row's maximum before adding them. W7's logits (50 304 bf16 values a
row) were read three times by the cross-entropy's gradient kernel, 2.26 ms of a 52 ms step on an H100.

`safe(m)` is the kernel's own guard (0 where m is ±inf: a row of -inf sums exp(-inf) = 0, not NaN); a factor
exp(m_old - safe(m_new)) reads m_old as it is, so an item that has seen only -inf (or nothing) contributes 0, never
0 · inf."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

from ...dtypes import bool_
from ...trace.ops import Op
from ..kernel_ir import (Accumulate, Alu, Broadcast, Const, Define, Kernel, Load, Loop, Operand, Reg, Store, rewrite,
                         substitute, walk)
from ..symbolic import Expr
from . import defined_register


def online_sums(kernel: Kernel) -> Kernel:
    """`kernel` with each loop summing exp(x - safe(m)) over the values a loop before it took the maximum m of
    merged into that loop (see the module); `kernel` itself where there is none."""
    body = list(kernel.body)
    for first, loop in enumerate(body):
        maximum = _maximum_loop(loop)
        if maximum is None:
            continue
        acc, value = maximum
        shift = _safe_negated(body[first + 1:], acc)
        if shift is None:
            continue
        for later, other in enumerate(body[first + 1:], first + 1):
            summed = _exponential_sum(other, loop, value, shift)
            if summed is not None and _starts_at_zero(body[:first], summed):
                body[first] = _merged(loop, acc, value, summed)
                del body[later]
                axes = tuple(a for a in kernel.axes if a.name != other.var)
                return online_sums(dataclasses.replace(kernel, axes=axes, body=tuple(body)))
    return kernel


def _maximum_loop(statement) -> Optional[tuple[Reg, Operand]]:
    """(accumulator, value) where `statement` is a loop whose one accumulation, its last statement, takes a maximum,
    and which stores nothing."""
    if not isinstance(statement, Loop) or not statement.body:
        return None
    last = statement.body[-1]
    accumulations = [s for s in walk(statement.body) if isinstance(s, Accumulate)]
    if (not isinstance(last, Accumulate) or last.op is not Op.MAX or accumulations != [last]
            or any(isinstance(s, Store) for s in walk(statement.body)) or last.acc.dtype.itemsize != 4):
        return None
    return last.acc, last.value


def _safe_negated(statements: list, acc: Reg) -> Optional[Reg]:
    """The register holding -safe(acc) among `statements` (DETACH, the two infinities' comparisons, their OR, the
    WHERE choosing 0, NEG); None if they do not compute it."""
    found: dict[str, Alu] = {}
    for statement in statements:
        if isinstance(statement, Alu):
            found[statement.out.name] = statement
    for statement in statements:
        if not (isinstance(statement, Alu) and statement.op is Op.NEG and isinstance(statement.args[0], Reg)):
            continue
        where = found.get(statement.args[0].name)
        if where is None or where.op is not Op.WHERE or not _is_const(where.args[1], 0.0):
            continue
        detached, either = where.args[2], found.get(getattr(where.args[0], "name", ""))
        copy = found.get(getattr(detached, "name", ""))
        if copy is None or copy.op is not Op.DETACH or copy.args != (acc,) or either is None or either.op is not Op.OR:
            continue
        tests = [found.get(getattr(a, "name", "")) for a in either.args]
        if (all(t is not None and t.op is Op.CMPEQ and t.args[0] == detached for t in tests)
                and sorted(t.args[1].value for t in tests if isinstance(t.args[1], Const)) == [-math.inf, math.inf]):
            return statement.out
    return None


def _is_const(operand: Operand, value: float) -> bool:
    return isinstance(operand, Const) and operand.value == value


def _exponential_sum(statement, loop: Loop, value: Operand, shift: Reg) -> Optional[Reg]:
    """The accumulator where `statement` is a loop as long as `loop` computing the same values as `loop` does, then
    summing exp(value + shift) in float32; None otherwise."""
    if not isinstance(statement, Loop) or statement.trips != loop.trips or len(statement.body) != len(loop.body) + 2:
        return None
    *computed, added, exponential, accumulate = statement.body
    names = _same_values(computed, list(loop.body[:-1]), statement.var, Expr.var(loop.var, loop.trips))
    if names is None or not (isinstance(added, Alu) and added.op is Op.ADD and len(added.args) == 2
                             and shift in added.args and isinstance(exponential, Alu)
                             and isinstance(accumulate, Accumulate)):
        return None
    mine = added.args[1] if added.args[0] == shift else added.args[0]
    if (names.get(getattr(mine, "name", ""), mine) != value or exponential.op is not Op.EXP
            or exponential.args != (added.out,) or accumulate.op is not Op.ADD or accumulate.value != exponential.out
            or accumulate.acc.dtype.itemsize != 4):
        return None
    return accumulate.acc


def _same_values(statements: list, reference: list, var: str, at: Expr) -> Optional[dict[str, Reg]]:
    """Whether `statements` compute what `reference` does with `var` read at `at`, statement by statement; the
    registers they define by name mapped to `reference`'s, or None."""
    if len(statements) != len(reference):
        return None
    names: dict[str, Reg] = {}
    for statement, wanted in zip(statements, reference):
        mine, theirs = defined_register(statement), defined_register(wanted)
        if mine is None or theirs is None or (mine.dtype, mine.width) != (theirs.dtype, theirs.width):
            return None
        names[mine.name] = theirs
        moved = rewrite(statement, lambda e: substitute(e, {var: at}), lambda r: names.get(r.name, r))
        if isinstance(moved, Load) and isinstance(wanted, Load):
            if (moved.buffer, moved.index.key, moved.mode, moved.indirect, len(moved.guard)) != (
                    wanted.buffer, wanted.index.key, wanted.mode, wanted.indirect, len(wanted.guard)):
                return None
        elif moved != wanted:
            return None
    return names


def _starts_at_zero(statements: list, acc: Reg) -> bool:
    """Whether `acc` is defined among `statements` starting at 0."""
    return any(isinstance(s, Define) and s.out == acc and _is_const(s.start, 0) for s in statements)


def _merged(loop: Loop, maximum: Reg, value: Operand, acc: Reg) -> Loop:
    """`loop` keeping the running maximum and the sum `acc` rescaled to it (see the module)."""

    def reg(name: str) -> Reg:
        return Reg(f"{acc.name}_{name}", maximum.dtype, maximum.width)

    old = reg("old")
    guard, shift = negated_safe(maximum, f"{acc.name}_g")  # (of the running maximum)
    rescale_sum, rescale, term_sum, term = (reg(n) for n in ("rs", "r", "ts", "t"))
    return dataclasses.replace(loop, body=(*loop.body[:-1], Alu(old, Op.DETACH, (maximum,)), loop.body[-1], *guard,
                                           Alu(rescale_sum, Op.ADD, (old, shift)), Alu(rescale, Op.EXP, (rescale_sum,)),
                                           Accumulate(acc, Op.MUL, rescale),
                                           Alu(term_sum, Op.ADD, (value, shift)), Alu(term, Op.EXP, (term_sum,)),
                                           Accumulate(acc, Op.ADD, term)))


def negated_safe(source: Reg, prefix: str) -> tuple[list, Reg]:
    """Statements computing -safe(`source`) (0 where it is ±inf), in registers named after `prefix`, and the
    register holding it."""

    def reg(name: str, dtype=source.dtype) -> Reg:
        return Reg(f"{prefix}_{name}", dtype, source.width)

    def const(value: float) -> Const:
        return Const(value, source.dtype, source.width)
    above, below, infinite, safe, shift = (reg("inf", bool_), reg("ninf", bool_), reg("infinite", bool_), reg("safe"),
                                           reg("shift"))
    return [Alu(above, Op.CMPEQ, (source, const(math.inf))), Alu(below, Op.CMPEQ, (source, const(-math.inf))),
            Alu(infinite, Op.OR, (above, below)), Alu(safe, Op.WHERE, (infinite, const(0.0), source)),
            Alu(shift, Op.NEG, (safe,))], shift


def rescaled(acc: Reg, maximum: Reg) -> list:
    """After `maximum`'s tree (group.py), an item's sum of exp(x - safe(m)) over its own maximum m, each lane's,
    rescaled to the row's maximum M (the tree's total): times exp(m - safe(M))."""
    total, spread = Reg(f"{maximum.name}_total", maximum.dtype), Reg(f"{acc.name}_m", maximum.dtype, acc.width)
    guard, shift = negated_safe(spread, acc.name)
    exponent, factor = (Reg(f"{acc.name}_{name}", maximum.dtype, acc.width) for name in ("e", "f"))
    return [Broadcast(spread, total) if acc.width > 1 else Alu(spread, Op.DETACH, (total,)), *guard,
            Alu(exponent, Op.ADD, (maximum, shift)), Alu(factor, Op.EXP, (exponent,)), Accumulate(acc, Op.MUL, factor)]


def online_pairs(loop: Loop) -> dict[Reg, Reg]:
    """The sums `loop` rescales to a running maximum (`online_sums`'s): each sum's accumulator to the maximum's."""
    maxima = [s.acc for s in loop.body if isinstance(s, Accumulate) and s.op is Op.MAX]
    sums = [s.acc for s in loop.body if isinstance(s, Accumulate) and s.op is Op.MUL]
    return {acc: maxima[0] for acc in sums} if len(maxima) == 1 else {}
