"""PoCL's own compile cache, kept inside Zyx's cache directory.

PoCL caches every program it builds (`~/.cache/pocl` by default, unbounded: 105 MB after the test suite), so
clearing Zyx's cache alone left "cold" runs warm. Here POCL_CACHE_DIR points at `<zyx cache>/pocl` before PoCL
starts (it reads the variable when the first platform is enumerated), so `zyx cache info` counts it and
`zyx cache clear` empties it. A POCL_CACHE_DIR the user set is left alone, and so is PoCL's default when the
Zyx cache directory is not private (`cache_dir.private_folder`).
"""
from __future__ import annotations

import os

from ..cache_dir import private_folder

__all__ = ["FOLDER", "place_pocl_cache"]

FOLDER = "pocl"


def place_pocl_cache() -> None:
    """Set POCL_CACHE_DIR to the `pocl` folder of the Zyx cache unless it is set; call before enumerating platforms."""
    if os.environ.get("POCL_CACHE_DIR"):
        return
    folder = private_folder(FOLDER)
    if folder is not None:
        os.environ["POCL_CACHE_DIR"] = str(folder)
