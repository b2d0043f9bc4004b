"""Fusion is pinned by kernel counts (zyx.stats), and every fused result checked against numpy."""
import numpy as np
import pytest

import zyx

RNG = np.random.default_rng(7)


def launched(*tensors):
    zyx.reset_stats()
    zyx.realize(*tensors)
    return zyx.stats()["kernels_launched"]


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def test_w1b_chain_is_one_kernel(dev):
    a, b = data(33, 17), data(33, 17)
    x, y = dev.tensor(a), dev.tensor(b)
    out = ((((x * 1.5 + y).relu() * x - y / 3).exp().tanh() * 2 + x).sigmoid() - y * 0.5)
    assert launched(out) == 1
    expected = 1 / (1 + np.exp(-(np.tanh(np.exp(np.maximum(a * 1.5 + b, 0) * a - b / 3)) * 2 + a))) - b * 0.5
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_views_fuse_into_the_consumer(dev):
    a = data(6, 8)
    x = dev.tensor(a)
    out = x.T.flip(0)[1:, ::3].pad(((1, 0), (0, 2)), value=-1.0).exp()
    assert launched(out) == 1
    expected = np.exp(np.pad(a.T[::-1][1:, ::3], ((1, 0), (0, 2)), constant_values=-1.0))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)


def test_softmax_is_one_kernel(dev):
    a = data(31, 257)
    out = dev.tensor(a).softmax(-1)
    assert launched(out) == 1  # a row kernel (jit/rows.py): the max, the sum, then the outputs, row by row
    e = np.exp(a - a.max(-1, keepdims=True))
    np.testing.assert_allclose(out.numpy(), e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_layer_norm_is_one_kernel(dev):
    a = data(16, 100)
    x = dev.tensor(a)
    centered = x - x.mean(-1, keepdim=True)
    out = centered / (centered.square().mean(-1, keepdim=True) + 1e-5).sqrt()
    assert launched(out) == 1
    c = a - a.mean(-1, keepdims=True)
    np.testing.assert_allclose(out.numpy(), c / np.sqrt((c * c).mean(-1, keepdims=True) + 1e-5), rtol=1e-4, atol=1e-5)


def test_linear_forward_is_one_matmul_kernel_with_bias_and_activation(dev):
    a, w, b = data(32, 24), data(16, 24), data(16)
    out = (dev.tensor(a) @ dev.tensor(w).T + dev.tensor(b)).relu()
    assert launched(out) == 1
    np.testing.assert_allclose(out.numpy(), np.maximum(a @ w.T + b, 0), rtol=1e-4, atol=1e-5)


def test_reduction_epilogue_fuses(dev):
    a = data(40, 50)
    out = (dev.tensor(a).sum(-1).abs() * 2 + 1).sqrt()
    assert launched(out) == 1
    np.testing.assert_allclose(out.numpy(), np.sqrt(np.abs(a.sum(-1)) * 2 + 1), rtol=1e-5)


def test_shared_work_is_done_once_when_realized_together(dev):
    a = data(10, 20)
    x = dev.tensor(a)
    y = (x * 3).exp()
    s = y.sum(-1)
    assert launched(y, s) == 2  # y is stored once; the sum reads it instead of computing exp again
    np.testing.assert_allclose(s.numpy(), np.exp(a * 3).sum(-1), rtol=1e-5)


@pytest.mark.parametrize("shape,axis", [((100003,), 0), ((3, 40000), 1), ((70000, 2), 0), ((1,), 0)])
def test_long_reductions(dev, shape, axis):
    a = data(*shape)
    x = dev.tensor(a)
    np.testing.assert_allclose(x.sum(axis).numpy(), a.astype(np.float64).sum(axis), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(x.max(axis).numpy(), a.max(axis))


@pytest.mark.parametrize("n,k,m", [(1, 1, 1), (7, 13, 5), (64, 48, 80), (33, 1, 17), (128, 96, 144)])
def test_matmul_odd_sizes(dev, n, k, m):
    a, b = data(n, k), data(k, m)
    np.testing.assert_allclose((dev.tensor(a) @ dev.tensor(b)).numpy(), a @ b, rtol=1e-4, atol=1e-4)


def test_batched_broadcast_matmul(dev):
    a, b = data(3, 1, 9, 8), data(4, 8, 6)
    np.testing.assert_allclose((dev.tensor(a) @ dev.tensor(b)).numpy(), a @ b, rtol=1e-4, atol=1e-5)


def test_repeated_expression_schedules_nothing_new(dev):
    x, y = dev.tensor(data(8, 8)), dev.tensor(data(8, 8))
    (x * y + 1).realize()
    zyx.reset_stats()
    for _ in range(5):
        (x * y + 1).realize()
    assert zyx.stats()["graphs_scheduled"] == 0
    assert zyx.stats()["kernels_compiled"] == 0


def test_zero_size_tensors(dev):
    x = dev.tensor(np.zeros((0, 4), np.float32))
    assert (x + 1).numpy().shape == (0, 4)
    np.testing.assert_array_equal(x.sum(0).numpy(), np.zeros(4))
    np.testing.assert_array_equal(x.max(1).numpy(), np.zeros(0))
    with pytest.raises(ValueError):
        x.max(0)


@pytest.mark.parametrize("gpu", [False, True])
def test_dropout_mask_read_in_weight_gradient_loops_is_drawn_once(gpu):
    """Fused into a product's loop the Philox mask would be drawn once per output column (30x slower steps)."""
    from zyx.jit.device_traits import DeviceTraits
    from zyx.jit.schedule import schedule
    host = zyx.CPU()
    x, w1, w2 = host.tensor(data(64, 128)), host.tensor(data(128, 96)), host.tensor(data(96, 8))
    loss = ((x @ w1).relu().dropout(0.5) @ w2).square().sum()
    grads = loss.backward([w1, w2])
    kernels, _ = schedule([g.node for g in grads], DeviceTraits(gpu=gpu, vector_width=0 if gpu else 16))
    drawing = [k for k in kernels if "zyx_philox_uniform(" in k.source.split("__kernel void")[1]]
    w1_gradient = [k for k in kernels if any(node.numel == 128 * 96 for node in k.outputs)]
    assert w1_gradient and not set(map(id, w1_gradient)) & set(map(id, drawing))
    assert any(k.longest_reduction == 0 for k in drawing)  # drawn once: stored, or packed into an operand copy


def test_dropout_training_step_matches_the_cpu_backend(dev):
    a, w = data(64, 32), data(32, 48)
    zyx.manual_seed(5)
    x, weight = dev.tensor(a), dev.tensor(w)
    grad_device, = ((x @ weight).dropout(0.5) * 3).sum().backward([weight])
    zyx.manual_seed(5)
    x, weight = zyx.CPU().tensor(a), zyx.CPU().tensor(w)
    grad_host, = ((x @ weight).dropout(0.5) * 3).sum().backward([weight])
    np.testing.assert_allclose(grad_device.numpy(), grad_host.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gpu", [False, True])
def test_weight_gradient_over_batch_and_time_is_a_tiled_product(gpu):
    """Summed over two batch axes, the gradient of a 3-D input's product is still a product: tiled, and never
    a stored (batch, time, in, out) broadcast."""
    from zyx.jit.device_traits import DeviceTraits
    from zyx.jit.schedule import schedule
    from zyx.trace.ops import Op
    host = zyx.CPU()
    x, w = host.tensor(data(8, 64, 64)), host.tensor(data(64, 128))
    grad, = (x @ w).gelu().square().sum().backward([w])
    kernels, _ = schedule([grad.node], DeviceTraits(gpu=gpu, vector_width=0 if gpu else 16))
    largest = max(node.numel for k in kernels for node in k.outputs)
    assert largest <= 8 * 64 * 128
    product, = [k for k in kernels if any(node.op is Op.SUM and node.numel == 64 * 128 for node in k.outputs)]
    if gpu:  # local-memory tiles (the GPU builder walks k in staged slices, not as a plain reduction)
        assert product.local_size == 256 and "__local float" in product.source
    else:   # register tiles: several outputs per work item
        assert product.global_size < 64 * 128


def test_weight_gradient_over_batch_and_time_matches_numpy(dev):
    a, w = data(3, 20, 16), data(16, 24)
    weight = dev.tensor(w)
    grad, = (dev.tensor(a) @ weight).square().sum().backward([weight])
    np.testing.assert_allclose(grad.numpy(), np.einsum("btk,btn->kn", a, 2 * (a @ w)), rtol=1e-4, atol=1e-3)


def test_convolution_weight_gradient_is_a_tiled_product():
    """Summed over batch and pixels (a size-1 axis between them), a convolution's weight gradient is a product."""
    from zyx.jit.device_traits import DeviceTraits
    from zyx.jit.schedule import schedule
    from zyx.trace.ops import Op
    host = zyx.CPU()
    x, w = host.tensor(data(4, 8, 16, 16)), host.tensor(data(16, 8, 3, 3))
    grad, = x.conv2d(w, padding=1).square().sum().backward([w])
    kernels, _ = schedule([grad.node], DeviceTraits(vector_width=16))
    product, = [k for k in kernels if any(n.op is Op.SUM and n.numel == 16 * 8 * 9 for n in k.outputs)]
    assert product.global_size < 16 * 8 * 9  # several outputs per work item


def test_convolution_weight_gradient_matches_torch(dev):
    torch = pytest.importorskip("torch")
    a, w = data(2, 3, 9, 9), data(5, 3, 3, 3)
    weight = dev.tensor(w)
    grad, = dev.tensor(a).conv2d(weight, padding=1).square().sum().backward([weight])
    tw = torch.tensor(w, requires_grad=True)
    torch.nn.functional.conv2d(torch.tensor(a), tw, padding=1).square().sum().backward()
    np.testing.assert_allclose(grad.numpy(), tw.grad.numpy(), rtol=1e-4, atol=1e-3)


def test_equal_computations_are_computed_once_and_targets_keep_their_own_buffers(dev):
    """A variance takes the mean again (x.var builds its own x.mean): the scheduler shares equal nodes, so the
    layer norm's row kernel sums each row once for the mean; equal targets are still each stored."""
    from zyx.jit.rewrite import rewrite_graph
    from zyx.trace.node import toposort
    a = data(5, 64)
    x = dev.tensor(a)
    normalized = (x - x.mean(-1, keepdim=True)) * (x.var(-1, keepdim=True, correction=0) + 1e-5).rsqrt()
    sums = [node for node in toposort(rewrite_graph([normalized.node])) if node.op.name == "SUM"]
    assert len(sums) == 2  # the mean's, shared, and the squares'
    assert launched(normalized) == 1
    twice, again = x.exp().sum(-1), x.exp().sum(-1)
    zyx.realize(twice, again)
    assert twice.node.buffer is not again.node.buffer
    expected = (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(normalized.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(twice.numpy(), np.exp(a).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(again.numpy(), np.exp(a).sum(-1), rtol=1e-5)


def test_computations_that_only_look_equal_are_not_shared(dev):
    """Pads filling 0.0 and -0.0 (equal as floats, not as values: 1 / -0.0 is -inf) and two random draws of one
    shape stay apart."""
    x = dev.tensor(data(3, 4))
    positive, negative = x.pad(((0, 0), (0, 1)), value=0.0), x.pad(((0, 0), (0, 1)), value=-0.0)
    ends = (1 / positive)[:, -1], (1 / negative)[:, -1]
    zyx.realize(*ends)  # (scheduled together)
    np.testing.assert_array_equal(ends[0].numpy(), [np.inf] * 3)
    np.testing.assert_array_equal(ends[1].numpy(), [-np.inf] * 3)
    first, second = dev.rand(64), dev.rand(64)
    zyx.realize(first, second)
    assert not np.array_equal((first - second).numpy(), np.zeros(64))


def test_a_long_value_a_reduction_reads_broadcast_is_stored_not_recomputed(dev):
    """An embedding's gradient sums its incoming gradient over the tokens once per vocabulary row (a product of a
    one-hot mask and the gradient): that gradient (here a layer norm's backward) is stored by a kernel of its own,
    not recomputed for every block of rows."""
    from zyx.jit.device_traits import DeviceTraits
    from zyx.jit.schedule import schedule
    ids, w, g = RNG.integers(0, 1100, (6, 8)).astype(np.int32), data(1100, 32), data(6, 8, 32)

    def gradient(device):
        weight = device.tensor(w)
        rows = zyx.nn.functional.embedding(device.tensor(ids), weight)
        normed = zyx.nn.functional.layer_norm(rows * 1.5 + 0.5, (32,))
        return (normed * device.tensor(g)).sum().backward([weight])[0]

    kernels, _ = schedule([gradient(zyx.CPU()).node], DeviceTraits(vector_width=16))
    masked_sum = next(k for k in kernels if k.outputs[0].shape[-2:] in ((1100, 32), (32, 1100))
                      and k.longest_reduction)
    assert "sqrt" not in masked_sum.source, masked_sum.source
    np.testing.assert_allclose(gradient(dev).numpy(), gradient(zyx.CPU()).numpy(), rtol=1e-4, atol=1e-5)


def residual_stream_gradients(device, blocks=10):
    """Gradients of a residual stream of `blocks` blocks, each adding a product of its input's layer norm."""
    rng = np.random.default_rng(3)
    weights = [device.tensor(rng.standard_normal((32, 32)).astype(np.float32) * 0.1) for _ in range(blocks)]
    h = device.tensor(rng.standard_normal((64, 32)).astype(np.float32))
    for w in weights:
        h = h + zyx.nn.functional.layer_norm(h, (32,)) @ w
    return h.square().sum().backward(weights)


@pytest.mark.parametrize("gpu", [False, True])
def test_a_residual_stream_is_stored_not_summed_again_by_each_reader(gpu):
    """Layer l's residual is the input plus l block outputs; fused into every reader (each layer norm forward and
    backward), each kernel summed them all again (17 arrays of the stream's size at 10 blocks). Stored where it
    would be recomputed from more than READS_LIMIT arrays, no kernel loads more than that and the reader's own."""
    from zyx.jit.device_traits import DeviceTraits
    from zyx.jit.schedule import READS_LIMIT, schedule
    grads = residual_stream_gradients(zyx.CPU())
    kernels, _ = schedule([g.node for g in grads], DeviceTraits(gpu=gpu, vector_width=0 if gpu else 16))
    widest = max(len({id(node) for node in k.loads if node.numel >= 64 * 32}) for k in kernels)
    assert widest <= READS_LIMIT + 2


def test_a_stored_residual_stream_gives_the_reference_gradients(dev):
    got = residual_stream_gradients(dev)
    zyx.realize(*got)  # (one program: each gradient alone would schedule and build the stream's backward again)
    for found, want in zip(got, residual_stream_gradients(zyx.CPU())):
        np.testing.assert_allclose(found.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)


UPDATED = [(data(64, 48), data(64, 48)), (data(1024), data(1024))]  # (parameter, moment) pairs


def bias_corrected(device, steps):
    """Two parameters' Adam-like updates: each reads 1 − 0.9ᵗ of its own step count (a scalar tensor)."""
    return [device.tensor(p) - device.tensor(m) / (1 - 0.9 ** device.tensor(np.float32(t)))
            for (p, m), t in zip(UPDATED, steps)]


@pytest.mark.parametrize("gpu", [False, True])
def test_a_costly_scalar_read_by_wide_values_is_computed_once_on_cpus(gpu):
    """On CPUs a scalar's pow is stored by a kernel of its own, not computed by every work-item of the update that
    reads it (schedule._costly_scalars: Adam's bias corrections in W7's launch groups of parameter updates); a GPU
    computes it where it is read."""
    from zyx.jit.device_traits import DeviceTraits
    from zyx.jit.schedule import schedule
    kernels, _ = schedule([u.node for u in bias_corrected(zyx.CPU(), (3, 7))], DeviceTraits(gpu=gpu, vector_width=16))
    wide = [k for k in kernels if k.outputs[0].numel > 1]
    scalar = [k for k in kernels if k.outputs[0].numel == 1]
    assert len(wide) == 2 and all(("pow" in k.source) == gpu for k in wide)
    assert len(scalar) == (0 if gpu else 2) and all("pow" in k.source for k in scalar)


def test_costly_scalars_computed_once_give_the_values(dev):
    for got, expected in zip(bias_corrected(dev, (3, 7)), bias_corrected(zyx.CPU(), (3, 7))):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_a_graph_outgrowing_many_kernels_is_cut_without_lowering_each_again_and_again(dev, monkeypatch):
    """erfinv's derivative in float64 (Giles' approximation refined by Newton steps: ~1 700 nodes on 6 elements)
    outgrows a kernel's statements dozens of times. Once a kernel has been cut CUTS_ONE_AT_A_TIME times, each cut
    also stores the other values computed whole where it outgrew them (KernelTooLarge.frontier), so the scheduler
    lowers about once per kernel (134 lowerings for 73 kernels cutting one value at a time; its second derivative
    741 for 443, 9 s of host time). The values so cut: test_special_functions_second_derivatives, against torch."""
    from zyx.jit import schedule as schedule_module
    lower, lowerings = schedule_module.lower, []

    def counted(*args, **kwargs):
        lowerings.append(args[0])
        return lower(*args, **kwargs)
    monkeypatch.setattr(schedule_module, "lower", counted)
    x = zyx.tensor(np.array([-0.99, -0.5, 0.0, 0.1, 0.6, 0.97]), device=dev)
    derivative, = x.erfinv().sum().backward([x])
    kernels, _ = schedule_module.schedule([derivative.node], dev.traits)
    assert len(kernels) > 30 and len(lowerings) < 1.3 * len(kernels), (len(kernels), len(lowerings))
