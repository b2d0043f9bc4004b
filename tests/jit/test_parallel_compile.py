"""A program's missing kernels compile side by side (KernelCache.build_many): the same programs and results as
one at a time, the bookkeeping on the calling thread, and a failed build reported as such."""
from __future__ import annotations

import threading

import numpy as np
import pyopencl as cl
import pytest

from cache_worker import N, added, first_device, kernel_source
from zyx.counters import stats
from zyx.jit import cache as cache_module
from zyx.jit.cache import KernelCache
from zyx.jit.compiler import KernelBuildError

CONSTANTS = (301, 302, 303)


@pytest.fixture(scope="module")
def context() -> cl.Context:
    return cl.Context([first_device()])


@pytest.fixture
def build_threads(monkeypatch) -> list[str]:
    """The name of the thread each compile ran on, in the order they started."""
    names: list[str] = []
    build_source = cache_module.build_source

    def recording(*args, **kwargs):
        names.append(threading.current_thread().name)
        return build_source(*args, **kwargs)
    monkeypatch.setattr(cache_module, "build_source", recording)
    return names


def built(tmp_path, context, threads: int, monkeypatch) -> tuple[list[cl.Program], list[int], KernelCache]:
    monkeypatch.setattr(cache_module, "compile_threads", lambda: threads)
    cache = KernelCache(tmp_path / f"cache-{threads}")
    ready: list[int] = []
    programs = cache.build_many(context, context.devices[0], [kernel_source(c) for c in CONSTANTS],
                                on_built=ready.append)
    return programs, ready, cache


def test_missing_sources_compile_on_threads_with_the_same_results(tmp_path, context, build_threads, monkeypatch):
    before = stats()["kernels_compiled"]
    parallel, ready, cache = built(tmp_path, context, 3, monkeypatch)
    assert len(build_threads) == 3 and len(set(build_threads)) == 3
    assert threading.main_thread().name not in build_threads
    assert sorted(ready) == [0, 1, 2]  # each reported once, in whatever order the builds finished
    assert stats()["kernels_compiled"] - before == 3  # counted on the calling thread
    serial, _, serial_cache = built(tmp_path, context, 1, monkeypatch)
    assert build_threads[3:] == [threading.main_thread().name] * 3
    for constant, one, other in zip(CONSTANTS, parallel, serial):
        assert np.array_equal(added(context, one, constant), added(context, other, constant))
        assert np.array_equal(added(context, one, constant), np.arange(N, dtype=np.float32) + constant)
    for program in parallel + serial:
        (cache if program in parallel else serial_cache).commit(program)
    assert sorted(e["key"] for e in cache.entries()) == sorted(e["key"] for e in serial_cache.entries())


def test_only_what_is_missing_compiles(tmp_path, context, build_threads, monkeypatch):
    first, _, cache = built(tmp_path, context, 3, monkeypatch)
    again = cache.build_many(context, context.devices[0], [kernel_source(c) for c in (*CONSTANTS, 304)])
    assert again[:3] == first and len(build_threads) == 4  # the three from memory, only add_304 compiled
    assert np.array_equal(added(context, again[3], 304), np.arange(N, dtype=np.float32) + 304)


def test_a_failed_build_among_several_raises_its_error(tmp_path, context, monkeypatch):
    monkeypatch.setattr(cache_module, "compile_threads", lambda: 2)
    monkeypatch.setenv("ZYX_CACHE_DIR", str(tmp_path / "errors"))  # where the failed source is saved
    cache = KernelCache(tmp_path / "cache")
    broken = "__kernel void broken(__global float* x) { x[0] = undeclared; }"
    with pytest.raises(KernelBuildError, match="broken"):
        cache.build_many(context, context.devices[0], [kernel_source(305), broken, kernel_source(306)])


def test_build_groups_start_with_the_largest_kernels_each_alone():
    """On a driver that builds side by side: largest source first, every kernel in one program once, a program
    at most KERNELS_PER_BUILD kernels and BUILD_CHARACTERS of source, a larger kernel alone."""
    from types import SimpleNamespace
    from zyx.runtime.opencl_device import BUILD_CHARACTERS, KERNELS_PER_BUILD, build_groups
    sizes = [900, 40_000, 120, 30_000, 35_000, *[50 * k for k in range(1, 20)]]
    launches = [SimpleNamespace(source="x" * size, name=f"k{n}") for n, size in enumerate(sizes)]
    groups = build_groups(launches)
    assert sorted(launch.name for group in groups for launch in group) == sorted(launch.name for launch in launches)
    assert [[len(launch.source) for launch in group] for group in groups[:3]] == [[40_000], [35_000], [30_000, 950, 900]]
    first = [len(group[0].source) for group in groups]
    assert first == sorted(first, reverse=True)
    for group in groups:
        assert len(group) <= KERNELS_PER_BUILD
        assert len(group) == 1 or sum(len(launch.source) for launch in group) <= BUILD_CHARACTERS


def test_a_program_built_in_groups_computes_what_numpy_does(monkeypatch):
    """A program whose kernels are built in several of `build_groups`' programs (as on GPU drivers) gets each
    kernel from its own group's program (two kernels a build). Each result reads the one before it, so no launch
    group holds them all (on GPUs independent kernels share one: a single source, nothing grouped to build)."""
    import zyx
    from zyx.runtime import opencl_device
    made: list[list] = []
    grouped = opencl_device.build_groups

    def recorded(launches):
        groups = grouped(launches)
        made.extend(groups)
        return groups
    monkeypatch.setattr(opencl_device, "KERNELS_PER_BUILD", 2)
    monkeypatch.setattr(opencl_device, "build_groups", recorded)
    dev = zyx.OpenCL()
    monkeypatch.setattr(dev.runtime, "builds_one_at_a_time", False)
    data = np.random.default_rng(5).standard_normal((300, 257)).astype(np.float32)
    x = dev.tensor(data)
    sums = (x * 1.375).exp().sum(1)
    largest = (x - sums.reshape(300, 1) * 1e-3).max(0)
    product = x @ x.T * 0.5625 + largest.sum()
    means = (x * x).mean(1) + product.sum(1) * 1e-3
    results = [sums, largest, product, means]
    zyx.realize(*results)
    assert len(made) >= 2
    sums_ = np.exp(data * 1.375).sum(1)
    largest_ = (data - sums_[:, None] * 1e-3).max(0)
    product_ = data @ data.T * 0.5625 + largest_.sum()
    expected = [sums_, largest_, product_, (data * data).mean(1) + product_.sum(1) * 1e-3]
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-3)
