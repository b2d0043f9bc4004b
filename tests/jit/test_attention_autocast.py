"""Fused attention under zyx.autocast (bfloat16, float16): scaled_dot_product_attention's half-precision trace (q, k
and v cast down, the scores' product, the softmax and the product with v in the autocast dtype) takes the fused
forward in each form (staged, tiled, rows) and the fused backward, on the device's own kernels and GPU-shaped ones;
no buffer of queries x keys is stored; outputs and gradients match the unfused kernels' and torch's CPU autocast
within `assert_close`'s tolerance."""
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zyx
from zyx.jit.attention_grad import gradients_share_kernels
from zyx.jit.kernel_ir import Role
from zyx.jit.schedule import schedule

from test_attention_grad import UNFUSED, marked_long, spans
from test_attention_tiled import is_tiled

DTYPES = {"bfloat16": (zyx.bfloat16, torch.bfloat16), "float16": (zyx.float16, torch.float16)}
EPSILON = {"bfloat16": 2.0 ** -7, "float16": 2.0 ** -10}  # machine epsilon: 1 ulp of values in [1, 2)
CASES = {  # name: (batch, heads, queries, keys, head size, keyword arguments); head sizes the tiled form takes
    "causal, odd, d=32": (2, 3, 37, 37, 32, {"is_causal": True}),
    "not causal, scaled, fewer queries than keys, d=32": (1, 2, 19, 45, 32, {"scale": 0.3}),
    "causal, blocks skipped, the last short, d=64": (1, 2, 100, 100, 64, {"is_causal": True}),
}
# (dtype, case): bfloat16 (W7's) in every case, float16 in the first
DTYPE_CASES = [("bfloat16", name) for name in CASES] + [("float16", next(iter(CASES)))]


@pytest.fixture(autouse=True)
def fuse_any_size(monkeypatch):
    """These small inputs take the fused kernels too (by default a CPU fuses only large probability matrices)."""
    monkeypatch.setenv("ZYX_ATTENTION_MIN_BYTES", "0")


def attention_arrays(case: tuple, seed: int) -> tuple:
    """q, k, v and the output's gradient dO of a case (batch, heads, queries, keys, head size, keywords), standard
    normal."""
    batch, heads, queries, keys, head, _ = case
    rng = np.random.default_rng(seed)
    shapes = [(batch, heads, queries, head), (batch, heads, keys, head), (batch, heads, keys, head),
              (batch, heads, queries, head)]
    return tuple(rng.standard_normal(shape).astype(np.float32) for shape in shapes)


@functools.lru_cache(maxsize=None)
def arrays_of(name):
    """attention_arrays of CASES[name]."""
    return attention_arrays(CASES[name], 31)


def zyx_step(device, name, dtype):
    """The output (in the autocast dtype) and the float32 gradients of sum(out * dO) for q, k, v (unrealized)."""
    q, k, v, grad_out = (device.tensor(a) for a in arrays_of(name))
    with zyx.autocast(DTYPES[dtype][0]):
        out = zyx.nn.scaled_dot_product_attention(q, k, v, **CASES[name][-1])
    return out, (out * grad_out).sum().backward([q, k, v])


@functools.lru_cache(maxsize=None)
def torch_step(name, dtype):
    """torch's output and gradients under its CPU autocast, as float32 arrays."""
    q, k, v = (torch.tensor(a, requires_grad=True) for a in arrays_of(name)[:3])
    with torch.autocast("cpu", dtype=DTYPES[dtype][1]):
        out = F.scaled_dot_product_attention(q, k, v, **CASES[name][-1])
    grads = torch.autograd.grad((out.float() * torch.tensor(arrays_of(name)[3])).sum(), [q, k, v])
    return out.detach().float().numpy(), [g.numpy() for g in grads]


def unfused_step(device, monkeypatch, name, dtype):
    """The unfused kernels' output and gradients (products and a row softmax, P stored), as float32 arrays."""
    monkeypatch.setenv("ZYX_ATTENTION_MIN_BYTES", UNFUSED)
    out, grads = zyx_step(device, name, dtype)
    zyx.realize(out, *grads)
    monkeypatch.setenv("ZYX_ATTENTION_MIN_BYTES", "0")
    return as_float(out), [g.numpy() for g in grads]


