"""Every choice a search may make for a GPU product (zyx/jit/matmul.py's blocks, per-item tiles and wide blocks,
slices and buffers, split.py's split of k) computes the product: forced on the kernel, on whatever OpenCL device runs the
tests (PoCL here) with a GPU's traits, against numpy. Odd shapes (blocks over the ends of n and m, slices over
the end of k), batches, transposed operands and a fused bias + relu epilogue."""
import itertools
import re
import warnings

import numpy as np
import pytest

from zyx.errors import KernelBuildError
from zyx.jit import tune
from zyx.jit.choices import Choice, TunedChoices
from zyx.jit.matmul import feasible
from zyx.jit.device_traits import GPU_VECTOR_WIDTH, DeviceTraits
from zyx.jit.schedule import schedule

H200 = DeviceTraits(True, 256, GPU_VECTOR_WIDTH, max_group_size=1024, local_memory=48 * 1024)  # as NVIDIA reports
RNG = np.random.default_rng(5)
LARGE_GROUP = 256  # groups of more items than this a device may refuse for a kernel with many registers per item


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.fixture
def h200(dev, monkeypatch):
    """The OpenCL device scheduling kernels as for the H200, with the choices `force` sets."""
    monkeypatch.setattr(dev, "traits", H200)
    monkeypatch.setattr(dev, "_tuned", TunedChoices())
    dev.forget_programs()
    yield dev
    dev.forget_programs()


def product_site(make):
    """The tuning site of the local-tile product `make()` computes (the heuristics' kernel)."""
    kernels, _ = schedule([make().node], H200)
    (site,) = [k.site for k in kernels if k.site is not None]
    assert site.heuristic.family == "local_tiles"
    return site


def forced(dev, make, site, choice: Choice) -> np.ndarray | None:
    """`make()`'s values with `choice` forced on its product's kernel (checked to be the one applied); None where
    the device running the tests refuses the kernel's group as larger than it runs that kernel in (an H100 runs
    some 1024-item tiles in groups of at most 256: their registers), which a search drops (the tuner's "failed")."""
    tuned = TunedChoices({site.key: choice})
    kernels, _ = schedule([make().node], H200, tuned)
    assert [k.site.applied for k in kernels if k.site is not None] == [choice]
    assert len(kernels) == (2 if choice["split"] > 1 else 1)
    dev._tuned = tuned
    dev.forget_programs()
    try:
        return make().numpy()
    except KernelBuildError as error:
        refused = re.search(r"work groups of (\d+) items.* groups of at most (\d+) ", str(error))
        assert refused is not None, error
        assert int(refused[1]) > LARGE_GROUP and int(refused[2]) >= LARGE_GROUP, error  # only large groups
        warnings.warn(f"{choice.describe()}: {error}")  # (seen in the run's summary: which the device refused)
        return None


def every_choice(site) -> list[Choice]:
    options = dict(site.options)
    names = sorted(options)
    choices = [Choice.of("local_tiles", **dict(zip(names, values)))
               for values in itertools.product(*(options[name] for name in names))]
    return [c for c in choices if feasible(c, H200.local_memory, H200.max_group_size)]


def check(out, expected, k):
    if out is None:  # a group the device refuses (`forced`)
        return
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5 * np.sqrt(k) * np.abs(expected).max())


def test_the_search_space_holds_per_item_tiles_apart_from_blocks_and_splits_of_k_where_blocks_are_few(h200):
    long = product_site(lambda: h200.tensor(data(256, 1031)) @ h200.tensor(data(1031, 256)))
    few = product_site(lambda: h200.tensor(data(1021, 1021)) @ h200.tensor(data(1021, 1021)))  # 64 128-blocks
    many = product_site(lambda: h200.tensor(data(2048, 1021)) @ h200.tensor(data(1021, 2048)))
    assert dict(long.options)["split"] == (1, 2, 4, 8) and dict(few.options)["split"] == (1, 2, 4)  # chunks >= 128
    assert dict(many.options)["split"] == (1,)
    assert few.heuristic == Choice.of("local_tiles", block=64, per_item=4, bk=16, buffers=2, split=1, wide=1)
    choices = every_choice(few)
    assert {(c["block"], c["per_item"]) for c in choices} == {(32, 2), (32, 4), (64, 4), (64, 8), (128, 4),
                                                             (128, 8)}  # groups of 8², 16² or 32² items
    assert all(c["block"] >= 64 for c in choices if c["split"] > 1)
    assert all(c["per_item"] ** 2 * c["wide"] <= 64 for c in choices) and {c["wide"] for c in choices} == {1, 2}
    # ZYX_TUNE=2 in stages: one choice per shape (the heuristics' staging where it fits), then every staging of a
    # finalist's shape; over all finalists, every choice (none left out)
    shape = tune.STAGES["local_tiles"]
    first = tune.candidates(few, H200, 2)
    assert first[0] == few.heuristic and len(first) <= tune.EXHAUSTIVE_LIMIT
    assert sorted(tuple(c[name] for name in shape) for c in first) == sorted({tuple(c[name] for name in shape)
                                                                              for c in choices})
    assert all((c["bk"], c["buffers"]) == (16, 2) for c in first if c.replaced(bk=16, buffers=2) in choices)
    second = {c for finalist in first for c in tune.candidates(few, H200, 2, finalist)}
    assert second == set(choices) and all(len(tune.candidates(few, H200, 2, f)) <= tune.EXHAUSTIVE_LIMIT for f in first)


