"""Errors a user can act on: ShapeError names the op and the shapes; TypeError for dtypes zyx cannot combine;
ValueError for ragged data. Errors come when an op is recorded, before anything runs."""
from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch

import zyx


def _names(error, *parts):
    text = str(error.value)
    for part in parts:
        assert str(part) in text, f"{part!r} not in {text!r}"


@pytest.mark.parametrize("op, name", [(lambda a, b: a + b, "add"), (lambda a, b: a - b, "sub"),
                                      (lambda a, b: a * b, "mul"), (lambda a, b: a / b, "div"),
                                      (lambda a, b: a ** b, "pow"), (lambda a, b: a < b, "lt"),
                                      (lambda a, b: a == b, "eq"), (lambda a, b: a.maximum(b), "maximum"),
                                      (lambda a, b: zyx.where(a > 0, a, b), "where"),
                                      (lambda a, b: a.logical_and(b), "logical_and")])
def test_broadcast_errors_name_op_and_shapes(device, op, name):
    a, b = zyx.ones(2, 3, device=device), zyx.ones(4, device=device)
    with pytest.raises(zyx.ShapeError) as error:
        op(a, b)
    _names(error, name, (2, 3), (4,))


def test_shape_error_is_a_value_error():
    assert issubclass(zyx.ShapeError, ValueError)


def test_matmul_errors(device):
    with pytest.raises(zyx.ShapeError) as error:
        zyx.ones(2, 3, device=device) @ zyx.ones(4, 5, device=device)
    _names(error, "matmul", (2, 3), (4, 5))
    with pytest.raises(zyx.ShapeError) as error:
        zyx.ones(2, 3, 4, device=device) @ zyx.ones(3, 4, 5, device=device)
    _names(error, "matmul", (2, 3, 4), (3, 4, 5))
    with pytest.raises(zyx.ShapeError):
        zyx.ones(3, device=device) @ zyx.ones(4, device=device)
    with pytest.raises(zyx.ShapeError):
        zyx.tensor(1.0, device=device) @ zyx.ones(1, device=device)
    with pytest.raises(zyx.ShapeError):
        zyx.ones(3, device=device).dot(zyx.ones(3, 1, device=device))


def test_operands_on_two_devices_are_refused_after_a_product_or_sum_of_their_shapes_was_made(device):
    """A product of shapes and dtypes met before skips matmul's checks (its maker stands for them), and an
    elementwise op of two tensors alike skips broadcasting: neither skips the devices' check."""
    other = zyx.CPU() if device is not zyx.CPU() else zyx.Torch("cpu")
    (zyx.ones(2, 3, device=device) @ zyx.ones(3, 4, device=device)).realize()  # its maker made
    with pytest.raises(ValueError, match="matmul: operands live on different devices"):
        zyx.ones(2, 3, device=device) @ zyx.ones(3, 4, device=other)
    with pytest.raises(ValueError, match="add: operands live on different devices"):
        zyx.ones(2, 3, device=device) + zyx.ones(2, 3, device=other)
    with pytest.raises(TypeError, match="and needs bool or integer tensors, got float32"):
        zyx.ones(2, 3, device=device) & zyx.ones(2, 3, device=device)


