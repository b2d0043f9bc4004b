"""Loss functions with PyTorch's names, arguments and reductions; all stay finite for large logits.

Class-index losses take logits or log-probabilities shaped (N, C), (N, C, d1, ...) or (C,) and integer
targets shaped like the input without its class axis.
"""
from __future__ import annotations

import math
from typing import Optional

from ..autocast import in_float32
from ..errors import ShapeError
from ..tensor import Tensor
from ..tensor_base import rounded_once
from ..tensor_indexing import one_hot_mask
from .distance import pairwise_distance

REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


@in_float32
def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Mean squared error (input - target) ** 2, reduced by `reduction` ('mean', 'sum' or 'none')."""
    diff = input - target
    return _reduce(diff * diff, reduction)


@in_float32
def l1_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Mean absolute error |input - target|, reduced by `reduction` ('mean', 'sum' or 'none')."""
    return _reduce((input - target).abs(), reduction)


def _piecewise_quadratic(diff: Tensor, knee: float) -> Tensor:
    """0.5 d^2 where |d| < knee, else knee (|d| - 0.5 knee): quadratic near 0, linear (slope 1 in |d| times knee)
    beyond, with matching value and slope at the knee."""
    magnitude = diff.abs()
    return (magnitude < knee).where(0.5 * diff * diff, knee * (magnitude - 0.5 * knee))


@in_float32
@rounded_once
def smooth_l1_loss(input: Tensor, target: Tensor, reduction: str = "mean", beta: float = 1.0) -> Tensor:
    """0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta, for d = input - target: L1 robust to outliers with a
    smooth minimum; beta=0 is l1_loss."""
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be at least 0, got {beta}")
    diff = input - target
    if beta == 0:
        return _reduce(diff.abs(), reduction)
    return _reduce(_piecewise_quadratic(diff, beta) * (1 / beta), reduction)


@in_float32
@rounded_once
def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0) -> Tensor:
    """0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta): smooth_l1_loss times beta=delta."""
    if delta <= 0:
        raise ValueError(f"huber_loss: delta must be positive, got {delta}")
    return _reduce(_piecewise_quadratic(input - target, delta), reduction)


@in_float32
@rounded_once
def kl_div(input: Tensor, target: Tensor, reduction: str = "mean", log_target: bool = False) -> Tensor:
    """KL(target || exp(input)) per element: target (log target - input), from log-probabilities `input`.

    `target` is probabilities (log-probabilities with log_target=True); a target of 0 adds 0, with no nan in the
    gradient. reduction 'batchmean' divides the sum by the batch size (axis 0), the true KL divergence per sample;
    'mean' divides by the element count, as PyTorch.
    """
    if log_target:
        loss = target.exp() * (target - input)
    else:
        zero = target == 0
        loss = zero.where(0.0, target * zero.where(1.0, target).log()) - target * input
    if reduction == "batchmean":
        return loss.sum() / input.shape[0] if input.ndim else loss.sum()
    return _reduce(loss, reduction)


def _classes_last(input: Tensor, target: Tensor, loss: str) -> Tensor:
    """The input with its class axis (1, or 0 when unbatched) moved last, after checking the target against it."""
    if input.ndim == 0:
        raise ShapeError(f"{loss}: input needs a class axis, got a 0-d tensor")
    if not target.dtype.is_int:
        raise TypeError(f"{loss}: class-index targets must be integers, got {target.dtype.name}")
    expected = input.shape[:1] + input.shape[2:] if input.ndim >= 2 else ()
    if target.shape != expected:
        raise ShapeError(f"{loss}: target of shape {target.shape} does not fit input {input.shape} "
                         f"(expected {expected})")
    return input.permute([0] + list(range(2, input.ndim)) + [1]) if input.ndim >= 2 else input


def _picked(values: Tensor, hits: Tensor) -> Tensor:
    """values[..., target] where `hits` is the target's one-hot mask; 0 where no class is hit."""
    return hits.where(values, 0).sum(-1)


