"""A fusing device's realize: hash the trace, reuse or build its Program, compile its kernels, run.

`FusingDevice` is what OpenCL and WGPU share (programs, their disk store, memory checks); `OpenCLDevice`
(opencl_device.py) builds OpenCL kernels through the kernel cache, `WgpuDevice` (wgpu_device.py) WGSL pipelines."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .. import counters as stats
from ..debug import logger
from ..jit.choices import NO_TUNING, TunedChoices
from ..jit.program import Program, build_program
from ..jit.program_store import default_program_store, program_key
from ..jit.device_traits import DeviceTraits
from ..precision import tf32_allowed
from ..trace.hashing import Walk
from ..trace.node import Node
from . import profiling
from .device import Device
from .execute import Executable


FILLING_GROUPS = 512  # work groups that fill a large GPU (the H200: 132 compute units, 4 groups each)


class FusingDevice(Device):
    """Tensors in device buffers; traces scheduled into fused kernels (one Program per trace structure).
    A subclass compiles and runs a program's kernels (`run`) and says what the device fingerprint is."""

    FLOAT64_NOTE = ""  # why a device may lack float64, for the error saying so

    def __init__(self, kind: str, label: str, spec: str, runtime: Any, traits: DeviceTraits):
        super().__init__(kind, label, spec)
        self.runtime = runtime
        self.name = runtime.name
        self.programs: dict[str, Program] = {}  # by structural hash (what the disk caches and @jit use)
        self._by_structure: dict[int, Program] = {}  # by Walk.structure: what a realize looks up
        self._executables: dict[int, Executable] = {}  # by id(program): programs live as long as `programs`
        self.traits = traits
        self._tf32 = False  # whether the programs held were scheduled with TF32 products (see `_shaping_traits`)

    def forget_programs(self) -> None:
        """Drop the programs held in memory (the disk store keeps them): the next realize of each structure loads
        or schedules it, with the tuned choices and ZYX_TUNE of then."""
        self.programs.clear()
        self._by_structure.clear()
        self._executables.clear()

    def fingerprint(self) -> dict[str, str]:
        """The device and driver facts a persisted program is only valid for (cache_key.FINGERPRINT_NAMES)."""
        raise NotImplementedError

    def run(self, program: Program, inputs: Sequence[Any], rand_args: Sequence[tuple[int, int]],
            gate: Optional[Callable[[], None]] = None) -> list[Any]:
        """The program's output buffers: bound to its kernels once (`Executable`), then allocated and launched;
        `gate` is called before the first launch that writes an input in place (`Executable.run`)."""
        return self._executable(program).run(self.runtime, inputs, rand_args,
                                             on_first_launch=self._after_launch(program, inputs), gate=gate)

    def replay_run(self, program: Program, arena: Any = None) -> Callable[..., list[Any]]:
        """`run` of a jitted step's `program` bound once: a function of (inputs, rand_args, gate, launch) whose
        intermediates take `arena`'s buffers (`replay_arena`'s; None: the pool's), launched by `launch`
        (`replay_launch`'s, shared by a replay's runs; None: looked up as `run` does). Where the runtime can give
        the step kernels of its own (`own_kernel`: OpenCL), they hold their arguments between calls
        (`Executable.bound_run`), launched by `launch.enqueue`; a launch function without one (a wrapper that
        records or times each launch with its arguments, as bench/ and replay.py install) gets every launch."""
        executable, runtime = self._executable(program), self.runtime

        def unbound(inputs: Sequence[Any], rand_args: Sequence[tuple[int, int]], gate: Optional[Callable[[], None]],
                    launch: Any) -> list[Any]:
            if launch is None:
                return executable.run(runtime, inputs, rand_args, self._after_launch(program, inputs), gate, arena)
            return executable.run_launching(runtime, launch, inputs, rand_args, gate, arena)
        bound = executable.bound_run(runtime, arena, unbound) if hasattr(runtime, "own_kernel") else None
        return bound or unbound

    def replay_arena(self, program: Program) -> Any:
        """A memory.Arena for the intermediates of `program`'s runs, for a jitted step that replays it: None when
        it has none, or when the arenas of the device would then plan more than their share of its memory."""
        sizes = self._executable(program).arena_sizes
        return self.runtime.pool.arena(sizes) if sizes else None

    def replay_launch(self) -> Any:
        """One launch function for the runs of a replayed step (`replay_run`'s `launch`), or None where each run
        looks up its own: a profiler times the launches, or a fresh kernel's first launch is watched
        (`_after_launch`)."""
        if profiling.timing_wanted() or self._watches_launches():
            return None
        return self.runtime.launcher(False)

    def _watches_launches(self) -> bool:
        """Whether `_after_launch` gives a callback now."""
        return False

    def _executable(self, program: Program) -> Executable:
        executable = self._executables.get(id(program))
        if executable is None or executable.program is not program:
            executable = self._executables[id(program)] = Executable(program, self._kernels_of(program), self.runtime)
        return executable

    def _kernels_of(self, program: Program) -> list[Any]:
        """The compiled kernel of each launch (None for a launch of no work-items), compiling what is missing."""
        raise NotImplementedError

    def _after_launch(self, program: Program, inputs: Sequence[Any]) -> Any:
        """A callback for each launch's first run, or None; called as a run of `program` on `inputs` starts."""
        return None

    # ---- data movement (the runtime's) -------------------------------------------------------------------
    def upload(self, array: np.ndarray) -> Any:
        self._check_dtype(array.dtype)
        return self.runtime.upload(array)

    def _check_dtype(self, dtype: np.dtype) -> None:
        if dtype == np.float64 and not self.runtime.supports_fp64:
            raise TypeError(f"{self.name} has no float64 support ({self.FLOAT64_NOTE})")

    # ---- realization -------------------------------------------------------------------------------------
    def realize_walk(self, walk: Walk) -> list[Any]:
        """Buffers holding the values of the walk's roots: a structure seen before is looked up once, by its exact
        key; only a new one is hashed (for the disk caches), checked against the device and scheduled."""
        self._follow_precision()
        program = self._by_structure.get(walk.structure)
        if program is None:
            # Targets are stored and random tensors drawn whole (eager frameworks allocate both): one too large
            # fails here, before scheduling, instead of as a driver error or a kernel that runs for minutes.
            self.runtime.limits.check_nodes(walk.roots + walk.rands)
            program = self.program_for(walk.digest(), walk.roots, walk.leaves, walk.rands)
            self._by_structure[walk.structure] = program
        else:
            stats.bump("schedule_cache_hits")
        inputs = walk.buffers()
        if None in inputs:
            raise RuntimeError("a gradient needs the value of a tensor that was released; keep a reference to it "
                               "until its gradients are realized")
        return self.run(program, inputs, walk.rand_args())

    def program_for(self, key: str, targets: Sequence[Node], leaves: Sequence[Node], rands: Sequence[Node],
                    in_place: Sequence[tuple[int, int]] = (), tune: int = 0, checks: Sequence[int] = ()) -> Program:
        """The Program for a trace structure: from memory, else from disk, else scheduled (and stored). With
        tuning on (ZYX_TUNE, or `tune`: see tune.py) only a program stored after a search as hard is loaded;
        else it is scheduled afresh, searching new kernels. `checks`: the targets that are a jitted step's index
        checks (`build_program`; `key` names them)."""
        self._follow_precision()
        program = self.programs.get(key)
        if program is not None:
            stats.bump("schedule_cache_hits")
            return program
        mode = self._tune_mode(tune)
        program = self._load(key, len(leaves), len(rands), mode)
        if program is not None:
            stats.bump("programs_loaded")
        else:
            program = self._build(targets, leaves, rands, in_place, mode, checks)
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
        return program_key(key, self.fingerprint(), self._shaping_traits(), tuning)

    def _build(self, targets: Sequence[Node], leaves: Sequence[Node], rands: Sequence[Node],
               in_place: Sequence[tuple[int, int]], mode: int = 0, checks: Sequence[int] = ()) -> Program:
        from ..jit import print_opencl  # (the scheduler's modules: a warm process loads its programs instead)
        from ..jit.launch_groups import Grouping
        from ..jit.schedule import schedule
        self._check_graph(targets)
        self._before_scheduling()
        traits = self._shaping_traits()
        grouped = self.traits.group_launches and self.traits.language == "opencl"  # (WGSL: one kernel a launch)
        on_gpu = self.traits.gpu and getattr(self.runtime, "is_gpu", False)  # (not GPU-shaped kernels on PoCL)
        grouping = Grouping(print_opencl.print_group, self.traits.max_params, self.traits.local_memory,
                            any_size=self.traits.gpu, fills_device=self._groups_filling(),
                            longest_first=on_gpu) if grouped else None

        def program_with(tuned: TunedChoices) -> Program:
            kernels, scheduled_targets = schedule(targets, traits, tuned)
            return build_program(kernels, scheduled_targets, leaves, rands, in_place, grouping, checks,
                                 reuse_buffers=self.traits.language == "opencl")

        if mode:
            self._search(schedule(targets, traits, self.tuned)[0], mode, program_with, leaves, rands)
        program = program_with(self.tuned)
        stats.bump("graphs_scheduled")
        logger("zyx.schedule").debug("%d targets -> %d kernels: %s", len(targets), program.kernel_count,
                                     ", ".join(launch.name for launch in program.launches))
        return program

    def _before_scheduling(self) -> None:
        """Called as a program is about to be scheduled (it was neither in memory nor on disk)."""

    def _follow_precision(self) -> None:
        """Drop the programs held when the float32 product precision changed since they were scheduled."""
        if self._tf32 != (tf32_allowed() and bool(self.traits.tensor_cores)):
            self.forget_programs()
            self._tf32 = not self._tf32

    def _groups_filling(self) -> int:
        """Work groups that fill this device alone (4 a compute unit, at least FILLING_GROUPS: a large GPU's)."""
        return max(FILLING_GROUPS, 4 * getattr(self.runtime, "compute_units", 0))

    def _shaping_traits(self) -> DeviceTraits:
        """The traits kernels are shaped with now: the device's, with TF32 products where the user allows them
        (`zyx.set_float32_matmul_precision`) and the device has tensor cores."""
        if tf32_allowed() and self.traits.tensor_cores:
            return dataclasses.replace(self.traits, tensor_cores=(*self.traits.tensor_cores, "tf32"))
        return self.traits

    @property
    def tuned(self) -> TunedChoices:
        """The tuned choices this device's kernels are shaped with: none here (only OpenCL tunes: OpenCLDevice)."""
        return NO_TUNING

    def _tune_mode(self, tune: int) -> int:
        """How hard this realize searches its kernels (see tuning_mode.tune_mode): never here, only OpenCL's kernels
        are tuned (the tuner compiles and times OpenCL launches: OpenCLDevice)."""
        return 0

    def _search(self, kernels: Sequence[Any], mode: int, program_with: Callable[[TunedChoices], Program],
                leaves: Sequence[Node], rands: Sequence[Node]) -> None:
        """Search the kernels tuning asks for, keeping what makes their step faster (see OpenCLDevice)."""

    def _check_graph(self, targets: Sequence[Node]) -> None:
        """Refuse, before scheduling, a trace the device cannot compute."""
        for node in targets:
            self._check_dtype(node.dtype.np)

    def _check_memory(self, program: Program) -> None:
        """Every buffer the program allocates, and all it holds at once, fit the device (before any launch)."""
        limits, what = self.runtime.limits, f"a {program.kernel_count}-kernel program"
        for slot, nbytes in enumerate(program.slot_bytes):
            limits.check_bytes(nbytes, f"buffer {slot} of {what}")
        limits.check_total(program.planned_peak_bytes, what)
