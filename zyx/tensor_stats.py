"""any, all, the paired statistics std_mean and var_mean (torch's one-call forms), and histc."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .tensor_base import rounded_once
from .tensor_reduce import Axis

if TYPE_CHECKING:
    from .tensor import Tensor


class StatsMixin:
    """Tensor's any, all, std_mean, var_mean and histc."""

    __slots__ = ()

    def any(self: "Tensor", dim: Axis = None, keepdim: bool = False) -> "Tensor":
        """Whether any element along `dim` (all axes by default) is nonzero (bool; False on empty axes)."""
        return self._bool().sum(dim, keepdim) > 0  # a count, not a max: max has no value on an empty axis

    def all(self: "Tensor", dim: Axis = None, keepdim: bool = False) -> "Tensor":
        """Whether every element along `dim` is nonzero (bool; True on empty axes)."""
        return self._bool().logical_not().any(dim, keepdim).logical_not()

    def var_mean(self: "Tensor", dim: Axis = None, correction: int = 1,
                 keepdim: bool = False) -> tuple["Tensor", "Tensor"]:
        """(variance, mean) along `dim`, as torch.var_mean."""
        return self.var(dim, keepdim, correction), self.mean(dim, keepdim)

    def std_mean(self: "Tensor", dim: Axis = None, correction: int = 1,
                 keepdim: bool = False) -> tuple["Tensor", "Tensor"]:
        """(standard deviation, mean) along `dim`, as torch.std_mean."""
        return self.std(dim, keepdim, correction), self.mean(dim, keepdim)


    @rounded_once
    def histc(self: "Tensor", bins: int = 100, min: float = 0, max: float = 0) -> "Tensor":
        """Counts of the elements in `bins` equal bins between min and max (torch.histc), in the input's float
        dtype: elements outside the range and nan are left out, max falls in the last bin. min = max (0 by default)
        takes the data's range (computed on the device, lazily); an empty range is widened by 1 on either side."""
        if not self.dtype.is_float:
            raise TypeError(f"histc: needs a floating-point tensor, got {self.dtype}")
        if bins <= 0:
            raise ValueError(f"histc: bins must be positive, got {bins}")
        if min > max:
            raise ValueError(f"histc: max ({max}) must not be smaller than min ({min})")
        x = self.reshape(-1)
        if min == max and x.shape[0]:  # (torch takes the data's range for any min = max)
            low, high = x.min().detach(), x.max().detach()
        else:
            low, high = x._full((), min, x.dtype), x._full((), max, x.dtype)
        same = low == high
        low, high = same.where(low - 1, low), same.where(high + 1, high)
        position = ((x - low) * bins / (high - low)).floor().clamp(0, bins - 1).cast("int64")
        inside = (x >= low) & (x <= high)
        hits = inside.unsqueeze(-1) & (position.unsqueeze(-1) == self._arange(bins))
        return hits.sum(0).cast(x.dtype)
