"""Where Zyx keeps what it caches, and the folders in it that other tools (PoCL, failed builds) write to.

It sits outside `jit` and `runtime` because both place files there: the kernel and program caches (`jit`),
PoCL's own compile cache (`runtime`). A folder is only handed out under a directory this user owns and that
group and others cannot write, the rule the kernel cache applies to itself (`jit.disk_store`): Zyx and PoCL run
what they find there.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["cache_directory", "private_folder"]


def cache_directory() -> Path:
    """ZYX_CACHE_DIR, else $XDG_CACHE_HOME/zyx, else ~/.cache/zyx."""
    if os.environ.get("ZYX_CACHE_DIR"):
        return Path(os.environ["ZYX_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "zyx"
    return Path.home() / ".cache" / "zyx"


def private_folder(name: str, create: bool = True) -> Path | None:
    """`cache_directory() / name`, made 0700 when missing (if `create`), or None when it or the cache directory is
    missing, not a real directory, another user's, or writable by group or others."""
    root = cache_directory()
    folder = root / name
    try:
        if create:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _private(root):
            return None
        if create:
            folder.mkdir(mode=0o700, exist_ok=True)
        return folder if _private(folder) else None
    except OSError:
        return None


def _private(path: Path) -> bool:
    info = os.lstat(path)
    return (stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
