"""Large cheap values computed again for the backward pass (zyx/jit/rematerialize.py): a GELU MLP's activations are
read by the next layer at once and by its weight gradient late; the weight gradient reads a copy, so the step holds
less memory at its peak and computes what it computed before (against the same step without copies, and against
the CPU reference device)."""
import math

import numpy as np
import pytest

import zyx
from zyx import nn
from zyx.jit import rematerialize as remat
from zyx.jit import schedule as schedule_module
from zyx.jit.device_traits import DeviceTraits
from zyx.jit.schedule import BROADCAST_MIN_OPS, _fused_ops, _plan, schedule
from zyx.trace.node import toposort
from zyx.trace.ops import Op

RNG = np.random.default_rng(23)
ROWS, WIDTH, HIDDEN, DEPTH = 1024, 64, 256, 4  # activations outweigh the weights and their gradients
GPU_TRAITS = DeviceTraits(gpu=True, vector_width=4, native_width=1, local_memory=49152, max_group_size=1024)


@pytest.fixture(autouse=True)
def small_values_copied(monkeypatch):
    """Values of this test's size, over the spans of its few layers, are worth copying; and each GELU output is
    stored before the products reading it, as GPT-2's (products as wide as its are: GPU_PRODUCT_BROADCAST_MIN)."""
    monkeypatch.setattr(remat, "REMAT_MIN_BYTES", ROWS * HIDDEN * 4)
    monkeypatch.setattr(remat, "REMAT_MIN_LEVELS", 24)
    monkeypatch.setattr(schedule_module, "GPU_PRODUCT_BROADCAST_MIN", WIDTH)


def arrays():
    bound_in, bound_hidden = 1 / math.sqrt(WIDTH), 1 / math.sqrt(HIDDEN)
    layers = [(RNG.uniform(-bound_in, bound_in, (WIDTH, HIDDEN)).astype(np.float32),
               RNG.uniform(-bound_in, bound_in, HIDDEN).astype(np.float32),
               RNG.uniform(-bound_hidden, bound_hidden, (HIDDEN, WIDTH)).astype(np.float32))
              for _ in range(DEPTH)]
    return RNG.standard_normal((ROWS, WIDTH)).astype(np.float32), layers


def loss_of(x, params, activations=None):
    """A residual GELU MLP (GPT's MLP blocks): each GELU output feeds the next product at once, and
    that product's weight gradient after the rest of the forward and most of the backward (each appended to
    `activations`)."""
    for fc, bias, out in zip(params[::3], params[1::3], params[2::3]):
        activation = (x @ fc + bias).gelu(approximate="tanh")
        x = x + activation @ out
        if activations is not None:
            activations.append(activation.node)
    return (x * x).mean()


def gradients(device, x, layers, activations=None):
    params = [device.tensor(w) for pair in layers for w in pair]
    return params, loss_of(device.tensor(x), params, activations).backward(params)


def test_the_weight_gradients_read_copies_and_the_forward_the_originals():
    dev = zyx.CPU()
    x, layers = arrays()
    activations = []
    params, grads = gradients(dev, x, layers, activations)
    targets = [g.node for g in grads]
    plan = _plan(targets, GPU_TRAITS)
    kept = lambda value: _fused_ops(value, plan.materialized, BROADCAST_MIN_OPS) >= BROADCAST_MIN_OPS  # noqa: E731
    rewritten, copies = remat.rematerialize(targets, plan.materialized, plan.users, kept)
    assert len(copies) == DEPTH - 1, copies  # the last layer's GELU is read by its weight gradient at once
    before, after = ({id(n) for n in toposort(t)} for t in (targets, rewritten))
    for copy, original in zip(copies, activations):  # new nodes, each computing a GELU output of the forward
        assert id(copy) in after and id(copy) not in before
        assert (copy.op, copy.shape, copy.arg) == (original.op, original.shape, original.arg)
        products = reductions_under(copy)
        assert len(products) == 1 and id(products[0]) in before  # from the forward's product
    # the forward still reads the originals
    assert all(id(original) in after for original in activations)


