"""`tensor[...]` with ints, slices, None, Ellipsis and integer tensors (PyTorch's rules); `gather` and
`take_along_dim`. All views or fused selects."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from .errors import ShapeError
from .tensor_base import TensorBase
from .tensor_movement import broadcast_shape, normalize_axis
from .trace.checks import RangeCheck, attach

if TYPE_CHECKING:
    from .tensor import Tensor


def _expand_ellipsis(index: tuple[Any, ...], ndim: int) -> tuple[Any, ...]:
    # identity tests only: `in` and `.index` would call Tensor.__eq__ on tensor indices
    consuming = sum(1 for i in index if i is not None and i is not Ellipsis)
    if consuming > ndim:
        raise IndexError(f"too many indices ({consuming}) for a tensor with {ndim} dimensions")
    positions = [k for k, i in enumerate(index) if i is Ellipsis]
    if len(positions) > 1:
        raise IndexError("an index can only have a single ellipsis")
    at = positions[0] if positions else len(index)
    return index[:at] + (slice(None),) * (ndim - consuming) + index[at + 1:]


def _strided(t: "Tensor", axis: int, step: int) -> "Tensor":
    """Every `step`-th element along `axis`, by pad + reshape + shrink (a view)."""
    length = t.shape[axis]
    count = -(-length // step)
    padded = t.pad([(0, 0)] * axis + [(0, count * step - length)])
    shape = list(padded.shape)
    shape[axis:axis + 1] = [count, step]
    grouped = padded.reshape(shape)
    bounds = [(0, s) for s in shape]
    bounds[axis + 1] = (0, 1)
    return grouped.shrink(bounds).reshape(shape[:axis + 1] + shape[axis + 2:])


def _slice(t: "Tensor", axis: int, item: slice) -> "Tensor":
    start, stop, step = item.indices(t.shape[axis])
    if step < 0:
        t = t.flip(axis)
        length = t.shape[axis]
        start, stop, step = length - 1 - start, length - 1 - stop, -step
    stop = max(stop, start)
    bounds = [(0, s) for s in t.shape]
    bounds[axis] = (start, stop)
    t = t.shrink(bounds)
    return _strided(t, axis, step) if step > 1 and t.shape[axis] > 0 else t


def getitem(t: "Tensor", index: Any) -> "Tensor":
    if not isinstance(index, tuple):
        index = (index,)
    if any(isinstance(i, bool) for i in index):
        raise TypeError("indexing with a Python bool is not supported; index with a bool tensor (a mask) instead")
    index = _masks_as_positions(index, t.shape)
    index = tuple(_as_index_value(i) for i in index)
    index = _expand_ellipsis(index, t.ndim)
    result, axis, tensor_axes = t, 0, []
    for item in index:
        if item is None:
            result = result.unsqueeze(axis)
            axis += 1
        elif isinstance(item, slice):
            result = _slice(result, axis, item)
            axis += 1
        elif isinstance(item, TensorBase) or isinstance(item, (list, tuple)):
            tensor_axes.append((axis, item))
            axis += 1
        elif isinstance(item, int) or hasattr(item, "__index__"):  # selects, even beside tensors (PyTorch)
            size = result.shape[axis]
            position = int(item)
            if not -size <= position < size:
                raise IndexError(f"index {position} is out of bounds for axis {axis} with size {size}")
            position %= size
            bounds = [(0, s) for s in result.shape]
            bounds[axis] = (position, position + 1)
            result = result.shrink(bounds).squeeze(axis)
        else:
            raise TypeError(f"unsupported index {item!r}")
    if tensor_axes:
        # PyTorch's rule: tensor indices on adjacent axes of the result (ints have selected theirs away) keep
        # their place; apart, their broadcast axes go first
        axes = [a for a, _ in tensor_axes]
        apart = axes != list(range(axes[0], axes[0] + len(axes)))
        result = (_take_apart if apart else _take_advanced)(result, tensor_axes)
    return result


def _is_advanced(item: Any) -> bool:
    """An integer-tensor (or list) index, which takes elements instead of viewing a range."""
    return isinstance(item, (TensorBase, list, tuple))


def _as_mask(item: Any) -> Any:
    """A bool index (tensor, numpy array or nested list of bools) as a numpy array, else None."""
    if isinstance(item, TensorBase):
        return item.numpy() if item.dtype.is_bool else None
    if isinstance(item, np.ndarray):
        return item if item.dtype == np.bool_ else None
    if isinstance(item, (list, tuple)) and item:
        array = np.asarray(item)
        return array if array.dtype == np.bool_ else None
    return None


def _masks_as_positions(index: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[Any, ...]:
    """Each k-dimensional bool mask replaced by the k integer index lists of its true positions (numpy's and
    PyTorch's rule). The positions depend on the mask's values, so a mask tensor is realized here."""
    masks = [_as_mask(i) for i in index]
    if all(m is None for m in masks):
        return index
    consuming = sum(1 if m is None else m.ndim for i, m in zip(index, masks) if i is not None and i is not Ellipsis)
    result: list[Any] = []
    axis = 0
    for item, mask in zip(index, masks):
        if item is Ellipsis:
            axis += len(shape) - consuming
        elif mask is not None:
            if mask.ndim == 0:
                raise TypeError("indexing with a 0-d bool mask is not supported; use zyx.where")
            covered = shape[axis:axis + mask.ndim]
            if mask.shape != covered:
                raise IndexError(f"the mask of shape {mask.shape} does not match the indexed axes {axis}.."
                                 f"{axis + mask.ndim - 1} of shape {covered} (tensor shape {shape})")
            result.extend(positions.tolist() for positions in np.nonzero(mask))
            axis += mask.ndim
            continue
        elif item is not None:
            axis += 1
        result.append(item)
    return tuple(result)


def _as_index_value(item: Any) -> Any:
    if isinstance(item, np.ndarray):
        return item.tolist() if item.ndim else item.item()
    if isinstance(item, np.integer):
        return int(item)
    return item


def _take_apart(t: "Tensor", tensor_axes: list[tuple[int, Any]]) -> "Tensor":
    """Non-adjacent integer-tensor indices: move their axes to the front, take there (numpy's rule)."""
    axes = [a for a, _ in tensor_axes]
    rest = [a for a in range(t.ndim) if a not in axes]
    moved = t.permute(axes + rest)
    return _take_advanced(moved, [(k, item) for k, (_, item) in enumerate(tensor_axes)])


def _as_index(t: "Tensor", item: Any, axis: int) -> tuple["Tensor", bool]:
    """The index as an integer tensor, and whether its values still need checking (a list is checked here)."""
    if isinstance(item, TensorBase):
        if not item.dtype.is_int:
            raise TypeError(f"tensors used as indices must be integer, got {item.dtype.name}")
        return item, True
    array = np.array(item)
    if array.size and array.dtype.kind not in "iu":
        raise TypeError(f"indices must be integers, got {array.dtype} values in {item!r}")
    size = t.shape[axis]
    outside = array[(array < -size) | (array >= size)]
    if outside.size:
        raise IndexError(f"index {outside.flat[0]} is out of bounds for axis {axis} with size {size}")
    return t._data(array.astype(np.int64) if array.size == 0 else array), False


def _take_advanced(t: "Tensor", tensor_axes: list[tuple[int, Any]]) -> "Tensor":
    """numpy's advanced indexing for integer tensors on adjacent axes: they broadcast together."""
    axes = [a for a, _ in tensor_axes]
    if axes != list(range(axes[0], axes[0] + len(axes))):
        raise IndexError("integer-tensor indices must be on adjacent axes")
    indices = [_as_index(t, item, axis) for axis, item in tensor_axes]
    shape = broadcast_shape("index", *(i.shape for i, _ in indices))
    linear, checks = None, []
    for axis, (idx, unchecked) in zip(axes, indices):
        size = t.shape[axis]
        if unchecked and idx.numel():
            checks.append(RangeCheck(idx.node, -size, size, f"index {{value}} is out of bounds for axis {axis} "
                                                            f"with size {size}"))
        idx = (idx < 0).where(idx + size, idx).expand(shape)
        linear = idx if linear is None else linear * size + idx
    first, last = axes[0], axes[-1] + 1
    merged = t.reshape(t.shape[:first] + (math.prod(t.shape[first:last]),) + t.shape[last:])
    result = _take(merged, first, linear)
    for check in checks:
        attach(result.node, check)
    return result


def _hits(idx: "Tensor", size: int) -> "Tensor":
    """A bool mask on a new last axis: True at each entry's class (nowhere for an entry outside [0, size))."""
    return idx.unsqueeze(-1) == idx._arange(size)


def one_hot(t: "Tensor", num_classes: int, message: str = "") -> "Tensor":
    """int64 codes on a new last axis; an entry outside [0, num_classes) raises IndexError when realized
    (`message` names it: "{value}" stands for the entry)."""
    return one_hot_mask(t, num_classes, message).cast("int64")


def one_hot_mask(t: "Tensor", num_classes: int, message: str = "") -> "Tensor":
    """one_hot's codes as a bool mask (checked alike): what a loss selects its targets' values with, a sum over
    the classes that lowering reads as one load (jit/indirect.py)."""
    if not t.dtype.is_int:
        raise TypeError(f"one_hot needs an integer tensor of class indices, got {t.dtype.name}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"one_hot: num_classes must be a positive int, got {num_classes!r} (zyx cannot infer it "
                         "from values that are computed lazily: pass max + 1)")
    hits = _hits(t, num_classes)
    if t.numel():
        message = message or f"one_hot: class {{value}} is out of range for num_classes={num_classes}"
        attach(hits.node, RangeCheck(t.node, 0, num_classes, message))
    return hits


def _take(t: "Tensor", axis: int, idx: "Tensor") -> "Tensor":
    """t indexed along `axis` by an integer tensor whose shape replaces that axis: the sum over the axis of the
    entries each index hits, in t's own layout. The axes after `axis` stay innermost, so a kernel takes whole
    rows of t (an embedding's rows of features), and the gradient's sum over the index entries reads whole rows
    of the incoming gradient; with `axis` moved last instead, the embedding gradient of a GPT step (vocabulary
    512, 2048 tokens) was one kernel of 5 s on PoCL reading a transposed gradient."""
    size, inner = t.shape[axis], t.ndim - axis - 1
    hits = _hits(idx.reshape(-1), size).reshape((-1, size) + (1,) * inner)        # (k, size, 1...)
    picked = hits.where(t.unsqueeze(axis), 0).sum(axis + 1).cast(t.dtype)         # lead + (k,) + rest
    return picked.reshape(t.shape[:axis] + idx.shape + t.shape[axis + 1:])


def gather(t: "Tensor", axis: int, index: "Tensor") -> "Tensor":
    if not index.dtype.is_int:
        raise TypeError(f"gather: index must be an integer tensor, got {index.dtype.name}")
    axis = normalize_axis(axis, t.ndim, "gather")
    if index.ndim != t.ndim:
        raise ShapeError(f"gather: index of shape {index.shape} needs as many dimensions as input {t.shape}")
    if any(i > s for d, (i, s) in enumerate(zip(index.shape, t.shape)) if d != axis):
        raise ShapeError(f"gather: index shape {index.shape} exceeds input shape {t.shape} outside axis {axis}")
    bounds = [(0, i) if d != axis else (0, s) for d, (i, s) in enumerate(zip(index.shape, t.shape))]
    source = t.shrink(bounds).transpose(axis, -1)                         # (..., size)
    idx = index.transpose(axis, -1)                                       # (..., m)
    size = t.shape[axis]
    hits = _hits(idx, size)                                               # (..., m, size)
    picked = hits.where(source.unsqueeze(-2), 0).sum(-1).cast(t.dtype)    # (..., m)
    result = picked.transpose(axis, -1)
    if index.numel():
        attach(result.node, RangeCheck(index.node, 0, size, f"gather: index {{value}} is out of bounds for axis "
                                                            f"{axis} with size {size}"))
    return result


def take_along_dim(t: "Tensor", index: "Tensor", axis: Optional[int]) -> "Tensor":
    """gather after broadcasting t and index together outside `axis` (torch.take_along_dim); both flattened
    when axis is None."""
    if not isinstance(index, TensorBase) or not index.dtype.is_int:
        raise TypeError(f"take_along_dim: indices must be an integer tensor, got "
                        f"{getattr(index, 'dtype', type(index).__name__)}")
    if axis is None:
        return gather(t.reshape(-1), 0, index.reshape(-1))
    if index.ndim != t.ndim:
        raise ShapeError(f"take_along_dim: input of shape {t.shape} and indices of shape {index.shape} need the "
                         "same number of dimensions")
    axis = normalize_axis(axis, t.ndim, "take_along_dim")
    others = [s[:axis] + (1,) + s[axis + 1:] for s in (t.shape, index.shape)]
    try:
        outside = broadcast_shape("take_along_dim", *others)
    except ShapeError:
        raise ShapeError(f"take_along_dim: input of shape {t.shape} and indices of shape {index.shape} do not "
                         f"broadcast outside axis {axis}") from None
    source = t.expand(outside[:axis] + t.shape[axis:axis + 1] + outside[axis + 1:])
    return gather(source, axis, index.expand(outside[:axis] + index.shape[axis:axis + 1] + outside[axis + 1:]))


class IndexingMixin:
    """Tensor's indexing: `t[...]`, one_hot, gather and take_along_dim."""

    __slots__ = ()

    def __getitem__(self: "Tensor", index: Any) -> "Tensor":
        return getitem(self, index)

    def one_hot(self: "Tensor", num_classes: int) -> "Tensor":
        """int64 one-hot codes on a new last axis; a value outside [0, num_classes) raises IndexError when the
        result is realized (num_classes cannot be inferred from values that do not exist yet)."""
        return one_hot(self, num_classes)

    def gather(self: "Tensor", axis: int, index: "Tensor") -> "Tensor":
        """out[..., i, ...] = self[..., index[..., i, ...], ...] along `axis` (PyTorch's gather)."""
        return gather(self, axis, index)

    def take_along_dim(self: "Tensor", indices: "Tensor", axis: Optional[int] = None) -> "Tensor":
        """self[..., indices[..., i, ...], ...] along `axis`, the two broadcast together outside it (torch's
        take_along_dim: gather that broadcasts, as numpy's take_along_axis); over the flattened tensor when
        axis is None."""
        return take_along_dim(self, indices, axis)
