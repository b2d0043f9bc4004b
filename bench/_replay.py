"""Kernel time without Python: record the launches one realization makes, then enqueue them again back to back.

What `bench/GPU.md` calls kernel time: `repeat` replays of the recorded launches and one wait, so neither
tracing, scheduling nor a synchronization per call is counted (only the enqueue, which overlaps the kernels).
"""
from __future__ import annotations

import time
from typing import Any, Callable

WARM_REPLAYS = 3


def replayed_seconds(runtime: Any, realize: Callable[[], Any], repeat: int) -> tuple[float, list[tuple]]:
    """Seconds per replay of the launches `realize()` makes on `runtime`, and those launches' arguments."""
    launcher = runtime.launcher
    runtime.synchronize()
    recorded: list[tuple] = []
    runtime.launcher = lambda timed: lambda *a: (recorded.append(a), launcher(timed)(*a))[1]
    try:
        realize()
        runtime.synchronize()
    finally:
        del runtime.launcher
    launch = launcher(False)
    for _ in range(WARM_REPLAYS):
        for a in recorded:
            launch(*a)
    runtime.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        for a in recorded:
            launch(*a)
    runtime.synchronize()
    return (time.perf_counter() - start) / repeat, recorded


def describe(recorded: list[tuple]) -> str:
    """The recorded kernels, each as name (global size)/local size."""
    return ", ".join(f"{a[0].function_name} {tuple(a[1])}/{a[2]}" for a in recorded)
