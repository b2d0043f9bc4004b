"""The helper process beside the training one on PoCL (zyx/jit/pocl_helper.py): binaries read, work-group functions
compiled ahead; the driver's warm-up."""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyopencl as cl
import pytest

from cache_worker import first_device, kernel_source
from test_cache import context, queue  # noqa: F401 - fixtures, on the device below
import zyx
from zyx.jit import cache as cache_module, pocl_helper, pocl_helper_process
from zyx.jit.cache import AHEAD_MIN_LAUNCHES, KernelCache, pending_entry
from zyx.jit.icd_loader import icd_loader

N = 64


@pytest.fixture(scope="module")
def device() -> cl.Device:
    found = first_device()
    if not pocl_helper.serves(found):
        pytest.skip("the helper serves PoCL CPU devices only")
    return found


def launched(cache: KernelCache, context: cl.Context, queue: cl.CommandQueue, constant: int) -> cl.Program:
    """add_<constant> built through `cache` and run once (PoCL compiles its work-group function then)."""
    program = cache.build(context, context.devices[0], kernel_source(constant))
    buffer = cl.Buffer(context, cl.mem_flags.READ_WRITE, N * 4)
    cl.Kernel(program, f"add_{constant}")(queue, (N,), None, buffer)
    return program


def stored_binary(cache: KernelCache) -> bytes:
    (entry,) = cache.entries()
    return cache._store.get(entry["key"])[1]


def test_the_helper_stores_what_an_in_process_read_stores(tmp_path, context, queue):
    by_helper = KernelCache(tmp_path / "helper")
    program = launched(by_helper, context, queue, 21)
    by_helper.commit_later(program, after=cl.enqueue_marker(queue))
    assert by_helper.flush(120) and by_helper._helper._process is not None
    assert "_zyx_cache_pending" not in vars(program)  # handed over, not read here
    in_process = KernelCache(tmp_path / "here")
    other = launched(in_process, context, queue, 21)
    queue.finish()
    in_process.commit(other)
    assert stored_binary(by_helper) == stored_binary(in_process)
    loaded = KernelCache(tmp_path / "helper").build(context, context.devices[0], kernel_source(21))
    values = np.arange(N, dtype=np.float32)
    buffer = cl.Buffer(context, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR, hostbuf=values)
    cl.Kernel(loaded, "add_21")(queue, (N,), None, buffer)
    result = np.empty_like(values)
    cl.enqueue_copy(queue, result, buffer)
    np.testing.assert_array_equal(result, values + 21)


def job_line(device: cl.Device, constant: int, **changes) -> str:
    pending = pending_entry(device, kernel_source(constant), (), 0.1)
    job = {"key": pending.key, "components": pending.components, "source": pending.source, "options": [],
           "compile_seconds": 0.1, **changes}
    return json.dumps(job) + "\n"


def start_helper(directory: Path, environment: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "zyx.jit.pocl_helper_process", str(directory), str(1 << 30)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment)


def test_a_job_whose_key_is_not_its_sources_stores_nothing(tmp_path, device):
    helper = start_helper(tmp_path)
    answer, _ = helper.communicate(job_line(device, 22, key="0" * 32) + job_line(device, 23)
                                   + json.dumps({"exit_within": 60}) + "\n", timeout=120)
    assert [json.loads(line)["stored"] for line in answer.splitlines()] == [False, True]
    assert [entry["kernel_names"] for entry in KernelCache(tmp_path).entries()] == [["add_23"]]


@pytest.mark.parametrize("delay", [0.0, 0.3, 0.8, 1.5])
def test_a_killed_helper_leaves_whole_entries_or_none(tmp_path, device, delay):
    helper = start_helper(tmp_path)
    helper.stdin.write("".join(job_line(device, 30 + n) for n in range(4)))
    helper.stdin.flush()
    time.sleep(delay)
    helper.kill()
    helper.wait()
    cache = KernelCache(tmp_path)
    rows = cache._store.rows()
    assert len(cache.entries()) == len(rows)  # every row's metadata is valid
    context = cl.Context([device])
    for entry in cache.entries():  # and every binary passes its checksum and loads
        constant = int(entry["kernel_names"][0].split("_")[1])
        assert cache.build(context, device, kernel_source(constant)) is not None
    assert not cache._store.get("0" * 32)


def test_the_helper_ends_with_its_parent(tmp_path, device):
    """End of input without the exit line: the parent died, and the helper exits without finishing its jobs."""
    helper = start_helper(tmp_path)
    helper.stdin.write("".join(job_line(device, 40 + n) for n in range(20)))
    helper.stdin.close()
    assert helper.wait(10) == 0