def as_float(tensor):
    return tensor.cast(zyx.float32).numpy()


def assert_close(found, expected, dtype, what):
    """Within 4 machine epsilons of `dtype` times the largest expected value. Both sides round q, k, v, the
    scores (their float32 sums, added in other orders, may round one ulp apart), the exponentials and the output
    to `dtype`; the fused kernel rounds exp(x - m) with the running maximum m before the division by the row's sum
    where the unfused one rounds P = exp(x - M) / l, so each term of an output (a weighted mean of v's rows) or of
    a gradient may differ by about 2 epsilons of its size, and the output by one ulp more where it is stored."""
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(found, expected, rtol=0, atol=4 * EPSILON[dtype] * scale, err_msg=what)


def fused_forward(out, device, form):
    """The one kernel scheduled for `out`, checked to be `form`'s fused kernel."""
    kernels, _ = schedule([out.node], device.traits)
    assert len(kernels) == 1 and kernels[0].ir.kind == "a", [k.name for k in kernels]
    kernel = kernels[0]
    assert (kernel.ir.axis(Role.LOCAL) is not None) == (form != "rows") and is_tiled(kernel) == (form == "tiled")
    return kernel


def device_of(request, kernels):
    """The OpenCL device scheduling its own kernels or GPU-shaped ones (conftest's fixtures)."""
    return request.getfixturevalue("gpu" if kernels == "GPU-shaped" else "dev")


# the forms and the kernels they run as: the tiled form is a GPU's (on a CPU the staged or per-row one is chosen)
FORWARD_FORMS = [("staged", "own"), ("staged", "GPU-shaped"), ("tiled", "GPU-shaped"), ("rows", "own"),
                 ("rows", "GPU-shaped")]


# float16's staged kernels are bfloat16's but for the conversions, which its per-row cases check (each staged case
# took 20-45 s of PoCL)
@pytest.mark.parametrize("dtype, name, form, kernels", marked_long(
    [(*case, *form) for case in DTYPE_CASES for form in FORWARD_FORMS],
    lambda dtype, name, form, kernels: dtype == "float16" and form == "staged"))
def test_forward_is_the_fused_kernel_and_matches(request, monkeypatch, form, kernels, dtype, name):
    device = device_of(request, kernels)
    monkeypatch.setenv("ZYX_ATTENTION_FORM", form)
    out, _ = zyx_step(device, name, dtype)
    assert out.dtype == DTYPES[dtype][0]
    fused_forward(out, device, form)
    found = as_float(out)
    assert_close(found, unfused_step(device, monkeypatch, name, dtype)[0], dtype, "against the unfused kernels")
    assert_close(found, torch_step(name, dtype)[0], dtype, "against torch")


GRADIENT_FORMS = [("staged", "own"), ("staged", "GPU-shaped"), ("rows", "own")]
# float16 in the per-row form only: its staged cases took 142 s (GPU-shaped) and 98-160 s (own) of PoCL in the
# suite (bfloat16's 20-23 s), the same kernels as bfloat16's but for the conversions, which the forward tests cover
# (with --long: the staged form's own kernels, and both staged kinds on the second case; the staged GPU-shaped
# kernels run in the default suite on the first)
GRADIENT_CASES = marked_long(
    [(dtype, name, form, kernels) for dtype, name in DTYPE_CASES[:2] for form, kernels in GRADIENT_FORMS]
    + [(*DTYPE_CASES[3], "rows", "own")],
    lambda dtype, name, form, kernels: form == "staged" and (kernels == "own" or name != DTYPE_CASES[0][1]))


