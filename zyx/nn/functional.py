"""zyx.nn.functional: the functional form of every layer, activation and loss in zyx.nn, with PyTorch's names
and arguments (`import zyx.nn.functional as F`). Each is the same code its module runs.

Not here: MultiheadAttention and TransformerBlock (no functional form in zyx; `scaled_dot_product_attention` is
their core), and the recurrent cells (PyTorch has none either).
"""
from __future__ import annotations

from typing import Sequence

from ..interpolate import interpolate
from ..tensor import Tensor
from ..tensor_conv import fold, unfold
from .attention import scaled_dot_product_attention
from .distance import cosine_similarity, pairwise_distance
from .layers import embedding
from .losses import (binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy, cosine_embedding_loss,
                     gaussian_nll_loss, hinge_embedding_loss, huber_loss, kl_div, l1_loss, margin_ranking_loss,
                     mse_loss, multilabel_soft_margin_loss, nll_loss, poisson_nll_loss, smooth_l1_loss,
                     soft_margin_loss, triplet_margin_loss)
from .norm import batch_norm, group_norm, layer_norm, rms_norm

# the Tensor methods themselves: F.relu(x) is x.relu(), and takes the same arguments as PyTorch's F.relu
TENSOR_METHODS = (
    "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "pixel_shuffle", "pixel_unshuffle", "dropout", "dropout1d",
    "dropout2d", "dropout3d", "one_hot",
    "relu", "relu6", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "elu", "selu", "celu", "softplus", "mish",
    "hardtanh", "hardsigmoid", "hardswish", "logsigmoid", "softsign", "softmax", "softmin", "log_softmax",
    "threshold", "hardshrink", "softshrink", "tanhshrink", "glu", "prelu", "normalize",
)
globals().update({name: getattr(Tensor, name) for name in TENSOR_METHODS})


def pad(input: Tensor, pad: Sequence[int], mode: str = "constant", value: float = 0.0) -> Tensor:
    """PyTorch's F.pad: `pad` is flat and starts at the last axis, (left, right, top, bottom, ...)."""
    if len(pad) % 2 or len(pad) // 2 > input.ndim:
        raise ValueError(f"pad: needs pairs for at most {input.ndim} axes of shape {input.shape}, got {tuple(pad)}")
    pairs = [(int(pad[k]), int(pad[k + 1])) for k in range(0, len(pad), 2)][::-1]
    return input.pad([(0, 0)] * (input.ndim - len(pairs)) + pairs, value=value, mode=mode)

__all__ = [
    *TENSOR_METHODS, "embedding", "pad", "unfold", "fold", "interpolate", "scaled_dot_product_attention",
    "batch_norm", "layer_norm", "rms_norm", "group_norm",
    "mse_loss", "l1_loss", "cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
    "smooth_l1_loss", "huber_loss", "kl_div", "cosine_similarity", "pairwise_distance",
    "margin_ranking_loss", "cosine_embedding_loss", "hinge_embedding_loss", "soft_margin_loss",
    "multilabel_soft_margin_loss",
    "triplet_margin_loss", "poisson_nll_loss", "gaussian_nll_loss",
]
