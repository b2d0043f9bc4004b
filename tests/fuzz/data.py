"""The input data of a fuzz graph, drawn from a seed so that a printed reproducer can rebuild it exactly."""
from __future__ import annotations

import numpy as np


def input_data(seed: int, shape: tuple[int, ...], dtype: str, low: float, high: float) -> np.ndarray:
    """Uniform values in [low, high) (integers for int dtypes, a coin flip for bool), as `dtype`."""
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype.startswith("int"):
        return rng.integers(int(low), int(high), size=shape).astype(dtype)
    return rng.uniform(low, high, size=shape).astype(dtype)


def index_data(seed: int, shape: tuple[int, ...], size: int) -> np.ndarray:
    """int64 indices into an axis of `size`, negative ones included (they count from the end, as numpy)."""
    return np.random.default_rng(seed).integers(-size, size, size=shape).astype(np.int64)


def gather_index(seed: int, shape: tuple[int, ...], size: int) -> np.ndarray:
    """int64 indices in [0, size): gather takes no negative indices (as torch.gather)."""
    return np.random.default_rng(seed).integers(0, size, size=shape).astype(np.int64)
