"""Row kernels (zyx/jit/rows.py): softmax, log_softmax, layer norm and their gradients, one kernel each where
their rows fuse, checked against torch with the device's own kernels and with GPU-shaped ones (a work group per
row of 256 or more, a work item per shorter row) on the OpenCL device."""
import contextlib

import numpy as np
import pytest
import torch

import zyx
import zyx.nn.functional as F
from zyx.jit.rows import ROW_LIMIT
from zyx.jit.device_traits import DeviceTraits
from zyx.jit import schedule as schedule_module
from zyx.jit.kernel_ir import Load, Loop, walk
from zyx.jit.schedule import _fuses_rows, schedule

RNG = np.random.default_rng(3)


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def launched(*tensors):
    zyx.reset_stats()
    zyx.realize(*tensors)
    return zyx.stats()["kernels_launched"]


def close(out, expected, tol=1e-5):
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=tol, atol=tol)


def row_ops(x, length):
    layer_norm = torch.nn.functional.layer_norm if isinstance(x, torch.Tensor) else F.layer_norm
    return x.softmax(-1), x.log_softmax(-1), layer_norm(x, (length,))


@pytest.mark.parametrize("length", [1, 3, 257, 1000, 1024, 4097])
def test_softmax_log_softmax_and_layer_norm_over_odd_rows(shaped, length):
    a = data(3, length)
    ours, theirs = row_ops(shaped.tensor(a), length), row_ops(torch.tensor(a), length)
    kernels = launched(*ours)
    # one kernel each where the device fuses rows of this length (rows of one need no reductions), more elsewhere
    assert (kernels == 3) == (length == 1 or _fuses_rows(length, shaped.traits))
    for out, expected in zip(ours, theirs):
        close(out, expected, 1e-4)


def test_rows_of_views(shaped):
    a, b = data(40, 33), data(1, 33)
    x, t = shaped.tensor(a), torch.tensor(a)
    cases = [(x.T.softmax(-1), t.T.softmax(-1), 1), (x[3:30:2, 1:].softmax(-1), t[3:30:2, 1:].softmax(-1), 1),
             ((x + shaped.tensor(b)).log_softmax(-1), (t + torch.tensor(b)).log_softmax(-1), 1),
             (x.reshape(4, 10, 33).softmax(-1), t.reshape(4, 10, 33).softmax(-1), 1),
             (x.softmax(0), t.softmax(0), 2)]  # columns: not the rows of the output, two kernels
    for out, expected, kernels in cases:
        assert launched(out) == kernels
        close(out, expected)


def test_half_rows(shaped):
    a = data(6, 300)
    x, t = shaped.tensor(a).half(), torch.tensor(a).half().float()
    close(x.softmax(-1), t.softmax(-1).half(), 2e-3)
    close(F.layer_norm(x, (300,)), torch.nn.functional.layer_norm(t, (300,)).half(), 5e-3)


def test_masked_softmax_gives_what_torch_gives(shaped):
    a = data(5, 260)
    a[a > 1] = -np.inf
    a[2] = -np.inf  # a whole row masked: nan, as torch
    x, t = shaped.tensor(a), torch.tensor(a)
    for out, expected in [(x.softmax(-1), t.softmax(-1)), (x.log_softmax(-1), t.log_softmax(-1))]:
        np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    assert np.isnan(x.softmax(-1).numpy()[2]).all()


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "layer_norm"])
def test_gradients_are_one_row_kernel(shaped, op):
    a, g = data(5, 300), data(5, 300)
    x, t = shaped.tensor(a), torch.tensor(a, requires_grad=True)
    forward = getattr(F, op), getattr(torch.nn.functional, op)
    argument = (300,) if op == "layer_norm" else -1
    grad, = (forward[0](x, argument) * shaped.tensor(g)).sum().backward([x])
    (forward[1](t, argument) * torch.tensor(g)).sum().backward()
    assert launched(grad) == 1  # sum(dy * y) per row is one more pass over the row
    close(grad, t.grad, 1e-4)


def test_softmax_is_one_kernel_with_a_work_group_per_row_on_gpus():
    x = zyx.CPU().tensor(data(64, 1024))
    kernel, = schedule([x.softmax(-1).node], DeviceTraits(gpu=True, vector_width=4))[0]
    # 1024 floats a row: 64 items of 4 float4 vectors each, the lanes combined before a tree of scalars
    assert kernel.name.startswith("g_") and (kernel.global_size, kernel.local_size) == (64 * 64, 64)
    # the row in registers (transforms/registers.py): each item loads its 4 vectors once for the three passes
    assert kernel.source.count("vload4(") == 4 and kernel.source.count("vstore4(") == 4
    assert "__local float acc" in kernel.source and "__local float4" not in kernel.source
    cpu, = schedule([x.softmax(-1).node], DeviceTraits(vector_width=16))[0]
    assert cpu.global_size == 64 and "vstore16(" in cpu.source  # a row per item, along the row in vectors


