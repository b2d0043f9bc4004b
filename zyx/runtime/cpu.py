"""zyx.CPU(): tensors in RAM as numpy arrays, traces interpreted op by op (`interpret.py` with numpy).

It is the reference every other device is tested against, so it favours plain numpy over speed.
Intermediates are dropped right after their last reader.
"""
from __future__ import annotations

import numpy as np

from ..dtypes import DType
from ..trace.hashing import Walk
from . import interpret, profiling
from .device import Device
from .limits import host_limits
from .numpy_arrays import NumpyArrays


class CPUDevice(Device):
    """Holds tensors as numpy arrays; realizes traces by interpreting them. No runtime: numpy is its own."""

    name = "cpu"
    runtime = None

    def __init__(self) -> None:
        super().__init__("cpu", "CPU()")
        self.limits = host_limits()
        self.arrays = NumpyArrays()

    def synchronize(self) -> None:
        """Nothing to wait for: numpy has finished by the time `realize` returns."""

    def upload(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array, order="C")  # keeps 0-d arrays 0-d, unlike ascontiguousarray

    def download(self, buffer: np.ndarray, shape: tuple[int, ...], dtype: DType) -> np.ndarray:
        return buffer.reshape(shape).copy()

    def memory_stats(self) -> dict[str, int]:
        """Nothing counted: numpy's memory is the process's."""
        return {"current_bytes": 0, "peak_bytes": 0, "pool_bytes": 0}

    def reset_peak_memory(self) -> None:
        """Nothing counted (see memory_stats)."""

    def realize_walk(self, walk: Walk) -> list[np.ndarray]:
        """Values of the walk's roots (contiguous arrays), freeing each intermediate after its last use."""
        targets, order = walk.roots, walk.order
        program = interpret.build(targets, order)
        self.limits.check_nodes(program.stored())
        if any(leaf.buffer is None for leaf in walk.leaves):
            raise interpret.released_error()
        inputs = [leaf.buffer for leaf in walk.leaves]
        streams = [node.arg for node in walk.rands]
        if not profiling.timing_wanted():
            return interpret.run(program, self.arrays, inputs, streams)
        return interpret.profiled(self, "cpu_evaluate", "cpu", targets, order,
                                  lambda: interpret.run(program, self.arrays, inputs, streams))
