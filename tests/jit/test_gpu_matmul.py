"""GPU matrix products (zyx/jit/matmul.py): which block a product gets, and the local-tile kernel's results
against numpy. Kernels are shaped for a GPU on whatever OpenCL device runs the tests (PoCL here), as
ZYX_GPU_KERNELS=1 does."""
import importlib

import numpy as np
import pytest

import zyx
from zyx.jit.schedule import DeviceTraits, schedule
from zyx.jit.tiling import choose_tile, hosted_matmul

matmul = importlib.import_module("zyx.jit.matmul")  # `zyx.jit` is also the name of the decorator
RNG = np.random.default_rng(11)


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def plan_of(tensor):
    """The local-tile plan of the kernel that stores `tensor` on a GPU (None: register tiles only)."""
    root = tensor.node
    materialized = {id(root): root}
    return matmul.plan_local_tiles(root, choose_tile(root, materialized, True), hosted_matmul(root, materialized))


@pytest.fixture
def gpu(dev, monkeypatch):
    """The OpenCL device, scheduling GPU-shaped kernels."""
    monkeypatch.setattr(dev.backend, "traits", DeviceTraits(True, dev.backend.traits.group_size))
    monkeypatch.setattr(dev.backend, "programs", {})
    return dev


@pytest.fixture
def big_blocks(monkeypatch):
    """128 x 128 blocks even for products too small to keep a real GPU busy (tests stay fast on a CPU)."""
    monkeypatch.setattr(matmul, "MIN_GROUPS", 1)


def check(out, expected, k):
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-5 * np.sqrt(k))


@pytest.mark.parametrize("n,k,m,block", [(4096, 4096, 4096, 128), (2048, 512, 2048, 128),
                                         (1024, 1024, 1024, 64),  # 128-blocks would leave 64 groups
                                         (192, 64, 8192, 64), (96, 32, 160, 32)])  # 128 (64) does not divide
def test_block_choice(dev, n, k, m, block):
    plan = plan_of(dev.randn(n, k) @ dev.randn(k, m))
    assert (plan.block, plan.per_item) == (block, block // 16)


@pytest.mark.parametrize("n,k,m", [(130, 64, 64), (64, 40, 64), (64, 0, 64)])
def test_no_local_tiles_where_blocks_or_slices_do_not_divide(dev, n, k, m):
    assert plan_of(dev.randn(n, k) @ dev.randn(k, m)) is None


@pytest.mark.parametrize("n,k,m", [(128, 16, 128),  # one slice: no loop
                                   (128, 32, 256),  # two slices: one trip of the double-buffered loop
                                   (256, 144, 128)])
def test_big_blocks(gpu, big_blocks, n, k, m):
    a, b = data(n, k), data(k, m)
    out = gpu.tensor(a) @ gpu.tensor(b)
    assert plan_of(out).block == 128
    check(out, a @ b, k)


@pytest.mark.parametrize("n,k,m", [(1, 1, 1), (7, 13, 5), (33, 48, 17), (96, 80, 160), (192, 64, 320),
                                   (130, 64, 128), (128, 40, 128)])
def test_odd_and_non_dividing_shapes(gpu, big_blocks, n, k, m):
    a, b = data(n, k), data(k, m)
    check(gpu.tensor(a) @ gpu.tensor(b), a @ b, k)


def test_batched_and_broadcast(gpu, big_blocks):
    a, b = data(3, 128, 64), data(3, 64, 128)
    out = gpu.tensor(a) @ gpu.tensor(b)
    assert plan_of(out).block == 128
    check(out, a @ b, 64)
    a, b = data(2, 1, 64, 32), data(3, 32, 64)
    check(gpu.tensor(a) @ gpu.tensor(b), a @ b, 32)


def test_transposed_operands(gpu, big_blocks):
    a, b = data(48, 128), data(256, 48)
    out = gpu.tensor(a).T @ gpu.tensor(b).T
    assert plan_of(out).block == 128
    check(out, a.T @ b.T, 48)


def test_prologue_and_epilogue_fuse(gpu, big_blocks):
    """A scaled, exponentiated operand and bias + relu: one local-tile kernel."""
    a, w, bias = data(128, 64), data(128, 64), data(128)
    out = ((gpu.tensor(a) * 0.5).exp() @ gpu.tensor(w).T + gpu.tensor(bias)).relu()
    kernels, _ = schedule([out.node], DeviceTraits(True))
    assert len(kernels) == 1 and "__local float4" in kernels[0].source
    zyx.reset_stats()
    check(out, np.maximum(np.exp(a * 0.5) @ w.T + bias, 0), 64)
    assert zyx.stats()["kernels_launched"] == 1
