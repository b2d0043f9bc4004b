"""What a PyTorch user writes works and gives PyTorch's answer: `dim=`, `.to`, `.size()`, the cast shorthands,
`masked_fill`, `pow`, `norm`, `log1p`, `expm1`, formatting, `zyx.Tensor(data)`, pickling, DLPack, the small
integer dtypes and bfloat16, indexing rules and IndexError; and the spellings zyx does not take explain why."""
from __future__ import annotations

import math
import pickle

import ml_dtypes
import numpy as np
import pytest
import torch

import zyx

RNG = np.random.default_rng(13)
X = RNG.standard_normal((3, 4)).astype(np.float32)


def close(actual, expected, rtol=1e-5, atol=1e-6):
    # (a torch tensor may be on a GPU: torch.from_dlpack(t) of a zyx.Torch('cuda') tensor shares its buffer)
    expected = expected.detach().cpu().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    actual = actual.numpy() if isinstance(actual, zyx.Tensor) else \
        actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol)


def close_all(pairs, exact=False, **tolerance):
    """Each (zyx result, expected) pair equal (`exact`: same dtype name and values) or close; the zyx results are
    realized together, so a cold cache compiles their kernels in a few builds rather than one each."""
    zyx.realize(*(got for got, _ in pairs))
    for got, expected in pairs:
        if exact:
            assert got.dtype.name == str(expected.dtype).removeprefix("torch.")
            np.testing.assert_array_equal(got.numpy(), expected.numpy())
        else:
            close(got, expected, **tolerance)


# ---- dim as an alias of axis -------------------------------------------------------------------------------

def test_dim_is_axis_everywhere(device):
    t, x = zyx.tensor(X, device=device), torch.tensor(X)
    close_all([(t.sum(dim=1), x.sum(dim=1)), (t.mean(dim=(0, 1), keepdim=True), x.mean(dim=(0, 1), keepdim=True)),
               (t.max(dim=0), x.max(dim=0).values), (t.argmax(dim=1), x.argmax(dim=1)),
               (t.softmax(dim=0), x.softmax(dim=0)), (t.log_softmax(dim=-1), x.log_softmax(dim=-1)),
               (t.cumsum(dim=1), x.cumsum(dim=1)), (t.var(dim=1), x.var(dim=1)),
               (t.unsqueeze(dim=1).squeeze(dim=1), x), (t.flip(dims=(0, 1)), x.flip(dims=(0, 1))),
               (zyx.cat([t, t], dim=1), torch.cat([x, x], dim=1)),
               (zyx.stack([t, t], dim=2), torch.stack([x, x], dim=2))])
    assert t.size(dim=1) == x.size(dim=1)
    with pytest.raises(TypeError, match="axis= and dim="):
        t.sum(axis=0, dim=1)


# ---- conversions -------------------------------------------------------------------------------------------

def test_to_device_and_dtype(device):
    t = zyx.tensor(X, device=device)
    assert t.to(zyx.float16).dtype == zyx.float16 and t.to("float64").dtype == zyx.float64
    assert t.to(device) is t and t.to(dtype=zyx.float32) is t
    moved = t.to(zyx.CPU(), "int32")
    assert moved.device is zyx.CPU() and moved.dtype == zyx.int32
    close(moved, torch.tensor(X).to(torch.int32))
    like = zyx.zeros(2, dtype=zyx.int64).to(device)
    assert like.device is device and t.to(like).dtype == zyx.int64
    with pytest.raises(TypeError, match="neither a device"):
        t.to("cuda")


@pytest.mark.parametrize("name", ["long", "int", "short", "char", "byte", "half", "bfloat16", "double", "float",
                                  "bool"])
def test_cast_shorthands_match_torch(device, name):
    values = np.array([[0.0, 1.5, -2.25], [3.0, 0.5, 100.0]], dtype=np.float32)
    if name == "byte":
        values = np.abs(values)  # float to uint8 of a negative number is undefined
    got, expected = getattr(zyx.tensor(values, device=device), name)(), getattr(torch.tensor(values), name)()
    assert got.dtype.name == str(expected.dtype).removeprefix("torch.")
    close(got, expected.float(), rtol=0, atol=0)


