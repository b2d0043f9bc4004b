"""zyx.OpenCL(): a fusing device on one OpenCL device; its kernels built through the kernel cache, a few per
OpenCL program, and tuned (tune.py) where ZYX_TUNE asks."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import pyopencl as cl

from ..debug import logger
from ..errors import KernelBuildError
from ..jit.cache import default_cache
from ..jit.cache_key import device_fingerprint
from ..jit.compiler import kernel_options
from ..jit.choices import TunedChoices
from ..jit.opencl_prelude import GROUP_SIZE_STATED, combine_sources
from ..jit.program import Program
from ..jit.device_traits import DeviceTraits
from ..jit.tune_store import default_tuning_store
from ..jit.tuning_mode import tune_mode
from ..progress import compiling
from ..trace.node import Node
from .fusing_device import FusingDevice
from .opencl import OpenCLRuntime
from .platforms import ordinal_of

if TYPE_CHECKING:
    from ..jit.tune import Tuner

KERNELS_PER_BUILD = 8      # the most kernels one OpenCL program of a driver that builds side by side holds
BUILD_CHARACTERS = 32_000  # and the most source, but for a kernel larger than that alone


class OpenCLDevice(FusingDevice):
    """Tensors in OpenCL buffers (its runtime: `OpenCLRuntime`); kernels built through the kernel cache."""

    FLOAT64_NOTE = "cl_khr_fp64"

    def __init__(self, cl_device: cl.Device):
        runtime = OpenCLRuntime(cl_device)
        super().__init__("opencl", f"OpenCL({runtime.name!r})", f"opencl:{ordinal_of(cl_device)}", runtime,
                         DeviceTraits.of(runtime, _warpgroups_build))
        self.kernels_on_host_cpu = not runtime.is_gpu  # (not WGPU's CPU adapter: its driver may fuse a * b + c)
        self._kernels: dict[str, cl.Kernel] = {}
        self._fresh: dict[str, cl.Program] = {}
        self._ahead: set[str] = set()  # fresh kernels whose launches the helper was given (`_compile_ahead`)
        self._tuned: Optional[TunedChoices] = None
        self._tuner: Optional[Tuner] = None
        if default_cache().is_empty():
            self._before_scheduling()  # nothing was ever compiled here: this process will, start what that needs

    def build_options(self, launches: Sequence[Any] = ()) -> tuple[str, ...]:
        """The compiler's options for a build of `launches` on this device (compiler.kernel_options)."""
        return kernel_options(self.traits, self.runtime, unsized=any(launch.local_size is None for launch in launches))

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

    def _search(self, kernels: Sequence[Any], mode: int, program_with: Callable[[TunedChoices], Program],
                leaves: Sequence[Node], rands: Sequence[Node]) -> None:
        """Search the kernels tuning asks for (tune.py) and keep the choices faster than the heuristics' that make
        their step faster too (`Tuner.kept_in_step`; the programs in memory, scheduled without them, are then
        forgotten)."""
        if self._tuner is None:
            from ..jit.tune import Tuner
            self._tuner = Tuner(self.runtime, self.traits)
        before = self.tuned
        faster = [record for record in self._tuner.search(kernels, before, mode) if record.improves]
        if faster:
            faster = self._tuner.kept_in_step(program_with, before, faster, leaves, rands)
        for record in faster:
            self._tuned = self.tuned.with_choice(record.kernel, record.choice)
        if faster:
            self.forget_programs()

    def _before_scheduling(self) -> None:
        """Start what the compiles after the scheduling need (`KernelCache.prepare_compiles`): it overlaps it. Done
        when the device opens where the cache is empty: the driver's warm-up (0.5-0.6 s on PoCL) then overlaps
        building the model and tracing the first step too (W5 cold: the build waited 0.3 s less for it)."""
        default_cache().prepare_compiles(self.runtime.context, self.runtime.device)

    def _kernels_of(self, program: Program) -> list[Optional[cl.Kernel]]:
        """The compiled kernel of each launch (None for a launch of no work-items), compiling what is missing."""
        self._compile_together([launch for launch in program.launches if launch.is_kernel])
        return [self.kernel(launch) if launch.is_kernel else None for launch in program.launches]

    def kernel(self, launch: Any) -> cl.Kernel:
        """The compiled kernel of `launch` (memory, then the persistent cache, then the compiler)."""
        source, name = launch.source, launch.name
        kernel = self._kernels.get(source)
        if kernel is None:
            logger("zyx.schedule").debug("kernel %s:\n%s", name, source)
            built = default_cache().build(self.runtime.context, self.runtime.device, source,
                                          self.build_options([launch]))
            kernel = cl.Kernel(built, name)  # (a program may be asked again for a kernel it refused)
            self._check_group(kernel, launch)
            self._kernels[source] = kernel
            self._fresh[source] = built
        return kernel

    def _check_group(self, kernel: cl.Kernel, launch: Any) -> None:
        """A kernel written for groups larger than the driver runs it in (its registers or local memory per item
        allow fewer: NVIDIA's CL_KERNEL_WORK_GROUP_SIZE) fails at its launch with OUT_OF_RESOURCES, which reads as
        running out of memory: it is refused here, once, naming both sizes (a tuner drops such a candidate). A kernel
        that states its group's size (`reqd_work_group_size`: warpgroup products) has its registers fitted to it by
        the compiler and launches, though NVIDIA may report fewer items for it (256 for some of 384)."""
        if launch.local_size is None or GROUP_SIZE_STATED in launch.source:
            return
        items = math.prod(launch.local_size)
        allowed = self.runtime.group_limit(kernel)
        if items > allowed:
            shape = " × ".join(map(str, launch.local_size))
            raise KernelBuildError(
                f"kernel {launch.name} is written for work groups of {items} items"
                f"{f' ({shape})' if len(launch.local_size) > 1 else ''}, but "
                f"{self.runtime.name} runs it in groups of at most "
                f"{allowed} (its registers or local memory per item); this is a bug in Zyx's choice of its group")

    def _compile_together(self, launches: Sequence[Any]) -> None:
        """Build a program's missing kernels, a few in each OpenCL program (`build_groups`): a build's fixed cost
        (about 0.15 s on PoCL, more than compiling ten small kernels) is shared, the builds run side by side
        (`KernelCache.build_many`), and the progress bar moves as each one finishes. Where the driver builds one
        program at a time (PoCL) all of them are one build: side by side they would only wait for each other (22
        W4 kernels took 2.8-5.1 s in one build, 3.4-6.3 s in three on two threads, 9.7-10.7 s in 22, at load 4).
        Kernels built with other options (`build_options`) are built apart. The builds depend only on the program,
        so a warm run asks the cache for the same ones."""
        missing = list({launch.source: launch for launch in launches if launch.source not in self._kernels}.values())
        if len(missing) < 2:
            return
        alike: dict[tuple[str, ...], list[Any]] = {}  # the missing launches by the options they are built with
        for launch in missing:
            alike.setdefault(self.build_options([launch]), []).append(launch)
        builds = [(options, [part] if self.runtime.builds_one_at_a_time else build_groups(part))
                  for options, part in alike.items()]
        sources = {options: [self._group_source(group) for group in groups] for options, groups in builds}
        for options, groups in builds:
            for group, source in zip(groups, sources[options]):
                logger("zyx.schedule").debug("program of %d kernels:\n%s", len(group), source)
        compiles = any(self._compiles_any(sources[options], options) for options, _ in builds)
        if compiles:
            default_cache().start_helper(self.runtime.device)
        with compiling(len(missing) if compiles else 0) as advance:
            for options, groups in builds:
                built = default_cache().build_many(self.runtime.context, self.runtime.device, sources[options],
                                                   options, on_built=lambda i, groups=groups: advance(len(groups[i])))
                for group, program in zip(groups, built):
                    for launch in group:
                        self._kernels[launch.source] = getattr(program, launch.name)
                        self._fresh[launch.source] = program

    def _compiles_any(self, sources: Sequence[str], options: tuple[str, ...]) -> bool:
        """Whether building `sources` will run the compiler (some is neither in memory nor on disk)."""
        cache = default_cache()
        return any(not cache.holds(self.runtime.device, source, options) for source in sources)

    @staticmethod
    def _group_source(group: Sequence[Any]) -> str:
        return group[0].source if len(group) == 1 else combine_sources([launch.source for launch in group])

    def _watches_launches(self) -> bool:
        return bool(self._fresh)

    def _after_launch(self, program: Program, inputs: Sequence[Any]) -> Any:
        if not self._fresh:
            return None
        self._compile_ahead(program, inputs)

        def commit(k: int) -> None:
            """Store a fresh binary once every kernel in it has run (PoCL then includes their compiled code), off
            the step's way: reading a binary is slow on PoCL, whose helper process reads it after a marker."""
            built = self._fresh.pop(program.launches[k].source, None)
            self._ahead.discard(program.launches[k].source)
            if built is not None and not any(other is built for other in self._fresh.values()):
                after = cl.enqueue_marker(self.runtime.queue) if self.runtime.builds_one_at_a_time else None
                default_cache().commit_later(built, after=after)
        return commit

    def _compile_ahead(self, program: Program, inputs: Sequence[Any]) -> None:
        """Hand the launches of `program`'s fresh kernels, with their buffers' sizes, to the cache's helper process
        once (`KernelCache.compile_ahead`), grouped by the OpenCL program built for them."""
        by_build: dict[int, tuple[cl.Program, list]] = {}
        seen = set()
        for launch in program.launches:
            built = self._fresh.get(launch.source) if launch.is_kernel else None
            shape = (launch.name, launch.global_size, launch.local_size)
            if built is None or launch.source in self._ahead or shape in seen:
                continue
            seen.add(shape)
            arguments = [None if kind in ("seed", "offset") else inputs[index].nbytes if kind == "input"
                         else program.slot_bytes[index] for kind, index in launch.args]
            by_build.setdefault(id(built), (built, []))[1].append((*shape, arguments))
        self._ahead.update(launch.source for launch in program.launches if launch.source in self._fresh)
        for built, launches in by_build.values():
            default_cache().compile_ahead(built, launches)


