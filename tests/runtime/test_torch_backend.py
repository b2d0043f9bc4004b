"""zyx.Torch(): the torch backend against the numpy reference (bit for bit where integers and random numbers are
concerned), its products, memory accounting, jitted steps, program cache, device specs and torch interop.

Every device-generic test of the suite also runs on zyx.Torch("cpu") (tests/conftest.py); these cover what is
particular to the backend, on zyx.Torch(ZYX_TORCH_TEST_DEVICE) (default "cpu"; "cuda" on a GPU machine), except the
tests of device specs, which use the CPU."""
import gc
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import zyx  # noqa: E402
import zyx.random  # noqa: E402
from zyx import nn  # noqa: E402
from zyx.devices import device_from_spec  # noqa: E402
from zyx.runtime import softmax_fusion  # noqa: E402
from zyx.runtime.interpret import Fused  # noqa: E402
from zyx.runtime.program_code import _direct_writes  # noqa: E402
from zyx.trace.hashing import Walk  # noqa: E402
from zyx.trace.ops import Op  # noqa: E402


@pytest.fixture
def dev():
    return zyx.Torch(os.environ.get("ZYX_TORCH_TEST_DEVICE", "cpu"))


def program_of(tensor):
    """The program the torch device built for `tensor`'s trace (realizing it)."""
    key = Walk([tensor.node]).structure  # built now, or found: a structure realized before
    tensor.realize()
    return tensor.device.programs[key]


# ---- devices -----------------------------------------------------------------------------------------------
def test_specs_find_the_same_device_and_pickling_keeps_it():
    dev = zyx.Torch("cpu")
    assert zyx.Torch(torch.device("cpu")) is dev and device_from_spec(" Torch:CPU ") is dev
    assert pickle.loads(pickle.dumps(dev)) is dev and dev.spec == "torch:cpu" and repr(dev) == "zyx.Torch('cpu')"
    compiled = device_from_spec("torch:cpu+compile")
    assert compiled is zyx.Torch("cpu", compile=True) and compiled is not dev
    assert pickle.loads(pickle.dumps(compiled)) is compiled and repr(compiled) == "zyx.Torch('cpu', compile=True)"
    t = dev.tensor([1.0, 2.0])
    assert pickle.loads(pickle.dumps(t)).device is dev and t.to("cpu").device is zyx.CPU()


def test_devices_torch_cannot_give_are_refused_by_name():
    with pytest.raises(ValueError, match="'tpu' is not a torch device"):
        zyx.Torch("tpu")
    with pytest.raises(ValueError, match="device type 'meta' is not supported"):
        zyx.Torch("meta")
    with pytest.raises(ValueError, match=r"torch:DEVICE"):
        device_from_spec("torch:cpu+fast")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device 0"):
            zyx.Torch("cuda")


def test_without_torch_the_error_names_the_extra():
    script = ("import sys; sys.modules['torch'] = None\nimport zyx\nfor make in (lambda: zyx.Torch(), "
              "lambda: zyx.CPU().ones(2).torch(), lambda: zyx.default_device()):\n"
              "    try: make()\n    except ImportError as error: print(error)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ZYX_DEVICE": "torch:cpu"})
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all("pip install zyx[torch]" in line for line in lines), done.stderr


# ---- against the reference ---------------------------------------------------------------------------------
def integer_and_rounding_program(device):
    """Wrapping integer arithmetic, shifts past the width, bfloat16 rounding at a cast, half precision, views."""
    u = device.tensor(np.array([[0, 1, 2**31, 2**32 - 1]], dtype=np.uint32))
    i = device.tensor(np.array([[-128, -3, 5, 127]], dtype=np.int8))
    h = device.tensor(np.array([[1.0009765625, -2.5, 65504.0, 3.0e-5]], dtype=np.float16))
    wrapped = ((u + u) * u - (u >> 3) + (u << 31)).flip(1)
    shifted = (i << device.tensor(np.array([[1, 7, 8, -1]], dtype=np.int8))) + (i >> 9) + i * 3
    rounded = (h.float() * 1.001).cast(zyx.bfloat16).float() + (h * h).sum(1, keepdim=True).float()
    layout = zyx.cat([i.float(), rounded.T.reshape(1, 4), h.float().pad(((0, 0), (1, 1))).narrow(1, 1, 4)]).permute(1, 0)
    return wrapped, shifted, rounded, layout, (u.cast(zyx.float32) // 7).max(1)


def test_integers_and_rounding_are_bit_identical_to_the_reference(dev):
    for ours, reference in zip(integer_and_rounding_program(dev), integer_and_rounding_program(zyx.CPU())):
        assert ours.dtype == reference.dtype
        np.testing.assert_array_equal(ours.numpy(), reference.numpy())


def bits(device, seed, skip=0):
    """24-bit integers behind `device`'s uniforms, drawn `skip` numbers into the stream of `seed`."""
    zyx.manual_seed(seed)
    zyx.random.reserve(skip)
    first, second = device.rand(300), device.rand(7, 5, dtype=zyx.float16)
    return [(first * 2**24).cast(zyx.uint32).numpy(), (second.float() * 2**24).cast(zyx.uint32).numpy()]


@pytest.mark.parametrize("seed, skip", [(0, 0), (0x0123456789ABCDEF, 2**32 - 100)])  # the second crosses 2**32
def test_random_numbers_are_bit_identical_on_every_device(dev, seed, skip):
    reference = bits(zyx.CPU(), seed, skip)
    for device in (dev, zyx.OpenCL()):
        for ours, theirs in zip(bits(device, seed, skip), reference):
            assert ours.dtype == np.uint32
            np.testing.assert_array_equal(ours, theirs)


def test_without_a_philox_kernel_a_warning_says_why():
    """Where torch cannot build the CUDA Philox kernel (no NVRTC; here no CUDA at all), draws keep the int64 form."""
    from zyx.runtime.torch_arrays import cuda_philox
    if torch.cuda.is_available():
        assert cuda_philox(torch.device("cuda")) is not None
    else:
        with pytest.warns(UserWarning, match="cannot build the Philox kernel .*270 torch ops"):
            assert cuda_philox(torch.device("cuda")) is None


# ---- products ----------------------------------------------------------------------------------------------
def test_products_and_their_gradients_never_store_the_product(dev):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 64, 48), dtype=np.float32), rng.standard_normal((48, 32), dtype=np.float32)
    x, w = dev.tensor(a).realize(), dev.tensor(b).realize()
    y = x @ w
    program = program_of(y)
    assert [step.op for step in program.steps if step.computes] == [Fused.CONTRACT]
    np.testing.assert_allclose(y.numpy(), a @ b, rtol=1e-4, atol=1e-4)
    gx, gw = (y * y).sum().backward([x, w])
    products = [step for step in program_of(gx).steps + program_of(gw).steps if step.op is Fused.CONTRACT]
    assert len(products) >= 2 and all(len(step.shape) <= 4 for step in products)
    np.testing.assert_allclose(gw.numpy(), np.einsum("bik,bij->kj", a, 2 * (a @ b)), rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(gx.numpy(), 2 * (a @ b) @ b.T, rtol=1e-3, atol=1e-2)


NEW_PRECISION_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")  # torch >= 2.9


def cuda_matmul_precision():
    """torch's float32 product precision on CUDA as "tf32" or "ieee", through whichever API this torch reads (its
    default "none" computes in full float32: "ieee")."""
    if NEW_PRECISION_API:
        setting = torch.backends.cuda.matmul.fp32_precision
        return "ieee" if setting == "none" else setting
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


class ProductPrecisions(torch.overrides.TorchFunctionMode):
    """The float32 matmul precision torch is set to at each product a program calls (`read`: how it is read)."""

    def __init__(self, read=cuda_matmul_precision):
        super().__init__()
        self.seen = []
        self.read = read

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.matmul, torch.addmm, torch.einsum):
            self.seen.append(self.read())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("ours, theirs", [("high", "highest"), ("medium", "highest"), ("highest", "high")])
