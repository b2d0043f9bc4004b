"""sort, argsort and topk by rank counting: each element's rank is how many elements sort before it.

Rank counting compares every pair along the axis, so a sort of length n costs O(n^2) comparisons and sums per
row (fused into two reductions: no n x n buffer is stored). That suits the moderate lengths of model code
(top-k over a vocabulary of a few thousand, sorting a batch); for long axes sort on the host. Values are
picked from the input by a one-hot `where`, so the gradient reaches exactly the element that landed at each
position. Ties keep their original order (every sort is stable); nan sorts as the largest value, as PyTorch.

searchsorted and bucketize count, for each value, the sorted entries before its insertion point (no search).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from .dtypes import int32, int64
from .errors import ShapeError
from .tensor_base import TensorBase
from .tensor_results import ValuesIndices
from .tensor_scan import scan_axis

if TYPE_CHECKING:
    from .tensor import Tensor


def _ranks(row: "Tensor", descending: bool) -> "Tensor":
    """(..., n) -> (..., n) int64: the position each element takes in the sorted row (ties: original order)."""
    mine, other = row.unsqueeze(-1), row.unsqueeze(-2)                      # (..., n, 1), (..., 1, n)
    ahead = other > mine if descending else other < mine
    if row.dtype.is_float:  # nan is the largest value
        nan_mine, nan_other = mine.isnan(), other.isnan()
        nan_ahead = nan_other & nan_mine.logical_not() if descending else nan_mine & nan_other.logical_not()
        ahead = ahead | nan_ahead
        tie = (other == mine) | (nan_mine & nan_other)
    else:
        tie = other == mine
    length = row.shape[-1]
    positions = row._arange(length)
    earlier = positions.unsqueeze(-1) > positions                           # (n, n): other comes first
    return (ahead | (tie & earlier)).sum(-1)


def searchsorted(sorted_sequence: "Tensor", values: Any, *, out_int32: bool = False, right: bool = False,
                 side: Optional[str] = None) -> "Tensor":
    """Where each of `values` would be inserted into the innermost axis of `sorted_sequence` to keep it sorted,
    as torch.searchsorted: before equal entries (or after them with right=True or side='right'). A 1-D sequence
    serves values of any shape; otherwise the leading axes of both must match. int64 (int32 with out_int32).
    Counted, not searched: the index is how many entries are not >= (right: not >) the value, which is a binary
    search's answer, nan values included (past the end)."""
    if side is not None:
        if side not in ("left", "right") or (side == "left" and right):
            raise ValueError(f"searchsorted: side must be 'left' or 'right' and agree with right={right}, got {side!r}")
        right = side == "right"
    if not isinstance(values, TensorBase):
        if sorted_sequence.ndim != 1:
            raise ShapeError(f"searchsorted: a scalar value needs a 1-D sorted sequence, got shape "
                             f"{sorted_sequence.shape}")
        values = sorted_sequence._operand(values, "searchsorted")
    seq_shape, value_shape = sorted_sequence.shape, values.shape
    if len(seq_shape) == 0 or (len(seq_shape) > 1 and seq_shape[:-1] != value_shape[:-1]):
        raise ShapeError(f"searchsorted: sorted sequence of shape {seq_shape} and values of shape {value_shape}: "
                         "the sequence must be 1-D or share the values' leading axes")
    entries = sorted_sequence if len(seq_shape) == 1 else sorted_sequence.unsqueeze(-2)
    past = entries > values.unsqueeze(-1) if right else entries >= values.unsqueeze(-1)
    return past.logical_not().sum(-1).cast(int32 if out_int32 else int64)


def _first_ranked(t: "Tensor", axis: int, descending: bool, count: int) -> ValuesIndices:
    """The `count` elements ranked first along `axis`, in order, with their positions."""
    row = t.transpose(axis, -1)
    x = row.cast(int64) if row.dtype.is_bool else row
    length = row.shape[-1]
    slots = t._arange(count).unsqueeze(-1)                    # (count, 1)
    placed = _ranks(x, descending).unsqueeze(-2) == slots                   # (..., count, n)
    values = placed.where(x.unsqueeze(-2), 0).sum(-1).cast(t.dtype)
    indices = placed.where(t._arange(length), 0).sum(-1)
    return ValuesIndices(values.transpose(axis, -1), indices.transpose(axis, -1))


class SortMixin:
    """Tensor's sort, argsort, msort and topk."""

    __slots__ = ()

    def sort(self: "Tensor", dim: int = -1, descending: bool = False, stable: bool = False) -> ValuesIndices:
        """(sorted values, their original positions) along `dim`, as torch.sort. Always stable (ties keep their
        order, so `stable` changes nothing); O(n^2) in the length of `dim` (see the module docstring)."""
        axis = scan_axis(self, dim, "sort")
        if axis is None:
            return ValuesIndices(self, self.cast(int64) * 0)
        return _first_ranked(self, axis, descending, self.shape[axis])

    def argsort(self: "Tensor", dim: int = -1, descending: bool = False, stable: bool = False) -> "Tensor":
        """The positions that sort `dim` (int64), as torch.argsort; stable, O(n^2) per row."""
        return self.sort(dim, descending, stable).indices

    def msort(self: "Tensor") -> "Tensor":
        """Values sorted along the first axis."""
        return self.sort(0).values

    def bucketize(self: "Tensor", boundaries: "Tensor", *, out_int32: bool = False, right: bool = False) -> "Tensor":
        """The bucket of each element among the sorted 1-D `boundaries`, as torch.bucketize: i with
        boundaries[i-1] < x <= boundaries[i] (right=True: boundaries[i-1] <= x < boundaries[i]); int64."""
        if not isinstance(boundaries, TensorBase) or boundaries.ndim != 1:
            raise ShapeError(f"bucketize: boundaries must be a 1-D tensor, got shape "
                             f"{getattr(boundaries, 'shape', type(boundaries).__name__)}")
        return searchsorted(boundaries, self, out_int32=out_int32, right=right)

    def topk(self: "Tensor", k: int, dim: int = -1, largest: bool = True, sorted: bool = True) -> ValuesIndices:
        """The k largest (or smallest) values along `dim` and their positions, largest first, as torch.topk;
        O(n^2) compares plus O(n k) selection per row."""
        axis = scan_axis(self, dim, "topk")
        length = 1 if axis is None else self.shape[axis]
        if not 0 <= k <= length:
            raise ValueError(f"topk: k={k} is out of range for dimension {dim} of size {length} "
                             f"(shape {self.shape})")
        if axis is None:
            return ValuesIndices(self, self.cast(int64) * 0)
        return _first_ranked(self, axis, largest, k)
