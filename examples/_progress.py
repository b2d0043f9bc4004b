"""A small text progress bar for the examples (stderr, no dependencies).

    bar = ProgressBar(total=100, desc="epoch 1", unit="samples", unit_scale=64)
    for step in range(100):
        loss = train_step(...)
        bar.update(loss=loss)          # a zyx tensor is read (.item()) only when the bar redraws
    bar.close()

On a terminal the bar redraws in place at most every `interval` seconds; otherwise (a log file, a test
capturing stderr) it prints one line when it closes, so logs stay readable. With `skip_first`, the rate
counts from the end of the first step (which, in a @zyx.jit loop, traces and compiles); it leaves out time
spent while `clear`ed (sampling, evaluating).
"""
from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO


class ProgressBar:
    def __init__(self, total: int, desc: str = "", unit: str = "steps", unit_scale: int = 1, width: int = 24,
                 stream: Optional[TextIO] = None, interval: float = 0.1, skip_first: bool = False):
        self.total, self.desc, self.unit, self.unit_scale, self.width = total, desc, unit, unit_scale, width
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.interval = interval
        self.count = 0
        self.postfix: dict[str, Any] = {}
        self.start = time.perf_counter()
        self.skip = 1 if skip_first else 0
        self.clock: Optional[float] = None if skip_first else self.start  # when the timed steps began
        self.paused: Optional[float] = None  # when `clear` was called
        self.last_draw = 0.0

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
        if self.live and (now - self.last_draw >= self.interval or self.count >= self.total):
            self.last_draw = now
            self.stream.write("\r" + self.line() + " ")
            self.stream.flush()

    def rate(self) -> float:
        if self.clock is None or self.count <= self.skip:
            return 0.0
        now = self.paused if self.paused is not None else time.perf_counter()
        return (self.count - self.skip) / max(now - self.clock, 1e-9)

    def line(self) -> str:
        filled = int(self.width * self.count / max(self.total, 1))
        bar = "#" * filled + "-" * (self.width - filled)
        rate = self.rate()
        parts = [f"{self.desc} |{bar}| {self.count}/{self.total}"]
        for name, value in self.postfix.items():
            value = value.item() if hasattr(value, "item") else value
            parts.append(f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}")
        parts.append(f"{rate:.1f} steps/s")
        if self.unit_scale != 1:
            parts.append(f"{rate * self.unit_scale:.0f} {self.unit}/s")
        parts.append(f"{time.perf_counter() - self.start:.1f}s")
        return "  ".join(parts)

    def clear(self) -> None:
        """Erase the bar's line on a terminal (before printing something else); it comes back on the next update."""
        if self.live:
            self.stream.write("\r" + " " * len(self.line()) + "\r")
            self.stream.flush()
        self.paused = time.perf_counter()

    def close(self) -> None:
        self.stream.write(("\r" if self.live else "") + self.line() + "\n")
        self.stream.flush()