def test_rows_longer_than_the_limit_keep_two_kernels(shaped):
    a = data(2, ROW_LIMIT + 1)
    out = shaped.tensor(a).softmax(-1)
    assert launched(out) == 2
    close(out, torch.tensor(a).softmax(-1))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_long_rows_are_one_kernel_on_gpus_where_there_are_enough_rows(gpu, monkeypatch, dtype):
    """Rows past ROW_LIMIT (GPT-2's 50 304 logits) are one kernel on a GPU with a work group per row where the rows
    fill it (LONG_ROW_GROUPS a compute unit): a cross-entropy's row max, sum of exponentials and gradient read the
    logits once; with fewer rows, or ZYX_GPU_LONG_ROWS=0, the statistics take a kernel of their own."""
    monkeypatch.setattr(schedule_module, "UNKNOWN_COMPUTE_UNITS", 2)  # (4 rows fill this "GPU")
    length, rows = ROW_LIMIT + 3, 8
    a, target = data(rows, length), np.array([0, 5, length - 1, -100, 7, 3, 3, 1])
    if dtype == "bfloat16":
        a = torch.tensor(a).bfloat16().float().numpy()

    def kernels_and_values(x_rows):
        x = gpu.tensor(a[:x_rows]).to(dtype)
        loss = F.cross_entropy(x.float(), gpu.tensor(target[:x_rows]))
        grad, = loss.backward([x])
        softmax = x.float().softmax(-1)
        zyx.reset_stats()
        zyx.realize(softmax)
        softmax_kernels = zyx.stats()["kernels_launched"]
        return launched(loss, grad), softmax_kernels, loss, grad, softmax

    def expected(x_rows):
        t = torch.tensor(a[:x_rows], requires_grad=True)
        loss = torch.nn.functional.cross_entropy(t, torch.tensor(target[:x_rows]))
        loss.backward()
        return loss, t.grad, t.detach().softmax(-1)

    many, few = kernels_and_values(rows), kernels_and_values(3)
    tol = 1e-5 if dtype == "float32" else 1e-2
    for got, (loss, grad, softmax) in ((many, expected(rows)), (few, expected(3))):
        close(got[2], loss, tol)
        np.testing.assert_allclose(got[3].float().numpy(), grad.numpy().astype(np.float32), rtol=tol, atol=1e-9)
        close(got[4], softmax, 1e-5)
    assert many[1] == 1 and few[1] == 2  # the softmax: one row kernel, or the statistics' kernel and the rows'
    assert few[0] == many[0] + 1  # the cross-entropy likewise
    monkeypatch.setenv("ZYX_GPU_LONG_ROWS", "0")
    gpu.forget_programs()
    assert kernels_and_values(rows)[:2] == (many[0] + 1, 2)  # the statistics' kernel again


