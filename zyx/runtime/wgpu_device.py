"""zyx.WGPU(): what it shares with OpenCL (FusingDevice: programs, their disk store,
memory checks) plus WGSL pipelines, the checks WGSL needs, and in-place updates WebGPU can bind.

WGSL has no float64 (refused before scheduling, naming the node) and computes int64 in 32 bits (uploads must fit
them; see print_wgsl.py). A pipeline is built once per source and process; wgpu-py has no binary cache, so a
warm start (a persisted program, no scheduling) still builds every pipeline again.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..jit import print_wgsl
from ..jit.program import Launch, Program
from ..jit.device_traits import GPU_VECTOR_WIDTH, PARAM_LIMIT, DeviceTraits
from ..progress import compiling
from ..trace.node import Node, toposort
from ..trace.ops import Op
from .fusing_device import FusingDevice
from .webgpu import WgpuRuntime

INT32_RANGE = (-(2**31), 2**31 - 1)


def wgpu_traits(runtime: WgpuRuntime) -> DeviceTraits:
    """GPU-shaped kernels (work groups, float4 lanes) on every adapter, a software one too (lavapipe runs a
    group's items as SIMD lanes, as a GPU does); no more buffers per kernel than the adapter binds, no larger
    local tiles than its work group memory. ZYX_VECTOR_WIDTH may lower the width (WGSL vectors stop at 4)."""
    width = min(int(os.environ.get("ZYX_VECTOR_WIDTH", GPU_VECTOR_WIDTH)), 4)
    group = 1 << (min(256, runtime.max_group_items).bit_length() - 1)
    return DeviceTraits(gpu=True, group_size=group, vector_width=width if width > 1 else 0, language="wgsl",
                        max_params=min(PARAM_LIMIT, runtime.max_storage_buffers), local_memory=runtime.local_mem_bytes)


class WgpuDevice(FusingDevice):
    """Tensors in WebGPU storage buffers (its runtime: `WgpuRuntime`); kernels printed as WGSL and built as compute
    pipelines."""

    FLOAT64_NOTE = "WGSL has no float64; use float32"

    def __init__(self, adapter_index: int):
        runtime = WgpuRuntime(adapter_index)
        super().__init__("wgpu", runtime.label, f"wgpu:{adapter_index}", runtime, wgpu_traits(runtime))
        self.name = runtime.label
        self._kernels: dict[str, Any] = {}

    def fingerprint(self) -> dict[str, str]:
        return self.runtime.fingerprint

    def upload(self, array: np.ndarray) -> Any:
        """Refuses float64, and int64 values WGSL's 32-bit integers cannot hold."""
        self._check_dtype(array.dtype)
        if array.dtype == np.int64 and array.size and (array.min() < INT32_RANGE[0] or array.max() > INT32_RANGE[1]):
            raise OverflowError(f"{self.name} computes int64 in 32 bits (WGSL has no 64-bit integers): values must "
                                f"lie in [{INT32_RANGE[0]}, {INT32_RANGE[1]}], this array holds {array.min()} to "
                                f"{array.max()}")
        return self.runtime.upload(array)

    def _check_graph(self, targets: Sequence[Node]) -> None:
        for node in toposort(list(targets)):
            if node.op is Op.COLLECTIVE:
                raise TypeError(f"{self.name}: zyx.distributed's collectives run on zyx.CPU() and zyx.OpenCL() "
                                "(host staging is written for those two); move the tensors there")
            if node.dtype.name == "float64":
                raise TypeError(f"{self.name} has no float64 support ({self.FLOAT64_NOTE}): the trace computes "
                                f"{node.op.name} {node.shape} in float64")

    def _build(self, targets: Sequence[Node], leaves: Sequence[Node], rands: Sequence[Node],
               in_place: Sequence[tuple[int, int]], mode: int = 0, checks: Sequence[int] = ()) -> Program:
        try:
            return super()._build(targets, leaves, rands, in_place, mode, checks)
        except print_wgsl.WgslUnsupported as error:
            raise TypeError(f"{self.name}: {error}") from None

    def _kernels_of(self, program: Program) -> list[Any]:
        sources = [self._source(program, launch) for launch in program.launches]
        missing = {source for source, launch in zip(sources, program.launches)
                   if launch.is_kernel and source not in self._kernels}
        with compiling(len(missing) if len(missing) > 1 else 0) as advance:
            return [self._kernel(source, launch, advance) if launch.is_kernel else None
                    for source, launch in zip(sources, program.launches)]

    @staticmethod
    def _source(program: Program, launch: Launch) -> str:
        """The launch's source, its input read-write where the program writes that input's buffer in place in
        the same launch (WebGPU refuses one buffer bound both read-only and writable in a dispatch)."""
        buffers = [(kind, index) for kind, index in launch.args if kind in ("input", "slot")]
        overwritten = {program.aliases[index] for kind, index in buffers if kind == "slot" and index in program.aliases}
        shared = [binding for binding, (kind, index) in enumerate(buffers) if kind == "input" and index in overwritten]
        return print_wgsl.writable(launch.source, shared) if shared else launch.source

    def _kernel(self, source: str, launch: Launch, advance: Any) -> Any:
        kernel = self._kernels.get(source)
        if kernel is None:
            group = launch.local_size[0] if launch.local_size else 1
            kernel = self._kernels[source] = self.runtime.compile(source, launch.name, group)
            advance(1)
        return kernel