def test_reshape_errors(device):
    t = zyx.ones(2, 3, device=device)
    with pytest.raises(zyx.ShapeError) as error:
        t.reshape(4, 2)
    _names(error, "reshape", (2, 3), (4, 2))
    for shape in [(-1, -1), (4, -1), (-2, 3), (0, -1)]:
        with pytest.raises(zyx.ShapeError):
            t.reshape(shape)
    with pytest.raises(zyx.ShapeError):
        t.expand(3, 3)
    with pytest.raises(zyx.ShapeError):
        t.expand(3)
    with pytest.raises(zyx.ShapeError):
        t.pad(((1, 1), (1, 1), (1, 1)))
    with pytest.raises(zyx.ShapeError):
        t.pad(((-2, -1),))  # a negative pad crops (as PyTorch's), but not more than the axis holds
    with pytest.raises(zyx.ShapeError):
        t.split([1, 1], 1)
    with pytest.raises(zyx.ShapeError):
        zyx.cat([t, zyx.ones(2, 4, device=device)])
    with pytest.raises(zyx.ShapeError):
        zyx.stack([t, t.T])
    with pytest.raises(zyx.ShapeError):
        t.conv2d(zyx.ones(1, 1, 1, 1, device=device))
    with pytest.raises(zyx.ShapeError):
        zyx.ones(1, 2, 3, 3, device=device).conv2d(zyx.ones(1, 3, 1, 1, device=device))
    with pytest.raises(zyx.ShapeError):
        zyx.ones(1, 1, 2, 2, device=device).max_pool2d(3)
    with pytest.raises(zyx.ShapeError):
        t.gather(0, zyx.zeros(2, device=device, dtype=zyx.int64))


@pytest.mark.parametrize("op", [lambda t: t.sum(2), lambda t: t.sum(-3), lambda t: t.max((0, 5)),
                                lambda t: t.mean((1, -1)), lambda t: t.softmax(2), lambda t: t.log_softmax(-3),
                                lambda t: t.cumsum(2), lambda t: t.argmax(3), lambda t: t.permute(0, 2),
                                lambda t: t.permute(0, 0), lambda t: t.transpose(0, 2), lambda t: t.flip(2),
                                lambda t: t.squeeze(2), lambda t: t.unsqueeze(4), lambda t: t.flatten(0, 3),
                                lambda t: t.flatten(1, 0),
                                lambda t: zyx.cat([t, t], 2), lambda t: t.split(1, 2), lambda t: t.var(7),
                                lambda t: t.logsumexp(9)])
def test_invalid_axes(device, op):
    with pytest.raises(zyx.ShapeError) as error:
        op(zyx.ones(2, 3, device=device))
    assert re.search(r"axis|axes|ordering", str(error.value))


def test_type_errors(device):
    floats = zyx.ones(2, device=device)
    bools = zyx.tensor([True, False], device=device)
    with pytest.raises(TypeError):
        bools - bools
    with pytest.raises(TypeError):
        zyx.zeros(2, dtype=np.complex64)
    with pytest.raises(TypeError):
        zyx.tensor(np.array([1, 2], dtype=np.uint16))
    with pytest.raises(TypeError):
        floats + "a"
    with pytest.raises(TypeError):
        floats + None
    with pytest.raises(TypeError):
        floats[zyx.tensor([0.0], device=device)]
    with pytest.raises(TypeError):
        floats.gather(0, floats)
    with pytest.raises(TypeError):
        bools.backward([bools])
    with pytest.raises(TypeError):
        floats.matmul("x")
    with pytest.raises(TypeError):
        floats[True]  # a bool tensor is a mask; a Python bool is refused
    with pytest.raises(IndexError, match="mask of shape"):
        floats[zyx.tensor([True, False, True], device=device)]
    with pytest.raises(TypeError):
        floats.cast("complex128")
    with pytest.raises(TypeError):
        zyx.tensor(["a", "b"], device=device)


def test_value_errors(device):
    for ragged in ([[1, 2], [3]], [[1.0], [2.0, 3.0]], [1, [2]]):
        with pytest.raises(ValueError):
            zyx.tensor(ragged, device=device)
    with pytest.raises(ValueError):
        zyx.zeros(-1, device=device)
    with pytest.raises(ValueError):
        zyx.arange(0, 3, 0, device=device)
    with pytest.raises(ValueError):
        zyx.ones(3, device=device).item()
    with pytest.raises(ValueError):
        zyx.ones(3, device=device).dropout(-0.1)
    with pytest.raises(ValueError):
        zyx.ones(0, device=device).max()
    with pytest.raises(ValueError):
        zyx.ones(0, device=device).argmax()
    with pytest.raises(ValueError):
        zyx.ones(3, dtype=zyx.int64, device=device).pad(((1, 1),), value=float("inf"))


