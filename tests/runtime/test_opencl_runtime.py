"""BufferPool on a fake allocator, and OpenCLRuntime on this machine's default OpenCL device."""
import gc
import sys
import weakref

import numpy as np
import pyopencl as cl
import pytest

from zyx import counters as stats
from zyx.runtime.memory import BufferPool
from zyx.runtime.opencl import Buffer, OpenCLRuntime
from zyx.runtime.platforms import select_device


class OutOfMemory(Exception):
    pass


class FakeAllocation:
    pass


class FakeDevice:
    """Hands out allocations, frees them when unreferenced (like pyopencl), and can cap the live bytes."""

    def __init__(self, limit=None):
        self.limit = limit
        self.live = {}
        self.calls = 0

    def allocate(self, nbytes):
        if self.limit is not None and sum(self.live.values()) + nbytes > self.limit:
            raise OutOfMemory(nbytes)
        self.calls += 1
        allocation = FakeAllocation()
        self.live[self.calls] = nbytes
        weakref.finalize(allocation, self.live.pop, self.calls)
        return allocation


# --- BufferPool --------------------------------------------------------------------------------------------

def test_pool_rounds_to_granularity_and_reuses_by_size():
    device = FakeDevice()
    pool = BufferPool(device.allocate, granularity=256)
    assert pool.size_class(0) == 256 and pool.size_class(256) == 256 and pool.size_class(257) == 512
    first = pool.acquire(100)
    pool.release(first, 100)
    assert pool.acquire(200) is first  # same 256-byte class
    assert pool.acquire(300) is not first
    assert device.calls == 2


def test_pool_tracks_current_peak_and_pooled_bytes():
    pool = BufferPool(FakeDevice().allocate, granularity=256)
    a, b = pool.acquire(256), pool.acquire(512)
    assert (pool.current_bytes, pool.peak_bytes, pool.pool_bytes) == (768, 768, 0)
    pool.release(b, 512)
    assert (pool.current_bytes, pool.peak_bytes, pool.pool_bytes) == (256, 768, 512)
    pool.reset_peak()
    assert pool.peak_bytes == 256
    pool.release(a, 256)
    assert pool.trim() == 768
    assert (pool.current_bytes, pool.pool_bytes) == (0, 0)


def test_pool_bumps_global_counters_only_for_real_allocations():
    pool = BufferPool(FakeDevice().allocate, granularity=256)
    before = stats.stats()["bytes_allocated"]
    raw = pool.acquire(1000)
    pool.release(raw, 1000)
    pool.acquire(1000)
    assert stats.stats()["bytes_allocated"] - before == 1024
    assert stats.stats()["peak_bytes"] >= 1024


def test_pool_trims_and_retries_when_out_of_memory():
    device = FakeDevice(limit=1024)
    pool = BufferPool(device.allocate, granularity=256, is_out_of_memory=lambda error: isinstance(error, OutOfMemory))
    pool.release(pool.acquire(1024), 1024)
    assert pool.acquire(512) is not None
    assert pool.pool_bytes == 0 and device.calls == 2


def test_pool_reraises_other_errors_and_out_of_memory_with_nothing_pooled():
    device = FakeDevice(limit=256)
    pool = BufferPool(device.allocate, granularity=256, is_out_of_memory=lambda error: isinstance(error, OutOfMemory))
    with pytest.raises(OutOfMemory):
        pool.acquire(512)
    failing = BufferPool(lambda n: 1 / 0, is_out_of_memory=lambda error: True)
    with pytest.raises(ZeroDivisionError):
        failing.acquire(8)


# --- OpenCLRuntime -----------------------------------------------------------------------------------------

ADD_ONE = """
__kernel void add_one(__global const float *x, __global float *y, float amount) {
    size_t i = get_global_id(0);
    y[i] = x[i] + amount;
}
"""


@pytest.fixture(scope="module")
def backend():
    return OpenCLRuntime(select_device())


@pytest.fixture(scope="module")
def add_one(backend):
    return cl.Kernel(cl.Program(backend.context, ADD_ONE).build(), "add_one")


