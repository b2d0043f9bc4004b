"""A reduction one kernel stores is read by the others (stored_reductions.py): an AdamW step with gradient clipping
sums each bias's and layer norm's gradient over the rows once, in the kernel storing it for the clipping's norm."""
import numpy as np

import zyx
from zyx.jit.kernel_nodes import contained_nodes
from zyx.jit import schedule as scheduler
from zyx.trace.ops import Op

ROWS, FEATURES, HIDDEN, OUTPUTS = 512, 16, 32, 4  # rows enough for GPU-shaped column sums to get work groups


def _parameters(device):
    rng = np.random.default_rng(5)
    shapes = {"fc.w": (HIDDEN, FEATURES), "fc.b": (HIDDEN,), "ln.w": (HIDDEN,), "ln.b": (HIDDEN,),
              "out.w": (OUTPUTS, HIDDEN), "out.b": (OUTPUTS,)}
    return {name: device.tensor((rng.standard_normal(shape) * 0.3 + (name == "ln.w")).astype(np.float32))
            for name, shape in shapes.items()}


def _data(device):
    rng = np.random.default_rng(6)
    return (device.tensor(rng.standard_normal((ROWS, FEATURES)).astype(np.float32)),
            device.tensor(rng.standard_normal((ROWS, OUTPUTS)).astype(np.float32)))


def _step(params, opt, x, y):
    """One AdamW step with clipping (W7's, on a layer-norm MLP): the loss, the parameters updated in place."""
    F = zyx.nn.functional
    h = F.layer_norm(F.linear(x, params["fc.w"], params["fc.b"]), (HIDDEN,), params["ln.w"], params["ln.b"])
    loss = ((F.linear(F.gelu(h), params["out.w"], params["out.b"]) - y) ** 2).mean()
    weights = list(params.values())
    grads, _ = zyx.nn.clip_grad_norm(loss.backward(weights), 0.5)
    opt.update(weights, grads, realize_with=[loss])
    return loss


def _column_sums(kernels):
    """The sums over the rows of a (rows, n) value to n values (a bias's or a layer norm's gradient), each with
    the kernels computing it and those reading it."""
    found = {}
    for kernel in kernels:
        for node in contained_nodes(kernel):
            source = node.src[0] if node.op is Op.SUM else None
            if (source is not None and source.numel == ROWS * node.numel and node.numel == source.shape[-1]
                    and set(node.arg) == set(range(len(source.shape) - 1))):
                found.setdefault(id(node), (node, []))[1].append(kernel)
    return [(node, computing, [k for k in kernels if any(n is node for n in k.loads)])
            for node, computing in found.values()]


def test_a_bias_gradient_is_summed_in_one_kernel_and_read_by_its_update(shaped, monkeypatch):
    """Each gradient summed over the rows (the biases', the layer norm's) is computed by one kernel, which stores it;
    the kernels updating the parameter (AdamW's new value and moments, all of the parameter's shape) read it."""
    scheduled = []

    def recorded(targets, traits, tuned):
        kernels, targets = schedule(targets, traits, tuned)
        scheduled.extend(kernels)
        return kernels, targets
    schedule = scheduler.schedule  # (what FusingDevice._build imports when it schedules)
    monkeypatch.setattr(scheduler, "schedule", recorded)
    monkeypatch.setattr(shaped, "_load", lambda *arguments: None)  # scheduled here, not read from an earlier run's
    params = _parameters(shaped)
    _step(params, zyx.nn.AdamW(lr=0.01, weight_decay=0.1), *_data(shaped))
    sums = _column_sums(scheduled)
    assert sorted(node.numel for node, _, _ in sums) == [OUTPUTS, HIDDEN, HIDDEN, HIDDEN]
    for node, computing, reading in sums:
        assert len(computing) == 1 and any(o is node for o in computing[0].outputs), node
        updates = [k for k in reading if any(o.shape == (node.numel,) for o in k.outputs)]
        assert updates, f"no kernel updating a parameter of {node.numel} reads its stored gradient"


def test_steps_compute_what_the_reference_device_does(shaped):
    """Three steps, parameters and losses as on the CPU reference device."""
    def run(device):
        params, opt, data = _parameters(device), zyx.nn.AdamW(lr=0.01, weight_decay=0.1), _data(device)
        losses = [_step(params, opt, *data).item() for _ in range(3)]
        return losses, {name: p.numpy() for name, p in params.items()}
    (losses, params), (expected_losses, expected) = run(shaped), run(zyx.CPU())
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    for name, value in params.items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-4, atol=1e-6, err_msg=name)