def build_groups(launches: Sequence[Any]) -> list[list[Any]]:
    """The launches' kernels in OpenCL programs to build side by side: largest source first, each program up to
    KERNELS_PER_BUILD kernels and BUILD_CHARACTERS of source (a larger kernel alone). The driver compiles a program's
    kernels one after another, and a GPU's product kernels are large (W7 at GPT-2 small: 401 sources of 10.5 MB,
    35 over 100 kB, the median 8 kB): in launch order eight of them could share one build that ends the compile
    alone; started first, each alone, the largest end while the small ones are built beside them, in few builds."""
    ordered = sorted(launches, key=lambda launch: -len(launch.source))  # (stable: ties keep the launch order)
    groups: list[list[Any]] = []
    for launch in ordered:
        last = groups[-1] if groups else None
        if (last is None or len(last) >= KERNELS_PER_BUILD
                or sum(len(other.source) for other in last) + len(launch.source) > BUILD_CHARACTERS):
            groups.append([launch])
        else:
            last.append(launch)
    return groups


def _warpgroups_build(runtime: OpenCLRuntime) -> bool:
    """tensor_cores.warpgroups_build, whose modules only a device with warpgroup products imports here."""
    from ..jit.tensor_cores import warpgroups_build
    return warpgroups_build(runtime)
