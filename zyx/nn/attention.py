"""Multi-head attention and a transformer block built from it; parameter names match PyTorch's."""
from __future__ import annotations

import math
from typing import Callable, Optional

from ..autocast import lower_precision
from ..creation import arange
from ..devices import Device, default_device
from ..errors import ShapeError
from ..tensor import Tensor
from . import init
from .layers import Dropout, Linear
from .module import Module
from .norm import LayerNorm


def causal_mask(query_len: int, key_len: int, device: Optional[Device] = None) -> Tensor:
    """(query_len, key_len) bool, true where a query would look at a later key (so it must not)."""
    rows = arange(query_len, device=device).reshape(-1, 1)
    return arange(key_len, device=device).reshape(1, -1) > rows


def _as_additive(mask: Tensor, scores: Tensor) -> Tensor:
    """A bool mask (true = blocked) or a float mask (added to the scores), applied to `scores`."""
    return mask.where(float("-inf"), scores) if mask.dtype.is_bool else scores + mask


@lower_precision
def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
                                 dropout_p: float = 0.0, is_causal: bool = False,
                                 scale: Optional[float] = None) -> Tensor:
    """softmax(Q K^T * scale + mask) V over (..., L, E) queries and (..., S, E) keys, as PyTorch's functional
    form: a bool `attn_mask` is true where a query may attend (unlike MultiheadAttention's), a float one is
    added; `is_causal` (without a mask) lets query i see keys 0..i; `scale` defaults to 1/sqrt(E); `dropout_p`
    drops weights. Batch dimensions broadcast."""
    if query.ndim < 2 or key.ndim < 2 or query.shape[-1] != key.shape[-1] or key.shape[-2] != value.shape[-2]:
        raise ShapeError(f"scaled_dot_product_attention: query {query.shape}, key {key.shape} and value "
                         f"{value.shape} need (..., L, E), (..., S, E) and (..., S, Ev)")
    if is_causal and attn_mask is not None:
        raise ValueError("scaled_dot_product_attention: give attn_mask or is_causal=True, not both (as PyTorch)")
    factor = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = (query * factor).matmul(key.transpose(-1, -2))
    if is_causal:
        scores = _as_additive(causal_mask(query.shape[-2], key.shape[-2], query.device), scores)
    if attn_mask is not None:
        scores = _as_additive(attn_mask.logical_not() if attn_mask.dtype.is_bool else attn_mask, scores)
    return scores.softmax(-1).dropout(dropout_p).matmul(value)


class MultiheadAttention(Module):
    """softmax(Q K^T / sqrt(head_dim)) V over `num_heads` heads, then an output projection.

    Inputs are (L, N, E), or (N, L, E) with `batch_first`, or unbatched (L, E). `attn_mask` is (L, S) or
    (N * num_heads, L, S), bool (true = blocked) or float (added); `key_padding_mask` is (N, S), true = ignored;
    `is_causal=True` blocks later keys without a mask. Returns (output, attention weights or None).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False, device: Optional[Device] = None):
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        device = device or default_device()
        self.embed_dim, self.num_heads, self.batch_first = embed_dim, num_heads, batch_first
        self.in_proj_weight = init.xavier_uniform((3 * embed_dim, embed_dim), device=device)
        self.in_proj_bias = init.filled((3 * embed_dim,), 0.0, device) if bias else None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, device=device)
        if bias:
            self.out_proj.bias = init.filled((embed_dim,), 0.0, device)
        self.dropout = Dropout(dropout)

    def _heads(self, x: Tensor, part: int) -> Tensor:
        """Project (N, L, E) with the `part`-th third of the input projection and split heads: (N, H, L, D)."""
        e = self.embed_dim
        weight = self.in_proj_weight[part * e:(part + 1) * e]
        bias = None if self.in_proj_bias is None else self.in_proj_bias[part * e:(part + 1) * e]
        projected = x.linear(weight, bias)
        return projected.reshape(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        unbatched = query.ndim == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if query.shape[-1] != self.embed_dim:
            raise ShapeError(f"MultiheadAttention: embedding size {query.shape[-1]} differs from {self.embed_dim}")
        batch, length, source = query.shape[0], query.shape[1], key.shape[1]
        q, k, v = self._heads(query, 0), self._heads(key, 1), self._heads(value, 2)
        scores = (q * (1 / math.sqrt(q.shape[-1]))).matmul(k.transpose(-1, -2))           # N, H, L, S
        if attn_mask is not None:
            mask = attn_mask.reshape(batch, self.num_heads, length, source) if attn_mask.ndim == 3 else attn_mask
            scores = _as_additive(mask, scores)
        if is_causal:
            scores = _as_additive(causal_mask(length, source, query.device), scores)
        if key_padding_mask is not None:
            padding = key_padding_mask.reshape(1, source) if unbatched else key_padding_mask
            scores = _as_additive(padding.reshape(batch, 1, 1, source), scores)
        weights = self.dropout(scores.softmax(-1))
        out = weights.matmul(v).transpose(1, 2).reshape(batch, length, self.embed_dim)
        out = self.out_proj(out)
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = weights.mean(1) if average_attn_weights else weights
        return out, weights.squeeze(0) if unbatched else weights


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": Tensor.relu, "gelu": Tensor.gelu}


class TransformerBlock(Module):
    """Self-attention then a feed-forward network, each with a residual connection and a LayerNorm.

    The layout and parameter names follow PyTorch's TransformerEncoderLayer, so its weights load directly;
    the defaults are those of current models instead: pre-norm, GELU, batch first, no dropout.
    `causal=True` makes every position attend only to itself and earlier ones.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: Optional[int] = None, dropout: float = 0.0,
                 activation: str = "gelu", layer_norm_eps: float = 1e-5, batch_first: bool = True,
                 norm_first: bool = True, causal: bool = False, bias: bool = True, device: Optional[Device] = None):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"TransformerBlock: activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        device = device or default_device()
        hidden = dim_feedforward or 4 * d_model
        self.self_attn = MultiheadAttention(d_model, nhead, dropout, bias, batch_first, device)
        self.linear1 = Linear(d_model, hidden, bias, device)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(hidden, d_model, bias, device)
        self.norm1 = LayerNorm(d_model, layer_norm_eps, bias=bias, device=device)
        self.norm2 = LayerNorm(d_model, layer_norm_eps, bias=bias, device=device)
        self.dropout1, self.dropout2 = Dropout(dropout), Dropout(dropout)
        self.activation, self.norm_first, self.causal = activation, norm_first, causal

    def _attend(self, x: Tensor, attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor]) -> Tensor:
        out, _ = self.self_attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False, attn_mask=attn_mask,
                                is_causal=self.causal)
        return self.dropout1(out)

    def _feed_forward(self, x: Tensor) -> Tensor:
        hidden = self.dropout(_ACTIVATIONS[self.activation](self.linear1(x)))
        return self.dropout2(self.linear2(hidden))

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None,
                key_padding_mask: Optional[Tensor] = None) -> Tensor:
        if self.norm_first:
            x = x + self._attend(self.norm1(x), attn_mask, key_padding_mask)
            return x + self._feed_forward(self.norm2(x))
        x = self.norm1(x + self._attend(x, attn_mask, key_padding_mask))
        return self.norm2(x + self._feed_forward(x))
