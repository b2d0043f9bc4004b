"""A row kernel's costly value, computed by a reduction's pass and again by the pass storing the row, kept in the
output by the first and read back by the second (CPUs).

A softmax sums exp(x - max) over its row, then stores exp(x - max) / sum: each exponential computed twice, which on a
CPU is most of the kernel's time (PoCL 3.1 on an AVX-512 Xeon, 4096 × 768: 1.19–1.25 ms; 0.77–0.93 with each
exponential kept). Here the reduction's pass also stores the value into the output at the element the last pass
stores, and the last pass loads it instead of computing it (the row is still in the core's cache). Values are matched
by what they compute (ops, constants, loads at the same element of the row), through the registers computed before
the loops (each pass negates the max on its own). Only a float32 value stored as float32 is kept (a half output
would round it first), and only where the output is written once per element, unguarded. The output is then read
before it is complete, so no input may share its buffer: the caller marks every input misaligned (program.py then
writes no result over one).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from ...dtypes import float32
from ...trace.ops import Op
from ..kernel_ir import (Accumulate, Alu, Const, If, Kernel, Lane, Load, Loop, Reg, Store, rewrite, substitute,
                         walk)
from ..symbolic import Expr

COSTLY_OPS = frozenset({Op.EXP, Op.LOG, Op.SIN, Op.COS, Op.TANH, Op.SIGMOID, Op.ERF, Op.POW})
ELEMENT = "element"  # the row's element a pass is at, in the keys of its values


def keep_in_output(kernel: Kernel) -> Optional[Kernel]:
    """`kernel` (a scalar row kernel of rows.py) with the costliest value its storing pass computes again kept in the
    output by the reduction's pass that computes it first; None where there is none."""
    body = list(kernel.body)
    at = max((k for k, s in enumerate(body) if isinstance(s, Loop)), default=None)
    if at is None or not all(isinstance(s, Store) for s in body[at + 1:]):  # (after it: the row statistics' stores)
        return None
    last: Loop = body[at]
    stores = [s for s in walk(last.body) if isinstance(s, Store)]
    if len(stores) != 1 or stores[0] not in last.body or stores[0].dtype != float32 or stores[0].mode != ELEMENT \
            or any(isinstance(s, (Loop, If)) for s in walk(last.body)):  # (_without_dead reads no inner bodies)
        return None
    store = stores[0]
    outside = _keys(body[:at], None, {})
    wanted = _keys(last.body, last.var, outside)
    for position, loop in enumerate(body[:at]):
        if not (isinstance(loop, Loop) and loop.trips == last.trips
                and any(isinstance(s, Accumulate) for s in loop.body)):
            continue
        found = _keys(loop.body, loop.var, outside)
        by_key = {key: name for name, key in found.items()}
        shared = [(name, by_key[key]) for name, key in wanted.items()
                  if key in by_key and _costly(key) and _float32(last.body, name)]
        if not shared:
            continue
        kept, first = max(shared, key=lambda pair: _size(wanted[pair[0]]))
        index = substitute(store.index, {last.var: Expr.var(loop.var, loop.trips)})
        body[position] = dataclasses.replace(loop, body=_after(loop.body, first, Store(
            store.buffer, index, Reg(first, float32), float32)))
        body[at] = dataclasses.replace(last, body=_without_dead(tuple(
            Load(Reg(kept, float32), store.buffer, store.index) if _defines(s, kept) else s for s in last.body)))
        return dataclasses.replace(kernel, body=tuple(_reciprocals_hoisted(body, at)))
    return None


