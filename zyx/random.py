"""The global random stream: a seed and a counter offset into the Philox generator.

Each draw reserves `count` counters, so numbers depend only on the seed and the order of draws, never on
the backend or on when the tensor is realized.
"""
from __future__ import annotations

_DEFAULT_SEED = 0x5EED
_state = {"seed": _DEFAULT_SEED, "offset": 0}


def manual_seed(seed: int) -> None:
    """Restart the stream: the same seed gives the same numbers on every device."""
    _state["seed"], _state["offset"] = int(seed) & 0xFFFFFFFFFFFFFFFF, 0


def reserve(count: int) -> tuple[int, int]:
    """(seed, offset) for a draw of `count` numbers; advances the stream."""
    seed, offset = _state["seed"], _state["offset"]
    _state["offset"] = offset + count
    return seed, offset