def test_row_statistics_others_need_are_stored_by_the_row_kernel(shaped):
    a = data(6, 40)
    x = shaped.tensor(a)
    mean = x.mean(-1, keepdim=True)
    out = (x - mean) * 2
    assert launched(out, mean) == 1
    np.testing.assert_allclose(mean.numpy(), a.mean(-1, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.numpy(), (a - a.mean(-1, keepdims=True)) * 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gpu", [False, True])
def test_cross_entropy_gradient_row_kernel_stores_the_statistics_its_loss_reads(gpu):
    """The loss reads each row's max and sum of exponentials; the gradient's row kernel computes them too, and
    stores them: no reduction kernel passes over the logits again for the loss, which reads the target logits
    itself."""
    a, target = data(8, 300), np.array([0, 5, 299, -100, 7, 3, 3, 1])
    x = zyx.CPU().tensor(a)
    loss = F.cross_entropy(x, zyx.CPU().tensor(target))
    grad, = loss.backward([x])
    kernels, _ = schedule([loss.node, grad.node], DeviceTraits(gpu=gpu, vector_width=4 if gpu else 16))
    row_kernel, = [k for k in kernels if any(node.shape == (8, 300) for node in k.outputs)]
    storing_max = [k for k in kernels if any(node.op.name == "RMAX" for node in k.outputs)]
    assert storing_max == [row_kernel]
    # the targets' count, the row kernel, the loss: the target logits are picked where the loss sums them, one
    # load a row (lower.INLINE_TAKES), not stored by a kernel of their own first
    assert [[node.shape for node in k.outputs] for k in kernels] == [[(1,)], [(8, 1), (8, 1), (8, 300)], [()]]
    t = torch.tensor(a, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(t, torch.tensor(target))
    expected.backward()
    close(loss, expected, 1e-5)
    close(grad, t.grad, 1e-5)


TENSOR_CORES = DeviceTraits(gpu=True, vector_width=4, max_group_size=1024, local_memory=49152,
                            tensor_cores=("bf16", "f16"))


@pytest.mark.parametrize("traits, half", [(DeviceTraits(vector_width=16), False), (TENSOR_CORES, False),
                                          (TENSOR_CORES, True)], ids=["cpu", "gpu-float32", "gpu-bfloat16"])
def test_a_layer_norms_forward_kernel_stores_its_mean_beside_its_variance(traits, half):
    """A layer norm over a residual (a product's output added: no statistic of the inputs alone), forward and
    backward: the forward's row kernel computes the mean and the variance and stores both beside its output, for
    its gradient's kernels. The variance's centred values read the mean, which the check for statistics read by
    values before the kernel (schedule._left_to_earlier_rows) took for another kernel's: the mean was stored by a
    kernel of its own, passing over the rows once more (W7: 25 norms, 816 -> 791 kernels, 2.2 GB less a step)."""
    rows, d = 2048, 512  # (products a GPU reads stored operands of: the norm's output is its kernel's)
    x, w, w2, gain = (zyx.CPU().tensor(v) for v in (data(rows, d), data(d, d) * 0.05, data(d, d) * 0.05, data(d)))
    with zyx.autocast(zyx.bfloat16) if half else contextlib.nullcontext():
        h = x + (x @ w).float()
        loss = ((F.layer_norm(h, (d,), gain) @ w2).float() ** 2).sum()
    kernels, _ = schedule([t.node for t in (loss, *loss.backward([x, w, w2, gain]))], traits)
    statistic = lambda node: node.shape == (rows, 1)  # noqa: E731
    forward = next(k for k in kernels if any(map(statistic, k.outputs)))
    assert sum(map(statistic, forward.outputs)) >= 2 and not any(map(statistic, forward.loads))
    assert any(node.numel == rows * d for node in forward.outputs)


LONG_ROWS = np.concatenate([data(60, 12000) * 3, np.full((1, 12000), -np.inf, np.float32),
                            data(3, 12000) * 3]).astype(np.float32)  # (more than 8 float4 trips of 256 items)
LONG_ROWS[62, 5] = np.inf
LONG_ROWS[63, :100] = -np.inf
LONG_ROWS[0] -= 200.0
LONG_ROWS[1] += 100.0
LONG_ROWS[2, 7] = np.nan


def _row_passes(kernel) -> int:
    """The loops at the top of `kernel` that read memory: its passes over the row."""
    return sum(1 for s in kernel.ir.body if isinstance(s, Loop) and any(isinstance(t, Load) for t in walk(s.body)))


def test_a_long_rows_maximum_and_sum_of_exponentials_are_one_pass():
    """A GPU row kernel over rows its passes re-read from memory takes the maximum and the sum of exp(x - safe(max))
    in one pass (transforms/online_sums.py), then writes its outputs: two passes, not three (W7's logits, whose
    cross-entropy gradient is such a kernel; softmax's own sum, exp(x - max) without the guard, keeps its pass)."""
    traits = DeviceTraits(gpu=True, vector_width=4)
    x = zyx.CPU().tensor(LONG_ROWS)
    target = zyx.CPU().tensor(np.zeros(LONG_ROWS.shape[0], np.int32))
    grad, = F.cross_entropy(x, target).backward([x])
    for value in (x.log_softmax(-1), grad):
        kernel = next(k for k in schedule([value.node], traits)[0] if k.outputs[-1].shape == LONG_ROWS.shape)
        assert _row_passes(kernel) == 2
    short = zyx.CPU().tensor(LONG_ROWS[:, :4096])
    kernel, = schedule([short.log_softmax(-1).node], traits)[0]
    assert "_old" not in kernel.source  # (held in registers: its passes read no memory again)


@pytest.mark.parametrize("half", [False, True], ids=["float32", "bfloat16"])
def test_long_rows_in_one_pass_match_the_cpu_reference_with_infinities_and_nan(gpu, half):
    """Softmax, log_softmax and a cross-entropy with its gradient over long rows with a row of -inf, a +inf, a NaN,
    100 values of -inf, rows shifted by -200 and +100: GPU-shaped kernels (one pass for the row's maximum and sum)
    against the CPU reference, NaN and infinities where it has them."""
    target = RNG.integers(0, LONG_ROWS.shape[1], LONG_ROWS.shape[0]).astype(np.int32)
    finite = np.where(np.isfinite(LONG_ROWS).all(1, keepdims=True), LONG_ROWS, data(*LONG_ROWS.shape))

    def values(device):
        x, y = device.tensor(LONG_ROWS), device.tensor(finite)
        if half:
            x, y = x.to(zyx.bfloat16).float(), y.to(zyx.bfloat16)
        loss = F.cross_entropy(y.float(), device.tensor(target))
        grad, = loss.backward([y])
        return [x.softmax(-1), x.log_softmax(-1), loss, grad.float()]

    got, expected = values(gpu), values(zyx.CPU())
    zyx.realize(*got)
    for g, e in zip(got, expected):
        g, e = g.numpy(), e.numpy()
        assert (np.isnan(g) == np.isnan(e)).all() and (np.isinf(g) == np.isinf(e)).all()
        both = np.isfinite(g)
        np.testing.assert_allclose(g[both], e[both], rtol=2e-5, atol=1e-6)
    sure = np.isfinite(LONG_ROWS).all(1)
    torch_rows = torch.tensor(LONG_ROWS[sure])
    if half:
        torch_rows = torch_rows.bfloat16().float()
    np.testing.assert_allclose(got[0].numpy()[sure], torch_rows.softmax(-1).numpy(), rtol=1e-4, atol=1e-9)


def test_row_statistics_beside_nodes_the_scheduler_makes(dev):
    """Layer norms, a residual MLP and a cross-entropy, forward and backward: row kernels store what other
    kernels read of their statistics, among nodes the scheduler makes itself (a CPU product's packed operand:
    a node no reader list names), and every gradient matches torch's."""
    a, w, gain = data(64, 256), data(256, 256) * 0.05, data(256)  # (products this large are packed first)
    target = RNG.integers(0, 256, 64)

    def step(lib, x, weight, g):
        norm = lib.nn.functional.layer_norm
        h = norm(x, (256,), g)
        h = h + (h @ weight).relu() @ weight
        return lib.nn.functional.cross_entropy(norm(h, (256,), g) @ weight, target_of(lib))

    def target_of(lib):
        return dev.tensor(target) if lib is zyx else torch.tensor(target)

    ours = [dev.tensor(v) for v in (a, w, gain)]
    loss = step(zyx, *ours)
    grads = loss.backward(ours)
    theirs = [torch.tensor(v, requires_grad=True) for v in (a, w, gain)]
    expected = step(torch, *theirs)
    expected.backward()
    close(loss, expected, 1e-4)
    for got, want in zip(grads, theirs):
        close(got, want.grad, 1e-4)


@pytest.mark.parametrize("gpu", [False, True])
def test_pre_norm_blocks_schedule_in_one_attempt_and_match_torch(gpu, monkeypatch):
    """Pre-norm residual blocks, forward and backward: each norm's gradient recomputes its mean and variance in
    its kernels and its gain's gradient reads them. Taken up there as extra outputs (the latest kernel is built
    first), they made the forward wait for the backward, and the retry after that cycle gave each statistic a kernel
    of its own; now the backward's kernels read what the forward's store, and one schedule serves."""
    dev = zyx.CPU()
    a, w1, w2, gain, bias = data(32, 48), data(48, 48) * 0.1, data(48, 48) * 0.1, data(48), data(48)

    def blocks(lib, x, w1, w2, gain, bias):
        norm = lib.nn.functional.layer_norm
        for w in (w1, w2):
            x = x + (norm(x, (48,), gain, bias) @ w).relu()
        return (norm(x, (48,), gain, bias) ** 2).mean()

    ours = [dev.tensor(v) for v in (a, w1, w2, gain, bias)]
    loss = blocks(zyx, *ours)
    grads = loss.backward(ours)
    attempts = []
    real = schedule_module._schedule
    monkeypatch.setattr(schedule_module, "_schedule", lambda *args, **kw: attempts.append(1) or real(*args, **kw))
    kernels, _ = schedule([loss.node, *(g.node for g in grads)], DeviceTraits(gpu=gpu, vector_width=4 if gpu else 16))
    assert len(attempts) == 1  # no cycle, no retry
    theirs = [torch.tensor(v, requires_grad=True) for v in (a, w1, w2, gain, bias)]
    expected = blocks(torch, *theirs)
    expected.backward()
    close(loss, expected, 1e-5)
    for got, tensor in zip(grads, theirs):
        close(got, tensor.grad, 2e-4)
