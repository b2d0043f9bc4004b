"""Two-stage column sums (rewrite.column_chunk): a GPU column sum whose groups of COLUMNS adjacent columns are too
few for the device's compute units sums chunks of rows first (partials [chunks, columns]: a column sum again, of
more groups), then the chunks; a CPU's where the input outgrows the caches. Checked against numpy and torch on
the OpenCL device scheduling GPU-shaped kernels as for the H200 (the `h200` fixture: 132 compute units)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import zyx
from zyx.jit import rewrite, schedule as schedule_module
from zyx.jit.rewrite import (COLUMN_GROUPS_PER_UNIT, COLUMN_ITEM_CHUNK, COLUMN_MIN_CHUNK, CPU_COLUMN_CHUNK,
                             column_chunk, rewrite_graph)
from zyx.jit.device_traits import DeviceTraits
from zyx.jit.schedule import schedule
from zyx.jit.transforms.group import COLUMNS, GROUP_MAX_OUTPUTS
from zyx.trace.node import toposort
from zyx.trace.ops import Op

RNG = np.random.default_rng(15)


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def broadcast(rows, columns):
    """A [rows, columns] tensor of no memory (the sizes of W7's column sums, to schedule, not to run)."""
    return zyx.CPU().tensor(np.ones((1, columns), np.float32)).expand(rows, columns) * 2


@pytest.mark.parametrize("columns", [768, 2304, 3072])
def test_w7_column_sums_are_split_into_enough_items_or_groups(h200, columns):
    """GPT-2's bias and layer-norm gradients over 16 384 tokens: 2304 and 3072 columns in chunks of 512 rows,
    GROUP_MAX_OUTPUTS partials or more, one an item (adjacent items read adjacent columns); 768 columns in groups
    of COLUMNS adjacent columns, at least COLUMN_GROUPS_PER_UNIT a compute unit. Then a kernel sums the chunks."""
    stored = broadcast(16384, columns)  # (a target: the sum reads it from memory, as a gradient)
    _, first, second = schedule([stored.node, stored.sum(0).node], h200.traits)[0]
    if columns == 768:
        assert first.global_size // first.local_size >= COLUMN_GROUPS_PER_UNIT * h200.traits.compute_units
        assert first.name.startswith("g_") and f"(lid%{COLUMNS})" in first.source
    else:
        assert first.name.startswith("r_") and first.global_size >= GROUP_MAX_OUTPUTS
    assert second.global_size == columns


def chunk(rows, columns, gpu=True, units=132, axis=0):
    return column_chunk(broadcast(rows, columns).sum(axis, keepdim=True).node, gpu, units)


def test_column_sums_are_split_only_where_their_groups_are_too_few(monkeypatch):
    """Not on a GPU of unknown size; not where the columns fill the GPU, the rows are too few for two chunks, the
    sum runs along rows or the sum is a product (products are split along k in their own way). On a CPU where the
    input outgrows the caches."""
    assert chunk(16384, 768) == 2048  # 6 chunks wanted: rounded down to a power of two rows
    assert chunk(16384, 768, units=0) == 0
    assert chunk(16384, 3072) == chunk(16384, 3072, units=0) == COLUMN_ITEM_CHUNK  # 22 chunks wanted: 32
    assert DeviceTraits.of(SimpleNamespace(is_gpu=True, compute_units=132)).compute_units == 132
    monkeypatch.setenv("ZYX_COLUMN_GROUPS", "64")
    assert chunk(16384, 768) == COLUMN_MIN_CHUNK  # 541 chunks wanted
    monkeypatch.setenv("ZYX_COLUMN_GROUPS", "0")
    assert chunk(16384, 768) == 0
    monkeypatch.delenv("ZYX_COLUMN_GROUPS")
    assert chunk(16384, GROUP_MAX_OUTPUTS) == 0
    assert chunk(2 * COLUMN_MIN_CHUNK, COLUMNS * COLUMN_GROUPS_PER_UNIT * 132) == 0
    assert chunk(2 * COLUMN_MIN_CHUNK - 1, 768) == 0
    assert chunk(512, 512) == 0  # W4's bias gradient, 1 MiB: a second stage would cost a launch more than it saves
    assert chunk(768, 16384, axis=1) == 0
    x, dy = broadcast(16384, 64), broadcast(16384, 32)  # a weight gradient: a sum over the rows of a product
    assert column_chunk((x.reshape(16384, 64, 1) * dy.reshape(16384, 1, 32)).sum(0, keepdim=True).node, True, 132) == 0
    assert len(schedule([broadcast(16384, 768).sum(0).node], DeviceTraits(gpu=True))[0]) == 1
    assert chunk(16384, 768, gpu=False) == CPU_COLUMN_CHUNK  # 48 MiB
    assert chunk(2048, 256, gpu=False) == 0  # 2 MiB: in cache


def test_cpu_column_sums_larger_than_the_caches_match_numpy(dev, launched):
    a = data(2 * CPU_COLUMN_CHUNK + 1, 1100)  # 9 MB, the last chunk padded
    x = dev.tensor(a)
    total, largest = x.sum(0), x.max(0)
    assert launched(total) == 2
    np.testing.assert_allclose(total.numpy(), a.sum(0), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(largest.numpy(), a.max(0))


@pytest.mark.parametrize("shape", [(1001, 24), (777, 100), (2048, 64), (3, 333, 40)],
                         ids=["odd rows", "columns not of 8", "whole chunks", "over two axes"])
def test_split_sums_and_maxima_match_numpy(h200, launched, shape):
    a = data(*shape)
    x, axes = h200.tensor(a), tuple(range(len(shape) - 1))
    total, largest = x.sum(axes), x.max(axes)
    assert launched(total) == 2 and launched(largest) == 2
    np.testing.assert_allclose(total.numpy(), a.sum(axes), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(largest.numpy(), a.max(axes))  # (the padding rows fill with -inf)


def test_a_first_stage_of_one_partial_an_item_matches_numpy(h200, launched, monkeypatch):
    """The form of 2304 and 3072 columns, at a size PoCL runs quickly (fewer items make it)."""
    for module in (rewrite, schedule_module):
        monkeypatch.setattr(module, "GROUP_MAX_OUTPUTS", 1024)
    monkeypatch.setattr(rewrite, "COLUMN_ITEM_CHUNK", 64)
    a = data(1001, 100)  # chunks of 64 rows: 16, the last padded; 1600 partials
    x = h200.tensor(a)
    first = schedule([x.node, x.sum(0).node], h200.traits)[0][0]
    assert first.name.startswith("r_") and first.global_size == 1600
    assert launched(x.sum(0)) == 2
    np.testing.assert_allclose(x.sum(0).numpy(), a.sum(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(x.max(0).numpy(), a.max(0))


def test_fused_elementwise_terms_are_summed_in_the_first_stage(h200, launched):
    """A layer norm's weight gradient: the sum over rows of dy times the normalized input, from per-row
    statistics; and a bias gradient of an elementwise chain."""
    dy, x = data(1500, 48), data(1500, 48)
    mean = x.mean(1, keepdims=True)
    rstd = (1 / np.sqrt(x.var(1, keepdims=True) + 1e-5)).astype(np.float32)
    t = {name: h200.tensor(v) for name, v in (("dy", dy), ("x", x), ("mean", mean), ("rstd", rstd))}
    weight = (t["dy"] * ((t["x"] - t["mean"]) * t["rstd"])).sum(0)
    chain = (t["dy"] * 0.5 - t["x"]).exp().sum(0)
    assert launched(weight) == 2
    np.testing.assert_allclose(weight.numpy(), (dy * ((x - mean) * rstd)).sum(0), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(chain.numpy(), np.exp(dy * 0.5 - x).sum(0), rtol=1e-4)


def test_half_precision_columns_add_in_float32(h200):
    """Sums of ones stop growing in float16 at 2048 and in bfloat16 at 256; the partials are stored in float32."""
    ones = h200.tensor(np.ones((3001, 16), np.float32))
    assert np.all(ones.half().sum(0).numpy() == np.float16(3001))
    assert np.all(ones.cast(zyx.bfloat16).sum(0).float().numpy() == 3008)  # 3001 in bfloat16's 8 bits
    partials = [node for node in toposort(rewrite_graph([ones.half().sum(0).node], True, 132))
                if node.op is Op.SUM]
    assert [node.dtype for node in partials] == [zyx.float32, zyx.float32]
    a = data(1200, 40)
    np.testing.assert_allclose(h200.tensor(a).half().sum(0).numpy(), a.astype(np.float16).astype(np.float32).sum(0),
                               rtol=2e-3, atol=2e-2)


def test_a_split_column_sum_feeds_further_ops(h200):
    a, b = data(1100, 72), data(1100, 72)
    x, y = h200.tensor(a), h200.tensor(b)
    centered = x - x.mean(0, keepdim=True)
    scaled = (x.sum(0) * 2 + 1).relu() * y.max(0) + ((x * y).sum(0) * 0.01).exp()
    np.testing.assert_allclose(centered.numpy(), a - a.mean(0, keepdims=True), rtol=1e-4, atol=1e-5)
    expected = np.maximum(a.sum(0) * 2 + 1, 0) * b.max(0) + np.exp((a * b).sum(0) * 0.01)
    np.testing.assert_allclose(scaled.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_mlp_gradients_over_split_columns_match_torch(h200):
    """The biases' gradients are column sums over the batch and time rows (4 x 150 = 600: 3 chunks of 256, padded)."""
    inputs, target = data(4, 150, 24), data(4, 150, 8)
    weights = [data(24, 40) * 0.2, data(40), data(40, 8) * 0.2, data(8)]

    def loss(lib, x, t, w1, b1, w2, b2):
        hidden = lib(x @ w1 + b1)
        return ((hidden @ w2 + b2 - t) ** 2).mean()

    params = [h200.tensor(w) for w in weights]
    ours = loss(lambda h: h.tanh(), h200.tensor(inputs), h200.tensor(target), *params).backward(params)
    theirs = [torch.tensor(w, requires_grad=True) for w in weights]
    loss(torch.tanh, torch.tensor(inputs), torch.tensor(target), *theirs).backward()
    for got, expected in zip(ours, theirs):
        np.testing.assert_allclose(got.numpy(), expected.grad.numpy(), rtol=1e-4, atol=1e-6)
