"""A fusing device's realize: hash the trace, reuse or build its Program, compile its kernels, run.

`FusingBackend` is what OpenCL and WGPU share (programs, their disk store, memory checks); `JitBackend` builds
OpenCL kernels through the kernel cache, `wgpu_backend.WgpuJitBackend` WGSL pipelines."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pyopencl as cl

from .. import counters as stats
from ..runtime.execute import Executable
from ..runtime.opencl import OpenCLBackend
from ..trace.hashing import Walk
from ..trace.node import Node
from . import print_opencl as c
from .cache import default_cache
from .cache_key import device_fingerprint
from .choices import NO_TUNING, TunedChoices
from .program import Program, build_program
from .program_store import default_program_store, program_key
from .schedule import DeviceTraits, schedule
from .tune import Tuner, tune_mode
from .tune_store import default_tuning_store
from ..progress import compiling
from ..debug import logger


KERNELS_PER_BUILD = 8


class FusingBackend:
    """Tensors in device buffers; traces scheduled into fused kernels (one Program per trace structure).
    A subclass compiles and runs a program's kernels (`run`) and says what the device fingerprint is."""

    FLOAT64_NOTE = ""  # why a device may lack float64, for the error saying so

    def __init__(self, runtime: Any, traits: DeviceTraits):
        self.runtime = runtime
        self.name = runtime.name
        self.programs: dict[str, Program] = {}  # by structural hash (what the disk caches and @jit use)
        self._by_structure: dict[tuple, Program] = {}  # by Walk.structure: what a realize looks up
        self._executables: dict[int, Executable] = {}  # by id(program): programs live as long as `programs`
        self.traits = traits

    def forget_programs(self) -> None:
        """Drop the programs held in memory (the disk store keeps them): the next realize of each structure loads
        or schedules it, with the tuned choices and ZYX_TUNE of then."""
        self.programs.clear()
        self._by_structure.clear()
        self._executables.clear()

    def fingerprint(self) -> dict[str, str]:
        """The device and driver facts a persisted program is only valid for (cache_key.FINGERPRINT_NAMES)."""
        raise NotImplementedError

    def run(self, program: Program, inputs: Sequence[Any], rand_args: Sequence[tuple[int, int]]) -> list[Any]:
        """The program's output buffers: bound to its kernels once (`Executable`), then allocated and launched."""
        executable = self._executables.get(id(program))
        if executable is None or executable.program is not program:
            executable = self._executables[id(program)] = Executable(program, self._kernels_of(program), self.runtime)
        return executable.run(self.runtime, inputs, rand_args, on_first_launch=self._after_launch(program))

    def _kernels_of(self, program: Program) -> list[Any]:
        """The compiled kernel of each launch (None for a launch of no work-items), compiling what is missing."""
        raise NotImplementedError

    def _after_launch(self, program: Program) -> Any:
        """A callback for each launch's first run, or None."""
        return None

    # ---- data movement -----------------------------------------------------------------------------------
    def upload(self, array: np.ndarray) -> Any:
        self._check_dtype(array.dtype)
        return self.runtime.upload(array)

    def download(self, buffer: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self.runtime.download(buffer, shape, dtype)

    def memory_stats(self) -> dict[str, int]:
        return self.runtime.memory_stats()

    def synchronize(self) -> None:
        self.runtime.synchronize()

    def _check_dtype(self, dtype: np.dtype) -> None:
        if dtype == np.float64 and not self.runtime.supports_fp64:
            raise TypeError(f"{self.name} has no float64 support ({self.FLOAT64_NOTE})")

    # ---- realization -------------------------------------------------------------------------------------
    def realize(self, walk: Walk) -> list[Any]:
        """Buffers holding the values of the walk's roots: a structure seen before is looked up once, by its exact
        key; only a new one is hashed (for the disk caches), checked against the device and scheduled."""
        program = self._by_structure.get(walk.structure)
        if program is None:
            # Targets are stored and random tensors drawn whole (eager frameworks allocate both): one too large
            # fails here, before scheduling, instead of as a driver error or a kernel that runs for minutes.
            self.runtime.limits.check_nodes(walk.roots + walk.rands)
            program = self.program_for(walk.digest(), walk.roots, walk.leaves, walk.rands)
            self._by_structure[walk.structure] = program
        else:
            stats.bump("schedule_cache_hits")
        inputs = [leaf.buffer for leaf in walk.leaves]
        if None in inputs:
            raise RuntimeError("a gradient needs the value of a tensor that was released; keep a reference to it "
                               "until its gradients are realized")
        return self.run(program, inputs, [r.arg for r in walk.rands])

    def program_for(self, key: str, targets: Sequence[Node], leaves: Sequence[Node], rands: Sequence[Node],
                    in_place: Sequence[tuple[int, int]] = (), tune: int = 0) -> Program:
        """The Program for a trace structure: from memory, else from disk, else scheduled (and stored). With
        tuning on (ZYX_TUNE, or `tune`: see tune.py) only a program stored after a search as hard is loaded;
        else it is scheduled afresh, searching new kernels."""
        program = self.programs.get(key)
        if program is not None:
            stats.bump("schedule_cache_hits")
            return program
        mode = self._tune_mode(tune)
        program = self._load(key, len(leaves), len(rands), mode)
        if program is not None:
            stats.bump("programs_loaded")
        else:
            program = self._build(targets, leaves, rands, in_place, mode)
            for searched in {0, mode}:  # (keyed by the tuned choices a search found since)
                default_program_store().save(self._disk_key(key, searched), program)
        program.name = key
        self._check_memory(program)
        self.programs[key] = program
        return program

    def _load(self, key: str, inputs: int, rands: int, mode: int) -> Optional[Program]:
        """The stored program of the structure; under a search `mode`, one stored after a search of that mode or
        a harder one (its kernels were each searched, or timed under the threshold: none is searched again)."""
        for searched in range(mode, 3) if mode else (0,):
            program = default_program_store().load(self._disk_key(key, searched), inputs, rands)
            if program is not None:
                return program
        return None

    def _disk_key(self, key: str, searched: int = 0) -> str:
        """The program's key with the tuned choices of now; `searched`: the mode of the search it was stored after
        (0: any, or none)."""
        tuning = self.tuned.digest + (f" after ZYX_TUNE={searched}" if searched else "")
        return program_key(key, self.fingerprint(), self.traits, tuning)

    def _build(self, targets: Sequence[Node], leaves: Sequence[Node], rands: Sequence[Node],
               in_place: Sequence[tuple[int, int]], mode: int = 0) -> Program:
        self._check_graph(targets)
        kernels, scheduled_targets = schedule(targets, self.traits, self.tuned)
        if mode and self._search(kernels, mode):
            kernels, scheduled_targets = schedule(targets, self.traits, self.tuned)
        grouped = self.traits.group_launches and self.traits.language == "opencl"  # (WGSL: one kernel a launch)
        group_printer = c.print_group if grouped else None
        program = build_program(kernels, scheduled_targets, leaves, rands, in_place, group_printer,
                                self.traits.max_params)
        stats.bump("graphs_scheduled")
        logger("zyx.schedule").debug("%d targets -> %d kernels: %s", len(targets), program.kernel_count,
                                     ", ".join(launch.name for launch in program.launches))
        return program

    @property
    def tuned(self) -> TunedChoices:
        """The tuned choices this device's kernels are shaped with: none here (only OpenCL tunes: JitBackend)."""
        return NO_TUNING

    def _tune_mode(self, tune: int) -> int:
        """How hard this realize searches its kernels (see tune.tune_mode): never here, only OpenCL's kernels
        are tuned (the tuner compiles and times OpenCL launches: JitBackend)."""
        return 0

    def _search(self, kernels: Sequence[Any], mode: int) -> bool:
        """Search the kernels tuning asks for; whether any search found a choice (see JitBackend)."""
        return False

    def _check_graph(self, targets: Sequence[Node]) -> None:
        """Refuse, before scheduling, a trace the device cannot compute."""
        for node in targets:
            if node.dtype.name == "float64" and not self.runtime.supports_fp64:
                raise TypeError(f"{self.name} has no float64 support ({self.FLOAT64_NOTE})")

    def _check_memory(self, program: Program) -> None:
        """Every buffer the program allocates, and all it holds at once, fit the device (before any launch)."""
        limits = self.runtime.limits
        for slot, nbytes in enumerate(program.slot_bytes):
            limits.check_bytes(nbytes, f"buffer {slot} of a {program.kernel_count}-kernel program")
        limits.check_total(program.planned_peak_bytes, f"a {program.kernel_count}-kernel program")


class JitBackend(FusingBackend):
    """Tensors in OpenCL buffers; kernels built through the kernel cache, a few per OpenCL program."""

    FLOAT64_NOTE = "cl_khr_fp64"

    def __init__(self, cl_device: cl.Device):
        runtime = OpenCLBackend(cl_device)
        super().__init__(runtime, DeviceTraits.of(runtime))
        self._kernels: dict[str, cl.Kernel] = {}
        self._fresh: dict[str, cl.Program] = {}
        self._tuned: Optional[TunedChoices] = None
        self._tuner: Optional[Tuner] = None

    def fingerprint(self) -> dict[str, str]:
        return device_fingerprint(self.runtime.device)

    @property
    def tuned(self) -> TunedChoices:
        """The tuned choices stored for this device (read at first use), and those found since."""
        if self._tuned is None:
            self._tuned = default_tuning_store().choices(self.fingerprint())
        return self._tuned

    def _tune_mode(self, tune: int) -> int:
        return tune_mode(tune)

    def _search(self, kernels: Sequence[Any], mode: int) -> bool:
        """Search the kernels tuning asks for (tune.py); whether any search found a choice faster than the
        heuristics' (the programs in memory, scheduled without it, are then forgotten)."""
        if self._tuner is None:
            self._tuner = Tuner(self.runtime, self.traits)
        faster = [record for record in self._tuner.search(kernels, self.tuned, mode) if record.improves]
        for record in faster:
            self._tuned = self.tuned.with_choice(record.kernel, record.choice)
        if faster:
            self.forget_programs()
        return bool(faster)

    def _kernels_of(self, program: Program) -> list[Optional[cl.Kernel]]:
        """The compiled kernel of each launch (None for a launch of no work-items), compiling what is missing."""
        self._compile_together([launch for launch in program.launches if launch.is_kernel])
        return [self.kernel(launch.source, launch.name) if launch.is_kernel else None
                for launch in program.launches]

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
        (about 0.15 s on PoCL, more than compiling ten small kernels) is shared, the builds run side by side
        (`KernelCache.build_many`), and the progress bar moves as each one finishes. The groups depend only on
        the program, so a warm run asks the cache for the same ones."""
        missing = list({launch.source: launch for launch in launches if launch.source not in self._kernels}.values())
        if len(missing) < 2:
            return
        groups = [missing[start:start + KERNELS_PER_BUILD] for start in range(0, len(missing), KERNELS_PER_BUILD)]
        sources = [self._group_source(group) for group in groups]
        for group, source in zip(groups, sources):
            logger("zyx.schedule").debug("program of %d kernels:\n%s", len(group), source)
        with compiling(len(missing) if self._compiles_any(sources) else 0) as advance:
            built = default_cache().build_many(self.runtime.context, self.runtime.device, sources,
                                               on_built=lambda index: advance(len(groups[index])))
        for group, program in zip(groups, built):
            for launch in group:
                self._kernels[launch.source] = getattr(program, launch.name)
                self._fresh[launch.source] = program

    def _compiles_any(self, sources: Sequence[str]) -> bool:
        """Whether building `sources` will run the compiler (some is neither in memory nor on disk)."""
        cache = default_cache()
        return any(not cache.holds(self.runtime.device, source) for source in sources)

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


