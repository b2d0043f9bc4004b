"""ZYX_TUNE's search modes and the kernel time under which mode 1 leaves a kernel unsearched (tune.py searches):
read on every program lookup, so apart from the tuner, which a process that does not search never imports."""
from __future__ import annotations

import os

from .device_traits import DeviceTraits

THRESHOLD_SECONDS = 1e-3
"""ZYX_TUNE=1 searches kernels slower than this. A search compiles up to tune.NEIGHBOURS kernels (0.3-1.3 s each on
PoCL here, a tenth of that with a GPU driver) and times them for about a second: a 20% gain on a 1 ms kernel
pays that back within some tens of thousands of launches, what a training run makes. Below it, a kernel's time
is largely its launch (75-150 us for an empty kernel on PoCL here) and the timer's noise, so the gains a search
can measure are the ones it cannot tell from noise. Kernels under it are measured again by each process that
searches (nothing is stored for them)."""
GPU_THRESHOLD_SECONDS = 5e-5
"""THRESHOLD_SECONDS on GPUs: their drivers compile a candidate in a tenth of PoCL's time and back-to-back launches
time a 50 us kernel to a few percent, while 1 ms would leave every product of the W3 shapes unsearched (the H200
runs 1021³ in 75 us, 3000x700x5000 in 0.65 ms)."""


def threshold_seconds(traits: DeviceTraits) -> float:
    """The time under which ZYX_TUNE=1 leaves a kernel unsearched on a device of `traits`."""
    return GPU_THRESHOLD_SECONDS if traits.gpu else THRESHOLD_SECONDS


def tune_mode(requested: int = 0) -> int:
    """The search mode: ZYX_TUNE (0, 1 or 2), at least `requested`."""
    text = os.environ.get("ZYX_TUNE", "0").strip() or "0"
    if text not in ("0", "1", "2"):
        raise ValueError(f"ZYX_TUNE={text!r}: expected 0 (no search), 1 (search kernels slower than "
                         f"{THRESHOLD_SECONDS * 1e3:g} ms, {GPU_THRESHOLD_SECONDS * 1e6:g} us on GPUs) or 2 (search "
                         f"every kernel exhaustively)")
    return max(int(text), requested)
