"""A replayed step's arena (runtime/memory.Arena): its intermediates take the same buffers at every call, the
tensors of each call are still the ones bound, and the memory it reserves is reported and given back."""
import gc

import numpy as np
import pytest

import zyx

RNG = np.random.default_rng(11)


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def sgd(w, x, y, lr=0.1):
    """One least-squares SGD step on w, computed here with numpy: (loss, new w)."""
    error = x @ w - y
    return (error ** 2).mean(), w - lr * 2 * x.T @ error / error.size


def step_on(w):
    def step(x, y):
        loss = ((x @ w - y) ** 2).mean()
        (gw,) = loss.backward([w])
        w.assign(w - 0.1 * gw)
        return loss
    return step


def reserved(dev):
    return zyx.memory_stats(dev)["reserved_bytes"]


@pytest.fixture
def setup(dev):
    w_data = data(8, 4)
    return dev.tensor(w_data), w_data


def test_a_replayed_step_holds_an_arena_and_reports_it(dev, setup):
    w, _ = setup
    gc.collect()
    before = zyx.memory_stats(dev)
    step = zyx.jit(step_on(w))
    x, y = dev.tensor(data(16, 8)), dev.tensor(data(16, 4))
    step(x, y)
    step(x, y).item()
    (captured,) = step.steps[next(iter(step.steps))]
    arena = captured._arena
    assert arena is not None and arena.nbytes > 0
    assert reserved(dev) == before["reserved_bytes"] + arena.nbytes
    buffers = list(arena.buffers)
    step(x, y).item()
    assert all(a is b for a, b in zip(arena.buffers, buffers))  # the same buffers at every call
    del step, captured, arena, buffers
    gc.collect()
    after = zyx.memory_stats(dev)
    assert after["reserved_bytes"] == before["reserved_bytes"]  # given back to the pool's free lists


def test_each_call_binds_its_own_tensors(dev, setup):
    w, w_data = setup
    step = zyx.jit(step_on(w))
    for _ in range(4):  # new input tensors at every call
        xs, ys = data(16, 8), data(16, 4)
        expected, w_data = sgd(w_data, xs, ys)
        assert step(dev.tensor(xs), dev.tensor(ys)).item() == pytest.approx(expected, rel=1e-4)
    np.testing.assert_allclose(w.numpy(), w_data, rtol=1e-4, atol=1e-5)
    assert len(step.captured) == 1


def test_the_same_tensor_twice_and_a_tensor_aliasing_the_parameter(dev, setup):
    w, w_data = setup

    def update(a, b):
        loss = ((a * w - b) ** 2).sum()
        (gw,) = loss.backward([w])
        w.assign(w - 0.01 * gw)
        return loss
    step = zyx.jit(update)

    def expect(a, b, b_is_w=False):
        nonlocal w_data
        b = w_data if b_is_w else b
        loss = ((a * w_data - b) ** 2).sum()
        w_data = w_data - 0.01 * 2 * (a * w_data - b) * (a - 1 if b_is_w else a)  # b = w: its gradient too
        return loss
    a, b = data(8, 4), data(8, 4)
    ta, tb = dev.tensor(a), dev.tensor(b)
    for args, values in [((ta, tb), (a, b)), ((ta, tb), (a, b)), ((ta, ta), (a, a)), ((ta, ta), (a, a)),
                         ((ta, tb), (a, b))]:
        assert step(*args).item() == pytest.approx(expect(*values), rel=1e-4)
    for _ in range(3):  # the parameter itself as an argument: its value before the update is read
        assert step(ta, w).item() == pytest.approx(expect(a, None, b_is_w=True), rel=1e-4)
    np.testing.assert_allclose(w.numpy(), w_data, rtol=1e-4, atol=1e-5)


def test_a_recapture_releases_the_arena_of_the_step_it_replaces(dev):
    holder = {"w": dev.tensor(data(8, 4))}

    def step(x, y):
        return step_on(holder["w"])(x, y)
    jitted = zyx.jit(step)
    xs, ys = data(16, 8), data(16, 4)
    x, y = dev.tensor(xs), dev.tensor(ys)
    jitted(x, y)
    jitted(x, y).item()
    gc.collect()
    held = reserved(dev)
    w2_data = data(8, 4)
    holder["w"] = dev.tensor(w2_data)  # a new parameter: the old one dies, and so does the step bound to it
    gc.collect()
    expected, _ = sgd(w2_data, xs, ys)
    assert jitted(x, y).item() == pytest.approx(expected, rel=1e-4)
    expected, _ = sgd(sgd(w2_data, xs, ys)[1], xs, ys)
    assert jitted(x, y).item() == pytest.approx(expected, rel=1e-4)
    gc.collect()
    assert reserved(dev) == held  # the new step's arena only


def test_a_trim_gives_arenas_back_and_the_next_replay_takes_them_again(dev, setup):
    w, w_data = setup
    step = zyx.jit(step_on(w))
    xs, ys = data(16, 8), data(16, 4)
    x, y = dev.tensor(xs), dev.tensor(ys)
    for _ in range(2):
        _, w_data = sgd(w_data, xs, ys)
        step(x, y)
    dev.runtime.pool.trim()
    assert reserved(dev) == 0
    expected, w_data = sgd(w_data, xs, ys)
    assert step(x, y).item() == pytest.approx(expected, rel=1e-4)
    assert reserved(dev) > 0
    np.testing.assert_allclose(w.numpy(), w_data, rtol=1e-4, atol=1e-5)


def test_a_launcher_that_records_each_launch_sees_a_replays_launches(dev, setup):
    """A replay launches kernels of its own holding their arguments (runtime/run_code.py), except under a launch
    function without `enqueue` (replay.record_launches', bench's wrappers): that one gets each launch."""
    from zyx.runtime.replay import record_launches
    w, w_data = setup
    step = zyx.jit(step_on(w))
    xs, ys = data(16, 8), data(16, 4)
    x, y = dev.tensor(xs), dev.tensor(ys)
    for recorded in (False, False, True, False):
        expected, w_data = sgd(w_data, xs, ys)
        if recorded:
            loss, launches = record_launches(dev.runtime, lambda: step(x, y).item())
            assert len(launches) == step.captured[0]["launches"]
        else:
            loss = step(x, y).item()
        assert loss == pytest.approx(expected, rel=1e-4)
    np.testing.assert_allclose(w.numpy(), w_data, rtol=1e-4, atol=1e-5)


def test_the_key_of_tensor_arguments_is_call_keys(dev):
    from zyx.step.arguments import call_key, tensors_key
    a, b = dev.tensor(data(2, 3)), dev.tensor(np.arange(3, dtype=np.int32))
    same_buffer = zyx.Tensor(a.node)  # another tensor holding a's node (and buffer)
    for args in [(a, b), (a, a), (a, same_buffer), (b,), ()]:
        assert tensors_key(args) == call_key(args, {})
    assert tensors_key((a, a)) != tensors_key((a, same_buffer)) != tensors_key((a, b))
