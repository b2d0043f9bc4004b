"""One-hot products as segmented sums (zyx/jit/segments.py): an embedding's weight gradient walks the tokens once per
block of vocabulary rows, with no dense product over the vocabulary, and computes what numpy's scatter-add, the dense
one-hot product and the CPU reference compute (odd sizes, repeated and batched indices, half-precision gradients,
blocks overhanging both ends)."""
import math

import numpy as np
import pytest

import zyx
from zyx.jit import segments
from zyx.jit.kernel_ir import If, LocalArray, Loop, walk
from zyx.jit.device_traits import DeviceTraits
from zyx.jit.schedule import schedule

RNG = np.random.default_rng(17)
TRAITS = {"cpu": DeviceTraits(vector_width=16), "gpu": DeviceTraits(gpu=True, vector_width=4)}


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def embedding_gradient(device, index, vocab, upstream, dtype="float32"):
    """The gradient of (embedding(index, W) * upstream).sum() with respect to W (vocab x upstream's last axis)."""
    weight = device.tensor(data(vocab, upstream.shape[-1])).cast(dtype)
    rows = zyx.nn.functional.embedding(device.tensor(index), weight)
    grad, = (rows * device.tensor(upstream).cast(dtype)).sum().backward([weight])
    return grad


def scatter_added(index, vocab, upstream):
    expected = np.zeros((vocab, upstream.shape[-1]), np.float32)
    np.add.at(expected, index.reshape(-1), upstream.reshape(-1, upstream.shape[-1]))
    return expected


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_embedding_gradient_walks_the_tokens_once_per_block_of_rows(kind):
    vocab, tokens = 1000, 256
    grad = embedding_gradient(zyx.CPU(), RNG.integers(0, vocab, tokens), vocab, data(tokens, 64))
    kernels, _ = schedule([grad.node], TRAITS[kind])
    kernel, = [k for k in kernels if grad.node in k.outputs or k.outputs[0] is grad.node]
    rows, columns = segments.block_sizes(kind == "gpu")
    assert kernel.name.startswith("s") and kernel.global_size == -(-vocab // rows) * (64 // columns)
    loops = [s for s in walk(kernel.ir.body) if isinstance(s, Loop)]
    assert math.prod(loop.trips for loop in loops) == tokens  # (GPUs: chunks of tokens, one per item of a group)
    assert any(isinstance(s, If) and s.when is not None for s in walk(loops[-1].body))  # terms read only on a hit
    staged = [s for s in kernel.ir.body if isinstance(s, LocalArray)]
    assert (kernel.local_size, len(staged)) == ((64 // columns, 2) if kind == "gpu" else (None, 0))  # (hits, marks)
    if kind == "gpu":  # a chunk's rows are walked only where one of its tokens hits the block
        assert any(isinstance(s, If) and s.when is not None and isinstance(s.body[0], Loop)
                   for s in walk(loops[0].body))


@pytest.mark.parametrize("vocab,dim,shape", [(37, 13, (29,)), (300, 64, (4, 64)), (5, 3, (2, 3, 7)), (1, 4, (6,))])
def test_matches_numpy_scatter_add(shaped, vocab, dim, shape):
    index = RNG.integers(0, vocab, shape)
    index.reshape(-1)[: index.size // 2] = index.reshape(-1)[0]  # half the tokens hit one row
    upstream = data(*shape, dim)
    grad = embedding_gradient(shaped, index, vocab, upstream)
    np.testing.assert_allclose(grad.numpy(), scatter_added(index, vocab, upstream), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block", [(1, 1), (3, 5), (7, 2), (64, 1)])
def test_blocks_overhanging_both_ends(dev, monkeypatch, block):
    monkeypatch.setenv("ZYX_SEGMENTS", f"{block[0]}x{block[1]}")
    dev.forget_programs()
    index, upstream = RNG.integers(0, 50, 41), data(41, 9)
    grad = embedding_gradient(dev, index, 50, upstream)
    np.testing.assert_allclose(grad.numpy(), scatter_added(index, 50, upstream), rtol=1e-5, atol=1e-5)
    dev.forget_programs()


def test_equals_the_dense_one_hot_product_and_the_cpu_reference(dev):
    """On the device's own kernels: GPU-shaped, the dense product's local-tile kernel left PoCL's heap corrupt (3
    runs of 3)."""
    index, upstream = RNG.integers(0, 120, (3, 40)), data(3, 40, 24)
    grad = embedding_gradient(dev, index, 120, upstream).numpy()
    dense = dev.tensor(index.reshape(-1)).one_hot(120).float().T @ dev.tensor(upstream.reshape(-1, 24))
    np.testing.assert_allclose(grad, dense.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, embedding_gradient(zyx.CPU(), index, 120, upstream).numpy(), rtol=1e-5,
                               atol=1e-5)


def test_bfloat16_gradients(shaped):
    index, upstream = RNG.integers(0, 70, 200), data(200, 32)
    grad = embedding_gradient(shaped, index, 70, upstream, "bfloat16")
    assert grad.dtype == zyx.bfloat16
    rounded = zyx.CPU().tensor(upstream).cast("bfloat16").float().numpy()
    np.testing.assert_allclose(grad.float().numpy(), scatter_added(index, 70, rounded), rtol=1e-2, atol=1e-2)

