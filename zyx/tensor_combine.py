"""Joining tensors: cat (pad each piece into place and add), stack, hstack and vstack."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from .dim_alias import accepts_dim
from .dtypes import promote
from .errors import ShapeError
from .tensor_movement import normalize_axis

if TYPE_CHECKING:
    from .tensor import Tensor


@accepts_dim
def cat(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Concatenate along `axis`; other axes must match, dtypes promote (as PyTorch), devices must agree."""
    tensors = _nonempty(tensors, "cat")
    first = tensors[0]
    if first.ndim == 0:
        raise ShapeError("cat: zero-dimensional tensors cannot be concatenated; use stack")
    axis = normalize_axis(axis, first.ndim, "cat")
    for t in tensors[1:]:
        if t.device is not first.device:
            raise ValueError(f"cat: tensors live on different devices ({first.device} and {t.device}); move one "
                             "with .to(device)")
        if t.ndim != first.ndim or any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis):
            raise ShapeError(f"cat: shapes {first.shape} and {t.shape} differ outside axis {axis}")
    dtype = first.dtype
    for t in tensors[1:]:
        dtype = promote(dtype, t.dtype)
    total = sum(t.shape[axis] for t in tensors)
    result, start = None, 0
    for t in tensors:
        size = t.shape[axis]
        placed = t.cast(dtype).pad([(0, 0)] * axis + [(start, total - start - size)])
        result = placed if result is None else (result.logical_or(placed) if dtype.is_bool else result + placed)
        start += size
    return result  # type: ignore[return-value]


@accepts_dim
def stack(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Join same-shaped tensors along a new axis `axis`."""
    tensors = _nonempty(tensors, "stack")
    for t in tensors[1:]:
        if t.shape != tensors[0].shape:
            raise ShapeError(f"stack: shapes {tensors[0].shape} and {t.shape} differ")
    axis = normalize_axis(axis, tensors[0].ndim + 1, "stack")
    return cat([t.unsqueeze(axis) for t in tensors], axis)


def hstack(tensors: Sequence[Tensor]) -> Tensor:
    """Join along the columns, as torch.hstack: 1-D tensors (and 0-d, made 1-D) end to end, others along axis 1."""
    pieces = [t.reshape(1) if t.ndim == 0 else t for t in _nonempty(tensors, "hstack")]
    return cat(pieces, 0 if pieces[0].ndim == 1 else 1)


def vstack(tensors: Sequence[Tensor]) -> Tensor:
    """Join along the rows, as torch.vstack: tensors of fewer than 2 dimensions become rows (1, n) first, then
    all are concatenated along axis 0."""
    return cat([t.reshape(1, -1) if t.ndim < 2 else t for t in _nonempty(tensors, "vstack")], 0)


def _nonempty(tensors: Sequence[Tensor], op: str) -> list[Tensor]:
    tensors = list(tensors)
    if not tensors:
        raise ValueError(f"{op} needs at least one tensor")
    return tensors


def meshgrid(*tensors: Tensor, indexing: str = "ij") -> list[Tensor]:
    """Coordinate grids from 1-D tensors (broadcast views, as torch.meshgrid): with 'ij' output k varies along
    axis k; with 'xy' the first two axes swap (numpy's default)."""
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        tensors = tuple(tensors[0])
    if indexing not in ("ij", "xy"):
        raise ValueError(f"meshgrid: indexing must be 'ij' or 'xy', got {indexing!r}")
    if any(t.ndim > 1 for t in tensors):
        raise ShapeError(f"meshgrid: needs 0-d or 1-D tensors, got shapes {[t.shape for t in tensors]}")
    flat = [t.reshape(-1) for t in tensors]
    if indexing == "xy" and len(flat) > 1:
        flat[0], flat[1] = flat[1], flat[0]
    shape = tuple(t.shape[0] for t in flat)
    grids = [t.reshape(tuple(-1 if k == axis else 1 for k in range(len(flat)))).expand(shape)
             for axis, t in enumerate(flat)]
    if indexing == "xy" and len(grids) > 1:
        grids[0], grids[1] = grids[1], grids[0]
    return grids
