"""Process-wide counters: how many kernels were compiled, launched, cached, and how much memory moved.

Tests pin fusion and caching with these numbers, so every layer bumps them through `bump`.
"""
from __future__ import annotations

# what `note_run` adds to, at every run
_RUN_COUNTERS = {"peak_bytes": 0, "launches": 0, "kernels_launched": 0, "bytes_allocated": 0}
_COUNTERS: dict[str, float] = dict(_RUN_COUNTERS)
_NAMES = (
    "kernels_compiled", "kernels_launched", "graphs_scheduled", "schedule_cache_hits",
    "bytes_allocated", "peak_bytes", "cache_memory_hits", "cache_disk_hits", "cache_misses",
    "compile_seconds", "programs_captured", "programs_loaded", "structure_digests", "kernel_memo_hits",
    "kernels_tuned", "launches",
)


def bump(name: str, amount: float = 1) -> None:
    _COUNTERS[name] = _COUNTERS.get(name, 0) + amount


def note_run(peak_bytes: float, launches: int, kernels: int, allocated: int = 0) -> None:
    """A program run's counts in one call (`set_max("peak_bytes", ...)`, `bump("launches", ...)`,
    `bump("kernels_launched", ...)`, `bump("bytes_allocated", ...)`): a replay's run makes it at every call, where it
    costs as much as a launch's line. Its counters are always present (`_RUN_COUNTERS`), so it reads them without
    defaults."""
    counters = _COUNTERS
    if peak_bytes > counters["peak_bytes"]:
        counters["peak_bytes"] = peak_bytes
    counters["launches"] += launches
    counters["kernels_launched"] += kernels
    counters["bytes_allocated"] += allocated


def set_max(name: str, value: float) -> None:
    if value > _COUNTERS.get(name, 0):
        _COUNTERS[name] = value


def stats() -> dict[str, float]:
    """A snapshot of every counter (missing ones read 0)."""
    snapshot = {name: 0 for name in _NAMES}
    snapshot.update(_COUNTERS)
    return snapshot


def reset_stats() -> None:
    """Set every counter of `zyx.stats()` back to zero."""
    _COUNTERS.clear()
    _COUNTERS.update(_RUN_COUNTERS)
