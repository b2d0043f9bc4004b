"""The named pair that ops returning values and their positions give back (torch.return_types' shape)."""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .tensor import Tensor


class ValuesIndices(NamedTuple):
    """`values, indices = x.sort()` or `x.sort().values`: what sort, topk, cummax and cummin return."""

    values: "Tensor"
    indices: "Tensor"
