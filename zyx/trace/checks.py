"""Range checks on values that exist only when a trace runs (the entries of an index tensor).

Indexing by a tensor, `gather` and `one_hot` select with a one-hot mask, so an entry out of range would select
nothing and read as 0. The op attaches a RangeCheck to the node it returns instead; `realize` computes, with
the values asked for, how many entries of each check in their trace fall outside its range (a small reduction
that fuses like any other node, on the device), and raises IndexError naming the first offender and the range
before any result becomes visible. An entry is found on the host only in that failing case.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..dtypes import int64
from . import node as n
from .node import Node
from .ops import Op


@dataclass(frozen=True)
class RangeCheck:
    """Every entry of `values` must lie in [low, high); `message` formats the first one that does not ({value})."""

    values: Node
    low: int
    high: int
    message: str
    outside: Node = field(init=False, compare=False)  # int64 scalar: how many entries fall outside

    def __post_init__(self) -> None:
        values = n.cast(self.values, int64)
        below = n.binary(Op.CMPLT, values, n.const(self.low, values.shape, int64, values.device))
        below_high = n.binary(Op.CMPLT, values, n.const(self.high, values.shape, int64, values.device))
        bad = n.binary(Op.OR, below, n.unary(Op.NOT, below_high))
        count = n.reduce(Op.SUM, n.cast(bad, int64), range(len(bad.shape)))
        object.__setattr__(self, "outside", n.reshape(count, ()))

    def extremes(self) -> Node:
        """[-smallest, largest] entry (int64, shape (2,)), one reduction over the entries and their negations:
        what a replayed program checks, since it has no second run in which to find the first offender."""
        values = n.cast(self.values, int64)
        row = n.reshape(values, (1, math.prod(values.shape)))
        rows = n.binary(Op.ADD, n.pad(n.unary(Op.NEG, row), ((0, 1), (0, 0))), n.pad(row, ((1, 0), (0, 0))))
        return n.reshape(n.reduce(Op.RMAX, rows, (1,)), (2,))

    def error_from_extremes(self, smallest: int, largest: int) -> IndexError | None:
        """The error naming an entry outside the range, given the extremes; None when both lie inside."""
        if smallest < self.low:
            return IndexError(self.message.format(value=smallest))
        if largest >= self.high:
            return IndexError(self.message.format(value=largest))
        return None

    def error(self, values: np.ndarray) -> IndexError:
        """The error for these (realized) values, naming the first entry outside the range."""
        flat = values.reshape(-1)
        first = flat[(flat < self.low) | (flat >= self.high)][0]
        return IndexError(self.message.format(value=int(first)))


_checks: "weakref.WeakKeyDictionary[Node, list[RangeCheck]]" = weakref.WeakKeyDictionary()


def attach(node: Node, check: RangeCheck) -> None:
    """`node`'s value is only right when `check` passes; realizing anything that depends on it checks it."""
    _checks.setdefault(node, []).append(check)


def guards_range(node: Node, low: int, high: int) -> bool:
    """Whether a check attached to `node` fails for every value outside [low, high): a realize reading the node
    then raises for such a value, and what computes the node may assume none (a one-hot mask's gather)."""
    return any(check.low >= low and check.high <= high for check in _checks.get(node, ()))


def checks_in(order: Sequence[Node]) -> list[RangeCheck]:
    """The checks attached to the unrealized nodes of a trace (none to look for while no node has one)."""
    if not _checks.data:  # (its own len() is a Python call, paid by every realize)
        return []
    return [check for node in order if not node.realized for check in _checks.get(node, ())]
