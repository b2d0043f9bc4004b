"""Initial values as PyTorch's defaults, drawn from zyx's own random stream (so `zyx.manual_seed` fixes them).

Every function returns a realized tensor (a real buffer): a parameter or state tensor that were still a lazy
expression would be recomputed from scratch by every step that reads it, and `@zyx.jit` would bake it into the
captured program as a constant instead of binding it as state.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from ..creation import randn
from ..creation import uniform as uniform_tensor
from ..devices import Device, default_device
from ..dtypes import DEFAULT_FLOAT, to_dtype
from ..leaves import owned_leaf
from ..realize import realize
from ..tensor import Tensor
from . import host_draws

Shape = tuple[int, ...]


def fans(shape: Shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight shaped (out, in, *kernel), as PyTorch counts them."""
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need a weight with at least 2 dimensions, got shape {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def filled(shape: Shape, value: float, device: Optional[Device] = None, dtype: Any = DEFAULT_FLOAT) -> Tensor:
    """A buffer holding `value` everywhere (zeros and ones for biases, norms and optimizer state), uploaded from an
    array made for it and not copied again; zeros from `np.zeros`, whose pages are not written: GPT-2 small's
    AdamW states (1 GB) took 7 s of a 9.3 s warm capture on a 2-core CPU as a filled array and its copy."""
    kind = to_dtype(dtype).np
    zeros = value == 0 and math.copysign(1.0, value) > 0
    return Tensor(owned_leaf(np.zeros(shape, kind) if zeros else np.full(shape, value, dtype=kind),
                             device if device is not None else default_device()))


def uniform(shape: Shape, bound: float, device: Optional[Device] = None) -> Tensor:
    """U(-bound, bound)."""
    return _uniforms([shape], bound, device)[0]


def layer_parameters(shape: Shape, bias: Optional[int], device: Device) -> tuple[Tensor, Optional[Tensor]]:
    """PyTorch's Linear and Conv defaults: the weight kaiming_uniform with a=sqrt(5), a bias of `bias` elements (None:
    no bias) U(±1/sqrt(fan_in)), the same bound."""
    values = _uniforms([shape] + ([(bias,)] if bias is not None else []), bias_bound(shape), device)
    return values[0], values[1] if bias is not None else None


def _uniforms(shapes: list[Shape], bound: float, device: Optional[Device]) -> list[Tensor]:
    """U(-bound, bound) of each shape, realized: drawn on the host where the device's kernels run on this CPU
    (host_draws.py: no kernel to compile), else realized together: one program, so a cold start compiles their
    kernels in one build."""
    device = device if device is not None else default_device()
    if host_draws.draws_here(device, -bound, bound):
        return [host_draws.uniform(shape, -bound, bound, device) for shape in shapes]
    values = [uniform_tensor(shape, low=-bound, high=bound, device=device) for shape in shapes]
    realize(*values)
    return values


def kaiming_uniform(shape: Shape, a: float = 0.0, device: Optional[Device] = None) -> Tensor:
    """He initialisation for a leaky ReLU of slope `a`; a=sqrt(5) gives PyTorch's Linear/Conv default."""
    gain = math.sqrt(2.0 / (1 + a * a))
    return uniform(shape, gain * math.sqrt(3.0 / fans(shape)[0]), device)


def xavier_uniform(shape: Shape, gain: float = 1.0, device: Optional[Device] = None) -> Tensor:
    """Glorot initialisation: keeps the variance of activations and gradients alike (attention projections)."""
    fan_in, fan_out = fans(shape)
    return uniform(shape, gain * math.sqrt(6.0 / (fan_in + fan_out)), device)


def normal(shape: Shape, std: float = 1.0, device: Optional[Device] = None) -> Tensor:
    return (randn(shape, device=device) * std).realize()


def bias_bound(weight_shape: Shape) -> float:
    """PyTorch's bias range for Linear and Conv: 1/sqrt(fan_in)."""
    fan_in = fans(weight_shape)[0]
    return 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