def _nll_terms(scores: Tensor, target: Tensor, weight: Optional[Tensor], ignore_index: int,
               label_smoothing: float, loss: str, lse: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Per-element loss and per-element weight (0 where ignored); classes on the last axis of `scores`: the
    log-probabilities, or with `lse` (their log-sum-exp, keepdim) the logits. The target's log-probability is then
    its logit minus lse, so that the log-probabilities are never a tensor of their own (GPT-2 small's are 16384 x
    50 304 floats, whose kernel computed the logits' product again to pick one per row).
    A target outside [0, classes) that is not ignore_index raises IndexError when the loss is realized."""
    classes = scores.shape[-1]
    kept = target != ignore_index
    hits = one_hot_mask(kept.where(target, 0), classes, f"{loss}: target {{value}} is out of range for {classes} "
                                                        "classes")
    target_weight = _picked(weight, hits) if weight is not None else kept.float()
    target_weight = kept.where(target_weight, 0)
    picked = _picked(scores, hits)
    if lse is not None:
        picked = kept.where(picked - lse.reshape(picked.shape), 0)
    loss = -picked * target_weight
    log_probs = scores - lse if lse is not None else scores
    if label_smoothing:
        weighted = log_probs * weight if weight is not None else log_probs
        smooth = kept.where(-weighted.sum(-1), 0)
        loss = loss * (1 - label_smoothing) + smooth * (label_smoothing / classes)
    return loss, target_weight


def _reduce_weighted(loss: Tensor, target_weight: Tensor, reduction: str) -> Tensor:
    """'mean' divides by the total weight of the targets that count, as PyTorch does."""
    return loss.sum() / target_weight.sum() if reduction == "mean" else _reduce(loss, reduction)


@in_float32
@rounded_once
def nll_loss(input: Tensor, target: Tensor, weight: Optional[Tensor] = None, ignore_index: int = -100,
             reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of the target classes, given log-probabilities."""
    log_probs = _classes_last(input, target, "nll_loss")
    return _reduce_weighted(*_nll_terms(log_probs, target, weight, ignore_index, 0.0, "nll_loss"), reduction)


@in_float32
@rounded_once
def cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor] = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """log_softmax then nll_loss, with optional label smoothing (the target keeps 1 - s, every class gets s/C).

    A float target of the input's shape is read as class probabilities instead of indices.
    """
    if not 0 <= label_smoothing <= 1:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    class_axis = 1 if input.ndim >= 2 else 0
    if target.dtype.is_float:
        return _soft_cross_entropy(input.log_softmax(class_axis), target, weight, reduction, label_smoothing)
    logits = _classes_last(input, target, "cross_entropy")._float()
    if label_smoothing:
        lse = logits.logsumexp(-1, keepdim=True)  # (log_softmax's own: logits - lse)
        return _reduce_weighted(*_nll_terms(logits, target, weight, ignore_index, label_smoothing, "cross_entropy",
                                            lse), reduction)
    picked, target_weight = _nll_terms(logits, target, weight, ignore_index, 0.0, "cross_entropy")
    return _reduce_weighted(logits.logsumexp(-1) * target_weight + picked, target_weight, reduction)


def _soft_cross_entropy(log_probs: Tensor, target: Tensor, weight: Optional[Tensor], reduction: str,
                        label_smoothing: float) -> Tensor:
    if target.shape != log_probs.shape:
        raise ShapeError(f"cross_entropy: probability target of shape {target.shape} differs from input "
                         f"{log_probs.shape}")
    class_axis = 1 if log_probs.ndim >= 2 else 0
    classes = log_probs.shape[class_axis]
    if label_smoothing:
        target = target * (1 - label_smoothing) + label_smoothing / classes
    if weight is not None:
        log_probs = log_probs * weight.reshape((classes,) + (1,) * (log_probs.ndim - class_axis - 1))
    return _reduce(-(log_probs * target).sum(class_axis), reduction)


@in_float32
def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                                     reduction: str = "mean", pos_weight: Optional[Tensor] = None) -> Tensor:
    """Sigmoid and binary cross-entropy in one, through softplus so that no logit overflows.

    `pos_weight` scales the positive term (broadcast over the last axis, one weight per class).
    """
    positive_scale = 1 if pos_weight is None else (pos_weight - 1) * target + 1
    loss = (1 - target) * input + (-input).softplus() * positive_scale
    return _reduce(loss * weight if weight is not None else loss, reduction)


@in_float32
def binary_cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                         reduction: str = "mean") -> Tensor:
    """Binary cross-entropy of probabilities; each log is clamped at -100, as PyTorch, so 0 and 1 stay finite."""
    loss = -(target * input.log().clamp(min=-100) + (1 - target) * (1 - input).log().clamp(min=-100))
    return _reduce(loss * weight if weight is not None else loss, reduction)


def _same_ndim(loss: str, *tensors: Tensor) -> None:
    if len({t.ndim for t in tensors}) != 1:
        raise ShapeError(f"{loss}: inputs need the same number of dimensions, got shapes "
                         f"{', '.join(str(t.shape) for t in tensors)}")


@in_float32
@rounded_once
def margin_ranking_loss(input1: Tensor, input2: Tensor, target: Tensor, margin: float = 0.0,
                        reduction: str = "mean") -> Tensor:
    """max(0, margin - target (input1 - input2)): target 1 asks input1 to rank above input2 by `margin`, -1 below."""
    _same_ndim("margin_ranking_loss", input1, input2, target)
    return _reduce((margin - target * (input1 - input2)).clamp(min=0), reduction)


