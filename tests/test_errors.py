"""Errors a user can act on: ShapeError names the op and the shapes; TypeError for dtypes zyx cannot combine;
ValueError for ragged data. Errors come when an op is recorded, before anything runs."""
from __future__ import annotations

import re

import numpy as np
import pytest

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
        t.pad(((-1, 0),))
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
        zyx.tensor(np.array([1, 2], dtype=np.uint8))
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
        floats[bools]
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
