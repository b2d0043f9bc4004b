"""One WebGPU adapter through wgpu-py (Vulkan, Metal, DirectX 12): its device, its memory, its pipelines, and how
kernels are dispatched on it.

Launches are recorded into a compute pass and submitted in chunks: WebGPU runs nothing before a submit, so a pass
submitted only when something waits would keep the device idle while the host records every launch (that time
adds to the kernels' own). The first chunk is SUBMIT_FIRST dispatches, so the device starts after a few launches;
each next one twice as long up to SUBMIT_MOST, so a submit's host cost (tens of µs) is shared by many launches.
Whatever must wait for the launches or be ordered against the queue submits what was recorded first (a download, a
synchronize, an upload: `queue.write_buffer` runs before any command submitted after it, so commands recorded
earlier, which may still use the pooled buffer being refilled, are submitted first). The queue runs submissions
in order and a compute pass orders its dispatches' storage accesses, so, as on OpenCL's in-order queue, no fences
are needed between kernels and a pooled buffer may be reused by the next launch.

A launch larger than the device's groups per dimension (65535 by WebGPU's default) folds into x and y, as many
columns as the rows need (`dispatch_shape`); the WGSL printer's shaders flatten the two back. Bind groups are
cached per pipeline and buffers (a training step reuses the same pooled buffers, so most launches find theirs); the
seeds and offsets of random streams go in a small uniform buffer kept with the bind group
(print_wgsl.SCALAR_SLOT_BYTES each), written for each launch that draws.

wgpu-py exposes no pipeline (binary) cache, so a new process compiles every shader again: the WGSL text is
stored with the persisted Program (jit/program_store.py), which skips scheduling but not this step.
"""
from __future__ import annotations

import collections
import functools
import logging
import os
import sys
import tempfile
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from .. import counters as stats
from ..debug import logger
from ..errors import KernelBuildError
from ..jit.print_wgsl import SCALAR_SLOT_BYTES
from . import profiling
from .limits import MemoryLimits
from .memory import BufferPool, PooledRuntime

BACKENDS_VARIABLE = "ZYX_WGPU_BACKENDS"
DEFAULT_BACKENDS = "Vulkan,Metal,DX12"  # (OpenGL's compute through EGL is left out unless asked for)
PREFERENCE = {"high-performance": ("DiscreteGPU", "IntegratedGPU", "VirtualGPU", "CPU", "Unknown"),
              "low-power": ("IntegratedGPU", "DiscreteGPU", "VirtualGPU", "CPU", "Unknown")}
REQUESTED_LIMITS = ("max-buffer-size", "max-storage-buffer-binding-size", "max-storage-buffers-per-shader-stage",
                    "max-compute-workgroup-storage-size", "max-compute-invocations-per-workgroup",
                    "max-compute-workgroup-size-x", "max-compute-workgroups-per-dimension")
"""Limits asked for at the adapter's own values (WebGPU's defaults are far lower: 128 MiB bindings, 16 KiB of
work group memory)."""
BIND_GROUPS_KEPT = 4096
SUBMIT_FIRST = 4
"""Dispatches recorded before the first submit after a wait: the device starts after 4 launches' host time (3-7 µs
each through wgpu-py here) and one submit's (40-100 µs on lavapipe). Fewer would start it a few launches sooner
for one more submit per ramp."""
SUBMIT_MOST = 64
"""The longest chunk: a submit's host cost spread over 64 launches is under 2 µs each."""
WORD = 4  # bytes: writes, reads and copies move whole words


def _wgpu() -> Any:
    try:
        import wgpu
    except ImportError:
        raise RuntimeError("zyx.WGPU() needs the wgpu package: pip install 'zyx[wgpu]'") from None
    return wgpu


@functools.cache
def adapters() -> tuple[Any, ...]:
    """Every adapter of the backends in ZYX_WGPU_BACKENDS (default Vulkan, Metal, DirectX 12), once per process."""
    wgpu = _wgpu()
    from wgpu.backends.wgpu_native.extras import set_instance_extras
    backends = [name.strip() for name in os.environ.get(BACKENDS_VARIABLE, DEFAULT_BACKENDS).split(",") if name.strip()]
    try:
        set_instance_extras(backends=backends)
    except KeyError:
        raise ValueError(f"{BACKENDS_VARIABLE}={','.join(backends)}: use names among Vulkan, Metal, DX12, GL") from None
    with _without_driver_noise():
        return tuple(wgpu.gpu.enumerate_adapters_sync())


