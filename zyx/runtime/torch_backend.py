"""zyx.Torch(): tensors in torch tensors, traces run as torch ops, for hardware where PyTorch is the fast path.

A realize hashes the trace by structure (as on OpenCL) and looks its program up in memory; a new structure is
built in one pass (`interpret.build` with `optimize`: one launch per op, products and their gradients as
einsum, a memory plan). The program then runs op by op through torch (`torch_arrays.py`), or, with
`compile=True` or a torch.compile mode (or ZYX_TORCH_COMPILE=1 or =MODE), as one `torch.compile`d function per
program: each program's first
run pays for Dynamo and Inductor (tens of seconds for a training step on a CPU; Inductor's own disk cache
shortens it in a later process, Dynamo's tracing stays), later runs only check guards.
"""
from __future__ import annotations

import os
import types
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from .. import counters as stats
from ..trace.hashing import signature
from ..trace.node import Node, toposort
from ..trace.philox import philox_words
from . import interpret, profiling
from .limits import MemoryLimits, host_limits
from .torch_arrays import TorchArrays, from_numpy, to_numpy
from .torch_memory import MemoryCounter, StorageTracker

COMPILE_VARIABLE = "ZYX_TORCH_COMPILE"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


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


def _limits(device: torch.device) -> MemoryLimits:
    if device.type != "cuda":
        return host_limits()
    total = torch.cuda.get_device_properties(device).total_memory
    return MemoryLimits(total, total, f"Torch('{device}')")


