"""ZYX_DEBUG: 1 prints each kernel launch and whether each program was compiled or loaded, 2 also each kernel's
time (tinygrad's DEBUG=2), 3 also each schedule, 4 also kernel sources."""
from __future__ import annotations

import logging
import os
import sys


def debug_level() -> int:
    try:
        return int(os.environ.get("ZYX_DEBUG", "0"))
    except ValueError:
        return 0


def debug_logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)` for a `zyx.*` module. Under ZYX_DEBUG, messages reach stderr even where the
    application configured no logging (then the `zyx` logger gets a plain stderr handler of its own)."""
    logger = logging.getLogger(name)
    root = logging.getLogger("zyx")
    if debug_level() >= 1 and root.level == logging.NOTSET:
        root.setLevel(logging.DEBUG)
        if not root.hasHandlers():
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            root.addHandler(handler)
    return logger