def test_size_clone_detach(device):
    t, x = zyx.tensor(X, device=device), torch.tensor(X)
    assert t.size() == tuple(x.size()) and t.size(-1) == x.size(-1)
    with pytest.raises(IndexError):
        zyx.tensor(1.0, device=device).size(0)
    clone = t.clone()
    clone.assign(clone * 2)
    close(t, X)
    close(clone, X * 2)
    grad, = (t.detach() * t).backward([t])
    close(grad, X)


def test_operator_methods_and_axis_spellings_match_torch(device):
    """The operators as methods (`add` and `sub` with alpha, `mul`, `neg`, the comparisons and their long names),
    `frac`, `dim`, `mm`, `t`, `select`, `unbind`, `movedim` (ints or sequences), `swapaxes`, `type_as`, `view_as`,
    `new_zeros`/`new_ones`/`new_full`, `cpu`; `t` and `mm` refuse what PyTorch's refuse, naming the shapes."""
    a = RNG.standard_normal((2, 3, 4)).astype(np.float32) * 3
    t, x = zyx.tensor(a, device=device), torch.tensor(a)
    pairs = [(t.add(t, alpha=2), x.add(x, alpha=2)), (t.sub(1.5, alpha=3), x.sub(1.5, alpha=3)),
             (t.mul(t), x.mul(x)), (t.neg(), x.neg()), (t.subtract(t.negative()), x.subtract(x.negative())),
             (t.frac(), x.frac()), (t[0].mm(t[1].t()), x[0].mm(x[1].t())), (t.select(1, -1), x.select(1, -1)),
             (t.movedim(0, -1), x.movedim(0, -1)), (t.movedim((0, 1), (2, 0)), x.movedim((0, 1), (2, 0))),
             (t.swapaxes(0, 2), x.swapaxes(0, 2)), (t.view_as(t.reshape(6, 4)), x.view_as(x.reshape(6, 4))),
             *zip(t.unbind(dim=2), x.unbind(dim=2))]
    pairs += [(getattr(t, name)(0.5).cast(zyx.int64), getattr(x, name)(0.5).long())
              for name in ("gt", "ge", "lt", "le", "ne", "greater", "less_equal", "not_equal")]
    close_all(pairs)
    assert t.dim() == t.ndimension() == 3 and t[0, 0, 0].t().shape == ()
    assert t.type_as(zyx.tensor([1], device=device)).dtype == zyx.int64
    assert t.new_zeros(2, 5).shape == (2, 5) and t.new_zeros(2, 5).device is device
    assert t.new_ones((3,)).tolist() == [1, 1, 1] and t.new_full((2,), 7, dtype=zyx.int32).tolist() == [7, 7]
    assert t.cpu().device.kind == "cpu" and np.array_equal(t.cpu().numpy(), a)
    with pytest.raises(zyx.ShapeError, match=r"t: expects a tensor of at most 2 axes, got shape \(2, 3, 4\)"):
        t.t()
    with pytest.raises(zyx.ShapeError, match=r"mm: expects two 2-D tensors, got shapes \(2, 3, 4\) and \(3, 4\)"):
        t.mm(t[0])


def test_randint_and_from_numpy(device):
    """randint(high, size) and randint(low, high, size): int64 (or the dtype asked for) in [low, high), every value
    drawn; from_numpy keeps the array's dtype and copies it; bad bounds and non-arrays raise."""
    drawn = zyx.randint(-3, 4, (4000,), device=device).numpy()
    assert drawn.dtype == np.int64 and set(np.unique(drawn)) == set(range(-3, 4))
    assert np.bincount(drawn + 3).min() > 400  # (about 571 each)
    assert zyx.randint(5, (2, 3), device=device, dtype=zyx.int32).dtype == zyx.int32
    array = np.arange(4, dtype=np.int16)
    copied = zyx.from_numpy(array, device=device)
    array[0] = 9
    assert copied.dtype == zyx.int16 and copied.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="randint: expected low < high"):
        zyx.randint(5, 5, (2,))
    with pytest.raises(TypeError, match="randint: low and high must be integers"):
        zyx.randint(2.5, (2,))
    with pytest.raises(TypeError, match="from_numpy: expected a numpy.ndarray, got list"):
        zyx.from_numpy([1, 2])


