"""A pool of device buffers, reused by size, so a training step does not call the driver for every tensor.

Device allocation is slow and fragments memory; a step of a model asks for the same sizes again and again.
The pool keeps freed buffers in per-size free lists and hands them back for the next request of that size.
It is generic over the allocator, so it is tested without a device.

Single-threaded by design: release may run from a garbage-collection finalizer, but only in the owning thread.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

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
    ) -> None:
        self._allocator = allocator
        self._granularity = granularity
        self._is_out_of_memory = is_out_of_memory
        self._free: dict[int, list[RawBuffer]] = {}
        self.current_bytes = 0
        self.peak_bytes = 0
        self.pool_bytes = 0

    def size_class(self, nbytes: int) -> int:
        """The size actually allocated: at least one byte, rounded up to the granularity."""
        granularity = self._granularity
        return (-(-nbytes // granularity) or 1) * granularity

    def acquire(self, nbytes: int) -> RawBuffer:
        """A buffer of size_class(nbytes) bytes: a freed one if any, else a new one (trimming on out-of-memory)."""
        size = self.size_class(nbytes)
        free_list = self._free.get(size)
        if free_list:
            raw = free_list.pop()
            self.pool_bytes -= size
        else:
            raw = self._allocate_new(size)
        current = self.current_bytes = self.current_bytes + size
        if current > self.peak_bytes:
            self.peak_bytes = current
        stats.set_max("peak_bytes", self.peak_bytes)
        return raw

    def release(self, raw: RawBuffer, nbytes: int) -> None:
        """Takes back a buffer acquired for nbytes; it waits in the pool for a request of the same size."""
        size = self.size_class(nbytes)
        free_list = self._free.get(size)
        if free_list is None:
            free_list = self._free[size] = []
        free_list.append(raw)
        self.current_bytes -= size
        self.pool_bytes += size

    def trim(self) -> int:
        """Drops every pooled buffer (the driver frees them once unreferenced); returns the bytes given back."""
        freed = self.pool_bytes
        self._free.clear()
        self.pool_bytes = 0
        return freed

    def reset_peak(self) -> None:
        """Starts a new peak measurement from what is live now."""
        self.peak_bytes = self.current_bytes

    def _allocate_new(self, size: int) -> RawBuffer:
        try:
            raw = self._allocator(size)
        except Exception as error:
            if not self._is_out_of_memory(error) or self.pool_bytes == 0:
                raise
            self.trim()
            raw = self._allocator(size)
        stats.bump("bytes_allocated", size)
        return raw
