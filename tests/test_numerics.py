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

    selections = ((x < y).where(float("-inf"), x * y), (x * y).maximum(0.0), (x < y).where(0.1, -(x * y)))
    for value in (x + y, x * y + x, (x * y).sum(-1), *selections):  # (selections of rounded values: not rounded)
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


_ROWS = 257  # an odd row length: no vector width divides it
HALF_ROUNDED_ONCE = {  # name: (zyx, torch) of a (64, 257) half tensor; both computed once exactly enough to round
    **{name: (lambda x, name=name: getattr(x, name)(-1), lambda x, name=name: getattr(x, name)(-1))
       for name in ("mean", "var", "std", "softmax", "log_softmax", "logsumexp")},
    "norm": (lambda x: x.norm(axis=-1), lambda x: x.norm(dim=-1)),
    "normalize": (lambda x: x.normalize(dim=-1), lambda x: torch.nn.functional.normalize(x, dim=-1)),
    "cumsum": (lambda x: x.cumsum(1), lambda x: x.cumsum(1)),
    "cumprod": (lambda x: x[:, :40].cumprod(1), lambda x: x[:, :40].cumprod(1)),
    "prod": (lambda x: x[:, :20].prod(-1), lambda x: x[:, :20].prod(-1)),
    "layer_norm with float32 weight and bias": (
        lambda x: zyx.nn.functional.layer_norm(x, (_ROWS,), *(x.device.tensor(a) for a in _AFFINE)),
        lambda x: torch.nn.functional.layer_norm(x, (_ROWS,), *(torch.tensor(a, dtype=x.dtype) for a in _AFFINE))),
    "rms_norm, the dtype's epsilon": (
        lambda x: zyx.nn.functional.rms_norm(x, (_ROWS,)),
        lambda x: torch.nn.functional.rms_norm(x, (_ROWS,), eps=_EPSILON[x.half_dtype])),
    "group_norm": (lambda x: zyx.nn.functional.group_norm(x.reshape(64, 1, _ROWS), 1),
                   lambda x: torch.nn.functional.group_norm(x.reshape(64, 1, _ROWS), 1)),
    "batch_norm": (lambda x: zyx.nn.functional.batch_norm(x, None, None, training=True),
                   lambda x: torch.nn.functional.batch_norm(x, None, None, training=True)),
    **{name: (lambda x, name=name: getattr(x, name)(), lambda x, name=name: getattr(x, name)())
       for name in ("exp2", "log2", "log1p", "expm1")},
    "avg_pool2d": (lambda x: _planes(x).avg_pool2d(3, 2, 1),
                   lambda x: torch.nn.functional.avg_pool2d(_planes(x), 3, 2, 1)),
    "bilinear interpolate": (
        lambda x: zyx.nn.functional.interpolate(_planes(x), scale_factor=2, mode="bilinear"),
        lambda x: torch.nn.functional.interpolate(_planes(x), scale_factor=2, mode="bilinear")),
    "cross_entropy": (lambda x: zyx.nn.functional.cross_entropy(x, x.device.tensor(_TARGETS)) * 64,
                      lambda x: torch.nn.functional.cross_entropy(x, torch.tensor(_TARGETS)) * 64),
    "nll_loss": (lambda x: zyx.nn.functional.nll_loss(x, x.device.tensor(_TARGETS), reduction="sum"),
                 lambda x: torch.nn.functional.nll_loss(x, torch.tensor(_TARGETS), reduction="sum")),
}
_INPUTS = {"log2": lambda n: np.abs(n) * 3, "log1p": lambda n: np.abs(n) * 3, "expm1": lambda n: n,  # (float16's range)
           "prod": lambda n: n / 16 + 1, "cumprod": lambda n: n / 16 + 1}  # others: n * 3, n standard normal


def _planes(x):
    """(4, 16, 16, 16) images of the (64, 257) input's first 256 columns."""
    return x.reshape(4, 16, _ROWS)[..., :256].reshape(4, 16, 16, 16)


_AFFINE = [RNG.standard_normal(_ROWS).astype(np.float32) for _ in range(2)]
_TARGETS = RNG.integers(0, _ROWS, 64)
_EPSILON = {"bfloat16": 2.0**-7, "float16": 2.0**-10}


def _units(actual: np.ndarray, exact: np.ndarray, dtype: str, floor: float) -> float:
    """The largest error in units of the half type's last place at max(|exact|, floor) (|x| * 2^-p: between one
    ulp and two)."""
    unit = np.maximum(np.abs(exact), floor) * _EPSILON[dtype]
    return float(np.max(np.abs(actual.astype(np.float64) - exact) / unit))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", list(HALF_ROUNDED_ONCE))
def test_half_reductions_softmax_and_norms_are_computed_in_float32_and_rounded_once(device, name, dtype):
    """Reductions (mean, var, std, norm, prod, the scans, average pools), softmax, log_softmax, logsumexp, the norms,
    the class losses, linear interpolation and the composite exp2, log2, log1p, expm1 of a half tensor are computed
    in float32 and rounded once to its dtype, their gradients too: within half
    a unit in the last place of the exact value (float64 on the same rounded inputs), where each step rounding to
    the dtype was up to 4 units off (layer_norm, prod) or 39 (log_softmax) or 750 (cumsum), and PyTorch's CPU
    gradients of softmax and layer_norm are 6-12. The loss of half logits is the dtype too, as PyTorch's (it was
    float32)."""
    ours, theirs = HALF_ROUNDED_ONCE[name]
    rng = np.random.default_rng(7)
    inputs = _INPUTS.get(name, lambda n: n * 3)(rng.standard_normal((64, _ROWS)))
    values = torch.tensor(inputs).to(getattr(torch, dtype)).double()
    x = values.clone().requires_grad_()
    x.half_dtype = dtype
    expected = theirs(x)
    seed = torch.tensor(rng.standard_normal(expected.shape)).to(getattr(torch, dtype)).double()
    expected_grad = torch.autograd.grad((expected * seed).sum(), x)[0].numpy()
    z = device.tensor(values.float().numpy()).to(dtype)
    out = ours(z)
    grad = (out * device.tensor(seed.float().numpy()).to(dtype)).sum().backward([z])[0]
    zyx.realize(out, grad)
    assert out.dtype.name == dtype and grad.dtype.name == dtype, (out.dtype, grad.dtype)
    value_error = _units(out.float().numpy(), expected.detach().numpy(), dtype, 0.05)
    grad_error = _units(grad.float().numpy(), expected_grad, dtype, 0.01 * np.abs(expected_grad).max())
    assert value_error < 0.55 and grad_error < 0.55, f"value {value_error:.2f}, gradient {grad_error:.2f} units off"
