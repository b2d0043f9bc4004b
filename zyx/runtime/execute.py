"""Running a Program: allocate each slot just in time, launch in order, free after the last reader.

A Program is bound to its compiled kernels once (`Executable`): the kernel of each launch, its argument bindings
and its allocations are resolved then, so a run (a replayed step, a `.realize()` of a structure seen before) only
allocates, binds buffers and enqueues.
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Optional, Sequence

import numpy as np

from . import profiling
from .collectives import START


class Executable:
    """A Program with `kernels[k]`, the compiled kernel of launch k, resolved for running many times.

    Every value a kernel takes lives in one table per run (inputs, then slots, then seeds, then offsets), so a
    launch's arguments are one `itemgetter` call over it.
    """

    def __init__(self, program: Any, kernels: Sequence[Any]):
        self.program = program
        inputs = 1 + max((index for launch in program.launches for kind, index in launch.args if kind == "input"),
                         default=-1)
        rands = 1 + max((index for launch in program.launches for kind, index in launch.args
                         if kind in ("seed", "offset")), default=-1)
        self.first_slot, self.rands = inputs, rands
        base = {"input": 0, "slot": inputs, "seed": inputs + len(program.slot_bytes),
                "offset": inputs + len(program.slot_bytes) + rands}
        # Slots no one sees after the run (not an output, not an input overwritten in place) are raw pool buffers:
        # a Buffer object, and giving it back when it dies, would cost more than the launch.
        internal = set(range(len(program.slot_bytes))) - set(program.outputs) - set(program.aliases)
        self.steps = []  # (kernel or None for an empty launch, global, local, allocs, arguments, frees, Launch)
        for k, launch in enumerate(program.launches):
            positions = [base[kind] + index for kind, index in launch.args]
            arguments = operator.itemgetter(*positions) if len(positions) > 1 else _single(positions)
            allocs = tuple((slot, program.slot_bytes[slot], program.aliases.get(slot), slot in internal)
                           for slot in program.allocs[k])
            self.steps.append((kernels[k] if launch.is_kernel else None, launch.global_size,
                               launch.local_size, allocs, arguments, tuple(program.frees[k]), launch))
        self.empty_outputs = [o for o in dict.fromkeys(program.outputs) if program.slot_bytes[o] == 0]

    def run(self, backend: Any, inputs: Sequence[Any], rand_args: Sequence[tuple[int, int]],
            on_first_launch: Optional[Callable[[int], None]] = None) -> list[Any]:
        """The output buffers; `backend` allocates (`allocate`) and launches (`launcher`)."""
        allocate, pool = backend.allocate, backend.pool
        timed = profiling.timing_wanted()
        launch = backend.launcher(timed)
        first, slot_bytes = self.first_slot, self.program.slot_bytes
        slots: list[Any] = [None] * len(slot_bytes)  # Buffers of the other slots, held until their last reader
        table: list[Any] = [buffer.raw for buffer in inputs[:first]]  # those some kernel reads
        table += [None] * len(slots)
        rand_args = rand_args[:self.rands]
        table += [np.uint64(seed) for seed, _ in rand_args] + [np.uint64(offset) for _, offset in rand_args]
        for output in self.empty_outputs:
            slots[output] = allocate(0)
        internal: dict[int, Any] = {}  # slot -> its raw buffer, until it is given back to the pool
        communicating: dict[int, Any] = {}  # result slot -> its collective, started and not yet finished
        try:
            for k, (kernel, global_size, local_size, allocs, arguments, frees, step) in enumerate(self.steps):
                for slot, nbytes, alias, raw in allocs:
                    if raw:
                        table[first + slot] = internal[slot] = pool.acquire(nbytes)
                    else:
                        buffer = slots[slot] = inputs[alias] if alias is not None else allocate(nbytes)
                        table[first + slot] = buffer.raw
                if kernel is not None:
                    event = launch(kernel, global_size, local_size, arguments(table))
                    if timed:
                        _record(backend, self.program, step, event)
                    if on_first_launch is not None:
                        on_first_launch(k)
                elif step.collective and global_size[0] > 0:
                    self._collective(backend, step, table, inputs, communicating)
                for slot in frees:
                    if slot in internal:
                        pool.release(internal.pop(slot), slot_bytes[slot])
                    slots[slot] = table[first + slot] = None
        finally:  # after an error too: what is queued still runs in order, before any later use of the pool
            for slot, raw in internal.items():
                pool.release(raw, slot_bytes[slot])
        return [slots[o] if slots[o] is not None else allocate(0) for o in self.program.outputs]

    def _collective(self, backend: Any, step: Any, table: list[Any], inputs: Sequence[Any],
                    communicating: dict[int, Any]) -> None:
        """A START hands its sources (one bucket) to the communication thread; the FINISH of the same result slot
        waits for it and writes the result (jit/collective.py places them)."""
        first, slot_bytes = self.first_slot, self.program.slot_bytes
        if step.name == START:
            sources = [(table[first + index], slot_bytes[index]) if kind == "slot"
                       else (table[index], inputs[index].nbytes) for kind, index in step.args[:-1]]
            communicating[step.args[-1][1]] = backend.start_collective(sources, step.global_size[0], step.collective)
        else:
            result = step.args[0][1]
            backend.finish_collective(communicating.pop(result), table[first + result], step.collective)


def _single(positions: list[int]) -> Callable[[list[Any]], tuple]:
    """An argument getter for a kernel of one parameter or none (itemgetter returns a bare item for one)."""
    return lambda table: tuple(table[p] for p in positions)


def _record(backend: Any, program: Any, launch: Any, event: Any) -> None:
    profiling.record(profiling.KernelRecord(
        backend, backend.name, launch.name, program.name[:12], launch.node, launch.global_size,
        launch.local_size, launch.bytes_moved, launch.flops, event=event))
