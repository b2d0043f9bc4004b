"""Checkpoints in the safetensors format, so files move freely between zyx and PyTorch (or anything else)."""
from __future__ import annotations

import os
from typing import Mapping, Optional, Union

import numpy as np
import safetensors.numpy

from .creation import tensor
from .devices import Device
from .realize import realize
from .tensor import Tensor

PathLike = Union[str, os.PathLike]


def save(state_dict: Mapping[str, Union[Tensor, np.ndarray]], path: PathLike,
         metadata: Optional[dict[str, str]] = None) -> None:
    """Write name -> tensor to `path`; the tensors are computed together first."""
    bad = [key for key in state_dict if not isinstance(key, str)]
    if bad:
        raise TypeError(f"save: keys must be strings, got {bad}")
    realize(*(t for t in state_dict.values() if isinstance(t, Tensor)))
    arrays = {name: np.asarray(value.numpy() if isinstance(value, Tensor) else value, order="C")
              for name, value in state_dict.items()}
    safetensors.numpy.save_file(arrays, path, metadata=metadata)


def load(path: PathLike, device: Optional[Device] = None) -> dict[str, Tensor]:
    """Read a safetensors file into tensors on `device` (default: zyx.default_device())."""
    try:
        arrays = safetensors.numpy.load_file(path)
    except TypeError as error:  # numpy has no bfloat16
        raise TypeError(f"load: {path} holds a dtype numpy cannot read ({error}); "
                        "convert it to float32 first") from None
    return {name: tensor(array, device=device) for name, array in arrays.items()}
