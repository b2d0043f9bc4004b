"""Running a Program: allocate each slot just in time, launch in order, free after the last reader."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import profiling
from .collectives import START


def run_program(backend: Any, program: Any, kernels: Sequence[Any], inputs: Sequence[Any],
                rand_args: Sequence[tuple[int, int]], on_first_launch: Any = None) -> list[Any]:
    """Output buffers of `program`; `kernels[k]` is the compiled kernel of launch k."""
    slots: list[Any] = [None] * len(program.slot_bytes)
    for output in program.outputs:
        if slots[output] is None and program.slot_bytes[output] == 0:
            slots[output] = backend.allocate(0)
    communicating: dict[int, Any] = {}  # result slot -> its collective, started and not yet finished
    for k, launch in enumerate(program.launches):
        for slot in program.allocs[k]:
            alias = program.aliases.get(slot)
            slots[slot] = inputs[alias] if alias is not None else backend.allocate(program.slot_bytes[slot])
        args = []
        for kind, index in launch.args:
            if kind == "input":
                args.append(inputs[index])
            elif kind == "slot":
                args.append(slots[index])
            elif kind == "seed":
                args.append(np.uint64(rand_args[index][0]))
            else:
                args.append(np.uint64(rand_args[index][1]))
        if launch.collective and launch.global_size[0] > 0:
            _collective_step(backend, launch, args, communicating)
        elif launch.global_size[0] > 0:
            event = backend.launch(kernels[k], launch.global_size, launch.local_size, args)
            if profiling.timing_wanted():
                profiling.record(profiling.KernelRecord(
                    backend, backend.name, launch.name, program.name[:12], launch.node, launch.global_size,
                    launch.local_size, launch.bytes_moved, launch.flops, event=event))
            if on_first_launch is not None:
                on_first_launch(k)
        for slot in program.frees[k]:
            slots[slot] = None
    return [slots[o] if slots[o] is not None else backend.allocate(0) for o in program.outputs]


def _collective_step(backend: Any, launch: Any, args: list[Any], communicating: dict[int, Any]) -> None:
    """A START hands its sources (one bucket) to the communication thread; the FINISH of the same result slot
    waits for it and writes the result (jit/collective.py places them)."""
    result_slot = launch.args[-1][1]
    if launch.name == START:
        communicating[result_slot] = backend.start_collective(args[:-1], launch.global_size[0], launch.collective)
    else:
        backend.finish_collective(communicating.pop(result_slot), args[0], launch.collective)
