"""The OpenCL device's realize: hash the trace, reuse or build its Program, compile through the cache, run."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pyopencl as cl

from .. import counters as stats
from ..runtime.execute import run_program
from ..runtime.opencl import OpenCLBackend
from ..trace.hashing import signature
from ..trace.node import Node
from . import opencl_c as c
from .cache import default_cache
from .program import Program, build_program
from .program_store import default_program_store, program_key
from .schedule import DeviceTraits, schedule
from ..progress import compiling
from ..debug import logger


KERNELS_PER_BUILD = 8


class JitBackend:
    """Tensors in OpenCL buffers; traces scheduled into fused kernels (one Program per trace structure)."""

    replays_programs = True  # @zyx.jit captures steps on this device (program_for, run, copy)

    def __init__(self, cl_device: cl.Device):
        self.runtime = OpenCLBackend(cl_device)
        self.name = self.runtime.name
        self.programs: dict[str, Program] = {}
        self.traits = DeviceTraits.of(self.runtime)
        self._kernels: dict[str, cl.Kernel] = {}
        self._fresh: dict[str, cl.Program] = {}

    # ---- data movement -----------------------------------------------------------------------------------
    def upload(self, array: np.ndarray) -> Any:
        self._check_dtype(array.dtype)
        return self.runtime.upload(array)

    def download(self, buffer: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self.runtime.download(buffer, shape, dtype)

    def memory_stats(self) -> dict[str, int]:
        return self.runtime.memory_stats()

    def reset_peak_memory(self) -> None:
        self.runtime.reset_peak_memory()

    def copy(self, buffer: Any) -> Any:
        """A new buffer holding the same bytes (what a jitted step overwrites in place when others hold it)."""
        return self.runtime.copy(buffer)

    def synchronize(self) -> None:
        self.runtime.synchronize()

    def _check_dtype(self, dtype: np.dtype) -> None:
        if dtype == np.float64 and not self.runtime.supports_fp64:
            raise TypeError(f"{self.name} has no float64 support (cl_khr_fp64)")

    # ---- realization -------------------------------------------------------------------------------------
    def realize(self, targets: Sequence[Node], order: Optional[list[Node]] = None) -> list[Any]:
        key, leaves, rands = signature(targets, order)
        # Targets are stored and random tensors drawn whole (eager frameworks allocate both): one too large
        # fails here, before scheduling, instead of as a driver error or a kernel that runs for minutes.
        self.runtime.limits.check_nodes(list(targets) + rands)
        program = self.program_for(key, targets, leaves, rands)
        inputs = [leaf.buffer for leaf in leaves]
        if any(b is None for b in inputs):
            raise RuntimeError("a gradient needs the value of a tensor that was released; keep a reference to it "
                               "until its gradients are realized")
        return self.run(program, inputs, [r.arg for r in rands])

    def run(self, program: Program, inputs: Sequence[Any], rand_args: Sequence[tuple[int, int]]) -> list[Any]:
        self._compile_together([launch for launch in program.launches if launch.global_size[0]])
        kernels = [self.kernel(launch.source, launch.name) if launch.global_size[0] else None
                   for launch in program.launches]
        return run_program(self.runtime, program, kernels, inputs, rand_args,
                           on_first_launch=self._after_launch(program))

    def program_for(self, key: str, targets: Sequence[Node], leaves: Sequence[Node], rands: Sequence[Node],
                    in_place: Sequence[tuple[int, int]] = ()) -> Program:
        """The Program for a trace structure: from memory, else from disk, else scheduled (and stored)."""
        program = self.programs.get(key)
        if program is not None:
            stats.bump("schedule_cache_hits")
            return program
        disk_key = program_key(key, self.runtime.device, self.traits)
        program = default_program_store().load(disk_key, len(leaves), len(rands))
        if program is not None:
            stats.bump("programs_loaded")
        else:
            program = self._build(targets, leaves, rands, in_place)
            default_program_store().save(disk_key, program)
        program.name = key
        self._check_memory(program)
        self.programs[key] = program
        return program

    def _build(self, targets: Sequence[Node], leaves: Sequence[Node], rands: Sequence[Node],
               in_place: Sequence[tuple[int, int]]) -> Program:
        for node in targets:
            if node.dtype.name == "float64" and not self.runtime.supports_fp64:
                raise TypeError(f"{self.name} has no float64 support (cl_khr_fp64)")
        kernels, scheduled_targets = schedule(targets, self.traits)
        program = build_program(kernels, scheduled_targets, leaves, rands, in_place)
        stats.bump("graphs_scheduled")
        logger("zyx.schedule").debug("%d targets -> %d kernels: %s", len(targets), program.kernel_count,
                                     ", ".join(launch.name for launch in program.launches))
        return program

    def _check_memory(self, program: Program) -> None:
        """Every buffer the program allocates, and all it holds at once, fit the device (before any launch)."""
        limits = self.runtime.limits
        for slot, nbytes in enumerate(program.slot_bytes):
            limits.check_bytes(nbytes, f"buffer {slot} of a {program.kernel_count}-kernel program")
        limits.check_total(program.planned_peak_bytes, f"a {program.kernel_count}-kernel program")

    def kernel(self, source: str, name: str) -> cl.Kernel:
        """The compiled kernel for `source` (memory, then the persistent cache, then the compiler)."""
        kernel = self._kernels.get(source)
        if kernel is None:
            logger("zyx.schedule").debug("kernel %s:\n%s", name, source)
            built = default_cache().build(self.runtime.context, self.runtime.device, source)
            kernel = getattr(built, name)
            self._kernels[source] = kernel
            self._fresh[source] = built
        return kernel

    def _compile_together(self, launches: Sequence[Any]) -> None:
        """Build a program's missing kernels, KERNELS_PER_BUILD in each OpenCL program: a build's fixed cost
        (about 0.15 s on PoCL, more than compiling ten small kernels) is shared, and the progress bar moves
        after each build. The groups depend only on the program, so a warm run asks the cache for the same ones."""
        missing = list({launch.source: launch for launch in launches if launch.source not in self._kernels}.values())
        if len(missing) < 2:
            return
        groups = [missing[start:start + KERNELS_PER_BUILD] for start in range(0, len(missing), KERNELS_PER_BUILD)]
        with compiling(len(missing) if self._compiles_any(groups) else 0) as advance:
            for group in groups:
                self._build_group(group)
                advance(len(group))

    def _build_group(self, group: Sequence[Any]) -> None:
        if len(group) == 1:
            self.kernel(group[0].source, group[0].name)
            return
        combined = self._group_source(group)
        logger("zyx.schedule").debug("program of %d kernels:\n%s", len(group), combined)
        built = default_cache().build(self.runtime.context, self.runtime.device, combined)
        for launch in group:
            self._kernels[launch.source] = getattr(built, launch.name)
            self._fresh[launch.source] = built

    def _compiles_any(self, groups: Sequence[Sequence[Any]]) -> bool:
        """Whether building `groups` will run the compiler (some group is neither in memory nor on disk)."""
        cache = default_cache()
        return any(not cache.holds(self.runtime.device, self._group_source(group)) for group in groups)

    @staticmethod
    def _group_source(group: Sequence[Any]) -> str:
        return group[0].source if len(group) == 1 else c.combine_sources([launch.source for launch in group])

    def _after_launch(self, program: Program) -> Any:
        if not self._fresh:
            return None

        def commit(k: int) -> None:
            """Store a fresh binary once every kernel in it has run (PoCL then includes their compiled code),
            when the process exits: reading a binary is slow on PoCL."""
            built = self._fresh.pop(program.launches[k].source, None)
            if built is not None and not any(other is built for other in self._fresh.values()):
                default_cache().commit_later(built)
        return commit


