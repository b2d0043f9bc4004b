"""Uniform parameters drawn in numpy and uploaded, where the device's kernels run on this CPU anyway.

On PoCL a kernel draws Philox no faster than numpy (about 70 ns an element against 35 on a 2-core EPYC), and on a
cold cache it must first be compiled: W5's three Linear layers cost three builds and five code generations, 1-2 s
of a 5.5 s cold start, to draw 0.7 M numbers that numpy draws in 25 ms. So on such a device the init functions draw
on the host. The numbers are the kernel's bit for bit: the same counters of the same stream (reserved in the same
order, as `creation.rand` would), then u * (high - low) + low in float32 with one rounding per operation, as the
kernel's separate statements compute it, with the constants the kernel's literals round to.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from .. import random as zrandom
from ..leaves import owned_leaf
from ..tensor import Tensor
from ..trace.philox import philox_uniform

Shape = tuple[int, ...]
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def draws_here(device: Any, low: float, high: float) -> bool:
    """Whether `uniform(shape, low, high, device)` is drawn on the host: the device's kernels run on this CPU, and
    the kernel's float32 constants are known exactly here (`_float32_constant`)."""
    return (device.kernels_on_host_cpu and _float32_constant(high - low) is not None
            and _float32_constant(low) is not None)


def uniform(shape: Shape, low: float, high: float, device: Any) -> Tensor:
    """U(low, high) of `shape` as `creation.uniform(...).realize()` gives it on `device` (see `draws_here`)."""
    count = math.prod(shape)
    seed, offset = zrandom.reserve(count)
    values = philox_uniform(seed, offset, count).reshape(shape)
    values *= _float32_constant(high - low)  # (in place: float32 products and sums, each rounded once)
    values += _float32_constant(low)
    return Tensor(owned_leaf(values, device))


def _float32_constant(value: float) -> Optional[np.float32]:
    """The float32 an OpenCL compiler makes of the kernel's literal for `value` (its shortest decimal, print_opencl's
    `literal`): numpy's rounding of the double, but where the double lies exactly halfway between two float32s (the
    decimal may then round either way) or past float32's range: None."""
    if not abs(value) <= _FLOAT32_MAX:
        return None
    single = np.float32(value)
    if float(single) != value:
        toward = np.float32(math.inf if value > float(single) else -math.inf)
        if (float(single) + float(np.nextafter(single, toward))) / 2 == value:
            return None
    return single
