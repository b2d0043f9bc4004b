"""One torch device as zyx.Torch() uses it: buffers in and out, copies, waiting, and zyx's memory count.

The counterpart of OpenCL's runtime (`opencl.py`) for `TorchDevice`; `@zyx.jit` copies and reads buffers
through it alike. Buffers are contiguous torch tensors of the node's shape and dtype.
"""
from __future__ import annotations

import weakref
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .limits import MemoryLimits, host_limits
from .torch_arrays import from_numpy, to_numpy
from .torch_memory import MemoryCounter


def _limits(device: torch.device) -> MemoryLimits:
    if device.type != "cuda":
        return host_limits()
    total = torch.cuda.get_device_properties(device).total_memory
    return MemoryLimits(total, total, f"Torch('{device}')")


class TorchRuntime:
    """Buffers of one torch device, and the bytes zyx holds there (`torch_memory.py`)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        # the GPU's name, where there is one, lets the profiler find its peak (runtime/peak.py)
        self.name = f"{torch.cuda.get_device_name(device)} (torch:{device})" if device.type == "cuda" else \
            f"torch:{device}"
        self.memory = MemoryCounter()
        self.limits = _limits(device)

    def upload(self, array: np.ndarray) -> torch.Tensor:
        """A device tensor holding a copy of `array`."""
        return self.adopt(from_numpy(np.ascontiguousarray(array).reshape(array.shape)))

    def adopt(self, tensor: torch.Tensor) -> torch.Tensor:
        """A buffer of this device holding a copy of a torch tensor (from anywhere)."""
        buffer = tensor.detach().to(self.device, copy=True).contiguous()
        self.memory.keep(buffer)
        return buffer

    def download(self, buffer: torch.Tensor, shape: Sequence[int], numpy_dtype: Any) -> np.ndarray:
        """The buffer's values as a new numpy array (waits for the work that computes them). One torch call where
        nothing else is needed (a jitted step reads its loss and its index checks so, every step)."""
        shape = tuple(shape)
        tensor = buffer.detach() if buffer.requires_grad else buffer  # (a buffer shared through t.torch())
        return to_numpy((tensor if tensor.shape == shape else tensor.reshape(shape)).to("cpu", copy=True))

    def download_all(self, requests: Sequence[tuple[torch.Tensor, Sequence[int], Any]]) -> list[np.ndarray]:
        """Several buffers' values (buffer, shape, numpy dtype each), as `download` does each."""
        return [self.download(buffer, shape, numpy_dtype) for buffer, shape, numpy_dtype in requests]

    def contents(self, buffers: Sequence[torch.Tensor]) -> tuple[tuple[weakref.ref, int], ...]:
        """What tells whether `buffers` hold what they hold now, without reading them: each buffer (weakly) and
        its version counter, which every torch write into it or a view of it bumps (`unchanged`)."""
        return tuple([(weakref.ref(buffer), buffer._version) for buffer in buffers])

    @staticmethod
    def unchanged(contents: Optional[tuple[tuple[weakref.ref, int], ...]], buffers: Sequence[torch.Tensor]) -> bool:
        """Whether `buffers` are the ones `contents` was taken of, written by nothing since (through torch: memory
        written behind its back, through DLPack or a numpy view of a CPU tensor, is not seen)."""
        return contents is not None and len(contents) == len(buffers) and \
            all(reference() is buffer and buffer._version == version
                for (reference, version), buffer in zip(contents, buffers))

    def copy(self, buffer: torch.Tensor) -> torch.Tensor:
        """A new buffer with the same values."""
        duplicate = buffer.clone()
        self.memory.keep(duplicate)
        return duplicate

    def synchronize(self) -> None:
        """Wait for every kernel queued on the device (CUDA and MPS run asynchronously)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def memory_stats(self) -> dict[str, int]:
        """Bytes of zyx's buffers and intermediates now, and the peak (zyx's own count; torch's caching
        allocator holds more: torch.cuda.memory_reserved). zyx keeps no pool of its own."""
        return {"current_bytes": self.memory.current_bytes, "peak_bytes": self.memory.peak_bytes, "pool_bytes": 0}

    def reset_peak_memory(self) -> None:
        self.memory.reset_peak()