def _reciprocals_hoisted(body: list, at: int) -> list:
    """`body` where the storing loop (at `at`) divides float32 values by a register defined outside it (softmax's
    sum): the reciprocal computed once before the loop, each division a multiplication by it (as PyTorch's CPU
    softmax; within an ulp of the quotient, a division's throughput a multiplication's tenth on AVX-512)."""
    last: Loop = body[at]
    inside = {s.out.name for s in last.body if isinstance(s, (Alu, Load))}
    divisors = {s.args[1].name for s in last.body if isinstance(s, Alu) and s.op is Op.DIV and s.out.dtype == float32
                and s.out.width == 1 and isinstance(s.args[1], Reg) and s.args[1].name not in inside}
    if not divisors:
        return body
    inverse = {name: Reg(f"{name}_inverse", float32) for name in sorted(divisors)}
    loop = dataclasses.replace(last, body=tuple(
        Alu(s.out, Op.MUL, (s.args[0], inverse[s.args[1].name]))
        if isinstance(s, Alu) and s.op is Op.DIV and isinstance(s.args[1], Reg) and s.args[1].name in inverse else s
        for s in last.body))
    hoisted = [Alu(reg, Op.RECIP, (Reg(name, float32),)) for name, reg in inverse.items()]
    return body[:at] + hoisted + [loop] + body[at + 1:]


def _keys(statements, var: Optional[str], outside: dict[str, tuple]) -> dict[str, tuple]:
    """What each register defined by `statements` computes, as a nested tuple: loads by buffer and index (the loop's
    `var` as ELEMENT), ops by their operands' keys; registers defined elsewhere by `outside`'s keys, else by name."""
    keys: dict[str, tuple] = {}

    def key_of(operand) -> tuple:
        if isinstance(operand, Const):
            return ("const", repr(operand.value), operand.dtype.name, operand.width)
        if isinstance(operand, Lane):
            return ("lane", key_of(operand.src), operand.part)
        return keys.get(operand.name) or outside.get(operand.name) or ("reg", operand.name)
    for statement in statements:
        if isinstance(statement, Load) and statement.indirect is None and statement.mode == ELEMENT:
            index = substitute(statement.index, {var: Expr.var(ELEMENT, 1 << 30)}) if var else statement.index
            keys[statement.out.name] = ("load", statement.buffer, index.key, repr(statement.guard))
        elif isinstance(statement, Alu):
            keys[statement.out.name] = ("alu", statement.op, tuple(map(key_of, statement.args)),
                                        statement.out.dtype.name, statement.out.width)
    return keys


def _costly(key: tuple) -> bool:
    return key[0] == "alu" and (key[1] in COSTLY_OPS or any(_costly(k) for k in key[2]))


def _size(key: tuple) -> int:
    return 1 + sum(_size(k) for k in key[2]) if key[0] == "alu" else 1


def _float32(statements, name: str) -> bool:
    return any(_defines(s, name) and s.out.dtype == float32 and s.out.width == 1 for s in statements)


def _defines(statement, name: str) -> bool:
    return isinstance(statement, (Alu, Load)) and statement.out.name == name


def _after(statements: tuple, name: str, added) -> tuple:
    """`statements` with `added` right after the statement defining `name`."""
    out: list = []
    for statement in statements:
        out.append(statement)
        if _defines(statement, name):
            out.append(added)
    return tuple(out)


def _without_dead(statements: tuple) -> tuple:
    """`statements` without the loads and ops whose registers nothing after them reads (what fed a value now
    loaded)."""
    kept: list = []
    read: set[str] = set()
    for statement in reversed(statements):
        if isinstance(statement, (Alu, Load)) and statement.out.name not in read:
            continue
        kept.append(statement)
        read |= _registers_read(statement)
    return tuple(reversed(kept))


def _registers_read(statement) -> set[str]:
    """Names of the registers a statement names (operands, an indirect load's index, the variables of its index
    and guard; the register it defines too, which no statement before it reads)."""
    names: set[str] = set()

    def expr(e: Expr) -> Expr:
        names.update(e.variables())
        return e

    def reg(r: Reg) -> Reg:
        names.add(r.name)
        return r
    rewrite(statement, expr, reg)
    return names