def test_the_helper_stops_at_the_exit_budget(tmp_path, device, monkeypatch):
    monkeypatch.setattr(pocl_helper, "START_SECONDS", 0.0)  # the budget runs out long before 20 builds are done
    helper = pocl_helper.PoclHelper(tmp_path, 1 << 30, lambda: None)
    for n in range(20):
        pending = pending_entry(device, kernel_source(50 + n), (), 0.1)
        helper.submit(pending.key, pending.components, pending.source, (), 0.1)
    process = helper._process
    start = time.monotonic()
    helper.stop(time.monotonic())
    assert process.returncode is not None
    assert time.monotonic() - start < pocl_helper.KILL_GRACE_SECONDS + 0.5
    assert len(KernelCache(tmp_path).entries()) < 20


def test_the_helper_starts_before_the_compiles_only_where_binaries_are_stored(tmp_path, device):
    stored = KernelCache(tmp_path / "stored")
    stored.start_helper(device)
    unstored = KernelCache(tmp_path / "unstored", size_limit=0)
    unstored.start_helper(device)
    assert stored._helper._process is not None and unstored._helper._process is None
    stored._helper.stop(time.monotonic())


def helper_with_pocl_cache(directory: Path) -> subprocess.Popen:
    """The helper process with a PoCL cache of its own under `directory` (PoCL reads POCL_CACHE_DIR at its start)."""
    return start_helper(directory, {**os.environ, "POCL_CACHE_DIR": str(directory / "pocl")})


def answers(helper: subprocess.Popen, lines: str) -> list[dict]:
    output, _ = helper.communicate(lines + json.dumps({"exit_within": 60}) + "\n", timeout=120)
    return [json.loads(line) for line in output.splitlines()]


def test_compiling_ahead_leaves_each_launchs_work_group_function_in_pocls_cache(tmp_path, device):
    """The helper runs each launch once, so PoCL compiles the work-group function specialized as the parent's launch
    will want it (local size, zero offset, grid class) into the cache the parent shares: one per launch shape."""
    launches = [["add_60", [64], [16], [64 * 4]], ["add_60", [4096], None, [4096 * 4]]]
    assert answers(helper_with_pocl_cache(tmp_path), job_line(device, 60, launches=launches)) == [{"compiled": 2}]
    compiled = sorted(path.parent.name for path in (tmp_path / "pocl").rglob("add_60.so"))
    assert len(compiled) == 2 and any(name.startswith("16-1-1") for name in compiled), compiled  # (its local size)


def test_compiling_ahead_stops_once_the_parent_has_launched_the_program(tmp_path, device):
    """The program's binary job comes after the parent's own launches: from then on the helper runs none of them."""
    launches = [["add_61", [64 * size], [size], [64 * size * 4]] for size in range(1, 41)]
    got = answers(helper_with_pocl_cache(tmp_path), job_line(device, 61, launches=launches) + job_line(device, 61))
    assert got[0]["compiled"] < len(launches) and got[1] == {"stored": True}


def test_compiling_ahead_skips_launches_over_its_byte_limit_and_jobs_not_of_their_source(tmp_path, device):
    too_large = pocl_helper_process.AHEAD_BYTES_LIMIT + 4
    launches = [["add_62", [64], None, [too_large]], ["add_62", [64], None, [256]]]
    got = answers(helper_with_pocl_cache(tmp_path),
                  job_line(device, 62, launches=launches) + job_line(device, 63, launches=launches, key="0" * 32))
    assert got == [{"compiled": 1}, {"compiled": 0}]


def test_a_fresh_programs_first_run_hands_its_launches_over_with_their_buffers_sizes(device, monkeypatch):
    """What the OpenCL device gives `KernelCache.compile_ahead` as a fresh program's first run starts: each kernel
    launch of the run once, in launch order, with the bytes its buffers hold (a 64-bit integer for a seed)."""
    sent, ran = [], []
    monkeypatch.setattr(KernelCache, "compile_ahead", lambda self, program, launches: sent.extend(launches))
    dev = zyx.OpenCL()
    original = dev.runtime.launcher

    def recording(timed):
        launch = original(timed)

        def recorded(kernel, global_size, local_size, arguments):
            ran.append((kernel.function_name, global_size, local_size, arguments))
            return launch(kernel, global_size, local_size, arguments)
        return recorded
    monkeypatch.setattr(dev.runtime, "launcher", recording)
    constant = float(np.random.default_rng().integers(1, 1 << 20))  # (a structure no earlier run compiled)
    x, w = (dev.tensor(np.ones((64, 64), dtype=np.float32)) for _ in range(2))
    h = (x @ (w * constant)).relu() + zyx.randn(64, 64, device=dev)
    y = h.sum(1).reshape(64, 1) @ h.max(0).reshape(1, 64)
    y.realize()
    assert len(sent) >= 2 and any(size is None for *_, sizes in sent for size in sizes)  # (a seed among them)
    assert [launch[:3] for launch in sent] == [launch[:3] for launch in ran]
    for (_, _, _, sizes), (_, _, _, arguments) in zip(sent, ran):
        for size, argument in zip(sizes, arguments, strict=True):
            assert (size is None) == isinstance(argument, np.uint64)
            assert size is None or 0 < size <= argument.size


