"""The register-tiled attention backward (zyx/jit/attention_grad_tiled.py, the tiled form's), scheduled for a GPU
and run on PoCL: dK with dV in one kernel and dQ in another, both tiled, no buffer of queries x keys; gradients as
torch's for row counts that are not multiples of the tiles, several batch entries and heads, head sizes 32 to 128,
value widths apart from the head size, causal or not, scaled, masked, with the tile ZYX_ATTENTION_GRAD_TILE sets;
the staged kernels where it does not apply (an output width that is no multiple of 32, half precision) or where
ZYX_ATTENTION_GRAD_FORM asks for them."""
import dataclasses

import numpy as np
import pytest
import torch

import zyx
from zyx.jit.attention import gradient_form
from zyx.jit.attention_tiled import tile
from zyx.jit.kernel_ir import If, LocalArray, walk

from test_attention_grad import attention_kernels, data, marked_long, spans, torch_step, zyx_step


@pytest.fixture(autouse=True)
def tiled_form(monkeypatch):
    """Fuse these small inputs too, in the tiled form."""
    monkeypatch.setenv("ZYX_ATTENTION_MIN_BYTES", "0")
    monkeypatch.setenv("ZYX_ATTENTION_FORM", "tiled")


def local_arrays(kernel, prefix):
    return [s for s in walk(kernel.ir.body) if isinstance(s, LocalArray) and s.name.startswith(prefix)]


def backward_kernels(out, grads, device):
    """The fused kernels of the backward (those not storing the row maximum), checked to store no queries x keys
    buffer."""
    kernels, fused = attention_kernels(out, grads, device)
    queries, keys = out.shape[-2], grads[1].shape[-2]
    assert not [node for k in kernels for node in k.outputs if spans(node.shape, queries, keys)], "a T x T buffer"
    return [k for k in fused if "RMAX" not in (node.op.name for node in k.outputs)]


def check_gradients(out, grads, arrays, options, atol=2e-5):
    expected_out, expected = torch_step(arrays, options)
    zyx.realize(out, *grads)
    np.testing.assert_allclose(out.numpy(), expected_out, rtol=1e-5, atol=1e-5)
    for grad, reference, name in zip(grads, expected, "qkv"):
        np.testing.assert_allclose(grad.numpy(), reference, rtol=1e-4, atol=atol, err_msg=f"d{name}")


CASES = {  # name: (batch, heads, queries, keys, head size, value size, keyword arguments, ZYX_ATTENTION_GRAD_TILE)
    "causal, rows past the tiles, d=64": (2, 3, 100, 100, 64, 64, {"is_causal": True}, None),
    "not causal, scaled, fewer queries than keys, values 32 wide": (1, 2, 19, 45, 64, 32, {"scale": 0.3}, None),
    "causal, more queries than keys, d=32": (2, 1, 70, 37, 32, 32, {"is_causal": True}, None),
    "causal, d=128, tile 4 x 2": (1, 1, 41, 41, 128, 128, {"is_causal": True}, "4,2"),
    "causal, tile 8 x 8: 64 walked rows a block": (1, 2, 150, 150, 32, 64, {"is_causal": True}, "8,8"),
}


LONG_CASES = {"causal, d=128, tile 4 x 2", "causal, tile 8 x 8: 64 walked rows a block"}  # (22-86 s and 42 s of
# PoCL running GPU-shaped kernels unoptimized: a tile ZYX_ATTENTION_GRAD_TILE sets is test_dq_takes_a_tile_of_its_own's)


@pytest.mark.parametrize("name", marked_long([(name,) for name in CASES], lambda name: name in LONG_CASES))
def test_gradients_match_torch_in_two_tiled_kernels(gpu, monkeypatch, name):
    batch, heads, queries, keys, head, value, options, setting = CASES[name]
    if setting:
        monkeypatch.setenv("ZYX_ATTENTION_GRAD_TILE", setting)
    rows, chunks = tile("ZYX_ATTENTION_GRAD_TILE", None) or (None, None)
    arrays = [data(batch, heads, queries, head), data(batch, heads, keys, head), data(batch, heads, keys, value),
              data(batch, heads, queries, value)]
    out, grads = zyx_step(gpu, arrays, options)
    backward = backward_kernels(out, grads, gpu)
    assert sorted(len(k.outputs) for k in backward) == [1, 2], [k.name for k in backward]
    for kernel in backward:
        assert len(local_arrays(kernel, "r_stage")) == 2 and len(local_arrays(kernel, "p_stage")) == len(kernel.outputs)
        if rows:
            assert kernel.local_size == 8 * rows
            assert {8 * chunks * (size + 4) for size in (head, value)} >= {a.size * a.width for a in
                                                                           local_arrays(kernel, "stage")}
    check_gradients(out, grads, arrays, options)


