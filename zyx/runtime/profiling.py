"""The runtime's side of `zyx.profile()` and `ZYX_DEBUG=2`: one record per kernel launch, timed on the device.

Nothing here costs anything unless `timing_wanted()`: the launch paths check it (a list and an environment
variable) and only then build a record. OpenCL launches are timed by profiling events, which need a command
queue made with PROFILING_ENABLE; that queue costs a few µs per launch on PoCL, so backends switch to it only
while timing is wanted (see `OpenCLRuntime.queue`). ZYX_DEBUG=2 waits for each kernel and logs its time, as
tinygrad's DEBUG=2 does, through the `zyx.profile` logger.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol

from ..debug import debug_level, logger


@dataclass
class KernelRecord:
    """One kernel launch (or, on the CPU reference device, one evaluated program)."""

    device: Any                   # the backend that ran it (its peak numbers come from it)
    device_name: str
    kernel: str
    program: str                  # the trace structure's hash (shortened) or, on the CPU device, "cpu"
    node: str                     # the trace node it stores
    global_size: tuple[int, ...]
    local_size: Optional[tuple[int, ...]]
    bytes_moved: int
    flops: int
    start_ns: int = 0             # device clock (OpenCL event) or host clock (CPU device)
    end_ns: int = 0
    event: Any = None             # the OpenCL event until its times are read

    @property
    def seconds(self) -> float:
        return max(self.end_ns - self.start_ns, 0) / 1e9

    def resolve(self) -> None:
        """Read the event's start and end (waits for the kernel); then drop the event."""
        if self.event is not None:
            self.event.wait()
            self.start_ns, self.end_ns = self.event.profile.start, self.event.profile.end
            self.event = None

    def rates(self) -> tuple[float, float]:
        """Achieved GB/s and GFLOP/s (0 for a launch too short to time)."""
        seconds = self.seconds
        if seconds <= 0:
            return 0.0, 0.0
        return self.bytes_moved / seconds / 1e9, self.flops / seconds / 1e9


class Recorder(Protocol):
    def add(self, record: KernelRecord) -> None: ...


_recorders: list[Recorder] = []


def start(recorder: Recorder) -> None:
    _recorders.append(recorder)


def stop(recorder: Recorder) -> None:
    _recorders.remove(recorder)


def timing_wanted() -> bool:
    """A profiler is recording, or ZYX_DEBUG>=2 asks for every kernel's time."""
    return True if _recorders else debug_level() >= 2


def record(entry: KernelRecord) -> None:
    """Hand a launch to every active profiler; under ZYX_DEBUG>=2 wait for it and log its time."""
    for recorder in _recorders:
        recorder.add(entry)
    if debug_level() >= 2:
        entry.resolve()
        logger("zyx.profile").info(timing_line(entry))


def timing_line(entry: KernelRecord) -> str:
    """tinygrad's DEBUG=2 line: kernel, launch size, time, achieved bandwidth and throughput."""
    gbs, gflops = entry.rates()
    local = "-" if entry.local_size is None else entry.local_size
    return (f"zyx {entry.device_name[:20]:<20} {entry.kernel:<28} global {entry.global_size} local {local} "
            f"tm {entry.seconds * 1e6:9.2f}us {gbs:8.2f} GB/s {gflops:8.2f} GFLOP/s  {entry.node}")
