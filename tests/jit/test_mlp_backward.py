"""A GPT MLP block's backward scheduled GPU-shaped on this CPU: every kernel computing a product stages it in
local memory, the one it hosts (tiling.hosted_matmul), never a stored product it only reads. GELU's backward is the
epilogue of dY·W_outᵀ, reading the stored pre-activation x̂·W_fcᵀ; it planned that stored product's tiles
and walked its own product from memory, untiled (4.3 ms on the H200 where the product alone took 1.6). A kernel
reading a stored product and hosting none is an elementwise kernel, on either device. Gradients against torch
and the CPU device."""
import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as torch_F

import zyx
import zyx.nn.functional as F
from zyx.jit.kernel_ir import LocalArray, walk
from zyx.jit.kernel_nodes import contained_nodes
from zyx.jit.rewrite import rewrite_graph
from zyx.jit.schedule import schedule
from zyx.jit.tiling import matmul_axes
from zyx.trace.node import toposort

scheduler = importlib.import_module("zyx.jit.schedule")

RNG = np.random.default_rng(41)
TOKENS, D = 256, 128  # the products' sides are blocks of 128, d -> 4d -> d


def data(*shape, scale=1.0):
    return (scale * RNG.standard_normal(shape)).astype(np.float32)


PARAMS = {"ln.w": 1 + data(D, scale=0.1), "ln.b": data(D, scale=0.1), "fc.w": data(4 * D, D, scale=0.05),
          "fc.b": data(4 * D, scale=0.1), "out.w": data(D, 4 * D, scale=0.05), "out.b": data(D, scale=0.1)}
X, DY = data(TOKENS, D), data(TOKENS, D)
NAMES = ["fc.w", "fc.b", "out.w", "out.b", "ln.w", "ln.b"]


def mlp(functional, p, x):
    h = functional.layer_norm(x, (D,), p["ln.w"], p["ln.b"])
    return functional.linear(functional.gelu(functional.linear(h, p["fc.w"], p["fc.b"])), p["out.w"], p["out.b"])


def zyx_gradients(device):
    p = {name: device.tensor(a) for name, a in PARAMS.items()}
    x = device.tensor(X)
    return (mlp(F, p, x) * device.tensor(DY)).sum().backward([*(p[n] for n in NAMES), x])


def torch_gradients():
    p = {name: torch.tensor(a, requires_grad=True) for name, a in PARAMS.items()}
    x = torch.tensor(X, requires_grad=True)
    loss = (mlp(torch_F, p, x) * torch.tensor(DY)).sum()
    return torch.autograd.grad(loss, [*(p[n] for n in NAMES), x])


def product_kernels(kernels):
    """(kernel, the products it computes, whether it stages them in local memory) of each kernel computing any."""
    found = []
    for kernel in kernels:
        products = [node for node in contained_nodes(kernel) if matmul_axes(node) is not None]
        if products:
            staged = any(isinstance(statement, LocalArray) for statement in walk(kernel.ir.body))
            found.append((kernel, products, staged))
    return found


@pytest.fixture
def gpt2_operands(monkeypatch):
    """GELU's backward stored as W7's is (its (tokens, 4d) values read by d = 768 columns of dh·W_fc there, 512
    and more: schedule.GPU_PRODUCT_BROADCAST_MIN), here at d = 128."""
    monkeypatch.setattr(scheduler, "GPU_PRODUCT_BROADCAST_MIN", D)


def test_every_product_of_the_backward_is_staged_and_gelu_backward_is_its_epilogue(gpu, gpt2_operands):
    grads = zyx_gradients(gpu)
    kernels, _ = schedule([grad.node for grad in grads], gpu.traits)
    found = product_kernels(kernels)
    assert len(found) == 5 and all(staged for _, _, staged in found), [(k.name, staged) for k, _, staged in found]
    wide = TOKENS * 4 * D  # (the pre-activation is read as stored: x̂·W_fcᵀ, or with its bias where that is stored)
    (kernel, (hosted,)), = [(kernel, products) for kernel, products, _ in found
                            if kernel.outputs[0].numel == wide and any(node.numel == wide for node in kernel.loads)]
    pre_activation, = [node for node in kernel.loads if node.numel == wide]
    assert not any(hosted in other.outputs for other in kernels)
    assert any(pre_activation in other.outputs for other in kernels if other is not kernel)


def test_mlp_block_gradients_match_torch(gpu, gpt2_operands):
    for got, want, name in zip(zyx_gradients(gpu), torch_gradients(), [*NAMES, "x"]):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-3, atol=1e-4, err_msg=f"d{name}")