def test_format_and_tensor_constructor(device):
    loss = zyx.tensor(2.0 / 3, device=device)
    assert f"{loss:.4f}" == f"{torch.tensor(2.0 / 3):.4f}" == "0.6667"
    assert f"{loss.reshape(1, 1):.2e}" == "6.67e-01"  # any one-element tensor (PyTorch: only 0-d ones)
    assert f"{loss}" == str(loss)
    with pytest.raises(TypeError, match="one element"):
        f"{zyx.tensor([1.0, 2.0], device=device):.2f}"
    for data in ([1.0, 2.0], [1, 2], [[True, False]]):
        made, expected = zyx.Tensor(data, device=device), torch.Tensor(data)
        assert made.device is device and made.dtype.name == "float32" == str(expected.dtype)[6:]
        close(made, expected)
    assert zyx.Tensor([1, 2], device=device, dtype=zyx.int8).dtype == zyx.int8
    with pytest.raises(TypeError):
        zyx.Tensor(2, 3)


def test_masked_fill_and_pow(device):
    mask = RNG.random((1, 4)) > 0.5
    t, x = zyx.tensor(X, device=device), torch.tensor(X, requires_grad=True)
    filled, expected = t.masked_fill(zyx.tensor(mask, device=device), -1.5), x.masked_fill(torch.tensor(mask), -1.5)
    close(filled, expected)
    expected.sum().backward()
    close(filled.backward([t])[0], x.grad)
    exponent = np.abs(X) + 0.5
    close(t.abs().pow(zyx.tensor(exponent, device=device)), x.abs().pow(torch.tensor(exponent)), rtol=1e-5)
    close(t.pow(3), x.pow(3))
    with pytest.raises(TypeError, match="bool"):
        t.masked_fill(t, 0.0)


@pytest.mark.parametrize("p, dim", [(2, None), ("fro", 1), (1, 1), (3, None), (math.inf, 1), (0.5, 1), (-1, 1),
                                    (0, 1)])
def test_norm_matches_torch(device, p, dim):
    values = X.copy()
    values[1] = 0  # a zero row: the norm's gradient there is 0, as PyTorch's
    values[0, 1] = 0  # and a zero element: |x|^p has an infinite gradient there for p < 1
    t, x = zyx.tensor(values, device=device), torch.tensor(values, requires_grad=True)
    got, expected = t.norm(p, dim=dim), torch.linalg.vector_norm(x, 2 if p == "fro" else p, dim=dim)
    if p == 0:  # the count of non-zeros has no gradient
        return close(got, expected)
    expected.sum().backward()
    close_all([(got, expected), (got.backward([t])[0], x.grad)], rtol=1e-5)


@pytest.mark.parametrize("name", ["log1p", "expm1"])
def test_log1p_expm1_accurate_for_tiny_values(device, name):
    values = np.array([-30, -1.5, -0.999, -1e-3, -1e-7, -1e-20, 0, 1e-20, 1e-8, 3e-6, 1e-3, 0.5, 2, 30, 80, 1e30,
                       np.inf, np.nan], dtype=np.float32)
    if name == "log1p":
        values = values[(values > -1) | np.isnan(values)]
    t, x = zyx.tensor(values, device=device), torch.tensor(values, requires_grad=True)
    got, expected = getattr(t, name)(), getattr(x, name)()
    np.testing.assert_allclose(got.numpy(), expected.detach().numpy(), rtol=2e-7, atol=0)  # a few ulp, not 1e-7 abs
    expected.sum().backward()
    finite = np.isfinite(values)
    np.testing.assert_allclose(got.backward([t])[0].numpy()[finite], x.grad.numpy()[finite], rtol=1e-5, atol=1e-8)


# ---- gradients are returned, not stored --------------------------------------------------------------------

def test_stored_gradient_spellings_explain(device):
    model = zyx.nn.Linear(3, 2, device=device)
    loss = model(zyx.tensor(X[:, :3], device=device)).sum()
    with pytest.raises(TypeError, match=r"backward\(model.parameters\(\)\)"):
        loss.backward()
    with pytest.raises(AttributeError, match="no .grad"):
        model.weight.grad
    opt = zyx.nn.SGD(model.parameters(), lr=0.1)
    for call in (opt.zero_grad, model.zero_grad):
        with pytest.raises(RuntimeError, match="no stored gradients"):
            call()
    with pytest.raises(TypeError, match="needs the gradients"):
        opt.step()
    before = model.weight.numpy()
    opt.step(loss.backward(model.parameters()))
    assert not np.allclose(model.weight.numpy(), before)