def test_index_errors(device):
    t = zyx.ones(2, 3, device=device)
    with pytest.raises(IndexError):
        t[2]
    with pytest.raises(IndexError):
        t[:, -4]
    with pytest.raises(IndexError):
        t[0, 0, 0]


@pytest.mark.parametrize("op", [lambda t: t.sum(2), lambda t: t.max(-3), lambda t: t.softmax(2), lambda t: t.cumsum(-3),
                                lambda t: t.argmax(3), lambda t: t.transpose(0, 2), lambda t: t.flip(2),
                                lambda t: t.squeeze(2), lambda t: t.unsqueeze(4), lambda t: zyx.cat([t, t], 2),
                                lambda t: t.gather(5, zyx.zeros(2, 3, device=t.device, dtype=zyx.int64))])
def test_out_of_range_axis_is_an_index_error(device, op):
    """As PyTorch's "Dimension out of range": an IndexError naming the axis and the dimension count."""
    with pytest.raises(IndexError) as error:
        op(zyx.ones(2, 3, device=device))
    assert isinstance(error.value, zyx.AxisError)
    assert re.search(r"axis -?\d+ is out of range for a tensor with \d dimensions", str(error.value))


@pytest.mark.parametrize("index, message", [([5], "index 5 is out of bounds for axis 0 with size 3"),
                                            ([-4], "index -4 is out of bounds for axis 0 with size 3"),
                                            ([[0, 1], [2, 3]], "index 3 is out of bounds")])
def test_tensor_index_out_of_range_raises(device, index, message):
    """An integer-tensor index out of range raises IndexError when realized (it used to select 0), naming the
    index and the size; in range, negative entries count from the end as in numpy."""
    x = zyx.tensor([1.0, 2.0, 3.0], device=device)
    with pytest.raises(IndexError, match=message):
        x[zyx.tensor(index, device=device)].numpy()
    with pytest.raises(IndexError, match=message):
        x[index]  # a list's values are known at the call
    computed = zyx.tensor(index, device=device) * 1
    with pytest.raises(IndexError, match=message):
        (x[computed] * 2).sum().item()  # an index computed lazily, a result that depends on it
    assert x[zyx.tensor([-3, 2], device=device)].tolist() == [1.0, 3.0]


def test_gather_index_out_of_range_raises(device):
    x = zyx.tensor([[1.0, 2.0], [3.0, 4.0]], device=device)
    for bad, value in [([[-1], [0]], -1), ([[0], [2]], 2)]:
        with pytest.raises(IndexError, match=f"gather: index {value} is out of bounds for axis 1 with size 2"):
            x.gather(1, zyx.tensor(bad, device=device)).numpy()
    result = x.gather(1, zyx.tensor([[1], [0]], device=device))
    assert result.tolist() == torch.tensor([[1.0, 2.0], [3.0, 4.0]]).gather(1, torch.tensor([[1], [0]])).tolist()


def test_failed_index_check_leaves_nothing_realized(device):
    x = zyx.tensor([1.0, 2.0, 3.0], device=device)
    picked = x[zyx.tensor([7], device=device)]
    for _ in range(2):  # the error repeats: no wrong value was kept
        with pytest.raises(IndexError, match="index 7"):
            picked.numpy()


def test_one_hot_and_cross_entropy_check_classes(device):
    labels = zyx.tensor([0, 3], device=device)
    with pytest.raises(IndexError, match="one_hot: class 3 is out of range for num_classes=2"):
        labels.one_hot(2).numpy()
    with pytest.raises(IndexError, match="class -1"):
        zyx.tensor([-1], device=device).one_hot(2).numpy()
    for bad in [-1, 0]:
        with pytest.raises(ValueError, match="num_classes"):
            labels.one_hot(bad)
    with pytest.raises(TypeError):
        zyx.tensor([1.0], device=device).one_hot(2)
    logits = zyx.ones(2, 3, device=device)
    with pytest.raises(IndexError, match="cross_entropy: target 3 is out of range for 3 classes"):
        zyx.nn.cross_entropy(logits, labels).item()
    ignored = zyx.tensor([0, -100], device=device)
    assert abs(zyx.nn.cross_entropy(logits, ignored).item() - np.log(3)) < 1e-6


