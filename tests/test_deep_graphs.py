"""Deep traces: every graph walk is iterative, and the scheduler keeps kernels of very long chains compilable.

A trace 100 000 ops deep (an unrealized loop of updates, Python's `sum` over a list of tensors) must realize on
both devices, forward and backward, without RecursionError and in seconds.
"""
import weakref

import numpy as np
import pytest
import torch

import zyx
from zyx.dtypes import float32
from zyx.jit.kernel_nodes import contained_nodes
from zyx.jit.lower import PARAM_LIMIT
from zyx.jit.device_traits import DeviceTraits
from zyx.jit.schedule import FUSION_DEPTH_LIMIT, schedule
from zyx.jit.symbolic import Expr
from zyx.jit.lower import _same_value
from zyx.trace import node as n
from zyx.trace.ops import Op

RNG = np.random.default_rng(11)


@pytest.mark.long(devices=("cpu", "torch"))  # (the trace's depth: the same on every device; OpenCL's in CI)
def test_a_100_000_deep_chain_of_unary_ops(device):
    a = RNG.standard_normal(64).astype(np.float32)
    w = device.tensor(a)
    for _ in range(99_999):
        w = -w
    np.testing.assert_array_equal(w.numpy(), -a)


def _sgd_steps(device, steps: int) -> None:
    w0 = RNG.standard_normal(48).astype(np.float32)
    g0 = RNG.standard_normal(48).astype(np.float32)
    w, g = device.tensor(w0), device.tensor(g0)
    for _ in range(steps):
        w = w - 0.01 * g
    expected = w0.astype(np.float64) - steps * 0.01 * g0.astype(np.float64)
    # float32 rounding of `steps` updates drifts by up to about steps * 2**-24 * |w|
    np.testing.assert_allclose(w.numpy(), expected, rtol=0, atol=steps * 6e-8 * (np.abs(expected).max() + 1))


def test_10_000_unrealized_updates(device):
    _sgd_steps(device, 10_000)


@pytest.mark.slow  # 600 000 nodes: about 20 s on the CPU device and 40 s on PoCL when the machine is idle
@pytest.mark.long  # (test_10_000_unrealized_updates in CI)
def test_100_000_unrealized_updates(device):
    _sgd_steps(device, 100_000)


@pytest.mark.parametrize("size", [8, 64])  # scalar kernels, and vector kernels
def test_python_sum_over_3000_tensors(device, size):
    arrays = [RNG.standard_normal(size).astype(np.float32) for _ in range(3000)]
    total = sum(device.tensor(a) for a in arrays)
    np.testing.assert_allclose(total.numpy(), np.sum(np.array(arrays, np.float64), axis=0), rtol=1e-4, atol=1e-3)


@pytest.mark.long(devices=("cpu", "torch"))  # (the trace's depth: the same on every device; OpenCL's in CI)
def test_backward_through_a_10_000_deep_chain(device):
    a = np.linspace(-1, 1, 32).astype(np.float32)
    x = device.tensor(a)
    w = x
    for _ in range(10_000):
        w = w * 1.0001 - 0.0001
    gx, = (w * w).sum().backward([x])
    value = a.astype(np.float64)
    for _ in range(10_000):
        value = value * 1.0001 - 0.0001
    grad = 2 * value * 1.0001 ** 10_000
    # float32 rounding of 10 000 steps drifts by up to about 10 000 * 2**-24 of the largest value
    np.testing.assert_allclose(w.numpy(), value, rtol=0, atol=6e-4 * np.abs(value).max())
    np.testing.assert_allclose(gx.numpy(), grad, rtol=0, atol=6e-4 * np.abs(grad).max())


def test_backward_through_a_400_deep_nonlinear_chain(device):
    """Each step's gradient reads the forward value: kernels of the backward chain recompute or load them."""
    a = np.linspace(-1, 1, 32).astype(np.float32)
    x = device.tensor(a)
    w = x
    for _ in range(400):
        w = w * 1.0001 + (w * 0.01).sin() * 0.001
    gx, = w.sum().backward([x])
    value, grad = a.astype(np.float64), np.ones_like(a, np.float64)
    for _ in range(400):  # the chain rule by hand, forward
        grad = grad * (1.0001 + 0.00001 * np.cos(value * 0.01))
        value = value * 1.0001 + np.sin(value * 0.01) * 0.001
    np.testing.assert_allclose(w.numpy(), value, rtol=1e-4)
    np.testing.assert_allclose(gx.numpy(), grad, rtol=1e-4)


def test_avg_pool_over_a_308_element_window(device):
    a = RNG.standard_normal((2, 3, 30, 40)).astype(np.float32)
    out = device.tensor(a).avg_pool2d((11, 28), stride=1)
    expected = torch.nn.functional.avg_pool2d(torch.tensor(a, dtype=torch.float64), (11, 28), stride=1).numpy()
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_a_long_chain_is_cut_into_kernels_of_one_shape():
    """Every FUSION_DEPTH_LIMIT-th op is stored; the kernels between are alike, so one source serves them all."""
    dev = zyx.OpenCL()
    w = dev.tensor(np.ones(64, np.float32))
    for _ in range(10 * FUSION_DEPTH_LIMIT):
        w = -(-w)
    kernels, _ = schedule([w.node], DeviceTraits())
    assert len(kernels) == 20
    assert len({k.source for k in kernels}) <= 2
    np.testing.assert_allclose(w.numpy(), np.ones(64), rtol=1e-4)