@in_float32
@rounded_once
def cosine_embedding_loss(input1: Tensor, input2: Tensor, target: Tensor, margin: float = 0.0,
                          reduction: str = "mean") -> Tensor:
    """1 - cos(input1, input2) where target is 1, max(0, cos - margin) where it is -1 (other targets add nothing),
    the cosine over the last axis of (N, D) or (D,) inputs with each squared norm given 1e-12, as PyTorch's (a zero
    vector then has cosine 0, not nan)."""
    if input1.shape != input2.shape or input1.ndim not in (1, 2) or target.shape != input1.shape[:-1]:
        raise ShapeError(f"cosine_embedding_loss: needs inputs of one shape (N, D) or (D,) and a target of shape "
                         f"(N,) or (), got {input1.shape}, {input2.shape} and {target.shape}")
    squares = ((input1 * input1).sum(-1) + 1e-12) * ((input2 * input2).sum(-1) + 1e-12)
    cosine = (input1 * input2).sum(-1) / squares.sqrt()
    loss = (target == 1).where(1 - cosine, 0) + (target == -1).where((cosine - margin).clamp(min=0), 0)
    return _reduce(loss, reduction)


@in_float32
@rounded_once
def hinge_embedding_loss(input: Tensor, target: Tensor, margin: float = 1.0, reduction: str = "mean") -> Tensor:
    """`input` (a distance) where target is 1, max(0, margin - input) where it is -1 (other targets add both)."""
    loss = (target != -1).where(input, 0) + (target != 1).where((margin - input).clamp(min=0), 0)
    return _reduce(loss, reduction)


@in_float32
@rounded_once
def soft_margin_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """log(1 + exp(-target input)) for targets of ±1: two-class logistic loss, through softplus (no overflow)."""
    return _reduce((-target * input).softplus(), reduction)


@in_float32
@rounded_once
def multilabel_soft_margin_loss(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                                reduction: str = "mean") -> Tensor:
    """Binary cross-entropy of each logit against its 0/1 target, averaged over the classes (last axis); the
    result has one value per sample before `reduction`."""
    if input.ndim == 0:
        raise ShapeError("multilabel_soft_margin_loss: input needs a class axis, got a 0-d tensor")
    loss = -(target * input.logsigmoid() + (1 - target) * (-input).logsigmoid())
    if weight is not None:
        loss = loss * weight
    return _reduce(loss.sum(-1) / input.shape[-1], reduction)


@in_float32
@rounded_once
def triplet_margin_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 1.0, p: float = 2,
                        eps: float = 1e-6, swap: bool = False, reduction: str = "mean") -> Tensor:
    """max(0, margin + d(anchor, positive) - d(anchor, negative)), d the pairwise p-norm distance on the last axis;
    `swap` uses d(positive, negative) instead where it is smaller."""
    if margin <= 0:
        raise ValueError(f"triplet_margin_loss: margin must be greater than 0, got {margin}")
    _same_ndim("triplet_margin_loss", anchor, positive, negative)
    if anchor.ndim not in (1, 2):
        raise ShapeError(f"triplet_margin_loss: needs (N, D) or (D,) inputs, got {anchor.shape}")
    positive_distance = pairwise_distance(anchor, positive, p, eps)
    negative_distance = pairwise_distance(anchor, negative, p, eps)
    if swap:
        negative_distance = negative_distance.minimum(pairwise_distance(positive, negative, p, eps))
    return _reduce((margin + positive_distance - negative_distance).clamp(min=0), reduction)


@in_float32
@rounded_once
def poisson_nll_loss(input: Tensor, target: Tensor, log_input: bool = True, full: bool = False, eps: float = 1e-8,
                     reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of `target` counts under a Poisson of rate exp(input) (log_input) or input (then
    log(input + eps)); `full` adds Stirling's term for log(target!) where target > 1."""
    loss = input.exp() - target * input if log_input else input - target * (input + eps).log()
    if full:
        above = target > 1
        counts = above.where(target, 1)  # (no log of 0 reaches the gradient)
        stirling = counts * counts.log() - counts + 0.5 * (2 * math.pi * counts).log()
        loss = loss + above.where(stirling, 0)
    return _reduce(loss, reduction)


@in_float32
@rounded_once
def gaussian_nll_loss(input: Tensor, target: Tensor, var: Tensor, full: bool = False, eps: float = 1e-6,
                      reduction: str = "mean") -> Tensor:
    """0.5 (log var + (input - target)^2 / var) per element, the negative log-likelihood of a Gaussian of mean
    `input`; `var` is input's shape, that shape less its last axis, or it with one axis of size 1. As PyTorch, var
    is clamped at eps with a gradient that ignores the clamp, and a negative var is clamped too rather than raising
    (no check that would read the device)."""
    if var.shape != input.shape:
        if var.shape == input.shape[:-1]:
            var = var.unsqueeze(-1)
        elif not (var.ndim == input.ndim and sum(v for i, v in zip(input.shape, var.shape) if i != v) == 1):
            raise ShapeError(f"gaussian_nll_loss: var of shape {var.shape} does not fit input {input.shape}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    var = var + (var.maximum(eps) - var).detach()
    loss = 0.5 * (var.log() + (input - target) ** 2 / var)
    if full:
        loss = loss + 0.5 * math.log(2 * math.pi)
    return _reduce(loss, reduction)
