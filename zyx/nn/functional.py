"""zyx.nn.functional: the functional form of every layer, activation and loss in zyx.nn, with PyTorch's names
and arguments (`import zyx.nn.functional as F`). Each is the same code its module runs.

Not here: attention (MultiheadAttention and TransformerBlock have no functional form in zyx), and the
recurrent cells (PyTorch has none either).
"""
from __future__ import annotations

from ..tensor import Tensor
from .layers import embedding
from .losses import (binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy, l1_loss, mse_loss,
                     nll_loss)
from .norm import batch_norm, group_norm, layer_norm, rms_norm

# the Tensor methods themselves: F.relu(x) is x.relu(), and takes the same arguments as PyTorch's F.relu
linear = Tensor.linear
conv2d = Tensor.conv2d
max_pool2d = Tensor.max_pool2d
avg_pool2d = Tensor.avg_pool2d
dropout = Tensor.dropout
one_hot = Tensor.one_hot
relu = Tensor.relu
gelu = Tensor.gelu
silu = Tensor.silu
tanh = Tensor.tanh
sigmoid = Tensor.sigmoid
leaky_relu = Tensor.leaky_relu
elu = Tensor.elu
softplus = Tensor.softplus
softmax = Tensor.softmax
log_softmax = Tensor.log_softmax

__all__ = [
    "linear", "conv2d", "embedding", "max_pool2d", "avg_pool2d", "dropout", "one_hot",
    "batch_norm", "layer_norm", "rms_norm", "group_norm",
    "relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "elu", "softplus", "softmax", "log_softmax",
    "mse_loss", "l1_loss", "cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
]
