"""The register-tiled attention forward (zyx/jit/attention_tiled.py, ZYX_ATTENTION_FORM=tiled), scheduled for a GPU
and run on PoCL: it is the one kernel chosen where it applies (the staged one where not), its values match numpy's
for query and key counts that are not multiples of its blocks, head sizes 32 to 128, causal or not, scaled, with
the tile set by ZYX_ATTENTION_TILE; a training step's gradients (the backward reading its row statistics) match
torch's."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zyx
from zyx.jit import attention_tiled
from zyx.jit.kernel_ir import If, LocalArray, walk
from zyx.jit.schedule import schedule

from test_attention_tiles import data, numpy_attention, skips_blocks, staged_kernel


@pytest.fixture(autouse=True)
def tiled_form(monkeypatch):
    """Fuse these small inputs too, in the tiled form."""
    monkeypatch.setenv("ZYX_ATTENTION_MIN_BYTES", "0")
    monkeypatch.setenv("ZYX_ATTENTION_FORM", "tiled")


def is_tiled(kernel) -> bool:
    return any(isinstance(s, LocalArray) and s.name.startswith("q_stage") for s in walk(kernel.ir.body))


CASES = {  # name: (batch, heads, queries, keys, head size, causal, scale, ZYX_ATTENTION_TILE or None)
    "causal, two row blocks, the last short, d=64": (2, 3, 100, 100, 64, True, None, None),
    "not causal, scaled, keys past a block, d=32": (1, 2, 37, 45, 32, False, 0.3, None),
    "causal, fewer queries than keys, tile 8 x 4 (in 64 KiB), d=128": (1, 2, 21, 33, 128, True, None, "8,4"),
    "causal, tile 8 x 8: 32 rows, 64 keys a block, d=64": (1, 2, 150, 150, 64, True, None, "8,8"),
    "causal, tile 4 x 2: 16 rows, 16 keys a block, d=96": (2, 1, 50, 50, 96, True, None, "4,2"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_values_match_numpy(gpu, monkeypatch, name):
    batch, heads, queries, keys, head, causal, scale, tile = CASES[name]
    if tile:
        monkeypatch.setenv("ZYX_ATTENTION_TILE", tile)
    ty, ck = attention_tiled.tile()
    q, k, v = data(batch, heads, queries, head), data(batch, heads, keys, head), data(batch, heads, keys, head)
    out = zyx.nn.scaled_dot_product_attention(gpu.tensor(q), gpu.tensor(k), gpu.tensor(v), is_causal=causal,
                                              scale=scale)
    kernel = staged_kernel(out, gpu)
    assert is_tiled(kernel) and kernel.local_size == 8 * ty
    assert kernel.global_size == batch * heads * -(-queries // (4 * ty)) * 8 * ty
    assert skips_blocks(kernel) == (causal and keys > 8 * ck)
    np.testing.assert_allclose(out.numpy(), numpy_attention(q, k, v, causal, scale), rtol=2e-5, atol=2e-5)


def test_a_training_step_matches_torch(gpu):
    """The tiled forward stores the row maximum and sum the backward reads: gradients as torch's."""
    arrays = [data(2, 2, 70, 64) for _ in range(4)]
    q, k, v, grad_out = (gpu.tensor(a) for a in arrays)
    out = zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True)
    grads = (out * grad_out).sum().backward([q, k, v])
    kernels, _ = schedule([out.node] + [g.node for g in grads], gpu.traits)
    forward = [kernel for kernel in kernels if "RMAX" in (node.op.name for node in kernel.outputs)]
    assert len(forward) == 1 and is_tiled(forward[0])
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in arrays[:3])
    expected_out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
    expected = torch.autograd.grad((expected_out * torch.tensor(arrays[3])).sum(), [tq, tk, tv])
    np.testing.assert_allclose(out.numpy(), expected_out.detach().numpy(), rtol=1e-5, atol=1e-5)
    for grad, reference, name in zip(grads, expected, "qkv"):
        np.testing.assert_allclose(grad.numpy(), reference.numpy(), rtol=1e-4, atol=2e-5, err_msg=f"d{name}")


def test_value_widths_not_a_multiple_of_32_keep_the_staged_kernel(gpu):
    """An item owns float4 groups tx*4 + 32g of the outputs: a width of 16 takes the staged kernel."""
    q, k, v = data(1, 2, 40, 16), data(1, 2, 40, 16), data(1, 2, 40, 16)
    out = zyx.nn.scaled_dot_product_attention(gpu.tensor(q), gpu.tensor(k), gpu.tensor(v), is_causal=True)
    assert not is_tiled(staged_kernel(out, gpu))
    np.testing.assert_allclose(out.numpy(), numpy_attention(q, k, v, True, None), rtol=2e-5, atol=2e-5)


def test_a_skipped_block_is_not_read(gpu):
    """Keys past the group's last row are never read: NaN values there reach only the rows that see them."""
    q, k, v = data(1, 2, 80, 32), data(1, 2, 80, 32), data(1, 2, 80, 32)
    v[..., 64:, :] = np.nan
    out = zyx.nn.scaled_dot_product_attention(gpu.tensor(q), gpu.tensor(k), gpu.tensor(v), is_causal=True)
    kernel = staged_kernel(out, gpu)
    assert is_tiled(kernel) and any(isinstance(s, If) for s in walk(kernel.ir.body))
    values = out.numpy()
    assert np.isnan(values[..., 64:, :]).all()
    np.testing.assert_allclose(values[..., :64, :], numpy_attention(q, k, np.where(np.isnan(v), 0, v), True,
                                                                    None)[..., :64, :], rtol=2e-5, atol=2e-5)


def test_the_tile_setting_is_checked(monkeypatch):
    for setting in ("16", "16,3", "12,4", "a,b"):
        monkeypatch.setenv("ZYX_ATTENTION_TILE", setting)
        with pytest.raises(ValueError, match="ZYX_ATTENTION_TILE"):
            attention_tiled.tile()
