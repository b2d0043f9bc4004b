"""The losses as modules (PyTorch's `nn.CrossEntropyLoss()` and kin): options set once, `criterion(input, target)`.

Each calls its function in losses.py; a tensor option (a class weight) is a buffer, so it is saved and moved
with the module but never trained.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from ..tensor import Tensor
from .losses import (binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy, cosine_embedding_loss,
                     gaussian_nll_loss, hinge_embedding_loss, huber_loss, kl_div, l1_loss, margin_ranking_loss,
                     mse_loss, multilabel_soft_margin_loss, nll_loss, poisson_nll_loss, smooth_l1_loss,
                     soft_margin_loss, triplet_margin_loss)
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


class _TripleLoss(_Loss):
    """Calls `function(a, b, c, **options)`: the losses of three tensors."""

    def forward(self, a: Tensor, b: Tensor, c: Tensor) -> Tensor:  # type: ignore[override]
        return type(self).function(a, b, c, **{name: getattr(self, name) for name in self._options})


class MarginRankingLoss(_TripleLoss):
    """Hinge on the ranking of two inputs by a ±1 target: `margin_ranking_loss`."""

    function = staticmethod(margin_ranking_loss)

    def __init__(self, margin: float = 0.0, reduction: str = "mean"):
        super().__init__(margin=margin, reduction=reduction)


class CosineEmbeddingLoss(_TripleLoss):
    """Cosine of pairs pushed towards 1 for similar ones, under `margin` for dissimilar: `cosine_embedding_loss`."""

    function = staticmethod(cosine_embedding_loss)

    def __init__(self, margin: float = 0.0, reduction: str = "mean"):
        super().__init__(margin=margin, reduction=reduction)


class HingeEmbeddingLoss(_Loss):
    """The distance itself for similar pairs, a hinge at `margin` for dissimilar ones: `hinge_embedding_loss`."""

    function = staticmethod(hinge_embedding_loss)

    def __init__(self, margin: float = 1.0, reduction: str = "mean"):
        super().__init__(margin=margin, reduction=reduction)


class SoftMarginLoss(_Loss):
    """Two-class logistic loss for ±1 targets: `soft_margin_loss`."""

    function = staticmethod(soft_margin_loss)

    def __init__(self, reduction: str = "mean"):
        super().__init__(reduction=reduction)


class MultiLabelSoftMarginLoss(_Loss):
    """Per-class binary cross-entropy from logits, averaged over classes: `multilabel_soft_margin_loss`."""

    function = staticmethod(multilabel_soft_margin_loss)

    def __init__(self, weight: Optional[Tensor] = None, reduction: str = "mean"):
        super().__init__(weight=weight, reduction=reduction)


class TripletMarginLoss(_TripleLoss):
    """Anchor nearer the positive than the negative by `margin`: `triplet_margin_loss`."""

    function = staticmethod(triplet_margin_loss)

    def __init__(self, margin: float = 1.0, p: float = 2.0, eps: float = 1e-6, swap: bool = False,
                 reduction: str = "mean"):
        super().__init__(margin=margin, p=p, eps=eps, swap=swap, reduction=reduction)


class PoissonNLLLoss(_Loss):
    """Negative log-likelihood of counts under a Poisson: `poisson_nll_loss`."""

    function = staticmethod(poisson_nll_loss)

    def __init__(self, log_input: bool = True, full: bool = False, eps: float = 1e-8, reduction: str = "mean"):
        super().__init__(log_input=log_input, full=full, eps=eps, reduction=reduction)


class GaussianNLLLoss(_TripleLoss):
    """Negative log-likelihood of a Gaussian of predicted mean and variance: `gaussian_nll_loss`."""

    function = staticmethod(gaussian_nll_loss)

    def __init__(self, full: bool = False, eps: float = 1e-6, reduction: str = "mean"):
        super().__init__(full=full, eps=eps, reduction=reduction)
