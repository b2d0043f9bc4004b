"""In-place updates (`t.assign(v)`), tensors made from data and module modes read while a step is traced, and
the guard against reading values while a step is being traced."""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from ..tensor import Tensor
    from ..trace.node import Node


class Capture:
    """What a function under `@zyx.jit` assigns while it is traced: tensor id -> (tensor, old node, value)."""

    def __init__(self) -> None:
        self.assigned: dict[int, tuple["Tensor", "Node", "Tensor"]] = {}
        self.modes: dict[int, tuple[Any, bool]] = {}  # module id -> (weakref to it, `training` as traced)
        self.created: dict[int, "Node"] = {}  # buffer leaves made from data inside the step: its constants


_active: list[Capture] = []


def active_capture() -> Optional[Capture]:
    return _active[-1] if _active else None


def push_capture(capture: Capture) -> None:
    _active.append(capture)


def pop_capture() -> None:
    _active.pop()


def record_assign(target: "Tensor", value: "Tensor") -> None:
    """Point `target` at its new value; under a capture, remember the update for the program."""
    capture = active_capture()
    if capture is not None:
        first_old = capture.assigned.get(id(target), (None, target.node, None))[1]
        capture.assigned[id(target)] = (target, first_old, value)
    target.node = value.node


def record_created(node: "Node") -> None:
    """A tensor made from data while a step is traced: a constant of its program, not state to look up."""
    capture = active_capture()
    if capture is not None:
        capture.created[id(node)] = node


def check_not_capturing(what: str) -> None:
    if _active:
        raise RuntimeError(f"{what}() cannot run inside a function traced by @zyx.jit: values exist only "
                           "when the step runs; return the tensor and read it after the call")


def record_mode(module: Any, training: bool) -> None:
    """A module's mode read while a step is traced: the step is replayed only while the mode is the same."""
    capture = active_capture()
    if capture is not None and id(module) not in capture.modes:
        capture.modes[id(module)] = (weakref.ref(module), training)
