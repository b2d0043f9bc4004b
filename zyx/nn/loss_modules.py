"""The losses as modules (PyTorch's `nn.CrossEntropyLoss()` and kin): options set once, `criterion(input, target)`.

Each calls its function in losses.py; a tensor option (a class weight) is a buffer, so it is saved and moved
with the module but never trained.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from ..tensor import Tensor
from .losses import (binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy, huber_loss, kl_div,
                     l1_loss, mse_loss, nll_loss, smooth_l1_loss)
from .module import Module


class _Loss(Module):
    """Calls `function(input, target, **options)`; subclasses name the function and their options."""

    function: Callable[..., Tensor]

    def __init__(self, **options: Any):
        self._options = tuple(options)
        for name, value in options.items():
            if isinstance(value, Tensor):
                self.register_buffer(name, value)
            else:
                setattr(self, name, value)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return type(self).function(input, target, **{name: getattr(self, name) for name in self._options})


class MSELoss(_Loss):
    """Mean squared error: `mse_loss`."""

    function = staticmethod(mse_loss)

    def __init__(self, reduction: str = "mean"):
        super().__init__(reduction=reduction)


class L1Loss(_Loss):
    """Mean absolute error: `l1_loss`."""

    function = staticmethod(l1_loss)

    def __init__(self, reduction: str = "mean"):
        super().__init__(reduction=reduction)


class CrossEntropyLoss(_Loss):
    """log_softmax then negative log-likelihood, from logits: `cross_entropy`."""

    function = staticmethod(cross_entropy)

    def __init__(self, weight: Optional[Tensor] = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0):
        super().__init__(weight=weight, ignore_index=ignore_index, reduction=reduction,
                         label_smoothing=label_smoothing)


class NLLLoss(_Loss):
    """Negative log-likelihood of the target classes, from log-probabilities: `nll_loss`."""

    function = staticmethod(nll_loss)

    def __init__(self, weight: Optional[Tensor] = None, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(weight=weight, ignore_index=ignore_index, reduction=reduction)


class BCELoss(_Loss):
    """Binary cross-entropy of probabilities: `binary_cross_entropy`."""

    function = staticmethod(binary_cross_entropy)

    def __init__(self, weight: Optional[Tensor] = None, reduction: str = "mean"):
        super().__init__(weight=weight, reduction=reduction)


class BCEWithLogitsLoss(_Loss):
    """Sigmoid and binary cross-entropy in one, from logits: `binary_cross_entropy_with_logits`."""

    function = staticmethod(binary_cross_entropy_with_logits)

    def __init__(self, weight: Optional[Tensor] = None, reduction: str = "mean", pos_weight: Optional[Tensor] = None):
        super().__init__(weight=weight, reduction=reduction, pos_weight=pos_weight)


class SmoothL1Loss(_Loss):
    """Quadratic below beta, L1 beyond: `smooth_l1_loss`."""

    function = staticmethod(smooth_l1_loss)

    def __init__(self, reduction: str = "mean", beta: float = 1.0):
        super().__init__(reduction=reduction, beta=beta)


class HuberLoss(_Loss):
    """Quadratic below delta, delta times L1 beyond: `huber_loss`."""

    function = staticmethod(huber_loss)

    def __init__(self, reduction: str = "mean", delta: float = 1.0):
        super().__init__(reduction=reduction, delta=delta)


class KLDivLoss(_Loss):
    """Kullback-Leibler divergence of log-probabilities from a target distribution: `kl_div`."""

    function = staticmethod(kl_div)

    def __init__(self, reduction: str = "mean", log_target: bool = False):
        super().__init__(reduction=reduction, log_target=log_target)
