"""The staged attention kernel (zyx/jit/attention_tiles.py), scheduled for a GPU and run on PoCL: it is the one
kernel chosen, its values match numpy's for query and key counts that are not multiples of its blocks, several
head sizes, batch x heads, causal or not, scaled; gradients match torch's."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zyx
from zyx.jit import attention_tiles
from zyx.jit.kernel_ir import Break, If, Role, walk
from zyx.jit.device_traits import GPU_VECTOR_WIDTH, DeviceTraits
from zyx.jit.schedule import schedule

RNG = np.random.default_rng(16)
H200_LOCAL_MEMORY = 48 * 1024  # what NVIDIA's OpenCL reports


@pytest.fixture(autouse=True)
def fuse_any_size_staged(monkeypatch):
    """These small inputs take the fused kernel too (GPUs keep their products by default), in the staged form
    (GPUs get the tiled one by default: test_attention_tiled.py)."""
    monkeypatch.setenv("ZYX_ATTENTION_MIN_BYTES", "0")
    monkeypatch.setenv("ZYX_ATTENTION_FORM", "staged")


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def numpy_attention(q, k, v, causal, scale):
    scores = q @ np.swapaxes(k, -1, -2) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if causal:
        scores = np.where(np.arange(k.shape[-2])[None, :] > np.arange(q.shape[-2])[:, None], -np.inf, scores)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)) @ v


def staged_kernel(out, device):
    """The one kernel scheduled for `out`, checked to be the staged one (a work group with local stages)."""
    kernels, _ = schedule([out.node], device.traits)
    assert len(kernels) == 1, [k.name for k in kernels]
    kernel = kernels[0]
    assert kernel.ir.kind == "a" and kernel.ir.axis(Role.LOCAL) is not None and "__local" in kernel.source
    return kernel


def skips_blocks(kernel):
    """Whether the kernel branches on a value computed at run time (a block of keys masked throughout)."""
    return any(isinstance(s, If) and s.when is not None for s in walk(kernel.ir.body))


def stops_walk(kernel):
    """Whether the kernel's walk over blocks ends at the first block a mask hides (a loop's break)."""
    return any(isinstance(s, If) and s.when is not None and s.body == (Break(),) for s in walk(kernel.ir.body))


CASES = {  # name: (batch, heads, queries, keys, head size, causal, scale, rows per group)
    "two row blocks of 64, causal, d=16": (2, 3, 67, 67, 16, True, None, 64),
    "keys in 4 blocks, the last short, d=64, scaled, few groups": (1, 2, 100, 100, 64, False, 0.3, 32),
    "fewer queries than keys, causal, d=80": (2, 2, 45, 77, 80, True, None, 64),
}


@pytest.mark.parametrize("name", list(CASES))
def test_values_match_numpy(gpu, monkeypatch, name):
    batch, heads, queries, keys, head, causal, scale, rows = CASES[name]
    if rows == 64:  # (so few groups would take 32 rows each)
        monkeypatch.setattr(attention_tiles, "MIN_GROUPS", 1)
    q, k, v = data(batch, heads, queries, head), data(batch, heads, keys, head), data(batch, heads, keys, head)
    out = zyx.nn.scaled_dot_product_attention(gpu.tensor(q), gpu.tensor(k), gpu.tensor(v), is_causal=causal,
                                              scale=scale)
    kernel = staged_kernel(out, gpu)
    assert kernel.local_size == rows and kernel.global_size == batch * heads * -(-queries // rows) * rows
    assert skips_blocks(kernel) == causal  # (the first case's first rows skip its second block of keys)
    assert stops_walk(kernel) == causal  # (keys past the rows' last are hidden, and so are all after them)
    np.testing.assert_allclose(out.numpy(), numpy_attention(q, k, v, causal, scale), rtol=2e-5, atol=2e-5)


def test_a_skipped_block_is_not_read(gpu, monkeypatch):
    """67 causal rows in groups of 64: the first group skips the keys past 63, so NaN values there reach only the
    rows that see them (computed, 0 x NaN would reach every row, as it does in torch)."""
    monkeypatch.setattr(attention_tiles, "MIN_GROUPS", 1)
    q, k, v = data(1, 2, 67, 16), data(1, 2, 67, 16), data(1, 2, 67, 16)
    v[..., 64:, :] = np.nan
    out = zyx.nn.scaled_dot_product_attention(gpu.tensor(q), gpu.tensor(k), gpu.tensor(v), is_causal=True)
    assert staged_kernel(out, gpu).local_size == 64
    values, seen = out.numpy(), np.where(np.isnan(v), 0, v)
    assert np.isnan(values[..., 64:, :]).all()
    np.testing.assert_allclose(values[..., :64, :], numpy_attention(q, k, seen, True, None)[..., :64, :],
                               rtol=2e-5, atol=2e-5)


def test_a_mask_the_other_way_round_skips_blocks_too(gpu):
    """Written by hand, keys before the query masked (key < row): blocks of keys all before the group's rows are
    skipped, and the values are numpy's."""
    q, k, v = data(2, 70, 8), data(2, 70, 8), data(2, 70, 8)
    earlier = zyx.arange(70, device=gpu).reshape(1, -1) < zyx.arange(70, device=gpu).reshape(-1, 1)
    zq, zk, zv = (gpu.tensor(a) for a in (q, k, v))
    out = (zq @ zk.transpose(-1, -2)).masked_fill(earlier, float("-inf")).softmax(-1) @ zv
    kernel = staged_kernel(out, gpu)
    assert skips_blocks(kernel) and not stops_walk(kernel)  # (the hidden blocks come first: each is tested)
    scores = np.where(np.arange(70)[None, :] < np.arange(70)[:, None], -np.inf, q @ np.swapaxes(k, -1, -2))
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(out.numpy(), (weights / weights.sum(-1, keepdims=True)) @ v, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("positions", ["arange", "data", "arange, no break"])
def test_the_walk_stops_only_where_no_later_block_can_be_seen(gpu, monkeypatch, positions):
    """A causal mask of arange positions hides every block after the first it hides, so the walk stops there
    (ZYX_ATTENTION_BREAK=0: each block tested instead); the keys' positions given as data (the same values) might
    fall, so each block is tested. 131 rows in groups of 64, keys in blocks of 16: the values are numpy's either way."""
    monkeypatch.setattr(attention_tiles, "MIN_GROUPS", 1)
    if positions.endswith("no break"):
        monkeypatch.setenv("ZYX_ATTENTION_BREAK", "0")
    q, k, v = data(1, 131, 16), data(1, 131, 16), data(1, 131, 16)
    keys = zyx.arange(131, device=gpu) if positions != "data" else gpu.tensor(np.arange(131))
    later = zyx.arange(131, device=gpu).reshape(-1, 1) < keys.reshape(1, -1)
    zq, zk, zv = (gpu.tensor(a) for a in (q, k, v))
    out = (zq @ zk.transpose(-1, -2) * 0.25).masked_fill(later, float("-inf")).softmax(-1) @ zv
    kernel = staged_kernel(out, gpu)
    assert skips_blocks(kernel) and stops_walk(kernel) == (positions == "arange")
    np.testing.assert_allclose(out.numpy(), numpy_attention(q, k, v, True, 0.25), rtol=2e-5, atol=2e-5)


def test_the_per_row_form_on_request(gpu, monkeypatch):
    """ZYX_ATTENTION_FORM=rows gives GPUs the per-row kernel (to compare the two): no work group, same values."""
    monkeypatch.setenv("ZYX_ATTENTION_FORM", "rows")
    q, k, v = data(1, 2, 40, 16), data(1, 2, 40, 16), data(1, 2, 40, 16)
    out = zyx.nn.scaled_dot_product_attention(gpu.tensor(q), gpu.tensor(k), gpu.tensor(v), is_causal=True)
    kernels, _ = schedule([out.node], gpu.traits)
    assert len(kernels) == 1 and kernels[0].ir.kind == "a" and kernels[0].local_size is None
    np.testing.assert_allclose(out.numpy(), numpy_attention(q, k, v, True, None), rtol=2e-5, atol=2e-5)


def test_the_gpu_default_is_one_line(gpu, monkeypatch):
    """GPUs fuse, staged, unless attention.GPU_MIN_PROBABILITY_BYTES is None; then they keep their products."""
    from zyx.jit import attention
    monkeypatch.delenv("ZYX_ATTENTION_MIN_BYTES")
    q, k, v = data(1, 2, 40, 16), data(1, 2, 40, 16), data(1, 2, 40, 16)
    out = zyx.nn.scaled_dot_product_attention(gpu.tensor(q), gpu.tensor(k), gpu.tensor(v), is_causal=True)
    staged_kernel(out, gpu)
    monkeypatch.setattr(attention, "GPU_MIN_PROBABILITY_BYTES", None)
    assert len(schedule([out.node], gpu.traits)[0]) > 1


def test_unknown_form_is_refused(gpu, monkeypatch):
    monkeypatch.setenv("ZYX_ATTENTION_FORM", "tiles")
    out = zyx.nn.scaled_dot_product_attention(*(gpu.tensor(data(1, 1, 8, 4)) for _ in range(3)))
    with pytest.raises(ValueError, match="ZYX_ATTENTION_FORM='tiles'"):
        schedule([out.node], gpu.traits)


def test_gradients_after_a_staged_forward(gpu):
    """The forward realized alone is the staged kernel; gradients taken afterwards (their own kernels, the
    scores' product stored there) match torch's."""
    q, k, v = data(1, 2, 37, 16), data(1, 2, 37, 16), data(1, 2, 37, 16)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    zq, zk, zv = (gpu.tensor(a) for a in (q, k, v))
    out = zyx.nn.scaled_dot_product_attention(zq, zk, zv, is_causal=True)
    staged_kernel(out, gpu)
    expected = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=2e-5, atol=2e-5)
    grads = (out * out).sum().backward([zq, zk, zv])
    (expected * expected).sum().backward()
    zyx.realize(*grads)
    for grad, reference in zip(grads, (tq, tk, tv)):
        np.testing.assert_allclose(grad.numpy(), reference.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_with_a_backward_the_forward_stays_staged_and_stores_the_row_statistics(dev):
    """The backward recomputes P from the row statistics (attention_grad.py), so no kernel stores the scores: the
    forward is the staged kernel on a CPU and on a GPU alike, storing the output, the row maximum and sum."""
    q, k, v = (dev.tensor(data(1, 2, 37, 16)) for _ in range(3))
    out = zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True)
    targets = [out.node] + [g.node for g in (out * out).sum().backward([q, k, v])]
    for traits in (DeviceTraits(), DeviceTraits(True, 256, GPU_VECTOR_WIDTH)):
        forward, = [k for k in schedule(targets, traits)[0] if "RMAX" in (node.op.name for node in k.outputs)]
        assert forward.ir.kind == "a" and forward.ir.axis(Role.LOCAL) is not None
        assert sorted(node.op.name for node in forward.outputs) == ["RESHAPE", "RMAX", "SUM", "SUM"]
        # the output (and the product it reshapes, which D reads), the row maximum and sum


