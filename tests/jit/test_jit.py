"""@zyx.jit: capture once, replay; persisted programs; in-place updates; memory stays flat."""
import functools
import gc
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import zyx
from zyx.step.jit import JitWarning

RNG = np.random.default_rng(3)


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def make_regression(dev):
    w = dev.tensor(data(8, 4))
    b = dev.tensor(np.zeros(4, np.float32))
    return w, b


def sgd_step(w, b, x, y, lr=0.1):
    loss = ((x @ w + b - y) ** 2).mean()
    gw, gb = loss.backward([w, b])
    w.assign(w - lr * gw)
    b.assign(b - lr * gb)
    return loss


def test_replay_matches_eager_for_twenty_sgd_steps(dev):
    xs, ys = data(16, 8), data(16, 4)
    w1, b1 = make_regression(dev)
    w2, b2 = dev.tensor(w1.numpy()), dev.tensor(b1.numpy())
    x, y = dev.tensor(xs), dev.tensor(ys)
    step = zyx.jit(lambda x, y: sgd_step(w1, b1, x, y))
    for _ in range(20):
        jitted = step(x, y).item()
        eager = sgd_step(w2, b2, x, y)
        zyx.realize(eager, w2, b2)
        assert jitted == pytest.approx(eager.item(), rel=1e-5)
    np.testing.assert_allclose(w1.numpy(), w2.numpy(), rtol=1e-5, atol=1e-6)
    assert len(step.captured) == 1


def test_replay_launches_kernels_only(dev):
    w, b = make_regression(dev)
    x, y = dev.tensor(data(16, 8)), dev.tensor(data(16, 4))
    step = zyx.jit(lambda x, y: sgd_step(w, b, x, y))
    step(x, y)
    zyx.reset_stats()
    step(x, y)
    stats = zyx.stats()
    assert stats["graphs_scheduled"] == 0 and stats["kernels_compiled"] == 0
    assert stats["kernels_launched"] == step.captured[0]["kernels"]


def test_new_shapes_and_python_numbers_capture_new_programs(dev):
    f = zyx.jit(lambda x, k: x * k)
    x4, x5 = dev.tensor(data(4)), dev.tensor(data(5))
    np.testing.assert_allclose(f(x4, 2.0).numpy(), x4.numpy() * 2)
    np.testing.assert_allclose(f(x4, 3.0).numpy(), x4.numpy() * 3)
    np.testing.assert_allclose(f(x5, 3.0).numpy(), x5.numpy() * 3)
    f(x5, 3.0)
    assert len(f.captured) == 3


def test_many_signatures_warn(dev):
    f = zyx.jit(lambda x: x + 1)
    with pytest.warns(JitWarning):
        for n in range(1, 11):
            f(dev.tensor(np.zeros(n, np.float32)))


def test_random_numbers_differ_on_every_call(dev):
    f = zyx.jit(lambda x: x.dropout(0.5))
    x = dev.tensor(np.ones(256, np.float32))
    first, second = f(x).numpy(), f(x).numpy()
    assert not np.array_equal(first, second)
    assert set(np.unique(first)) <= {0.0, 2.0}


def test_results_stay_valid_after_the_next_call(dev):
    w, b = make_regression(dev)
    x, y = dev.tensor(data(16, 8)), dev.tensor(data(16, 4))
    step = zyx.jit(lambda x, y: sgd_step(w, b, x, y))
    losses = [step(x, y) for _ in range(4)]
    values = [loss.item() for loss in losses]
    assert values == sorted(values, reverse=True) and len(set(values)) == 4


def test_reading_values_inside_a_jitted_function_raises(dev):
    f = zyx.jit(lambda x: x.sum().item())
    with pytest.raises(RuntimeError, match="jit"):
        f(dev.tensor(data(3)))


def test_methods_capture_per_instance(dev):
    class Model:
        def __init__(self, scale):
            self.w = dev.tensor(np.full(3, scale, np.float32))

        @zyx.jit
        def forward(self, x):
            return x * self.w

    a, b = Model(2.0), Model(5.0)
    x = dev.tensor(np.ones(3, np.float32))
    np.testing.assert_allclose(a.forward(x).numpy(), 2.0)
    np.testing.assert_allclose(b.forward(x).numpy(), 5.0)
    np.testing.assert_allclose(a.forward(x).numpy(), 2.0)


