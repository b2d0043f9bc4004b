"""Attention's fused backward (zyx/trace/attention_grad.py, zyx/jit/attention_grad.py): gradients as torch's and as
the unfused kernels', on the device's own kernels and GPU-shaped ones; two attention kernels for the backward, no
buffer of T x T elements; a jitted training step as the eager one; second order through the ordinary rules."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zyx
from zyx.jit.attention_grad import gradients_share_kernels
from zyx.jit.attention_grad_tiles import walk_passes
from zyx.jit.attention_tiles import keys_per_block, local_bytes, rows_per_group
from zyx.jit.kernel_ir import If, LocalArray, Role, walk
from zyx.jit.schedule import schedule

RNG = np.random.default_rng(17)
UNFUSED = str(1 << 62)  # ZYX_ATTENTION_MIN_BYTES past any size: the products and the row softmax


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.fixture(autouse=True)
def fuse_any_size(monkeypatch):
    """These small inputs take the fused kernels too (by default a CPU fuses only large probability matrices), the
    backward in the staged form on GPU-shaped kernels too (the tiled one, a GPU's default, has tests of its own:
    test_attention_grad_tiled.py)."""
    monkeypatch.setenv("ZYX_ATTENTION_MIN_BYTES", "0")
    monkeypatch.setenv("ZYX_ATTENTION_GRAD_FORM", "staged")


def zyx_step(device, arrays, options):
    """The output and the gradients of sum(out * dO) for q, k, v (unrealized)."""
    q, k, v, grad_out = (device.tensor(a) for a in arrays)
    out = zyx.nn.scaled_dot_product_attention(q, k, v, **options)
    return out, (out * grad_out).sum().backward([q, k, v])


def torch_step(arrays, options):
    q, k, v = (torch.tensor(a, requires_grad=True) for a in arrays[:3])
    out = F.scaled_dot_product_attention(q, k, v, **options)
    return out.detach().numpy(), [g.numpy() for g in torch.autograd.grad((out * torch.tensor(arrays[3])).sum(),
                                                                         [q, k, v])]


def attention_kernels(out, grads, device):
    kernels, _ = schedule([out.node] + [g.node for g in grads], device.traits)
    return kernels, [k for k in kernels if k.ir.kind == "a"]


def spans(shape, queries, keys):
    """Whether a buffer of `shape` has an axis of queries and one of keys."""
    return shape.count(queries) >= 2 if queries == keys else queries in shape and keys in shape


def marked_long(rows, long) -> list:
    """pytest parameters of `rows` (tuples of argument values), marked `long` where `long(*row)`: variants whose
    kernels a kept case runs, run only with --long (CI's suite keeps to 15 minutes)."""
    return [pytest.param(*row, marks=[pytest.mark.long] if long(*row) else []) for row in rows]


CASES = {  # name: (batch, heads, queries, keys, head size, value size, keyword arguments)
    "causal, odd, d=16": (2, 3, 37, 37, 16, 16, {"is_causal": True}),
    "not causal, scaled, fewer queries, d=24": (1, 2, 19, 45, 24, 8, {"scale": 0.3}),
    "causal, fewer queries than keys, d=64": (1, 2, 21, 33, 64, 64, {"is_causal": True}),
    "causal, one head, d=128": (1, 1, 13, 13, 128, 128, {"is_causal": True}),
    "causal, blocks skipped, the last short, d=32": (1, 2, 150, 150, 32, 32, {"is_causal": True}),
}


def check_case(device, name):
    """CASES[name]'s output and gradients as torch's, from three attention kernels (the forward, dQ, dK with dV)
    where dK and dV share one (else four) and no buffer of queries x keys; the backward kernels."""
    batch, heads, queries, keys, head, value, options = CASES[name]
    arrays = [data(batch, heads, queries, head), data(batch, heads, keys, head), data(batch, heads, keys, value),
              data(batch, heads, queries, value)]
    out, grads = zyx_step(device, arrays, options)
    kernels, fused = attention_kernels(out, grads, device)
    assert len(fused) == (3 if gradients_share_kernels(device.traits.gpu) else 4), [k.name for k in kernels]
    assert not [node for k in kernels for node in k.outputs if spans(node.shape, queries, keys)], "a T x T buffer"
    expected_out, expected = torch_step(arrays, options)
    zyx.realize(out, *grads)
    np.testing.assert_allclose(out.numpy(), expected_out, rtol=1e-5, atol=1e-5)
    for grad, reference, name in zip(grads, expected, "qkv"):
        np.testing.assert_allclose(grad.numpy(), reference, rtol=1e-4, atol=2e-5, err_msg=f"d{name}")
    return fused[1:]


@pytest.mark.long(cases=[{"shaped": "GPU-shaped", "name": "causal, fewer queries than keys, d=64"},
                         {"shaped": "own kernels", "name": "causal, one head, d=128"}])  # (each 13-18 s on 2 cores;
# the other shaping of each case runs)
@pytest.mark.parametrize("name", list(CASES))
def test_gradients_match_torch_in_two_backward_kernels(shaped, name):
    check_case(shaped, name)


@pytest.mark.long  # (an option's variant: the default walk is every other test's)
@pytest.mark.parametrize("shared", ["1", "0"])
@pytest.mark.parametrize("name", list(CASES))
def test_blocks_walked_in_two_passes_on_request(shaped, monkeypatch, name, shared):
    """ZYX_ATTENTION_GRAD_PASSES=2: each block of walked rows in two loops, the first storing P and dS into a local
    array per product, the second adding their terms, in every backward kernel but dV's alone (which reads no
    staged row twice); the same gradients, dK and dV in one kernel or two."""
    monkeypatch.setenv("ZYX_ATTENTION_GRAD_PASSES", "2")
    monkeypatch.setenv("ZYX_ATTENTION_GRAD_SHARED", shared)
    arrays = [[s for s in walk(kernel.ir.body) if isinstance(s, LocalArray) and s.name.startswith("p_stage")]
              for kernel in check_case(shaped, name)]
    assert sorted(map(len, arrays)) == ([1, 2] if shared == "1" else [0, 1, 1])


@pytest.mark.parametrize("rows", ["32", "128"])
def test_rows_per_group_on_request(gpu, monkeypatch, rows):
    """ZYX_ATTENTION_ROWS: the forward's and the backward kernels' groups hold that many rows; the same gradients
    (two passes, dK and dV apart: the variant expected fastest on the H200). The forward in the staged form (a GPU's
    default, the tiled one, has tiles of its own)."""
    monkeypatch.setenv("ZYX_ATTENTION_FORM", "staged")
    monkeypatch.setenv("ZYX_ATTENTION_ROWS", rows)
    monkeypatch.setenv("ZYX_ATTENTION_GRAD_PASSES", "2")
    monkeypatch.setenv("ZYX_ATTENTION_GRAD_SHARED", "0")
    arrays = [data(1, 2, 150, 32) for _ in range(4)]
    out, grads = zyx_step(gpu, arrays, {"is_causal": True})
    assert [k.ir.axis(Role.LOCAL).size for k in attention_kernels(out, grads, gpu)[1]] == [int(rows)] * 4
    for grad, reference, name in zip(grads, torch_step(arrays, {"is_causal": True})[1], "qkv"):
        np.testing.assert_allclose(grad.numpy(), reference, rtol=1e-4, atol=2e-5, err_msg=f"d{name}")
    monkeypatch.setenv("ZYX_ATTENTION_ROWS", "48")
    with pytest.raises(ValueError, match="ZYX_ATTENTION_ROWS='48'"):
        rows_per_group(150, 2, 256)


@pytest.mark.long  # (an option's variants: the default block is every other test's)
@pytest.mark.parametrize("keys", ["16", "64", "128"])
def test_keys_per_block_on_request(gpu, monkeypatch, keys):
    """ZYX_ATTENTION_KEYS: the forward's and the backward kernels' stages hold that many keys (walked rows) a block,
    in all of the local memory; the same output and gradients, T not a multiple of the block (150 keys). The
    forward in the staged form (a GPU's default, the tiled one, has tiles of its own)."""
    monkeypatch.setenv("ZYX_ATTENTION_FORM", "staged")
    monkeypatch.setenv("ZYX_ATTENTION_KEYS", keys)
    arrays = [data(1, 2, 150, 32) for _ in range(4)]
    out, grads = zyx_step(gpu, arrays, {"is_causal": True})
    stages = [[s.size * s.width for s in walk(kernel.ir.body) if isinstance(s, LocalArray)
               and s.name.startswith(("k_stage", "stage"))] for kernel in attention_kernels(out, grads, gpu)[1]]
    assert len(stages) == 4 and all(int(keys) * 32 in sizes and all(size % int(keys) == 0 for size in sizes)
                                    for sizes in stages), stages  # a row of 32 floats (or one) a key
    expected_out, expected = torch_step(arrays, {"is_causal": True})
    np.testing.assert_allclose(out.numpy(), expected_out, rtol=1e-5, atol=1e-5)
    for grad, reference, name in zip(grads, expected, "qkv"):
        np.testing.assert_allclose(grad.numpy(), reference, rtol=1e-4, atol=2e-5, err_msg=f"d{name}")
    needed = local_bytes(64, int(keys), 64, 64)  # a stage of the block in all of the local memory, not in half
    assert keys_per_block(64, 64, 64, 4096, needed) == int(keys)
    assert keys_per_block(64, 64, 64, 4096, needed - 4) is None
    monkeypatch.setenv("ZYX_ATTENTION_KEYS", "48")
    with pytest.raises(ValueError, match="ZYX_ATTENTION_KEYS='48'"):
        keys_per_block(64, 64, 64, 4096, 1 << 16)


def test_walk_passes_refuses_other_settings(monkeypatch):
    monkeypatch.setenv("ZYX_ATTENTION_GRAD_PASSES", "3")
    with pytest.raises(ValueError, match="ZYX_ATTENTION_GRAD_PASSES='3'"):
        walk_passes()


def test_dk_and_dv_in_kernels_of_their_own_on_request(shaped, monkeypatch):
    """ZYX_ATTENTION_GRAD_SHARED=0: dK and dV each walk in a kernel of their own (half the registers an item
    holds), with the same gradients."""
    monkeypatch.setenv("ZYX_ATTENTION_GRAD_SHARED", "0")
    arrays = [data(1, 2, 150, 32) for _ in range(4)]
    out, grads = zyx_step(shaped, arrays, {"is_causal": True})
    kernels, fused = attention_kernels(out, grads, shaped)
    assert len(fused) == 4 and all(len(k.outputs) == 1 for k in fused[1:]), [k.name for k in kernels]
    for grad, reference, name in zip(grads, torch_step(arrays, {"is_causal": True})[1], "qkv"):
        np.testing.assert_allclose(grad.numpy(), reference, rtol=1e-4, atol=2e-5, err_msg=f"d{name}")


def test_attention_written_out_by_hand(shaped):
    """softmax spelled with exp and sums (its maximum not detached), a float mask added, on heads of one
    projection: the backward is the same two kernels, the gradients of the input and the weights as torch's."""
    x, w, bias = data(2, 21, 8), data(24, 8) * 0.3, data(21, 21)

    def attend(x, w, bias):
        q, k, v = ((x @ w[j * 8:(j + 1) * 8].T).reshape(2, 21, 2, 4).transpose(1, 2) for j in range(3))
        scores = q @ k.transpose(-1, -2) * 0.4 + bias
        maximum = scores.max(-1, keepdim=True)
        shifted = (scores - getattr(maximum, "values", maximum)).exp()  # (torch's max gives values and indices)
        return (shifted / shifted.sum(-1, keepdim=True)) @ v

    inputs = [shaped.tensor(a) for a in (x, w)]
    out = attend(*inputs, shaped.tensor(bias))
    grads = (out * out).sum().backward(inputs)
    assert len(attention_kernels(out, grads, shaped)[1]) == (3 if gradients_share_kernels(shaped.traits.gpu) else 4)
    expected = [torch.tensor(a, requires_grad=True) for a in (x, w)]
    reference = attend(*expected, torch.tensor(bias))
    torch.autograd.backward((reference * reference).sum())
    for grad, tensor in zip(grads, expected):
        np.testing.assert_allclose(grad.numpy(), tensor.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_packed_heads_gradients_stored_head_dimension_last(shaped):
    """Causal attention on heads of one packed projection (GPT-2's qkv, split and transposed to [b, h, t, d]): every
    gradient the backward kernels store lies with its head dimension last, as the concatenation of the packed
    gradient reads it (dV's product, which the trace lays out [b, h, d, t], included: rewrite._width_last), and
    the gradients of the input and the weights are torch's."""
    batch, time, heads, head = 2, 37, 2, 8
    x, w = data(batch, time, heads * head), data(3 * heads * head, heads * head) * 0.3

    def attend(x, w, causal):
        q, k, v = (x @ w.T).reshape(batch, time, 3, heads, head).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) * head ** -0.5
        scores = scores + causal
        maximum = scores.max(-1, keepdim=True)
        shifted = (scores - getattr(maximum, "values", maximum)).exp()
        return ((shifted / shifted.sum(-1, keepdim=True)) @ v).transpose(1, 2).reshape(batch, time, heads * head)

    causal = np.triu(np.full((time, time), -1e9, np.float32), 1)
    inputs = [shaped.tensor(a) for a in (x, w)]
    out = attend(*inputs, shaped.tensor(causal))
    grads = (out * out).sum().backward(inputs)
    backward = attention_kernels(out, grads, shaped)[1][1:]
    stored = [node.shape for kernel in backward for node in kernel.outputs if node.numel >= time * head]
    assert len(stored) == 3 and all(shape[-1] == head for shape in stored), stored
    expected = [torch.tensor(a, requires_grad=True) for a in (x, w)]
    reference = attend(*expected, torch.tensor(causal))
    torch.autograd.backward((reference * reference).sum())
    for grad, tensor in zip(grads, expected):  # (float32 sums of terms up to 20: errors relative to the largest)
        reference = tensor.grad.numpy()
        np.testing.assert_allclose(grad.numpy(), reference, rtol=1e-4, atol=2e-5 * np.abs(reference).max())


def test_blocks_a_causal_mask_hides_are_skipped(gpu):
    """Every backward kernel (dQ, and dK with dV or each alone) branches on whether a block of walked rows is
    hidden from all the group's rows, where the mask is causal, and computes every block where it is not."""
    for causal in (True, False):
        out, grads = zyx_step(gpu, [data(1, 1, 150, 16) for _ in range(4)], {"is_causal": causal})
        backward = [k for k in attention_kernels(out, grads, gpu)[1] if "RMAX" not in (n.op.name for n in k.outputs)]
        skips = [any(isinstance(s, If) and s.when is not None for s in walk(k.ir.body)) for k in backward]
        assert skips == [causal] * (2 if gradients_share_kernels(gpu.traits.gpu) else 3)


def test_the_per_row_form_on_request(dev, monkeypatch):
    """ZYX_ATTENTION_FORM=rows: a work item per row walking every row of the other axis, no local memory."""
    monkeypatch.setenv("ZYX_ATTENTION_FORM", "rows")
    monkeypatch.delenv("ZYX_ATTENTION_GRAD_FORM")  # (the backward's form: the forward's)
    arrays = [data(1, 2, 23, 8) for _ in range(4)]
    out, grads = zyx_step(dev, arrays, {"is_causal": True})
    assert all(k.ir.axis(Role.LOCAL) is None for k in attention_kernels(out, grads, dev)[1])
    for grad, reference in zip(grads, torch_step(arrays, {"is_causal": True})[1]):
        np.testing.assert_allclose(grad.numpy(), reference, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("passes", ["1", "2"])
def test_webgpu_computes_every_block(monkeypatch, passes):
    """WGSL's uniformity analysis refuses barriers under a branch on loaded values: the staged backward computes
    every block there, with the same gradients (each block walked in one pass or two)."""
    monkeypatch.setenv("ZYX_ATTENTION_GRAD_PASSES", passes)
    try:
        from zyx.runtime.webgpu import adapters
        found = bool(adapters())
    except (ImportError, RuntimeError):
        found = False
    if not found:
        pytest.skip("no WebGPU adapter")
    device = zyx.WGPU()
    arrays = [data(1, 2, 37, 8) for _ in range(4)]
    out, grads = zyx_step(device, arrays, {"is_causal": True})
    fused = attention_kernels(out, grads, device)[1]
    assert len(fused) == (3 if gradients_share_kernels(device.traits.gpu) else 4)
    assert not any(isinstance(s, If) and s.when is not None for k in fused for s in walk(k.ir.body))
    for grad, reference in zip(grads, torch_step(arrays, {"is_causal": True})[1]):
        np.testing.assert_allclose(grad.numpy(), reference, rtol=1e-4, atol=2e-5)


def test_fused_gradients_match_the_unfused_kernels(dev, monkeypatch):
    arrays = [data(2, 2, 29, 32) for _ in range(4)]
    fused = [g.numpy() for g in zyx_step(dev, arrays, {"is_causal": True})[1]]
    monkeypatch.setenv("ZYX_ATTENTION_MIN_BYTES", UNFUSED)
    out, grads = zyx_step(dev, arrays, {"is_causal": True})
    assert attention_kernels(out, grads, dev)[1] == []
    for a, b in zip(fused, grads):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-5)


def test_training_memory_has_no_query_by_key_matrix(dev):
    """Forward and backward at 512 queries and keys, 2 heads: one probability matrix would be 2 MiB; what the step
    holds beyond its inputs is its outputs and per-row values (the unfused kernels store several T x T ones)."""
    arrays = [data(1, 2, 512, 16) for _ in range(4)]
    tensors = [dev.tensor(a) for a in arrays]
    zyx.realize(*tensors)
    zyx.reset_peak_memory(dev)
    before = zyx.memory_stats(dev)["current_bytes"]
    out = zyx.nn.scaled_dot_product_attention(*tensors[:3], is_causal=True)
    grads = (out * tensors[3]).sum().backward(tensors[:3])
    zyx.realize(out, *grads)
    grown = zyx.memory_stats(dev)["peak_bytes"] - before
    outputs = 4 * out.numel() * 4
    assert grown <= 2 * outputs, f"{grown} bytes for {outputs} bytes of output and gradients"


def test_a_jitted_training_step_matches_the_eager_one(dev):
    """A step of an attention layer over projected heads (causal), SGD: jitted and eager agree, losses and weights."""
    def make(weights):
        params = [dev.tensor(w) for w in weights]

        def step(x, target):
            qkv = x @ params[0]
            q, k, v = (qkv[..., j * 16:(j + 1) * 16].reshape(2, 33, 2, 8).transpose(1, 2) for j in range(3))
            out = zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 33, 16)
            loss = ((out @ params[1] - target) ** 2).mean()
            zyx.nn.SGD(lr=0.5).update(params, loss.backward(params), realize_with=[loss])
            return loss
        return params, step

    weights = [data(16, 48) * 0.3, data(16, 16) * 0.3]
    x, target = dev.tensor(data(2, 33, 16)), dev.tensor(data(2, 33, 16))
    (jitted_params, jitted_step), (eager_params, eager_step) = make(weights), make(weights)
    jitted_step = zyx.jit(jitted_step)
    losses = [(jitted_step(x, target).item(), eager_step(x, target).item()) for _ in range(4)]
    np.testing.assert_allclose(*zip(*losses), rtol=1e-5)
    assert losses[-1][0] < losses[0][0]
    for a, b in zip(jitted_params, eager_params):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_second_order_takes_the_ordinary_rules(dev):
    """A gradient of the gradients differentiates the recomputed probabilities like any other nodes: as torch's."""
    arrays = [data(1, 2, 9, 8) for _ in range(4)]
    q, k, v, grad_out = (dev.tensor(a) for a in arrays)
    out = zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True)
    dq, _, _ = (out * grad_out).sum().backward([q, k, v])
    second = (dq * dq).sum().backward([q, k, v])
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in arrays[:3])
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):  # (the fused ones have no 2nd order)
        tout = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
    tdq, = torch.autograd.grad((tout * torch.tensor(arrays[3])).sum(), [tq], create_graph=True)
    expected = torch.autograd.grad((tdq * tdq).sum(), [tq, tk, tv])
    zyx.realize(*second)
    for grad, reference in zip(second, expected):
        np.testing.assert_allclose(grad.numpy(), reference.numpy(), rtol=1e-3, atol=1e-4)


@pytest.mark.long  # (40 s of PoCL: float16 gradients of the fused kernels are test_attention_autocast.py's)
def test_half_precision_gradients_are_fused(dev):
    """float16 attention: the gradients as torch's, computed by the fused kernels (computing in float32, rounding
    where the unfused trace does: test_attention_autocast.py)."""
    arrays = [data(1, 1, 12, 8) for _ in range(4)]
    q, k, v, grad_out = (dev.tensor(a).cast(zyx.float16) for a in arrays)
    out = zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True)
    grads = (out * grad_out).sum().backward([q, k, v])
    assert len(attention_kernels(out, grads, dev)[1]) == (3 if gradients_share_kernels(dev.traits.gpu) else 4)
    _, expected = torch_step(arrays, {"is_causal": True})
    for grad, reference in zip(grads, expected):
        np.testing.assert_allclose(grad.numpy().astype(np.float32), reference, rtol=2e-2, atol=2e-2)

