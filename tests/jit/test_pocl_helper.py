"""The helper process beside the training one on PoCL: binaries read, work-group functions compiled ahead (zyx/jit/pocl_helper.py)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyopencl as cl
import pytest

from cache_worker import first_device, kernel_source
from test_cache import context, queue  # noqa: F401 - fixtures, on the device below
from zyx.jit import pocl_helper
from zyx.jit.cache import KernelCache, pending_entry

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


def start_helper(directory: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "zyx.jit.pocl_helper_process", str(directory), str(1 << 30)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


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