def test_mlp_block_gradients_match_the_cpu_device(gpu, gpt2_operands):
    for got, want, name in zip(zyx_gradients(gpu), zyx_gradients(zyx.CPU()), [*NAMES, "x"]):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5, err_msg=f"d{name}")


def test_a_kernel_reading_a_stored_product_is_elementwise(shaped):
    """x·Wᵀ stored (its SUM a target) and x·Wᵀ + b: the second kernel reads the product in vector lanes, shaped as
    no product's (it was a product's tiles over the loaded values), and stores nothing beside its root."""
    x, w, b = data(TOKENS, D), data(2 * D, D), data(2 * D)
    biased = shaped.tensor(x) @ shaped.tensor(w).T + shaped.tensor(b)
    product = next(node for node in toposort([biased.node]) if matmul_axes(node) is not None)
    kernels, _ = schedule([product, biased.node], shaped.traits)
    adding, = [kernel for kernel in kernels if biased.node in kernel.outputs]
    assert adding.outputs == [biased.node] and product in adding.loads and not product_kernels([adding])
    assert adding.site.applied.family == "plain" and adding.site.applied.get("width", 1) > 1
    np.testing.assert_allclose(biased.numpy(), x @ w.T + b, rtol=1e-4, atol=1e-4)


def test_a_kernel_reading_two_stored_products_is_no_product_kernel(w7_decoder, hopper_traits):
    """W7's layer-norm backward under bf16 autocast on Hopper reads two products stored anyway (the residual
    stream's gradient through both branches): the first went to a kernel of its own and the second was hosted,
    and a tiled lowering only reads a stored product, so the kernel was shaped as a product over loaded values
    (tensor-core layout, 128 outputs an item: 254 kB of OpenCL C at W7's size, lowered three times, 0.2 s each).
    Every stored product it reads is stored apart: each kernel shaped for tensor cores computes a product, or sums
    a split one's partials."""
    targets = [t.node for t in w7_decoder(zyx.CPU(), layers=1, batch=8, length=512, dim=256, vocab=512)]
    kernels, _ = schedule(targets, hopper_traits)
    cores = [k for k in kernels if k.site is not None and k.site.applied.family == "tensor_cores"]
    assert len(cores) > 8 and [k.name for k in cores if "mma" not in k.source and not k.summed_apart] == []


def autocast_gradients(device, p, x, dy):
    with zyx.autocast(zyx.bfloat16):
        out = mlp(F, p, x)
    return (out.float() * dy).sum().backward([*(p[n] for n in NAMES), x])


def test_under_bf16_autocast_gelu_backward_in_float32_meets_at_its_rounded_value(h200):
    """Under bf16 autocast GELU is computed in float32 and rounded once (Tensor._in_float32), so its backward reads
    dY·W_outᵀ (bf16) through a cast to float32 and ends in a cast back, which its bias's column sums (split in two
    stages, each summing in float32) read through a cast to float32 again: `_meeting_point` follows the widening
    casts and answers the rounded value, which the product's epilogue then stores (it answered none: W7 stored
    GELU's backward by an elementwise kernel apart); the gradients as the CPU device's."""
    grads = autocast_gradients(h200, {name: h200.tensor(a) for name, a in PARAMS.items()}, h200.tensor(X),
                               h200.tensor(DY))
    order = toposort(rewrite_graph([grad.node for grad in grads], True, 132))
    users: dict = {id(node): [] for node in order}
    for node in order:
        for source in node.src:
            users[id(source)].append(node)
    products = [node for node in order if matmul_axes(node) is not None and node.numel == TOKENS * 4 * D]
    met = [scheduler._meeting_point(node, {}, users) for node in products]  # (x̂·W_fcᵀ's and dY·W_outᵀ's)
    assert [(m.op.name, m.dtype.name) for m in met if m is not None] == [("CAST", "bfloat16")], met
    cpu = zyx.CPU()
    expected = autocast_gradients(cpu, {name: cpu.tensor(a) for name, a in PARAMS.items()}, cpu.tensor(X),
                                  cpu.tensor(DY))
    for got, want, name in zip(grads, expected, [*NAMES, "x"]):  # (bf16 sums: errors relative to the largest)
        want = want.numpy()
        np.testing.assert_allclose(got.numpy(), want, rtol=2e-2, atol=1e-2 * np.abs(want).max(), err_msg=f"d{name}")
