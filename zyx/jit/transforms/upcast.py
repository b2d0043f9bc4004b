"""A tile of outputs per work item (register tiles): the values its outputs share (an operand row of a
product) are loaded once, and its reductions run in one loop."""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Optional

from ..kernel_ir import (PURE, Axis, Const, Kernel, Lane, Loop, Reg, Role, Statement, field_names, rewrite,
                         substitute)
from ..symbolic import Expr
from ..lower import linear, unravel
from . import defined_register


def upcast(kernel: Kernel, space: tuple[int, ...], tile: dict[int, int], fastest: Optional[int] = None) -> Kernel:
    """`kernel` (one output per item of `space`) computing tile[axis] outputs along each tiled axis per item;
    every tiled size must divide its axis. Consecutive items take consecutive tiles along the last axis, or along
    axis `fastest` (then the others in order)."""
    grid = tuple(size // tile.get(axis, 1) for axis, size in enumerate(space))
    items = math.prod(grid)
    order = list(range(len(grid))) if fastest is None else [a for a in range(len(grid)) if a != fastest] + [fastest]
    cell = dict(zip(order, unravel(Expr.var("gid", items), tuple(grid[a] for a in order))))
    cell = tuple(cell[axis] for axis in range(len(grid)))
    copies = []
    for offsets in itertools.product(*(range(tile.get(axis, 1)) for axis in range(len(space)))):
        element = tuple(e * tile[axis] + o if axis in tile else e for axis, (e, o) in enumerate(zip(cell, offsets)))
        copies.append(({"gid": linear(element, space)}, {}, {}))
    body = _copies(kernel.body, copies, {})
    upcasts = tuple(Axis(f"u{axis}", size, Role.UPCAST) for axis, size in tile.items())
    axes = tuple(Axis(a.name, items, a.role) if a.role is Role.GLOBAL else a for a in kernel.axes) + upcasts
    return dataclasses.replace(kernel, axes=axes, body=body)


def _copies(body: tuple, copies: list[tuple[dict, dict, dict]], seen: dict) -> tuple:
    """Each statement once per copy (its variables' values, its registers' new names, its substitutions'
    memo), in order; a pure statement whose copy is the same as one already made is shared. A pure statement's
    copies are told apart by what varies between them (the indices it substitutes, the registers it reads) before
    any is built: a 8 x 16 tile makes 128 copies of each statement, most of them the same."""
    out: list = []
    substituted = set().union(*(values for values, _, _ in copies))
    for statement in body:
        if isinstance(statement, Loop):
            out.append(Loop(statement.var, statement.trips, _copies(statement.body, copies, seen)))
            continue
        defined = defined_register(statement)
        pure = defined is not None and isinstance(statement, PURE)
        indices, registers = _varying(statement, substituted) if pure else ((), ())
        made: dict[tuple, Reg] = {}  # this statement's copies by what varies between them
        for k, (values, names, memo) in enumerate(copies):
            if pure:
                reads = (tuple(substitute(e, values, memo).key for e in indices),
                         tuple(names.get(r.name, r).name for r in registers))
                if reads in made:
                    names[defined.name] = made[reads]
                    continue
            copy = rewrite(statement, lambda e: substitute(e, values, memo), lambda r: names.get(r.name, r))
            if defined is None:
                out.append(copy)
                continue
            key = _key(copy) if pure else None
            if key is not None and key in seen:
                names[defined.name] = made[reads] = seen[key]
                continue
            renamed = Reg(f"{defined.name}_{k}", defined.dtype, defined.width)
            names[defined.name] = renamed
            copy = dataclasses.replace(copy, out=renamed)
            if pure:
                seen[key] = made[reads] = renamed
            out.append(copy)
    return tuple(out)


def _varying(statement: Statement, substituted: set[str]) -> tuple[list[Expr], list[Reg]]:
    """The index expressions of `statement` that name a substituted variable, and the registers it reads."""
    indices: list[Expr] = []
    registers: list[Reg] = []

    def visit(value: object) -> None:
        kind = type(value)
        if kind is Expr:
            if value.variables() & substituted:  # type: ignore[union-attr]
                indices.append(value)  # type: ignore[arg-type]
        elif kind is Reg:
            registers.append(value)  # type: ignore[arg-type]
        elif kind is Lane:
            registers.append(value.src)  # type: ignore[union-attr]
        elif kind is tuple:
            for item in value:  # type: ignore[union-attr]
                visit(item)
    for name in field_names(type(statement)):
        if name not in ("out", "body"):
            visit(getattr(statement, name))
    return indices, registers


def _key(statement: Statement) -> tuple:
    """What a pure statement computes, whatever register it defines."""
    def part(value: object) -> object:
        if isinstance(value, Expr):
            return value.key
        if isinstance(value, Reg):
            return value.name
        if isinstance(value, Const):
            return ("const", repr(value.value), value.dtype.name, value.width)
        if isinstance(value, tuple):
            return tuple(part(v) for v in value)
        return value
    return (type(statement).__name__,) + tuple(part(getattr(statement, name)) for name in field_names(type(statement))
                                                if name != "out")