class TorchBackend:
    """Owns one torch device: buffers, program cache, memory accounting."""

    replays_programs = True  # @zyx.jit captures steps on this device (program_for, run, copy)

    def __init__(self, device: torch.device, compile: Optional[str] = None) -> None:
        self.torch_device = device
        self.compile = compile  # a torch.compile mode, or None to run op by op
        # the GPU's name, where there is one, lets the profiler find its peak (runtime/peak.py)
        self.name = f"{torch.cuda.get_device_name(device)} (torch:{device})" if device.type == "cuda" else \
            f"torch:{device}"
        self.arrays = TorchArrays(device)
        self.memory = MemoryCounter()
        self.limits = _limits(device)
        self.programs: dict[str, interpret.InterpretedProgram] = {}
        self._compiled: dict[str, Callable[..., list[Any]]] = {}

    def __repr__(self) -> str:
        return f"TorchBackend({str(self.torch_device)!r}, compile={self.compile!r})"

    # ---- data movement -----------------------------------------------------------------------------------
    def upload(self, array: np.ndarray) -> torch.Tensor:
        """A device tensor holding a copy of `array`."""
        host = from_numpy(np.ascontiguousarray(array).reshape(array.shape))
        buffer = host.to(self.torch_device, copy=True)
        self.memory.keep(buffer)
        return buffer

    def download(self, buffer: torch.Tensor, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The buffer's values as a new numpy array (waits for the work that computes them)."""
        return to_numpy(buffer.detach().reshape(shape).to("cpu", copy=True))

    def copy(self, buffer: torch.Tensor) -> torch.Tensor:
        """A new buffer with the same values."""
        duplicate = buffer.clone()
        self.memory.keep(duplicate)
        return duplicate

    def adopt(self, tensor: torch.Tensor) -> torch.Tensor:
        """A buffer of this device holding a copy of a torch tensor (from `zyx.from_torch`)."""
        buffer = tensor.detach().to(self.torch_device, copy=True).contiguous()
        self.memory.keep(buffer)
        return buffer

    def synchronize(self) -> None:
        """Wait for every kernel queued on the device (CUDA and MPS run asynchronously)."""
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)
        elif self.torch_device.type == "mps":
            torch.mps.synchronize()

    def memory_stats(self) -> dict[str, int]:
        """Bytes of zyx's buffers and intermediates now, and the peak (zyx's own count; torch's caching
        allocator holds more: torch.cuda.memory_reserved). zyx keeps no pool of its own."""
        return {"current_bytes": self.memory.current_bytes, "peak_bytes": self.memory.peak_bytes, "pool_bytes": 0}

    def reset_peak_memory(self) -> None:
        self.memory.reset_peak()

    # ---- realization -------------------------------------------------------------------------------------
    def realize(self, targets: Sequence[Node], order: Optional[list[Node]] = None) -> list[torch.Tensor]:
        order = toposort(targets) if order is None else order
        key, leaves, rands = signature(targets, order)
        program = self.program_for(key, targets, leaves, rands, order=order)
        if any(leaf.buffer is None for leaf in leaves):
            raise interpret.released_error()
        inputs, rand_args = [leaf.buffer for leaf in leaves], [rand.arg for rand in rands]
        if not profiling.timing_wanted():
            return self.run(program, inputs, rand_args)
        return interpret.profiled(self, "torch_program", key[:12], targets, order,
                                  lambda: self.run(program, inputs, rand_args))

    def program_for(self, key: str, targets: Sequence[Node], leaves: Sequence[Node], rands: Sequence[Node],
                    in_place: Sequence[tuple[int, int]] = (),
                    order: Optional[list[Node]] = None) -> interpret.InterpretedProgram:
        """The program for a trace structure, from memory or built (a program is one pass over the trace)."""
        program = self.programs.get(key)
        if program is not None:
            stats.bump("schedule_cache_hits")
            return program
        program = interpret.build(targets, toposort(targets) if order is None else order, optimize=True,
                                  in_place=in_place)
        self.limits.check_nodes(program.stored())
        program.name = key
        stats.bump("graphs_scheduled")
        self.programs[key] = program
        return program

    def run(self, program: interpret.InterpretedProgram, inputs: Sequence[torch.Tensor],
            rand_args: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """The program's output buffers on `inputs`; `rand_args`: (seed, offset) per random stream."""
        streams = [philox_words(seed, offset) for seed, offset in rand_args]
        stats.bump("kernels_launched", program.kernel_count)
        if self.compile:
            return self._run_compiled(program, inputs, streams)
        tracker = StorageTracker(self.memory, inputs)
        outputs = interpret.run(program, self.arrays, inputs, streams, tracker)
        tracker.finish(outputs)
        return outputs

    def _run_compiled(self, program: interpret.InterpretedProgram, inputs: Sequence[torch.Tensor],
                      streams: Sequence[tuple[int, int, int, int]]) -> list[torch.Tensor]:
        """The program as one compiled function; the random streams' words go in as a tensor (as Python ints,
        each new seed would compile again). With CUDA graphs ("reduce-overhead") the buffers it writes in place
        are marked static, and its outputs are copied out of the graph's memory, which the next replay reuses."""
        words = torch.tensor(streams, dtype=torch.int64).to(self.torch_device, non_blocking=True) if streams else []
        graphs = self.compile == "reduce-overhead"
        if graphs:
            for position in program.aliases.values():
                torch._dynamo.mark_static_address(inputs[position])
            torch.compiler.cudagraph_mark_step_begin()
        values = self._compiled_for(program)(list(inputs), list(words))
        if graphs:
            values = [value.clone() for value in values]
        outputs = interpret.store(program, self.arrays, inputs, values)
        for buffer in outputs:
            if all(buffer is not given for given in inputs):
                self.memory.keep(buffer)
        return outputs

    def _compiled_for(self, program: interpret.InterpretedProgram) -> Callable[..., list[Any]]:
        """`interpret.compute` for this one program under torch.compile. Dynamo caches compiled frames per code
        object, so each program gets a code object of its own (else every program would count against one
        function's recompile limit and the ninth would run uncompiled)."""
        compiled = self._compiled.get(program.name)
        if compiled is None:
            arrays = self.arrays

            def program_step(inputs: list[torch.Tensor], streams: list[torch.Tensor]) -> list[Any]:
                return interpret.compute(program, arrays, inputs, streams)

            code = program_step.__code__.replace(co_name=f"zyx_program_{program.name[:12]}")
            own = types.FunctionType(code, program_step.__globals__, code.co_name, None, program_step.__closure__)
            compiled = torch.compile(own, mode=self.compile, dynamic=False)
            self._compiled[program.name] = compiled
        return compiled


def describe_torch_devices() -> list[dict[str, Any]]:
    """One dict per device zyx.Torch() can use here (the host CPU, each CUDA device, MPS), for `zyx devices`."""
    rows = [{"backend": "torch", "spec": "torch:cpu", "device": "host CPU", "type": "CPU",
             "global_mem_bytes": host_limits().total_bytes}]
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        properties = torch.cuda.get_device_properties(index)
        rows.append({"backend": "torch", "spec": f"torch:cuda:{index}", "device": properties.name, "type": "GPU",
                     "global_mem_bytes": properties.total_memory})
    if torch.backends.mps.is_available():
        rows.append({"backend": "torch", "spec": "torch:mps", "device": "Apple MPS", "type": "GPU",
                     "global_mem_bytes": host_limits().total_bytes})
    return rows