DRIVER_NOISE = frozenset({"error: XDG_RUNTIME_DIR is invalid or not set in the environment."})
"""Lines Mesa's Vulkan drivers write to the process's stderr while adapters are enumerated on a machine with no
desktop session (a server, CI: four of them, one per window-system probe); no window is ever opened, so they say
nothing a user can act on."""


@contextmanager
def _without_driver_noise() -> Iterator[None]:
    """The block's writes to file descriptor 2 (C code's, which sys.stderr does not see) passed on but for
    DRIVER_NOISE lines."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # (no descriptor 2: nothing to filter)
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if line.strip() not in DRIVER_NOISE]
            if kept:
                sys.stderr.write("".join(kept))


def describe_adapters() -> list[dict[str, Any]]:
    """What `zyx devices` lists of each adapter."""
    return [{"index": index, "device": adapter.info["device"], "type": adapter.info["adapter_type"],
             "backend": adapter.info["backend_type"], "driver": adapter.info["description"],
             "max_binding_bytes": adapter.limits["max-storage-buffer-binding-size"],
             "storage_buffers": adapter.limits["max-storage-buffers-per-shader-stage"]}
            for index, adapter in enumerate(adapters())]


def select_adapter(adapter: int | str | None = None) -> int:
    """The index (in `adapters()`) of the adapter asked for: an index, or a power preference ("high-performance",
    the default: a discrete GPU first; "low-power": an integrated one first)."""
    found = adapters()
    if not found:
        raise RuntimeError("no WebGPU adapter found (on Linux: install a Vulkan driver, e.g. Debian's "
                           f"mesa-vulkan-drivers and libvulkan1; {BACKENDS_VARIABLE} picks the backends)")
    if isinstance(adapter, int) and not isinstance(adapter, bool):
        if not 0 <= adapter < len(found):
            raise ValueError(f"zyx.WGPU({adapter}): there are {len(found)} adapters (`zyx devices` lists them)")
        return adapter
    preference = adapter or "high-performance"
    if preference not in PREFERENCE:
        raise ValueError(f"zyx.WGPU({adapter!r}): give an adapter index or one of {', '.join(PREFERENCE)}")
    order = PREFERENCE[preference]
    types = [a.info["adapter_type"] for a in found]
    return min(range(len(found)), key=lambda i: (order.index(types[i]) if types[i] in order else len(order), i))


def _copies_made() -> None:
    """What `WgpuRuntime.read_later` returns: its copies are made already."""


def dispatch_shape(groups: int, max_groups: int) -> tuple[int, int]:
    """(columns, rows) of work groups covering `groups` with at most `max_groups` columns, as few spare groups as
    that allows (fewer than `rows`): every spare one is launched and returns at once, and a full last row of
    them is what 65535 columns made of 4096² float32 (65536 groups of 64 float4 items: twice the groups)."""
    rows = -(-groups // max_groups)
    return -(-groups // rows), rows


class Buffer:
    """Device memory of `nbytes` bytes; goes back to its runtime's pool when the last reference is dropped."""

    def __init__(self, raw: Any, nbytes: int, runtime: WgpuRuntime) -> None:
        self.raw = raw
        self.nbytes = nbytes
        self.runtime = runtime
        weakref.finalize(self, runtime.pool.release, raw, nbytes).atexit = False

    def __repr__(self) -> str:
        return f"Buffer(nbytes={self.nbytes}, device={self.runtime.name!r})"


@dataclass(frozen=True)
class Kernel:
    """A compiled shader: its pipeline, the layout of its bind group and its work group size."""

    function_name: str
    pipeline: Any
    layout: Any
    group: int


class _HostTimedEvent:
    """What a profiled launch returns: its time, measured around a submit that waits (wgpu-py exposes no
    timestamps of its own), in the shape `profiling.KernelRecord` reads."""

    def __init__(self, start: int, end: int) -> None:
        self.profile = self
        self.start, self.end = start, end

    def wait(self) -> None:
        pass


