"""sort, argsort and topk by rank counting: each element's rank is how many elements sort before it.

Rank counting compares every pair along the axis, so a sort of length n costs O(n^2) comparisons and sums per
row (fused into two reductions: no n x n buffer is stored). That suits the moderate lengths of model code
(top-k over a vocabulary of a few thousand, sorting a batch); for long axes sort on the host. Values are
picked from the input by a one-hot `where`, so the gradient reaches exactly the element that landed at each
position. Ties keep their original order (every sort is stable); nan sorts as the largest value, as PyTorch.

kthvalue, median, nanmedian, quantile and nanquantile pick from the sorted axis by a one-hot sum at a rank computed
per row, so gradients reach the picked elements (both neighbours, weighted, for linear interpolation).

searchsorted and bucketize count, for each value, the sorted entries before its insertion point (no search).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np

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


def _sorted_rows(t: "Tensor", dim: int, op: str) -> tuple["Tensor", "Tensor", int]:
    """t sorted along `dim` (nan last), with its original positions, `dim` moved last; and that axis."""
    axis = scan_axis(t, dim, op)
    if axis is None:
        t, axis = t.reshape(1), 0
    values, indices = t.sort(axis)
    return values.transpose(axis, -1), indices.transpose(axis, -1), axis


def _pick(rows: "Tensor", rank: Any) -> "Tensor":
    """(..., 1): each row's entry at the integer-valued `rank` (a number or a tensor broadcasting to (..., 1))."""
    hit = rows._arange(rows.shape[-1]) == rank
    return hit.where(rows, 0).sum(-1, keepdim=True).cast(rows.dtype)


def _restore(t: "Tensor", out: "Tensor", axis: int, keepdim: bool, lead: int = 0) -> "Tensor":
    """A pick's (lead axes..., ..., 1) result with the reduced axis put back at `axis` (kept or dropped)."""
    out = out.transpose(axis + lead, -1)
    if t.ndim == 0:
        return out.reshape(out.shape[:lead])
    return out if keepdim else out.squeeze(axis + lead)


def _at_rank(t: "Tensor", dim: int, keepdim: bool, op: str, rank: Any) -> ValuesIndices:
    """The values and positions of rank `rank` (a number, or a function of the sorted rows) along `dim`."""
    rows, positions, axis = _sorted_rows(t, dim, op)
    at = rank(rows) if callable(rank) else rank
    return ValuesIndices(_restore(t, _pick(rows, at), axis, keepdim), _restore(t, _pick(positions, at), axis, keepdim))


def _nan_count(rows: "Tensor") -> "Tensor":
    return rows.isnan().sum(-1, keepdim=True) if rows.dtype.is_float else rows._full((), 0, int64)


QUANTILE_INTERPOLATIONS = ("linear", "lower", "higher", "nearest", "midpoint")


def _quantile(t: "Tensor", q: Any, dim: Optional[int], keepdim: bool, interpolation: str, op: str) -> "Tensor":
    """torch's quantile (op 'quantile': nan where a row has one) or nanquantile (nan ignored)."""
    if interpolation not in QUANTILE_INTERPOLATIONS:
        raise ValueError(f"{op}: interpolation must be one of {QUANTILE_INTERPOLATIONS}, got {interpolation!r}")
    if not t.dtype.is_float:
        raise TypeError(f"{op}: needs a floating-point tensor, got {t.dtype}")
    qs = q.numpy() if isinstance(q, TensorBase) else np.asarray(q, np.float64)
    if qs.ndim > 1:
        raise ShapeError(f"{op}: q must be a number or a 1-D tensor, got shape {qs.shape}")
    if not np.all((qs >= 0) & (qs <= 1)):
        raise ValueError(f"{op}: q must be in [0, 1], got {qs.tolist()}")
    source = t.flatten() if dim is None else t
    rows, _, axis = _sorted_rows(source, 0 if dim is None else dim, op)
    length = rows.shape[-1]
    fractions = t._data(qs.reshape((-1,) + (1,) * rows.ndim), t.dtype)     # (Q, 1, ..., 1)
    if op == "nanquantile":
        ranks = fractions * (length - _nan_count(rows) - 1)
        ranks = (ranks < 0).where(0, ranks)
    else:
        ranks = (_nan_count(rows) > 0).where(length - 1, fractions * (length - 1))
    ranks = {"lower": ranks.floor, "higher": ranks.ceil, "nearest": ranks.round}.get(interpolation, lambda: ranks)()
    out = _pick(rows, ranks.floor())
    if interpolation in ("linear", "midpoint"):
        weight = 0.5 if interpolation == "midpoint" else ranks - ranks.floor()
        out = out.lerp(_pick(rows, ranks.ceil()), weight)
    if dim is None:
        out = out.reshape((-1,) + ((1,) * t.ndim if keepdim else ()))
    else:
        out = _restore(t, out, axis, keepdim, lead=1)
    return out.squeeze(0) if qs.ndim == 0 else out


class SortMixin:
    """Tensor's sort, argsort, msort, topk and order statistics (kthvalue, median, quantile and nan forms)."""

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

    def kthvalue(self: "Tensor", k: int, dim: int = -1, keepdim: bool = False) -> ValuesIndices:
        """The k-th smallest value along `dim` (k from 1, nan largest) and its position, as torch.kthvalue."""
        axis = scan_axis(self, dim, "kthvalue")
        length = 1 if axis is None else self.shape[axis]
        if not 1 <= k <= length:
            raise ValueError(f"kthvalue: k={k} is out of range for dimension {dim} of size {length} "
                             f"(shape {self.shape})")
        return _at_rank(self, dim, keepdim, "kthvalue", k - 1)

    def median(self: "Tensor", dim: Optional[int] = None, keepdim: bool = False) -> Any:
        """The lower median, as torch.median: of all elements a 0-d tensor, along `dim` (values, indices). A row
        with nan gives nan and the position of its first nan."""
        if dim is None:
            return self.flatten().median(0).values
        return _at_rank(self, dim, keepdim, "median", lambda rows: (_nan_count(rows) > 0).where(
            rows.shape[-1] - _nan_count(rows), (rows.shape[-1] - 1) // 2))

    def nanmedian(self: "Tensor", dim: Optional[int] = None, keepdim: bool = False) -> Any:
        """median with nan ignored, as torch.nanmedian (nan where a row is all nan)."""
        if dim is None:
            return self.flatten().nanmedian(0).values
        return _at_rank(self, dim, keepdim, "nanmedian",
                        lambda rows: ((rows.shape[-1] - _nan_count(rows) - 1) // 2).maximum(0))

    def quantile(self: "Tensor", q: Any, dim: Optional[int] = None, keepdim: bool = False, *,
                 interpolation: str = "linear") -> "Tensor":
        """The q-th quantiles along `dim` (all elements by default), as torch.quantile: q a number or a 1-D
        tensor (then a leading axis of len(q)); nan where a row has a nan. q is read on the host to check it."""
        return _quantile(self, q, dim, keepdim, interpolation, "quantile")

    def nanquantile(self: "Tensor", q: Any, dim: Optional[int] = None, keepdim: bool = False, *,
                    interpolation: str = "linear") -> "Tensor":
        """quantile with nan ignored, as torch.nanquantile (nan where a row is all nan)."""
        return _quantile(self, q, dim, keepdim, interpolation, "nanquantile")
