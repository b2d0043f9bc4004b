"""Scheduled programs on disk, so a new process running the same trace schedules nothing.

A Program is plain data (kernel sources, launch sizes, argument bindings, the memory plan), stored as JSON in
the `programs` table of the cache directory's store (`disk_store`) under the key of
`cache_key.program_components`, with its checksum beside it. A loaded program is
validated (`program_json`) against the trace it is for; a damaged one is dropped with one warning and the trace
scheduled again. A store that cannot be used leaves zyx working from memory.
"""
from __future__ import annotations

import json
import warnings
from typing import Any, Optional

from .cache import CacheWarning, cache_directory
from .cache_key import cache_key, hash_hex, program_components
from .disk_store import DiskStore
from .program import Program
from .program_json import InvalidProgram, program_from_json, program_to_json

__all__ = ["ProgramStore", "default_program_store", "program_key"]

TABLE = "programs"
SIZE_LIMIT = 256 << 20


def program_key(structure: str, fingerprint: dict[str, str], traits: Any, tuning: str = "none") -> str:
    """The disk key of the program for a trace structure on the device of `fingerprint`, scheduled with the tuned
    choices of digest `tuning` (see `program_components`)."""
    return cache_key(program_components(structure, fingerprint, traits, tuning))


class ProgramStore:
    """Programs keyed by `program_key`, in `cache_directory()` (opened at first use)."""

    def __init__(self) -> None:
        self._disk: Optional[DiskStore] = None

    @property
    def _store(self) -> DiskStore:
        if self._disk is None:
            self._disk = DiskStore(cache_directory(), TABLE, SIZE_LIMIT)
        return self._disk

    def load(self, key: str, inputs: int, rands: int) -> Optional[Program]:
        """The stored program for a trace with `inputs` buffers and `rands` random streams, or None."""
        stored = self._store.get(key)
        if stored is None:
            return None
        row, value = stored
        try:
            checksum = json.loads(row.meta).get("checksum")
            if checksum != hash_hex(value):
                raise InvalidProgram("it fails its checksum")
            program = program_from_json(value.decode(), inputs, rands)
        except (ValueError, AttributeError) as error:  # UnicodeDecodeError and InvalidProgram are ValueErrors
            warnings.warn(f"zyx program cache: dropped entry {key[:12]} ({error}); scheduling again",
                          CacheWarning, stacklevel=3)
            self._store.delete([key])
            return None
        self._store.record_use(key)
        return program

    def save(self, key: str, program: Program) -> None:
        value = program_to_json(program).encode()
        self._store.put(key, json.dumps({"checksum": hash_hex(value)}), value)

    def clear(self) -> int:
        return self._store.clear()

    def __len__(self) -> int:
        return len(self._store.rows())


_default: list[ProgramStore] = []


def default_program_store() -> ProgramStore:
    if not _default:
        _default.append(ProgramStore())
    return _default[0]