@pytest.mark.parametrize("dtype, name, form, kernels", GRADIENT_CASES)
def test_gradients_take_the_fused_backward_and_match(request, monkeypatch, form, kernels, dtype, name):
    """The forward, dQ and dK with dV (or dK and dV apart) in attention kernels, no queries x keys buffer."""
    shaped = device_of(request, kernels)
    monkeypatch.setenv("ZYX_ATTENTION_FORM", form)
    out, grads = zyx_step(shaped, name, dtype)
    kernels, _ = schedule([out.node] + [g.node for g in grads], shaped.traits)
    fused = [k for k in kernels if k.ir.kind == "a"]
    assert len(fused) == (3 if gradients_share_kernels(shaped.traits.gpu) else 4), [k.name for k in kernels]
    queries, keys = CASES[name][2:4]
    assert not [node for k in kernels for node in k.outputs if spans(node.shape, queries, keys)], "a T x T buffer"
    zyx.realize(out, *grads)
    found = [as_float(out)] + [g.numpy() for g in grads]
    unfused_out, unfused_grads = unfused_step(shaped, monkeypatch, name, dtype)
    torch_out, torch_grads = torch_step(name, dtype)
    for value, unfused, reference, what in zip(found, [unfused_out, *unfused_grads], [torch_out, *torch_grads],
                                               ("out", "dq", "dk", "dv")):
        assert_close(value, unfused, dtype, f"{what} against the unfused kernels")
        assert_close(value, reference, dtype, f"{what} against torch")


def hand_written(q, k, v, mask):
    """Causal attention written out (zyx or torch tensors): under autocast the scores' product is half precision,
    the softmax float32 (its input cast up), P cast down for the product with v."""
    scores = (q @ k.transpose(-1, -2)) * 0.25
    return (scores.masked_fill(mask, float("-inf")) if isinstance(scores, torch.Tensor)
            else mask.where(float("-inf"), scores)).softmax(-1) @ v


@pytest.mark.parametrize("form, kernels", marked_long([("staged", "own"), ("staged", "GPU-shaped"),
                                                       ("tiled", "GPU-shaped"), ("rows", "own")],
                                                      lambda form, kernels: form == "staged" and kernels == "own"))
def test_hand_written_attention_with_a_float32_softmax(request, monkeypatch, form, kernels):
    """The casts between the products and the softmax are taken in: one forward kernel, the fused backward, no
    queries x keys buffer; values as the unfused kernels' and torch's (bfloat16)."""
    device = device_of(request, kernels)
    monkeypatch.setenv("ZYX_ATTENTION_FORM", form)
    q, k, v, grad_out = arrays_of(next(iter(CASES)))
    length = q.shape[-2]

    def step():
        tensors = [device.tensor(a) for a in (q, k, v, grad_out)]
        with zyx.autocast(zyx.bfloat16):
            out = hand_written(*tensors[:3], zyx.nn.causal_mask(length, length, device))
        return out, (out * tensors[3]).sum().backward(tensors[:3])
    out, grads = step()
    assert out.dtype == zyx.bfloat16
    fused_forward(out, device, form)
    kernels_run, _ = schedule([out.node] + [g.node for g in grads], device.traits)
    assert len([k for k in kernels_run if k.ir.kind == "a"]) == (3 if gradients_share_kernels(device.traits.gpu)
                                                                  else 4), [k.name for k in kernels_run]
    assert not [node for k in kernels_run for node in k.outputs if spans(node.shape, length, length)]
    zyx.realize(out, *grads)
    found = [as_float(out)] + [g.numpy() for g in grads]
    monkeypatch.setenv("ZYX_ATTENTION_MIN_BYTES", UNFUSED)
    unfused_out, unfused_grads = step()
    zyx.realize(unfused_out, *unfused_grads)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected_out = hand_written(tq, tk, tv, torch.ones(length, length, dtype=torch.bool).triu(1))
    expected = torch.autograd.grad((expected_out.float() * torch.tensor(grad_out)).sum(), [tq, tk, tv])
    for value, unfused, reference, what in zip(found, [as_float(unfused_out)] + [g.numpy() for g in unfused_grads],
                                               [expected_out.detach().float().numpy(), *expected],
                                               ("out", "dq", "dk", "dv")):
        assert_close(value, unfused, "bfloat16", f"{what} against the unfused kernels")
        assert_close(value, np.asarray(reference, dtype=np.float32), "bfloat16", f"{what} against torch")
