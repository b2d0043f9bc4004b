"""Device: the one object behind `zyx.CPU()`, `zyx.OpenCL()`, `zyx.WGPU()` and `zyx.Torch()`.

Each kind subclasses it (`cpu.py`, `opencl_device.py`, `wgpu_device.py`, `torch_device.py`) and owns what its
traces need: a runtime (buffers, copies, the queue) and, for the fusing kinds, the programs and compiled kernels.
Tensor nodes hold their Device; `zyx.realize` hands it their trace.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from ..dtypes import DType
from ..trace.hashing import Walk
from ..trace.node import Node

if TYPE_CHECKING:
    from ..tensor import Tensor


class Device:
    """A place for tensors: `zyx.CPU()` (RAM, numpy), `zyx.OpenCL()` or `zyx.WGPU()` (VRAM, fused kernels),
    `zyx.Torch()` (torch tensors, torch ops)."""

    runtime: Any  # the buffers, copies and queue (OpenCLRuntime, WgpuRuntime, TorchRuntime; None on the CPU)
    # Whether the device's kernels run on this process's CPU (OpenCL's on a CPU: PoCL): there numpy computes as fast
    # as a kernel, which a cold start must also compile (nn/host_draws.py draws parameters on the host then).
    kernels_on_host_cpu: bool = False

    def __init__(self, kind: str, label: str, spec: str = ""):
        self.kind, self.label = kind, label
        self.spec = spec or kind  # what zyx.devices.device_from_spec takes to find this device again

    def __repr__(self) -> str:
        return f"zyx.{self.label}"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Pickled as its spec ('cpu', 'opencl:N', 'wgpu:N'): unpickling finds the device of this process."""
        from ..devices import device_from_spec  # the registry makes devices of every kind, so it sits above them
        return device_from_spec, (self.spec,)

    # ---- realization -------------------------------------------------------------------------------------
    def realize(self, nodes: Sequence[Node], walk: Optional[Walk] = None) -> list[Any]:
        """Device buffers holding the values of `nodes` (`walk`: `Walk(nodes)`, if made already)."""
        return self.realize_walk(Walk(nodes) if walk is None else walk)

    def realize_walk(self, walk: Walk) -> list[Any]:
        """Buffers holding the values of the walk's roots."""
        raise NotImplementedError

    def upload(self, array: np.ndarray) -> Any:
        """A device buffer holding a copy of `array` (what `zyx.tensor` stores)."""
        return self.runtime.upload(array)

    def download(self, buffer: Any, shape: tuple[int, ...], dtype: DType) -> np.ndarray:
        """A buffer's contents as a new numpy array."""
        return self.runtime.download(buffer, shape, dtype.np)

    def replay_arena(self, program: Any) -> Any:
        """A memory.Arena for the intermediates of a jitted step's `program`, or None: only fusing devices plan
        one (`FusingDevice.replay_arena`)."""
        return None

    def replay_run(self, program: Any, arena: Any = None) -> Any:
        """`run` of a jitted step's `program`, as a function of (inputs, rand_args, gate, launch): here `run` itself
        (a fusing device binds more: `FusingDevice.replay_run`)."""
        return lambda inputs, rand_args, gate, launch: self.run(program, inputs, rand_args, gate)

    def replay_launch(self) -> Any:
        """One launch function for the runs of a replayed step, or None: only fusing devices give one
        (`FusingDevice.replay_launch`)."""
        return None

    def synchronize(self) -> None:
        """Wait until every kernel and copy queued on this device has finished."""
        self.runtime.synchronize()

    def memory_stats(self) -> dict[str, int]:
        """Bytes in use, the peak, and bytes pooled for reuse on this device."""
        return self.runtime.memory_stats()

    def reset_peak_memory(self) -> None:
        """Count the peak from what is in use now."""
        self.runtime.reset_peak_memory()

    # ---- factories: zyx.creation's, on this device -------------------------------------------------------
    def tensor(self, data: Any, dtype: Any = None) -> "Tensor":
        """`zyx.tensor(data, device=self)`."""
        return _creation().tensor(data, device=self, dtype=dtype)

    def randn(self, *shape: Any, dtype: Any = None) -> "Tensor":
        """`zyx.randn(*shape, device=self)`: standard normal."""
        return _creation().randn(*shape, device=self, dtype=dtype)

    def rand(self, *shape: Any, dtype: Any = None) -> "Tensor":
        """`zyx.rand(*shape, device=self)`: uniform in [0, 1)."""
        return _creation().rand(*shape, device=self, dtype=dtype)

    def uniform(self, *shape: Any, low: float = 0.0, high: float = 1.0, dtype: Any = None) -> "Tensor":
        """`zyx.uniform(*shape, device=self)`: uniform in [low, high)."""
        return _creation().uniform(*shape, low=low, high=high, device=self, dtype=dtype)

    def zeros(self, *shape: Any, dtype: Any = None) -> "Tensor":
        """`zyx.zeros(*shape, device=self)`."""
        return _creation().zeros(*shape, device=self, dtype=dtype)

    def ones(self, *shape: Any, dtype: Any = None) -> "Tensor":
        """`zyx.ones(*shape, device=self)`."""
        return _creation().ones(*shape, device=self, dtype=dtype)

    def full(self, shape: Any, value: Any, dtype: Any = None) -> "Tensor":
        """`zyx.full(shape, value, device=self)`."""
        return _creation().full(shape, value, device=self, dtype=dtype)

    def eye(self, n: int, m: Optional[int] = None, dtype: Any = None) -> "Tensor":
        """`zyx.eye(n, m, device=self)`."""
        return _creation().eye(n, m, device=self, dtype=dtype)

    def arange(self, *args: Any, dtype: Any = None) -> "Tensor":
        """`zyx.arange(*args, device=self)`."""
        return _creation().arange(*args, device=self, dtype=dtype)


def _creation() -> Any:
    """zyx.creation, which makes tensors on devices and so sits above them: the factories reach it when called."""
    from .. import creation
    return creation
