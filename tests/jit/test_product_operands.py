"""What a GPU product reads: an operand computed under it is stored first where staging it through its views reads
more memory than the store (schedule._staging_dearer, operand_layout.cheaper_stored: attention's dQ, dKᵀ, dV
concatenated into a QKV projection's gradient), and stays fused where it reads what a stored one would (a scale
and a bias); a product a kernel would compute beside the one it hosts is stored by a kernel of its own
(schedule._products_beside: GELU's backward beside the pre-activation it recomputed). GPU-shaped schedules on this
CPU; results against numpy and torch."""
import contextlib
import dataclasses
import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as torch_F

import zyx
from zyx.jit.kernel_nodes import contained_nodes
from zyx.jit.operand_layout import read_cost
from zyx.jit.device_traits import DeviceTraits
from zyx.jit.schedule import schedule
from zyx.jit.tiling import matmul_axes
from zyx.trace.ops import Op

scheduler = importlib.import_module("zyx.jit.schedule")
GPU = DeviceTraits(gpu=True, vector_width=4, max_group_size=1024)
CPU = DeviceTraits(gpu=False, native_width=8, multiply_add_latency=5, vector_width=16)
RNG = np.random.default_rng(23)
BATCH, HEADS, CONTEXT, SIZE = 1, 4, 64, 64  # d = 256: the products' 256-wide sides are two blocks of 128
D = HEADS * SIZE


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def products(kernel):
    return [node for node in contained_nodes(kernel) if matmul_axes(node) is not None]


def reduced(product):
    """Elements a product sums over (its k)."""
    return product.src[0].shape[product.arg[0]]


def merged_heads(dq, dkt, dv):
    """dQ·scale, dKᵀ (stored transposed, as attention's backward stores it) and dV in head layout, concatenated
    into the (tokens, 3d) gradient of a QKV projection, as autograd writes it."""
    heads = (dq * 0.125, dkt.transpose(2, 3), dv)
    return zyx.cat([h.transpose(1, 2).reshape(BATCH * CONTEXT, D) for h in heads], 1)


def merged_heads_numpy(dq, dkt, dv):
    heads = (dq * 0.125, dkt.transpose(0, 1, 3, 2), dv)
    return np.concatenate([h.transpose(0, 2, 1, 3).reshape(BATCH * CONTEXT, D) for h in heads], 1)


def qkv_gradients(device, arrays):
    """The QKV projection's weight gradient dQKVᵀ·x and input gradient dQKV·W (unrealized), and the parts."""
    parts = [device.tensor(a) for a in arrays[:3]]
    dqkv = merged_heads(*parts)
    x, w = device.tensor(arrays[3]), device.tensor(arrays[4])
    return (dqkv.T @ x, dqkv @ w), parts


QKV_ARRAYS = [data(BATCH, HEADS, CONTEXT, SIZE), data(BATCH, HEADS, SIZE, CONTEXT), data(BATCH, HEADS, CONTEXT, SIZE),
              data(BATCH * CONTEXT, 2 * D), data(3 * D, 2 * D)]


def test_the_concatenated_head_gradients_read_a_sector_per_float_along_either_axis():
    """Along the channels two of the parts run (a head's 64 channels at a time), dKᵀ is strided: (1 + 8 + 1) / 3
    of a contiguous read per element; along the tokens only dKᵀ runs. Stored, one contiguous read."""
    dqkv = merged_heads(*(zyx.CPU().tensor(a) for a in QKV_ARRAYS[:3])).node
    assert read_cost(dqkv, 1, {}) == pytest.approx(10 / 3)
    assert read_cost(dqkv, 0, {}) == pytest.approx(17 / 3)
    assert (read_cost(dqkv, 1, {id(dqkv): dqkv}), read_cost(dqkv, 0, {id(dqkv): dqkv})) == (1, 8)


def test_products_read_the_concatenated_gradient_stored_once(monkeypatch):
    """Both products read one stored (tokens, 3d) gradient instead of the three head-layout parts; the schedule
    has the kernel storing it more than one that fuses it into each product, and no other."""
    (weight, inputs), parts = qkv_gradients(zyx.CPU(), QKV_ARRAYS)
    kernels, _ = schedule([weight.node, inputs.node], GPU)
    part_ids = {id(part.node) for part in parts}
    store, = [k for k in kernels if part_ids & {id(node) for node in k.loads}]
    assert not products(store) and [node.shape for node in store.outputs] == [(BATCH * CONTEXT, 3 * D)]
    readers = [k for k in kernels if products(k)]
    assert len(readers) == 2 and all(store.outputs[0] in k.loads for k in readers)
    monkeypatch.setattr(scheduler, "_staging_dearer", lambda *args: False)
    assert len(schedule([weight.node, inputs.node], GPU)[0]) == len(kernels) - 1