def test_products_run_at_zyxs_precision_whatever_torchs_setting(dev, ours, theirs):
    """zyx.set_float32_matmul_precision decides (TF32 on CUDA: torch's "high"), during the program only; torch's
    own setting is back after it, for plain and jitted programs alike."""
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    x = dev.tensor(a).realize()
    jitted = zyx.jit(lambda p: (p @ p.T).sum())
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(theirs)
        zyx.set_float32_matmul_precision(ours)
        with ProductPrecisions() as products:
            product = (x @ x.T).numpy()
            total = jitted(x).item()
        assert products.seen == ["ieee" if ours == "highest" else "tf32"] * 2
        assert torch.get_float32_matmul_precision() == theirs
        np.testing.assert_array_equal(product, a @ a.T)  # small integers: exact in TF32 too
        assert total == (a @ a.T).sum()
    finally:
        zyx.set_float32_matmul_precision("highest")
        torch.set_float32_matmul_precision(before)


@pytest.mark.skipif(not NEW_PRECISION_API, reason="torch < 2.9 has only the global precision setting")
@pytest.mark.parametrize("theirs", ["tf32", "ieee"])
def test_products_leave_a_precision_set_through_torchs_backend_api_alone(dev, theirs):
    """A user who set torch.backends.cuda.matmul.fp32_precision (torch >= 2.9; torch then refuses reads of the old
    global setting) still gets zyx's precision inside programs and their own setting back after them."""
    x = dev.tensor(np.eye(3, dtype=np.float32)).realize()
    before = torch.backends.cuda.matmul.fp32_precision
    try:
        torch.backends.cuda.matmul.fp32_precision = theirs
        with ProductPrecisions() as products:
            product = (x @ x.T).numpy()
        assert products.seen == ["ieee"]
        assert torch.backends.cuda.matmul.fp32_precision == theirs
        np.testing.assert_array_equal(product, np.eye(3, dtype=np.float32))
    finally:
        torch.backends.cuda.matmul.fp32_precision = before


@pytest.mark.skipif(not NEW_PRECISION_API, reason="torch < 2.9 has only the global precision setting")
def test_torchs_default_precision_is_left_as_it_is_where_it_means_zyxs(dev):
    """torch's default per-backend setting, "none", computes in full float32: a program at zyx's "highest" runs
    under it unchanged (no write, no restore: each run saves both); one at "high" still runs in TF32."""
    x = dev.tensor(np.eye(3, dtype=np.float32)).realize()
    before = torch.backends.cuda.matmul.fp32_precision
    try:
        torch.backends.cuda.matmul.fp32_precision = "none"
        with ProductPrecisions(read=lambda: torch.backends.cuda.matmul.fp32_precision) as products:
            (x @ x.T).realize()
            zyx.set_float32_matmul_precision("high")
            (x @ x.T).realize()
        assert products.seen == ["none", "tf32"] and torch.backends.cuda.matmul.fp32_precision == "none"
    finally:
        zyx.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.fp32_precision = before


def test_a_jitted_step_follows_a_precision_set_after_its_first_call(dev):
    """The step's first call ran at "highest"; after zyx.set_float32_matmul_precision("high") it traces again
    (step/recapture.py) and its products run in TF32, and back at "highest" in float32 again."""
    x = dev.tensor(np.eye(4, dtype=np.float32)).realize()
    jitted = zyx.jit(lambda p: (p @ p).sum())
    seen = []
    try:
        for precision in ("highest", "high", "highest"):
            zyx.set_float32_matmul_precision(precision)
            with ProductPrecisions() as products:
                assert jitted(x).item() == 4.0
            seen.append(products.seen)
    finally:
        zyx.set_float32_matmul_precision("highest")
    assert seen == [["ieee"], ["tf32"], ["ieee"]]


def test_a_sum_over_an_axis_both_factors_broadcast_counts_it(dev):
    """(2 * 3) summed over 3 × 4 broadcast elements: the contraction multiplies by the axes neither factor has."""
    product = zyx.full((3, 4), 2.0, device=dev) * zyx.full((3, 4), 3.0, device=dev).realize()
    assert product.sum(1).tolist() == [24.0] * 3 and product.sum().item() == 72.0


def test_products_read_unexpanded_operands(dev):
    """A batched product's operands enter the contraction as their sources: the expands exist in no step."""
    a, b = np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.arange(20, dtype=np.float32).reshape(4, 5)
    program = program_of(dev.tensor(a) @ dev.tensor(b))
    contract, = [step for step in program.steps if step.op is Fused.CONTRACT]
    assert all(program.steps[s].op is not Op.EXPAND for s in contract.sources)
    assert contract.arg[1] == (2, 3, 5, 4) and all(program.steps[s].shape != (2, 3, 5, 4) for s in contract.sources)
    np.testing.assert_array_equal((dev.tensor(a) @ dev.tensor(b)).numpy(), a @ b)


class TorchCalls(torch.overrides.TorchFunctionMode):
    """The torch functions a realize calls, the grad mode's switching aside."""

    def __init__(self):
        super().__init__()
        self.called = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is not torch._C._set_grad_enabled:
            self.called.append(func)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("left, right", [((16,), (16,)), ((5, 16), (16,)), ((16,), (16, 7))])
def test_products_of_a_vector_are_one_matmul_call(dev, left, right):
    """A dot, a matrix-vector and a vector-matrix product pass the vector to torch.matmul as it is: a replay of
    the program is that one call, no reshapes to matrices and back."""
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal(left, dtype=np.float32), rng.standard_normal(right, dtype=np.float32)
    x, y = dev.tensor(a).realize(), dev.tensor(b).realize()
    np.testing.assert_allclose((x @ y).numpy(), a @ b, rtol=1e-5, atol=1e-5)  # the first run
    with TorchCalls() as torch_calls:
        product = (x @ y).realize()
    assert torch_calls.called == [torch.matmul]
    np.testing.assert_allclose(product.numpy(), a @ b, rtol=1e-5, atol=1e-5)


def test_expanded_operands_are_read_unexpanded_wherever_they_broadcast(dev):
    """A column compared with a row, both expanded to the matrix (cross-entropy's one-hot test of the labels
    against the classes), reads both unexpanded: torch broadcasts them, and no step expands either."""
    column, row = np.arange(4).reshape(4, 1) % 3, np.arange(3).reshape(1, 3)
    equal = dev.tensor(column).expand(4, 3) == dev.tensor(row).expand(4, 3)
    program = program_of(equal)
    assert Op.EXPAND not in [step.op for step in program.steps]
    np.testing.assert_array_equal(equal.numpy(), column == row)


