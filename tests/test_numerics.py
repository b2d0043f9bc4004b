"""Numerics the code generator must get right on every device: saturating tanh, half precision accumulated in float32."""
import numpy as np
import pytest
import torch

import zyx

RNG = np.random.default_rng(5)


def _grid(dtype: str) -> np.ndarray:
    """Dense over [-30, 30], with ±inf, nan, ±0 and subnormals; a multiple of 16 long (vector kernels)."""
    info = np.finfo(dtype)
    special = [np.inf, -np.inf, np.nan, 0.0, -0.0, float(info.tiny), -float(info.tiny), float(info.tiny) / 8,
               -float(info.tiny) / 8, float(info.max), -float(info.max)]
    values = np.concatenate([np.linspace(-30, 30, 20_000 - len(special) - 5), special,
                             [8.9, 9.1, 19.0, 19.2, 350.0]]).astype(dtype)
    return values


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_tanh_matches_numpy_and_saturates_at_one(device, dtype):
    x = _grid(dtype)
    out = device.tensor(x).tanh().numpy()
    expected = np.tanh(x.astype(np.float64)).astype(dtype)
    assert np.array_equal(np.isnan(out), np.isnan(expected))
    ulps = np.abs(out.astype(np.float64) - expected) / np.spacing(np.abs(expected)).astype(np.float64)
    assert np.nanmax(ulps) <= 2  # PoCL and numpy give 1 ulp, NVIDIA's OpenCL 2 (H200; OpenCL allows 5)
    saturated = np.abs(x) > 20
    np.testing.assert_array_equal(out[saturated], np.sign(x[saturated]))


@pytest.mark.parametrize("x", [-350.0, -20.0, 0.0, 20.0, 350.0])
def test_tanh_gelu_values_and_gradients_match_torch(device, x):
    t = device.tensor(np.array([x], np.float32))
    y = t.gelu(approximate="tanh")
    grad, = y.sum().backward([t])
    reference = torch.tensor([x], dtype=torch.float32, requires_grad=True)
    expected = torch.nn.functional.gelu(reference, approximate="tanh")
    expected.sum().backward()
    np.testing.assert_allclose(y.numpy(), expected.detach().numpy(), rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(grad.numpy(), reference.grad.numpy(), rtol=1e-6, atol=1e-30)


def _within_one_half_ulp(out: np.ndarray, exact: np.ndarray, float32_error: object = 0.0) -> None:
    """float16 results of float32 accumulation: the exact value (give or take `float32_error`) rounded once, at
    most one ulp off with double rounding; accumulating in float16 is off by several ulps."""
    ulp = np.spacing(np.maximum(np.abs(exact), np.abs(out)).astype(np.float16)).astype(np.float64)
    error = np.abs(out.astype(np.float64) - exact) - float32_error
    assert (error <= ulp).all(), f"{(error > ulp).sum()} of {error.size} off by more than an ulp: {error.max()}"


def test_a_float16_product_accumulates_in_float32(device):
    a = RNG.standard_normal((64, 64)).astype(np.float16)
    b = RNG.standard_normal((64, 64)).astype(np.float16)
    out = (device.tensor(a) @ device.tensor(b)).numpy()
    assert out.dtype == np.float16
    magnitude = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    _within_one_half_ulp(out, a.astype(np.float64) @ b.astype(np.float64), 64 * 2.0**-24 * magnitude)


@pytest.mark.parametrize("name", ["sum", "mean", "var"])
@pytest.mark.parametrize("length", [3000, 60_000])  # one loop, and two stages
def test_float16_reductions_accumulate_in_float32(device, name, length):
    x = RNG.uniform(0, 1, (4, length)).astype(np.float16)
    out = getattr(device.tensor(x), name)(-1).numpy()
    exact = getattr(x.astype(np.float64), name)(-1, **({"ddof": 1} if name == "var" else {}))
    assert out.dtype == np.float16
    _within_one_half_ulp(out, exact)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("length", [1, 4096])  # one value, and vector lanes on CPUs
def test_a_half_precision_value_is_rounded_where_computed_as_if_stored(device, dtype, length):
    """Kept in a register (fused) or stored and read back, a half-precision result is the same number: a jitted
    step (scheduled whole) gives what the eager one (scheduled in pieces) gives."""
    x, y = (device.tensor(RNG.standard_normal((4, length)).astype(np.float32)).to(dtype) for _ in range(2))

    def after(value):
        return (value.float() * 3.0).numpy()

    for value in (x + y, x * y + x, (x * y).sum(-1)):
        fused = after(value)
        np.testing.assert_array_equal(fused, after(value.realize()))


@pytest.mark.parametrize("length", [1, None])  # one value (a scalar kernel), and vector lanes on CPUs
def test_a_value_rounded_to_float16_in_a_kernel_is_numpys_float16(device, length, float16_ties):
    """A float16 value computed and used in one kernel (not stored) is rounded in registers: bit for bit what
    numpy's cast gives, at every tie."""
    values = float16_ties[:length] if length else float16_ties
    out = (device.tensor(values).to("float16").float() * 2.0).numpy()
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).astype(np.float32) * 2.0
    same = (out.view(np.uint32) == expected.view(np.uint32)) | (np.isnan(out) & np.isnan(expected))
    assert same.all(), (values[~same][:5], out[~same][:5], expected[~same][:5])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_argmax_of_a_half_precision_product_picks_a_maximum(device, dtype):
    """argmax compares each value with the row's maximum: both must be the rounded numbers (a maximum's terms
    are not kept in float32 as a sum's are), else no value equals the maximum and the index is out of range."""
    x, w, b = (device.tensor(RNG.standard_normal(shape).astype(np.float32)) for shape in ((64, 64), (10, 64), (10,)))

    def predict(x):
        with zyx.autocast(dtype):
            return x.linear(w, b).argmax(-1)

    with zyx.autocast(dtype):
        logits = x.linear(w, b).numpy().astype(np.float32)
    expected = logits.argmax(-1)
    np.testing.assert_array_equal(predict(x).numpy(), expected)
    np.testing.assert_array_equal(zyx.jit(predict)(x).numpy(), expected)