@pytest.mark.parametrize("traits", [GPU, CPU], ids=["GPU", "CPU"])
def test_the_bias_gradient_reads_the_concatenated_gradient_the_products_read(traits):
    """The QKV gradient's column sums (its bias's gradient) load the (tokens, 3d) gradient stored for the products
    too (schedule._stored_shared_operands): they computed it again from the head-layout parts, dKᵀ read across."""
    parts = [zyx.CPU().tensor(a) for a in QKV_ARRAYS[:3]]
    dqkv = merged_heads(*parts)
    x, w = zyx.CPU().tensor(QKV_ARRAYS[3]), zyx.CPU().tensor(QKV_ARRAYS[4])
    bias = dqkv.sum(0)
    kernels, _ = schedule([(dqkv.T @ x).node, (dqkv @ w).node, bias.node], traits)
    part_ids = {id(part.node) for part in parts}
    store, = [k for k in kernels if part_ids & {id(node) for node in k.loads}]
    assert [node.shape for node in store.outputs] == [(BATCH * CONTEXT, 3 * D)]
    readers = [k for k in kernels if store.outputs[0] in k.loads]
    copies = {id(node) for k in readers if not products(k) for node in k.outputs}  # (a CPU packs dqkvᵀ first)
    multiplying = [k for k in kernels if products(k)]
    assert len(multiplying) == 2 and all(store.outputs[0] in k.loads or copies & {id(node) for node in k.loads}
                                         for k in multiplying)
    assert any(not products(k) and k.outputs[0].shape == (3 * D,) for k in readers)


SHARED = [data(CONTEXT * 4, D) for _ in range(6)]  # four pieces of a gradient, a layer's input, and its weight (d x d)
SHARED[5] = SHARED[5][:D] * 0.05


def linear_gradients(device, half):
    """A layer's weight, input and bias gradients from a gradient computed from four arrays of its size (as a
    layer norm's input gradient is), rounded to bfloat16 for the products where `half`; and the pieces."""
    pieces = [device.tensor(a) for a in SHARED[:4]]
    x, w = device.tensor(SHARED[4]), device.tensor(SHARED[5])
    g = (pieces[0] + pieces[1]) * pieces[2] - pieces[3]
    if half:
        g, x, w = g.cast(zyx.bfloat16), x.cast(zyx.bfloat16), w.cast(zyx.bfloat16)
    return [g.T @ x, g @ w, g.float().sum(0)], pieces


@pytest.mark.parametrize("traits", [GPU, dataclasses.replace(GPU, local_memory=49152, tensor_cores=("bf16", "f16")),
                                    CPU], ids=["GPU", "tensor-cores", "CPU"])