def test_chains_fuse_into_one_torch_call_each(dev):
    """relu, its gradient, a <= b, a != b, a +- b*c, a + (b - a)*w and a linear layer's bias are one step each
    (fusions.py, view_chains.py), with the reference's values (nan through relu too); permutes that cancel are none."""
    rng = np.random.default_rng(3)
    a, w, bias = (rng.standard_normal(shape, dtype=np.float32) for shape in ((5, 7), (6, 7), (6,)))
    a[0, 0], a[1, 1] = np.nan, 0.0

    def run(device):
        x, weight, b = device.tensor(a), device.tensor(w), device.tensor(bias)
        h = (x @ weight.T.T.T + b).relu()  # a linear layer
        gx, = (h * h).sum().backward([x])
        y = device.tensor(np.nan_to_num(a))
        return [h, gx, x <= 0.5, y + y * 3.0, y - y * b[:5].reshape(5, 1), y + (y.exp() - y) * 0.25,
                (h.reshape(5, 2, 3) @ y[:, :3].reshape(5, 3, 1) + 1.0).reshape(5, 2), x != x.T[:5, :5].sum(1)[0]]

    ours, reference = run(dev), run(zyx.CPU())
    for got, expected in zip(ours, reference):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    fused = [step.op for step in program_of(run(dev)[1]).steps]
    assert {Fused.RELU, Fused.RELU_GRAD, Fused.CONTRACT} <= set(fused)
    assert Op.WHERE not in fused and Op.OR not in fused  # the mask is not stored: the gradient reads relu's output
    less_equal, muladd, mulsub, lerp = run(dev)[2:6]
    ops = [step.op for step in program_of(muladd + mulsub + lerp).steps]
    assert {Fused.MULADD, Fused.MULSUB, Fused.LERP} <= set(ops) and Op.MUL not in ops
    assert [step.op for step in program_of(less_equal.reshape(35)).steps if step.computes] == [Fused.LE]
    assert [step.op for step in program_of(run(dev)[-1].reshape(35)).steps if step.computes][-1] is Fused.NE
    linear = program_of(run(dev)[0])
    contract, = [step for step in linear.steps if step.op is Fused.CONTRACT]
    assert len(contract.sources) == 3 and [step.op for step in linear.steps if step.computes] == \
        [Fused.CONTRACT, Fused.RELU]  # the bias added by the product (torch.addmm), relu written over it
    assert Op.PERMUTE not in [step.op for step in linear.steps]  # the matmul's own w.T and w.T.T.T cancel


def test_a_one_hot_code_compared_with_one_is_its_mask(dev):
    """`one_hot(t) == 1` (cross-entropy's mask) is the comparison one_hot made, not a cast and a second one, and
    `where(mask, cast(mask), 0)` is the cast (with -0.0 it is not), and values cast in two shapes are cast once.
    Values as the reference's, and a pad's (torch.constant_pad_nd, last axis first)."""
    labels = np.array([2, 0, 1, 2, 1])

    def run(device):
        codes = device.tensor(labels).one_hot(3)
        mask = device.tensor(labels) != 1
        values = device.tensor(labels)
        return [(codes == 1).where(1.5, -1.0), codes.float().pad([(1, 0), (0, 2)], value=-2.0),
                mask.where(mask.float(), 0.0) * 3.0, mask.where(mask.float(), -0.0),
                values.reshape(5, 1).float() * values.float().reshape(1, 5)]

    run(dev)[0].realize()  # with one_hot's range check
    computed = [step.op for step in latest_program(dev).steps if step.computes]
    assert computed.count(Op.CMPEQ) == 1  # one_hot's own
    assert Op.WHERE not in [step.op for step in program_of(run(dev)[2]).steps]
    assert Op.WHERE in [step.op for step in program_of(run(dev)[3]).steps]
    assert [step.op for step in program_of(run(dev)[4]).steps if step.computes] == [Op.CAST, Op.MUL]
    for ours, reference in zip(run(dev), run(zyx.CPU())):
        np.testing.assert_array_equal(ours.numpy(), reference.numpy())
        np.testing.assert_array_equal(np.signbit(ours.numpy()), np.signbit(reference.numpy()))


def test_cat_is_one_join_and_pads_that_do_not_tile_stay_pads(dev):
    """zyx.cat (each piece padded with zeros to the whole, the pads summed) is one torch.cat step, booleans (OR-ed)
    and integers too, its -0.0 kept as numpy.concatenate keeps it; summed pads that overlap or leave a gap along
    the axis, or widen two axes, compute as they are written."""
    rng = np.random.default_rng(11)
    pieces = [rng.standard_normal((n, 3), dtype=np.float32) for n in (2, 1, 4)]
    pieces[1][0, 0] = -0.0
    joined = zyx.cat([dev.tensor(piece) for piece in pieces])
    assert [step.op for step in program_of(joined).steps if step.computes] == [Fused.CAT]
    np.testing.assert_array_equal(joined.numpy(), np.concatenate(pieces))
    assert np.signbit(joined.numpy()[2, 0])
    flags, counts = [np.array([True, False]), np.array([False, True])], [np.arange(3), np.arange(2)]
    for arrays, axis in ((flags, 0), (counts, 0), ([piece.T for piece in pieces], 1)):
        joined = zyx.cat([dev.tensor(array) for array in arrays], axis)
        assert [step.op for step in program_of(joined).steps if step.computes] == [Fused.CAT]
        np.testing.assert_array_equal(joined.numpy(), np.concatenate(arrays, axis))
    a, b = pieces[0], pieces[2][:2]
    for widths in ([(0, 1), (0, 0)], [(1, 0), (0, 0)]), ([(0, 3), (0, 0)], [(3, 0), (0, 0)]), \
                  ([(0, 2), (0, 1)], [(2, 0), (1, 0)]):  # overlapping, with a gap, along two axes
        padded = dev.tensor(a).pad(widths[0]) + dev.tensor(b).pad(widths[1])
        assert Fused.CAT not in [step.op for step in program_of(padded).steps]
        np.testing.assert_array_equal(padded.numpy(), np.pad(a, widths[0]) + np.pad(b, widths[1]))


def latest_program(dev):
    """The program the device built last."""
    return dev.programs[next(reversed(dev.programs))]


@pytest.mark.parametrize("shape, axis, dtype", [((6, 5), -1, "float32"), ((3, 4, 5), 1, "float32"),
                                                ((6, 5), 0, "float16")])
def test_log_softmax_and_its_gradient_are_one_torch_call_each(dev, shape, axis, dtype):
    """log_softmax (x - log(sum(exp(x - max)))) and its gradient, realized together as a training step does, are
    torch.log_softmax and its backward (softmax_fusion.py) with the reference's values: no exp, log or max
    is computed. Masked entries (-inf) and a row of them give what the reference gives."""
    rng = np.random.default_rng(7)
    a, w = rng.standard_normal(shape, dtype=np.float32) * 4, rng.standard_normal(shape, dtype=np.float32)
    rows = np.moveaxis(a, axis, -1)  # a view: its last axis is the one log_softmax normalizes
    rows[(0,) * (len(shape) - 1)][:2] = -np.inf
    rows[(1,) * (len(shape) - 1)] = -np.inf

    def run(device):
        x = device.tensor(a.astype(dtype))
        values = x.log_softmax(axis)
        gx, = (values * device.tensor(w.astype(dtype))).sum().backward([x])  # a gradient not reading `values`
        zyx.realize(gx, values)  # ...asked for first: the trace's order meets it before the forward
        return values, gx

    ours, reference = run(dev), run(zyx.CPU())
    tolerance = 1e-5 if dtype == "float32" else 2e-2
    for got, expected in zip(ours, reference):
        np.testing.assert_allclose(got.numpy().astype(np.float32), expected.numpy().astype(np.float32),
                                   rtol=tolerance, atol=tolerance)
    computed = [step.op for step in latest_program(dev).steps if step.computes]
    assert computed.count(Fused.LOG_SOFTMAX) == computed.count(Fused.LOG_SOFTMAX_GRAD) == 1
    assert not {Op.EXP, Op.LOG, Op.RMAX, Op.RECIP} & set(computed)
    inference = dev.tensor(a).log_softmax(axis)
    assert [step.op for step in program_of(inference).steps if step.computes] == [Fused.LOG_SOFTMAX]


