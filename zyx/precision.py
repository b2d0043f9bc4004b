"""The precision float32 matrix products may run in, by PyTorch's names: "highest" (float32 throughout, the
default), "high" and "medium" (TF32 on tensor cores where the device has them: operands keep 10 bits of mantissa,
products accumulate in float32). A device schedules its programs under the setting of the time; a jitted step
traced under another setting traces again."""
from __future__ import annotations

PRECISIONS = ("highest", "high", "medium")
_setting = ["highest"]


def set_float32_matmul_precision(precision: str) -> None:
    """Allow ("high", "medium") or forbid ("highest") TF32 tensor cores for float32 products and convolutions."""
    if precision not in PRECISIONS:
        raise ValueError(f"set_float32_matmul_precision: precision must be one of {', '.join(PRECISIONS)}, "
                         f"got {precision!r}")
    _setting[0] = precision


def get_float32_matmul_precision() -> str:
    """The precision set by `set_float32_matmul_precision` ("highest" unless changed)."""
    return _setting[0]


def tf32_allowed() -> bool:
    """Whether float32 products may run in TF32."""
    return _setting[0] != "highest"