def test_backend_describes_its_device(backend):
    assert backend.name == backend.device.name.strip()
    assert backend.queue.device == backend.device
    assert not backend.queue.properties & cl.command_queue_properties.OUT_OF_ORDER_EXEC_MODE_ENABLE
    assert backend.max_work_group_size >= 1 and backend.local_mem_bytes > 0 and backend.compute_units >= 1
    assert isinstance(backend.is_gpu, bool) and isinstance(backend.supports_fp16, bool)
    assert backend.supports_fp64 == ("cl_khr_fp64" in backend.device.extensions)


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint8, np.float64, np.bool_])
def test_upload_download_round_trip(backend, dtype):
    array = (np.arange(60).reshape(3, 4, 5) % 7).astype(dtype)
    buffer = backend.upload(array)
    assert isinstance(buffer, Buffer) and buffer.nbytes == array.nbytes
    assert np.array_equal(backend.download(buffer, (3, 4, 5), dtype), array)


def test_upload_accepts_non_contiguous_arrays(backend):
    array = np.arange(20, dtype=np.float32).reshape(4, 5).T
    assert np.array_equal(backend.download(backend.upload(array), (5, 4), np.float32), array)


def test_upload_keeps_host_data_alive_until_copied(backend):
    buffers = [backend.upload(np.full(100_000, i, dtype=np.float32)) for i in range(100)]
    gc.collect()
    for i in (0, 50, 99):
        assert np.all(backend.download(buffers[i], (100_000,), np.float32) == i)


def test_zero_byte_buffers(backend):
    empty = backend.upload(np.zeros((0, 3), dtype=np.float32))
    assert empty.nbytes == 0
    assert backend.download(empty, (0, 3), np.float32).shape == (0, 3)
    assert backend.copy(empty).nbytes == 0
    assert backend.allocate(0).nbytes == 0


def test_download_larger_than_buffer_is_refused(backend):
    with pytest.raises(ValueError, match="cannot read 16 bytes"):
        backend.download(backend.allocate(8), (4,), np.float32)


def test_copy_is_independent(backend, add_one):
    source = backend.upload(np.arange(8, dtype=np.float32))
    duplicate = backend.copy(source)
    backend.launch(add_one, (8,), None, [source, source, np.float32(10)])
    assert np.array_equal(backend.download(duplicate, (8,), np.float32), np.arange(8, dtype=np.float32))
    assert np.array_equal(backend.download(source, (8,), np.float32), np.arange(8, dtype=np.float32) + 10)


def test_a_later_download_reads_the_values_of_when_it_was_enqueued(backend, add_one):
    """download_later enqueues its copies at once and waits only when asked: a kernel enqueued after it that writes
    the very buffer (as a replay's step may write its checks' buffer, given back to the pool) does not change what
    it reads."""
    x = backend.upload(np.arange(8, dtype=np.float32))
    read = backend.download_later([(x, (8,), np.float32)])
    backend.launch(add_one, (8,), None, [x, x, np.float32(10)])
    (values,) = read()
    assert np.array_equal(values, np.arange(8, dtype=np.float32))
    assert np.array_equal(backend.download(x, (8,), np.float32), np.arange(8, dtype=np.float32) + 10)


def test_launch_runs_in_order_and_counts(backend, add_one):
    before = stats.stats()["kernels_launched"]
    x = backend.upload(np.zeros(1024, dtype=np.float32))
    y = backend.allocate(x.nbytes)
    backend.launch(add_one, (1024,), (64,), [x, y, np.float32(1)])
    backend.launch(add_one, (1024,), None, [y, x, np.float32(2)])
    backend.synchronize()
    assert np.all(backend.download(x, (1024,), np.float32) == 3)
    assert stats.stats()["kernels_launched"] - before == 2


def test_a_kernel_launched_again_computes_with_the_arguments_given_now(backend, add_one):
    # the launcher sets only arguments that differ from the ones the kernel holds: each launch must still use its own
    x = backend.upload(np.arange(4, dtype=np.float32))
    y = backend.allocate(x.nbytes)
    z = backend.allocate(x.nbytes)
    launch = backend.launcher(False)
    for arguments, expected in [((x.raw, y.raw, np.float32(1)), [1, 2, 3, 4]), ((x.raw, y.raw, np.float32(1)), None),
                                ((y.raw, z.raw, np.float32(1)), [2, 3, 4, 5]), ((x.raw, z.raw, np.float32(5)), [5, 6, 7, 8])]:
        launch(add_one, (4,), None, arguments)
        if expected is not None:
            result = backend.download(z if arguments[1] is z.raw else y, (4,), np.float32)
            assert result.tolist() == expected


