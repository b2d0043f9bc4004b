"""ZYX_DEBUG: 1 prints each kernel launch and whether each program was compiled or loaded, 2 also kernel
sources, 3 also each schedule."""
from __future__ import annotations

import os


def debug_level() -> int:
    try:
        return int(os.environ.get("ZYX_DEBUG", "0"))
    except ValueError:
        return 0
