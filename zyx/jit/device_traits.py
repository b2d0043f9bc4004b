"""What the scheduler knows of a device (`DeviceTraits`), read from its runtime without importing the scheduler: a
warm process that loads its programs from disk never schedules, and the scheduler's modules are a large part of an
import (about 50 ms of a 0.5 s warm start on a 2-core CPU)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

PARAM_LIMIT = 128      # kernel arguments: OpenCL guarantees 1024 bytes of them, 128 pointers (a device may allow fewer)
CPU_VECTOR_WIDTH = 16         # one AVX-512 register of float32; as fast as 8 on AVX2 machines
GPU_VECTOR_WIDTH = 4          # float4: one 16-byte load and store per item
WGMMA = "wgmma"      # in a device's tensor-core kinds: it multiplies 16-bit operands by warpgroups too
# Bytes of local memory one work group's static __local arrays may take, by NVIDIA compute capability, where that is
# more than the 48 KiB NVIDIA's OpenCL reports. Measured: on the H200 (9.0) arrays of up to 200 KiB built, ran and
# computed correctly, 227 KiB (CUDA's opt-in limit) did not build. Elsewhere (CUDA's opt-in limits: 8.0 163 KiB,
# 8.6 and 8.9 99 KiB) unmeasured through OpenCL, where a kernel that fails to build has no fallback: the reported
# value holds.
LOCAL_MEMORY = {(9, 0): 200 * 1024}


@dataclass(frozen=True)
class DeviceTraits:
    """What the scheduler needs to know of a device to shape its kernels."""

    gpu: bool = False
    group_size: int = 256
    vector_width: int = 0  # >1: float32 kernels compute this many outputs per item as one vector (on GPUs
                           # elementwise kernels only: reductions there get work groups)
    native_width: int = 16          # floats in one of the device's vector registers (CPUs: 8 with AVX2, 16 AVX-512)
    max_group_size: int = 256       # the most items a work group may have (what a search may try)
    language: str = "opencl"        # the printer: "opencl" (OpenCL C) or "wgsl" (WebGPU)
    max_params: int = PARAM_LIMIT   # buffers and scalars one kernel may take
    local_memory: int = 1 << 16     # bytes of local memory one work group may use
    group_launches: bool = True     # tiny kernels share launches where they may (launch_groups.py; OpenCL only)
    tensor_cores: tuple[str, ...] = ()  # operand types products run on tensor cores: "bf16", "f16", "tf32"
    tensor_core_memory: int = 0     # bytes of local memory a tensor-core product's group may use (0: local_memory)
    compute_units: int = 0          # the device's (0: unknown; GPU column sums are split to fill them: rewrite.py)
    multiply_add_latency: int = 4   # cycles a CPU's vector multiply-add takes (5: more accumulators, cpu_matmul.py)

    @staticmethod
    def of(runtime: object, warpgroups_build: Callable[[object], bool] = lambda runtime: False) -> "DeviceTraits":
        """From an OpenCLRuntime; ZYX_GPU_KERNELS=1 forces GPU-shaped kernels (to test them on a CPU), and
        ZYX_VECTOR_WIDTH=N sets the vector width (1: none), to measure another (ZYX_GROUP_LAUNCHES=0: one kernel
        per launch). CPUs get 16 lanes (their OpenCL compilers call math functions lane by lane otherwise); GPUs 4,
        so every item loads and stores whole float4 vectors, as a hand-written elementwise kernel does. WGMMA only
        where `warpgroups_build(runtime)` (tensor_cores.warpgroups_build: OpenCL devices pass it)."""
        gpu = bool(getattr(runtime, "is_gpu", False)) or os.environ.get("ZYX_GPU_KERNELS") == "1"
        most = min(1024, int(getattr(runtime, "max_work_group_size", 256)))
        group = 1 << (min(256, most).bit_length() - 1)
        width = int(os.environ.get("ZYX_VECTOR_WIDTH", GPU_VECTOR_WIDTH if gpu else CPU_VECTOR_WIDTH))
        native = int(getattr(runtime, "native_vector_width", 16))
        local = int(getattr(runtime, "local_mem_bytes", 1 << 16))
        capability = getattr(runtime, "compute_capability", None)
        kinds = tensor_core_kinds(capability)
        if WGMMA in kinds and not warpgroups_build(runtime):
            kinds = tuple(k for k in kinds if k != WGMMA)
        return DeviceTraits(gpu, group, width if width > 1 else 0, native, 1 << (most.bit_length() - 1),
                            local_memory=local,
                            group_launches=os.environ.get("ZYX_GROUP_LAUNCHES") != "0",
                            tensor_cores=kinds, tensor_core_memory=tensor_core_local_memory(capability, local),
                            compute_units=int(getattr(runtime, "compute_units", 0)),
                            multiply_add_latency=int(getattr(runtime, "multiply_add_latency", 4)))

    @property
    def tensor_core_local_memory(self) -> int:
        """Bytes of local memory a product on tensor cores may stage into (LOCAL_MEMORY)."""
        return self.tensor_core_memory or self.local_memory

    @property
    def warp_shuffles(self) -> bool:
        """Whether kernels may exchange values across a warp by NVIDIA's shfl.sync (inline PTX in OpenCL C): where
        tensor cores were found, an NVIDIA device of compute capability 8.0 or newer (ZYX_WARP_SHUFFLES=0: not)."""
        return bool(self.tensor_cores) and self.language == "opencl" and os.environ.get("ZYX_WARP_SHUFFLES") != "0"

    @property
    def search_local_memory(self) -> int:
        """Bytes of local memory the tiles of a float32 product a search tries may take: the measured limit where
        one is known (static __local arrays of up to 200 KiB built and ran on the H200, which reports 48 KiB), so
        deeper slices are tried; the heuristics keep to what the device reports."""
        return self.tensor_core_local_memory


def tensor_core_local_memory(compute_capability: Optional[tuple[int, int]], reported: int) -> int:
    """Bytes of local memory a tensor-core product's work group may use on a device of `compute_capability` whose
    OpenCL reports `reported` (LOCAL_MEMORY, else the reported value)."""
    return max(reported, LOCAL_MEMORY.get(compute_capability, 0))


def tensor_core_kinds(compute_capability: Optional[tuple[int, int]]) -> tuple[str, ...]:
    """The 16-bit operand types an NVIDIA device of `compute_capability` multiplies on tensor cores with
    m16n8k16 (8.0, Ampere, and newer), and WGMMA where it has warpgroup products (9.x, Hopper: sm_90a; unless
    ZYX_WGMMA=0); none elsewhere or where ZYX_TENSOR_CORES=0. TF32 is the user's choice
    (`zyx.set_float32_matmul_precision`), added where products are scheduled."""
    if compute_capability is None or compute_capability < (8, 0) or os.environ.get("ZYX_TENSOR_CORES") == "0":
        return ()
    hopper = compute_capability[0] == 9 and os.environ.get("ZYX_WGMMA") != "0"
    return ("bf16", "f16", WGMMA) if hopper else ("bf16", "f16")
