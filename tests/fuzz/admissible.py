"""Which steps the fuzz generator keeps: finite and not huge, inside the op's domain (log of positive values...)
and well-conditioned (no comparison, floor, cast to int or max decided by less than MARGIN), so that zyx and the
references, computing in different precisions and orders, must agree.
"""
from __future__ import annotations

import math
from ast import literal_eval
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

if TYPE_CHECKING:
    from .graphs import Step

MARGIN = 1e-3
BOUND = 1e4
POSITIVE_DOMAIN = {"log": 0.1, "sqrt": 0.1, "reciprocal": 0.1}
ELEMENTWISE = {"add", "sub", "mul", "div", "pow", "maximum", "minimum", "lt", "ge", "eq", "where"}


def _far_from(values: torch.Tensor, points: torch.Tensor) -> bool:
    """Every value equals a point or lies MARGIN (relative) away from it."""
    gap = (values - points).abs()
    return bool(((gap == 0) | (gap >= MARGIN * (1 + values.abs()))).all())


def _decisive_extreme(a: torch.Tensor, axis: Any) -> bool:
    """Each reduced group's top two values are tied exactly or differ by MARGIN (for max and its gradient)."""
    axes = [axis] if isinstance(axis, int) else list(axis)
    axes = [x % a.ndim for x in axes]
    moved = a.double().permute([d for d in range(a.ndim) if d not in axes] + axes)
    groups = moved.reshape(-1, math.prod(a.shape[d] for d in axes)).sort(-1).values
    if groups.shape[-1] < 2:
        return True
    return _far_from(groups[:, -1], groups[:, -2]) and _far_from(groups[:, 0], groups[:, 1])


def _int_cast_ok(a: torch.Tensor, params: dict[str, str]) -> bool:
    if not a.is_floating_point() or params["dtype"] not in ("int32", "int64", "bool"):
        return True
    x = a.double()
    return bool((x.abs() < 2 ** 31).all()) and _far_from(x, x.round()) and _far_from(x, x.trunc())


def _pair_ok(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not a.is_floating_point() and not b.is_floating_point() or _far_from(*torch.broadcast_tensors(
        a.double(), b.double()))


CHECKS: dict[str, Callable[..., bool]] = {  # op -> (operand values, params) -> admissible
    "exp": lambda a, p: bool((a <= 10).all()),
    "sin": lambda a, p: bool((a.abs() <= 50).all()),
    "cos": lambda a, p: bool((a.abs() <= 50).all()),
    "relu": lambda a, p: _far_from(a.double(), torch.zeros(())),
    "abs": lambda a, p: _far_from(a.double(), torch.zeros(())),
    "positive": lambda a, p: _far_from(a.double(), torch.zeros(())),
    "floor": lambda a, p: _far_from(a.double(), a.double().round()),
    "ceil": lambda a, p: _far_from(a.double(), a.double().round()),
    "div": lambda a, b, p: bool((b.abs() >= 0.1).all()),
    "pow": lambda a, b, p: bool((a >= 0.1).all() and (b.abs() <= 3).all()),
    "maximum": lambda a, b, p: _pair_ok(a, b),
    "minimum": lambda a, b, p: _pair_ok(a, b),
    "lt": lambda a, b, p: _pair_ok(a, b),
    "ge": lambda a, b, p: _pair_ok(a, b),
    "cast": lambda a, p: _int_cast_ok(a, p),
    "max": lambda a, p: _decisive_extreme(a, literal_eval(p["axis"])),
    "min": lambda a, p: _decisive_extreme(a, literal_eval(p["axis"])),
    "var": lambda a, p: math.prod(a.shape[x] for x in np.atleast_1d(literal_eval(p["axis"]))) > 1,
}
CHECKS.update({op: (lambda low: lambda a, p: bool((a.abs() >= low).all()))(low)
               for op, low in POSITIVE_DOMAIN.items()})


def _zero_dim_rule_applies(operands: list[torch.Tensor]) -> bool:
    """torch lets a dimensioned tensor's dtype win over a 0-d tensor's of the same kind (int32 (3,) * int64 ()
    is int32), zyx and numpy promote by width (int64): a convention, not a bug (see the fuzz report), so the
    generator does not mix them."""
    kinds = {(t.is_floating_point(), t.dtype == torch.bool) for t in operands}
    return len(operands) > 1 and len({t.dtype for t in operands}) > 1 and len(kinds) == 1 and \
        len({t.ndim == 0 for t in operands}) > 1


def admissible(step: "Step", operands: list[torch.Tensor], out: Any) -> bool:
    """Whether the generator keeps `step`, given its operands' values and its value `out` (torch)."""
    if step.op in ELEMENTWISE and _zero_dim_rule_applies(operands[1:] if step.op == "where" else operands):
        return False
    if not isinstance(out, torch.Tensor) or out.numel() == 0 or out.numel() > 200_000:
        return False
    if out.is_floating_point() and not bool((out.abs() <= BOUND).all()):  # also rejects nan and inf
        return False
    if out.dtype in (torch.int32, torch.int64) and not bool((out.abs() <= BOUND).all()):
        return False
    check = CHECKS.get(step.op)
    return check is None or check(*operands, dict(step.params))
