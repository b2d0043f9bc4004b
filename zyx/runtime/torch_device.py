"""zyx.Torch(): tensors in torch tensors, traces run as torch ops, for hardware where PyTorch is the fast path.

A realize looks the trace's structure up in memory (`Walk.structure`, as on OpenCL); a new structure is built in
one pass (`interpret.build` with `optimize`: one launch per op, products and their gradients as matrix products,
a memory plan) and written out as one Python function making a bound torch call per step (`program_code.py`,
`torch_arrays.py`), or one torch._foreach_* call per group of steps running the same op on different buffers
(an optimizer's update chains: `foreach_groups.py`, `torch_foreach.py`), which every later run of the structure
replays; or, with `compile=True` or a
torch.compile mode (or ZYX_TORCH_COMPILE=1 or =MODE), as one `torch.compile`d function per program: each
program's first run pays for Dynamo and Inductor (tens of seconds for a training step on a CPU; Inductor's own
disk cache shortens it in a later process, Dynamo's tracing stays), later runs only check guards.
"""
from __future__ import annotations

import functools
import operator
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from .. import counters as stats
from ..trace.hashing import Walk
from ..trace.node import Node, toposort
from ..trace.ops import Op
from ..trace.philox import philox_words
from . import interpret, profiling, program_code
from .device import Device
from .limits import host_limits
from .torch_arrays import TorchArrays
from .torch_foreach import groupable
from .torch_memory import RunAccount, StorageTracker
from .torch_runtime import TorchRuntime

COMPILE_VARIABLE = "ZYX_TORCH_COMPILE"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
_is_none = functools.partial(operator.is_, None)


def compile_mode(compile: bool | str | None) -> Optional[str]:
    """The torch.compile mode `compile` asks for (None: run eagerly): True is "default", a string names a mode,
    and None reads ZYX_TORCH_COMPILE (1, true, yes, on: "default"; 0, false, no, off or unset: eager; else a mode)."""
    if compile is None:
        text = os.environ.get(COMPILE_VARIABLE, "").strip().lower()
        compile = True if text in ("1", "true", "yes", "on") else False if text in ("", "0", "false", "no", "off") \
            else text
    if compile is False:
        return None
    mode = "default" if compile is True else str(compile)
    if mode not in COMPILE_MODES:
        raise ValueError(f"zyx.Torch: compile={compile!r} is not a torch.compile mode ({', '.join(COMPILE_MODES)})")
    return mode


