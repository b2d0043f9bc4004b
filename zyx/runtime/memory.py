"""A pool of device buffers, reused by size, so a training step does not call the driver for every tensor.

Device allocation is slow and fragments memory; a step of a model asks for the same sizes again and again.
The pool keeps freed buffers in per-size free lists and hands them back for the next request of that size.
It is generic over the allocator, so it is tested without a device.

Single-threaded by design: release may run from a garbage-collection finalizer, but only in the owning thread.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, Optional, TypeVar

import numpy as np

from zyx import counters as stats

RawBuffer = TypeVar("RawBuffer")

DEFAULT_GRANULARITY = 256


def _never_out_of_memory(error: Exception) -> bool:
    return False


class BufferPool(Generic[RawBuffer]):
    """Hands out raw buffers of at least the requested size, reusing freed ones of the same rounded size."""

    def __init__(
        self,
        allocator: Callable[[int], RawBuffer],
        granularity: int = DEFAULT_GRANULARITY,
        is_out_of_memory: Callable[[Exception], bool] = _never_out_of_memory,
        on_trim: Callable[[], None] = lambda: None,
        arena_budget: float = float("inf"),
    ) -> None:
        """`on_trim`: called when the pool drops its buffers, for what else holds them to let them go too;
        `arena_budget`: the bytes all arenas may plan together (`arena`)."""
        self.arena_budget = arena_budget
        self._allocator = allocator
        self._on_trim = on_trim
        self._granularity = granularity
        self._is_out_of_memory = is_out_of_memory
        self._free: dict[int, list[RawBuffer]] = {}
        self.current_bytes = 0
        self.peak_bytes = 0
        self.reserved_bytes = 0  # of current_bytes, what arenas hold (`Arena`)
        self._arenas: "weakref.WeakSet[Arena]" = weakref.WeakSet()

    @property
    def pool_bytes(self) -> int:
        """Bytes of the buffers waiting in the free lists (counted when asked: program runs move buffers in and out
        of the free lists themselves, `free_list`)."""
        return sum(size * len(free_list) for size, free_list in self._free.items())

    def size_class(self, nbytes: int) -> int:
        """The size actually allocated: at least one byte, rounded up to the granularity."""
        granularity = self._granularity
        return (-(-nbytes // granularity) or 1) * granularity

    def acquire(self, nbytes: int) -> RawBuffer:
        """A buffer of size_class(nbytes) bytes: a freed one if any, else a new one (trimming on out-of-memory)."""
        raw = self.take(self.size_class(nbytes))
        stats.set_max("peak_bytes", self.peak_bytes)
        return raw

    def release(self, raw: RawBuffer, nbytes: int) -> None:
        """Takes back a buffer acquired for nbytes; it waits in the pool for a request of the same size."""
        self.give(raw, self.size_class(nbytes))

    def take(self, size: int) -> RawBuffer:
        """`acquire` for a size that is a size class already, without publishing the peak to `zyx.stats()`: a
        program run takes the buffers of its outputs this way (`allocate_taken`: sizes rounded once, the peak
        published once per run); its internal buffers come from the free lists directly (run_code.py)."""
        free_list = self._free.get(size)
        raw = free_list.pop() if free_list else self.new_buffer(size)
        current = self.current_bytes = self.current_bytes + size
        if current > self.peak_bytes:
            self.peak_bytes = current
        return raw

    def give(self, raw: RawBuffer, size: int) -> None:
        """`release` of a buffer taken for `size`, a size class."""
        free_list = self._free.get(size)
        if free_list is None:
            free_list = self._free[size] = []
        free_list.append(raw)
        self.current_bytes -= size

    def free_list(self, size: int) -> list[RawBuffer]:
        """The free list of size class `size`, for a program run that takes its internal buffers from it and gives
        them back itself (`run_code`), between `current_bytes` read at its start and `note_peak` at its end: its
        internal buffers are all given back, so they change `current_bytes` by nothing."""
        return self._free.setdefault(size, [])

    def note_peak(self, nbytes: int) -> None:
        """`nbytes` were held at once (a program run's own count: its internal buffers bypass `take`)."""
        if nbytes > self.peak_bytes:
            self.peak_bytes = nbytes

    def trim(self) -> int:
        """Drops every pooled buffer (the driver frees them once unreferenced), arenas' included (each takes its
        buffers again at its next run); returns the bytes given back. The free lists are emptied in place: a run
        holding one gives its buffers back to the pool still."""
        for arena in list(self._arenas):
            arena.release()
        freed = self.pool_bytes
        for free_list in self._free.values():
            free_list.clear()
        self._on_trim()
        return freed

    def reset_peak(self) -> None:
        """Starts a new peak measurement from what is live now."""
        self.peak_bytes = self.current_bytes

    def new_buffer(self, size: int) -> RawBuffer:
        """A buffer of size class `size` from the allocator (trimming the pool once on out-of-memory); not counted
        in `current_bytes` (`take` counts it)."""
        try:
            raw = self._allocator(size)
        except Exception as error:
            if not self._is_out_of_memory(error) or self.pool_bytes == 0 and self.reserved_bytes == 0:
                raise
            self.trim()
            raw = self._allocator(size)
        stats.bump("bytes_allocated", size)
        return raw

    def arena(self, sizes: Sequence[int]) -> Optional["Arena"]:
        """An arena of buffers of `sizes` (size classes) if the live arenas with it plan at most `arena_budget`
        bytes, else None: the step's run then takes its buffers from the free lists at each call."""
        planned = sum(arena.nbytes for arena in self._arenas) + sum(sizes)
        return Arena(self, sizes) if planned <= self.arena_budget else None


ARENA_SHARE = 0.25  # of a device's memory, what the arenas of replayed steps may plan together


class Arena:
    """Buffers a replayed step's intermediates take at every call, planned once (as CUDA graphs' private pools):
    its run takes and gives back nothing, and passes its kernels the same buffers each time.

    They stay reserved between calls (counted in the pool's `current_bytes` and `reserved_bytes`), as a training
    loop's intermediates would anyway sit in the free lists between steps; the difference is that nothing else
    takes them meanwhile. They go back to the pool's free lists when the arena dies (its step is dropped: the
    jitted function is garbage-collected, or the step is recaptured for tensors that died) and when the pool
    trims on out-of-memory; a released arena takes buffers again at its next run."""

    def __init__(self, pool: BufferPool, sizes: Sequence[int]) -> None:
        self.pool, self.sizes, self.nbytes = pool, tuple(sizes), sum(sizes)
        self.buffers: Optional[list[Any]] = None
        pool._arenas.add(self)

    def take(self) -> list[Any]:
        """The arena's buffers (taken from the pool on the first run and after a release)."""
        buffers = self.buffers
        if buffers is None:
            pool = self.pool
            buffers = self.buffers = [pool.take(size) for size in self.sizes]
            pool.reserved_bytes += self.nbytes
        return buffers

    def release(self) -> None:
        """Give the buffers back to the pool's free lists (queued launches that use them still run first: the
        queue is in order)."""
        buffers, self.buffers = self.buffers, None
        if buffers is not None:
            for raw, size in zip(buffers, self.sizes):
                self.pool.give(raw, size)
            self.pool.reserved_bytes -= self.nbytes

    def __del__(self) -> None:
        self.release()


class PooledRuntime:
    """What a device runtime allocating through a BufferPool shares (OpenCL's and WebGPU's): allocation checked
    against the device's limits, and the pool's statistics. A runtime sets `pool` and `limits` and wraps a raw
    buffer in its own Buffer type (`_buffer`)."""

    pool: BufferPool
    limits: Any  # runtime.limits.MemoryLimits

    def _buffer(self, raw: Any, nbytes: int) -> Any:
        raise NotImplementedError

    def allocate(self, nbytes: int) -> Any:
        """Uninitialised device memory, from the pool when a freed buffer of the same size class is there."""
        if nbytes < 0:
            raise ValueError(f"cannot allocate {nbytes} bytes")
        self.limits.check_bytes(nbytes, "a buffer")
        return self._buffer(self.pool.acquire(nbytes), nbytes)

    def allocate_taken(self, size: int, nbytes: int) -> Any:
        """`allocate(nbytes)` for a program run: `size` is the pool's size class of `nbytes`, the limits were checked
        when the program was bound to this runtime (`execute.Executable`), the peak is published after the run."""
        return self._buffer(self.pool.take(size), nbytes)

    def memory_stats(self) -> dict[str, int]:
        """Bytes held by live buffers, the most ever held at once, bytes freed but kept for reuse, and the part of
        the held bytes that jitted steps keep reserved for their intermediates between calls (`Arena`)."""
        return {"current_bytes": self.pool.current_bytes, "peak_bytes": self.pool.peak_bytes,
                "pool_bytes": self.pool.pool_bytes, "reserved_bytes": self.pool.reserved_bytes}

    def reset_peak_memory(self) -> None:
        self.pool.reset_peak()

    def download(self, buffer: Any, shape: Any, numpy_dtype: Any) -> Any:
        raise NotImplementedError

    def download_all(self, requests: Any) -> list[Any]:
        """Several buffers' contents, (buffer, shape, numpy dtype) each, as new arrays. A runtime whose reads
        can share one wait (OpenCL's in-order queue) overrides this; one read after another is always right."""
        return [self.download(buffer, shape, numpy_dtype) for buffer, shape, numpy_dtype in requests]

    @staticmethod
    def _host_for(buffer: Any, shape: Any, numpy_dtype: Any) -> Any:
        """An empty numpy array to download `buffer` into (a ValueError if it holds fewer bytes)."""
        host = np.empty(tuple(shape), dtype=numpy_dtype)
        if host.nbytes > buffer.nbytes:
            raise ValueError(f"cannot read {host.nbytes} bytes ({shape}, {host.dtype}) from a {buffer.nbytes}-byte buffer")
        return host
