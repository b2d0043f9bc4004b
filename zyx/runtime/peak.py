"""A device's peak memory bandwidth and arithmetic rate, so the profiler can say how close a kernel came.

OpenCL reports no memory bandwidth, and its compute units do not say how many lanes each has on a GPU, so:
ZYX_PEAK_GBS / ZYX_PEAK_GFLOPS override; then a small table of known devices (float32 figures without tensor
cores, from the vendors' data sheets); then, for a CPU only, an arithmetic estimate from the device info
(cores × clock × float lanes × 2 for a fused multiply-add). Whatever is unknown stays None, and the profiler
leaves that % column out.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import pyopencl as cl

from .cpu_target import native_float_lanes

# name fragment -> (GB/s, GFLOP/s float32); the first fragment found in the device name wins
KNOWN_DEVICES: tuple[tuple[str, float, float], ...] = (
    ("H200", 4800.0, 67_000.0),
    ("H100 PCIe", 2000.0, 51_000.0),
    ("H100", 3350.0, 67_000.0),
    ("A100", 2039.0, 19_500.0),
    ("RTX 4090", 1008.0, 82_600.0),
)


@dataclass(frozen=True)
class Peak:
    gbs: Optional[float]
    gflops: Optional[float]


def device_peak(name: str, cl_device: Any = None) -> Peak:
    """The peak of the device called `name` (`cl_device`: its pyopencl Device, for the CPU estimate)."""
    known = next(((gbs, gflops) for fragment, gbs, gflops in KNOWN_DEVICES if fragment in name), (None, None))
    gbs = _override("ZYX_PEAK_GBS") or known[0]
    gflops = _override("ZYX_PEAK_GFLOPS") or known[1] or _cpu_gflops(cl_device)
    return Peak(gbs, gflops)


def _override(variable: str) -> Optional[float]:
    text = os.environ.get(variable)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{variable}={text!r} is not a number") from None
    if value <= 0:
        raise ValueError(f"{variable}={text!r} must be positive")
    return value


def _cpu_gflops(cl_device: Any) -> Optional[float]:
    if cl_device is None or not cl_device.type & cl.device_type.CPU:
        return None
    lanes = max(native_float_lanes(cl_device.name.strip(), int(cl_device.native_vector_width_float)), 1)
    return cl_device.max_compute_units * cl_device.max_clock_frequency * lanes * 2 / 1000