def test_padding_forms_follow_torch(device):
    """conv2d and pooling take PyTorch's padding forms (int, one or two ints, 'valid', 'same'); the four-value
    form PyTorch rejects used to be cut to its first two values silently."""
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 6)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((3, 2, 3, 2)).astype(np.float32)
    tx, tw = zyx.tensor(x, device=device), zyx.tensor(w, device=device)
    for kwargs in [dict(padding="same"), dict(padding="valid"), dict(padding=(1,)), dict(padding=(2, 1)),
                   dict(padding="same", dilation=(2, 1))]:
        expected = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), **kwargs).numpy()
        np.testing.assert_allclose(tx.conv2d(tw, **kwargs).numpy(), expected, rtol=1e-5, atol=1e-5)
    for bad in [(0, 1, 0, 1), (0, 1, 0), "full", (1.5, 1)]:
        with pytest.raises(ValueError, match="padding"):
            tx.conv2d(tw, padding=bad)
        for pool in (tx.max_pool2d, tx.avg_pool2d):
            with pytest.raises(ValueError, match="padding"):
                pool(2, padding=bad)
    with pytest.raises(ValueError, match="stride 1"):
        tx.conv2d(tw, padding="same", stride=2)
    with pytest.raises(ValueError, match="at most half"):
        tx.max_pool2d(2, padding=2)


@pytest.mark.parametrize("name, value", [("stride", 0), ("stride", -1), ("dilation", 0), ("kernel_size", 0),
                                         ("groups", 0)])
def test_non_positive_window_arguments_raise(device, name, value):
    x, w = zyx.ones(1, 1, 4, 4, device=device), zyx.ones(1, 1, 2, 2, device=device)
    with pytest.raises(ValueError, match=name):
        if name == "kernel_size":
            x.max_pool2d(value)
        else:
            x.conv2d(w, **{name: value})
    if name in ("stride", "kernel_size"):
        with pytest.raises(ValueError, match=name):
            x.avg_pool2d(value if name == "kernel_size" else 2, **({"stride": value} if name == "stride" else {}))


def test_flip_and_clamp_arguments(device):
    t = zyx.ones(2, 3, device=device)
    for axes in [(0, 0), (1, -1)]:
        with pytest.raises(zyx.ShapeError, match="more than once"):
            t.flip(axes)
    with pytest.raises(ValueError, match="min and max"):
        t.clip(None, None)


@pytest.mark.parametrize("make", [lambda d: d.zeros(10 ** 6, 10 ** 6).numpy(),
                                  lambda d: d.randn(10 ** 6, 10 ** 6).sum().item(),
                                  lambda d: (d.rand(10 ** 6, 10 ** 6) > 0.5).sum().item()])
def test_too_large_fails_fast_naming_shape_dtype_bytes(device, make):
    """A tensor the device cannot hold raises OutOfMemoryError before any kernel runs (it used to be a driver
    error without shape or bytes, or minutes of computing), naming the shape, the dtype and the bytes."""
    start = time.perf_counter()
    with pytest.raises(zyx.OutOfMemoryError) as error:
        make(device)
    assert time.perf_counter() - start < 10
    _names(error, (1000000, 1000000), "float32", 4000000000000)
    assert isinstance(error.value, MemoryError)


def test_cat_devices_and_dtypes(device):
    other = zyx.CPU() if device is not zyx.CPU() else None
    if other is not None:
        with pytest.raises(ValueError, match="cat: tensors live on different devices"):
            zyx.cat([zyx.ones(2, device=device), zyx.ones(2, device=other)])
    mixed = zyx.cat([zyx.tensor([1, 2], device=device), zyx.tensor([0.5], device=device)])
    expected = torch.cat([torch.tensor([1, 2]), torch.tensor([0.5])])
    assert mixed.dtype.name == str(expected.dtype).replace("torch.", "") and mixed.tolist() == expected.tolist()
