"""One OpenCL device: its context, its in-order queue, its memory, and how kernels are launched on it.

Everything is enqueued on a single in-order queue, so commands run in the order they were issued and no
events are needed between them; only `download` and `synchronize` wait. That ordering is also what makes
reusing a pooled buffer safe while earlier kernels that used it are still queued. While a profiler records
(or ZYX_DEBUG>=2), that queue is a second one made with PROFILING_ENABLE (which costs a few µs per launch on
PoCL); the switch waits for the other queue, so the order still holds.
"""
from __future__ import annotations

import concurrent.futures
import functools
import logging
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyopencl as cl

from zyx import counters as stats
from zyx.runtime import collectives, profiling
from zyx.runtime.cpu_target import multiply_add_latency, native_float_lanes
from zyx.runtime.limits import MemoryLimits
from zyx.runtime.memory import ARENA_SHARE, BufferPool, PooledRuntime
from zyx.runtime.platforms import is_pocl
from zyx.runtime.run_code import HeldArguments
from ..debug import logger

_OUT_OF_MEMORY_CODES = frozenset(
    {cl.status_code.MEM_OBJECT_ALLOCATION_FAILURE, cl.status_code.OUT_OF_RESOURCES, cl.status_code.OUT_OF_HOST_MEMORY}
)
_PENDING_UPLOADS_BEFORE_PRUNE = 64
# what `cl.enqueue_copy` calls for a buffer-to-host copy, after some 50 bytecodes of telling its arguments' kinds
# apart: a replay reads its index checks, and `.item()` its value, through it at every call
_read_buffer = cl._cl._enqueue_read_buffer
KERNELS_WITH_ARGUMENTS_KEPT = 4096  # kernels whose arguments `launcher` remembers (it forgets all past that)

Launcher = Callable[[cl.Kernel, tuple, "tuple | None", Sequence[Any]], cl.Event]


def _is_out_of_memory(error: Exception) -> bool:
    return isinstance(error, cl.MemoryError) or getattr(error, "code", None) in _OUT_OF_MEMORY_CODES


def _compute_capability(cl_device: Any) -> tuple[int, int] | None:
    """An NVIDIA device's compute capability (cl_nv_device_attribute_query), else None."""
    if "cl_nv_device_attribute_query" not in cl_device.extensions:
        return None
    return cl_device.compute_capability_major_nv, cl_device.compute_capability_minor_nv


def _as_bytes(array: np.ndarray) -> np.ndarray:
    """The same memory as uint8: the buffer protocol pyopencl copies through cannot name ml_dtypes' bfloat16."""
    return array.reshape(-1).view(np.uint8)


class Buffer:
    """Device memory of `nbytes` bytes; goes back to its runtime's pool when the last reference is dropped.

    `__del__` rather than `weakref.finalize` (six times cheaper, and a replayed step allocates dozens): it only
    hands the cl.Buffer to the pool's free list, which is plain Python, so it is safe at interpreter exit too.
    """

    __slots__ = ("raw", "nbytes", "runtime", "size")

    def __init__(self, raw: cl.Buffer, nbytes: int, runtime: OpenCLRuntime, size: int) -> None:
        """`size`: the pool's size class of `nbytes` (what `__del__` gives back without computing it again)."""
        self.raw = raw
        self.nbytes = nbytes
        self.runtime = runtime
        self.size = size

    def __del__(self) -> None:
        self.runtime.pool.give(self.raw, self.size)

    def __repr__(self) -> str:
        return f"Buffer(nbytes={self.nbytes}, device={self.runtime.name!r})"


def _log_launch(log: logging.Logger, kernel: cl.Kernel, global_size: tuple[int, ...],
                local_size: tuple[int, ...] | None) -> None:
    log.info("launch %s global=%s local=%s", kernel.function_name, tuple(global_size), local_size)