@pytest.mark.parametrize("mask", ["bool", "float"])
def test_a_mask_given_as_a_tensor(gpu, mask):
    """attn_mask (true where a query may attend, or added): read at each pair as the trace reads it; every block
    computed (the mask is no comparison of a row's position with a key's)."""
    arrays = [data(1, 2, 45, 32) for _ in range(4)]
    allowed = np.random.default_rng(3).random((45, 45)) < 0.7
    np.fill_diagonal(allowed, True)
    given = allowed if mask == "bool" else np.where(allowed, 0.5, -2.0).astype(np.float32)
    out, grads = zyx_step(gpu, arrays, {"attn_mask": gpu.tensor(given)})
    backward = backward_kernels(out, grads, gpu)
    assert len(backward) == 2 and all(local_arrays(k, "r_stage") for k in backward)
    assert not any(isinstance(s, If) and s.when is not None for k in backward for s in walk(k.ir.body))
    check_gradients(out, grads, arrays, {"attn_mask": torch.tensor(given)})


def test_blocks_a_causal_mask_hides_are_skipped(gpu):
    for causal in (True, False):
        out, grads = zyx_step(gpu, [data(1, 1, 80, 32) for _ in range(4)], {"is_causal": causal})
        skips = [any(isinstance(s, If) and s.when is not None for s in walk(k.ir.body))
                 for k in backward_kernels(out, grads, gpu)]
        assert skips == [causal, causal]


def test_widths_not_a_multiple_of_32_keep_the_staged_kernels(gpu):
    """An item owns float4 groups tx*4 + 32g of its outputs: a head size of 16 takes the staged kernels as the
    staged form has them on GPUs (dK and dV apart)."""
    arrays = [data(1, 2, 40, 16) for _ in range(4)]
    out, grads = zyx_step(gpu, arrays, {"is_causal": True})
    backward = backward_kernels(out, grads, gpu)
    assert len(backward) == 3 and not any(local_arrays(k, "r_stage") for k in backward)
    check_gradients(out, grads, arrays, {"is_causal": True})


def test_half_precision_keeps_the_staged_kernels(gpu):
    arrays = [data(1, 1, 40, 32) for _ in range(4)]
    q, k, v, grad_out = (gpu.tensor(a).cast(zyx.float16) for a in arrays)
    out = zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True)
    grads = (out * grad_out).sum().backward([q, k, v])
    backward = backward_kernels(out, grads, gpu)
    assert len(backward) == 3 and not any(local_arrays(k, "r_stage") for k in backward)
    _, expected = torch_step(arrays, {"is_causal": True})
    for grad, reference in zip(grads, expected):
        np.testing.assert_allclose(grad.numpy().astype(np.float32), reference, rtol=2e-2, atol=2e-2)


def test_the_staged_backward_on_request(gpu, monkeypatch):
    """ZYX_ATTENTION_GRAD_FORM=staged: beside the tiled forward, the staged kernels (dK and dV apart on GPUs)."""
    monkeypatch.setenv("ZYX_ATTENTION_GRAD_FORM", "staged")
    arrays = [data(1, 2, 40, 32) for _ in range(4)]
    out, grads = zyx_step(gpu, arrays, {"is_causal": True})
    backward = backward_kernels(out, grads, gpu)
    assert len(backward) == 3 and not any(local_arrays(k, "r_stage") for k in backward)
    check_gradients(out, grads, arrays, {"is_causal": True})
    monkeypatch.setenv("ZYX_ATTENTION_GRAD_FORM", "tiles")
    with pytest.raises(ValueError, match="ZYX_ATTENTION_GRAD_FORM='tiles'"):
        gradient_form(True)


def test_a_tile_past_the_local_memory_is_refused(gpu, monkeypatch):
    """A tile ZYX_ATTENTION_GRAD_TILE sets whose stages do not fit the local memory: the staged kernels take over;
    where the device is known to build larger arrays than it reports (DeviceTraits.search_local_memory) the tile
    is taken."""
    monkeypatch.setenv("ZYX_ATTENTION_GRAD_TILE", "32,8")
    arrays = [data(1, 1, 40, 128) for _ in range(4)]
    out, grads = zyx_step(gpu, arrays, {"is_causal": True})
    backward = backward_kernels(out, grads, gpu)
    # (the staged kernels' values are test_the_staged_backward_on_request's)
    assert backward and not any(local_arrays(k, "r_stage") for k in backward)
    monkeypatch.setattr(gpu, "traits", dataclasses.replace(gpu.traits, tensor_core_memory=1 << 20))
    backward = backward_kernels(*zyx_step(gpu, arrays, {"is_causal": True}), gpu)
    assert len(backward) == 2 and all(k.local_size == 256 and local_arrays(k, "r_stage") for k in backward)


def test_dq_takes_a_tile_of_its_own_on_request(gpu, monkeypatch):
    """ZYX_ATTENTION_GRAD_DQ_TILE: the kernel of one product (dQ's) in that tile, dK with dV in
    ZYX_ATTENTION_GRAD_TILE's; the same gradients."""
    monkeypatch.setenv("ZYX_ATTENTION_GRAD_TILE", "8,4")
    monkeypatch.setenv("ZYX_ATTENTION_GRAD_DQ_TILE", "4,2")
    arrays = [data(1, 2, 45, 32) for _ in range(4)]
    out, grads = zyx_step(gpu, arrays, {"is_causal": True})
    backward = backward_kernels(out, grads, gpu)
    assert sorted((len(k.outputs), k.local_size) for k in backward) == [(1, 32), (2, 64)]
    check_gradients(out, grads, arrays, {"is_causal": True})
