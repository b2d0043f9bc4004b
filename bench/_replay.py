"""Kernel time without Python: record the launches one realization makes, then enqueue them again back to back.

What `bench/GPU.md` calls kernel time: `repeat` replays of the recorded launches and one wait, so neither
tracing, scheduling nor a synchronization per call is counted (only the enqueue, which overlaps the kernels).
The tuner times its candidates the same way (zyx/runtime/replay.py).
"""
from __future__ import annotations

import time
from typing import Any, Callable

from zyx.runtime.replay import record_launches, replay, replay_timed

WARM_REPLAYS = 3


def replayed_seconds(runtime: Any, realize: Callable[[], Any], repeat: int) -> tuple[float, float, list[tuple]]:
    """Seconds per replay of the launches `realize()` makes on `runtime`, the host's seconds per launch enqueuing
    them (`replay_timed`), and those launches' arguments."""
    _, recorded = record_launches(runtime, realize)
    replay(runtime, recorded, WARM_REPLAYS)
    seconds, enqueued = replay_timed(runtime, recorded, repeat)
    return seconds, enqueued / max(1, len(recorded)), recorded


def cuda_seconds(run: Callable[[], Any], repeat: int) -> float:
    """Seconds per call of `run` (torch on CUDA): `repeat` calls back to back and one synchronize, kernel time as
    replay() takes zyx's."""
    import torch
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        run()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def describe(recorded: list[tuple]) -> str:
    """The recorded kernels, each as name (global size)/local size."""
    return ", ".join(f"{a[0].function_name} {tuple(a[1])}/{a[2]}" for a in recorded)