@pytest.mark.parametrize("half", [False, True], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("bias_first", [False, True], ids=["products-first", "bias-first"])
def test_an_operand_products_and_column_sums_share_is_computed_once(traits, half, bias_first):
    """A gradient computed from four arrays, read by a weight's and an input's gradient (products) and by the bias
    gradient's column sums, is computed by one kernel loading the four, which stores it (its bfloat16 rounding under
    autocast) for every other (schedule._stored_shared_operands): the column sums computed it again on a GPU where
    the products came first, and on a CPU each product's copy of it did too (W7's layer norms' input gradients)."""
    gradients, pieces = linear_gradients(zyx.CPU(), half)
    kernels, _ = schedule([t.node for t in (gradients[::-1] if bias_first else gradients)], traits)
    piece_ids = {id(piece.node) for piece in pieces}
    loading, = [k for k in kernels if piece_ids & {id(node) for node in k.loads}]
    assert [(node.op, node.dtype) for node in loading.outputs] == [
        (Op.CAST, zyx.bfloat16) if half else (Op.ADD, zyx.float32)]


@pytest.mark.parametrize("shaped", ["gpu", "dev"])
@pytest.mark.parametrize("half", [False, True], ids=["float32", "bfloat16"])
def test_a_shared_operand_and_its_readers_match_numpy(shaped, half, request):
    (weight, inputs, bias), _ = linear_gradients(request.getfixturevalue(shaped), half)
    zyx.realize(weight, inputs, bias)
    a, b, c, d, x, w = SHARED
    g = (a + b) * c - d
    if half:
        g, x, w = (torch.tensor(v).bfloat16().float().numpy() for v in (g, x, w))
    tolerance = 2e-2 if half else 1e-4
    for got, want in ((weight, g.T @ x), (inputs, g @ w), (bias, g.sum(0))):
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got.numpy().astype(np.float32) / scale, want / scale, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("shaped", ["gpu", "dev"])
def test_a_stored_concatenation_and_its_column_sums_match_numpy(shaped, request):
    device = request.getfixturevalue(shaped)
    parts = [device.tensor(a) for a in QKV_ARRAYS[:3]]
    dqkv = merged_heads(*parts)
    weight, bias = dqkv.T @ device.tensor(QKV_ARRAYS[3]), dqkv.sum(0)
    expected = merged_heads_numpy(*QKV_ARRAYS[:3])
    zyx.realize(weight, bias)
    np.testing.assert_allclose(bias.numpy(), expected.sum(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(weight.numpy(), expected.T @ QKV_ARRAYS[3], rtol=1e-4, atol=1e-4)


def test_products_of_the_stored_gradient_match_numpy(gpu):
    (weight, inputs), _ = qkv_gradients(gpu, QKV_ARRAYS)
    dqkv = merged_heads_numpy(*QKV_ARRAYS[:3])
    np.testing.assert_allclose(weight.numpy(), dqkv.T @ QKV_ARRAYS[3], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(inputs.numpy(), dqkv @ QKV_ARRAYS[4], rtol=1e-4, atol=1e-4)


def test_a_scale_and_a_bias_stay_in_the_staging(gpu):
    """(x·0.5 + b)·Wᵀ reads x, b and W in one kernel: its prologue reads what a stored operand would."""
    x, b, w = data(128, 2 * D), data(2 * D), data(2 * D, 2 * D)
    out = (gpu.tensor(x) * 0.5 + gpu.tensor(b)) @ gpu.tensor(w).T
    kernel, = schedule([out.node], GPU)[0]
    assert all(node.op.name == "BUFFER" for node in kernel.loads) and len(kernel.loads) == 3
    np.testing.assert_allclose(out.numpy(), (x * 0.5 + b) @ w.T, rtol=1e-4, atol=1e-4)


def gelu_like_backward(device, arrays):
    """The forward gelu(x·W1ᵀ) and a backward (dY·W2) · exp(h / 2) reading the same pre-activation h."""
    x, w1, dy, w2 = (device.tensor(a) for a in arrays)
    h = x @ w1.T
    return h.gelu(), (dy @ w2) * (h * 0.5).exp()


GELU_ARRAYS = [data(128, 2 * D), 0.05 * data(2 * D, 2 * D), data(128, D), data(D, 2 * D)]


def test_a_kernel_computes_one_product_and_reads_the_one_read_elsewhere():
    """The backward's kernel hosts dY·W2 and reads h, which the forward reads too, from a kernel of its own."""
    forward, backward = gelu_like_backward(zyx.CPU(), GELU_ARRAYS)
    kernels, _ = schedule([forward.node, backward.node], GPU)
    assert all(len(products(k)) <= 1 for k in kernels)
    storing = next(k for k in kernels if backward.node in k.outputs)
    read, = [node for node in storing.loads if matmul_axes(node) is not None]
    hosted, = products(storing)
    assert (reduced(read), reduced(hosted)) == (2 * D, D)  # x·W1ᵀ read, dY·W2 hosted
    assert sum(read in k.outputs for k in kernels) == 1


def test_the_kernels_of_one_product_each_match_numpy(gpu):
    forward, backward = gelu_like_backward(gpu, GELU_ARRAYS)
    x, w1, dy, w2 = GELU_ARRAYS
    h = torch.tensor(x @ w1.T)
    np.testing.assert_allclose(forward.numpy(), torch_F.gelu(h).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(backward.numpy(), (dy @ w2) * np.exp(h.numpy() * 0.5), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("autocast", [None, "bfloat16"])
def test_gelus_backward_is_its_products_epilogue_and_the_bias_gradient_reads_it(gpu, autocast):
    """An MLP's gradients on a GPU: GELU's backward (its derivative's two terms both read dY·W2) is stored by that
    product's epilogue (schedule._meeting_point), which every other kernel reads: no kernel stores it apart and
    the bias gradient's column sums compute no erf (under bf16 autocast on an H100 they recomputed it, 2.30 ms of
    W7's step against 0.60 reading it)."""
    x, w1, b1, w2 = data(512, 256), 0.05 * data(1024, 256), 0.1 * data(1024), 0.05 * data(256, 1024)

    def gradients(device):
        tx, tw1, tb1, tw2 = (device.tensor(a) for a in (x, w1, b1, w2))
        with zyx.autocast(getattr(zyx, autocast)) if autocast else contextlib.nullcontext():
            y = zyx.nn.functional.linear(zyx.nn.functional.linear(tx, tw1, tb1).gelu(), tw2)  # (a bf16 bias)
        return ((y.float() * y.float()).mean()).backward([tw1, tb1, tx])

    traits = dataclasses.replace(GPU, local_memory=49152, tensor_cores=("bf16", "f16")) if autocast else GPU
    kernels, _ = schedule([g.node for g in gradients(zyx.CPU())], traits)
    with_erf = [k for k in kernels if "zyx_erf(" in k.source]
    assert with_erf and all(products(k) for k in with_erf)  # (the forward's GELU and its backward: epilogues)
    assert not any("zyx_erf(" in k.source and not products(k) for k in kernels)
    got = gradients(gpu)
    tx, tw1, tb1, tw2 = (torch.tensor(a, requires_grad=True) for a in (x, w1, b1, w2))
    with torch.autocast("cpu", torch.bfloat16) if autocast else contextlib.nullcontext():
        y = torch_F.linear(torch_F.gelu(torch_F.linear(tx, tw1, tb1)), tw2)
    (y.float() * y.float()).mean().backward()
    tolerance = 2e-2 if autocast else 1e-4
    for g, want in zip(got, (tw1.grad, tb1.grad, tx.grad)):
        scale = float(want.abs().max())
        np.testing.assert_allclose(g.numpy().astype(np.float32) / scale, want.float().numpy() / scale,
                                   rtol=tolerance, atol=tolerance)


def attention_block(F, p, x, causal_grad):
    """Layer norm, QKV projection, causal attention over HEADS heads, output projection; the loss weighs the
    output with `causal_grad`."""
    h = F.layer_norm(x, (D,), p["ln.w"], p["ln.b"])
    qkv = F.linear(h, p["qkv.w"], p["qkv.b"])
    q, k, v = (qkv[..., j * D:(j + 1) * D].reshape(BATCH, CONTEXT, HEADS, SIZE).transpose(1, 2) for j in range(3))
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(BATCH, CONTEXT, D)
    return (F.linear(a, p["proj.w"], p["proj.b"]) * causal_grad).sum()


BLOCK = {"ln.w": 1 + 0.1 * data(D), "ln.b": 0.1 * data(D), "qkv.w": 0.05 * data(3 * D, D),
         "qkv.b": 0.1 * data(3 * D), "proj.w": 0.05 * data(D, D), "proj.b": 0.1 * data(D)}
BLOCK_INPUTS = (data(BATCH, CONTEXT, D), data(BATCH, CONTEXT, D))


def test_attention_block_gradients_match_torch_from_a_stored_qkv_gradient(gpu):
    """The QKV projection's weight and input gradients read the attention gradients concatenated and stored."""
    p = {name: gpu.tensor(a) for name, a in BLOCK.items()}
    x, g = (gpu.tensor(a) for a in BLOCK_INPUTS)
    names = ["qkv.w", "qkv.b", "proj.w", "ln.w"]
    grads = attention_block(zyx.nn.functional, p, x, g).backward([*(p[n] for n in names), x])
    kernels, _ = schedule([grad.node for grad in grads], gpu.traits)
    stored = [node for k in kernels if not products(k) for node in k.outputs  # (the forward's: its product's)
              if node.numel == BATCH * CONTEXT * 3 * D]
    store, = [k for k in kernels if stored == k.outputs]
    parts = {id(node) for node in store.loads}
    assert len(stored) == 1 and len([k for k in kernels if products(k) and stored[0] in k.loads]) >= 2
    assert not [k.name for k in kernels if products(k) and parts & {id(node) for node in k.loads}]
    expected_p = {name: torch.tensor(a, requires_grad=True) for name, a in BLOCK.items()}
    expected_x = torch.tensor(BLOCK_INPUTS[0], requires_grad=True)
    loss = attention_block(torch_F, expected_p, expected_x, torch.tensor(BLOCK_INPUTS[1]))
    expected = torch.autograd.grad(loss, [*(expected_p[n] for n in names), expected_x])
    for grad, reference, name in zip(grads, expected, [*names, "x"]):
        np.testing.assert_allclose(grad.numpy(), reference.numpy(), rtol=1e-3, atol=1e-4, err_msg=f"d{name}")