def test_a_trim_lets_go_of_the_buffers_kernels_were_last_given(backend, add_one):
    x = backend.upload(np.zeros(4, dtype=np.float32))
    raw = x.raw
    backend.launcher(False)(add_one, (4,), None, (raw, raw, np.float32(1)))
    backend.synchronize()
    del x  # back in the pool; the launcher still remembers it as add_one's argument
    assert sys.getrefcount(raw) > 2
    backend.pool.trim()
    assert sys.getrefcount(raw) == 2  # only `raw` and getrefcount's argument: the driver frees it with them


def test_a_kernel_of_its_own_keeps_the_arguments_set_on_it_and_a_trim_forgets_them(backend, add_one):
    """A replay's own kernels (`own_kernel`) launch through `launcher(...).enqueue` with the arguments set once;
    those are held (`held_arguments`) until the pool trims, which forgets them so the driver can free them."""
    own = backend.own_kernel(add_one)
    assert own is not add_one and own.function_name == add_one.function_name
    x = backend.upload(np.arange(4, dtype=np.float32))
    y = backend.allocate(x.nbytes)
    held = backend.held_arguments([[(own, 0, -1)], [(own, 1, -1)]])
    held.bind((x.raw, y.raw))
    own.set_arg(2, np.float32(1))
    enqueue = backend.launcher(False).enqueue
    enqueue(own, (4,), None)
    assert backend.download(y, (4,), np.float32).tolist() == [1, 2, 3, 4]
    raw = y.raw
    del y
    assert held.now is not None and sys.getrefcount(raw) > 2
    backend.pool.trim()
    assert held.now is None and sys.getrefcount(raw) == 2


def test_debug_prints_a_line_for_each_launch_of_a_kernel_holding_its_arguments(backend, add_one, monkeypatch, capsys):
    x = backend.upload(np.zeros(16, dtype=np.float32))
    own = backend.own_kernel(add_one)
    own.set_args(x.raw, x.raw, np.float32(1))
    monkeypatch.setenv("ZYX_DEBUG", "1")
    backend.launcher(False).enqueue(own, (16,), (4,))
    monkeypatch.setenv("ZYX_DEBUG", "0")
    backend.launcher(False).enqueue(own, (16,), None)
    assert capsys.readouterr().err.splitlines() == ["zyx.runtime: launch add_one global=(16,) local=(4,)"]
    assert backend.download(x, (16,), np.float32).tolist() == [2] * 16


def test_debug_prints_one_line_per_launch(backend, add_one, monkeypatch, capsys):
    x = backend.upload(np.zeros(16, dtype=np.float32))
    monkeypatch.setenv("ZYX_DEBUG", "1")
    backend.launch(add_one, (16,), (4,), [x, x, np.float32(1)])
    monkeypatch.setenv("ZYX_DEBUG", "0")
    backend.launch(add_one, (16,), None, [x, x, np.float32(1)])
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["zyx.runtime: launch add_one global=(16,) local=(4,)"]


def test_freed_buffers_return_to_pool_and_are_reused(backend):
    backend.pool.trim()
    start = backend.memory_stats()
    buffer = backend.allocate(10_000)
    raw = buffer.raw
    held = backend.memory_stats()
    assert held["current_bytes"] - start["current_bytes"] == 10_240
    del buffer
    freed = backend.memory_stats()
    assert freed["current_bytes"] == start["current_bytes"] and freed["pool_bytes"] == 10_240
    assert backend.allocate(10_100).raw is raw  # same size class: no new allocation


def test_peak_memory_and_reset(backend):
    backend.reset_peak_memory()
    base = backend.memory_stats()["current_bytes"]
    big = backend.allocate(1 << 20)
    del big
    assert backend.memory_stats()["peak_bytes"] >= base + (1 << 20)
    backend.reset_peak_memory()
    assert backend.memory_stats()["peak_bytes"] == backend.memory_stats()["current_bytes"]


def test_buffer_outliving_interpreter_is_safe():
    """A module-level Buffer still alive at exit must not crash the interpreter."""
    import pathlib
    import subprocess
    import sys

    script = (
        "import numpy as np\n"
        "from zyx.runtime.opencl import OpenCLRuntime\n"
        "from zyx.runtime.platforms import select_device\n"
        "backend = OpenCLRuntime(select_device())\n"
        "kept = backend.upload(np.ones(1000, dtype=np.float32))\n"
        "print('done')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            cwd=pathlib.Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done" and "Exception" not in result.stderr