def test_print_inside_a_jitted_step_describes_the_tensor(device, capsys):
    @zyx.jit
    def step(t):
        out = t * 2
        print(out, f"{out}")
        return out

    t = zyx.tensor(X, device=device)
    for _ in range(2):
        close(step(t), X * 2)
    printed = capsys.readouterr().out
    assert "lazy" in printed and "shape=(3, 4)" in printed and "float32" in printed


# ---- leaving zyx: pickle, numpy, torch, DLPack ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "int16", "bfloat16", "bool"])
def test_pickle_round_trip(device, dtype):
    t = (zyx.tensor(X, device=device) * 3).cast(dtype)  # lazy: pickled through its computed values
    back = pickle.loads(pickle.dumps(t))
    assert back.device is device and back.dtype == t.dtype
    np.testing.assert_array_equal(back.numpy(), t.numpy())


def test_torch_numpy_and_dlpack(device):
    t = zyx.tensor(X, device=device)
    scalar = t.sum()
    assert np.asarray(scalar).shape == () and torch.tensor(scalar).shape == ()
    close(torch.tensor(scalar), torch.tensor(X).sum())
    close(torch.tensor(t), X)
    close(torch.tensor(t[0]), X[0])
    close(torch.from_dlpack(t), X)
    back = zyx.from_dlpack(torch.tensor(X), device=device)
    assert back.device is device and back.dtype == zyx.float32
    close(back, X)
    close(zyx.from_dlpack(np.arange(3, dtype=np.int16), device=device), np.arange(3, dtype=np.int16))


# ---- dtypes ------------------------------------------------------------------------------------------------

TORCH_DTYPES = ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64"]


def test_promotion_follows_torch_and_numpy_for_uint32():
    for a in TORCH_DTYPES:
        for b in TORCH_DTYPES:
            expected = str(torch.promote_types(getattr(torch, a), getattr(torch, b))).removeprefix("torch.")
            assert zyx.dtypes.promote(zyx.dtypes.to_dtype(a), zyx.dtypes.to_dtype(b)).name == expected, (a, b)
    for other in ["bool", "uint8", "int8", "int16", "int32", "int64"]:  # PyTorch does not promote uint32
        got = zyx.dtypes.promote(zyx.uint32, zyx.dtypes.to_dtype(other)).name
        assert got == np.promote_types(np.uint32, np.dtype(other)).name, other
    assert zyx.dtypes.promote(zyx.uint32, zyx.float16) == zyx.float16  # an int with a float: the float (PyTorch)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16"])
