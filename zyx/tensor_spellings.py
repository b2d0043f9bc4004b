"""PyTorch's names for what zyx already computes: the operators as methods (`add`, `sub`, `gt`, ...), `t()`, `mm`,
`dim()`, `select`, `unbind`, `movedim`, `type_as`, `view_as`, `new_zeros`... A PyTorch user writes them without
thinking; each is a line over zyx's own, with PyTorch's argument rules and its errors where they differ."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence, Union

from .devices import CPU
from .errors import ShapeError
from .tensor_movement import normalize_axis

if TYPE_CHECKING:
    from .tensor import Operand, Tensor


class SpellingsMixin:
    """PyTorch's method names over zyx's operators and views (see the module)."""

    def add(self: "Tensor", other: "Operand", alpha: Any = 1) -> "Tensor":
        """self + alpha * other."""
        return self + (other if alpha == 1 else other * alpha)

    def sub(self: "Tensor", other: "Operand", alpha: Any = 1) -> "Tensor":
        """self - alpha * other."""
        return self - (other if alpha == 1 else other * alpha)

    def mul(self: "Tensor", other: "Operand") -> "Tensor":
        """self * other."""
        return self * other

    def neg(self: "Tensor") -> "Tensor":
        """-self."""
        return -self

    def gt(self: "Tensor", other: "Operand") -> "Tensor":
        """self > other (bool)."""
        return self > other

    def ge(self: "Tensor", other: "Operand") -> "Tensor":
        """self >= other (bool)."""
        return self >= other

    def lt(self: "Tensor", other: "Operand") -> "Tensor":
        """self < other (bool)."""
        return self < other

    def le(self: "Tensor", other: "Operand") -> "Tensor":
        """self <= other (bool)."""
        return self <= other

    def ne(self: "Tensor", other: "Operand") -> "Tensor":
        """self != other (bool)."""
        return self != other

    subtract, multiply, negative = sub, mul, neg
    greater, greater_equal, less, less_equal, not_equal = gt, ge, lt, le, ne

    def frac(self: "Tensor") -> "Tensor":
        """The fractional part, self - trunc(self), with self's sign."""
        return self - self.trunc()

    def dim(self: "Tensor") -> int:
        """The number of axes (ndim)."""
        return self.ndim

    ndimension = dim

    def mm(self: "Tensor", other: "Tensor") -> "Tensor":
        """The product of two 2-D tensors (PyTorch's mm: no batches, no broadcasting)."""
        if self.ndim != 2 or other.ndim != 2:
            raise ShapeError(f"mm: expects two 2-D tensors, got shapes {self.shape} and {other.shape}")
        return self @ other

    def t(self: "Tensor") -> "Tensor":
        """A 2-D tensor transposed; 0-D and 1-D tensors as they are (PyTorch's t)."""
        if self.ndim > 2:
            raise ShapeError(f"t: expects a tensor of at most 2 axes, got shape {self.shape}; "
                             f"transpose(a, b) swaps two axes of more")
        return self.transpose(0, 1) if self.ndim == 2 else self

    def select(self: "Tensor", axis: int, index: int) -> "Tensor":
        """The slice at `index` along `axis`, that axis removed (a view; negative indices count from the end)."""
        axis = normalize_axis(axis, self.ndim, "select")
        return self[(slice(None),) * axis + (index,)]

    def unbind(self: "Tensor", axis: int = 0) -> tuple["Tensor", ...]:
        """The slices along `axis`, that axis removed from each (views)."""
        axis = normalize_axis(axis, self.ndim, "unbind")
        return tuple(self.select(axis, i) for i in range(self.shape[axis]))

    def movedim(self: "Tensor", source: Union[int, Sequence[int]], destination: Union[int, Sequence[int]]) -> "Tensor":
        """Axes `source` moved to positions `destination`, the others keeping their order (a view)."""
        ndim = self.ndim
        sources = [source] if isinstance(source, int) else list(source)
        destinations = [destination] if isinstance(destination, int) else list(destination)
        if len(sources) != len(destinations):
            raise ValueError(f"movedim: {len(sources)} source axes but {len(destinations)} destinations")
        sources = [normalize_axis(a, ndim, "movedim") for a in sources]
        destinations = [normalize_axis(a, ndim, "movedim") for a in destinations]
        if len(set(sources)) != len(sources) or len(set(destinations)) != len(destinations):
            raise ValueError(f"movedim: repeated axis in {sources} or {destinations}")
        order = [a for a in range(ndim) if a not in sources]
        for to, axis in sorted(zip(destinations, sources)):
            order.insert(to, axis)
        return self.permute(order)

    moveaxis = movedim

    def swapaxes(self: "Tensor", a: int, b: int) -> "Tensor":
        """Axes a and b swapped (transpose's other name)."""
        return self.transpose(a, b)

    swapdims = swapaxes

    def type_as(self: "Tensor", other: "Tensor") -> "Tensor":
        """self cast to other's dtype."""
        return self.cast(other.dtype)

    def view_as(self: "Tensor", other: "Tensor") -> "Tensor":
        """self reshaped to other's shape."""
        return self.reshape(other.shape)

    def new_full(self: "Tensor", size: Sequence[int], fill_value: Any, *, dtype: Any = None,
                 device: Any = None) -> "Tensor":
        """`fill_value` in shape `size`, in self's dtype and on self's device unless given (lazy)."""
        value = self._full(tuple(size), fill_value, dtype or self.dtype)
        return value if device is None else value.to(device)

    def new_zeros(self: "Tensor", *size: Any, dtype: Any = None, device: Any = None) -> "Tensor":
        """Zeros of shape `size` (a sequence or the sizes), in self's dtype and on self's device unless given."""
        return self.new_full(_sizes(size), 0, dtype=dtype, device=device)

    def new_ones(self: "Tensor", *size: Any, dtype: Any = None, device: Any = None) -> "Tensor":
        """Ones of shape `size` (a sequence or the sizes), in self's dtype and on self's device unless given."""
        return self.new_full(_sizes(size), 1, dtype=dtype, device=device)

    def cpu(self: "Tensor") -> "Tensor":
        """self on zyx.CPU(), the numpy reference device (itself if it is there)."""
        return self if self.device.kind == "cpu" else self.to(CPU())


def _sizes(size: tuple) -> tuple[int, ...]:
    """new_zeros(2, 3) and new_zeros((2, 3)) alike."""
    return tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else tuple(size)