def test_a_log_softmax_fuses_and_an_exp_read_elsewhere_stays_computed(dev):
    """A log_softmax spelled by hand fuses, and its exp, which something else also reads, is still computed;
    cross_entropy (logsumexp minus the target's logit, no log-probability matrix) gives the reference's loss and
    gradient."""
    rng = np.random.default_rng(8)
    logits, labels = rng.standard_normal((16, 7), dtype=np.float32), rng.integers(0, 7, 16)

    def run(device):
        x = device.tensor(logits)
        loss = nn.cross_entropy(x, device.tensor(labels))
        gx, = loss.backward([x])
        shift = x.max(1, keepdim=True).detach()
        exponential = (x - shift).exp()
        log_probs = x - (exponential.sum(1, keepdim=True).log() + shift)
        zyx.realize(loss, gx)
        shared = [log_probs, exponential * 2]
        zyx.realize(*shared)
        return loss, gx, *shared

    ours, reference = run(dev), run(zyx.CPU())
    for got, expected in zip(ours, reference):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    programs = list(dev.programs.values())
    shared = [s.op for s in programs[-1].steps if s.computes]
    assert Fused.LOG_SOFTMAX in shared and Op.EXP in shared and Op.LOG not in shared


# logsumexp as torch.logsumexp, its gradient as torch.softmax times the upstream gradient (softmax_fusion.py): the
# cross-entropy's form without label smoothing; against the reference and against the fusions turned off
SPELLED = {Op.EXP, Op.LOG, Op.RMAX, Op.RECIP}  # what the trace's spellings compute and the fused steps do not


def without_softmax_fusion(dev, monkeypatch):
    """`dev` builds its programs again without softmax_fusion, for the rest of the test."""
    monkeypatch.setattr(softmax_fusion, "fuse", lambda order, *_: list(order))
    fresh_programs(dev, monkeypatch)


def computed(dev):
    """The ops of the steps the device's latest program computes."""
    return [step.op for step in latest_program(dev).steps if step.computes]


def assert_same(got, expected, dtype):
    tolerance = {"float16": 2e-2, "float32": 1e-5, "float64": 1e-12}[dtype]
    for ours, reference in zip(got, expected):
        np.testing.assert_allclose(ours.numpy().astype(np.float64), reference.numpy().astype(np.float64),
                                   rtol=tolerance, atol=tolerance)


def cross_entropy_run(device, logits, labels, smoothing):
    x = device.tensor(logits)
    loss = nn.cross_entropy(x, device.tensor(labels), label_smoothing=smoothing)
    gx, = loss.backward([x])
    zyx.realize(loss, gx)
    return loss, gx


@pytest.mark.parametrize("shape", [(5, 7), (1, 3), (13, 1), (3, 4, 6), (2, 37, 3, 2)])  # (N, C, d...): classes
@pytest.mark.parametrize("smoothing", [0.0, 0.1])  # moved last
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_fused_and_unfused_match_the_reference(dev, shape, smoothing, dtype, monkeypatch):
    """The loss and its gradient, fused and not, give the reference's values (an ignored row among them). Fused
    without label smoothing, the rows are torch's cross_entropy (Fused.CROSS_ENTROPY) and the gradient softmax
    with a scatter-add at the targets (Fused.CROSS_ENTROPY_GRAD): no logsumexp, no one-hot mask (CMPEQ) and no
    exp, log, maximum or reciprocal. With label smoothing the log-probabilities are `logits - lse`, one
    subtraction, both reading the one logsumexp (Fused.LOGSUMEXP), and the gradient's softmax is
    Fused.LOGSUMEXP_GRAD."""
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal(shape) * 3).astype(dtype)
    labels = rng.integers(0, shape[1], shape[:1] + shape[2:])
    labels.reshape(-1)[0] = -100  # ignore_index: an entry that counts for nothing
    reference = cross_entropy_run(zyx.CPU(), logits, labels, smoothing)
    fused = cross_entropy_run(dev, logits, labels, smoothing)
    assert_same(fused, reference, dtype)
    ops = computed(dev)
    if shape[1] > 1 and not smoothing:  # (one class: the trace broadcasts nothing along the row, which stays spelled)
        assert ops.count(Fused.CROSS_ENTROPY) == 1 and ops.count(Fused.CROSS_ENTROPY_GRAD) == 1
        assert not (SPELLED | {Op.CMPEQ, Fused.LOGSUMEXP, Fused.LOGSUMEXP_GRAD}) & set(ops)
    elif shape[1] > 1:
        assert ops.count(Fused.LOGSUMEXP) == 1 and ops.count(Fused.LOGSUMEXP_GRAD) == 1
        assert not SPELLED & set(ops) and Fused.LOG_SOFTMAX not in ops
    without_softmax_fusion(dev, monkeypatch)
    assert_same(cross_entropy_run(dev, logits, labels, smoothing), reference, dtype)
    assert Op.EXP in computed(dev) and not {Fused.LOGSUMEXP, Fused.CROSS_ENTROPY} & set(computed(dev))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("bad", [7, -3])
def test_cross_entropy_fused_raises_index_error_naming_a_bad_label(dev, jit, bad):
    """A label outside the classes (not ignore_index) raises the reference's IndexError naming it, jitted or not,
    and a jitted step leaves the weights as they were: the fused steps clamp the index they gather and scatter with (an
    out-of-range one would be a device-side assert on CUDA) and the range check raises; the good labels' step
    calls torch's nll_loss and a scatter-add, and no logsumexp."""
    rng = np.random.default_rng(8)
    data, weight = rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal((4, 7)).astype(np.float32)
    labels = np.array([0, 6, 3, -100, bad, 1])
    w, opt = dev.tensor(weight).realize(), nn.SGD(lr=0.1)

    def step(x, y):
        loss = nn.cross_entropy(x @ w, y)
        opt.update([w], loss.backward([w]), realize_with=[loss])
        return loss

    run, x, good = zyx.jit(step) if jit else step, dev.tensor(data).realize(), np.where(labels == bad, 2, labels)
    ops = aten_ops(lambda: run(x, dev.tensor(good)).item())
    assert {"nll_loss_forward", "scatter_add_"} <= set(ops) and "logsumexp" not in ops
    updated = w.numpy()
    with pytest.raises(IndexError, match=f"target {bad} is out of range for 7 classes"):
        run(x, dev.tensor(labels)).item()
    if jit:  # (un-jitted, the update has made w a lazy expression of the bad labels already)
        np.testing.assert_array_equal(w.numpy(), updated)


def test_a_one_hot_pick_without_a_range_check_stays_spelled(dev):
    """Cross-entropy's form spelled with a mask of its own (`t == arange`, no range check: an index outside the
    classes hits nothing and picks 0) is not fused: the fused steps would gather and scatter at the clamped index
    and give other values."""
    rng = np.random.default_rng(10)
    logits, weights = rng.standard_normal((5, 4)).astype(np.float32), rng.random(5).astype(np.float32)
    labels = np.array([0, 3, 9, -2, 1])

    def run(device):
        x, w = device.tensor(logits), device.tensor(weights)
        t = device.tensor(labels)
        hits = t.unsqueeze(-1) == t._arange(4)  # (the marked 0..3 one_hot_mask compares with: found by the fusion)
        rows = x.logsumexp(-1) * w + -(hits.where(x, 0).sum(-1)) * w
        gx, = rows.sum().backward([x])
        zyx.realize(rows, gx)
        return rows, gx

    assert_same(run(dev), run(zyx.CPU()), "float32")
    assert not {Fused.CROSS_ENTROPY, Fused.CROSS_ENTROPY_GRAD} & set(computed(dev))


