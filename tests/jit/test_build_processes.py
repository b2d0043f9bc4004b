"""Builds in child processes (build_processes.py: NVIDIA's compiler builds one program at a time in a process): which
builds go there, the children's binaries loaded and computing what the parent's own builds compute (on PoCL, made
to build apart), a child that dies or cannot build leaving its sources to the others or to the parent, and a compile
error still raised with its log."""
from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pyopencl as cl
import pytest

from cache_worker import N, added, first_device, kernel_source
from zyx.jit import build_processes
from zyx.jit import cache as cache_module
from zyx.jit.build_processes import (PROCESS_MIN_SOURCES, build_apart, builds_apart, kept_children,
                                     process_count)
from zyx.jit.cache import KernelCache
from zyx.jit.compiler import KernelBuildError

CONSTANTS = tuple(range(401, 401 + PROCESS_MIN_SOURCES))


@pytest.fixture(scope="module")
def context() -> cl.Context:
    return cl.Context([first_device()])


def platform(name: str) -> SimpleNamespace:
    return SimpleNamespace(platform=SimpleNamespace(name=name))


@pytest.mark.parametrize("name, sources, environment, cores, apart", [
    ("NVIDIA CUDA", PROCESS_MIN_SOURCES, {}, 16, True),
    ("NVIDIA CUDA", PROCESS_MIN_SOURCES - 1, {}, 16, False),  # too few to pay for the children's start
    ("NVIDIA CUDA", 40, {"CUDA_CACHE_DISABLE": "1"}, 16, False),  # the parent's loads would compile them again
    ("NVIDIA CUDA", 40, {"CUDA_CACHE_DISABLE": "0"}, 16, True),
    ("NVIDIA CUDA", 40, {"ZYX_BUILD_PROCESSES": "0"}, 16, False),
    ("NVIDIA CUDA", 40, {}, 1, False),
    ("Portable Computing Language", 40, {}, 16, False),  # PoCL builds side by side in a process
])
def test_builds_go_to_child_processes_on_nvidia_with_its_compute_cache_and_enough_of_them(
        monkeypatch, name, sources, environment, cores, apart):
    for setting in ("CUDA_CACHE_DISABLE", "ZYX_BUILD_PROCESSES"):
        monkeypatch.delenv(setting, raising=False)
    for setting, value in environment.items():
        monkeypatch.setenv(setting, value)
    monkeypatch.setattr(build_processes.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert builds_apart(platform(name), sources) == apart


def test_the_children_are_one_a_core_at_most_sixteen_and_one_a_source(monkeypatch):
    monkeypatch.setattr(build_processes.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.delenv("ZYX_BUILD_PROCESSES", raising=False)
    assert process_count(40) == 16 and process_count(9) == 9
    monkeypatch.setenv("ZYX_BUILD_PROCESSES", "3")
    assert process_count(40) == 3
    monkeypatch.setattr(build_processes.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert process_count(40) == 2
    monkeypatch.setenv("ZYX_BUILD_PROCESSES", "many")
    with pytest.raises(ValueError, match="ZYX_BUILD_PROCESSES='many': expected 0"):
        process_count(40)


def test_programs_built_in_child_processes_compute_what_the_parents_own_builds_do(tmp_path, context, monkeypatch):
    monkeypatch.setenv("ZYX_BUILD_PROCESSES", "2")
    monkeypatch.setattr(cache_module, "builds_apart", lambda device, count: True)
    apart = KernelCache(tmp_path / "apart").build_many(context, context.devices[0],
                                                       [kernel_source(c) for c in CONSTANTS])
    monkeypatch.setattr(cache_module, "builds_apart", lambda device, count: False)
    here = KernelCache(tmp_path / "here").build_many(context, context.devices[0], [kernel_source(c) for c in CONSTANTS])
    for constant, one, other in zip(CONSTANTS, apart, here):
        assert np.array_equal(added(context, one, constant), np.arange(N, dtype=np.float32) + constant)
        assert np.array_equal(added(context, one, constant), added(context, other, constant))


def test_every_source_is_answered_once_largest_first_with_its_binary(context, monkeypatch):
    monkeypatch.setenv("ZYX_BUILD_PROCESSES", "1")
    sources = [kernel_source(c) + " " * (10 * n) for n, c in enumerate(CONSTANTS[:3])]
    answers = list(build_apart(context.devices[0], sources, ()))
    assert [index for index, _, _ in answers] == [2, 1, 0]  # one child: its jobs in the order given, largest first
    assert all(binary and seconds > 0 for _, binary, seconds in answers)


def test_a_child_that_dies_leaves_its_sources_to_the_others_and_at_last_to_the_parent(context, monkeypatch):
    """A child that reads its first job and exits without answering: its job goes to the living child; with no
    living child, every source is answered without a binary (the parent builds them)."""
    started = []
    real = build_processes.start_helper_process

    def starting(module, arguments):
        started.append(module)
        if len(started) % 2:  # the first, third, ... child dies
            import subprocess
            return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        return real(module, arguments)
    monkeypatch.setattr(build_processes, "start_helper_process", starting)
    sources = [kernel_source(c) for c in CONSTANTS[:4]]
    monkeypatch.setenv("ZYX_BUILD_PROCESSES", "2")
    answers = list(build_apart(context.devices[0], sources, ()))
    assert sorted(index for index, _, _ in answers) == [0, 1, 2, 3]
    assert all(binary is not None for _, binary, _ in answers)
    monkeypatch.setenv("ZYX_BUILD_PROCESSES", "1")
    assert sorted(build_apart(context.devices[0], sources, ())) == [(i, None, 0.0) for i in range(4)]


def test_where_no_child_process_can_be_started_the_parent_builds_every_source(tmp_path, context, monkeypatch):
    def refused(module, arguments):
        raise OSError("Resource temporarily unavailable")
    monkeypatch.setattr(build_processes, "start_helper_process", refused)
    monkeypatch.setenv("ZYX_BUILD_PROCESSES", "2")
    sources = [kernel_source(c) for c in CONSTANTS[:3]]
    assert sorted(build_apart(context.devices[0], sources, ())) == [(i, None, 0.0) for i in range(3)]
    monkeypatch.setattr(cache_module, "builds_apart", lambda device, count: True)
    built = KernelCache(tmp_path / "cache").build_many(context, context.devices[0], sources)
    for constant, program in zip(CONSTANTS, built):
        assert np.array_equal(added(context, program, constant), np.arange(N, dtype=np.float32) + constant)


def test_a_compile_error_in_a_child_is_raised_by_the_parent_with_its_log(tmp_path, context, monkeypatch):
    monkeypatch.setenv("ZYX_BUILD_PROCESSES", "2")
    monkeypatch.setenv("ZYX_CACHE_DIR", str(tmp_path / "errors"))  # where the failed source is saved
    monkeypatch.setattr(cache_module, "builds_apart", lambda device, count: True)
    broken = "__kernel void broken(__global float* x) { x[0] = undeclared; }"
    with pytest.raises(KernelBuildError, match="undeclared"):
        KernelCache(tmp_path / "cache").build_many(context, context.devices[0],
                                                   [kernel_source(407), broken, kernel_source(408)])


def test_kept_children_build_one_program_after_another_and_end_with_it(context, monkeypatch):
    """Within `kept_children` (a tuner's searches) the second build takes the first one's processes; a build the
    caller stops early leaves none of its busy children to the next; after it, every child has ended."""
    monkeypatch.setenv("ZYX_BUILD_PROCESSES", "2")
    started = []
    real = build_processes.start_helper_process
    monkeypatch.setattr(build_processes, "start_helper_process",
                        lambda module, arguments: started.append(real(module, arguments)) or started[-1])
    device = context.devices[0]
    sources = [kernel_source(c) for c in CONSTANTS[:4]]
    with kept_children(device):
        first = list(build_apart(device, sources, ()))
        again = list(build_apart(device, sources[:3], ()))
        assert len(started) == 2 and all(process.poll() is None for process in started)
        stopped = build_apart(device, sources, ())
        next(stopped)
        stopped.close()  # (one child still building: ended, not kept)
        assert sum(process.poll() is None for process in started) <= 1
        assert sorted(i for i, binary, _ in build_apart(device, sources, ()) if binary) == [0, 1, 2, 3]
    assert all(process.poll() is not None for process in started)
    assert sorted(index for index, _, _ in first) == [0, 1, 2, 3] and sorted(i for i, _, _ in again) == [0, 1, 2]