def reductions_under(node):
    """The reductions a value's elementwise ops and views read."""
    found, stack, seen = {}, [node], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op is Op.SUM:
            found[id(node)] = node
        else:
            stack.extend(node.src)
    return list(found.values())


def test_nothing_is_copied_on_request(monkeypatch):
    monkeypatch.setenv("ZYX_REMATERIALIZE", "0")
    x, layers = arrays()
    _, grads = gradients(zyx.CPU(), x, layers)
    targets = [g.node for g in grads]
    plan = _plan(targets, GPU_TRAITS)
    assert remat.rematerialize(targets, plan.materialized, plan.users, lambda value: True) == (targets, [])


def test_values_of_few_ops_and_softmax_probabilities_are_not_copied():
    """A ReLU's output is fused where it is read (a copy holds nothing less); a softmax's probabilities take row
    statistics (attention's fused kernels know them by their nodes)."""
    dev = zyx.CPU()
    x, layers = arrays()
    params = [dev.tensor(w) for pair in layers for w in pair]
    h = dev.tensor(x)
    for fc, bias, out in zip(params[::3], params[1::3], params[2::3]):
        h = h + (h @ fc + bias).relu() @ out + (h @ fc).softmax(-1) @ out
    grads = (h * h).mean().backward(params)
    targets = [g.node for g in grads]
    plan = _plan(targets, GPU_TRAITS)
    kept = lambda value: _fused_ops(value, plan.materialized, BROADCAST_MIN_OPS) >= BROADCAST_MIN_OPS  # noqa: E731
    assert remat.rematerialize(targets, plan.materialized, plan.users, kept)[1] == []


def test_a_jitted_step_holds_less_and_computes_the_same(gpu, monkeypatch):
    """SGD steps of the MLP, jitted with GPU-shaped kernels: with copies the planned peak is lower by the GELU
    outputs of all layers but the last, and parameters and losses equal those without copies and the CPU
    reference's."""
    x, layers = arrays()
    results = {}
    for copies in ("1", "0"):
        monkeypatch.setenv("ZYX_REMATERIALIZE", copies)
        gpu.programs.clear()  # (a device keeps the programs it built by structure: settings changed meanwhile aside)
        params = [gpu.tensor(w) for pair in layers for w in pair]
        opt = nn.SGD(lr=0.1)

        @zyx.jit
        def step(batch):
            loss = loss_of(batch, params)
            opt.update(params, loss.backward(params), realize_with=[loss])
            return loss

        losses = [step(gpu.tensor(x)).item() for _ in range(2)]
        results[copies] = (losses, [p.numpy() for p in params], step.captured[0]["planned_peak_bytes"])
    reference = [zyx.CPU().tensor(w) for pair in layers for w in pair]
    ref_opt, ref_losses = nn.SGD(lr=0.1), []
    for _ in range(2):
        loss = loss_of(zyx.CPU().tensor(x), reference)
        ref_opt.update(reference, loss.backward(reference), realize_with=[loss])
        ref_losses.append(loss.item())
    for copies, (losses, values, _) in results.items():
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=f"ZYX_REMATERIALIZE={copies}")
        for got, expected in zip(values, reference):
            np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-6)
    saved = results["0"][2] - results["1"][2]
    assert saved >= (DEPTH - 1) * ROWS * HIDDEN * 4, (results["0"][2], results["1"][2])


def test_cpus_copy_nothing(monkeypatch):
    """A CPU's product copies a computed operand into panels of its own and frees them after it: nothing to gain."""
    x, layers = arrays()
    _, grads = gradients(zyx.CPU(), x, layers)
    counts = []
    for copies in ("1", "0"):
        monkeypatch.setenv("ZYX_REMATERIALIZE", copies)
        counts.append(len(schedule([g.node for g in grads], DeviceTraits())[0]))
    assert counts[0] == counts[1]