def test_a_replay_checks_its_labels_again_only_once_they_change(dev):
    """A jitted step's index check (its own program and a read, which waits for the device) runs again only for
    other label buffers or ones written since it passed (torch's version counter): the same labels pass without
    it; written in place through `t.torch()`, they are checked again and a bad one raises."""
    rng = np.random.default_rng(9)
    data, weight = rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal((4, 7)).astype(np.float32)
    w, opt = dev.tensor(weight).realize(), nn.SGD(lr=0.1)

    @zyx.jit
    def step(x, y):
        loss = nn.cross_entropy(x @ w, y)
        opt.update([w], loss.backward([w]), realize_with=[loss])
        return loss

    x, y = dev.tensor(data).realize(), dev.tensor(np.array([0, 6, 3, -100, 2, 1])).realize()
    for _ in range(2):
        step(x, y).item()
    checked = aten_ops(lambda: step(x, dev.tensor(np.array([1, 2, 3, 4, 5, 6])).realize()).item())
    assert "amax" in checked and len(aten_ops(lambda: step(x, y).item())) < len(checked)
    y.torch()[4] = 9
    with pytest.raises(IndexError, match="target 9 is out of range for 7 classes"):
        step(x, y)


def logsumexp_run(device, data, weights, axis, keepdim):
    """logsumexp along `axis`, realized with the gradient of its weighted sum, as a training step does."""
    x = device.tensor(data)
    lse = x.logsumexp(axis, keepdim=keepdim)
    gx, = (lse * device.tensor(weights)).sum().backward([x])
    zyx.realize(lse, gx)
    return lse, gx


@pytest.mark.parametrize("shape, axis", [((6, 5), -1), ((6, 5), 0), ((3, 4, 5), 1), ((2, 3, 4), (0, 2))])
@pytest.mark.parametrize("keepdim", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_logsumexp_and_its_gradient_along_any_axis(dev, shape, axis, keepdim, dtype, monkeypatch):
    """One axis, last or not, kept or dropped: torch.logsumexp and torch.softmax, the reference's values, with
    masked entries (-inf) and a row of them (its lse -inf, its gradient nan, as the reference's); float16 through
    the generic forms of the fused steps (interpret.py), rounded once. Several axes (which torch.softmax has no
    form for) stay as the trace spells them, with the same values."""
    rng = np.random.default_rng(11)
    data = (rng.standard_normal(shape) * 4).astype(dtype)
    rows = np.moveaxis(data, axis if isinstance(axis, int) else 0, -1)
    rows[(0,) * (len(shape) - 1)][:2] = -np.inf
    if isinstance(axis, int):
        rows[(1,) * (len(shape) - 1)] = -np.inf
    weights = rng.standard_normal(np.sum(data, axis, keepdims=keepdim).shape).astype(dtype)
    reference = logsumexp_run(zyx.CPU(), data, weights, axis, keepdim)
    assert_same(logsumexp_run(dev, data, weights, axis, keepdim), reference, dtype)
    ops = computed(dev)
    if isinstance(axis, int):
        assert ops.count(Fused.LOGSUMEXP) == ops.count(Fused.LOGSUMEXP_GRAD) == 1 and not SPELLED & set(ops)
    else:
        assert Fused.LOGSUMEXP not in ops and Fused.LOGSUMEXP_GRAD not in ops and Op.EXP in ops
    without_softmax_fusion(dev, monkeypatch)
    assert_same(logsumexp_run(dev, data, weights, axis, keepdim), reference, dtype)


def test_a_logsumexp_alone_and_beside_an_exp_read_elsewhere(dev):
    """Inference (no gradient): one torch.logsumexp; beside an exp something else also reads, that exp is still
    computed and the logsumexp fused."""
    data = np.random.default_rng(4).standard_normal((7, 9)).astype(np.float32)
    alone = dev.tensor(data).logsumexp(1)
    assert [step.op for step in program_of(alone).steps if step.computes] == [Fused.LOGSUMEXP]
    np.testing.assert_allclose(alone.numpy(), zyx.CPU().tensor(data).logsumexp(1).numpy(), rtol=1e-6)

    def shared(device):
        x = device.tensor(data)
        shift = x.max(1, keepdim=True).detach()
        exponential = (x - shift).exp()
        values = [exponential.sum(1, keepdim=True).log() + shift, exponential * 2]
        zyx.realize(*values)
        return values

    assert_same(shared(dev), shared(zyx.CPU()), "float32")
    assert Fused.LOGSUMEXP in computed(dev) and Op.EXP in computed(dev) and Op.LOG not in computed(dev)


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
def test_a_jitted_training_step_calls_torchs_cross_entropy(dev, monkeypatch, optimizer):
    """A jitted cross-entropy step's replay (W4's form: products, ReLU, cross_entropy, an update) calls torch's
    log_softmax and nll_loss forward and softmax and a scatter-add back, once each, and no logsumexp, exp, log,
    reciprocal or one-hot comparison, with at least 8 operators fewer than the step without the fusions (SGD 49
    against 61, Adam 63 against 75 on torch 2.13's CPU); both give the reference's losses."""
    rng = np.random.default_rng(5)
    data, labels = rng.standard_normal((16, 10)).astype(np.float32), rng.integers(0, 10, 16)
    weight = rng.standard_normal((10, 10)).astype(np.float32)

    def replay(device):
        w, v = device.tensor(weight).realize(), device.tensor(weight.T.copy()).realize()
        opt = nn.SGD(lr=0.1) if optimizer == "SGD" else nn.Adam(lr=0.01)
        x, y = device.tensor(data).realize(), device.tensor(labels).realize()

        @zyx.jit
        def step(x, y):
            loss = nn.cross_entropy((x @ w).relu() @ v, y)
            opt.update([w, v], loss.backward([w, v]), realize_with=[loss])
            return loss

        losses = [step(x, y).item() for _ in range(3)]
        return losses, aten_ops(lambda: step(x, y).item())

    reference, _ = replay(zyx.CPU())
    losses, fused = replay(dev)
    np.testing.assert_allclose(losses, reference, rtol=1e-5)
    assert [fused.count(name) for name in ("_log_softmax", "nll_loss_forward", "_softmax", "scatter_add_")] == \
        [1, 1, 1, 1]
    assert not {"logsumexp", "exp", "log", "reciprocal", "eq"} & set(fused)
    without_softmax_fusion(dev, monkeypatch)
    losses, spelled = replay(dev)
    np.testing.assert_allclose(losses, reference, rtol=1e-5)
    assert "logsumexp" not in spelled and "exp" in spelled and len(fused) <= len(spelled) - 8


# ---- replays -----------------------------------------------------------------------------------------------
def test_replays_match_the_first_run_in_values_and_memory(dev):
    """The first run of a structure follows every storage; later runs replay the generated function and count
    what the first measured: the same values as the reference, the same bytes held and the same peak."""
    rng = np.random.default_rng(5)

    def program(device, seed):
        data = np.random.default_rng(seed).standard_normal((6, 5), dtype=np.float32)
        x, w = device.tensor(data), device.tensor(rng_w)
        h = (x @ w).relu() - 0.5                                      # product, constant views
        u = device.tensor(np.arange(6, dtype=np.uint32) * seed).reshape(6, 1) * 3  # generic uint32 steps
        return [h.T.flip(0)[1:, ::2].max(1), (h.exp() / h.exp().sum(1, keepdim=True)).cast(zyx.float16),
                u.cast(zyx.float32) + h]

    rng_w = rng.standard_normal((5, 4), dtype=np.float32)
    gc.collect()
    zyx.reset_stats()
    footprints = []
    for seed in (1, 2, 3):
        before = zyx.memory_stats(dev)["current_bytes"]
        zyx.reset_peak_memory(dev)
        outputs = program(dev, seed)
        zyx.realize(*outputs)
        stats = zyx.memory_stats(dev)
        footprints.append((stats["current_bytes"] - before, stats["peak_bytes"] - before))
        for ours, reference in zip(outputs, program(zyx.CPU(), seed)):
            np.testing.assert_allclose(ours.numpy().astype(np.float32), reference.numpy().astype(np.float32),
                                       rtol=2e-3, atol=1e-5)
        del outputs
        gc.collect()
    assert zyx.stats()["schedule_cache_hits"] >= 2 and footprints[1:] == footprints[:1] * 2


# ---- memory ------------------------------------------------------------------------------------------------
def test_intermediates_are_freed_at_their_last_use(dev):
    x, nbytes = dev.randn(1 << 16).realize(), 4 << 16
    gc.collect()
    before = zyx.memory_stats(dev)["current_bytes"]
    zyx.reset_peak_memory(dev)
    y = (((x * 2).exp() + 1).sin() * x - 3).tanh().sqrt().realize()
    stats = zyx.memory_stats(dev)
    assert stats["current_bytes"] == before + nbytes
    assert stats["peak_bytes"] - before <= 2 * nbytes + 64  # each step's input is dropped before the next
    del y
    gc.collect()
    assert zyx.memory_stats(dev)["current_bytes"] == before


def test_a_step_writes_over_a_source_only_when_no_view_of_it_is_read_later(dev):
    a = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)

    def program(device):
        y = (device.tensor(a) * 2).exp()
        view = y.T            # read after y's last direct reader
        z = (y + 1).sin()     # may write over y's storage only if nothing reads y (or view) afterwards
        return [(view * 3).sum(0), z * 2, (z - 1).tanh()]

    outputs = program(dev)
    zyx.realize(*outputs)
    program_steps = dev.programs[next(reversed(dev.programs))].steps
    assert any(step.into is not None for step in program_steps)
    for ours, reference in zip(outputs, program(zyx.CPU())):
        np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-5)  # torch's tanh is not numpy's


