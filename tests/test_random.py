"""Random numbers: the counter-based Philox stream in the trace. Same seed -> same numbers on every device, lazy
(the order of realization does not matter), every call draws new numbers; sane moments; randn is normal."""
from __future__ import annotations

import math

import numpy as np
import pytest

import zyx
from zyx.trace.philox import philox_uniform


def test_same_seed_same_numbers(device):
    zyx.manual_seed(42)
    a, b = zyx.rand(5, 3, device=device), zyx.randn(7, device=device)
    zyx.manual_seed(42)
    c, d = zyx.rand(5, 3, device=device), zyx.randn(7, device=device)
    assert np.array_equal(a.numpy(), c.numpy()) and np.array_equal(b.numpy(), d.numpy())
    zyx.manual_seed(43)
    assert not np.array_equal(zyx.rand(5, 3, device=device).numpy(), a.numpy())


def test_numbers_are_the_reference_philox_stream(device):
    """What every backend must reproduce: element i of the k-th draw is philox(seed, offset_k + i)."""
    zyx.manual_seed(7)
    first = zyx.rand(4, 5, device=device)
    second = zyx.rand(6, device=device)
    assert np.array_equal(first.numpy().reshape(-1), philox_uniform(7, 0, 20))
    assert np.array_equal(second.numpy(), philox_uniform(7, 20, 6))


def test_lazy_draws_do_not_depend_on_realization_order(device):
    zyx.manual_seed(5)
    a, b = zyx.rand(100, device=device), zyx.rand(100, device=device)
    b_values = b.numpy()  # realize the later draw first
    a_values = a.numpy()
    zyx.manual_seed(5)
    assert np.array_equal(zyx.rand(100, device=device).numpy(), a_values)
    assert np.array_equal(zyx.rand(100, device=device).numpy(), b_values)


def test_each_call_draws_new_numbers(device):
    zyx.manual_seed(0)
    a, b = zyx.rand(1000, device=device).numpy(), zyx.rand(1000, device=device).numpy()
    assert not np.array_equal(a, b)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.1
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < 0.1  # neighbours within one draw are independent too
    n1, n2 = zyx.randn(1000, device=device).numpy(), zyx.randn(1000, device=device).numpy()
    assert abs(np.corrcoef(n1, n2)[0, 1]) < 0.1
    x = zyx.rand(3, device=device)
    assert np.array_equal(x.numpy(), x.numpy())  # a tensor is one draw: reading it again gives the same


def test_uniform_moments(device):
    zyx.manual_seed(1)
    u = zyx.rand(100_000, device=device).numpy()
    assert u.dtype == np.float32 and u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.std() - math.sqrt(1 / 12)) < 0.005
    counts, _ = np.histogram(u, bins=10, range=(0, 1))
    assert counts.min() > 9_500 and counts.max() < 10_500
    v = zyx.uniform(50_000, low=-2.0, high=3.0, device=device).numpy()
    assert v.min() >= -2 and v.max() < 3 and abs(v.mean() - 0.5) < 0.05


def test_randn_is_standard_normal(device):
    zyx.manual_seed(2)
    n = 40_000
    z = zyx.randn(n, device=device).numpy().astype(np.float64)
    assert np.isfinite(z).all()
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    assert abs(np.mean(z ** 3)) < 0.06 and abs(np.mean(z ** 4) - 3) < 0.15  # skew 0, kurtosis 3
    ordered = np.sort(z)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(ordered / math.sqrt(2)))
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 1.95 / math.sqrt(n)  # Kolmogorov-Smirnov at the 0.1% level


def test_random_shapes_and_dtypes(device):
    assert zyx.rand(2, 3, device=device).shape == (2, 3)
    assert zyx.randn((4,), device=device).shape == (4,)
    assert zyx.rand(0, 3, device=device).numpy().shape == (0, 3)
    assert zyx.randn(device=device).shape == ()
    assert zyx.randn(3, device=device, dtype=zyx.float64).dtype == zyx.float64
    assert zyx.rand(3, device=device, dtype=zyx.float16).dtype == zyx.float16
    assert zyx.rand(3, device=device).dtype == zyx.float32


def test_random_is_lazy(device):
    r = zyx.rand(1_000_000, device=device)
    assert not r.node.realized  # nothing ran, nothing allocated
    assert r[:2].shape == (2,)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_rate(device, p):
    zyx.manual_seed(3)
    kept = (zyx.ones(20_000, device=device).dropout(p).numpy() != 0).mean()
    assert abs(kept - (1 - p)) < 0.015
