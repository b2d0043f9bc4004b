"""Fused attention (zyx/jit/attention.py): softmax(X) V in one kernel with an online softmax, against torch, with
the device's own kernels and GPU-shaped ones; where a backward reads P, P is stored as before."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zyx
from zyx.jit.schedule import schedule

RNG = np.random.default_rng(15)


def data(*shape, low=-2.0, high=2.0):
    return RNG.uniform(low, high, shape).astype(np.float32)


def launched(*tensors):
    zyx.reset_stats()
    zyx.realize(*tensors)
    return zyx.stats()["kernels_launched"]


@pytest.fixture(autouse=True)
def fuse_any_size(monkeypatch):
    """The small inputs here take the fused kernel too (by default only large probability matrices do)."""
    monkeypatch.setenv("ZYX_ATTENTION_MIN_BYTES", "0")


Q7, K7, V7 = data(2, 3, 7, 5), data(2, 3, 7, 5), data(2, 3, 7, 6, low=-1, high=1)
Q3, K5, V5 = data(2, 2, 3, 4), data(2, 2, 5, 4), data(2, 2, 5, 3, low=-1, high=1)
KEEP = RNG.random((3, 5)) < 0.6
KEEP[:, 1] = True
CASES = {  # name: (inputs, keyword arguments)
    "causal, square, odd": ((Q7, K7, V7), {"is_causal": True}),
    "fewer queries than keys, scale": ((Q3, K5, V5), {"scale": 0.3}),
    "causal, fewer queries": ((Q3, K5, V5), {"is_causal": True}),
    "bool mask": ((Q3, K5, V5, KEEP), {}),
    "float mask": ((Q3, K5, V5, data(3, 5)), {}),
    "broadcast key and value batch": ((Q7, K7[:, :1], V7[:1, :1]), {"is_causal": True}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_forward_is_one_kernel(shaped, name):
    inputs, options = CASES[name]
    out = zyx.nn.scaled_dot_product_attention(*(shaped.tensor(a) for a in inputs), **options)
    assert launched(out) == 1
    expected = F.scaled_dot_product_attention(*(torch.tensor(a) for a in inputs), **options)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_hand_written_attention_on_projected_heads(dev):
    """Attention written out by a user, on heads split from one projection: the projection is a kernel of its
    own (read by the attention kernel, not recomputed per key), the attention one more."""
    x, w = data(2, 9, 12), data(36, 12, low=-0.3, high=0.3)

    def attend(lib, x, w, device):
        qkv = x @ w.T
        q, k, v = (qkv[..., j * 12:(j + 1) * 12].reshape(2, 9, 3, 4).transpose(1, 2) for j in range(3))
        scores = (q @ k.transpose(-1, -2)) * 0.5
        blocked = lib.ones(9, 9, dtype=lib.bool, device=device).triu(1)
        return scores.masked_fill(blocked, float("-inf")).softmax(-1) @ v

    out = attend(zyx, dev.tensor(x), dev.tensor(w), dev)
    assert launched(out) <= 3  # the projection (and its packed operand on a CPU), then attention
    expected = attend(torch, torch.tensor(x), torch.tensor(w), "cpu")
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_forward_and_gradients_with_a_backward(dev):
    """With a backward the scores' product is stored (the backward recomputes P from it and the row statistics)
    and the fused forward reads it: values and gradients as torch's."""
    q, k, v = (dev.tensor(a) for a in (Q7, K7, V7))
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (Q7, K7, V7))
    out = zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True)
    grads = (out * out).sum().backward([q, k, v])
    expected = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
    (expected * expected).sum().backward()
    zyx.realize(out, *grads)
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-5, atol=1e-5)
    for grad, reference in zip(grads, (tq, tk, tv)):
        np.testing.assert_allclose(grad.numpy(), reference.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_small_probabilities_keep_the_products(dev, monkeypatch):
    monkeypatch.setenv("ZYX_ATTENTION_MIN_BYTES", str(2 * 3 * 7 * 7 * 4 + 1))  # P's bytes, and one more
    out = zyx.nn.scaled_dot_product_attention(*(dev.tensor(a) for a in (Q7, K7, V7)), is_causal=True)
    assert launched(out) > 1


def test_forward_memory_has_no_query_by_key_matrix(dev):
    """A causal forward at 512 queries and keys, 2 heads: the probabilities alone would be 2 MiB."""
    q, k, v = (dev.tensor(data(1, 2, 512, 16)) for _ in range(3))
    zyx.realize(q, k, v)
    zyx.reset_peak_memory(dev)
    before = zyx.memory_stats(dev)["current_bytes"]
    out = zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True)
    out.realize()
    grown = zyx.memory_stats(dev)["peak_bytes"] - before
    assert grown <= 2 * out.numel() * 4, f"{grown} bytes for a {out.numel() * 4}-byte output"


def test_gpus_fuse_every_attention_unless_told_to_keep_the_products(gpu, monkeypatch):
    """On the H200 the fused (staged) kernel beat the tiled products from T=1024 up: GPUs fuse by default, a CPU
    only above MIN_PROBABILITY_BYTES; GPU_MIN_PROBABILITY_BYTES = None keeps the products."""
    from zyx.jit import attention
    monkeypatch.delenv("ZYX_ATTENTION_MIN_BYTES")
    assert attention.min_probability_bytes(gpu=True) == 0
    assert attention.min_probability_bytes(gpu=False) == attention.MIN_PROBABILITY_BYTES
    out = zyx.nn.scaled_dot_product_attention(*(gpu.tensor(a) for a in (Q7, K7, V7)), is_causal=True)
    assert launched(out) == 1
    monkeypatch.setattr(attention, "GPU_MIN_PROBABILITY_BYTES", None)
    out = zyx.nn.scaled_dot_product_attention(*(gpu.tensor(a) for a in (Q7, K7, V7)), is_causal=True)
    assert len(schedule([out.node], gpu.traits)[0]) > 1