class TorchDevice(Device):
    """Programs of one torch device (its buffers and memory: `runtime`)."""

    def __init__(self, device: torch.device, compile: Optional[str] = None) -> None:
        option = "" if compile is None else ", compile=True" if compile == "default" else f", compile={compile!r}"
        suffix = "" if compile is None else "+compile" if compile == "default" else f"+compile={compile}"
        super().__init__("torch", f"Torch({str(device)!r}{option})", f"torch:{device}{suffix}")
        self.runtime = TorchRuntime(device)
        self.name = self.runtime.name
        self.compile = compile  # a torch.compile mode, or None to run op by op
        self.arrays = TorchArrays(device)
        self.programs: dict[Any, interpret.InterpretedProgram] = {}  # by Walk.structure, and by @jit's keys
        # by id(program) (programs live in `programs`): how each program run so far runs again; its
        # torch.compile'd function
        self._replays: dict[int, Replay] = {}
        self._compiled: dict[int, program_code.ProgramFunction] = {}

    @property
    def torch_device(self) -> torch.device:
        """The torch device the buffers live on."""
        return self.runtime.device

    # ---- realization -------------------------------------------------------------------------------------
    def realize_walk(self, walk: Walk) -> list[torch.Tensor]:
        """Buffers holding the values of the walk's roots; a structure seen before is found by its exact key."""
        program = self.programs.get(walk.structure)
        if program is None:
            program = self._build(walk.roots, walk.order)
            self.programs[walk.structure] = program
        else:
            stats.bump("schedule_cache_hits")
        inputs = walk.buffers()
        if any(map(_is_none, inputs)):  # (`None in` calls torch.Tensor.__eq__: slow)
            raise interpret.released_error()
        rand_args = walk.rand_args() if walk.rands else ()
        if not profiling.timing_wanted():
            return self.run(program, inputs, rand_args)
        return interpret.profiled(self, "torch_program", walk.digest()[:12], walk.roots, walk.order,
                                  lambda: self.run(program, inputs, rand_args))

    def program_for(self, key: str, targets: Sequence[Node], leaves: Sequence[Node], rands: Sequence[Node],
                    in_place: Sequence[tuple[int, int]] = (), tune: int = 0,
                    checks: Sequence[int] = ()) -> interpret.InterpretedProgram:
        """The program of a jitted step (`tune` asks nothing here: only OpenCL's kernels are tuned; no `checks` are
        asked for: the program runs as one piece, so a step computes its index checks in a program of their own)."""
        program = self.programs.get(key)
        if program is not None:
            stats.bump("schedule_cache_hits")
            return program
        program = self._build(targets, toposort(list(targets)), in_place)
        program.name = key
        self.programs[key] = program
        return program

    def _build(self, targets: Sequence[Node], order: Sequence[Node],
               in_place: Sequence[tuple[int, int]] = ()) -> interpret.InterpretedProgram:
        """A new program: one pass over the trace (`interpret.build`), checked against the device's memory."""
        if any(node.op is Op.COLLECTIVE for node in order):
            raise TypeError("zyx.Torch: zyx.distributed's collectives run on zyx.CPU() and zyx.OpenCL() (host "
                            "staging is written for those two); move the tensors there")
        program = interpret.build(targets, order, optimize=True, in_place=in_place, groupable=groupable)
        self.runtime.limits.check_nodes(program.stored())
        stats.bump("graphs_scheduled")
        return program

    def run(self, program: interpret.InterpretedProgram, inputs: Sequence[torch.Tensor],
            rand_args: Sequence[tuple[int, int]], gate: Optional[Callable[[], None]] = None) -> list[torch.Tensor]:
        """The program's output buffers on `inputs`; `rand_args`: (seed, offset) per random stream. The first run
        follows every storage for `zyx.memory_stats`; later runs count what it measured (`RunAccount`). `gate`
        (a replay's index checks) is called first: the program runs as one piece."""
        if gate is not None:
            gate()
        streams = [philox_words(seed, offset) for seed, offset in rand_args] if rand_args else ()
        replay = None if self.compile else self._replays.get(id(program))
        if replay is None:
            stats.bump("kernels_launched", program.kernel_count)
            if self.compile:
                return self._run_compiled(program, inputs, streams)
            return self._first_run(program, inputs, streams)
        with self.arrays.quiet():
            values = replay.program.run(inputs, streams)
            outputs = values if replay.outputs is None else replay.outputs(inputs, values)
        self.runtime.memory.replay(replay.account, outputs, program.kernel_count)
        return outputs

    def _first_run(self, program: interpret.InterpretedProgram, inputs: Sequence[torch.Tensor],
                   streams: Sequence[tuple[int, int, int, int]]) -> list[torch.Tensor]:
        """A program's first run: every storage followed (`StorageTracker`); how later runs replay it is kept."""
        with self.arrays.quiet():
            generated = program_code.generate(program, self.arrays, program.evaluators)
            tracker = StorageTracker(self.runtime.memory, inputs)
            values = generated.tracked(inputs, streams, tracker)
            outputs = interpret.store(program, self.arrays, inputs, values)
            generated.settle()
        self._replays[id(program)] = Replay(generated, tracker.finish(outputs),
                                            _output_picker(program, self.arrays, values, outputs))
        return outputs

    def _run_compiled(self, program: interpret.InterpretedProgram, inputs: Sequence[torch.Tensor],
                      streams: Sequence[tuple[int, int, int, int]]) -> list[torch.Tensor]:
        """The program as one compiled function; the random streams' words go in as a tensor (as Python ints,
        each new seed would compile again). With CUDA graphs ("reduce-overhead") the buffers it writes in place
        are marked static, and its outputs are copied out of the graph's memory, which the next replay reuses."""
        words = torch.tensor(streams, dtype=torch.int64).to(self.runtime.device, non_blocking=True) if streams else []
        graphs = self.compile == "reduce-overhead"
        if graphs:
            for position in program.aliases.values():
                torch._dynamo.mark_static_address(inputs[position])
            torch.compiler.cudagraph_mark_step_begin()
        with self.arrays.quiet():
            values = self._compiled_for(program)(list(inputs), list(words))
        if graphs:
            values = [value.clone() for value in values]
        outputs = interpret.store(program, self.arrays, inputs, values)
        for buffer in outputs:
            if all(buffer is not given for given in inputs):
                self.runtime.memory.keep(buffer)
        return outputs

    def _compiled_for(self, program: interpret.InterpretedProgram) -> program_code.ProgramFunction:
        """The program's generated function (`program_code.py`) under torch.compile. Dynamo caches compiled
        frames per code object, and each program's function is a code object of its own (one function for
        all would count every program against its recompile limit, and the ninth would run uncompiled)."""
        compiled = self._compiled.get(id(program))
        if compiled is None:
            generated = program_code.generate(program, self.arrays, program.evaluators)
            compiled = torch.compile(generated.run, mode=self.compile, dynamic=False)
            self._compiled[id(program)] = compiled
        return compiled


