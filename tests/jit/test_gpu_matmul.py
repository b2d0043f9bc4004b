"""GPU matrix products (zyx/jit/matmul.py): which block a product gets, and the local-tile kernel's results
against numpy. Kernels are shaped for a GPU on whatever OpenCL device runs the tests (PoCL here), as
ZYX_GPU_KERNELS=1 does (the `gpu` fixture, tests/jit/conftest.py)."""
import importlib
import re

import numpy as np
import pytest

import zyx
from zyx.jit.kernel_nodes import kernel_flops
from zyx.jit.device_traits import DeviceTraits
from zyx.jit.schedule import schedule
from zyx.jit.split import split_options
from zyx.jit.tiling import hosted_matmul

matmul = importlib.import_module("zyx.jit.matmul")  # `zyx.jit` is also the name of the decorator
RNG = np.random.default_rng(11)


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def plan_of(tensor):
    """The local-tile plan of the kernel that stores `tensor` on a GPU (None: register tiles only)."""
    root = tensor.node
    materialized = {id(root): root}
    return matmul.plan_local_tiles(root, hosted_matmul(root, materialized))


@pytest.fixture
def big_blocks(monkeypatch):
    """128 x 128 blocks even for products too small to keep a real GPU busy (tests stay fast on a CPU)."""
    monkeypatch.setattr(matmul, "MIN_GROUPS", 1)


def check(out, expected, k):
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-5 * np.sqrt(k))


@pytest.mark.parametrize("n,k,m,block", [(4096, 4096, 4096, 128), (2048, 512, 2048, 128),
                                         (1024, 1024, 1024, 64),  # 128-blocks would leave 64 groups
                                         (192, 64, 8192, 64),  # 128-blocks would be only 3/4 full
                                         (96, 32, 160, 32),  # too few groups for bigger blocks
                                         (1000, 784, 4096, 128), (4000, 4000, 1000, 128),  # overhanging
                                         (784, 512, 512, 64), (512, 512, 512, 32), (130, 64, 64, 32), (64, 40, 64, 32)])
