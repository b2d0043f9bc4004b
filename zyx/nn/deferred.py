"""Buffers that a forward pass updated in place (BatchNorm's running statistics), waiting to be realized.

Realizing them alone would run the forward pass a second time; the optimizer realizes them in the same
`zyx.realize` call as the new parameters, so the work is shared and the update chain never grows.
"""
from __future__ import annotations

import weakref

from ..trace.capture import active_capture
from ..tensor import Tensor

_pending: "weakref.WeakValueDictionary[int, Tensor]" = weakref.WeakValueDictionary()


def defer_realize(t: Tensor) -> None:
    """Realize `t` with the next optimizer update (a `@zyx.jit` capture records the assign itself)."""
    if active_capture() is None:
        _pending[id(t)] = t


def take_deferred() -> list[Tensor]:
    """Every tensor still waiting, forgetting them."""
    waiting = list(_pending.values())
    _pending.clear()
    return waiting
