"""What a call pays on the host: a realize finds a structure it saw before by its exact key, without hashing
text again, and a replay keeps an updated leaf as its tensor's node instead of making a new one."""
import weakref

import numpy as np

import zyx
from zyx.step import jit as jit_module

RNG = np.random.default_rng(5)


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def moved(function) -> dict:
    """How much each counter moved while `function` ran."""
    before = zyx.stats()
    function()
    after = zyx.stats()
    return {name: after[name] - before.get(name, 0) for name in after}


def test_a_structure_seen_before_is_looked_up_without_hashing(dev):
    x, y = dev.tensor(data(4, 5)), dev.tensor(data(4, 5))
    expression = lambda a, b: ((a * b).exp() + a).sum(0)  # noqa: E731
    expression(x, y).realize()
    again = expression(y, x)  # other data, the same structure
    counted = moved(again.realize)
    assert counted["structure_digests"] == 0 and counted["schedule_cache_hits"] == 1
    assert counted["graphs_scheduled"] == 0
    np.testing.assert_allclose(again.numpy(), (np.exp(y.numpy() * x.numpy()) + y.numpy()).sum(0), rtol=1e-5)


def test_another_structure_is_hashed_once_and_never_confused(dev):
    x, y = dev.tensor(data(4, 5)), dev.tensor(data(4, 5))
    (x * y + 1.0).realize()
    a, b = x.numpy(), y.numpy()
    for other, value in [(x * x + 1.0, a * a + 1), (x * y + 2.0, a * b + 2), ((x * y + 1.0).exp(), np.exp(a * b + 1))]:
        counted = moved(other.realize)  # missed in memory: hashed once, then loaded from disk or scheduled
        assert counted["structure_digests"] == 1 and counted["schedule_cache_hits"] == 0
        np.testing.assert_allclose(other.numpy(), value, rtol=1e-5)


def sgd_step(w, x, y, lr=0.1):
    loss = ((x @ w - y) ** 2).mean()
    grad, = loss.backward([w])
    w.assign(w - lr * grad)
    return loss


def test_a_replay_keeps_an_updated_leaf_unless_something_else_sees_it(dev, monkeypatch):
    w, x, y = dev.tensor(data(8, 4)), dev.tensor(data(16, 8)), dev.tensor(data(16, 4))
    reference = w.numpy()
    step = zyx.jit(sgd_step)
    made = []
    leaf_maker = jit_module.leaf_maker

    def counted_leaf_maker(*layout):  # (a replay makes its result leaves through makers built at the capture)
        make = leaf_maker(*layout)
        return lambda buffer: made.append(layout) or make(buffer)
    monkeypatch.setattr(jit_module, "leaf_maker", counted_leaf_maker)
    inputs, targets = x.numpy(), y.numpy()

    def expected(weights):
        grad = 2 * inputs.T @ (inputs @ weights - targets) / targets.size
        return weights - 0.1 * grad
    step(w, x, y)  # the capture: its first run copies what it overwrites
    reference = expected(reference)
    for held in (None, "weakly"):
        made.clear()
        seen = weakref.ref(w.node) if held else None
        step(w, x, y)
        reference = expected(reference)
        assert len(made) == (2 if held else 1)  # the loss, and the new value of w only if something sees w's node
        if held:
            assert seen() is not w.node
        np.testing.assert_allclose(w.numpy(), reference, rtol=1e-4, atol=1e-6)
    assert len(step.captured) == 1