@dataclass(frozen=True)
class Replay:
    """How a program runs again after its first run: its generated functions (`program_code.py`), the memory
    account of the first run (`RunAccount`), and how to make the output buffers from the values and the inputs
    (None: the values are the outputs; `_output_picker`)."""

    program: program_code.GeneratedProgram  # its `run` replays
    account: RunAccount
    outputs: Optional[Callable[[Sequence[torch.Tensor], list[torch.Tensor]], list[torch.Tensor]]]


def _output_picker(program: interpret.InterpretedProgram, arrays: TorchArrays, values: Sequence[torch.Tensor],
                   outputs: Sequence[torch.Tensor]) -> Optional[Callable[..., list[torch.Tensor]]]:
    """`Replay.outputs`. Where `interpret.store` kept each value as it was (in its dtype and shape, contiguous,
    sharing no input's memory nor another output's), later runs would store each as it is too: a program's values
    have the same dtypes and layouts on every run, and share memory with the same slots. Then None where the values
    are the outputs, else a pick from the inputs (those written in place) and the values; elsewhere
    `interpret.store` again."""
    computed = [buffer for slot, buffer in zip(program.outputs, outputs) if slot not in program.aliases]
    if len(computed) != len(values) or any(buffer is not value for buffer, value in zip(computed, values)):
        return lambda inputs, values: interpret.store(program, arrays, inputs, values)
    if not program.aliases:
        return None
    picks, index = [], 0
    for slot in program.outputs:
        if slot in program.aliases:
            picks.append((True, program.aliases[slot]))
        else:
            picks.append((False, index))
            index += 1
    return lambda inputs, values: [inputs[k] if written else values[k] for written, k in picks]


def describe_torch_devices() -> list[dict[str, Any]]:
    """One dict per device zyx.Torch() can use here (the host CPU, each CUDA device, MPS), for `zyx devices`."""
    rows = [{"kind": "torch", "spec": "torch:cpu", "device": "host CPU", "type": "CPU",
             "global_mem_bytes": host_limits().total_bytes}]
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        properties = torch.cuda.get_device_properties(index)
        rows.append({"kind": "torch", "spec": f"torch:cuda:{index}", "device": properties.name, "type": "GPU",
                     "global_mem_bytes": properties.total_memory})
    if torch.backends.mps.is_available():
        rows.append({"kind": "torch", "spec": "torch:mps", "device": "Apple MPS", "type": "GPU",
                     "global_mem_bytes": host_limits().total_bytes})
    return rows
