"""zyx.autocast against torch.autocast: the dtype each op class produces, values within bfloat16's precision,
float32 gradients for float32 parameters, and the same step jitted, eager and in a second process."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import zyx
from zyx import nn
from zyx.devices import CAPTURING_KINDS

RNG = np.random.default_rng(14)
X = RNG.standard_normal((6, 5)).astype(np.float32)
W = RNG.standard_normal((3, 5)).astype(np.float32)
B = RNG.standard_normal(3).astype(np.float32)
IMAGE = RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)
KERNEL = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)
LABELS = np.array([0, 2, 1, 1, 0, 2])
BF16_TOLERANCE = dict(rtol=2 ** -7, atol=2 ** -7)  # a few units in the last place of bfloat16's 8-bit mantissa

# ops that torch's CPU autocast casts as zyx does (products to bfloat16, losses to float32, the rest untouched)
AGREED = {
    "matmul": (lambda x, w, b: x @ w.T, lambda x, w, b: x @ w.T),
    "linear": (lambda x, w, b: x.linear(w, b), TF.linear),
    "einsum": (lambda x, w, b: zyx.einsum("ij,kj->ik", x, w), lambda x, w, b: torch.einsum("ij,kj->ik", x, w)),
    "conv2d": (lambda x, w, b: x.conv2d(w, b, padding=1), lambda x, w, b: TF.conv2d(x, w, b, padding=1)),
    "conv_transpose2d": (lambda x, w, b: x.conv_transpose2d(w.transpose(0, 1), b),
                         lambda x, w, b: TF.conv_transpose2d(x, w.transpose(0, 1), b)),
    "cross_entropy": (lambda x, w, labels: nn.functional.cross_entropy(x @ w.T, labels),
                      lambda x, w, b: TF.cross_entropy(x @ w.T, torch.tensor(LABELS))),
    "mse_loss": (lambda x, w, b: nn.functional.mse_loss(x @ w.T, b.expand(6, 3)),
                 lambda x, w, b: TF.mse_loss(x @ w.T, b.expand(6, 3))),
    "relu_of_product_plus_float32": (lambda x, w, b: (x @ w.T).relu() + b, lambda x, w, b: (x @ w.T).relu() + b),
}
# ops that PyTorch's CUDA op list runs in float32 and its CPU list does not: torch computes them in float32 here
FLOAT32 = {
    "softmax": (lambda t: t.softmax(-1), lambda t: t.softmax(-1)),
    "log_softmax": (lambda t: t.log_softmax(-1), lambda t: t.log_softmax(-1)),
    "sum": (lambda t: t.sum(0), lambda t: t.sum(0)),
    "exp": (lambda t: t.exp(), torch.exp),
    "log": (lambda t: t.abs().log(), lambda t: t.abs().log()),
    "pow": (lambda t: t ** 3, lambda t: t ** 3),
    "layer_norm": (lambda t: nn.functional.layer_norm(t, 3), lambda t: TF.layer_norm(t, (3,))),
}


def zyx_inputs(device, case):
    if case.startswith("conv"):
        return device.tensor(IMAGE), device.tensor(KERNEL), device.tensor(B)
    if case == "cross_entropy":
        return device.tensor(X), device.tensor(W), device.tensor(LABELS)
    return device.tensor(X), device.tensor(W), device.tensor(B)


def torch_inputs(case):
    if case.startswith("conv"):
        return torch.tensor(IMAGE), torch.tensor(KERNEL), torch.tensor(B)
    return torch.tensor(X), torch.tensor(W), torch.tensor(B)


def as_float64(t):
    return t.cast(zyx.float32).numpy().astype(np.float64) if isinstance(t, zyx.Tensor) else t.double().numpy()


@pytest.mark.parametrize("case", list(AGREED))
def test_dtype_matches_torch_cpu_autocast_and_values_its_float32_accumulation(device, case):
    """The values: torch's float32 op on the bfloat16-rounded inputs, within one rounding of the result (torch's
    own CPU bfloat16 conv_transpose2d is further off: it does not accumulate in float32)."""
    ours, theirs = AGREED[case]
    with zyx.autocast(zyx.bfloat16):
        got = ours(*zyx_inputs(device, case))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected_dtype = theirs(*torch_inputs(case)).dtype
    rounded = [t if t is None else t.bfloat16().float() for t in torch_inputs(case)]
    assert got.dtype.name == str(expected_dtype).removeprefix("torch.")
    np.testing.assert_allclose(as_float64(got), as_float64(theirs(*rounded)), **BF16_TOLERANCE)


def test_precision_sensitive_ops_run_in_float32(device):
    product = device.tensor(X) @ device.tensor(W).T
    with zyx.autocast():
        half = product.cast(zyx.bfloat16)
        results = {name: ours(half) for name, (ours, _) in FLOAT32.items()}
    rounded = torch.tensor(X @ W.T).bfloat16().float()  # what the float32 ops see: the bfloat16 values, widened
    for name, got in results.items():
        assert got.dtype == zyx.float32, name
        np.testing.assert_allclose(got.numpy(), FLOAT32[name][1](rounded).numpy(), rtol=1e-5, atol=1e-5,
                                   err_msg=name)


def test_float16_products_and_what_autocast_leaves_alone(device):
    x, w = device.tensor(X), device.tensor(W)
    with zyx.autocast(zyx.float16):
        half = x @ w.T
        assert half.dtype == zyx.float16
        assert (x.double() @ w.double().T).dtype == zyx.float64  # float64 is never cast (PyTorch's rule)
        assert (x.long() @ w.long().T).dtype == zyx.int64
        assert (x + w[0]).dtype == zyx.float32  # elementwise ops keep their inputs' dtypes
        assert zyx.einsum("ij->j", x).dtype == zyx.float32  # one operand: a sum, not a product
    with torch.autocast("cpu", dtype=torch.float16):
        expected = torch.tensor(X) @ torch.tensor(W).T
    # zyx rounds float16 where it is stored, not where it is cast (bfloat16 at both): the inputs' rounding
    # (2^-11 of values up to 3, five terms) separates the two
    np.testing.assert_allclose(as_float64(half), as_float64(expected), rtol=2 ** -10, atol=5 * 3 * 2 ** -11)


def test_contexts_nest_disable_and_decorate(device):
    x, w = device.tensor(X), device.tensor(W)

    @zyx.autocast(zyx.float16)
    def product():
        return x @ w.T

    assert zyx.autocast_dtype() is None
    with zyx.autocast():
        assert (x @ w.T).dtype == zyx.bfloat16
        with zyx.autocast(enabled=False):
            assert zyx.autocast_dtype() is None and (x @ w.T).dtype == zyx.float32
            assert product().dtype == zyx.float16
        assert zyx.autocast_dtype() is zyx.bfloat16
    assert (x @ w.T).dtype == zyx.float32
    with pytest.raises(TypeError, match="float16 or zyx.bfloat16, got float32"):
        zyx.autocast(zyx.float32)


def test_layers_cast_as_their_functions(device):
    zyx.manual_seed(2)
    conv, linear = nn.Conv2d(2, 3, 3, device=device), nn.Linear(5, 3, device=device)
    image, x = device.tensor(IMAGE), device.tensor(X)
    with zyx.autocast():
        outputs = [conv(image), linear(x)]
    for got, expected in zip(outputs, [image.conv2d(conv.weight, conv.bias), x.linear(linear.weight, linear.bias)]):
        assert got.dtype == zyx.bfloat16
        np.testing.assert_allclose(as_float64(got), expected.numpy(), rtol=2 ** -6, atol=2 ** -5)


def test_gradients_reach_float32_parameters_as_torch_autocast_gives_them(device):
    x, w, b = device.tensor(X), device.tensor(W), device.tensor(B)
    with zyx.autocast():
        loss = nn.functional.cross_entropy(x.linear(w, b).tanh(), device.tensor(LABELS))
    grads = loss.backward([w, b])
    tw, tb = torch.tensor(W, requires_grad=True), torch.tensor(B, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch_loss = TF.cross_entropy(TF.linear(torch.tensor(X), tw, tb).tanh(), torch.tensor(LABELS))
    torch_loss.backward()
    assert loss.dtype == zyx.float32
    for got, expected in zip(grads, (tw.grad, tb.grad)):
        assert got.dtype == zyx.float32
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=2 ** -6, atol=2 ** -7)


def make_mlp(device):
    zyx.manual_seed(3)
    return nn.Sequential(nn.Linear(5, 16, device=device), nn.ReLU(), nn.Linear(16, 3, device=device))


def train(device, steps, dtype=None, jit=False):
    """Losses of `steps` Adam steps on a fixed batch, in float32 or under autocast(dtype)."""
    model, opt = make_mlp(device), nn.Adam(lr=0.02)
    x, labels = device.tensor(X), device.tensor(LABELS)

    def step(x, labels):
        with zyx.autocast(dtype or zyx.bfloat16, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(x), labels)
        opt.update(model.parameters(), loss.backward(model.parameters()), realize_with=[loss])
        return loss

    run = zyx.jit(step) if jit else step
    return [run(x, labels).item() for _ in range(steps)], model, run


def test_a_small_mlp_trains_in_bfloat16_to_the_float32_loss(device):
    float32_losses, _, _ = train(device, 30)
    bf16_losses, model, _ = train(device, 30, zyx.bfloat16)
    assert float32_losses[-1] < 0.5 * float32_losses[0]
    assert bf16_losses[-1] == pytest.approx(float32_losses[-1], rel=0.05, abs=0.01)
    assert all(p.dtype == zyx.float32 for p in model.parameters())  # master weights stay float32


def test_a_jitted_step_under_autocast_matches_the_eager_step(device):
    eager, eager_model, _ = train(device, 4, zyx.bfloat16)
    jitted, jit_model, step = train(device, 4, zyx.bfloat16, jit=True)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    for ours, theirs in zip(jit_model.parameters(), eager_model.parameters()):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6, atol=1e-7)
    if device.kind in CAPTURING_KINDS:
        assert len(step.captured) == 1


def test_the_autocast_state_around_a_call_guards_its_replay(device):
    x, w = device.tensor(X), device.tensor(W)
    product = zyx.jit(lambda x: x @ w.T)
    plain = product(x)
    with zyx.autocast():
        half = product(x)
    assert (plain.dtype, half.dtype, product(x).dtype) == (zyx.float32, zyx.bfloat16, zyx.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = torch.tensor(X) @ torch.tensor(W).T
    np.testing.assert_allclose(as_float64(half), as_float64(expected), **BF16_TOLERANCE)
    np.testing.assert_allclose(plain.numpy(), X @ W.T, rtol=1e-6)


SCRIPT = textwrap.dedent("""
    import numpy as np, zyx
    from zyx import nn
    dev = zyx.OpenCL()
    zyx.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8, device=dev), nn.ReLU(), nn.Linear(8, 2, device=dev))
    opt = nn.SGD(lr=0.1)
    x = dev.tensor(np.linspace(-1, 1, 24, dtype=np.float32).reshape(6, 4))
    y = dev.tensor(np.array([0, 1, 1, 0, 1, 0]))
    @zyx.jit
    def step(x, y):
        with zyx.autocast(zyx.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.update(model.parameters(), loss.backward(model.parameters()))
        return loss
    zyx.reset_stats()
    losses = [step(x, y).item() for _ in range(3)]
    s = zyx.stats()
    print(s["graphs_scheduled"], s["kernels_compiled"], repr(losses))
""")


def run_script(cache_dir):
    env = dict(os.environ, ZYX_CACHE_DIR=str(cache_dir))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         check=True).stdout.split(maxsplit=2)
    return int(out[0]), int(out[1]), eval(out[2])


def test_a_second_process_replays_the_persisted_autocast_program(tmp_path):
    scheduled, compiled, losses = run_script(tmp_path)
    assert scheduled >= 1 and compiled >= 1
    assert run_script(tmp_path) == (0, 0, losses)


def test_means_variances_and_batch_norm_keep_half_precision_as_pytorchs_cuda_autocast(device):
    """PyTorch's CUDA autocast lists neither mean, var, std nor batch_norm: they keep a half-precision input's dtype
    (accumulating in float32), though sum, which autocast runs in float32, is what zyx builds them on."""
    x = device.tensor(X)
    with zyx.autocast(zyx.bfloat16):
        half = x @ device.tensor(W).T  # bfloat16
        results = {"mean": half.mean(0), "var": half.var(0), "std": half.std(0),
                   "batch_norm": nn.functional.batch_norm(half, None, None, device.tensor(np.ones(W.shape[0], np.float32)),
                                                          device.tensor(np.zeros(W.shape[0], np.float32)), training=True)}
    rounded = torch.tensor(X @ W.T).bfloat16().double()
    expected = {"mean": rounded.mean(0), "var": rounded.var(0), "std": rounded.std(0),
                "batch_norm": TF.batch_norm(rounded, None, None, training=True)}
    for name, got in results.items():
        assert got.dtype == zyx.bfloat16, name
        np.testing.assert_allclose(as_float64(got), expected[name].numpy(), rtol=1e-2, atol=1e-2, err_msg=name)