def test_a_long_chain_is_cut_below_a_broadcast_not_at_it():
    """A deep value broadcast into a product ((64,) against a (64, 64) weight) is stored as the (64,) value, not
    as the (64, 64) broadcast the product reads; results equal to the reference device's."""
    def build(device):
        v, w = device.tensor(np.linspace(0.5, 1.5, 64, dtype=np.float32)), device.tensor(np.eye(64, dtype=np.float32))
        for _ in range(FUSION_DEPTH_LIMIT // 2 - 1):  # the product's broadcast crosses the limit
            v = -(-v)
        return (v.reshape(64, 1) * w).sum(0)

    kernels, _ = schedule([build(zyx.OpenCL()).node], DeviceTraits())
    assert max(o.numel for k in kernels for o in k.outputs) == 64, [k.outputs for k in kernels]
    np.testing.assert_allclose(build(zyx.OpenCL()).numpy(), build(zyx.CPU()).numpy(), rtol=1e-4)


def test_a_gpt_step_stores_nothing_larger_than_its_activations(small_gpt):
    """4 pre-norm blocks' backward passes the depth limit: its cuts store activations, never a (batch, time, d, d)
    product operand (the same step's gradients against the reference device's: tests/jit/test_kernel_memo.py)."""
    kernels, _ = schedule([t.node for t in small_gpt(zyx.OpenCL())], DeviceTraits(vector_width=16))
    assert max(o.numel for k in kernels for o in k.outputs) <= 2 * 8 * 4 * 16  # the MLP's (batch, time, 4d)


@pytest.mark.parametrize("traits", [DeviceTraits(), DeviceTraits(gpu=True)], ids=["cpu-kernels", "gpu-kernels"])
def test_a_kernel_never_takes_more_arguments_than_opencl_allows(traits):
    dev = zyx.OpenCL()
    leaves = [dev.tensor(np.full(64, i, np.float32)) for i in range(3 * PARAM_LIMIT)]
    kernels, _ = schedule([sum(leaves).node], traits)
    assert max(len(k.params) for k in kernels) <= PARAM_LIMIT
    assert len(kernels) <= 6  # cut near the limit, not one kernel per add


def test_deeply_nested_index_expressions_render_and_list_their_variables():
    expr = Expr.var("gid", 100)
    for _ in range(20_000):
        expr = Expr.clamped(expr + 1, 0, 200)
    assert expr.render() == "(" * 20_000 + "gid" + "+1)" * 20_000
    assert expr.variables() == {"gid"}


def test_two_long_chains_built_alike_compare_equal_without_recursion():
    dev = zyx.CPU()

    def chain(start):
        node = n.const(start, (4,), float32, dev)
        for _ in range(20_000):
            node = n.unary(Op.NEG, node)
        return node
    first = chain(0.5)
    assert first is not chain(0.5) and _same_value(first, chain(0.5))
    assert not _same_value(first, chain(0.25))  # they differ only at the bottom


def test_a_100_000_deep_unrealized_chain_is_freed_at_once():
    dev = zyx.CPU()
    w = -dev.tensor(np.ones(4, np.float32))
    bottom = weakref.ref(w.node)
    for _ in range(100_000):
        w = -w
    del w  # CPython frees the nodes one by one; a recursive free would overflow its C stack
    assert bottom() is None


def test_a_chain_is_cut_at_the_reduction_a_function_of_it_reads():
    """A column sum g of a deep value, broadcast as |g|² into a product past the depth limit and read by an update
    beside it (W7's gradient norm and AdamW): the cut stores g, which both read, not |g|² (the update then summed
    g again); results equal to the reference device's."""
    def build(device):
        x = device.tensor(np.linspace(0.5, 1.5, 16 * 64, dtype=np.float32).reshape(16, 64))
        w = device.tensor(np.eye(64, dtype=np.float32))
        for _ in range(FUSION_DEPTH_LIMIT // 2 - 1):
            x = -(-x)
        g = x.sum(0)
        return (g.abs().square().reshape(64, 1) * w).sum(0), g * 0.5

    targets = build(zyx.OpenCL())
    column_sum = targets[1].node.src[0]
    while column_sum.op is not Op.SUM:
        column_sum = column_sum.src[0]
    kernels, _ = schedule([t.node for t in targets], DeviceTraits())
    assert [sum(node is column_sum for node in contained_nodes(k)) for k in kernels].count(1) == 1
    assert any(column_sum in k.outputs for k in kernels)
    for got, expected in zip(build(zyx.OpenCL()), build(zyx.CPU())):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4)