def test_memory_stays_flat_over_many_steps(dev):
    w, b = make_regression(dev)
    x, y = dev.tensor(data(16, 8)), dev.tensor(data(16, 4))
    step = zyx.jit(lambda x, y: sgd_step(w, b, x, y))
    for _ in range(10):
        step(x, y)
    gc.collect()
    before = zyx.memory_stats(dev)["current_bytes"]
    for _ in range(1000):
        step(x, y)
    gc.collect()
    assert zyx.memory_stats(dev)["current_bytes"] == before
    assert step.captured[0]["planned_peak_bytes"] > 0


def test_parameters_are_updated_in_their_own_buffers(dev):
    w, b = make_regression(dev)
    x, y = dev.tensor(data(16, 8)), dev.tensor(data(16, 4))
    step = zyx.jit(lambda x, y: sgd_step(w, b, x, y))
    step(x, y)
    buffer = w.node.buffer
    step(x, y)
    assert w.node.buffer is buffer


SCRIPT = textwrap.dedent("""
    import numpy as np, zyx
    dev = zyx.OpenCL()
    w = dev.tensor(np.linspace(-1, 1, 32, dtype=np.float32).reshape(8, 4))
    x = dev.tensor(np.ones((16, 8), np.float32)); y = dev.tensor(np.zeros((16, 4), np.float32))
    @zyx.jit
    def step(x, y):
        loss = ((x @ w - y) ** 2).mean() * SCALE
        g, = loss.backward([w])
        w.assign(w - 0.01 * g)
        return loss
    zyx.reset_stats()
    losses = [step(x, y).item() for _ in range(3)]
    s = zyx.stats()
    print(s["graphs_scheduled"], s["kernels_compiled"], repr(losses))
""")


def run_script(cache_dir, scale):
    env = dict(os.environ, ZYX_CACHE_DIR=str(cache_dir))
    out = subprocess.run([sys.executable, "-c", SCRIPT.replace("SCALE", scale)], env=env, capture_output=True,
                         text=True, check=True).stdout.split(maxsplit=2)
    return int(out[0]), int(out[1]), eval(out[2])


def test_a_second_process_neither_schedules_nor_compiles(tmp_path):
    scheduled, compiled, losses = run_script(tmp_path, "1.0")
    assert scheduled >= 1 and compiled >= 1
    scheduled, compiled, again = run_script(tmp_path, "1.0")
    assert (scheduled, compiled) == (0, 0)
    assert again == losses
    scheduled, _, changed = run_script(tmp_path, "2.0")  # another constant: never the stale program
    assert scheduled >= 1
    assert changed[0] == pytest.approx(2 * losses[0])


def test_state_that_starts_as_an_expression_is_captured_once_it_is_a_buffer(dev):
    counter = dev.zeros(3)  # lazy: a constant expression until realized

    @zyx.jit
    def tick(x):
        counter.assign(counter + x)
        return counter * 1

    x = dev.tensor(np.ones(3, np.float32))
    values = [tick(x).numpy()[0] for _ in range(4)]
    assert values == [1.0, 2.0, 3.0, 4.0]
    assert len(tick.captured) == 1


