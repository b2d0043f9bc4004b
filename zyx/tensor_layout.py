"""Ops that place or pick elements by position: triangles and diagonals, roll, repeat_interleave, unfold,
narrow, index_select, diff and the non-constant pad modes. Views where the positions are known from shapes alone;
an index built on the host (and selected with a fused one-hot) where they come from data."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from .errors import ShapeError
from .tensor_combine import cat
from .tensor_conv import windows
from .tensor_movement import normalize_axis
from .tensor_setitem import setitem
from .trace import node as n

if TYPE_CHECKING:
    from .tensor import Tensor

PAD_MODES = ("constant", "reflect", "replicate", "circular")


def _line(x: "Tensor", axis: int, start: int, stop: int, step: int = 1) -> "Tensor":
    """x[start:stop:step] along `axis` (a view; a negative step walks backwards)."""
    return x[(slice(None),) * axis + (slice(start, stop, step),)]


def _pad_axis(x: "Tensor", axis: int, before: int, after: int, mode: str) -> "Tensor":
    """Pad one axis in a non-constant mode by joining views of x (reflect, replicate or circular)."""
    length = x.shape[axis]
    limit = length - 1 if mode == "reflect" else length
    if mode != "replicate" and (before > limit or after > limit):
        raise ValueError(f"pad: {mode} padding ({before}, {after}) of axis {axis} needs at most {limit} on each "
                         f"side for size {length} (shape {x.shape})")
    if length == 0:
        raise ValueError(f"pad: {mode} padding of axis {axis} needs a non-empty axis (shape {x.shape})")
    if mode == "reflect":
        head, tail = _line(x, axis, before, 0, -1), _line(x, axis, length - 2, length - 2 - after, -1)
    elif mode == "replicate":
        edge = list(x.shape)
        head = _line(x, axis, 0, 1).expand(edge[:axis] + [before] + edge[axis + 1:])
        tail = _line(x, axis, length - 1, length).expand(edge[:axis] + [after] + edge[axis + 1:])
    else:
        head, tail = _line(x, axis, length - before, length), _line(x, axis, 0, after)
    return cat([p for p in (head, x, tail) if p.shape[axis]], axis)


def pad_with_mode(x: "Tensor", pairs: Sequence[tuple[int, int]], value: Any, mode: str) -> "Tensor":
    """Pad by ((before, after), ...) per axis; negative amounts crop first (as PyTorch), then `mode` fills."""
    if mode not in PAD_MODES:
        raise ValueError(f"pad: mode must be one of {PAD_MODES}, got {mode!r}")
    if mode != "constant" and value:
        raise ValueError(f"pad: a fill value only applies to mode 'constant', not {mode!r}")
    crops = [(max(-b, 0), s - max(-a, 0)) for (b, a), s in zip(pairs, x.shape)]
    if any(start > stop for start, stop in crops):
        raise ShapeError(f"pad: negative padding {list(pairs)} removes more than shape {x.shape} holds")
    if any(b < 0 or a < 0 for b, a in pairs):
        x = x.shrink(crops)
    grow = [(max(b, 0), max(a, 0)) for b, a in pairs]
    if mode == "constant":
        return x.pad(grow, value) if any(b or a for b, a in grow) else x
    for axis, (before, after) in enumerate(grow):
        if before or after:
            x = _pad_axis(x, axis, before, after, mode)
    return x


class LayoutMixin:
    """Tensor's pad, triangle, diagonal, roll, repeat_interleave, unfold, narrow, index_select, diff and
    __setitem__."""

    __slots__ = ()

    def pad(self: "Tensor", padding: Sequence[Sequence[int]], value: float = 0, mode: str = "constant") -> "Tensor":
        """((before, after), ...) per axis from the first; missing trailing axes are not padded. A negative
        amount crops; `mode` is 'constant' (fill with `value`), 'reflect', 'replicate' or 'circular' (as
        PyTorch's F.pad, which lists axes from the last instead)."""
        pairs = [tuple(p) for p in padding]
        if len(pairs) > len(self.node.shape):
            raise ShapeError(f"pad: {len(pairs)} pairs for a tensor of shape {self.node.shape}")
        pairs += [(0, 0)] * (len(self.node.shape) - len(pairs))
        if mode != "constant" or any(b < 0 or a < 0 for b, a in pairs):
            return pad_with_mode(self, pairs, value, mode)
        return self._wrap(n.pad(self.node, pairs, value))

    # ---- triangles and diagonals ---------------------------------------------------------------------------
    def _triangle(self: "Tensor", diagonal: int, lower: bool, op: str) -> "Tensor":
        if self.ndim < 2:
            raise ShapeError(f"{op} needs at least 2 dimensions, got shape {self.shape}")
        rows, cols = self.shape[-2:]
        offset = self._arange(cols) - self._arange(rows).unsqueeze(-1)
        keep = offset <= diagonal if lower else offset >= diagonal
        return keep.where(self, self._full(self.shape, 0, self.dtype))

    def tril(self: "Tensor", diagonal: int = 0) -> "Tensor":
        """The lower triangle of the last two axes (column - row <= diagonal); the rest zero."""
        return self._triangle(diagonal, True, "tril")

    def triu(self: "Tensor", diagonal: int = 0) -> "Tensor":
        """The upper triangle of the last two axes (column - row >= diagonal); the rest zero."""
        return self._triangle(diagonal, False, "triu")

    def diagonal(self: "Tensor", offset: int = 0, dim1: int = 0, dim2: int = 1) -> "Tensor":
        """The diagonal of axes dim1 and dim2 (above it for offset > 0) as a new last axis, a view (as
        torch.diagonal): every (columns + 1)-th element of the flattened pair of axes."""
        first, second = normalize_axis(dim1, self.ndim, "diagonal"), normalize_axis(dim2, self.ndim, "diagonal")
        if first == second:
            raise ShapeError(f"diagonal: dim1 and dim2 name the same axis {dim1} (shape {self.shape})")
        rest = [a for a in range(self.ndim) if a not in (first, second)]
        square = self.permute(rest + [first, second])
        rows, cols = square.shape[-2:]
        square = _line(square, square.ndim - 1, offset, cols) if offset >= 0 else _line(square, square.ndim - 2,
                                                                                        -offset, rows)
        rows, cols = square.shape[-2:]
        count = max(min(rows, cols), 0)
        flat = square.reshape(square.shape[:-2] + (rows * cols,))
        return _line(flat, flat.ndim - 1, 0, (count - 1) * (cols + 1) + 1 if count else 0, cols + 1)

    def diag(self: "Tensor", diagonal: int = 0) -> "Tensor":
        """1-D: a square matrix with the vector on its `diagonal`-th diagonal; 2-D: that diagonal (torch.diag)."""
        if self.ndim == 2:
            return self.diagonal(diagonal)
        if self.ndim != 1:
            raise ShapeError(f"diag needs a 1-D or 2-D tensor, got shape {self.shape}")
        length = self.shape[0]
        spread = self.unsqueeze(-1).pad(((0, 0), (0, length))).reshape(-1)   # v_i at i * (n + 1)
        square = spread.shrink(((0, length * length),)).reshape(length, length)
        shift = abs(diagonal)
        return square.pad(((0, shift), (shift, 0)) if diagonal >= 0 else ((shift, 0), (0, shift)))

    # ---- writing by position -------------------------------------------------------------------------------
    def __setitem__(self: "Tensor", index: Any, value: Any) -> None:
        """self[index] = value, functional underneath: self then points at a new value (see tensor_setitem)."""
        setitem(self, index, value)

    # ---- selecting and repeating ---------------------------------------------------------------------------
    def narrow(self: "Tensor", dim: int, start: int, length: int) -> "Tensor":
        """Elements start .. start + length - 1 along `dim` (a view)."""
        axis = normalize_axis(dim, self.ndim, "narrow")
        size = self.shape[axis]
        start = start + size if start < 0 else start
        if not (0 <= start <= size and 0 <= length <= size - start):
            raise IndexError(f"narrow: start {start} and length {length} do not fit axis {axis} of size {size}")
        return _line(self, axis, start, start + length)

    def index_select(self: "Tensor", dim: int, index: Any) -> "Tensor":
        """The elements at `index` (1-D integer tensor or list) along `dim`, as torch.index_select."""
        axis = normalize_axis(dim, self.ndim, "index_select")
        if getattr(index, "ndim", 1) != 1:
            raise ShapeError(f"index_select: index must be 1-D, got shape {index.shape}")
        return self[(slice(None),) * axis + (index,)]

    def roll(self: "Tensor", shifts: Union[int, Sequence[int]], dims: Optional[Union[int, Sequence[int]]] = None
             ) -> "Tensor":
        """Elements shifted by `shifts` along `dims`, wrapping around (flattened first when dims is None): two
        copies side by side (an expand, so a view) and a window over them."""
        if dims is None:
            if not isinstance(shifts, int):
                raise ValueError(f"roll: without dims, shifts must be one int, got {shifts!r}")
            return self.reshape(-1).roll(shifts, 0).reshape(self.shape)
        shift_list = [shifts] if isinstance(shifts, int) else list(shifts)
        axis_list = [dims] if isinstance(dims, int) else list(dims)
        if len(shift_list) != len(axis_list):
            raise ValueError(f"roll: {len(shift_list)} shifts for {len(axis_list)} dims")
        x = self
        for shift, dim in zip(shift_list, axis_list):
            axis = normalize_axis(dim, x.ndim, "roll")
            length = x.shape[axis]
            if length == 0 or shift % length == 0:
                continue
            twice = x.unsqueeze(axis).expand(x.shape[:axis] + (2,) + x.shape[axis:])
            twice = twice.reshape(x.shape[:axis] + (2 * length,) + x.shape[axis + 1:])
            start = length - shift % length
            x = _line(twice, axis, start, start + length)
        return x

    def repeat_interleave(self: "Tensor", repeats: Any, dim: Optional[int] = None) -> "Tensor":
        """Each element repeated `repeats` times along `dim` (flattened first when dim is None). An int is a view;
        per-element counts (a list or tensor) set the output's size, so a tensor of them is realized here."""
        x = self.reshape(-1) if dim is None else self
        axis = normalize_axis(0 if dim is None else dim, x.ndim, "repeat_interleave")
        length = x.shape[axis]
        if not isinstance(repeats, (list, tuple, np.ndarray)) and getattr(repeats, "ndim", 0) == 0:
            count = int(repeats)
            if count < 0:
                raise ValueError(f"repeat_interleave: repeats must be non-negative, got {count}")
            spread = x.unsqueeze(axis + 1).expand(x.shape[:axis + 1] + (count,) + x.shape[axis + 1:])
            return spread.reshape(x.shape[:axis] + (length * count,) + x.shape[axis + 1:])
        counts = np.asarray(repeats.numpy() if hasattr(repeats, "numpy") else repeats)
        if counts.ndim != 1 or counts.shape[0] not in (1, length) or (counts.size and counts.min() < 0):
            raise ValueError(f"repeat_interleave: repeats must be non-negative, one per element of axis {axis} "
                             f"(size {length}) or a single one, got {counts.tolist()}")
        return x.index_select(axis, np.repeat(np.arange(length), np.broadcast_to(counts, (length,))).tolist())

    def diff(self: "Tensor", n: int = 1, axis: int = -1, prepend: Optional["Tensor"] = None,
             append: Optional["Tensor"] = None) -> "Tensor":
        """The n-th forward difference along `axis` (out[i] = x[i + 1] - x[i], n times), as torch.diff: `prepend`
        and `append` are joined to the ends first; bool tensors differ by logical_xor. Each round is one shorter
        (empty once nothing is left)."""
        if self.ndim == 0:
            raise ShapeError("diff needs at least one dimension, got a 0-d tensor")
        if n < 0:
            raise ValueError(f"diff: order n must be non-negative, got {n}")
        axis = normalize_axis(axis, self.ndim, "diff")
        pieces = [self._operand(p, "diff") for p in (prepend, self, append) if p is not None]
        for piece in pieces:
            if piece.ndim != self.ndim or any(a != b for k, (a, b) in enumerate(zip(piece.shape, self.shape))
                                               if k != axis):
                raise ShapeError(f"diff: prepend/append of shape {piece.shape} must match input's shape "
                                 f"{self.shape} outside axis {axis}")
        x = cat(pieces, axis) if len(pieces) > 1 else self
        for _ in range(n):
            length = x.shape[axis]
            if length == 0:
                break
            later, earlier = _line(x, axis, 1, length), _line(x, axis, 0, length - 1)
            x = later.logical_xor(earlier) if x.dtype.is_bool else later - earlier
        return x

    def unfold(self: "Tensor", dimension: int, size: int, step: int) -> "Tensor":
        """Every window of `size` elements, `step` apart, along `dimension`: that axis becomes the window count
        and a new last axis holds each window (views, as torch.Tensor.unfold)."""
        axis = normalize_axis(dimension, self.ndim, "unfold")
        if size < 0 or step < 1 or size > max(self.shape[axis] if self.ndim else 1, 0):
            raise ValueError(f"unfold: size {size} and step {step} do not fit axis {axis} of shape {self.shape}")
        moved = self.reshape(1) if self.ndim == 0 else self.transpose(axis, -1)
        unfolded = windows(moved, (size,), (step,), (1,))            # (..., count, size)
        if self.ndim == 0:
            return unfolded.reshape(size)
        return unfolded.transpose(axis, -2)
