"""IR-to-IR transforms: each takes a kernel (and its parameters) and returns an equivalent kernel shaped
differently, or None where it does not apply. The scheduler picks which to apply; tests check each against
the untransformed kernel's results.

- `vector.vectorize`: several outputs per work item (or a reduction walked several elements at a time) as
  vector lanes, with vector loads where the lanes' indices are consecutive.
- `unroll.unroll_reductions`: several independent accumulators per reduction loop.
- `group.group_reductions`: a work group per output, its items sharing each reduction.
- `upcast.upcast`: a tile of outputs per work item (register tiles).
- `double_buffer.double_buffer`: local tiles staged into one buffer while the group computes on the other.
- `async_pipeline.pipeline`: local tiles copied by cp.async several slices ahead of the computation.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from ...trace.ops import Op

from ..kernel_ir import Accumulate, Alu, Const, Extract, If, Loop, Operand, Reg, Statement, rewrite, substitute
from ..symbolic import Expr


def rename_all(body: tuple, names: dict[str, Operand]) -> tuple:
    """`body` with each register named in `names` replaced (loop and branch bodies included)."""
    if not names:
        return body
    return tuple(_renamed(statement, names) for statement in body)


def _renamed(statement: Statement, names: dict[str, Operand]) -> Statement:
    renamed = rewrite(statement, lambda e: e, lambda r: names.get(r.name, r))
    if isinstance(statement, (Loop, If)):
        return dataclasses.replace(renamed, body=rename_all(statement.body, names))
    return renamed


def copy_body(body: tuple, values: dict[str, Expr], suffix: str, names: dict[str, Operand],
              memo: Optional[dict] = None) -> tuple:
    """A copy of `body` with the variables in `values` substituted and every register it defines renamed with
    `suffix` (recorded in `names`, which may also map registers defined outside: accumulators, say)."""
    memo = {} if memo is None else memo
    copied = []
    for statement in body:
        if isinstance(statement, Loop):
            copied.append(dataclasses.replace(statement, body=copy_body(statement.body, values, suffix, names, memo)))
            continue
        if isinstance(statement, If):
            cond = tuple((substitute(e, values, memo), op, k) for e, op, k in statement.cond)
            when = None if statement.when is None else names.get(statement.when.name, statement.when)
            copied.append(If(cond, copy_body(statement.body, values, suffix, names, memo), when))  # type: ignore[arg-type]
            continue
        defined = defined_register(statement)
        if defined is not None:
            names[defined.name] = Reg(defined.name + suffix, defined.dtype, defined.width)
        copied.append(rewrite(statement, lambda e: substitute(e, values, memo), lambda r: names.get(r.name, r)))
    return tuple(copied)


def defined_register(statement: Statement) -> Optional[Reg]:
    """The register a statement defines, if any."""
    return getattr(statement, "out", None)


def accumulators(loop: Loop) -> list[tuple[Reg, Op]]:
    """The accumulators a loop updates and how (ADD or MAX), in order; a sum the loop also rescales (MUL: an online
    softmax's, online_sums.py) is a sum."""
    found: dict[Reg, Op] = {}
    for statement in loop.body:
        if isinstance(statement, Accumulate):
            found.setdefault(statement.acc, statement.op)
            if statement.op is Op.ADD:
                found[statement.acc] = Op.ADD
    return list(found.items())


def fold_lanes(acc: Reg, op: Op, name: str = "") -> tuple[list, Reg]:
    """Statements combining the lanes of vector `acc` with `op`, halving, and the scalar they leave (registers
    named after `name`, else after `acc`)."""
    name = name or acc.name
    lines: list = []
    total, width = acc, acc.width
    while width > 1:
        width //= 2
        lo, hi, both = (Reg(f"{name}_{part}{width}", acc.dtype, width) for part in ("lo", "hi", "h"))
        lines += [Extract(lo, total, "lo"), Extract(hi, total, "hi"), Alu(both, op, (lo, hi))]
        total = both
    return lines, total


def widen(operand: Operand, width: int) -> Operand:
    if isinstance(operand, Const):
        return Const(operand.value, operand.dtype, width)
    return Reg(operand.name, operand.dtype, width)