def test_small_integers_match_torch(device, dtype):
    a_values = np.array([[0, 1, 5, 100], [127, 3, 64, 9]])
    b_values = np.array([[3, 7, 2, 100], [1, 2, 3, 4]])
    if dtype != "uint8":
        a_values[0, :2] *= -1
    a, b = (zyx.tensor(v, device=device, dtype=dtype) for v in (a_values, b_values))
    ta, tb = (torch.tensor(v, dtype=getattr(torch, dtype)) for v in (a_values, b_values))
    close_all([(a + b, ta + tb), (a - b, ta - tb), (a * b, ta * tb), (a // b, ta // tb), (a % b, ta % tb),
               (a << 2, ta << 2), (a >> 1, ta >> 1), (a & b, ta & tb), (~a, ~ta), (a.max(dim=1), ta.amax(dim=1)),
               (a.min(dim=0), ta.amin(dim=0)), (a.sum(), ta.sum()), (a < b, ta < tb), (a + 300, ta + 300),
               (a * 0.5, ta * 0.5), (a.abs(), ta.abs()), (a + b.cast("int32"), ta + tb.int())], exact=True)


def test_uint32_wraps_as_numpy(device):
    values = np.array([0, 1, 2**32 - 1, 2**31], dtype=np.uint32)
    t = zyx.tensor(values, device=device)
    assert t.dtype == zyx.uint32
    with np.errstate(over="ignore"):
        pairs = [(t + 1, values + np.uint32(1)), (t * 3, values * np.uint32(3)), (-t, -values),
                 (t // 3, values // np.uint32(3)), (t >> 31, values >> np.uint32(31)), (t.max(), values.max()),
                 (t.min(), values.min()), (t > 5, values > 5)]
    close_all([(got, torch.from_numpy(np.asarray(expected))) for got, expected in pairs], exact=True)


def test_bfloat16_rounds_to_nearest_even_like_torch(device):
    ties = [1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -(1 + 2**-8), 3.4e38, 1e-40, math.inf, -math.inf, 0.1]
    values = np.array(ties + list(X.ravel()), dtype=np.float32)
    t, x = zyx.tensor(values, device=device), torch.tensor(values)
    cast = t.cast(zyx.bfloat16)
    assert cast.dtype == zyx.bfloat16 and cast.numpy().dtype == np.dtype(ml_dtypes.bfloat16)
    expected = x.bfloat16()
    np.testing.assert_array_equal(cast.float().numpy(), expected.float().numpy())  # rounded where cast
    np.testing.assert_array_equal(cast.numpy().astype(np.float32), expected.float().numpy())  # and where stored
    assert np.isnan(zyx.tensor([math.nan], device=device).bfloat16().float().item())
    b, tb = cast[9:], expected[9:]
    pairs = [(b + b, tb + tb), (b * 3, tb * 3), (b.exp(), tb.exp()), (b.sum(), tb.sum()), (b.max(), tb.max()),
             (b.reshape(3, 4).softmax(dim=1), tb.reshape(3, 4).softmax(dim=1)), (b + t[9:].half(), tb + x[9:].half())]
    assert [got.dtype.name for got, _ in pairs] == [str(want.dtype)[6:] for _, want in pairs]
    close_all([(got.float(), want.float()) for got, want in pairs], rtol=2 ** -7, atol=1e-3)


# ---- indexing ----------------------------------------------------------------------------------------------

SEQUENCE = [0, 2]
INDEXES = [(0, slice(None), SEQUENCE), (SEQUENCE, slice(None), 0), (SEQUENCE, 0, SEQUENCE), (0, SEQUENCE),
           (None, SEQUENCE, slice(None), SEQUENCE), (SEQUENCE, None, SEQUENCE), (slice(None), SEQUENCE, 0, [1, 3]),
           (Ellipsis, SEQUENCE, 0), (0, Ellipsis, SEQUENCE), (1, slice(None), [[2], [0]], slice(1, 3))]


def test_indexing_follows_torch(device):
    values = np.arange(180, dtype=np.float32).reshape(3, 3, 4, 5)
    t, x = zyx.tensor(values, device=device), torch.tensor(values)
    assert zyx.zeros(2, 3, 4, device=device)[0, :, zyx.tensor([0, 2], device=device)].shape == (3, 2)
    results = [t[tuple(zyx.tensor(i, device=device) if isinstance(i, list) else i for i in index)]
               for index in INDEXES]
    zyx.realize(*results)  # one program: its kernels compile together
    for index, result in zip(INDEXES, results):
        close(result, x[tuple(torch.tensor(i) if isinstance(i, list) else i for i in index)], rtol=0, atol=0)


def test_out_of_range_axes_and_indices_raise_index_error(device):
    t, x = zyx.tensor(X, device=device), torch.tensor(X)
    attempts = [lambda a: a.sum(dim=2), lambda a: a.softmax(dim=-3), lambda a: a.unsqueeze(3),
                lambda a: a.transpose(0, 2), lambda a: a.size(2), lambda a: a[3], lambda a: a[0, -5],
                lambda a: a[[0, 3]], lambda a: a[0, 0, 0], lambda a: a.flip(dims=(2,)), lambda a: a.argmax(dim=5)]
    for attempt in attempts:
        with pytest.raises(IndexError):
            attempt(x)
        with pytest.raises(IndexError):
            attempt(t)
    with pytest.raises(IndexError):
        zyx.cat([t, t], dim=2)
    with pytest.raises(IndexError, match="index 7"):
        t[zyx.tensor([0, 7], device=device)].numpy()  # a tensor's values are checked when realized