class OpenCLRuntime(PooledRuntime):
    """Owns one OpenCL device: allocation, transfers and kernel launches all go through here."""

    def __init__(self, cl_device: cl.Device) -> None:
        self.device = cl_device
        self.context = cl.Context([cl_device])
        self._plain_queue = cl.CommandQueue(self.context, cl_device)
        self._timed_queue: cl.CommandQueue | None = None
        self._current_queue = self._plain_queue
        self.name: str = cl_device.name.strip()
        extensions = cl_device.extensions.split()
        self.supports_fp16: bool = "cl_khr_fp16" in extensions
        self.supports_fp64: bool = "cl_khr_fp64" in extensions
        self.max_work_group_size: int = cl_device.max_work_group_size
        self.local_mem_bytes: int = cl_device.local_mem_size
        self.compute_units: int = cl_device.max_compute_units
        self.is_gpu: bool = bool(cl_device.type & cl.device_type.GPU)
        # floats per vector register (a CPU's: those of the CPU its compiler targets, cpu_target.py)
        self.native_vector_width: int = (cl_device.preferred_vector_width_float if self.is_gpu else
                                         native_float_lanes(self.name, cl_device.preferred_vector_width_float))
        # cycles one vector multiply-add takes (a CPU device runs on this machine's cores: cpu_target.py)
        self.multiply_add_latency: int = 4 if self.is_gpu else multiply_add_latency()
        # PoCL runs its LLVM for one build at a time (pocl_llvm_api.h: "not thread safe"; one lock), so builds on
        # threads only wait for each other, and each pays the build's fixed cost
        self.builds_one_at_a_time: bool = is_pocl(cl_device.platform)
        self.compute_capability = _compute_capability(cl_device)
        self.limits = MemoryLimits(cl_device.max_mem_alloc_size, cl_device.global_mem_size, f"OpenCL({self.name!r})")
        # per kernel, the arguments it was last given (`launcher`); they hold their buffers, so a trim forgets them
        self._arguments_set: dict[cl.Kernel, Sequence[Any]] = {}
        self._held: "weakref.WeakSet[HeldArguments]" = weakref.WeakSet()  # those of replays' own kernels
        self._last_launcher: tuple[Any, bool, Any] = (None, False, None)  # (queue, logged, what `launcher` gave)
        self.pool: BufferPool[cl.Buffer] = BufferPool(self._create_cl_buffer, is_out_of_memory=_is_out_of_memory,
                                                      on_trim=self._forget_arguments,
                                                      arena_budget=ARENA_SHARE * cl_device.global_mem_size)
        self._pending_uploads: list[cl.Event] = []

    def __repr__(self) -> str:
        return f"OpenCLRuntime({self.name!r})"

    def group_limit(self, kernel: cl.Kernel) -> int:
        """The most work-items a group of `kernel` may have on this device: fewer than the device's maximum where
        the kernel's registers or local memory per item allow fewer (CL_KERNEL_WORK_GROUP_SIZE)."""
        return kernel.get_work_group_info(cl.kernel_work_group_info.WORK_GROUP_SIZE, self.device)

    @property
    def queue(self) -> cl.CommandQueue:
        """The queue for the next command: the timed one while `profiling.timing_wanted()`, else the plain one."""
        return self.queue_for(profiling.timing_wanted())

    def queue_for(self, timed: bool) -> cl.CommandQueue:
        """The timed queue or the plain one, switching (in order) when the other was used last."""
        if timed != (self._current_queue is self._timed_queue):
            self._current_queue.finish()  # what is queued runs before anything on the other queue
            if timed and self._timed_queue is None:
                self._timed_queue = cl.CommandQueue(
                    self.context, self.device, properties=cl.command_queue_properties.PROFILING_ENABLE)
            self._current_queue = self._timed_queue if timed else self._plain_queue
        return self._current_queue

    def _create_cl_buffer(self, nbytes: int) -> cl.Buffer:
        return cl.Buffer(self.context, cl.mem_flags.READ_WRITE, size=nbytes)

    # --- memory -------------------------------------------------------------------------------------------

    def _buffer(self, raw: cl.Buffer, nbytes: int) -> Buffer:
        return Buffer(raw, nbytes, self, self.pool.size_class(nbytes))

    def allocate_taken(self, size: int, nbytes: int) -> Buffer:
        """`PooledRuntime.allocate_taken` with the Buffer made here: a replay makes two, a realize one."""
        return Buffer(self.pool.take(size), nbytes, self, size)

    # --- transfers ----------------------------------------------------------------------------------------

    def upload(self, array: np.ndarray) -> Buffer:
        """A device copy of `array`. Returns before the copy finishes; the host data is kept alive until it does."""
        host = np.ascontiguousarray(array)
        self.limits.check_bytes(host.nbytes, f"an array of shape {array.shape} and dtype {array.dtype}")
        buffer = self.allocate(host.nbytes)
        if host.nbytes:
            event = cl.enqueue_copy(self.queue, buffer.raw, _as_bytes(host), is_blocking=False)
            self._keep_until_done(event)
        return buffer

    def download(self, buffer: Buffer, shape: Sequence[int], numpy_dtype: Any) -> np.ndarray:
        """The buffer's contents as a new array; waits for every kernel enqueued before it."""
        return self.download_all([(buffer, shape, numpy_dtype)])[0]

    def download_all(self, requests: Sequence[tuple[Buffer, Sequence[int], Any]]) -> list[np.ndarray]:
        """Several buffers' contents (buffer, shape, numpy dtype each) as new arrays, waiting once: the in-order
        queue finishes the earlier copies before the last. A wait costs far more than a copy of a few bytes."""
        hosts = self.download_later(requests)()
        self._pending_uploads.clear()  # the in-order queue finished them before these reads
        return hosts

    def download_later(self, requests: Sequence[tuple[Buffer, Sequence[int], Any]]) -> Callable[[], list[np.ndarray]]:
        """`download_all`'s copies, enqueued without waiting: the function returned waits for them and gives the
        arrays. Commands enqueued meanwhile queue behind the copies."""
        hosts, copies = [], []  # each copy's event is held until the last is done: dropping one would wait for it
        queue = self._current_queue  # (the one used last: a read needs no timing, only to follow what it reads)
        for buffer, shape, numpy_dtype in requests:
            host = self._host_for(buffer, shape, numpy_dtype)
            if host.nbytes:
                copies.append(_read_buffer(queue, buffer.raw, _as_bytes(host), is_blocking=False))
            hosts.append(host)

        def arrays() -> list[np.ndarray]:
            if copies:
                copies[-1].wait()
            return hosts
        return arrays

    def read_later(self, copies: Sequence[tuple[cl.Buffer, np.ndarray]]) -> Callable[[], None]:
        """Copies of raw buffers into host arrays of bytes ((buffer, uint8 array) each, no longer than the buffer),
        enqueued without waiting: the function returned waits for them. A replayed step reads its index checks so,
        into arrays it keeps (run_code.py's gate): its launches enqueued meanwhile queue behind the copies."""
        queue = self._current_queue
        events = [_read_buffer(queue, raw, host, is_blocking=False) for raw, host in copies]  # (each held until
        return functools.partial(cl.wait_for_events, events)  # all are done: dropping one would wait for it)

    def copy(self, buffer: Buffer) -> Buffer:
        """A new device buffer holding the same bytes (enqueued, not waited for)."""
        duplicate = self.allocate(buffer.nbytes)
        if buffer.nbytes:
            cl.enqueue_copy(self.queue, duplicate.raw, buffer.raw, byte_count=buffer.nbytes)
        return duplicate

    def _keep_until_done(self, event: cl.Event) -> None:
        """Holds a transfer's event (which holds its host array); dropping an unfinished one would block."""
        self._pending_uploads.append(event)
        if len(self._pending_uploads) > _PENDING_UPLOADS_BEFORE_PRUNE:
            complete = cl.command_execution_status.COMPLETE
            self._pending_uploads = [e for e in self._pending_uploads if e.command_execution_status != complete]

    # --- collectives (staged through host memory) -------------------------------------------------------

    def start_collective(self, sources: Sequence[tuple[cl.Buffer, int]], numel: int,
                         step: str) -> concurrent.futures.Future:
        """Enqueue copies of `sources` ((buffer, bytes) each), one after another, into one host bucket of `numel`
        elements and hand combining it (`step`: "all_reduce sum float32") to the communication thread; kernels
        enqueued after this run while it communicates."""
        kind, parameter, dtype = collectives.parse_step(step)
        bucket = np.empty(numel, dtype)
        if sum(nbytes for _, nbytes in sources) != bucket.nbytes:
            raise ValueError(f"{step}: the sources hold {[n for _, n in sources]} bytes, the bucket {bucket.nbytes}")
        view, start, copies = _as_bytes(bucket), 0, []
        for buffer, nbytes in sources:
            if nbytes:
                copies.append(cl.enqueue_copy(self.queue, view[start:start + nbytes], buffer, is_blocking=False))
            start += nbytes
        self.queue.flush()  # the copies start now, not at the next wait

        def combine(comm: Any) -> np.ndarray:
            if copies:
                cl.wait_for_events(copies)
            collectives.combine_in_place(comm, bucket, kind, parameter)
            return bucket
        return collectives.process_group().submit(combine)

    def finish_collective(self, pending: concurrent.futures.Future, buffer: cl.Buffer, step: str) -> None:
        """Wait for a started collective (at most the group's timeout) and enqueue its result into `buffer`."""
        bucket = collectives.process_group().wait(pending, step)
        if bucket.nbytes:
            self._keep_until_done(cl.enqueue_copy(self.queue, buffer, _as_bytes(bucket), is_blocking=False))

    # --- execution ----------------------------------------------------------------------------------------

    def launch(
        self,
        kernel: cl.Kernel,
        global_size: tuple[int, ...],
        local_size: tuple[int, ...] | None,
        args: Sequence[Any],
    ) -> cl.Event:
        """Enqueues one kernel run; Buffers become their cl.Buffer, numpy scalars pass through as they are.
        Its event carries device timestamps when the queue is the timed one."""
        raw = tuple([arg.raw if isinstance(arg, Buffer) else arg for arg in args])
        stats.bump("kernels_launched")
        return self.launcher(profiling.timing_wanted())(kernel, global_size, local_size, raw)

    def launcher(self, timed: bool) -> Launcher:
        """A launch function for one program run, taking cl.Buffers and numpy scalars as arguments, on the timed
        queue or the plain one. The queue and the ZYX_DEBUG setting are looked up here, once, not per kernel: each
        lookup costs microseconds and a replayed step launches dozens of kernels. The caller counts the kernels
        it launches (`kernels_launched`), once per run.

        A kernel keeps its arguments between launches, so they are set only where they differ from the ones it
        was last given here: a replay passes the same buffers at every call (the pool hands them out in the same
        order), and setting them cost the host as much as the launches themselves (pyopencl's `set_args`, some
        60 ns an argument; an Adam step passes over a hundred). zyx's kernels get their arguments only here, except
        a replayed step's own ones (`own_kernel`), which hold theirs (run_code.py's bound run)."""
        queue = self.queue_for(timed)
        log = logger("zyx.runtime")
        logged = log.isEnabledFor(logging.INFO)
        arguments_set = self._arguments_set
        if len(arguments_set) > KERNELS_WITH_ARGUMENTS_KEPT:
            arguments_set.clear()
        last = self._last_launcher
        if last[0] is queue and last[1] == logged:
            return last[2]  # (a replay asks at every call)
        launch = self._launcher(queue, log, logged)
        self._last_launcher = (queue, logged, launch)
        return launch

    def _launcher(self, queue: cl.CommandQueue, log: logging.Logger, logged: bool) -> Launcher:
        """`launcher`'s function for `queue`, logging each launch on `log` where `logged`."""
        enqueue = cl.enqueue_nd_range_kernel
        arguments_set = self._arguments_set

        def launch(kernel: cl.Kernel, global_size: tuple[int, ...], local_size: tuple[int, ...] | None,
                   args: Sequence[Any]) -> cl.Event:
            if logged:
                _log_launch(log, kernel, global_size, local_size)
            if arguments_set.get(kernel) != args:
                arguments_set.pop(kernel, None)  # a set_args that raises leaves the kernel's arguments unknown
                kernel.set_args(*args)
                arguments_set[kernel] = args
            return enqueue(queue, kernel, global_size, local_size)

        def enqueue_logged(kernel: cl.Kernel, global_size: tuple[int, ...], local_size: tuple[int, ...] | None) -> Any:
            _log_launch(log, kernel, global_size, local_size)
            return enqueue(queue, kernel, global_size, local_size)
        # a bound run's launches (run_code.py): kernels that hold their arguments, straight to the driver
        launch.enqueue = enqueue_logged if logged else functools.partial(enqueue, queue)  # type: ignore[attr-defined]
        return launch

    def own_kernel(self, kernel: cl.Kernel) -> cl.Kernel:
        """A kernel object of `kernel`'s program and function for one replayed step alone, whose arguments it sets
        once and keeps (run_code.py: `write_run`'s `owner`)."""
        return cl.Kernel(kernel.program, kernel.function_name)

    def held_arguments(self, uses: list[list[tuple[cl.Kernel, int, int]]]) -> HeldArguments:
        """What a bound run's own kernels hold, forgotten when the pool trims (they hold its buffers)."""
        held = HeldArguments(uses)
        self._held.add(held)
        return held

    def _forget_arguments(self) -> None:
        self._arguments_set.clear()
        for held in list(self._held):
            held.now = None

    def synchronize(self) -> None:
        """Waits until everything enqueued so far has finished."""
        self._current_queue.finish()
        self._pending_uploads.clear()
