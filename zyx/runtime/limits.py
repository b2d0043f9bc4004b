"""How much memory a device can give, checked before anything is allocated or launched.

Without the check a tensor too large for the device fails deep in the driver (pyopencl's INVALID_BUFFER_SIZE,
naming neither shape nor bytes), or, when it is fused away and never stored, runs for minutes. The check
raises OutOfMemoryError naming the shape, dtype and bytes asked for and the limit they exceed.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Protocol

from ..errors import OutOfMemoryError


def describe_bytes(nbytes: int) -> str:
    """`nbytes` with a binary unit, for messages."""
    size, unit = float(nbytes), "B"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, larger
    return f"{size:.3g} {unit}"


class Layout(Protocol):
    """Anything with a shape and a dtype: a trace node, an interpreted program's step."""

    shape: tuple[int, ...]
    dtype: Any


@dataclass(frozen=True)
class MemoryLimits:
    """The largest single buffer and the most memory all buffers together may take on one device."""

    max_buffer_bytes: int
    total_bytes: int
    device: str

    def check_bytes(self, nbytes: int, what: str) -> None:
        """Raise OutOfMemoryError when one buffer of `nbytes` (described by `what`) cannot be allocated."""
        if nbytes > self.max_buffer_bytes:
            raise OutOfMemoryError(f"{what} needs {nbytes} bytes ({describe_bytes(nbytes)}), more than {self.device} "
                                   f"can allocate at once ({describe_bytes(self.max_buffer_bytes)})")

    def check_node(self, node: Layout) -> None:
        nbytes = math.prod(node.shape) * node.dtype.itemsize
        self.check_bytes(nbytes, f"a tensor of shape {node.shape} and dtype {node.dtype.name}")

    def check_nodes(self, nodes: Iterable[Layout]) -> None:
        for node in nodes:
            self.check_node(node)

    def check_total(self, nbytes: int, what: str) -> None:
        """Raise OutOfMemoryError when `nbytes` held at once exceed the device's memory."""
        if nbytes > self.total_bytes:
            raise OutOfMemoryError(f"{what} needs {nbytes} bytes ({describe_bytes(nbytes)}) at once, more than "
                                   f"{self.device} has ({describe_bytes(self.total_bytes)})")


def host_limits() -> MemoryLimits:
    """The machine's physical memory, for tensors held by numpy."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return MemoryLimits(total, total, "the host (RAM)")
