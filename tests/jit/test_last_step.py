"""A jitted call passing tensors laid out as the last replayed call's tries that call's step first, without making
its key (`JitFunction._last`): the guards still decide, so every change that picks another program, traces again
or must not replay still does, and the results are eager's."""
import numpy as np
import pytest

import zyx
from zyx.step import jit as jit_module

RNG = np.random.default_rng(5)


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


class Model:
    def __init__(self, dev, w):
        self.w = dev.tensor(w)


def sgd_step(model):
    def step(x, y):
        loss = ((x @ model.w - y) ** 2).mean()
        (gw,) = loss.backward([model.w])
        model.w.assign(model.w - 0.1 * gw)
        return loss
    return step


def numpy_sgd(w, x, y):
    error = x @ w - y
    return (error ** 2).mean(), w - 0.1 * 2 * x.T @ error / error.size


@pytest.fixture
def keys(monkeypatch):
    """The number of call keys made (`tensors_key` and `call_key`)."""
    made = [0]

    def counted(function):
        def count(*args):
            made[0] += 1
            return function(*args)
        return count
    monkeypatch.setattr(jit_module, "tensors_key", counted(jit_module.tensors_key))
    monkeypatch.setattr(jit_module, "call_key", counted(jit_module.call_key))
    return made


def test_replays_like_the_last_one_make_no_key_and_match_numpy(dev, keys):
    w = data(6, 3)
    model = Model(dev, w)
    step = zyx.jit(sgd_step(model))
    for i in range(5):
        x, y = data(8, 6), data(8, 3)  # a new batch each call: new tensors, the same layout
        loss, w = numpy_sgd(w, x, y)
        np.testing.assert_allclose(step(dev.tensor(x), dev.tensor(y)).item(), loss, rtol=1e-5)
        np.testing.assert_allclose(model.w.numpy(), w, rtol=1e-5, atol=1e-6)
    assert keys[0] == 2  # the capture's and the first replay's; the others replayed the last step
    assert len(step.captured) == 1


def test_another_layout_an_alias_or_a_constant_goes_the_long_way(dev, keys):
    f = zyx.jit(lambda a, b: a * 2 + b)
    a, b = dev.tensor(data(4)), dev.tensor(data(4))
    f(a, b), f(a, b)
    made = keys[0]
    wide = dev.tensor(data(5))
    np.testing.assert_allclose(f(wide, wide).numpy(), wide.numpy() * 3, rtol=1e-6)  # new shape, aliased
    np.testing.assert_allclose(f(a, a).numpy(), a.numpy() * 3, rtol=1e-6)  # same layout as before, aliased
    np.testing.assert_allclose(f(a, 1.5).numpy(), a.numpy() * 2 + 1.5, rtol=1e-6)  # a constant
    np.testing.assert_allclose(f(a, b.to(zyx.float16)).numpy(), a.numpy() * 2 + b.numpy().astype(np.float16),
                               rtol=1e-3)  # another dtype
    np.testing.assert_allclose(f(a, b=b).numpy(), a.numpy() * 2 + b.numpy(), rtol=1e-6)  # by keyword
    assert keys[0] > made
    np.testing.assert_allclose(f(a, b).numpy(), a.numpy() * 2 + b.numpy(), rtol=1e-6)  # the first program again
    assert len(f.captured) == 6


def replayed(dev, calls):
    """A jitted SGD step on a Model, called `calls` times on one batch: the model, the step, the batch (numpy arrays,
    then tensors) and the weight numpy computes for those calls."""
    w = data(6, 3)
    model = Model(dev, w)
    step = zyx.jit(sgd_step(model))
    x, y = data(8, 6), data(8, 3)
    tx, ty = dev.tensor(x), dev.tensor(y)
    for _ in range(calls):
        _, w = numpy_sgd(w, x, y)
        step(tx, ty)
    return model, step, (x, y), (tx, ty), w


def test_state_rebound_between_calls_is_noticed(dev):
    model, step, (x, y), (tx, ty), _ = replayed(dev, 2)
    w2 = data(6, 3)
    model.w = dev.tensor(w2)  # the attribute the step reads now leads to another tensor
    loss, updated = numpy_sgd(w2, x, y)
    np.testing.assert_allclose(step(tx, ty).item(), loss, rtol=1e-5)
    np.testing.assert_allclose(model.w.numpy(), updated, rtol=1e-5, atol=1e-6)


def test_an_argument_that_is_an_expression_is_realized_first(dev):
    f = zyx.jit(lambda a, b: a - b)
    a, b = dev.tensor(data(4)), dev.tensor(data(4))
    f(a, b), f(a, b)
    np.testing.assert_allclose(f(a * 3, b).numpy(), a.numpy() * 3 - b.numpy(), rtol=1e-6)


def test_a_parameter_held_elsewhere_is_copied_before_the_update(dev):
    """The update overwrites the parameter's buffer in place only where nothing else holds its node: a lazy
    expression built on it between calls keeps the old value, as eagerly."""
    model, step, _, (tx, ty), w = replayed(dev, 3)
    before = model.w * 1  # lazy: reads the node the next replay would overwrite
    step(tx, ty)
    np.testing.assert_allclose(before.numpy(), w, rtol=1e-5, atol=1e-6)
