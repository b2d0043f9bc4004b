"""The default device's compile probe is remembered in the kernel cache: a later process loads it (the driver
checks the binary) instead of compiling it, a new driver string probes again, and a binary the driver rejects
falls back to compiling the probe. Where nothing is remembered the compiler's front end is the check, and the
probe's whole build (which stores it) runs on a thread: run in place here, so the counters can be read after."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import pyopencl as cl
import pytest

from cache_worker import first_device
from zyx.counters import stats
from zyx.jit import cache as cache_module
from zyx.jit import cache_key as cache_key_module
from zyx.jit import probe
from zyx.jit.cache import CacheWarning, KernelCache
from zyx.jit.compiler import KernelBuildError


@pytest.fixture
def new_process(tmp_path, monkeypatch):
    """Start as a new process would on the cache in tmp_path: nothing in memory; returns a function that
    forgets the memory again (the disk stays)."""
    def start() -> None:
        monkeypatch.setattr(cache_module, "_default", KernelCache(tmp_path / "cache"))
        monkeypatch.setattr(probe, "_problems", {})
    start()
    monkeypatch.setattr(probe, "Thread", lambda target, args, name: SimpleNamespace(
        start=lambda: target(*args)))
    return start


def probed() -> tuple[str | None, dict[str, float]]:
    """The probe's answer for the first device, and how the compile and cache counters moved."""
    before = stats()
    problem = probe.compile_problem(first_device())
    cache_module.default_cache().flush()
    after = stats()
    return problem, {name: after[name] - before[name] for name in ("kernels_compiled", "cache_disk_hits")}


def test_a_pass_is_remembered_and_loaded_by_the_next_process(new_process):
    assert probed() == (None, {"kernels_compiled": 1, "cache_disk_hits": 0})
    assert probed() == (None, {"kernels_compiled": 0, "cache_disk_hits": 0})  # this process knows already
    new_process()
    assert probed() == (None, {"kernels_compiled": 0, "cache_disk_hits": 1})


def test_a_new_driver_string_probes_again(new_process, monkeypatch):
    probed()
    new_process()
    fingerprint = cache_key_module.device_fingerprint
    monkeypatch.setattr(cache_key_module, "device_fingerprint",
                        lambda device: {**fingerprint(device), "driver_version": "a driver updated since"})
    assert probed() == (None, {"kernels_compiled": 1, "cache_disk_hits": 0})


def test_a_remembered_pass_the_driver_rejects_is_probed_again(new_process, monkeypatch):
    probed()
    new_process()

    def rejected(*args, **kwargs):
        raise cl.RuntimeError("clBuildProgram failed: INVALID_BINARY")
    monkeypatch.setattr(cache_module, "build_binary", rejected)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert probed() == (None, {"kernels_compiled": 1, "cache_disk_hits": 0})
    assert any(issubclass(w.category, CacheWarning) and "rejected its binary" in str(w.message) for w in record)
    new_process()

    def cannot_compile(source, *args, **kwargs):  # the driver changed under the cache: the probe now fails
        raise KernelBuildError("OpenCL could not build zyx_probe\nerror: unknown target CPU 'generic'")
    monkeypatch.setattr(cache_module, "build_source", cannot_compile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        assert probed()[0] == "error: unknown target CPU 'generic'"


def test_a_failure_is_not_remembered(new_process, monkeypatch):
    front_end = probe.front_end_problem
    monkeypatch.setattr(probe, "front_end_problem", lambda context, device: "error: unknown target CPU 'generic'")
    assert probed() == ("error: unknown target CPU 'generic'", {"kernels_compiled": 0, "cache_disk_hits": 0})
    monkeypatch.setattr(probe, "front_end_problem", front_end)
    new_process()
    assert probed() == (None, {"kernels_compiled": 1, "cache_disk_hits": 0})


def test_the_front_end_reports_the_error_line_of_its_log():
    device = first_device()
    context = cl.Context([device])
    assert probe.front_end_problem(context, device) is None
    problem = probe.front_end_problem(context, device, "__kernel void broken(__global float* x) { x[0] = y; }")
    assert problem is not None and "error" in problem and "'y'" in problem


def test_the_probes_build_runs_beside_the_caller_and_its_failure_is_left_to_the_programs_build(new_process,
                                                                                              monkeypatch):
    """The front end passed: the caller has its answer while the whole build (the first link, which loads the
    driver's kernel library) runs on its thread; a build that fails there stores nothing and raises nothing."""
    threads = []
    monkeypatch.setattr(probe, "Thread", lambda target, args, name: SimpleNamespace(
        start=lambda: threads.append((name, target, args))))
    assert probe.compile_problem(first_device()) is None and [name for name, *_ in threads] == ["zyx-probe"]

    def cannot_link(source, *args, **kwargs):
        raise KernelBuildError("OpenCL could not build zyx_probe\nerror: undefined symbol")
    monkeypatch.setattr(cache_module, "build_source", cannot_link)
    _, target, args = threads[0]
    target(*args)
    assert not cache_module.default_cache().holds(first_device(), probe.PROBE)