def test_jitted_training_matches_the_reference_in_place_with_flat_memory(dev):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((32, 6), dtype=np.float32), rng.integers(0, 3, 32)
    sizes = [(6, 8), (8, 3)]
    initial = [(rng.uniform(-0.4, 0.4, (o, i)).astype(np.float32), rng.uniform(-0.4, 0.4, o).astype(np.float32))
               for i, o in sizes]

    def run(device, jit, steps=4):
        layers = []
        for w, b in initial:
            layer = nn.Linear(w.shape[1], w.shape[0], device=device)
            layer.weight, layer.bias = device.tensor(w), device.tensor(b)
            layers.append(layer)
        params = [t for layer in layers for t in (layer.weight, layer.bias)]
        opt = nn.Adam(lr=1e-2)
        x, y = device.tensor(data[0]), device.tensor(data[1])

        def step(x, y):
            loss = nn.cross_entropy(layers[1](layers[0](x).relu()), y)
            opt.update(params, loss.backward(params), realize_with=[loss])
            return loss
        step = zyx.jit(step) if jit else step
        losses, held = [], []
        for _ in range(steps):
            losses.append(step(x, y).item())
            gc.collect()
            held.append(zyx.memory_stats(device)["current_bytes"])
        return losses, held, step, params, (x, y)

    losses, held, step, params, batch = run(dev, jit=True)
    reference = run(zyx.CPU(), jit=False)[0]
    np.testing.assert_allclose(losses, reference, rtol=1e-5)
    assert len(step.captured) == 1 and held[1:] == held[1:2] * 3
    program = next(iter(step.steps.values()))[0].program
    assert len(program.aliases) >= 3 * len(params)  # every parameter and both Adam moments, written in place
    assert sum(s.into is not None for s in program.steps) > 3 * len(params)  # update chains reuse their temporaries
    addresses = [p.node.buffer.data_ptr() for p in params]
    step(*batch).item()
    assert [p.node.buffer.data_ptr() for p in params] == addresses


def test_jitted_updates_computed_into_their_buffer_only_where_no_view_of_it_is_read(dev):
    """`w - 0.5 * g` is computed straight into w's buffer (out=); `v.T + w` reads v through a transposing view,
    so it is computed apart and then copied in. Both match numpy over several calls."""
    a, b = np.arange(9, dtype=np.float32).reshape(3, 3), np.linspace(-1, 1, 9, dtype=np.float32).reshape(3, 3)
    w, v, g = dev.tensor(a), dev.tensor(b), dev.tensor(np.full((3, 3), 2.0, np.float32))

    @zyx.jit
    def step(g):
        w.assign(w - 0.5 * g)
        v.assign(v.T + w)
        return (w * v).sum()

    addresses = None
    for _ in range(4):
        total = step(g).item()
        a = a - 0.5 * 2.0
        b = b.T + a
        np.testing.assert_allclose(total, (a * b).sum(), rtol=1e-5)
        held = (w.node.buffer.data_ptr(), v.node.buffer.data_ptr())
        assert addresses in (None, held)  # replays write into the same buffers
        addresses = held
    np.testing.assert_array_equal(w.numpy(), a)
    np.testing.assert_array_equal(v.numpy(), b)
    program = next(iter(step.steps.values()))[0].program
    assert len(program.aliases) == 2 and len(_direct_writes(program, dev.arrays)) == 1


