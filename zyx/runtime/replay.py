"""Kernel time without Python: record the launches some work makes, then enqueue them again back to back.

What the tuner times a candidate by, and `bench/GPU.md` calls kernel time: replays of the recorded launches and
one wait, so neither tracing, scheduling nor a synchronization per run is counted (only the enqueue, which
overlaps the kernels). Launches are recorded as the runtime's launcher gets them (kernel, sizes, raw arguments).
"""
from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

from .. import counters

T = TypeVar("T")


def record_launches(runtime: Any, work: Callable[[], T]) -> tuple[T, list[tuple]]:
    """What `work()` returns, and the arguments of every launch it made on `runtime`, once they have run.
    Recordings nest (a search inside a recorded realize): the outer one sees the inner one's launches too."""
    launcher, outer = runtime.launcher, vars(runtime).get("launcher")
    runtime.synchronize()
    recorded: list[tuple] = []
    runtime.launcher = lambda timed: lambda *a: (recorded.append(a), launcher(timed)(*a))[1]
    try:
        result = work()
        runtime.synchronize()
    finally:
        if outer is None:
            del runtime.launcher
        else:
            runtime.launcher = outer
    return result, recorded


def replay(runtime: Any, launches: list[tuple], repeat: int) -> float:
    """Seconds per run of `launches`, enqueued `repeat` times back to back and waited for once."""
    return replay_timed(runtime, launches, repeat)[0]


def replay_timed(runtime: Any, launches: list[tuple], repeat: int) -> tuple[float, float]:
    """`replay`'s seconds per run, and the host's seconds per run spent enqueuing (the wait not counted): where a
    device starts only once the host submits (WGPU), the part of it before the first submit adds to the kernels'."""
    launch = runtime.launcher(False)
    counters.bump("kernels_launched", len(launches) * repeat)
    runtime.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        for arguments in launches:
            launch(*arguments)
    enqueued = time.perf_counter()
    runtime.synchronize()
    return (time.perf_counter() - start) / repeat, (enqueued - start) / repeat
