"""A CPU device's vector width is that of the CPU its compiler targets (cpu_target.py): PoCL told to compile for
AVX2 on an AVX-512 machine reports 16 floats per vector but compiles 8-float ones."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zyx.runtime.cpu_target import FLOAT_LANES, compiled_lanes, multiply_add_latency, native_float_lanes
from zyx.runtime.platforms import select_device

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name, lanes", [
    ("pthread-skylake-avx512-AMD EPYC", 16),  # (not skylake's 8: the longest name that fits)
    ("pthread-haswell-AMD EPYC", 8), ("cpu-znver3-AMD EPYC 7B13 64-Core Processor", 8),
    ("cpu-minimal-znver4-AMD Ryzen 9", 16), ("basic-x86-64-v2-QEMU", 4),
    ("pthread-AMD EPYC", None), ("pthread-someday-lake-Intel", None), ("NVIDIA H200", None), ("gfx942", None),
])
def test_the_lanes_of_the_cpu_a_pocl_device_is_named_after(name, lanes):
    assert compiled_lanes(name) == lanes
    assert native_float_lanes(name, 16) == (lanes or 16)
    assert native_float_lanes(name, 4) == min(lanes or 4, 4)  # never wider than the machine reports


def test_every_lane_count_is_a_vector_of_floats():
    assert set(FLOAT_LANES.values()) == {4, 8, 16}


def test_pocl_told_to_compile_for_avx2_gives_avx2_shaped_products():
    """In a child process (PoCL reads its settings once): the device is named after haswell, and the scheduler's
    traits (hence CPU products' register tiles) take 8-float vectors."""
    if not select_device().name.strip().startswith("pthread-"):
        pytest.skip("a PoCL CPU device")
    env = {**os.environ, "POCL_KERNELLIB_NAME": "avx2", "POCL_LLVM_CPU_NAME": "haswell",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))}
    script = "import zyx; d = zyx.OpenCL(); print(d.runtime.name, d.traits.native_width)"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    name, width = out.stdout.strip().rsplit(" ", 1)
    assert name.startswith("pthread-haswell-") and width == "8"


@pytest.mark.parametrize("cpuinfo, cycles", [
    ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 49\n", 5),  # Zen 2
    ("vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n", 4),  # Zen 4
    ("vendor_id\t: AuthenticAMD\ncpu family\t: 26\n", 4),  # Zen 5
    ("vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 207\n", 4),
    ("", 4), ("processor\t: 0\nBogoMIPS\t: 50.00\n", 4),  # unreadable or not x86: the common case
])
def test_the_multiply_add_latency_is_read_from_the_vendor_and_family(cpuinfo, cycles):
    assert multiply_add_latency(cpuinfo) == cycles
    assert multiply_add_latency() in (4, 5)  # (this machine's)
