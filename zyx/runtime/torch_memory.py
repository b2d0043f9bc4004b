"""Memory accounting for zyx.Torch(): the bytes of the torch storages zyx holds, counted by zyx itself.

torch's CUDA allocator keeps its own statistics, but they include every tensor of the process and exist only on
CUDA; zyx counts its own buffers on every torch device alike, as it does its OpenCL buffers. A storage is
counted once however many views of it a program holds, from when a step makes it until the last slot holding
it is dropped; a stored buffer is counted until it is garbage-collected.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch

from .. import counters as stats
from .torch_arrays import storage_key


class MemoryCounter:
    """Bytes held now by one device's buffers and intermediates, and the most held at once. A kept buffer is
    followed by a weak reference whose callback releases its bytes (a plain `weakref.ref` held in a dict: a third
    of `weakref.finalize`'s cost, paid by every realize)."""

    def __init__(self) -> None:
        self.current_bytes = 0
        self.peak_bytes = 0
        # id of a kept buffer's reference -> (the reference, its storage's bytes): by id, as references to one
        # tensor compare by its elementwise ==
        self._kept: dict[int, tuple[weakref.ref, int]] = {}

    def allocate(self, nbytes: int) -> None:
        self.current_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        stats.bump("bytes_allocated", nbytes)
        stats.set_max("peak_bytes", self.peak_bytes)

    def release(self, nbytes: int) -> None:
        self.current_bytes -= nbytes

    def keep(self, buffer: torch.Tensor, counted: bool = False, nbytes: Optional[int] = None) -> None:
        """Count `buffer`'s storage (unless `counted` already; `nbytes`: its size, where known) until the buffer
        is garbage-collected."""
        if nbytes is None:
            nbytes = buffer.untyped_storage().nbytes()
        if not counted:
            self.allocate(nbytes)
        reference = weakref.ref(buffer, self._collected)
        self._kept[id(reference)] = reference, nbytes

    def _collected(self, reference: weakref.ref) -> None:
        self.current_bytes -= self._kept.pop(id(reference))[1]

    def reset_peak(self) -> None:
        self.peak_bytes = self.current_bytes

    def replay(self, account: "RunAccount", outputs: Sequence[torch.Tensor], kernels: int) -> None:
        """Count another run of the program `account` was measured on, whose outputs are `outputs`, launching
        `kernels` (zyx.stats' counts of the run are published here, in one call)."""
        peak = self.current_bytes + account.rise
        if peak > self.peak_bytes:
            self.peak_bytes = peak
        self.current_bytes += account.kept_bytes
        stats.note_run(self.peak_bytes, 0, kernels, account.allocated)
        for position, counted, nbytes in account.kept:
            self.keep(outputs[position], counted, nbytes)


@dataclass(frozen=True)
class RunAccount:
    """What one run of a program did to a MemoryCounter, measured by a StorageTracker. A program allocates the
    same storages, views and overwrites them alike on every run (its inputs are contiguous buffers of fixed
    layouts), so a replay counts these figures instead of following each slot again."""

    allocated: int                   # bytes of the storages the run made
    rise: int                        # the most bytes held at once above what was held before the run
    kept_bytes: int                  # bytes of the outputs' storages counted during the run (they stay counted)
    kept: tuple[tuple[int, bool, int], ...]  # per output that is not an input: (its position, counted during
    # the run (else made by `outputs`), its storage's bytes)


class StorageTracker:
    """One program run's accounting (a `program_code.Tracker`): each new storage counted once, released when the
    last slot holding it is dropped; the inputs' storages are counted already."""

    def __init__(self, counter: MemoryCounter, inputs: Iterable[torch.Tensor]) -> None:
        self.counter = counter
        self.start = counter.current_bytes
        self.allocated = self.rise = 0
        self.inputs = {storage_key(buffer) for buffer in inputs}
        self.live: dict[int, list[int]] = {}  # storage -> [bytes, slots holding it]
        self.slot_storage: dict[int, int] = {}

    def hold(self, slot: int, value: torch.Tensor, shares: Optional[int]) -> None:
        key = self.slot_storage.get(shares) if shares is not None else storage_key(value)
        if key is None or key in self.inputs:
            return  # a view of an input (or of a constant)
        entry = self.live.get(key)
        if entry is None:
            nbytes = value.untyped_storage().nbytes()
            self.counter.allocate(nbytes)
            self.allocated += nbytes
            self.rise = max(self.rise, self.counter.current_bytes - self.start)
            self.live[key] = [nbytes, 1]
        else:
            entry[1] += 1
        self.slot_storage[slot] = key

    def drop(self, slot: int) -> None:
        key = self.slot_storage.pop(slot, None)
        if key is None:
            return
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            del self.live[key]
            self.counter.release(entry[0])

    def finish(self, outputs: Iterable[torch.Tensor]) -> RunAccount:
        """The outputs' storages stay counted while they live; every other storage of the run is released.
        Returns the run's account, for `MemoryCounter.replay`."""
        kept: list[tuple[int, bool, int]] = []
        kept_bytes = 0
        for position, buffer in enumerate(outputs):
            key = storage_key(buffer)
            if key in self.inputs:
                continue
            entry = self.live.pop(key, None)
            nbytes = buffer.untyped_storage().nbytes()
            self.counter.keep(buffer, entry is not None, nbytes)
            # an output `outputs` made (a cast, a copy) while the run's own storages were still held
            self.rise = max(self.rise, self.counter.current_bytes - self.start)
            kept.append((position, entry is not None, nbytes))
            kept_bytes += entry[0] if entry is not None else 0
        for nbytes, _ in self.live.values():
            self.counter.release(nbytes)
        self.live.clear()
        return RunAccount(self.allocated, self.rise, kept_bytes, tuple(kept))