@pytest.mark.parametrize("queries, batch, rows", [(1024, 48, 64), (1024, 12, 32), (20, 1000, 32), (100, 1, 32)])
def test_rows_per_group_leave_no_gpu_idle(queries, batch, rows):
    """64 rows a group where that makes MIN_GROUPS groups (GPT-2 small's 16 x 12 heads of 1024 do), else 32."""
    assert attention_tiles.rows_per_group(queries, batch, 256) == rows
    assert attention_tiles.rows_per_group(queries, batch, 16) is None


@pytest.mark.parametrize("head, keys, for_20_keys", [(16, 64, 32), (64, 32, 32), (80, 16, 16), (128, 16, 16)])
def test_key_blocks_fit_half_an_h200s_local_memory(head, keys, for_20_keys):
    """Two groups per multiprocessor: a stage of at most 24 KiB of NVIDIA's 48; no bigger block than the keys
    need."""
    assert attention_tiles.keys_per_block(64, head, head, 4096, H200_LOCAL_MEMORY) == keys
    assert attention_tiles.local_bytes(64, keys, head, head) <= H200_LOCAL_MEMORY // 2
    assert attention_tiles.keys_per_block(64, head, head, 20, H200_LOCAL_MEMORY) == for_20_keys


@pytest.mark.parametrize("setting", ["", "0"])
def test_every_walk_of_a_causal_step_stops_at_its_first_hidden_block(gpu, monkeypatch, setting):
    """Of a causal step's attention kernels on a GPU, the forward and the queries' gradient walk keys, the keys'
    and values' gradients query rows last first (the hidden blocks, the first rows, then come last): each walk
    stops at its first hidden block (ZYX_ATTENTION_BREAK=0: each walks in order, testing each block). 150 rows
    in groups of 64 (a short last block, walked first backwards); the gradients match torch's."""
    monkeypatch.setenv("ZYX_ATTENTION_BREAK", setting)
    q, k, v = data(1, 2, 150, 16), data(1, 2, 150, 16), data(1, 2, 150, 16)
    zq, zk, zv = (gpu.tensor(a) for a in (q, k, v))
    out = zyx.nn.scaled_dot_product_attention(zq, zk, zv, is_causal=True)
    grads = (out * out).sum().backward([zq, zk, zv])
    kernels = [k for k in schedule([out.node] + [g.node for g in grads], gpu.traits)[0] if k.ir.kind == "a"]
    assert len(kernels) >= 3 and all(skips_blocks(k) for k in kernels)
    assert [stops_walk(k) for k in kernels] == [setting != "0"] * len(kernels)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    expected = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
    (expected * expected).sum().backward()
    zyx.realize(*grads)
    for grad, reference in zip(grads, (tq, tk, tv)):
        np.testing.assert_allclose(grad.numpy(), reference.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_how_an_index_moves_with_a_loop_variable():
    """attention_tiles._direction: 1 where an index never falls as the variable rises, -1 where it never rises, 0
    where it does not depend on it, None where that is not known (a modulo of it, terms moving each way)."""
    from zyx.jit.attention_tiles import _direction, _never_falls
    from zyx.jit.symbolic import Expr
    kb, j = Expr.var("kb", 16), Expr.var("j", 64)
    walked = Expr.minimum(kb * 64 + j, 1000)
    assert _direction(walked, "kb") == 1 and _direction(walked, "j") == 1 and _direction(walked, "x") == 0
    backwards = Expr.minimum((Expr(15) - kb) * 64 + j, 1000)
    assert _direction(backwards, "kb") == -1 and _direction(backwards, "j") == 1
    assert _direction(kb * 64 - j, "j") == -1 and _direction((kb * 64 + j) // 8, "kb") == 1
    assert _direction((kb * 64 + j) % 100, "kb") is None and _direction(kb * 64 - kb // 2, "kb") is None
    assert _never_falls(walked, "kb") and _never_falls(Expr(3) + j, "kb") and not _never_falls(backwards, "kb")
