"""How wide the vectors are that a CPU OpenCL compiles for, from the LLVM CPU name in the device's name; and how many
cycles the host CPU's multiply-adds take, from /proc/cpuinfo.

PoCL names its CPU device after the LLVM CPU it compiles kernels for ("pthread-haswell-AMD EPYC ...") but reports
vector widths from the machine it runs on: told to compile for another CPU (POCL_KERNELLIB_NAME=avx2
POCL_LLVM_CPU_NAME=haswell on an AVX-512 machine, what emulates an AVX2 one), it still reports 16 floats per vector.
The scheduler sizes CPU products' register tiles by the vectors the kernels are compiled with, so the device's
name decides where it names a CPU this table knows; elsewhere the reported width does.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Optional

AVX512 = ("skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake-client", "icelake-server",
          "tigerlake", "rocketlake", "sapphirerapids", "emeraldrapids", "graniterapids", "graniterapids-d",
          "znver4", "znver5", "knl", "knm", "x86-64-v4")
AVX = ("haswell", "broadwell", "skylake", "alderlake", "raptorlake", "meteorlake", "arrowlake", "arrowlake-s",
       "lunarlake", "gracemont", "sierraforest", "grandridge", "znver1", "znver2", "znver3", "bdver2", "bdver3",
       "bdver4", "core-avx2", "sandybridge", "ivybridge", "core-avx-i", "corei7-avx", "btver2", "bdver1",
       "x86-64-v3")
SSE = ("x86-64", "x86-64-v2", "nehalem", "westmere", "core2", "penryn", "silvermont", "goldmont", "goldmont-plus",
       "tremont", "btver1", "generic")
FLOAT_LANES = {**{cpu: 16 for cpu in AVX512}, **{cpu: 8 for cpu in AVX}, **{cpu: 4 for cpu in SSE}}
"""Floats per vector register of the widest vector unit each LLVM CPU name (x86) compiles for."""
_POCL_DRIVER = re.compile(r"(?:pthread|cpu-minimal|cpu|basic)-")


def compiled_lanes(device_name: str) -> Optional[int]:
    """Floats per vector register of the CPU a PoCL device named `device_name` compiles for; None where its
    name names no CPU of FLOAT_LANES."""
    driver = _POCL_DRIVER.match(device_name.strip())
    if driver is None:
        return None
    rest = device_name.strip()[driver.end():]
    named = [cpu for cpu in FLOAT_LANES if rest == cpu or rest.startswith(cpu + "-")]
    return FLOAT_LANES[max(named, key=len)] if named else None  # (the longest: skylake-avx512, not skylake)


def native_float_lanes(device_name: str, reported: int) -> int:
    """The floats per vector the scheduler shapes CPU kernels for: what the compiler targets (`compiled_lanes`),
    at most the `reported` width (a machine never runs wider vectors than its own)."""
    lanes = compiled_lanes(device_name)
    return min(lanes, reported) if lanes else reported


SLOW_MULTIPLY_ADD = {("AuthenticAMD", 23)}
"""(vendor, family) of CPUs whose vector multiply-adds take 5 cycles, not 4: AMD family 0x17 (Zen, Zen+, Zen 2).
Two pipes then want ten independent accumulators in flight, not eight."""


def multiply_add_latency(cpuinfo: Optional[str] = None) -> int:
    """Cycles a vector multiply-add takes on the CPU described by `cpuinfo` (/proc/cpuinfo's text; this machine's
    when None): 5 for SLOW_MULTIPLY_ADD, else 4 (also where it cannot be read)."""
    if cpuinfo is None:
        return _host_multiply_add_latency()
    vendor = re.search(r"^vendor_id\s*:\s*(\S+)", cpuinfo, re.M)
    family = re.search(r"^cpu family\s*:\s*(\d+)", cpuinfo, re.M)
    known = vendor is not None and family is not None and (vendor[1], int(family[1])) in SLOW_MULTIPLY_ADD
    return 5 if known else 4


@functools.lru_cache(maxsize=1)
def _host_multiply_add_latency() -> int:
    try:
        return multiply_add_latency(Path("/proc/cpuinfo").read_text(errors="replace")[:8192])
    except OSError:
        return 4
