"""A tile of outputs per work item (register tiles): the values its outputs share (an operand row of a
product) are loaded once, and its reductions run in one loop."""
from __future__ import annotations

import dataclasses
import itertools
import math

from ..kernel_ir import PURE, Axis, Const, Kernel, Loop, Reg, Role, Statement, field_names, rewrite, substitute
from ..symbolic import Expr
from ..lower import linear, unravel
from . import defined_register


def upcast(kernel: Kernel, space: tuple[int, ...], tile: dict[int, int]) -> Kernel:
    """`kernel` (one output per item of `space`) computing tile[axis] outputs along each tiled axis per item;
    every tiled size must divide its axis."""
    grid = tuple(size // tile.get(axis, 1) for axis, size in enumerate(space))
    items = math.prod(grid)
    cell = unravel(Expr.var("gid", items), grid)
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
    memo), in order; a pure statement whose copy is the same as one already made is shared."""
    out: list = []
    for statement in body:
        if isinstance(statement, Loop):
            out.append(Loop(statement.var, statement.trips, _copies(statement.body, copies, seen)))
            continue
        for k, (values, names, memo) in enumerate(copies):
            copy = rewrite(statement, lambda e: substitute(e, values, memo), lambda r: names.get(r.name, r))
            defined = defined_register(statement)
            if defined is None:
                out.append(copy)
                continue
            key = _key(copy) if isinstance(statement, PURE) else None
            if key is not None and key in seen:
                names[defined.name] = seen[key]
                continue
            renamed = Reg(f"{defined.name}_{k}", defined.dtype, defined.width)
            names[defined.name] = renamed
            copy = dataclasses.replace(copy, out=renamed)
            if key is not None:
                seen[key] = renamed
            out.append(copy)
    return tuple(out)


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
