"""torch's multi-tensor (`torch._foreach_*`) forms of zyx's elementwise ops: one call for a group of steps.

A group (`foreach_groups.py`) is steps of one op and dtype on different buffers; each of its operands is a
"list" (each member's own tensor), a 0-d "tensor" all members read, or a Python number (a constant: torch
takes scalars as such, computing in the same float type as it does with a 0-d tensor). `FOREACH[op](kinds, call)`
is the call computing the group, or None where torch has no multi-tensor form for those operands (the members
then run one by one). `call(name)` is `torch._foreach_<name>`, or with `in_place` its in-place form writing
over the first list (a group of steps that overwrite their first source, or an update written straight into
the parameter it reads: `p - lr * u`), returning that list.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

from ..trace.ops import Op
from .foreach_groups import LIST, TENSOR
from .steps import Fused, Step

Kind = Any  # LIST, TENSOR or the constant's value
Call = Callable[[str], Callable[..., Any]]
GroupFunction = Callable[..., list[torch.Tensor]]
GROUPED_DTYPES = ("float32", "float64")  # computed as stored: no conversion around the call
# whether this torch takes a 0-d tensor as the second operand of the multi-tensor add, mul and div (2.1 and later)
TENSOR_OPERANDS = all("Tensor" in getattr(torch.ops.aten, f"_foreach_{name}").overloads()
                      for name in ("add", "mul", "div"))


def _is_scalar(kind: Kind) -> bool:
    return kind is not LIST and kind is not TENSOR


def _unary(name: str) -> Callable[[Sequence[Kind], Call], Optional[GroupFunction]]:
    return lambda kinds, call: call(name)


def _commutative(name: str) -> Callable[[Sequence[Kind], Call], Optional[GroupFunction]]:
    """a op b where torch takes a list first and a list, a 0-d tensor or a number second (either way round)."""
    def plan(kinds: Sequence[Kind], call: Call) -> Optional[GroupFunction]:
        function = call(name)
        if kinds[0] is LIST:
            return function
        return (lambda a, b: function(b, a)) if kinds[1] is LIST else None
    return plan


def _first_list(name: str, second: tuple[Kind, ...] = (LIST, TENSOR)) -> Callable[..., Optional[GroupFunction]]:
    """a op b with a a list, b a list, a number (always) or one of `second`'s kinds."""
    def plan(kinds: Sequence[Kind], call: Call) -> Optional[GroupFunction]:
        if kinds[0] is not LIST or not (_is_scalar(kinds[1]) or kinds[1] in second):
            return None
        return call(name)
    return plan


def _multiply_add(sign: int) -> Callable[..., Optional[GroupFunction]]:
    """a + sign · b · c (MULADD, MULSUB): addcmul for three lists, add with alpha where b or c is a number, else
    (one a 0-d tensor) a product, computed over the list where the step may write over it (`into`), and a sum."""
    def plan(kinds: Sequence[Kind], call: Call, into: Optional[int] = None) -> Optional[GroupFunction]:
        a, b, c = kinds
        if a is not LIST or (b is not LIST and c is not LIST):
            return None
        if b is LIST and c is LIST:
            addcmul = call("addcmul")
            return lambda x, y, z: addcmul(x, y, z, value=sign)
        add = call("add")
        if _is_scalar(b) or _is_scalar(c):
            return (lambda x, y, z: add(x, z, alpha=sign * y)) if _is_scalar(b) else \
                (lambda x, y, z: add(x, y, alpha=sign * z))
        update = call("add" if sign > 0 else "sub")
        listed = 1 if b is LIST else 2
        if into == listed:  # (the product needs no list of its own)
            def scaled(y: Any, z: Any) -> list[torch.Tensor]:
                factors, scale = (y, z) if listed == 1 else (z, y)
                torch._foreach_mul_(factors, scale)
                return factors
        else:
            def scaled(y: Any, z: Any) -> list[torch.Tensor]:
                return torch._foreach_mul(y, z) if listed == 1 else torch._foreach_mul(z, y)
        return lambda x, y, z: update(x, scaled(y, z))
    return plan


def _lerp(kinds: Sequence[Kind], call: Call) -> Optional[GroupFunction]:
    a, b, w = kinds
    return call("lerp") if a is LIST and b is LIST and (w is LIST or _is_scalar(w)) else None


FOREACH: dict[Any, Callable[[Sequence[Kind], Call], Optional[GroupFunction]]] = {
    Op.NEG: _unary("neg"), Op.RECIP: _unary("reciprocal"), Op.SQRT: _unary("sqrt"), Op.EXP: _unary("exp"),
    Op.LOG: _unary("log"), Op.SIN: _unary("sin"), Op.COS: _unary("cos"), Op.TANH: _unary("tanh"),
    Op.SIGMOID: _unary("sigmoid"), Op.ERF: _unary("erf"), Op.FLOOR: _unary("floor"), Op.CEIL: _unary("ceil"), Op.RINT: _unary("round"),
    Op.ADD: _commutative("add"), Op.MUL: _commutative("mul"), Op.MAX: _first_list("maximum", (LIST,)),
    Op.DIV: _first_list("div"), Fused.SUB: _first_list("sub", (LIST,)),
    Fused.MULADD: _multiply_add(1), Fused.MULSUB: _multiply_add(-1), Fused.LERP: _lerp,
}


def groupable(step: Step, sources: Sequence[Step]) -> bool:
    """Whether a step may join a group: an op with a multi-tensor form, computed over the whole array, in a
    dtype torch computes as stored, from sources of that dtype."""
    return step.op in FOREACH and step.compact is None and step.dtype.name in GROUPED_DTYPES and \
        all(source.dtype == step.dtype for source in sources)


def group_function(op: Any, kinds: Sequence[Kind], in_place: bool,
                   into: Optional[int] = None) -> Optional[GroupFunction]:
    """The call computing a group of `op` steps on operands of these kinds (see the module docstring); `into`:
    the source the steps may write over."""
    def call(name: str) -> Callable[..., Any]:
        if not in_place:
            return getattr(torch, f"_foreach_{name}")
        update = getattr(torch, f"_foreach_{name}_")

        def run(first: list[torch.Tensor], *rest: Any, **options: Any) -> list[torch.Tensor]:
            update(first, *rest, **options)
            return first
        return run

    if (in_place and kinds[0] is not LIST) or (TENSOR in kinds and not TENSOR_OPERANDS):
        return None
    return FOREACH[op](kinds, call, into) if op in (Fused.MULADD, Fused.MULSUB) else FOREACH[op](kinds, call)