class WgpuRuntime(PooledRuntime):
    """Owns one WebGPU device: allocation, transfers, pipelines and dispatches all go through here."""

    supports_fp64 = False  # WGSL has no float64

    def __init__(self, index: int) -> None:
        wgpu = _wgpu()
        self.adapter = adapters()[index]
        self.index = index
        info, limits = self.adapter.info, self.adapter.limits
        self.name: str = info["device"]
        self.label = f"WGPU({self.name!r} via {info['backend_type']})"
        self.wgpu_device = self.adapter.request_device_sync(required_limits={k: limits[k] for k in REQUESTED_LIMITS})
        self.queue = self.wgpu_device.queue
        self.is_gpu = info["adapter_type"] != "CPU"
        self.max_group_items = min(limits["max-compute-invocations-per-workgroup"], limits["max-compute-workgroup-size-x"])
        self.max_groups = limits["max-compute-workgroups-per-dimension"]
        self.max_storage_buffers = limits["max-storage-buffers-per-shader-stage"]
        self.local_mem_bytes = limits["max-compute-workgroup-storage-size"]
        # WebGPU reports no memory size: only one buffer's limit is known
        self.limits = MemoryLimits(min(limits["max-buffer-size"], limits["max-storage-buffer-binding-size"]),
                                   sys.maxsize, self.label)
        self._usage = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC | wgpu.BufferUsage.COPY_DST
        self._uniform = wgpu.BufferUsage.UNIFORM | wgpu.BufferUsage.COPY_DST
        # cached bind groups hold their buffers: a trim (out of memory) lets them go with the pool's
        self.pool: BufferPool[Any] = BufferPool(self._create_raw,
                                                is_out_of_memory=lambda error: isinstance(error, wgpu.GPUOutOfMemoryError),
                                                on_trim=lambda: self._bind_groups.clear())
        self._encoder: Any = None
        self._pass: Any = None
        self._pipeline: Any = None  # what the open pass has set last
        self._bound: Any = None
        self._recorded = 0  # dispatches recorded since the last submit
        self._chunk = SUBMIT_FIRST  # dispatches recorded before the next submit
        self._bind_groups: collections.OrderedDict[tuple, tuple[Any, Any]] = collections.OrderedDict()
        self._uniforms_recorded: set[Any] = set()  # uniforms written for dispatches recorded since the last submit
        self._fence = self._create_raw(WORD)  # read back by `synchronize`

    def __repr__(self) -> str:
        return f"WgpuRuntime({self.name!r})"

    @property
    def fingerprint(self) -> dict[str, str]:
        """The adapter and driver facts a scheduled program depends on, under cache_key.FINGERPRINT_NAMES."""
        wgpu = _wgpu()
        info = self.adapter.info
        return {"device": self.name, "platform": f"wgpu {info['backend_type']}",
                "platform_version": f"wgpu-py {wgpu.__version__}", "driver_version": info["description"],
                "opencl_c_version": f"WGSL, vendor {info['vendor_id']} device {info['device_id']}"}

    def _create_raw(self, nbytes: int) -> Any:
        return self.wgpu_device.create_buffer(size=nbytes, usage=self._usage)

    # --- memory -------------------------------------------------------------------------------------------

    def _buffer(self, raw: Any, nbytes: int) -> Buffer:
        return Buffer(raw, nbytes, self)

    # --- transfers ----------------------------------------------------------------------------------------

    def upload(self, array: np.ndarray) -> Buffer:
        """A device copy of `array` (queued: recorded launches are submitted first, see the module docstring)."""
        host = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        self.limits.check_bytes(host.nbytes, f"an array of shape {array.shape} and dtype {array.dtype}")
        buffer = self.allocate(host.nbytes)
        if host.nbytes:
            self._submit()
            padded = -host.nbytes % WORD
            self.queue.write_buffer(buffer.raw, 0, np.concatenate([host, np.zeros(padded, np.uint8)]) if padded else host)
        return buffer

    def download(self, buffer: Buffer, shape: Sequence[int], numpy_dtype: Any) -> np.ndarray:
        """The buffer's contents as a new array; waits for every launch recorded before it."""
        host = self._host_for(buffer, shape, numpy_dtype)
        self.read_later([(buffer.raw, host.reshape(-1).view(np.uint8))])
        return host

    def read_later(self, copies: Sequence[tuple[Any, np.ndarray]]) -> Any:
        """Copies of raw buffers into host arrays of bytes ((buffer, uint8 array) each, no longer than the buffer),
        made now (a read waits for everything recorded): the function returned has nothing left to wait for."""
        for raw, host in copies:
            if host.nbytes:
                host[:] = np.frombuffer(self._read(raw, host.nbytes + -host.nbytes % WORD), np.uint8)[:host.nbytes]
        return _copies_made

    def copy(self, buffer: Buffer) -> Buffer:
        """A new device buffer holding the same bytes (recorded, not waited for)."""
        duplicate = self.allocate(buffer.nbytes)
        if buffer.nbytes:
            self._end_pass()
            self._open_encoder().copy_buffer_to_buffer(buffer.raw, 0, duplicate.raw, 0,
                                                       self.pool.size_class(buffer.nbytes))
        return duplicate

    # --- pipelines ----------------------------------------------------------------------------------------

    def compile(self, source: str, name: str, group: int) -> Kernel:
        """The pipeline of WGSL `source`'s entry point `name` (a KernelBuildError when wgpu rejects it)."""
        if group > self.max_group_items:
            raise RuntimeError(f"kernel {name} needs work groups of {group} items; {self.label} allows "
                               f"{self.max_group_items}")
        start = time.perf_counter()
        try:
            module = self.wgpu_device.create_shader_module(code=source)
            pipeline = self.wgpu_device.create_compute_pipeline(layout="auto", compute={"module": module, "entry_point": name})
        except Exception as error:  # wgpu's validation errors: a bug in Zyx's WGSL or in the driver
            raise KernelBuildError(f"wgpu could not build {name} on {self.label}; this is a bug in Zyx or the "
                                   f"driver, please report it with this source.\n{error}\n{source}") from None
        stats.bump("kernels_compiled")
        stats.bump("compile_seconds", time.perf_counter() - start)
        return Kernel(name, pipeline, pipeline.get_bind_group_layout(0), group)

    # --- execution ----------------------------------------------------------------------------------------

    def launch(self, kernel: Kernel, global_size: tuple[int, ...], local_size: Optional[tuple[int, ...]],
               args: Sequence[Any]) -> Any:
        """Records one dispatch; Buffers are bound in order, numpy scalars (seeds, offsets) go to a uniform buffer.
        Under a profiler the dispatch runs alone and waits, and its host-timed event is returned."""
        raw = [arg.raw if isinstance(arg, Buffer) else arg for arg in args]
        stats.bump("kernels_launched")
        return self.launcher(profiling.timing_wanted())(kernel, global_size, local_size, raw)

    def launcher(self, timed: bool) -> Any:
        """The launch function a program run uses (`runtime.execute.Executable`), taking raw wgpu buffers and
        numpy scalars. The logger and the profiler are looked up here, once, not per kernel: each lookup costs
        microseconds and a replayed step launches dozens of kernels. The caller counts the kernels it launches
        (`kernels_launched`), once per run."""
        log = logger("zyx.runtime")
        logged = log.isEnabledFor(logging.INFO)
        max_groups, bind, record = self.max_groups, self._bind_group, self._record

        def launch(kernel: Kernel, global_size: tuple[int, ...], local_size: Optional[tuple[int, ...]],
                   args: Sequence[Any]) -> Any:
            if logged:
                log.info("launch %s global=%s local=%s", kernel.function_name, tuple(global_size), local_size)
            groups = -(-global_size[0] // kernel.group)
            columns, rows = dispatch_shape(groups, max_groups)
            if rows > max_groups:
                raise RuntimeError(f"kernel {kernel.function_name} needs {groups} work groups, more than "
                                   f"{self.label} dispatches ({max_groups}² of {kernel.group} items)")
            bind_group = bind(kernel, args)
            if timed:
                self.synchronize()
                start = time.perf_counter_ns()
            record(kernel.pipeline, bind_group, columns, rows)
            if not timed:
                return None
            self.synchronize()
            return _HostTimedEvent(start, time.perf_counter_ns())
        return launch

    def _record(self, pipeline: Any, bind_group: Any, columns: int, rows: int) -> None:
        """Records one dispatch into the open pass (setting its pipeline and bind group only where they change)
        and submits the recorded work once the pass holds `_chunk` dispatches (see SUBMIT_FIRST)."""
        compute = self._pass or self._open_pass()
        if pipeline is not self._pipeline:
            compute.set_pipeline(pipeline)
            self._pipeline = pipeline
        if bind_group is not self._bound:
            compute.set_bind_group(0, bind_group)
            self._bound = bind_group
        compute.dispatch_workgroups(columns, rows, 1)
        self._recorded += 1
        if self._recorded >= self._chunk:
            self._submit()
            self._chunk = min(2 * self._chunk, SUBMIT_MOST)

    def _bind_group(self, kernel: Kernel, args: Sequence[Any]) -> Any:
        """The raw wgpu buffers bound in order, numpy scalars as uniforms. Groups are kept, keyed by the pipeline
        and the buffers themselves (which the key keeps alive, so the cache is bounded); a kernel drawing random
        numbers keeps its uniform buffer with its group and gets this launch's seeds and offsets written into it."""
        buffers = tuple(arg for arg in args if not isinstance(arg, np.integer))
        key = (kernel.pipeline, *buffers)
        found = self._bind_groups.get(key)
        if found is None:
            found = self._bind_groups[key] = self._new_bind_group(kernel, buffers, len(args) - len(buffers))
            if len(self._bind_groups) > BIND_GROUPS_KEPT:
                self._bind_groups.popitem(last=False)
        else:
            self._bind_groups.move_to_end(key)
        bind_group, uniform = found
        if uniform is not None:
            self._write_scalars(uniform, [int(arg) for arg in args if isinstance(arg, np.integer)])
        return bind_group

    def _new_bind_group(self, kernel: Kernel, buffers: Sequence[Any], scalars: int) -> tuple[Any, Any]:
        """(bind group, its uniform buffer of `scalars` slots or None)."""
        entries = [{"binding": k, "resource": {"buffer": raw, "offset": 0, "size": raw.size}}
                   for k, raw in enumerate(buffers)]
        uniform = None
        if scalars:
            uniform = self.wgpu_device.create_buffer(size=scalars * SCALAR_SLOT_BYTES, usage=self._uniform)
            entries.append({"binding": len(buffers), "resource": {"buffer": uniform, "offset": 0, "size": uniform.size}})
        return self.wgpu_device.create_bind_group(layout=kernel.layout, entries=entries), uniform

    def _write_scalars(self, uniform: Any, scalars: Sequence[int]) -> None:
        """Each scalar as (low, high, 0, 0) u32 words. `queue.write_buffer` lands before the next submit, so where
        a dispatch recorded since the last submit reads this uniform (the same kernel on the same buffers again),
        what was recorded is submitted first, to read the values it was launched with."""
        if uniform in self._uniforms_recorded:
            self._submit()
        words = np.zeros((len(scalars), 4), np.uint32)
        words[:, 0] = [value & 0xFFFFFFFF for value in scalars]
        words[:, 1] = [value >> 32 for value in scalars]
        self.queue.write_buffer(uniform, 0, words)
        self._uniforms_recorded.add(uniform)

    def _open_encoder(self) -> Any:
        if self._encoder is None:
            self._encoder = self.wgpu_device.create_command_encoder()
        return self._encoder

    def _open_pass(self) -> Any:
        self._pass = self._open_encoder().begin_compute_pass()
        return self._pass

    def _end_pass(self) -> None:
        if self._pass is not None:
            self._pass.end()
            self._pass = self._pipeline = self._bound = None

    def _submit(self) -> None:
        """Submit what was recorded (it runs before any later write or read of the queue)."""
        self._end_pass()
        if self._encoder is not None:
            self.queue.submit([self._encoder.finish()])
            self._encoder = None
        self._recorded = 0
        self._uniforms_recorded.clear()

    def synchronize(self) -> None:
        """Waits until everything recorded so far has finished: reading a word back waits for every submitted
        command (wgpu-py 0.32's `on_submitted_work_done_sync` fails in its own callback)."""
        self._read(self._fence, WORD)

    def _read(self, raw: Any, nbytes: int) -> Any:
        """The first `nbytes` of `raw`, read once everything recorded has run. The device is idle then, so the
        next submits ramp up again from SUBMIT_FIRST dispatches."""
        self._submit()
        data = self.queue.read_buffer(raw, 0, nbytes)
        self._chunk = SUBMIT_FIRST
        return data