def test_an_update_waits_for_the_last_read_of_the_old_value_and_is_computed_into_its_buffer(dev):
    """SGD on a two-layer product: the first layer's input gradient reads the second layer's old weight after
    that weight's gradient is known. Its update runs after that read, straight into the weight's buffer (no
    temporary, no copy), and every update matches numpy over several calls."""
    rng = np.random.default_rng(13)
    data, first, second = (rng.standard_normal(shape, dtype=np.float32) for shape in ((4, 3), (3, 5), (5, 2)))
    x, w1, w2 = dev.tensor(data), dev.tensor(first), dev.tensor(second)

    @zyx.jit
    def step(x):
        loss = ((x @ w1).tanh() @ w2).square().sum()
        g1, g2 = loss.backward([w1, w2])
        w1.assign(w1 - 0.1 * g1)
        w2.assign(w2 - 0.1 * g2)
        return loss

    reference = torch.tensor(first, requires_grad=True), torch.tensor(second, requires_grad=True)
    for _ in range(3):
        loss = ((torch.from_numpy(data) @ reference[0]).tanh() @ reference[1]).square().sum()
        loss.backward()
        np.testing.assert_allclose(step(x).item(), loss.item(), rtol=1e-5)
        with torch.no_grad():
            for weight in reference:
                weight -= 0.1 * weight.grad
                weight.grad = None
        np.testing.assert_allclose(w1.numpy(), reference[0].detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(w2.numpy(), reference[1].detach().numpy(), rtol=1e-5, atol=1e-6)
    program = next(iter(step.steps.values()))[0].program
    assert len(program.aliases) == 2 and len(_direct_writes(program, dev.arrays)) == 2  # no copies


# ---- programs ----------------------------------------------------------------------------------------------
def test_one_program_per_trace_structure(dev):
    zyx.reset_stats()
    values = [((dev.tensor(np.full(5, v, np.float32)) * 2).exp() + 3).numpy() for v in (1.0, 2.0, 3.0)]
    stats = zyx.stats()
    assert stats["graphs_scheduled"] == 1 and stats["schedule_cache_hits"] == 2 and stats["kernels_launched"] == 9
    np.testing.assert_allclose(values[2], np.exp(np.full(5, 6.0, np.float32)) + 3, rtol=1e-6)


def test_a_run_calls_its_gate_before_computing_anything(dev):
    """A replay's index checks, as the gate of `run`: a failing one raises before the program runs (it runs as
    one piece on this backend, so the gate comes first)."""
    x = dev.tensor(np.arange(4, dtype=np.float32)).realize()
    program = program_of(x * 2 + 1)
    calls, launched = [], zyx.stats()["kernels_launched"]
    (out,) = dev.run(program, [x.node.buffer], [], gate=lambda: calls.append(zyx.stats()["kernels_launched"]))
    assert calls == [launched] and out.tolist() == [1, 3, 5, 7]

    def failing():
        raise IndexError("index 9 is out of bounds")
    before = zyx.stats()["kernels_launched"]
    with pytest.raises(IndexError, match="index 9"):
        dev.run(program, [x.node.buffer], [], gate=failing)
    assert zyx.stats()["kernels_launched"] == before


def test_viz_draws_a_jitted_torch_step(dev, tmp_path):
    x = dev.randn(4, 3).realize()
    w = dev.randn(3, 2).realize()
    step = zyx.jit(lambda x: (x @ w).relu().sum())
    step(x)
    text = zyx.viz(step, tmp_path / "step.dot").read_text()
    assert "CONTRACT" in text and "input 0" in text and "SUM" in text


# ---- interop -----------------------------------------------------------------------------------------------
def test_torch_shares_memory_and_from_torch_copies(dev):
    t = dev.tensor([[1.0, 2.0], [3.0, 4.0]]).realize()
    shared = t.torch()
    assert shared.data_ptr() == t.node.buffer.data_ptr() and torch.from_dlpack(t).data_ptr() == shared.data_ptr()
    host = zyx.CPU().tensor([1, 2, 3]).realize()
    assert host.torch().data_ptr() == host.node.buffer.ctypes.data and host.torch().dtype == torch.int64
    source = torch.arange(6, dtype=torch.float32, device=dev.torch_device).reshape(2, 3)
    copied = zyx.from_torch(source)
    source += 1
    assert copied.device is dev and copied.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert zyx.from_torch(source, zyx.CPU()).device is zyx.CPU()
    with pytest.raises(TypeError, match="no dtype for torch.complex64"):
        zyx.from_torch(torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(TypeError, match="expects a torch.Tensor"):
        zyx.from_torch(np.zeros(2))


def test_from_dlpack_imports_device_memory_through_torch(dev, monkeypatch):
    """An exporter in device memory (DLPack's kDLCUDA, 2) goes to torch.from_dlpack, which numpy cannot do; here a
    host tensor stands for the CUDA one, torch's import of it for the CUDA import."""
    class CudaExporter:
        def __init__(self, tensor):
            self.tensor = tensor

        def __dlpack__(self, **kwargs):
            return self.tensor.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return (2, 0)

    imported = []
    monkeypatch.setattr(torch, "from_dlpack", lambda source: imported.append(source) or source.tensor)
    source = CudaExporter(torch.tensor([[1.0, 2.0]]))
    t = zyx.from_dlpack(source, dev)
    assert imported == [source] and t.device is dev and t.tolist() == [[1.0, 2.0]]
    assert zyx.from_dlpack(source).device is zyx.default_device()


def test_moves_between_torch_devices_copy_without_the_host(dev, monkeypatch):
    compiled = zyx.Torch("cpu", compile=True)
    t = (dev.tensor([1.5, -2.0, 3.25]) * 2).cast("bfloat16")
    expected = t.numpy()
    monkeypatch.setattr(zyx.Tensor, "numpy", lambda self: pytest.fail("copied through numpy"))
    moved = t.to(compiled)
    assert moved.device is compiled and moved.dtype.name == "bfloat16"
    assert moved.node.buffer.data_ptr() != t.node.buffer.data_ptr()
    monkeypatch.undo()
    np.testing.assert_array_equal(moved.numpy(), expected)


@pytest.mark.parametrize("dtype", ["bfloat16", "uint32", "bool", "float16"])
def test_dtypes_round_trip_through_torch(dev, dtype):
    values = np.array([0, 1, 3, 250], dtype=np.float32)
    t = dev.tensor(values).cast(dtype)
    back = zyx.from_torch(t.torch())
    assert back.dtype.name == dtype and str(t.torch().dtype) == f"torch.{dtype}"
    np.testing.assert_array_equal(back.numpy(), t.numpy())
    assert zyx.from_torch(t.torch(), zyx.OpenCL()).numpy().tolist() == t.numpy().tolist()


# ---- torch.compile -----------------------------------------------------------------------------------------
@pytest.mark.slow  # Inductor compiles C++ for the CPU: tens of seconds on a cold cache
def test_compiled_programs_match_the_reference_and_compile_once():
    compiled = zyx.Torch("cpu", compile=True)
    rng = np.random.default_rng(2)
    a = rng.standard_normal((8, 5), dtype=np.float32)

    def program(device):
        zyx.manual_seed(4)
        x = device.tensor(a)
        outputs = [((x @ x.T).relu() + device.rand(8, 8)).softmax(-1), (device.rand(3) * 2**24).cast(zyx.uint32)]
        zyx.realize(*outputs)  # one program
        return outputs

    reference = [t.numpy() for t in program(zyx.CPU())]
    torch._dynamo.utils.counters.clear()
    for _ in range(2):
        ours = [t.numpy() for t in program(compiled)]
        np.testing.assert_allclose(ours[0], reference[0], rtol=1e-5)
        np.testing.assert_array_equal(ours[1], reference[1])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


# ---- foreach groups ----------------------------------------------------------------------------------------------
SHAPES = [(5, 7), (3,), (4, 2, 3)]


def aten_ops(run):
    """The aten operators one call of `run` reaches torch's dispatcher with, by name."""
    from torch.utils._python_dispatch import TorchDispatchMode
    names = []

    class Operators(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with Operators():
        run()
    return names


def fresh_programs(dev, monkeypatch):
    """`dev` (one object per torch device) builds its programs again, in caches of their own, for the rest of
    the test."""
    monkeypatch.setattr(dev, "programs", {})
    monkeypatch.setattr(dev, "_replays", {})


def without_groups(dev, monkeypatch):
    """`dev` builds its programs again, one call per step (no sinking, no group calls), for the rest of the
    test."""
    from zyx.runtime import torch_arrays, torch_device
    monkeypatch.setattr(torch_device, "groupable", lambda step, sources: False)
    monkeypatch.setattr(torch_arrays.TorchArrays, "group_function", lambda self, *args: None)
    fresh_programs(dev, monkeypatch)


@pytest.mark.parametrize("name, apply, grouped", [
    ("sqrt", lambda x, s, o: (x * x + 0.5).sqrt(), True), ("recip", lambda x, s, o: 1.0 / (x * x + 1.0), False),
    ("neg-exp-tanh", lambda x, s, o: (-x).exp().tanh(), True),
    ("sigmoid-floor", lambda x, s, o: x.sigmoid() + (x * 3).floor(), True),
    ("add-scalar-tensor", lambda x, s, o: x + s, True), ("mul-lists", lambda x, s, o: x * o, True),
    ("sub-div", lambda x, s, o: (x - o) / (s + 2.0), True), ("scalar-minus", lambda x, s, o: 2.0 - x, False),
    ("maximum", lambda x, s, o: x.maximum(o), True), ("muladd", lambda x, s, o: x + o * 0.3 + x * o * o, True),
    ("mulsub-tensor", lambda x, s, o: x - o * s, True),
    ("mulsub-over-a-temporary", lambda x, s, o: x - (o + 1.0) * s, True),
    ("lerp", lambda x, s, o: x.lerp(o, 0.25) + x.lerp(o, 0.75), True),
])
def test_sibling_ops_on_different_buffers_run_as_one_foreach_call(dev, name, apply, grouped, monkeypatch):
    """The same op on buffers of different shapes, with lists, a 0-d tensor or a number as operands, is one
    torch._foreach_* call where torch has one (`grouped`), else one call per buffer, with the reference's
    values either way (chains of any length grouped here)."""
    from zyx.runtime import foreach_groups
    monkeypatch.setattr(foreach_groups, "MIN_CHAIN", 1)
    monkeypatch.setattr(dev, "programs", {})
    monkeypatch.setattr(dev, "_replays", {})
    rng = np.random.default_rng(5)
    data = [(rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32))
            for shape in SHAPES]
    scale = np.float32(0.7)

    def run(device):
        s = device.tensor(np.full((), scale, dtype=np.float32))
        results = [apply(device.tensor(a), s, device.tensor(b)) for a, b in data]
        zyx.realize(*results)
        return results

    for got, expected in zip(run(dev), run(zyx.CPU())):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)
    assert any(op.startswith("_foreach_") for op in aten_ops(lambda: run(dev))) == grouped


def adam_training(device, jit=True, steps=3):
    """Losses of a few Adam steps of a two-layer MLP; with `jit` the aten operators of one more step; the
    parameters after all steps."""
    rng = np.random.default_rng(1)
    x, y = device.tensor(rng.standard_normal((16, 6), dtype=np.float32)), device.tensor(rng.integers(0, 3, 16))
    layers = [nn.Linear(6, 8, device=device), nn.Linear(8, 3, device=device)]
    params = []
    for layer in layers:
        layer.weight = device.tensor(rng.uniform(-0.4, 0.4, layer.weight.shape).astype(np.float32))
        layer.bias = device.tensor(rng.uniform(-0.4, 0.4, layer.bias.shape).astype(np.float32))
        params += [layer.weight, layer.bias]
    opt = nn.Adam(lr=1e-2, weight_decay=0.01)

    def step(x, y):
        loss = nn.cross_entropy(layers[1](layers[0](x).relu()), y)
        opt.update(params, loss.backward(params), realize_with=[loss])
        return loss
    step = zyx.jit(step) if jit else step
    losses = [step(x, y).item() for _ in range(steps)]
    ops = aten_ops(lambda: step(x, y).item()) if jit else []
    return losses, [p.numpy() for p in params], ops


def test_optimizer_updates_run_as_foreach_calls_with_the_values_of_one_call_per_step(dev, monkeypatch):
    """A jitted Adam step computes each op of the parameters' update chains as one torch._foreach_* call (in
    place on the parameters and moments where it may): the same values as one torch call per step, the
    reference's values, and far fewer torch operators a step."""
    losses, params, ops = adam_training(dev)
    reference_losses, reference_params, _ = adam_training(zyx.CPU(), jit=False, steps=4)
    without_groups(dev, monkeypatch)
    single_losses, single_params, single_ops = adam_training(dev)
    np.testing.assert_allclose(losses, single_losses, rtol=1e-6)
    np.testing.assert_allclose(losses, reference_losses[:3], rtol=1e-5)
    for got, single, expected in zip(params, single_params, reference_params):
        np.testing.assert_allclose(got, single, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    foreach = [op for op in ops if op.startswith("_foreach_")]
    assert "_foreach_lerp_" in foreach and not any(op.startswith("_foreach_") for op in single_ops)
    assert len(ops) <= len(single_ops) - 2 * len(foreach)  # each call stands for three or four steps



def test_one_op_updates_stay_beside_their_gradients(dev, monkeypatch):
    """SGD's update is one op per parameter: it runs as soon as its gradient is made, not held to the program's
    end for a group (foreach_groups.MIN_CHAIN), so the step's program plans the peak it has without groups."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((32, 6), dtype=np.float32)

    def planned_peak():
        layers = [nn.Linear(6, 16, device=dev), nn.Linear(16, 4, device=dev)]
        params = [t for layer in layers for t in (layer.weight, layer.bias)]
        opt = nn.SGD(lr=0.1)

        @zyx.jit
        def step(x):
            loss = (layers[1](layers[0](x).relu()) ** 2).mean()
            opt.update(params, loss.backward(params), realize_with=[loss])
            return loss
        losses = [step(dev.tensor(x)).item() for _ in range(2)]
        assert losses[1] < losses[0]
        return next(iter(step.steps.values()))[0].program.planned_peak_bytes

    grouped = planned_peak()
    without_groups(dev, monkeypatch)
    assert grouped == planned_peak()


def test_a_short_chain_that_stays_keeps_what_it_reads_in_place(dev):
    """The gradients of a / b with a / b: the gradient reaching the quotient (`s * 1`) heads a chain long enough to
    move to the program's end through one reader (b's gradient), while its other reader (a's, `g / b`) is too
    short to move. Then it stays where it is, before that reader (on main it moved, and the reader read a slot
    computed after it: an IndexError)."""
    rng = np.random.default_rng(17)
    a, b, s = rng.uniform(-3, 3, (3, 5)), rng.uniform(0.2, 4, (3, 5)), rng.standard_normal((3, 5))
    x, y = dev.tensor(a.astype(np.float32)), dev.tensor(b.astype(np.float32))
    quotient = x / y
    gx, gy = (quotient * dev.tensor(s.astype(np.float32))).sum().backward([x, y])
    zyx.realize(quotient, gx, gy)
    for ours, expected in ((quotient, a / b), (gx, s / b), (gy, -s * a / b ** 2)):
        np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_a_realize_of_a_structure_seen_before_runs_the_first_ones_program_and_frees_its_buffers(dev):
    """`(x @ y).realize()` again (new nodes, the structure met before): the program the cold realize built runs
    (no schedule, the same digest), the values are right, and the product's buffer is counted until it is
    dropped."""
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((8, 8), dtype=np.float32), rng.standard_normal((8, 8), dtype=np.float32)
    x, y = dev.tensor(a), dev.tensor(b)
    cold = x @ y
    digest, program = cold.structural_hash(), program_of(cold)
    gc.collect()
    before, stats = zyx.memory_stats(dev)["current_bytes"], zyx.stats()
    warm = x @ y
    assert warm.structural_hash() == digest and program_of(warm) is program
    after = zyx.stats()
    assert after["graphs_scheduled"] == stats["graphs_scheduled"]
    assert after["schedule_cache_hits"] == stats["schedule_cache_hits"] + 1
    np.testing.assert_allclose(warm.numpy(), a @ b, rtol=1e-5, atol=1e-5)
    assert zyx.memory_stats(dev)["current_bytes"] == before + 8 * 8 * 4
    del warm
    gc.collect()
    assert zyx.memory_stats(dev)["current_bytes"] == before
