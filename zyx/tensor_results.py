"""The named pairs that ops returning two tensors give back (torch.return_types' shapes)."""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .tensor import Tensor


class ValuesIndices(NamedTuple):
    """`values, indices = x.sort()` or `x.sort().values`: what sort, topk, cummax and cummin return."""

    values: "Tensor"
    indices: "Tensor"


class MinMax(NamedTuple):
    """`lo, hi = x.aminmax()` or `x.aminmax().max`: what aminmax returns."""

    min: "Tensor"
    max: "Tensor"
