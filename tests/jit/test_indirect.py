"""Indexing by a tensor lowered to one indirect load per output (zyx/jit/indirect.py): embeddings, `x[idx]` and
gather compute what numpy and the CPU reference compute, their gradients too, with no loop over the indexed
axis left in any kernel, and an index out of range still raises IndexError naming it."""
import numpy as np
import pytest

import zyx
from zyx.jit.kernel_ir import Load, Loop, walk
from zyx.jit.device_traits import DeviceTraits
from zyx.jit.schedule import schedule

RNG = np.random.default_rng(5)
TRAITS = {"cpu": DeviceTraits(vector_width=16), "gpu": DeviceTraits(gpu=True, vector_width=4)}


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def kernels_of(traits, *tensors):
    kernels, _ = schedule([t.node for t in tensors], traits)
    return kernels


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_embedding_is_one_indirect_load_per_output_with_no_loop_over_the_vocabulary(kind):
    host = zyx.CPU()
    vocab = 1000
    rows = zyx.nn.functional.embedding(host.tensor(RNG.integers(0, vocab, (4, 6))), host.tensor(data(vocab, 32)))
    kernels = kernels_of(TRAITS[kind], rows)
    bodies = [statement for kernel in kernels for statement in walk(kernel.ir.body)]
    assert any(isinstance(s, Load) and s.indirect is not None for s in bodies)
    assert not any(isinstance(s, Loop) and s.trips >= vocab for s in bodies)
    assert max(kernel.longest_reduction for kernel in kernels) < vocab  # (the range check's sum over 24 entries)


def test_embedding_rows_are_read_as_vectors_on_cpus():
    host = zyx.CPU()
    rows = zyx.nn.functional.embedding(host.tensor(RNG.integers(0, 50, (3, 5))), host.tensor(data(50, 64)))
    picked, = [k for k in kernels_of(TRAITS["cpu"], rows) if "vstore16" in k.source]
    assert "vload16(" in picked.source and "*4)" in picked.source  # a row's 16 floats at 4 per index step


def test_embedding_matches_numpy_with_padding_row(device):
    weight, index = data(50, 24), RNG.integers(0, 50, (3, 7))
    out = zyx.nn.functional.embedding(device.tensor(index), device.tensor(weight), padding_idx=4)
    np.testing.assert_array_equal(out.numpy(), weight[index])


@pytest.mark.parametrize("shape,axis,index", [((7, 5, 3), 1, [[-1, 0, 4], [2, -5, 3]]),
                                              ((5,), 0, [4, -2, 0, 0]),
                                              ((3, 9, 2), 0, [[[2]], [[-3]]]),
                                              ((4, 6), 1, [5, 0, -6])])
def test_integer_tensor_indexing_matches_numpy(device, shape, axis, index):
    x, idx = data(*shape), np.array(index)
    key = (slice(None),) * axis + (idx,)
    got = device.tensor(x)[(slice(None),) * axis + (device.tensor(idx),)]
    np.testing.assert_array_equal(got.numpy(), x[key])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_gather_along_each_axis_matches_numpy(device, axis):
    x = data(4, 5, 6)
    shape = [3, 4, 5]
    shape[axis] = 7
    index = RNG.integers(0, x.shape[axis], shape)
    got = device.tensor(x).gather(axis, device.tensor(index)).numpy()
    trimmed = x[tuple(slice(0, s) if d != axis else slice(None) for d, s in enumerate(shape))]
    np.testing.assert_array_equal(got, np.take_along_axis(trimmed, index, axis))


def _embedding_gradient(device, weight, index, upstream):
    w = device.tensor(weight)
    grad, = (zyx.nn.functional.embedding(device.tensor(index), w) * device.tensor(upstream)).sum().backward([w])
    return grad.numpy()


def test_embedding_gradient_is_the_scatter_sum_of_numpy(device):
    weight, index = data(40, 16), RNG.integers(0, 40, (5, 9))
    index[0, :3] = 7  # repeated rows add up
    upstream = data(5, 9, 16)
    expected = np.zeros_like(weight)
    np.add.at(expected, index.reshape(-1), upstream.reshape(-1, 16))
    np.testing.assert_allclose(_embedding_gradient(device, weight, index, upstream), expected, rtol=1e-5, atol=1e-5)


def test_gather_gradient_matches_finite_differences():
    host = zyx.OpenCL()
    x, index, upstream = data(3, 5).astype(np.float64), RNG.integers(0, 5, (3, 4)), data(3, 4)

    def loss(values):
        return float((np.take_along_axis(values, index, 1) * upstream).sum())
    t = host.tensor(x.astype(np.float32))
    grad, = (t.gather(1, host.tensor(index)) * host.tensor(upstream)).sum().backward([t])
    step, numeric = 1e-3, np.zeros_like(x)
    for position in np.ndindex(x.shape):
        shifted = x.copy()
        shifted[position] += step
        numeric[position] = (loss(shifted) - loss(x)) / step
    np.testing.assert_allclose(grad.numpy(), numeric, rtol=1e-3, atol=1e-3)


def test_index_gradient_matches_the_cpu_reference():
    x, index, upstream = data(6, 4, 3), RNG.integers(-4, 4, (2, 5)), data(2, 6, 5, 3)
    grads = []
    for device in (zyx.CPU(), zyx.OpenCL()):
        t = device.tensor(x)
        grad, = (t[:, device.tensor(index)].permute(1, 0, 2, 3) * device.tensor(upstream)).sum().backward([t])
        grads.append(grad.numpy())
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [50, -51])
def test_an_index_out_of_range_still_raises_naming_it(device, bad):
    x = device.tensor(data(50, 8))
    with pytest.raises(IndexError, match=str(bad)):
        x[device.tensor([1, bad, 2])].numpy()
    with pytest.raises(IndexError, match=str(bad)):
        x.gather(0, device.tensor(np.full((2, 8), bad))).numpy()


def test_cross_entropy_reads_each_targets_log_probability_with_one_load():
    host = zyx.CPU()
    logits, target = data(64, 1000), RNG.integers(0, 1000, 64)
    loss = zyx.nn.functional.cross_entropy(host.tensor(logits), host.tensor(target))
    bodies = [s for kernel in kernels_of(TRAITS["cpu"], loss) for s in walk(kernel.ir.body)]
    assert any(isinstance(s, Load) and s.indirect is not None for s in bodies)
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    expected = -log_probs[np.arange(64), target].mean()
    np.testing.assert_allclose(zyx.nn.functional.cross_entropy(zyx.OpenCL().tensor(logits),
                                                               zyx.OpenCL().tensor(target)).numpy(), expected, rtol=1e-5)
