"""One compiler per kernel among the processes that share a cache directory (the ranks of an MPI job on a node).

A process about to compile a kernel takes an advisory lock (`flock`) on one of STRIPES files in `<cache>/locks/`,
picked by the kernel's key; one holding it compiles and stores the binary before letting go, and the others,
waiting on the same file, then find the binary and load it. A process that dies lets go of its locks (the kernel
closes its files). Locks on network file systems are unreliable: give each node a cache directory of its own.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

__all__ = ["STRIPES", "compile_lock"]

STRIPES = 64  # lock files: two kernels share one by chance only, and the folder never grows
FOLDER = "locks"


@contextlib.contextmanager
def compile_lock(directory: Path, key: str, wait: bool) -> Iterator[bool]:
    """Hold the lock for `key` (a hex cache key) under `directory`, a cache directory the caller trusts, waiting
    for another holder if `wait`. Yields whether it is held: False when another process holds it (and not
    `wait`), or when no lock file can be made there (the caller then goes on unlocked)."""
    try:
        folder = directory / FOLDER
        folder.mkdir(mode=0o700, exist_ok=True)
        descriptor = os.open(folder / f"compile-{int(key[:8], 16) % STRIPES:02d}.lock",
                             os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except (OSError, ValueError):
        descriptor = None
    if descriptor is None:
        yield False
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
        yield held
    finally:
        os.close(descriptor)  # releases the lock
