"""The examples' progress bar: rich on a terminal, one summary line elsewhere.

    bar = ProgressBar(total=100, desc="epoch 1", unit="samples", unit_scale=64)
    for step in range(100):
        loss = train_step(...)
        bar.update(loss=loss)          # a zyx tensor is read (.item()) at most every `interval` seconds
    bar.close()

On a terminal the bar is drawn from the moment it is made, so it (and its clock) is there while the first step
traces and compiles, with Zyx's "compiling n/N kernels" below it: both share `zyx.progress.console()`. Lines
printed meanwhile appear above the bar. Elsewhere (a log file, a test capturing output) it prints one line when it
closes, so logs stay readable. With `skip_first`, the rate counts from the end of the first step (which, in a
@zyx.jit loop, traces and compiles); it leaves out time spent while `clear`ed (sampling, evaluating).
"""
from __future__ import annotations

import sys
import time
from typing import Any, Optional

import zyx.progress


class ProgressBar:
    """A counted loop's progress with named values (loss) and its rate, in steps and in `unit`s per second."""

    def __init__(self, total: int, desc: str = "", unit: str = "steps", unit_scale: int = 1,
                 interval: float = 0.1, skip_first: bool = False, quiet: bool = False):
        self.total, self.desc, self.unit, self.unit_scale, self.interval = total, desc, unit, unit_scale, interval
        self.count = 0
        self.postfix: dict[str, Any] = {}
        self.start = time.perf_counter()
        self.skip = 1 if skip_first else 0
        self.clock: Optional[float] = None if skip_first else self.start  # when the timed steps began
        self.paused: Optional[float] = None  # when `clear` was called
        self.last_read = 0.0
        self._live = None
        self.quiet = quiet  # shows and prints nothing (the ranks of a distributed run but the first)
        if sys.stderr.isatty() and not quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            self._live = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                  console=zyx.progress.console())
            self._task = self._live.add_task(desc, total=total, status="")
            self._live.start()

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Count `n` more steps; `postfix` values (numbers or zyx tensors) are shown after the bar."""
        self.count += n
        self.postfix.update(postfix)
        now = time.perf_counter()
        if self.clock is None:
            self.clock = now
        elif self.paused is not None:
            self.clock += now - self.paused
        self.paused = None
        if self._live is not None and (now - self.last_read >= self.interval or self.count >= self.total):
            self.last_read = now
            self._live.update(self._task, completed=self.count, status=self.status())

    def rate(self) -> float:
        """Timed steps per second (see `skip_first`)."""
        if self.clock is None or self.count <= self.skip:
            return 0.0
        now = self.paused if self.paused is not None else time.perf_counter()
        return (self.count - self.skip) / max(now - self.clock, 1e-9)

    def status(self) -> str:
        """The named values and the rates, as shown after the bar (reads zyx tensors: call it between steps)."""
        parts = []
        for name, value in self.postfix.items():
            value = value.item() if hasattr(value, "item") else value
            parts.append(f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}")
        rate = self.rate()
        parts.append(f"{rate:.1f} steps/s")
        if self.unit_scale != 1:
            parts.append(f"{rate * self.unit_scale:.0f} {self.unit}/s")
        return "  ".join(parts)

    def clear(self) -> None:
        """Stop the rate's clock until the next update (while sampling or evaluating)."""
        self.paused = time.perf_counter()

    def close(self) -> None:
        """Show the final values; off a terminal, print the one summary line."""
        if self._live is not None:
            self._live.update(self._task, completed=self.count, status=self.status())
            self._live.stop()
        elif not self.quiet:
            print(f"{self.desc}  {self.count}/{self.total}  {self.status()}  {time.perf_counter() - self.start:.1f}s",
                  file=sys.stderr, flush=True)
