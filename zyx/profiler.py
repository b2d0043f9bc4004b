"""`zyx.profile()`: every kernel launched inside the block, timed on its device, with its bytes and FLOPs.

    with zyx.profile() as p:
        y = (x @ x.T).relu().realize()
    p.table()                               # top kernels: time, GB/s, GFLOP/s, % of the device's peak
    p.export_chrome_trace("trace.json")     # open in chrome://tracing or ui.perfetto.dev

OpenCL kernels are timed by profiling events (device time); the CPU reference device records the host time of
each program it evaluates. Times are read when the block ends (it waits for every device it saw).
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.table import Table

from .runtime import profiling
from .runtime.peak import Peak, device_peak
from .runtime.profiling import KernelRecord


@dataclass
class KernelSummary:
    """Every launch of one kernel (same name, program and device) added up."""

    kernel: str
    program: str
    device_name: str
    node: str
    launches: int
    seconds: float
    bytes_moved: int
    flops: int
    peak: Peak

    @property
    def gbs(self) -> float:
        return self.bytes_moved / self.seconds / 1e9 if self.seconds > 0 else 0.0

    @property
    def gflops(self) -> float:
        return self.flops / self.seconds / 1e9 if self.seconds > 0 else 0.0


class Profiler:
    """Records kernel launches between `__enter__` and `__exit__`; `records` holds them in launch order."""

    def __init__(self) -> None:
        self.records: list[KernelRecord] = []
        self._running = False

    def __enter__(self) -> "Profiler":
        if self._running:
            raise RuntimeError("this profiler is already recording; use a new zyx.profile() for a nested block")
        self._running = True
        profiling.start(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        profiling.stop(self)
        self._running = False
        self._resolve()

    def add(self, record: KernelRecord) -> None:
        """Record one kernel launch (the runtime calls this while the profiler records)."""
        self.records.append(record)

    def _resolve(self) -> None:
        for record in self.records:
            record.resolve()

    def summaries(self) -> list[KernelSummary]:
        """One row per kernel, the most time first."""
        self._resolve()
        rows: dict[tuple[str, str, str], KernelSummary] = {}
        peaks: dict[int, Peak] = {}
        for record in self.records:
            if id(record.device) not in peaks:
                peaks[id(record.device)] = device_peak(record.device_name, getattr(record.device, "device", None))
            key = (record.kernel, record.program, record.device_name)
            row = rows.get(key)
            if row is None:
                row = rows[key] = KernelSummary(record.kernel, record.program, record.device_name, record.node, 0,
                                                0.0, 0, 0, peaks[id(record.device)])
            row.launches += 1
            row.seconds += record.seconds
            row.bytes_moved += record.bytes_moved
            row.flops += record.flops
        return sorted(rows.values(), key=lambda row: row.seconds, reverse=True)

    def table(self, limit: int = 20, print_table: bool = True) -> str:
        """The `limit` kernels that took the most time, as text (printed too unless `print_table=False`).
        The % columns appear when the device's peak is known (see zyx/runtime/peak.py; ZYX_PEAK_GBS and
        ZYX_PEAK_GFLOPS set it)."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        rows = self.summaries()
        total = sum(row.seconds for row in rows)
        show_bandwidth = any(row.peak.gbs for row in rows)
        show_compute = any(row.peak.gflops for row in rows)
        table = Table(title=f"zyx.profile: {len(self.records)} launches, {total * 1e3:.3f} ms of device time")
        for header in ("kernel", "program", "node", "calls", "total ms", "%time", "GB/s"):
            table.add_column(header, justify="left" if header in ("kernel", "program", "node") else "right")
        if show_bandwidth:
            table.add_column("%peak GB/s", justify="right")
        table.add_column("GFLOP/s", justify="right")
        if show_compute:
            table.add_column("%peak GFLOP/s", justify="right")
        for row in rows[:limit]:
            cells = [row.kernel, row.program, row.node, str(row.launches), f"{row.seconds * 1e3:.3f}",
                     f"{100 * row.seconds / total:.1f}" if total else "-", f"{row.gbs:.2f}"]
            if show_bandwidth:
                cells.append(_percent(row.gbs, row.peak.gbs))
            cells.append(f"{row.gflops:.2f}")
            if show_compute:
                cells.append(_percent(row.gflops, row.peak.gflops))
            table.add_row(*cells)
        buffer = io.StringIO()
        Console(file=buffer, width=160, no_color=True).print(table)
        text = buffer.getvalue()
        if print_table:
            print(text, end="")
        return text

    def chrome_trace(self) -> dict[str, Any]:
        """The records as Chrome trace events (what torch.profiler exports): one process per device, one
        complete ("X") event per launch, times in µs from the device's first launch."""
        self._resolve()
        devices: dict[str, int] = {}
        origin: dict[str, int] = {}
        for record in self.records:
            devices.setdefault(record.device_name, len(devices) + 1)
            origin[record.device_name] = min(origin.get(record.device_name, record.start_ns), record.start_ns)
        events: list[dict[str, Any]] = [
            {"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": f"zyx {name}"}}
            for name, pid in devices.items()]
        for record in self.records:
            events.append({
                "name": record.kernel, "cat": "kernel", "ph": "X", "pid": devices[record.device_name], "tid": 0,
                "ts": (record.start_ns - origin[record.device_name]) / 1e3, "dur": record.seconds * 1e6,
                "args": {"kernel": record.kernel, "program": record.program, "node": record.node,
                         "global_size": list(record.global_size),
                         "local_size": list(record.local_size) if record.local_size else None,
                         "bytes": record.bytes_moved, "flops": record.flops}})
        return {"traceEvents": events, "displayTimeUnit": "ms"}

    def export_chrome_trace(self, path: str | os.PathLike) -> Path:
        """Write `chrome_trace()` as JSON to `path` (chrome://tracing and ui.perfetto.dev open it)."""
        path = Path(path)
        path.write_text(json.dumps(self.chrome_trace()))
        return path


def _percent(achieved: float, peak: Optional[float]) -> str:
    return f"{100 * achieved / peak:.1f}" if peak else "-"


def profile() -> Profiler:
    """A context manager recording every kernel launch inside its block (see the module docstring)."""
    return Profiler()
