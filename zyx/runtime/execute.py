"""Running a Program: allocate each slot just in time, launch in order, free after the last reader.

A Program is bound to its compiled kernels once (`Executable`): the kernel of each launch, its argument bindings
and its allocations are resolved then, so a run (a replayed step, a `.realize()` of a structure seen before) only
allocates, binds buffers and enqueues.
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Optional, Sequence

from . import profiling
from .run_code import Owner, arena_plan, bindable, write_run
from .. import counters as stats


class Executable:
    """A Program with `kernels[k]`, the compiled kernel of launch k, resolved for running many times.

    Every value a kernel takes is numbered once (inputs, then slots, then seeds, then offsets; a slot that
    overwrites an input in place is that input), and the run is written out as one straight-line Python
    function over those numbers (`run_code.write_run`): a replayed step launches dozens of kernels, and a run
    looks up no attribute, dict or step object per launch.
    """

    def __init__(self, program: Any, kernels: Sequence[Any], runtime: Any):
        """`runtime`: the PooledRuntime the runs will allocate from (its pool's size classes and its limits)."""
        self.program = program
        slot_bytes, aliases = program.slot_bytes, program.aliases
        for nbytes in set(slot_bytes):
            runtime.limits.check_bytes(nbytes, "a buffer")
        inputs = 1 + max([index for launch in program.launches for kind, index in launch.args if kind == "input"]
                         + list(aliases.values()), default=-1)
        rands = 1 + max((index for launch in program.launches for kind, index in launch.args
                         if kind in ("seed", "offset")), default=-1)
        # Slots no one sees after the run (not an output, not an input overwritten in place) are raw pool buffers,
        # taken and given back by size class: a Buffer object, and giving it back when it dies, would cost more
        # than the launch. Outputs are Buffers, but for the index checks the run hands its gate (run_code.py).
        checks = {program.outputs[target] for target in program.checks}
        internal = set(range(len(slot_bytes))) - (set(program.outputs) - checks) - set(aliases)
        slot_positions = [aliases.get(slot, inputs + slot) for slot in range(len(slot_bytes))]
        size_class = runtime.pool.size_class
        self._run = write_run(program, kernels, slot_positions, inputs, rands, size_class, internal)
        self._arena_numbers, self.arena_sizes = arena_plan(program, internal, size_class)
        self._arena_run = write_run(program, kernels, slot_positions, inputs, rands, size_class, internal,
                                    self._arena_numbers) if self.arena_sizes else self._run
        self._layout = (kernels, slot_positions, inputs, rands, size_class, internal)
        self.kernel_positions = [k for k, launch in enumerate(program.launches) if launch.is_kernel]
        self.launches_per_run = len(self.kernel_positions)
        # a launch group runs more kernels than one
        self.kernels_per_run = sum(program.launches[k].kernels for k in self.kernel_positions)

    def run(self, backend: Any, inputs: Sequence[Any], rand_args: Sequence[tuple[int, int]],
            on_first_launch: Optional[Callable[[int], None]] = None,
            gate: Optional[Callable[[], None]] = None, arena: Any = None) -> list[Any]:
        """The output buffers; `backend` (the runtime bound) allocates and launches (`launcher`). `gate` is called
        before the first launch that writes an input in place (see run_code.py); if it raises, so does the run.
        `arena`: a memory.Arena of `arena_sizes` (made by `backend.pool.arena`) holding the internal buffers, or
        None to take them from the pool's free lists."""
        timed = profiling.timing_wanted()
        launch = backend.launcher(timed)
        if timed or on_first_launch is not None:
            launch = self._observed(launch, backend, timed, on_first_launch)
        return self.run_launching(backend, launch, inputs, rand_args, gate, arena)

    def run_launching(self, backend: Any, launch: Any, inputs: Sequence[Any], rand_args: Sequence[tuple[int, int]],
                      gate: Optional[Callable[[], None]] = None, arena: Any = None) -> list[Any]:
        """`run` with its launch function given (`backend.launcher`'s): a replayed step looks it up once for the
        runs of both its programs (`FusingDevice.replay_launch`)."""
        pool = backend.pool
        if arena is None:
            outputs = self._run(inputs, rand_args, pool, backend.allocate_taken, backend.allocate, launch, backend,
                                gate, None)
        else:
            outputs = self._arena_run(inputs, rand_args, pool, backend.allocate_taken, backend.allocate, launch,
                                      backend, gate, arena.take())
        stats.note_run(pool.peak_bytes, self.launches_per_run, self.kernels_per_run)
        return outputs

    def bound_run(self, runtime: Any, arena: Any, unbound: Callable[..., list[Any]]) -> Optional[Callable[..., list[Any]]]:
        """A run launching kernels of its own that hold their arguments between calls (`runtime`: one with
        `own_kernel` and `held_arguments`; see run_code.py), for one replayed step's `arena` (a memory.Arena of
        `arena_sizes`, or None): a function of (inputs, rand_args, gate, launch), `launch` from
        `runtime.launcher(False)`, handing a call to `unbound` (same arguments) when `launch` has no `enqueue`.
        None where the run cannot hold its arguments (`run_code.bindable`)."""
        numbers = self._arena_numbers if arena is not None else {}
        kernels, slot_positions, inputs, rands, size_class, internal = self._layout
        if not bindable(self.program, internal, numbers):
            return None
        owner = Owner(runtime, arena.take if arena is not None else None, unbound, self.launches_per_run,
                      self.kernels_per_run)
        return write_run(self.program, kernels, slot_positions, inputs, rands, size_class, internal, numbers, owner)

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


def picker(positions: Sequence[int]) -> Callable[[Sequence[Any]], Sequence[Any]]:
    """A function picking `positions` of a sequence, at C speed: `itemgetter`'s tuple for several positions, and
    for one or none a slice of the sequence itself (`itemgetter` would return the bare item, and takes no empty
    list of positions)."""
    if len(positions) > 1:
        return operator.itemgetter(*positions)
    start = positions[0] if positions else 0
    return operator.itemgetter(slice(start, start + len(positions)))


def _record(backend: Any, program: Any, launch: Any, event: Any) -> None:
    profiling.record(profiling.KernelRecord(
        backend, backend.name, launch.name, program.name[:12], launch.node, launch.global_size,
        launch.local_size, launch.bytes_moved, launch.flops, event=event))

