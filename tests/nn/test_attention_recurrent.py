"""MultiheadAttention, TransformerBlock, GRUCell and LSTMCell against PyTorch: outputs and every gradient."""
import numpy as np
import pytest
import torch

import zyx
from zyx import nn
from nn_reference import compare_layer, rng

E, HEADS = 8, 2


def normal(*shape: int) -> np.ndarray:
    return rng().standard_normal(shape).astype(np.float32)


def torch_causal(length: int) -> torch.Tensor:
    return torch.nn.Transformer.generate_square_subsequent_mask(length)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_attention_self_and_weights(nn_device, batch_first, bias):
    module = nn.MultiheadAttention(E, HEADS, bias=bias, batch_first=batch_first, device=nn_device)
    reference = torch.nn.MultiheadAttention(E, HEADS, bias=bias, batch_first=batch_first)
    x = normal(2, 5, E)
    compare_layer(module, reference, [x], nn_device, call=lambda m, x: m(x, x, x))


def test_attention_cross_with_masks(nn_device):
    """Different query and key lengths, a bool attn_mask, a key padding mask and per-head weights."""
    module = nn.MultiheadAttention(E, HEADS, batch_first=True, device=nn_device)
    reference = torch.nn.MultiheadAttention(E, HEADS, batch_first=True)
    query, key, value = normal(2, 3, E), normal(2, 4, E) * 0.5, normal(2, 4, E)
    blocked = np.array([[False, True, False, False]] * 3)
    padding = np.array([[False, False, False, True], [False, False, False, False]])
    compare_layer(module, reference, [query, key, value, blocked, padding], nn_device,
                  call=lambda m, q, k, v, a, p: m(q, k, v, key_padding_mask=p, attn_mask=a,
                                                  average_attn_weights=False))


def test_attention_float_mask_per_head(nn_device):
    module = nn.MultiheadAttention(E, HEADS, batch_first=True, device=nn_device)
    reference = torch.nn.MultiheadAttention(E, HEADS, batch_first=True)
    mask = normal(2 * HEADS, 3, 3)
    compare_layer(module, reference, [normal(2, 3, E), mask], nn_device,
                  call=lambda m, x, mask: m(x, x, x, attn_mask=mask))


def test_attention_causal(nn_device):
    module = nn.MultiheadAttention(E, HEADS, batch_first=True, device=nn_device)
    reference = torch.nn.MultiheadAttention(E, HEADS, batch_first=True)
    compare_layer(module, reference, [normal(2, 4, E)], nn_device,
                  call=lambda m, x: m(x, x, x, is_causal=True),
                  torch_call=lambda m, x: m(x, x, x, attn_mask=torch_causal(4), is_causal=True))
    weights = module(*[zyx.tensor(normal(1, 4, E), device=nn_device)] * 3, is_causal=True)[1].numpy()[0]
    assert np.all(np.triu(weights, 1) == 0)


def test_attention_unbatched(nn_device):
    module = nn.MultiheadAttention(E, HEADS, device=nn_device)
    reference = torch.nn.MultiheadAttention(E, HEADS)
    compare_layer(module, reference, [normal(3, E)], nn_device, call=lambda m, x: m(x, x, x))


@pytest.mark.parametrize("norm_first, activation, causal", [(True, "gelu", False), (False, "relu", True)])
def test_transformer_block(nn_device, norm_first, activation, causal):
    module = nn.TransformerBlock(E, HEADS, dim_feedforward=16, activation=activation, norm_first=norm_first,
                                 causal=causal, device=nn_device)
    reference = torch.nn.TransformerEncoderLayer(E, HEADS, dim_feedforward=16, dropout=0.0, activation=activation,
                                                 batch_first=True, norm_first=norm_first)
    torch_call = (lambda m, x: m(x, src_mask=torch_causal(5), is_causal=True)) if causal else None
    compare_layer(module, reference, [normal(2, 5, E)], nn_device, torch_call=torch_call, atol=2e-5)


def test_transformer_block_default_feed_forward_width(nn_device):
    block = nn.TransformerBlock(E, HEADS, device=nn_device)
    assert block.linear1.weight.shape == (4 * E, E)
    assert block(zyx.zeros(1, 3, E, device=nn_device)).shape == (1, 3, E)


@pytest.mark.parametrize("with_state", [True, False])
def test_gru_cell(nn_device, with_state):
    module, reference = nn.GRUCell(3, 4, device=nn_device), torch.nn.GRUCell(3, 4)
    inputs = [normal(2, 3)] + ([normal(2, 4)] if with_state else [])
    compare_layer(module, reference, inputs, nn_device)


@pytest.mark.parametrize("batched", [True, False])
def test_lstm_cell(nn_device, batched):
    module, reference = nn.LSTMCell(3, 4, device=nn_device), torch.nn.LSTMCell(3, 4)
    lead = (2,) if batched else ()
    inputs = [normal(*lead, 3), normal(*lead, 4), normal(*lead, 4)]
    compare_layer(module, reference, inputs, nn_device, call=lambda m, x, h, c: m(x, (h, c)))


def test_lstm_cell_zero_state_and_unrolled_sequence(nn_device):
    module, reference = nn.LSTMCell(3, 4, bias=False, device=nn_device), torch.nn.LSTMCell(3, 4, bias=False)

    def unroll(cell, sequence):
        state = cell(sequence[0])
        for x in sequence[1:]:
            state = cell(x, state)
        return state

    compare_layer(module, reference, [normal(3, 2, 3)], nn_device, call=unroll)
