"""What every kernel printer shares: the walk over a kernel's statements, its name, what dtypes it uses.

A printer (print_opencl.py for OpenCL C, print_wgsl.py for WGSL) is a `Syntax`: its tables of statement
printers (keyed by statement type) and how its language opens a loop, a branch and a register's definition.
`body_lines` walks the IR with one; nothing here writes a word of either language.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..dtypes import DType
from .cache_key import hash_hex
from ..trace.ops import Op
from .kernel_ir import Cond, If, Kernel, Loop, Statement, walk
from .symbolic import Expr

# |x| past which tanh(x) rounds to ±1: 1 - tanh(x) ~ 2 exp(-2x) is below half an ulp of 1 (13 ln 2, 27.5 ln 2)
TANH_SATURATED = {"float16": 9.02, "bfloat16": 9.02, "float32": 9.02, "float64": 19.1}

BodyPrinter = Callable[[tuple, str], list[str]]  # (statements, indent) -> lines


@dataclass(frozen=True)
class Syntax:
    """One language's way of printing statements."""

    values: dict[type, Callable[[Statement], str]]      # statements defining a register: the expression
    statements: dict[type, Callable[[Statement], str]]  # the others: their line
    define: Callable[[Statement, str], str]             # the line defining a statement's register as an expression
    loop: Callable[[Loop, BodyPrinter, str], list[str]]  # a loop's lines, its body printed by the BodyPrinter
    branch: Callable[[If, BodyPrinter, str], list[str]]  # an If's lines


def body_lines(body: tuple, indent: str, syntax: Syntax) -> list[str]:
    """The lines of `body` in `syntax`, nested bodies indented further."""
    def lines(statements: tuple, inner: str) -> list[str]:
        return body_lines(statements, inner, syntax)

    printed: list[str] = []
    for statement in body:
        kind = type(statement)
        if kind is Loop:
            printed += syntax.loop(statement, lines, indent)  # type: ignore[arg-type]
        elif kind is If:
            printed += syntax.branch(statement, lines, indent)  # type: ignore[arg-type]
        elif kind in syntax.values:
            printed.append(indent + syntax.define(statement, syntax.values[kind](statement)))
        else:
            printed.append(indent + syntax.statements[kind](statement))
    return printed


def pick(tables: list[dict[str, str]], kind: str) -> str:
    """The template for operands of `kind` from the first table that has one (or a "*" for every kind)."""
    return next(t.get(kind, t.get("*")) for t in tables if kind in t or "*" in t)  # type: ignore[misc]


def negatable(op: object, x: str) -> str:
    """`x` as a unary op's operand: a negative literal negated goes in parentheses ("--0.2f" would be a
    decrement in both languages)."""
    return f"({x})" if op is Op.NEG and x.startswith("-") else x


def condition(cond: Cond) -> str:
    """A guard as a conjunction of bounds: the same text in OpenCL C and WGSL."""
    return "&&".join(f"({e.render()}>={k})" if op == "ge" else f"({e.render()}<{k})" for e, op, k in cond)


def branch_condition(statement: If) -> str:
    """An If's condition: its bounds and its register, the same text in OpenCL C and WGSL."""
    return "&&".join(([condition(statement.cond)] if statement.cond else []) +
                     ([statement.when.name] if statement.when is not None else []))


def aligned(index: Expr, width: int) -> bool:
    """Whether `index` is a multiple of `width` wherever it is evaluated (a whole vector of a vector array)."""
    return index.const % width == 0 and all(c % width == 0 for c in index.terms.values())


def kernel_name(kernel: Kernel, version: str) -> str:
    """Named by what it computes (and the printer's `version`), not by shape: a contiguous elementwise kernel
    serves every shape."""
    return f"{kernel.kind}_{hash_hex(kernel.fingerprint() + version)[:12]}"


def dtypes_used(kernel: Kernel) -> set[DType]:
    """Every dtype the kernel's parameters and registers hold."""
    used = {p.dtype for p in kernel.params}
    for statement in walk(kernel.body):
        out = getattr(statement, "out", None)
        if out is not None:
            used.add(out.dtype)
    return used
