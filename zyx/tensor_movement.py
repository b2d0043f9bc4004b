"""Movement ops: views of a tensor (reshape, permute, pad, slicing...), recorded as view nodes, never copies."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from .errors import AxisError, ShapeError
from .trace import node as n

if TYPE_CHECKING:
    from .tensor import Tensor


def normalize_axis(axis: int, ndim: int, op: str) -> int:
    """axis in [0, ndim); a 0-d tensor takes 0 and -1, as PyTorch."""
    axis = int(axis)
    if not -max(ndim, 1) <= axis < max(ndim, 1):
        raise AxisError(f"{op}: axis {axis} is out of range for a tensor with {ndim} dimensions")
    return axis % max(ndim, 1)


def _dims(args: tuple[Any, ...]) -> tuple[int, ...]:
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else tuple(args)


def broadcast_shape(op: str, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    """numpy broadcasting; a ShapeError names the op and every shape."""
    if shapes.count(shapes[0]) == len(shapes):  # the usual case, decided without a loop
        return shapes[0]
    ndim = max(map(len, shapes))
    result = [1] * ndim
    for shape in shapes:  # plain loops: this runs at every binary op (a scalar operand takes this path)
        for axis, size in enumerate(shape, ndim - len(shape)):
            if size != 1 and size != result[axis]:
                if result[axis] != 1:
                    raise ShapeError(f"{op}: shapes {' and '.join(str(s) for s in shapes)} cannot be broadcast "
                                     "together")
                result[axis] = size
    return tuple(result)


class MovementMixin:
    __slots__ = ()
    node: Any

    def reshape(self, *shape: Any) -> "Tensor":
        """New shape with the same elements; one axis may be -1."""
        dims = list(_dims(shape))
        if dims.count(-1) > 1:
            raise ShapeError(f"reshape: only one axis may be -1, got {tuple(dims)}")
        if -1 in dims:
            known = math.prod(d for d in dims if d != -1)
            if known == 0 or self.node.numel % known:
                raise ShapeError(f"reshape: cannot view shape {self.node.shape} as {tuple(dims)}")
            dims[dims.index(-1)] = self.node.numel // known
        return self._wrap(n.reshape(self.node, tuple(dims)))

    view = reshape

    def permute(self, *order: int) -> "Tensor":
        """The axes reordered: axis i of the result is axis order[i] of self (a view)."""
        ndim = len(self.node.shape)
        return self._wrap(n.permute(self.node, [normalize_axis(a, ndim, "permute") for a in _dims(order)]))

    def transpose(self, a: int = 0, b: int = 1) -> "Tensor":
        """Axes a and b swapped (a view)."""
        ndim = len(self.node.shape)
        order = list(range(ndim))
        a, b = normalize_axis(a, ndim, "transpose"), normalize_axis(b, ndim, "transpose")
        if ndim == 0:
            return self  # type: ignore[return-value]
        order[a], order[b] = order[b], order[a]
        return self.permute(order)

    @property
    def T(self) -> "Tensor":
        """All axes reversed (the matrix transpose for 2-D tensors)."""
        return self.permute(list(reversed(range(len(self.node.shape)))))

    def expand(self, *shape: Any) -> "Tensor":
        """Broadcast size-1 axes (and new leading ones) to `shape`; -1 keeps an axis."""
        dims = _dims(shape)
        current = self.node.shape
        if len(dims) < len(current):
            raise ShapeError(f"expand: cannot expand shape {current} to {dims}")
        padded = (1,) * (len(dims) - len(current)) + current
        target = tuple(p if d == -1 else d for p, d in zip(padded, dims))
        return self._wrap(n.expand(n.reshape(self.node, padded), target))

    def expand_as(self, other: "Tensor") -> "Tensor":
        """Broadcast to other's shape (a view)."""
        return self.expand(other.shape)

    def shrink(self, bounds: Sequence[Optional[tuple[int, int]]]) -> "Tensor":
        """The part within (start, end) bounds per axis (None keeps an axis whole); a view."""
        full = [(0, s) if b is None else b for b, s in zip(bounds, self.node.shape)]
        return self._wrap(n.shrink(self.node, full))

    def flip(self, axis: Union[int, Sequence[int]]) -> "Tensor":
        """Elements along `axis` (one or several) in reverse order."""
        axes = [axis] if isinstance(axis, int) else list(axis)
        ndim = len(self.node.shape)
        normalized = [normalize_axis(a, ndim, "flip") for a in axes]
        if len(set(normalized)) != len(normalized):
            raise ShapeError(f"flip: axes {tuple(axes)} name an axis more than once (shape {self.node.shape})")
        return self._wrap(n.flip(self.node, normalized))

    def squeeze(self, axis: Optional[Union[int, Sequence[int]]] = None) -> "Tensor":
        """Size-1 axes removed: all of them, or those of `axis` that have size 1."""
        shape = self.node.shape
        if not shape:
            if axis is not None:
                for a in ([axis] if isinstance(axis, int) else axis):
                    normalize_axis(a, 0, "squeeze")
            return self  # type: ignore[return-value]
        if axis is None:
            axes = {i for i, s in enumerate(shape) if s == 1}
        else:
            axes = {normalize_axis(a, len(shape), "squeeze") for a in ([axis] if isinstance(axis, int) else axis)}
            axes = {a for a in axes if shape[a] == 1}
        return self.reshape(tuple(s for i, s in enumerate(shape) if i not in axes))

    def unsqueeze(self, axis: int) -> "Tensor":
        """A new size-1 axis at position `axis`."""
        shape = list(self.node.shape)
        axis = normalize_axis(axis, len(shape) + 1, "unsqueeze")
        shape.insert(axis, 1)
        return self.reshape(tuple(shape))

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> "Tensor":
        """Axes start_dim to end_dim merged into one."""
        shape = self.node.shape
        if not shape:
            return self.reshape(1)
        start, end = normalize_axis(start_dim, len(shape), "flatten"), normalize_axis(end_dim, len(shape), "flatten")
        if start > end:
            raise ShapeError(f"flatten: start axis {start_dim} comes after end axis {end_dim} (shape {shape})")
        return self.reshape(shape[:start] + (math.prod(shape[start:end + 1]),) + shape[end + 1:])

    def unflatten(self, axis: int, sizes: Sequence[int]) -> "Tensor":
        """Axis `axis` split into `sizes`."""
        shape = self.node.shape
        axis = normalize_axis(axis, len(shape), "unflatten")
        return self.reshape(shape[:axis] + tuple(sizes) + shape[axis + 1:])

    def repeat(self, *repeats: int) -> "Tensor":
        """Tile the tensor `repeats[i]` times along axis i (PyTorch's repeat)."""
        reps = _dims(repeats)
        if len(reps) < len(self.node.shape):
            raise ShapeError(f"repeat: {len(reps)} repeats for a tensor of shape {self.node.shape}")
        base = self.reshape((1,) * (len(reps) - len(self.node.shape)) + self.node.shape)
        interleaved = [d for s in base.shape for d in (1, s)]
        tiled = [d for r, s in zip(reps, base.shape) for d in (r, s)]
        return base.reshape(interleaved).expand(tiled).reshape(tuple(r * s for r, s in zip(reps, base.shape)))

    def tile(self, dims: Any, *more: int) -> "Tensor":
        """Tile the tensor `dims[i]` times along axis i, as torch.tile: unlike repeat, fewer dims than axes
        are padded with 1s in front (they tile the last axes)."""
        reps = _dims((dims, *more))
        if any(int(r) < 0 for r in reps):
            raise ValueError(f"tile: repetitions must be non-negative, got {reps}")
        return self.repeat((1,) * (len(self.node.shape) - len(reps)) + reps)

    def rot90(self, k: int = 1, dims: Sequence[int] = (0, 1)) -> "Tensor":
        """Rotated by 90 degrees k times in the plane of `dims`, from the first axis towards the second
        (torch.rot90: negative k turns the other way); a flip and a transpose, so a view."""
        shape = self.node.shape
        if len(dims) != 2:
            raise ShapeError(f"rot90: dims must name two axes, got {tuple(dims)}")
        if len(shape) < 2:
            raise ShapeError(f"rot90: needs at least 2 dimensions, got shape {shape}")
        a, b = (normalize_axis(d, len(shape), "rot90") for d in dims)
        if a == b:
            raise ShapeError(f"rot90: dims {tuple(dims)} name one axis twice (shape {shape})")
        k %= 4
        if k == 0:
            return self  # type: ignore[return-value]
        if k == 2:
            return self.flip((a, b))
        return self.flip(b if k == 1 else a).transpose(a, b)

    def split(self, sizes: Union[int, Sequence[int]], axis: int = 0) -> list["Tensor"]:
        """Pieces of `sizes` each (an int: equal pieces, the last may be smaller) along `axis`."""
        axis = normalize_axis(axis, len(self.node.shape), "split")
        length = self.node.shape[axis]
        if isinstance(sizes, int):
            if sizes <= 0:
                raise ValueError(f"split: size must be positive, got {sizes}")
            sizes = [min(sizes, length - start) for start in range(0, length, sizes)] or [0]
        if sum(sizes) != length:
            raise ShapeError(f"split: sizes {list(sizes)} do not add up to {length} (axis {axis} of {self.node.shape})")
        pieces, start = [], 0
        for size in sizes:
            bounds = [(0, s) for s in self.node.shape]
            bounds[axis] = (start, start + size)
            pieces.append(self.shrink(bounds))
            start += size
        return pieces

    def chunk(self, chunks: int, axis: int = 0) -> list["Tensor"]:
        """`chunks` pieces along `axis`, as equal as possible (the last may be smaller)."""
        length = self.node.shape[normalize_axis(axis, len(self.node.shape), "chunk")]
        return self.split(max(1, math.ceil(length / chunks)), axis)

    def contiguous(self) -> "Tensor":
        """Views are index arithmetic in zyx, so there is nothing to copy."""
        return self  # type: ignore[return-value]