def test_a_step_is_traced_again_when_a_module_mode_changes(dev):
    """model.eval() after tracing in training mode must not replay the dropout program (and back again)."""
    from zyx import nn
    model = nn.Sequential(nn.Linear(8, 64), nn.Dropout(0.5))
    model.to(dev)
    forward = zyx.jit(lambda x: model(x))
    x = dev.tensor(data(32, 8))
    dropped = forward(x).numpy()
    assert (dropped == 0).mean() > 0.3
    model.eval()
    kept = forward(x).numpy()
    linear = model[0]
    np.testing.assert_allclose(kept, x.numpy() @ linear.weight.numpy().T + linear.bias.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(forward(x).numpy(), kept)  # replayed: same mode
    model.train()
    again = forward(x).numpy()
    assert (again == 0).mean() > 0.3 and not np.array_equal(again, dropped)  # new randoms, dropout again
    assert [entry["training_modes"] for entry in forward.captured] == [[True], [False]]


# ---- jit against eager: every way of passing and updating tensors ------------------------------------------
# Each scenario builds its own state, wraps its step with `wrap` (zyx.jit, or nothing for the eager run), calls
# it several times (rebinding or updating state between calls where that is the point) and returns what a user
# would look at: results, final values of every tensor the step updates, identities. Jit must equal eager.

def ones(dev, n=4, value=1.0):
    return dev.tensor(np.full(n, value, np.float32))


def scenario_assigned_argument(dev, wrap):
    sgd = wrap(lambda w, g: w.assign(w - 0.1 * g))
    w1, w2, g = ones(dev), ones(dev, value=2.0), ones(dev)
    for _ in range(3):
        sgd(w1, g)
        sgd(w2, g)
    return [w1, w2]


def scenario_numpy_scalars(dev, wrap):
    scale = wrap(lambda x, s: x * s)
    x = ones(dev)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", JitWarning)  # one program per value: expected here
        return [scale(x, np.float32(v)) for v in range(1, 11)] + [scale(x, np.float64(2.5)), scale(x, np.int32(3))]


def scenario_python_constants(dev, wrap):
    f = wrap(lambda x, k, flag, name, extra, pair: (x * k + (1 if flag else 0) + len(name) + (extra or 0)) * pair[1])
    x = ones(dev, value=3.0)
    return [f(x, 1, True, "ab", None, (0, 2)), f(x, 1.0, False, "abc", 5, (0, 3)), f(x, True, True, "", None, (1, 1)),
            f(x, 1, True, "ab", None, (0, 2)), f(x, 7 // 2, False, "a", 0.5, (0, -1))]


STATE = {}  # the scenarios' module globals live here, so each run starts from its own tensors
G = None


def read_global(x):
    return x * G


def update_global(x):
    G.assign(G + x)
    return G * 1


def scenario_rebound_global(dev, wrap):
    global G
    G = ones(dev, value=2.0)
    old = G  # alive: the old tensor must not be replayed
    f = wrap(read_global)
    x = ones(dev)
    first = f(x)
    G = ones(dev, value=5.0)
    second = f(x)
    G = ones(dev, value=7.0)
    return [first, second, f(x), old]


def scenario_updated_global(dev, wrap):
    global G
    G = ones(dev, value=0.0)
    f = wrap(update_global)
    x = ones(dev)
    values = [f(x) for _ in range(3)]
    G.assign(G * 10)  # an eager update between calls
    values.append(f(x))
    G = ones(dev, value=100.0)  # a new tensor under the same name: it gets the next update
    values.append(f(x))
    return values + [G]


def scenario_deleted_global(dev, wrap):
    global G
    G = ones(dev, value=2.0)
    f = wrap(read_global)
    x = ones(dev)
    first = f(x)
    del G
    try:
        f(x)
    except NameError as error:
        return [first, str(error)]
    return [first, "no error"]


def scenario_closure(dev, wrap):
    w = ones(dev, value=3.0)

    def step(x):
        w.assign(w * x)
        return w + 1

    f = wrap(step)
    x = ones(dev, value=2.0)
    values = [f(x), f(x)]
    w = ones(dev, value=-1.0)  # rebinding the closure variable
    values += [f(x), f(x)]
    return values + [w]


def scenario_methods_on_two_instances(dev, wrap):
    class Counter:
        def __init__(self, start):
            self.total = ones(dev, value=start)

        def add(self, x):
            self.total.assign(self.total + x)
            return self.total

        add_jit = zyx.jit(add)

    a, b = Counter(1.0), Counter(10.0)
    add = (lambda c: c.add_jit) if wrap is zyx.jit else (lambda c: functools.partial(Counter.add, c))
    x = ones(dev)
    values = [add(a)(x), add(b)(x), add(a)(x), add(b)(x)]
    b.total = ones(dev, value=-5.0)  # rebinding an attribute
    values += [add(b)(x), add(a)(x)]
    return values + [a.total, b.total]


def scenario_same_tensor_twice(dev, wrap):
    def step(w, v):
        w.assign(w + v)
        return v * 1

    f = wrap(step)
    w1, w2 = ones(dev), ones(dev, value=5.0)
    values = [f(w1, w2), f(w1, w1), f(w1, w2), f(w2, w2)]
    return values + [w1, w2]


def read_global_update_argument(w, x):
    w.assign(w + x)
    return G * 2


def scenario_argument_aliasing_a_global(dev, wrap):
    global G
    G = ones(dev, value=3.0)
    other = ones(dev, value=-1.0)
    f = wrap(read_global_update_argument)
    x = ones(dev)
    values = [f(other, x), f(G, x), f(other, x), f(G, x)]
    return values + [G, other]


def scenario_returns_inputs(dev, wrap):
    f = wrap(lambda x, y: (x, y * 2, {"same": y}))
    x, y = ones(dev), ones(dev, value=2.0)
    values = []
    for _ in range(3):
        a, b, c = f(x, y)
        values += [a, b, c["same"], a is x, c["same"] is y]
    return values


def scenario_keywords_and_nested(dev, wrap):
    def step(pair, scale=1.0, *, extra):
        (a, b), table = pair
        return {"sum": (a + b) * scale + extra["bias"], "list": [a * 2, table["t"] - 1]}

    f = wrap(step)
    a, b, t, bias = ones(dev), ones(dev, value=2.0), ones(dev, value=5.0), ones(dev, value=0.5)
    values = []
    for scale in (1.0, 2.0, 2.0):
        out = f(((a, b), {"t": t}), scale=scale, extra={"bias": bias})
        values += [out["sum"], *out["list"]]
    out = f(((b, a), {"t": bias}), extra={"bias": t}, scale=2.0)  # keyword order and other tensors
    return values + [out["sum"], *out["list"]]


def rebind_global_inside(x):
    global G
    G = G + x
    return G * 1


def scenario_global_rebound_inside_the_step(dev, wrap):
    global G
    G = ones(dev)
    f = wrap(rebind_global_inside)
    x = ones(dev)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", JitWarning)
        values = [f(x) for _ in range(4)]
    return values + [G]


def scenario_snapshot_before_an_update(dev, wrap):
    sgd = wrap(lambda w, g: w.assign(w - 0.5 * g))
    w, g = ones(dev), ones(dev)
    values = []
    for _ in range(3):
        before = w * 1  # lazy: reads the value w has now
        alias = w.detach()
        sgd(w, g)
        values += [before, alias, w]
    return values


SCENARIOS = [scenario_assigned_argument, scenario_numpy_scalars, scenario_python_constants,
             scenario_rebound_global, scenario_updated_global, scenario_deleted_global, scenario_closure,
             scenario_methods_on_two_instances, scenario_same_tensor_twice, scenario_argument_aliasing_a_global,
             scenario_returns_inputs, scenario_keywords_and_nested, scenario_global_rebound_inside_the_step,
             scenario_snapshot_before_an_update]


def observed(values):
    return [v.numpy() if isinstance(v, zyx.Tensor) else v for v in values]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__.removeprefix("scenario_"))
def test_jit_matches_eager(scenario):
    dev = zyx.OpenCL()
    eager = observed(scenario(dev, lambda fn: fn))
    jitted = observed(scenario(dev, zyx.jit))
    assert len(jitted) == len(eager)
    for i, (j, e) in enumerate(zip(jitted, eager)):
        if isinstance(e, np.ndarray):
            np.testing.assert_allclose(j, e, rtol=1e-6, err_msg=f"value {i}")
        else:
            assert j == e, f"value {i}"


def test_arguments_that_cannot_be_constants_raise_naming_them():
    dev = zyx.OpenCL()
    f = zyx.jit(lambda x, k: x * 2)
    x = ones(dev)
    with pytest.raises(TypeError, match=r"argument 1 is a numpy array of shape \(3,\); pass dev.tensor"):
        f(x, np.zeros(3, np.float32))
    with pytest.raises(TypeError, match=r"argument 'k' \(set\) is unhashable"):
        f(x, k={1, 2})


def test_a_tensor_the_step_cannot_locate_raises():
    from zyx.step.jit import JitError

    class Slots:
        __slots__ = ("w",)

    dev = zyx.OpenCL()
    holder = Slots()
    holder.w = ones(dev, value=2.0)
    f = zyx.jit(lambda x: x * holder.w)
    with pytest.raises(JitError, match=r"reads a tensor of shape \(4,\) \(float32\).*pass it as an argument"):
        f(ones(dev))


def test_an_eager_realize_never_reuses_a_program_that_writes_an_input_in_place():
    dev = zyx.OpenCL()
    sgd = zyx.jit(lambda w, g: w.assign(w - 0.1 * g))
    w, g = ones(dev), ones(dev)
    sgd(w, g)
    sgd(w, g)  # replayed: its program writes w's buffer in place
    c = ones(dev)
    np.testing.assert_allclose((c - 0.1 * g).numpy(), 0.9)  # the same structure, realized eagerly
    np.testing.assert_allclose(c.numpy(), 1.0)


def test_assign_keeps_the_tensor_dtype_and_shape(device):
    w = zyx.zeros(2, 3, device=device)
    with pytest.raises(TypeError, match=r"assign: value of dtype float64 .* tensor of dtype float32"):
        w.assign(zyx.zeros(2, 3, device=device, dtype=zyx.float64))
    with pytest.raises(zyx.ShapeError, match=r"\(3, 2\).*\(2, 3\)|\(2, 3\).*\(3, 2\)"):
        w.assign(zyx.zeros(3, 2, device=device))


def test_replayed_steps_check_their_index_tensors_as_eagerly(device):
    """Indexing, gather, embedding and class-index losses raise IndexError in a replay too (it used to read 0
    silently), at the call whose index is out of range, naming it, the axis and its size; the next call with good
    indices replays as before (on every device: zyx.CPU() runs them eagerly)."""
    x = device.tensor(np.arange(12, dtype=np.float32).reshape(4, 3)).realize()
    F = zyx.nn.functional
    steps = [  # (step, good indices, their result, (bad indices, what the error says) ...)
        (lambda x, i: x[i] * 2, [0, 3], [[0, 2, 4], [18, 20, 22]],
         ([1, 9], r"^index 9 is out of bounds for axis 0 with size 4$"), ([-7, 1], "^index -7 is out of bounds")),
        (lambda x, i: x.gather(1, i), [[2], [0], [1], [2]], [[2], [3], [7], [11]],
         ([[0], [3], [0], [0]], r"^gather: index 3 is out of bounds for axis 1 with size 3$")),
        (lambda x, i: F.embedding(i, x).sum(-1), [3, 0], [30, 3],
         ([0, 4], r"^index 4 is out of bounds for axis 0 with size 4$"),
         ([-1, 0], r"^Embedding: index -1 is out of range for num_embeddings=4$")),
        (lambda x, i: zyx.nn.cross_entropy(x, i) * 0, [0, 1, 2, 0], 0,
         ([0, 1, 3, 0], r"^cross_entropy: target 3 is out of range for 3 classes$"),
         ([-2, 0, 0, 0], "^cross_entropy: target -2 is out of range")),
    ]
    for function, good, expected, *bad_calls in steps:
        step = zyx.jit(function)
        for _ in range(2):  # captured, then replayed
            np.testing.assert_array_equal(step(x, device.tensor(good)).numpy(), expected)
        for bad, message in bad_calls:
            with pytest.raises(IndexError, match=message):
                step(x, device.tensor(bad))
        np.testing.assert_array_equal(step(x, device.tensor(good)).numpy(), expected)


def test_a_step_indexing_with_a_value_it_updates_in_place_checks_it_after_its_launches(dev):
    """An index the step computes from a tensor it updates in place cannot be checked before that update: its
    program names no checks for its run's gate, and the replay reads them after the run, still raising at the call
    that went out of range."""
    table = dev.tensor(np.arange(4, dtype=np.float32) * 10).realize()
    position = dev.tensor(np.array([0], np.int32)).realize()

    @zyx.jit
    def step():
        position.assign(position + 1)
        return table[position]

    assert [step().numpy().tolist() for _ in range(3)] == [[10.0], [20.0], [30.0]]
    (captured,) = step.steps[next(iter(step.steps))]
    assert captured.checks and not captured.program.checks and not captured.gated_checks
    with pytest.raises(IndexError, match=r"^index 4 is out of bounds for axis 0 with size 4$"):
        step()


def test_a_failing_index_check_raises_before_the_step_updates_anything(dev):
    """A training step whose batch holds a bad class index raises, and its weight keeps its value (the run's gate
    waits for the checks before its launch writing the weight's buffer in place); the next good batch trains from
    there, as eagerly."""
    w = dev.tensor(np.full((3, 4), 0.5, np.float32)).realize()
    x = dev.tensor(np.arange(8, dtype=np.float32).reshape(2, 4)).realize()

    @zyx.jit
    def step(x, labels):
        loss = zyx.nn.cross_entropy(x @ w.T, labels)
        (g,) = loss.backward([w])
        w.assign(w - 0.1 * g)
        return loss

    good, bad = dev.tensor(np.array([0, 2], np.int32)), dev.tensor(np.array([1, 3], np.int32))
    step(x, good), step(x, good)  # captured, then replayed
    before = w.numpy().copy()
    with pytest.raises(IndexError, match="3"):
        step(x, bad)
    np.testing.assert_array_equal(w.numpy(), before)
    w_eager = dev.tensor(before).realize()
    loss = zyx.nn.cross_entropy(x @ w_eager.T, good)
    (g,) = loss.backward([w_eager])
    np.testing.assert_allclose(step(x, good).item(), loss.item(), rtol=1e-6)
    np.testing.assert_allclose(w.numpy(), (w_eager - 0.1 * g).numpy(), rtol=1e-6)


def test_a_step_returning_the_old_value_of_what_it_updates_in_place_returns_the_old_value(dev):
    """`old = w.clone(); w.assign(w * 2); return old`: the program writes w's new value into w's buffer, so the
    replay must copy it first: `old` is the value before the step, on every call as on the first."""
    w = dev.tensor(np.ones(4, np.float32)).realize()

    @zyx.jit
    def step(w):
        old = w.clone()
        w.assign(w * 2)
        return old

    for call in range(4):
        old = step(w)
        np.testing.assert_array_equal(old.numpy(), np.full(4, 2.0 ** call, np.float32))
        np.testing.assert_array_equal(w.numpy(), np.full(4, 2.0 ** (call + 1), np.float32))
