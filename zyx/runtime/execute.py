"""Running a Program: allocate each slot just in time, launch in order, free after the last reader.

A Program is bound to its compiled kernels once (`Executable`): the kernel of each launch, its argument bindings
and its allocations are resolved then, so a run (a replayed step, a `.realize()` of a structure seen before) only
allocates, binds buffers and enqueues.
"""
from __future__ import annotations

import operator
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np

from . import profiling
from .collectives import START
from .. import counters as stats


class Step(NamedTuple):
    """One launch of a run, resolved (a run unpacks it as a plain tuple)."""

    kernel: Any                           # the compiled kernel, None for a collective step or an empty launch
    global_size: tuple[int, ...]
    local_size: Optional[tuple[int, ...]]
    arguments: Callable[[list[Any]], tuple]  # the kernel's arguments from the run's table
    takes: tuple[tuple[int, int], ...]    # (table position, size class) of internal slots taken from the pool
    allocs: tuple[tuple[int, int, int], ...]  # (slot, size class, bytes) of output slots allocated as Buffers
    gives: tuple[tuple[int, int], ...]    # (table position, size class) of internal slots given back after it
    drops: tuple[int, ...]                # output slots whose last reader this is
    collective: Any                       # the collective step's Launch, else None


class Executable:
    """A Program with `kernels[k]`, the compiled kernel of launch k, resolved for running many times.

    Every value a kernel takes lives in one table per run (inputs, then slots, then seeds, then offsets), so a
    launch's arguments are one `itemgetter` call over it; a slot that overwrites an input in place is that input's
    entry. Each step of a run is one precomputed tuple, so a run looks up no attribute or dict per launch: a
    replayed step launches dozens of kernels.
    """

    def __init__(self, program: Any, kernels: Sequence[Any], runtime: Any):
        """`runtime`: the PooledRuntime the runs will allocate from (its pool's size classes and its limits)."""
        self.program = program
        slot_bytes, aliases = program.slot_bytes, program.aliases
        for nbytes in set(slot_bytes):
            runtime.limits.check_bytes(nbytes, "a buffer")
        size_class = runtime.pool.size_class
        inputs = 1 + max([index for launch in program.launches for kind, index in launch.args if kind == "input"]
                         + list(aliases.values()), default=-1)
        rands = 1 + max((index for launch in program.launches for kind, index in launch.args
                         if kind in ("seed", "offset")), default=-1)
        self.first_slot, self.rands = inputs, rands
        self.slot_positions = [aliases.get(slot, inputs + slot) for slot in range(len(slot_bytes))]  # in the table
        self.bases = {"input": 0, "seed": inputs + len(slot_bytes), "offset": inputs + len(slot_bytes) + rands}
        self.blank = [None] * len(slot_bytes)  # the slots' part of a run's table, before allocation
        # Slots no one sees after the run (not an output, not an input overwritten in place) are raw pool buffers,
        # taken and given back by size class: a Buffer object, and giving it back when it dies, would cost more
        # than the launch. Outputs are Buffers (`allocate`), kept in `slots` until their last reader.
        internal = set(range(len(slot_bytes))) - set(program.outputs) - set(aliases)
        held = set(range(len(slot_bytes))) - internal - set(aliases)
        self.internal = [(inputs + slot, size_class(slot_bytes[slot])) for slot in sorted(internal)]
        freed = {slot for frees in program.frees for slot in frees}
        self.unfreed = [(position, size) for position, size in self.internal if position - inputs not in freed]
        self.steps = [self._step(launch, kernels[k], program.allocs[k], program.frees[k], internal, held, size_class)
                      for k, launch in enumerate(program.launches)]
        self.kernel_positions = [k for k, step in enumerate(self.steps) if step.kernel is not None]
        self.empty_outputs = [o for o in dict.fromkeys(program.outputs) if slot_bytes[o] == 0 and o in held]
        self.outputs = [(slot, aliases.get(slot)) for slot in program.outputs]  # (slot, the input it overwrites)

    def _step(self, launch: Any, kernel: Any, allocs: list[int], frees: list[int], internal: set[int],
              held: set[int], size_class: Callable[[int], int]) -> Step:
        """Launch `launch` as a run does it: its table positions and slot sizes resolved once."""
        first, slot_bytes = self.first_slot, self.program.slot_bytes
        return Step(
            kernel if launch.is_kernel else None, launch.global_size, launch.local_size,
            tuple_getter([self.slot_positions[index] if kind == "slot" else self.bases[kind] + index
                          for kind, index in launch.args]),
            tuple((first + slot, size_class(slot_bytes[slot])) for slot in allocs if slot in internal),
            tuple((slot, size_class(slot_bytes[slot]), slot_bytes[slot]) for slot in allocs if slot in held),
            tuple((first + slot, size_class(slot_bytes[slot])) for slot in frees if slot in internal),
            tuple(slot for slot in frees if slot in held),
            launch if launch.collective and launch.global_size[0] > 0 else None)

    def run(self, backend: Any, inputs: Sequence[Any], rand_args: Sequence[tuple[int, int]],
            on_first_launch: Optional[Callable[[int], None]] = None) -> list[Any]:
        """The output buffers; `backend` (the runtime bound) allocates and launches (`launcher`)."""
        allocate, allocate_taken, pool = backend.allocate, backend.allocate_taken, backend.pool
        take, give = pool.take, pool.give
        timed = profiling.timing_wanted()
        launch = backend.launcher(timed)
        if timed or on_first_launch is not None:
            launch = self._observed(launch, backend, timed, on_first_launch)
        first = self.first_slot
        slots: list[Any] = self.blank[:]  # Buffers of the held slots, until their last reader
        table: list[Any] = list(map(_raw, inputs[:first]))
        table += self.blank
        if self.rands:
            rand_args = rand_args[:self.rands]
            table += [np.uint64(seed) for seed, _ in rand_args] + [np.uint64(offset) for _, offset in rand_args]
        for output in self.empty_outputs:
            slots[output] = allocate(0)
        communicating: dict[int, Any] = {}  # result slot -> its collective, started and not yet finished
        try:
            for kernel, global_size, local_size, arguments, takes, allocs, gives, drops, collective in self.steps:
                for position, size in takes:
                    table[position] = take(size)
                for slot, size, nbytes in allocs:
                    buffer = slots[slot] = allocate_taken(size, nbytes)
                    table[first + slot] = buffer.raw
                if kernel is not None:
                    launch(kernel, global_size, local_size, arguments(table))
                elif collective is not None:
                    self._collective(backend, collective, table, inputs, communicating)
                for position, size in gives:
                    give(table[position], size)
                    table[position] = None
                for slot in drops:
                    slots[slot] = table[first + slot] = None
        except BaseException:  # what is queued still runs in order, before any later use of the pool
            self._give_back(table, give)
            raise
        for position, size in self.unfreed:  # internal slots no launch frees (none in a well-formed plan)
            if table[position] is not None:
                give(table[position], size)
        stats.set_max("peak_bytes", pool.peak_bytes)
        return [inputs[alias] if alias is not None else slots[slot] if slots[slot] is not None else allocate(0)
                for slot, alias in self.outputs]

    def _give_back(self, table: list[Any], give: Callable[[Any, int], None]) -> None:
        """Return the internal slots still held to the pool (after an error: a run gives each back after its last
        reader)."""
        for position, size in self.internal:
            if table[position] is not None:
                give(table[position], size)
                table[position] = None

    def _observed(self, launch: Callable, backend: Any, timed: bool,
                  on_first_launch: Optional[Callable[[int], None]]) -> Callable:
        """`launch`, also recording each kernel's event for the profiler (`timed`) and calling `on_first_launch`
        with the launch's index: kept off the plain run's loop."""
        positions = iter(self.kernel_positions)
        launches = self.program.launches

        def observed(kernel: Any, global_size: Any, local_size: Any, arguments: Any) -> Any:
            k = next(positions)
            event = launch(kernel, global_size, local_size, arguments)
            if timed:
                _record(backend, self.program, launches[k], event)
            if on_first_launch is not None:
                on_first_launch(k)
            return event
        return observed

    def _collective(self, backend: Any, step: Any, table: list[Any], inputs: Sequence[Any],
                    communicating: dict[int, Any]) -> None:
        """A START hands its sources (one bucket) to the communication thread; the FINISH of the same result slot
        waits for it and writes the result (jit/collective.py places them)."""
        positions, slot_bytes = self.slot_positions, self.program.slot_bytes
        if step.name == START:
            sources = [(table[positions[index]], slot_bytes[index]) if kind == "slot"
                       else (table[index], inputs[index].nbytes) for kind, index in step.args[:-1]]
            communicating[step.args[-1][1]] = backend.start_collective(sources, step.global_size[0], step.collective)
        else:
            result = step.args[0][1]
            backend.finish_collective(communicating.pop(result), table[positions[result]], step.collective)


_raw = operator.attrgetter("raw")  # a Buffer's driver buffer, what a kernel takes


def tuple_getter(positions: Sequence[int]) -> Callable[[Sequence[Any]], tuple]:
    """A function picking `positions` of a sequence as a tuple: `itemgetter` where it returns one (for one
    position it returns the bare item, and it cannot take none)."""
    if len(positions) > 1:
        return operator.itemgetter(*positions)
    return lambda items: tuple([items[p] for p in positions])


def _record(backend: Any, program: Any, launch: Any, event: Any) -> None:
    profiling.record(profiling.KernelRecord(
        backend, backend.name, launch.name, program.name[:12], launch.node, launch.global_size,
        launch.local_size, launch.bytes_moved, launch.flops, event=event))