def test_block_choice(dev, n, k, m, block):
    plan = plan_of(dev.randn(n, k) @ dev.randn(k, m))
    assert (plan.block, plan.per_item) == (block, block // 16)


@pytest.mark.parametrize("n,k,m", [(64, 0, 64), (512, 512, 10), (7, 13, 5), (1, 64, 4096)])
def test_no_local_tiles_where_an_axis_is_short_or_nothing_is_reduced(dev, n, k, m):
    assert plan_of(dev.randn(n, k) @ dev.randn(k, m)) is None


@pytest.fixture
def any_share(monkeypatch):
    """Local tiles even for blocks that are mostly past the ends of n and m."""
    monkeypatch.setattr(matmul, "MIN_USED", 0)
    monkeypatch.setattr(matmul, "FULL", 0)


@pytest.mark.parametrize("n,k,m", [(128, 16, 128),  # one slice: no loop
                                   (128, 32, 256),  # two slices: one trip of the double-buffered loop
                                   (256, 144, 128)])
def test_big_blocks(gpu, big_blocks, n, k, m):
    a, b = data(n, k), data(k, m)
    out = gpu.tensor(a) @ gpu.tensor(b)
    assert plan_of(out).block == 128
    check(out, a @ b, k)


@pytest.mark.parametrize("n,k,m", [(2, 1, 3), (7, 13, 5), (33, 48, 17), (96, 80, 160), (192, 64, 320),
                                   (130, 64, 128), (128, 40, 128), (131, 37, 257), (127, 1, 129),
                                   (200, 17, 72), (256, 150, 130)])
def test_odd_and_non_dividing_shapes(gpu, big_blocks, any_share, n, k, m):
    """Blocks hanging over the ends of n and m, slices over the end of k (prime sizes too)."""
    a, b = data(n, k), data(k, m)
    out = gpu.tensor(a) @ gpu.tensor(b)
    assert plan_of(out).block == 128
    check(out, a @ b, k)


@pytest.mark.parametrize("n,k,m,block", [(131, 37, 67, 64), (97, 70, 45, 32), (784, 64, 40, 32)])
def test_smaller_overhanging_blocks(gpu, any_share, monkeypatch, n, k, m, block):
    monkeypatch.setattr(matmul, "MIN_GROUPS", 1)
    monkeypatch.setattr(matmul, "BLOCKS", tuple(b for b in matmul.BLOCKS if b[0] <= block))
    a, b = data(n, k), data(k, m)
    out = gpu.tensor(a) @ gpu.tensor(b)
    assert plan_of(out).block == block
    check(out, a @ b, k)


@pytest.mark.parametrize("a_shape,b_shape,transposed", [
    ((3, 128, 64), (3, 64, 128), False),                  # batched
    ((2, 1, 64, 32), (3, 32, 64), False),                 # broadcast batch
    ((48, 128), (256, 48), True),                         # both operands transposed
    ((45, 150), (140, 45), True),                         # ... with blocks hanging over both ends
    ((3, 100, 30), (3, 30, 120), False),                  # batched, overhanging, k not a multiple of BK
    ((2, 1, 70, 33), (3, 33, 90), False),
])
def test_batched_transposed_and_overhanging(gpu, big_blocks, any_share, a_shape, b_shape, transposed):
    a, b = data(*a_shape), data(*b_shape)
    x, y = gpu.tensor(a), gpu.tensor(b)
    out = x.T @ y.T if transposed else x @ y
    assert plan_of(out).block == 128
    check(out, a.T @ b.T if transposed else a @ b, a_shape[0] if transposed else a_shape[-1])


def test_weight_gradient_of_a_784_wide_layer(gpu):
    """x.T @ dy with x 512 x 784: 784 x 512 outputs, 64 x 64 blocks hanging over n's end."""
    x, dy = data(512, 784), data(512, 512)
    out = gpu.tensor(x).T @ gpu.tensor(dy)
    assert plan_of(out).block == 64
    check(out, x.T @ dy, 512)


@pytest.mark.parametrize("batch,side,kernels", [(4, 10, 1),  # 32 x 144 outputs (weight-shaped), k = 4·8·8
                                                 (64, 18, 2)])  # k = 64·16·16: split in 16 chunks, summed after
def test_convolution_weight_gradient(gpu, batch, side, kernels):
    """The gradient of a 3x3 convolution's weight (reduced over batch and pixels) is a local-tile product (a
    batch of them over chunks of a long k) and matches numpy."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((batch, 16, side, side)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32) * 0.1
    wt = gpu.tensor(w)
    out = gpu.tensor(x).conv2d(wt).realize()
    g = rng.standard_normal(out.shape).astype(np.float32)
    (grad,) = (out * gpu.tensor(g)).sum().backward([wt])
    cols = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))  # b, c, h, w, 3, 3
    expected = np.einsum("bchwij,bohw->ocij", cols, g)
    found, _ = schedule([grad.node], DeviceTraits(True))
    assert len(found) == kernels and "__local float2" in found[0].source
    assert found[0].global_size == 5 * 256 * (16 if kernels == 2 else 1)  # 32 x 32 blocks (times chunks)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-4, atol=1e-3)


def test_prologue_and_epilogue_fuse(gpu, big_blocks):
    """A scaled, exponentiated operand and bias + relu: one local-tile kernel."""
    a, w, bias = data(128, 64), data(128, 64), data(128)
    out = ((gpu.tensor(a) * 0.5).exp() @ gpu.tensor(w).T + gpu.tensor(bias)).relu()
    kernels, _ = schedule([out.node], DeviceTraits(True))
    assert len(kernels) == 1 and "__local float4" in kernels[0].source
    zyx.reset_stats()
    check(out, np.maximum(np.exp(a * 0.5) @ w.T + bias, 0), 64)
    assert zyx.stats()["kernels_launched"] == 1


def test_fragments_are_read_as_vectors_and_multiplied_lane_by_lane_in_place(dev, big_blocks):
    """The form NVIDIA's compiler runs fastest (bench/GPU.md): float4 fragments of the staged tiles, their lanes
    read in the multiply-adds (no copies into scalars), the tile's index grouped as ((k%2)*16+kk)*33+..."""
    kernel, = schedule([(dev.randn(256, 64) @ dev.randn(64, 256)).node], DeviceTraits(True))[0]
    assert re.search(r"float4 (f\d+) = tile_a\d+\[\(\(\(k\d+%2\)\*16\+kk\d+\)\*33\+\(lid/16\)\)\];", kernel.source)
    assert len(re.findall(r"acc\d+ \+= f\w+\.s[0-3]\*f\w+\.s[0-3];", kernel.source)) == 2 * 64  # loop and last slice
    assert "float x" not in kernel.source and kernel.source.count("barrier(") == 2  # one per slice (double-buffered)


def test_epilogue_fuses_into_overhanging_blocks(gpu, big_blocks, any_share):
    """Bias + relu over blocks hanging over both ends and a slice over the end of k: one kernel."""
    a, w, bias = data(100, 37), data(70, 37), data(70)
    out = (gpu.tensor(a) @ gpu.tensor(w).T + gpu.tensor(bias)).relu()
    assert plan_of(out).block == 128
    kernels, _ = schedule([out.node], DeviceTraits(True))
    assert len(kernels) == 1 and "__local float4" in kernels[0].source
    zyx.reset_stats()
    check(out, np.maximum(a @ w.T + bias, 0), 37)
    assert zyx.stats()["kernels_launched"] == 1


@pytest.mark.long  # (26 s of PoCL running a GPU-shaped 64 x 16 x 18 x 18 convolution's weight gradient)
def test_a_half_product_with_a_long_k_is_not_split_into_half_partials(gpu):
    """Split over chunks of k (as the float32 one is), a float16 convolution weight gradient would store its partial
    sums in float16: it stays one product, accumulated in float32, and matches a float64 reference."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 16, 18, 18)).astype(np.float16)
    g = rng.standard_normal((64, 32, 16, 16)).astype(np.float16)

    def weight_gradient(dtype):
        wt = gpu.tensor(np.zeros((32, 16, 3, 3), dtype))
        out = gpu.tensor(x.astype(dtype)).conv2d(wt)
        return (out * gpu.tensor(g.astype(dtype))).sum().backward([wt])[0]

    assert len(schedule([weight_gradient(np.float32).node], DeviceTraits(True))[0]) == 2
    grad = weight_gradient(np.float16)
    assert len(schedule([grad.node], DeviceTraits(True))[0]) == 1
    cols = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), (3, 3), axis=(2, 3))
    expected = np.einsum("bchwij,bohw->ocij", cols, g.astype(np.float64))
    np.testing.assert_allclose(grad.numpy().astype(np.float64), expected, rtol=2e-3, atol=0.5)


def test_flattened_product_under_an_epilogue_gets_local_tiles(gpu, big_blocks):
    """A batched product flattened under an elementwise epilogue (GELU's backward over an MLP's (tokens, 4d) input
    gradient) is staged in local tiles, the epilogue applied to the accumulators, rather than one output per item."""
    x, w, z = data(4, 64, 48), data(48, 160), data(4, 64, 160)
    out = ((gpu.tensor(x) @ gpu.tensor(w)) * gpu.tensor(z).sigmoid()).reshape(256, 160) + 1
    assert plan_of(out) is not None
    check(out, ((x @ w) / (1 + np.exp(-z))).reshape(256, 160) + 1, 48)


@pytest.mark.parametrize("n,m,split", [(3072, 768, 4), (2304, 768, 8), (768, 768, 8)])
def test_weight_gradients_over_many_tokens_split_k_into_128_blocks(dev, n, m, split):
    """GPT-2's weight gradients over 16 x 1024 tokens: 128-blocks (not 64 for 768 x 768), k split until there are
    SPLIT_GROUPS groups."""
    x, dy = dev.randn(16384, n), dev.randn(16384, m)
    root = (x.T @ dy).node
    product = hosted_matmul(root, {id(root): root})
    plan = matmul.plan_local_tiles(root, product, splits=split_options(product))
    assert (plan.block, plan.split) == (128, split)


@pytest.mark.parametrize("n,k,m,units,block,split", [
    (784, 512, 512, 132, 64, 4),  # W4's first weight gradient: 104 groups on the H200's 132 SMs, 416 split
    (784, 512, 512, 100, 64, 1),  # 104 groups reach 100 units
    (784, 512, 512, 0, 64, 1),    # units unknown
    (784, 256, 512, 132, 64, 2),  # chunks of at least split.MIN_CHUNK: 208 groups
    (1024, 1024, 1024, 132, 64, 1), (4096, 4096, 4096, 132, 128, 1),  # W3: groups enough
    (512, 512, 512, 132, 32, 1)])  # 256 groups of 32 x 32: a split needs 64-blocks
def test_products_leaving_compute_units_idle_split_k(dev, monkeypatch, n, k, m, units, block, split):
    """With ZYX_FILL_GROUPS_PER_UNIT=2, a weight gradient (x.T @ dy) whose blocks leave some of the device's compute
    units without a group has k split until there are 2 groups a unit, or as far as its chunks may be cut."""
    monkeypatch.setenv("ZYX_FILL_GROUPS_PER_UNIT", "2")
    x, dy = dev.randn(k, n), dev.randn(k, m)
    root = (x.T @ dy).node
    product = hosted_matmul(root, {id(root): root})
    plan = matmul.plan_local_tiles(root, product, splits=split_options(product), compute_units=units)
    assert (plan.block, plan.split) == (block, split)


def test_a_split_weight_gradient_matches_numpy(gpu, monkeypatch):
    """Partial products over chunks of k, then their sum: two kernels, numpy's result; the profiler counts the
    product's FLOPs in the first (the sum reads the partials, not the product), whether the sum's kernel stores a
    view of the product or the product itself (as a weight gradient's does)."""
    monkeypatch.setattr(matmul, "LONG_CHUNK", 128)
    monkeypatch.setattr(matmul, "MIN_GROUPS", 1)
    x, dy = data(1000, 256), data(1000, 128)
    out = gpu.tensor(x).T @ gpu.tensor(dy)
    for root in (out.node, out.node.src[0]):
        kernels, _ = schedule([root], DeviceTraits(True))
        assert len(kernels) == 2 and "tile_a" in kernels[0].source
        assert kernel_flops(kernels[0]) >= 2 * 256 * 1000 * 128 and kernel_flops(kernels[1]) <= 8 * 256 * 128
    check(out, x.T @ dy, 1000)


def test_a_gelu_operand_read_by_768_columns_is_stored_first(gpu):
    """GELU(h)·Wᵀ with 768 columns (GPT-2's MLP output): the GELU is stored by a kernel of its own, not recomputed
    in the staging of each of the 6 blocks of 128 columns."""
    h, w = data(256, 64), data(768, 64)

    def product(device):
        return device.tensor(h).gelu() @ device.tensor(w).T
    kernels, _ = schedule([product(gpu).node], DeviceTraits(True))
    tiled = next(k for k in kernels if "tile_a" in k.source)
    assert len(kernels) == 2 and all(node.op.name == "BUFFER" for node in kernels[0].loads)
    assert any(node.op.name != "BUFFER" for node in tiled.loads)
    np.testing.assert_allclose(product(gpu).numpy(), product(zyx.CPU()).numpy(), rtol=1e-4, atol=1e-4)


def test_an_elementwise_kernel_reading_a_product_another_kernel_stores_is_shaped_elementwise(gpu):
    """dY·W read by two kernels (GELU's backward and the bias gradient's column sums, W7's MLP): the product has a
    tiled kernel of its own, and the elementwise kernel reading it stores one output per item, not the product's
    tile layout around loads of the stored product (0.96 ms a layer under bf16 autocast on the H200)."""
    a, b, h = data(2048, 256), data(256, 768), data(2048, 768)

    def outputs(device):
        y = device.tensor(a) @ device.tensor(b)
        return y * device.tensor(h).tanh(), (y * device.tensor(h)).sum(0)
    elementwise, column_sums = outputs(gpu)
    kernels, _ = schedule([elementwise.node, column_sums.node], DeviceTraits(True, compute_units=132))
    products = [k for k in kernels if "tile_a" in k.source]
    assert len(products) == 1 and products[0].global_size < 2048 * 768
    assert any(k.global_size == 2048 * 768 and "tile_a" not in k.source and k.local_size is None for k in kernels)
    y = a.astype(np.float64) @ b
    np.testing.assert_allclose(elementwise.numpy(), y * np.tanh(h), rtol=1e-4, atol=1e-3)
    # 2048 float32 terms of size ~16 summed in another order than float64's: bounded by their absolute sum
    bound = 4 * np.finfo(np.float32).eps * np.abs(y * h).sum(0)
    assert np.all(np.abs(column_sums.numpy() - (y * h).sum(0)) <= bound + 1e-3)


def test_a_target_logit_picked_from_a_cast_of_stored_half_logits_matches_the_reference(gpu):
    """cross_entropy(logits.float()) over bf16 logits: the target logits are picked from the stored bf16 values and
    cast (no float32 copy of the logits is stored for the pick); loss and gradients match zyx.CPU()'s."""
    n, d, v = 64, 32, 20000
    xs, ws, targets = data(n, d), data(v, d) * 0.1, np.arange(n) * 313 % v

    def loss_and_gradients(device):
        x, w = device.tensor(xs), device.tensor(ws)
        with zyx.autocast(zyx.bfloat16):
            logits = x @ w.T
        loss = zyx.nn.functional.cross_entropy(logits.float(), device.tensor(targets))
        return (loss, *loss.backward([x, w]))
    got = loss_and_gradients(gpu)
    kernels, _ = schedule([t.node for t in got], DeviceTraits(True, compute_units=132))
    assert not any(node.dtype.name == "float32" and node.numel == n * v for k in kernels for node in k.outputs)
    for a, b in zip(got, loss_and_gradients(zyx.CPU())):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-2, atol=1e-4)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_half_products_partials_widened_to_float32_sum_to_the_product(dtype):
    """split_along_k(widen=float32) (a half product split across groups, split.py): each operand's broadcast cast to
    float32, the partials a float32 product of the half values over each chunk (k padded to whole chunks), their
    sum the product's values before its rounding: evaluated on the CPU reference against float64."""
    from zyx.jit.rewrite import split_along_k
    from zyx.trace import node as n
    rng = np.random.default_rng(48)
    dev = zyx.CPU()
    a, b = (dev.tensor(rng.standard_normal(shape).astype(np.float32)).to(dtype).realize() for shape in ((48, 1000),
                                                                                                      (1000, 40)))
    product = (a @ b).node.src[0]  # (under the matmul's reshape: the SUM over k)
    partial, total = split_along_k(product, 3, 64, first=True, widen=zyx.float32)
    assert partial.dtype == total.dtype == zyx.float32 and partial.shape[0] == 3  # chunks of 384: k padded to 1152
    assert all(side.op.name == "CAST" and side.src[0].op.name == "EXPAND" for side in partial.src[0].src)
    expected = a.to("float32").numpy().astype(np.float64) @ b.to("float32").numpy().astype(np.float64)
    summed = zyx.Tensor(n.reshape(total, (48, 40))).numpy()
    np.testing.assert_allclose(summed, expected, rtol=1e-5, atol=1e-4)
