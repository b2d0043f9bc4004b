"""Starting one of zyx's helper processes: `python -m <module>` run from zyx's own import root, so that `-m` finds
this zyx and nothing from the caller's directory, talking JSON lines over its stdin and stdout."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["start_helper_process"]


def start_helper_process(module: str, arguments: list[str]) -> subprocess.Popen:
    """The process running `module` with `arguments`; its stdin and stdout are line-buffered text pipes."""
    import zyx
    root = Path(zyx.__file__).resolve().parent.parent
    return subprocess.Popen([sys.executable, "-m", module, *arguments], cwd=root, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, bufsize=1)
