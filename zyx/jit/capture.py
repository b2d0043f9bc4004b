"""In-place updates (`t.assign(v)`) and the guard against reading values while a step is being traced."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from ..tensor import Tensor


class Capture:
    """Collects what a function under `@zyx.jit` assigns while it is traced."""

    def __init__(self) -> None:
        self.assigned: dict[int, tuple["Tensor", "Tensor"]] = {}


_active: list[Capture] = []


def active_capture() -> Optional[Capture]:
    return _active[-1] if _active else None


def record_assign(target: "Tensor", value: "Tensor") -> None:
    capture = active_capture()
    if capture is not None:
        capture.assigned[id(target)] = (target, value)
    target.node = value.node


def check_not_capturing(what: str) -> None:
    if _active:
        raise RuntimeError(f"{what}() cannot run inside a function traced by @zyx.jit: values exist only "
                           "when the step runs; return the tensor and read it after the call")
