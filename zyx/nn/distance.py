"""Similarity and distance of vectors along an axis (PyTorch's F.cosine_similarity and F.pairwise_distance) and
their modules; the two inputs broadcast."""
from __future__ import annotations

import math

from ..errors import ShapeError
from ..tensor import Tensor
from ..tensor_base import rounded_once
from ..tensor_movement import broadcast_shape
from .module import Module


def _broadcast(x1: Tensor, x2: Tensor, op: str) -> tuple[Tensor, Tensor]:
    shape = broadcast_shape(op, x1.shape, x2.shape)
    return x1._float().expand(shape), x2._float().expand(shape)


@rounded_once
def cosine_similarity(x1: Tensor, x2: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """x1 . x2 / (max(||x1||, eps) max(||x2||, eps)) along `dim`: each norm is clamped on its own, so a zero
    vector gives 0. As PyTorch's, the gradient sees the norms unclamped (the clamp changes only their values)."""
    x1, x2 = _broadcast(x1, x2, "cosine_similarity")
    if x1.ndim == 0:
        raise ShapeError("cosine_similarity: needs at least one dimension, got 0-d inputs")

    def unit(x: Tensor) -> Tensor:
        norm = x.norm(2, dim, keepdim=True)
        return x / (norm + (norm.maximum(eps) - norm).detach())
    return (unit(x1) * unit(x2)).sum(dim)


@rounded_once
def pairwise_distance(x1: Tensor, x2: Tensor, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False) -> Tensor:
    """||x1 - x2 + eps||_p along the last axis: the p-norm distance of each pair of rows (eps keeps the 2-norm's
    gradient finite where they are equal)."""
    shape = broadcast_shape("pairwise_distance", x1.shape, x2.shape)
    if p < 0 and p != -math.inf:
        raise ValueError(f"pairwise_distance: p must be at least 0, got {p}")
    return (x1._float() - x2._float() + eps).norm(p, -1 if shape else None, keepdim=keepdim)


class CosineSimilarity(Module):
    """Cosine of the angle between x1 and x2 along `dim`: `cosine_similarity`."""

    def __init__(self, dim: int = 1, eps: float = 1e-8):
        self.dim, self.eps = dim, eps

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return cosine_similarity(x1, x2, self.dim, self.eps)


class PairwiseDistance(Module):
    """p-norm distance between x1 and x2 along the last axis: `pairwise_distance`."""

    def __init__(self, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False):
        self.norm, self.eps, self.keepdim = p, eps, keepdim

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return pairwise_distance(x1, x2, self.norm, self.eps, self.keepdim)