def test_the_driver_is_warmed_up_once_per_device_as_a_program_is_first_scheduled(tmp_path, device, monkeypatch):
    """On a PoCL CPU device the first program to be scheduled starts the driver's warm-up on a thread of its own
    (driver_warm_up.py: a one-line program compiled and linked without the GIL); later ones do not again."""
    cache = KernelCache(tmp_path)
    started = []
    monkeypatch.setattr(cache_module.threading, "Thread", lambda target, args, name: SimpleNamespace(
        start=lambda: started.append(target(*args))))
    context = cl.Context([device])
    cache.prepare_compiles(context, device)
    cache.prepare_compiles(context, device)
    assert started == [True]  # (the warm-up ran once, and the driver compiled and linked)


@pytest.mark.parametrize("empty", [True, False])
def test_a_device_opened_on_an_empty_cache_starts_the_warm_up_at_once(tmp_path, device, monkeypatch, empty):
    """Nothing was ever compiled into an empty cache, so this process will compile: the device starts the driver's
    warm-up as it opens (overlapping the model's construction too); on a cache holding entries it waits for the
    first program it schedules."""
    from zyx.runtime.opencl_device import OpenCLDevice
    cache = KernelCache(tmp_path)
    monkeypatch.setattr(cache_module, "_default", cache)
    monkeypatch.setattr(cache, "is_empty", lambda: empty)
    prepared = []
    monkeypatch.setattr(cache, "prepare_compiles", lambda context, cl_device: prepared.append(cl_device))
    OpenCLDevice(device)
    assert prepared == ([device] if empty else [])


def test_a_short_run_stores_its_binary_while_the_driver_warms_up(tmp_path):
    """The warm-up takes about a second (here three more); a run shorter than that still stores its program's
    binary at exit (on the writer thread, which the warm-up does not hold up), and the next process compiles
    nothing."""
    script = ("import importlib, time, numpy as np, zyx\n"
              "cache = importlib.import_module('zyx.jit.cache')\n"
              "warm_up = cache.warm_up\n"
              "cache.warm_up = lambda *arguments: time.sleep(3) or warm_up(*arguments)\n"
              "x = zyx.OpenCL().tensor(np.arange(6, dtype=np.float32))\n"
              "print(((x * 3).exp().sum()).item(), zyx.stats()['kernels_compiled'])")
    environment = {**os.environ, "ZYX_CACHE_DIR": str(tmp_path / "cache"), "POCL_CACHE_DIR": str(tmp_path / "pocl")}
    runs = [subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True,
                           timeout=120) for _ in range(2)]
    assert [run.returncode for run in runs] == [0, 0], runs[0].stderr + runs[1].stderr
    (first_value, first_compiled), (second_value, second_compiled) = (run.stdout.split() for run in runs)
    assert first_value == second_value and int(first_compiled) >= 1 and int(second_compiled) == 0


def test_the_warm_up_calls_pyopencls_own_icd_loader_without_the_gil(device):
    """ctypes.CDLL releases the GIL around each call (PyDLL would not), so the scheduling thread runs on while the
    driver links; the calls go to the ICD loader pyopencl loaded where its wheel bundles one."""
    library = icd_loader()
    assert isinstance(library, ctypes.CDLL) and not isinstance(library, ctypes.PyDLL)
    mapped = Path("/proc/self/maps")
    if mapped.exists() and "pyopencl/.libs/libOpenCL" in mapped.read_text():
        assert "pyopencl/.libs/libOpenCL" in library._name


def test_a_program_of_few_launches_is_not_compiled_ahead(tmp_path, device, monkeypatch):
    """Under AHEAD_MIN_LAUNCHES launches the helper's build and job would cost about what they save."""
    cache = KernelCache(tmp_path)
    sent = []
    monkeypatch.setattr(cache._helper, "compile_ahead", lambda *job: sent.append(job[-1]))
    program = cache.build(cl.Context([device]), device, kernel_source(64))
    launch = ("add_64", (64,), None, [256])
    for count in (AHEAD_MIN_LAUNCHES - 1, AHEAD_MIN_LAUNCHES):
        cache.compile_ahead(program, [launch] * count)
    assert [len(launches) for launches in sent] == [AHEAD_MIN_LAUNCHES]
