"""`tensor[index] = value`: a functional update (a new node) that the tensor then points at, as `assign` does.

With ints, slices, None and Ellipsis the written region is a strided box: the value is spread into place by
views (zeros between strided elements, flips for negative steps, padding around) and a `where` with the same
placement of True picks it. Integer-tensor and mask indices index a tensor of flat positions instead, and the
value is scattered there: O(entries x elements), so keep those for small tensors. Views taken before the
write keep the old values (zyx views are values, not aliases of memory).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ShapeError
from .tensor_conv import spread
from .tensor_indexing import _as_mask, _expand_ellipsis, _is_advanced
from .tensor_movement import broadcast_shape

if TYPE_CHECKING:
    from .tensor import Tensor


def _is_basic(index: tuple[Any, ...]) -> bool:
    return not any(_is_advanced(i) or _as_mask(i) is not None or hasattr(i, "numpy") for i in index)


def _placed(t: "Tensor", index: tuple[Any, ...], value: "Tensor") -> tuple["Tensor", "Tensor"]:
    """The value spread over t's shape for a basic index, and the bool mask of the positions it covers."""
    index = _expand_ellipsis(index, t.ndim)
    shape = [s for item, s in zip((i for i in index if i is not None), t.shape)]
    kept = []                       # per value axis: keep it (a slice) or drop it (a None)
    boxes = []                      # per t axis: (first position, step, count) of the written elements
    flips = []
    axis = 0
    for item in index:
        if item is None:
            kept.append(False)
            continue
        size = shape[axis]
        if isinstance(item, slice):
            start, _, step = item.indices(size)
            count = len(range(*item.indices(size)))
            kept.append(True)
            if step < 0:
                start, step = start + (count - 1) * step, -step
                flips.append(axis)
            boxes.append((start, step, count))
        else:
            position = int(item)
            if not -size <= position < size:
                raise IndexError(f"index {position} is out of bounds for axis {axis} with size {size}")
            boxes.append((position % size, 1, 1))
        axis += 1
    per_axis = [c for _, _, c in boxes]
    value = value.reshape(tuple(s for s, keep in zip(value.shape, kept) if keep)) if kept else value
    value = value.reshape(per_axis)      # ints come back as size-1 axes
    if flips:
        value = value.flip(flips)
    steps = [step for _, step, _ in boxes]
    pads = [(first, size - first - (count - 1) * step - 1) for (first, step, count), size in zip(boxes, shape)]
    covered = t._full(per_axis, True, "bool")
    return spread(value, steps).pad(pads), spread(covered, steps).pad(pads)


def setitem(t: "Tensor", index: Any, value: Any) -> None:
    """t[index] = value: value broadcasts to t[index]'s shape and takes t's dtype (as PyTorch)."""
    index = index if isinstance(index, tuple) else (index,)
    target = t[index]
    new = t._operand(value, "setitem")
    if broadcast_shape("setitem", target.shape, new.shape) != target.shape:
        raise ShapeError(f"setitem: value of shape {new.shape} cannot be broadcast to the indexed shape "
                         f"{target.shape} (tensor shape {t.shape})")
    new = new.cast(t.dtype).expand(target.shape)
    if not target.numel():
        return
    if _is_basic(index):
        placed, covered = _placed(t, index, new)
        t.assign(covered.where(placed, t))
        return
    positions = t._arange(t.numel()).reshape(t.shape)[index].reshape(-1)
    t.assign(t.reshape(-1).scatter(0, positions, new.reshape(-1)).reshape(t.shape))
