"""Why a jitted step traced again, in words a user can act on (what PyTorch's TORCH_LOGS=recompiles prints).

A capture after the first has a reason: a new shape, dtype or device of an argument, a new Python constant,
arguments that alias each other differently, a module switched between train and eval, a call under another
`zyx.autocast` state or float32 product precision, or a global, closure variable or attribute rebound to another
tensor. `JitFunction` logs each one on `zyx.jit` at INFO, and once a step was captured more than MAX_CAPTURES times its `JitWarning` names
what varied most and how to stop it.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import numpy as np

from ..autocast import autocast_dtype
from ..precision import get_float32_matmul_precision
from ..tensor import Tensor
from .reach import resolve

__all__ = ["Reason", "advice", "guard_failure", "key_change", "nearest_key"]

_TENSOR_FIELDS = ((1, "shape"), (2, "dtype"), (3, "device"))  # positions in an `arguments.call_key` tensor part
_ADVICE = {
    "shape": "keep the shape of {subject} fixed (pad, or use fixed-size batches and drop the last partial one)",
    "dtype": "give {subject} the same dtype on every call (cast before the call)",
    "device": "keep {subject} on one device",
    "constant": "pass {subject} as a tensor (dev.tensor(value)): a Python value is a constant of the program, "
                "so each new value is a new program",
    "alias": "pass tensors that alias each other (or the step's state) the same way on every call",
    "rebound": "update {subject} in place with .assign(new) instead of rebinding it",
    "deleted": "keep {subject} alive between calls",
    "mode": "call train() and eval() less often: each mode is its own program",
    "autocast": "call the step always inside or always outside zyx.autocast (or put the context in the step)",
    "precision": "set zyx.set_float32_matmul_precision once, before the first call",
    "structure": "call the step with arguments of one structure",
}


@dataclass(frozen=True)
class Reason:
    """One recapture's cause: `text` for the log, `kind` and `subject` (what varied) for the advice."""

    text: str
    kind: str
    subject: str


def advice(reasons: Iterable[Reason]) -> Optional[str]:
    """How to avoid the most frequent cause among `reasons` (None when there are none)."""
    counted = collections.Counter((reason.kind, reason.subject) for reason in reasons)
    if not counted:
        return None
    (kind, subject), times = counted.most_common(1)[0]
    return f"{subject} caused {times} of them: {_ADVICE[kind].format(subject=subject)}"


def nearest_key(keys: Iterable[tuple], key: tuple) -> Optional[tuple]:
    """The captured key that differs from `key` in the fewest arguments (the latest among equals)."""
    def distance(other: tuple) -> int:
        return abs(len(other) - len(key)) + sum(a != b for a, b in zip(other, key))
    return min(reversed(list(keys)), key=distance, default=None)


def key_change(old: tuple, new: tuple, positional: int) -> Reason:
    """What differs between two `arguments.call_key` keys; the first `positional` parts are positional arguments."""
    if len(old) != len(new):
        return Reason(f"called with {len(new)} arguments instead of {len(old)}", "structure", "the arguments")
    for index, (before, after) in enumerate(zip(old, new)):
        if before == after:
            continue
        if index < positional:
            return _value_change(f"argument {index}", before, after)
        if not (isinstance(before, tuple) and len(before) == 2 and before[0] == after[0]):
            return Reason(f"argument {after[0]!r} is passed by keyword, by position when captured", "structure",
                          f"argument {after[0]!r}")
        return _value_change(f"argument {after[0]!r}", before[1], after[1])
    return Reason("the arguments alias each other differently", "alias", "the arguments")


def guard_failure(step: Any, root: Any) -> Reason:
    """Why a captured step (`jit.CapturedStep`) may not be replayed for this call: what its guards found."""
    for ref in step.state:
        tensor = ref.tensor()
        found = [resolve(root, path) for path in ref.paths]
        if tensor is not None and all(value is tensor for value in found):
            continue
        name = next((name for name, value in zip(ref.names, found) if value is not tensor), ref.names[0])
        if any(isinstance(value, Tensor) for value in found):
            return Reason(f"`{name}` was rebound to another tensor", "rebound", f"`{name}`")
        return Reason(f"`{name}` was deleted", "deleted", f"`{name}`")
    for module_ref, training in step.modes:
        module = module_ref()
        if module is None:
            return Reason("a module it read was deleted", "deleted", "the model")
        if module.__dict__.get("_training", True) != training:
            mode = "train" if not training else "eval"
            return Reason(f"{type(module).__name__} switched to {mode} mode", "mode", type(module).__name__)
    if step.autocast is not autocast_dtype():
        names = [f"zyx.autocast({dtype!r})" if dtype else "no autocast" for dtype in (step.autocast, autocast_dtype())]
        return Reason(f"called under {names[1]}, traced under {names[0]}", "autocast", "the autocast state")
    if step.precision != get_float32_matmul_precision():
        return Reason(f"float32 products at precision {get_float32_matmul_precision()!r}, traced at "
                      f"{step.precision!r}", "precision", "the float32 product precision")
    return Reason("the arguments alias each other or the step's state differently", "alias", "the arguments")


def _value_change(name: str, before: Any, after: Any) -> Reason:
    if _is_tensor(before) and _is_tensor(after):
        for position, what in _TENSOR_FIELDS:
            if before[position] != after[position]:
                shown = ("another device" if what == "device"
                         else f"{_shape(before[position])} → {_shape(after[position])}" if what == "shape"
                         else f"{before[position]} → {after[position]}")
                return Reason(f"new {what} of {name}: {shown}", what, name)
        return Reason(f"{name} aliases the other arguments differently", "alias", name)
    if _is_container(before) and _is_container(after) and before[0] == after[0] and len(before[1]) == len(after[1]):
        for index, (inner_before, inner_after) in enumerate(zip(before[1], after[1])):
            if inner_before != inner_after:
                label = f"{name}[{inner_after[0]!r}]" if before[0] == "dict" else f"{name}[{index}]"
                inner = (inner_before[1], inner_after[1]) if before[0] == "dict" else (inner_before, inner_after)
                return _value_change(label, *inner)
    if not (_is_tensor(before) or _is_tensor(after) or _is_container(before) or _is_container(after)):
        return Reason(f"new Python constant {name}: {_constant(before)!r} → {_constant(after)!r}", "constant", name)
    return Reason(f"{name} changed from {_summary(before)} to {_summary(after)}", "structure", name)


def _is_tensor(part: Any) -> bool:
    return isinstance(part, tuple) and len(part) == 6 and part[0] == "tensor"


def _is_container(part: Any) -> bool:
    """A list, tuple or dict argument's part: (its type or "dict", the parts of its items)."""
    kind = part[0] if isinstance(part, tuple) and len(part) == 2 else None
    return kind == "dict" or isinstance(kind, type) and issubclass(kind, (list, tuple))


def _constant(part: tuple) -> Any:
    kind = part[0]
    if kind is float:
        return float.fromhex(part[1])
    if kind is np.generic:
        return np.frombuffer(part[2], dtype=np.dtype(part[1]))[0]
    return part[1]


def _shape(shape: tuple) -> str:
    return str(tuple(shape))


def _summary(part: Any) -> str:
    if _is_tensor(part):
        return f"a tensor of shape {_shape(part[1])}"
    if _is_container(part):
        return f"a {'dict' if part[0] == 'dict' else part[0].__name__} of {len(part[1])}"
    return f"the constant {_constant(part)!r}"