@pytest.mark.slow
def test_every_choice_computes_an_odd_product_with_its_epilogue(h200, request):
    """n, m and k prime: blocks hang over both ends and the last slice over the end of k; bias + relu fuse. Every
    fourth choice in the space's order (each its own compile on PoCL: all of them took 2 minutes of CI), every one
    with --long; SPREAD's test covers the corners whatever the sample."""
    a, w, bias = data(131, 263), data(67, 263), data(67)

    def make():
        return (h200.tensor(a) @ h200.tensor(w).T + h200.tensor(bias)).relu()

    site = product_site(make)
    expected = np.maximum(a @ w.T + bias, 0)
    choices = every_choice(site)
    for choice in choices if request.config.getoption("--long") else choices[::4]:
        check(forced(h200, make, site, choice), expected, 263)


SPREAD = [Choice.of("local_tiles", block=block, per_item=per_item, bk=bk, buffers=buffers, split=split, wide=wide)
          for block, per_item, bk, buffers, split, wide in [
              (32, 4, 8, 1, 1, 1),     # groups of 8 x 8 items
              (32, 2, 16, 2, 1, 2),    # 32 x 64 blocks, 2 x 4 per item
              (64, 8, 32, 2, 1, 1),    # 8 x 8 items of 8 x 8
              (128, 4, 8, 2, 1, 2),    # 32 x 32 items of 4 x 8, a left slice of 8 staged in one copy, the right in 2
              (64, 4, 16, 2, 2, 2),    # two groups per 64 x 128 block of outputs
              (128, 8, 32, 1, 4, 1)]]  # four, single-buffered slices of 32
"""Choices over the search space's corners: each group shape, slice, buffering, split and width at least once."""


@pytest.mark.parametrize("case", ["batched", "broadcast batch", "transposed, bias and relu"])
def test_choices_across_the_space_compute_batched_broadcast_and_transposed_products(h200, case):
    """k = 530 (splits in 2 or 4 chunks of whole slices, padded past k's end) and n, m not multiples of 4."""
    if case == "batched":
        a, b = data(3, 100, 530), data(3, 530, 122)
        make, expected = (lambda: h200.tensor(a) @ h200.tensor(b)), a @ b
    elif case == "broadcast batch":
        a, b = data(2, 1, 70, 530), data(3, 530, 90)
        make, expected = (lambda: h200.tensor(a) @ h200.tensor(b)), a @ b
    else:
        a, b, bias = data(530, 45), data(141, 530), data(141)
        make = lambda: (h200.tensor(a).T @ h200.tensor(b).T + h200.tensor(bias)).relu()  # noqa: E731
        expected = np.maximum(a.T @ b.T + bias, 0)
    site = product_site(make)
    assert dict(site.options)["split"] == (1, 2, 4)
    assert all(feasible(choice, H200.local_memory, H200.max_group_size) for choice in SPREAD)
    for choice in SPREAD:
        check(forced(h200, make, site, choice), expected, 530)


def test_a_convolution_weight_gradient_split_or_wide_is_stored_in_the_weight_shape(h200):
    """The product is stored reshaped (the weight's shape): the split's sum and a wide block's stores follow it."""
    x, w, g = data(4, 16, 10, 10), data(32, 16, 3, 3), data(4, 32, 8, 8)

    def make():
        weight = h200.tensor(w)
        return (h200.tensor(x).conv2d(weight) * h200.tensor(g)).sum().backward([weight])[0]

    cols = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))
    expected = np.einsum("bchwij,bohw->ocij", cols, g)
    site = product_site(make)
    for choice in (site.heuristic.replaced(block=64, per_item=4, split=2), site.heuristic.replaced(wide=2)):
        check(forced(h200, make, site, choice), expected, 256)


def test_a_group_larger_than_the_device_runs_the_kernel_in_is_refused_naming_both_sizes(h200, monkeypatch):
    """NVIDIA runs a kernel with many registers per item in smaller groups than its maximum, and a launch of a
    larger one fails with OUT_OF_RESOURCES (read as out of memory): the build refuses it instead, before any launch."""
    a, b = data(100, 530), data(530, 122)
    make = lambda: h200.tensor(a) @ h200.tensor(b)  # noqa: E731
    site = product_site(make)
    sixteen_squared = Choice.of("local_tiles", block=64, per_item=4, bk=16, buffers=2, split=1, wide=1)
    check(forced(h200, make, site, sixteen_squared), a @ b, 530)
    monkeypatch.setattr(h200.runtime, "group_limit", lambda kernel: 64)
    h200.forget_programs()
    h200._kernels.clear()
    with pytest.raises(KernelBuildError, match=r"work groups of 256 items, but .* groups of at most 64 "):
        make().numpy()
