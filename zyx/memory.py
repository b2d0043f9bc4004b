"""Device memory counters: what a device holds now, its peak, and what its pool keeps for reuse."""
from __future__ import annotations

from typing import Optional

from .devices import Device, default_device


def memory_stats(device: Optional[Device] = None) -> dict[str, int]:
    """current_bytes (held by live buffers), peak_bytes, pool_bytes (freed, kept for reuse), and on OpenCL and
    WGPU reserved_bytes: the part of current_bytes that jitted steps keep for their intermediates between calls
    (see zyx.jit)."""
    return (device or default_device()).memory_stats()


def reset_peak_memory(device: Optional[Device] = None) -> None:
    """Start counting peak memory on `device` (the default one) from what is in use now."""
    (device or default_device()).reset_peak_memory()
