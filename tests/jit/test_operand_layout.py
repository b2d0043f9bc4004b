"""Which way a product operand's reads run (zyx/jit/operand_layout.py), and the local-tile staging that follows it:
neighbouring items read neighbouring addresses however the operands lie (weight gradients read both along their
rows), checked against numpy with fused prologues."""
import importlib
import re

import numpy as np
import pytest

from zyx.jit.operand_layout import contiguous_reads, runs_along
from zyx.jit.device_traits import DeviceTraits
from zyx.jit.schedule import schedule
from zyx.jit.tiling import matmul_axes

matmul = importlib.import_module("zyx.jit.matmul")
RNG = np.random.default_rng(5)


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def operands(product):
    """(left, right, n axis, m axis, k axis) of a product node."""
    n_axis, m_axis = matmul_axes(product)
    return (*product.src[0].src, n_axis, m_axis, product.arg[0])


def product_of(tensor):
    node = tensor.node
    while node.op.name != "SUM":
        node = node.src[0]
    return node


@pytest.mark.parametrize("how,left_axis,right_axis", [
    ("ab", "k", "m"),            # row-major a @ b: the left runs along k, the right along m
    ("weight gradient", "n", "m"),  # x.T @ dy: both along their rows
    ("linear", "k", "k"),        # x @ w.T (a layer's forward): the right along k
])
def test_reads_run_along_the_stored_rows(dev, how, left_axis, right_axis):
    a, b = dev.tensor(data(64, 32)), dev.tensor(data(32, 48))
    out = {"ab": lambda: a @ b, "weight gradient": lambda: dev.tensor(data(32, 64)).T @ b,
           "linear": lambda: a @ dev.tensor(data(48, 32)).T}[how]()
    left, right, n_axis, m_axis, k_axis = operands(product_of(out))
    axes = {"n": n_axis, "m": m_axis, "k": k_axis}
    assert runs_along(left, (k_axis, n_axis), {}) == axes[left_axis]
    assert runs_along(right, (m_axis, k_axis), {}) == axes[right_axis]


def test_prologue_reads_count_each_buffer_once(dev):
    """gelu(h) * g, h and g both read along the rows: two contiguous reads that way, none along k."""
    h, g = dev.tensor(data(32, 64)), dev.tensor(data(32, 64))
    out = (h.gelu() * g).T @ dev.tensor(data(32, 16))
    left, _, n_axis, _, k_axis = operands(product_of(out))
    assert (contiguous_reads(left, n_axis, {}), contiguous_reads(left, k_axis, {})) == (2, 0)


def test_weight_gradient_stages_both_operands_along_their_rows(dev, monkeypatch):
    """xᵀ·dY: neighbouring items read neighbouring floats of each operand's 256-float rows, a row of the block per
    128 items (k-first, it was (lid%16)*256 in the left one's loads)."""
    monkeypatch.setattr(matmul, "MIN_GROUPS", 1)
    out = dev.tensor(data(256, 256)).T @ dev.tensor(data(256, 256))
    kernel, = schedule([out.node], DeviceTraits(True))[0]
    loads = re.findall(r"= in\d\[([^\]]*)\];", kernel.source)
    assert loads and all("(lid%128)" in index and "(lid/128)*256" in index for index in loads)


@pytest.mark.parametrize("tokens,n,m", [(256, 128, 128), (150, 200, 72), (64, 37, 131)])
def test_weight_gradients_with_prologues_match_numpy(gpu, monkeypatch, tokens, n, m):
    """GELU's backward on the left operand, a layer norm's scale on the right, blocks hanging over n and m's ends
    and k's."""
    monkeypatch.setattr(matmul, "MIN_GROUPS", 1)
    monkeypatch.setattr(matmul, "MIN_USED", 0)
    h, g, x, w = data(tokens, n), data(tokens, n), data(tokens, m), data(m)
    left = (gpu.tensor(h) * 0.5).exp() * gpu.tensor(g)
    out = left.T @ (gpu.tensor(x) * gpu.tensor(w))
    expected = (np.exp(h * 0.5) * g).T @ (x * w)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4 * np.sqrt(tokens))


def test_a_product_over_an_empty_axis_on_a_gpu(gpu):
    """The gradient of a boolean index that selects nothing is a product over an axis of size 0: weighing where its
    operands are read (cheaper_stored) walks no elements (a view's index of a shape without elements divided by a
    stride of 0: an AssertionError on the H100), and the gradient is zeros."""
    x = gpu.tensor(data(2, 3, 5))
    selected = x[gpu.tensor(np.zeros(2, bool))]
    assert selected.shape == (0, 3, 5)
    weights = gpu.tensor(np.ones((0, 3, 5), np.float32))
    grad = ((selected * weights).sum() + (x * 2).sum()).backward([x])[0]
    np.testing.assert_array_equal(grad.numpy(), np.full((2, 3, 5), 2, np.float32))
