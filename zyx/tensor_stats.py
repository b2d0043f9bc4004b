"""any, all, and the paired statistics std_mean and var_mean (torch's one-call forms)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .tensor_reduce import Axis

if TYPE_CHECKING:
    from .tensor import Tensor


class StatsMixin:
    """Tensor's any, all, std_mean and var_mean."""

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

