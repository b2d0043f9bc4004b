"""Scheduled programs on disk, so a new process running the same trace schedules nothing.

A Program is plain data (kernel sources, launch sizes, argument bindings, the memory plan); it is stored as
JSON under a key made of the trace's structural hash, the device fingerprint, the traits its kernels were
shaped for (ZYX_GPU_KERNELS=1 shapes them for a GPU on any device), the zyx version and this format's
version. A damaged or unreadable entry is dropped and the trace scheduled again; a store that cannot be
opened leaves zyx working from memory.
"""
from __future__ import annotations

import functools
import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import diskcache
import xxhash

from .cache import CacheWarning, cache_directory
from .cache_key import device_fingerprint, zyx_version
from .program import Launch, Program

FORMAT = "program-1"
SCHEDULER_MODULES = ("program", "kernel_nodes", "render", "rewrite", "schedule", "symbolic", "tiling", "matmul",
                     "cpu_matmul", "opencl_c", "vectorize")


@functools.lru_cache(maxsize=1)
def scheduler_fingerprint() -> str:
    """A hash of the code that turns traces into programs: a changed scheduler never reuses old programs."""
    digest = xxhash.xxh3_64()
    for name in SCHEDULER_MODULES:
        digest.update((Path(__file__).parent / f"{name}.py").read_bytes())
    return digest.hexdigest()


def program_key(structure: str, device: Any, traits: Any) -> str:
    parts = {"structure": structure, **device_fingerprint(device), "traits": repr(traits),
             "zyx_version": zyx_version(), "format": FORMAT, "scheduler": scheduler_fingerprint()}
    return xxhash.xxh3_128_hexdigest(json.dumps(parts, sort_keys=True).encode())


def to_json(program: Program) -> str:
    return json.dumps(asdict(program), separators=(",", ":"))


def from_json(text: str) -> Program:
    data = json.loads(text)
    launches = [Launch(l["name"], l["source"], tuple(l["global_size"]),
                       tuple(l["local_size"]) if l["local_size"] else None,
                       tuple((kind, int(index)) for kind, index in l["args"]), int(l.get("flops", 0)),
                       int(l.get("bytes_moved", 0)), l.get("node", "")) for l in data["launches"]]
    return Program(launches, [int(b) for b in data["slot_bytes"]], [int(o) for o in data["outputs"]],
                   [[int(s) for s in f] for f in data["frees"]], [[int(s) for s in a] for a in data["allocs"]],
                   {int(k): int(v) for k, v in data.get("aliases", {}).items()}, data.get("name", ""))


class ProgramStore:
    """Programs keyed by structure and device, in `cache_directory()/programs`."""

    def __init__(self) -> None:
        self._store: Optional[diskcache.Cache] = None
        self._broken = False

    def _open(self) -> Optional[diskcache.Cache]:
        if self._store is None and not self._broken:
            try:
                self._store = diskcache.Cache(str(cache_directory() / "programs"), size_limit=256 * 2**20)
            except Exception as error:  # unwritable directory: keep working from memory
                self._broken = True
                warnings.warn(f"zyx: program cache unavailable ({error}); programs are kept in memory only",
                              CacheWarning, stacklevel=3)
        return self._store

    def load(self, key: str) -> Optional[Program]:
        store = self._open()
        if store is None:
            return None
        try:
            entry = store.get(key)
            if entry is None:
                return None
            checksum, text = entry
            if xxhash.xxh3_64_hexdigest(text.encode()) != checksum:
                raise ValueError("checksum mismatch")
            return from_json(text)
        except Exception as error:
            warnings.warn(f"zyx: dropped a damaged program cache entry ({error}); scheduling again",
                          CacheWarning, stacklevel=3)
            self._delete(key)
            return None

    def save(self, key: str, program: Program) -> None:
        store = self._open()
        if store is None:
            return
        text = to_json(program)
        try:
            store.set(key, (xxhash.xxh3_64_hexdigest(text.encode()), text))
        except Exception as error:
            self._broken, self._store = True, None
            warnings.warn(f"zyx: cannot write the program cache ({error}); programs are kept in memory only",
                          CacheWarning, stacklevel=3)

    def _delete(self, key: str) -> None:
        try:
            self._store.delete(key)  # type: ignore[union-attr]
        except Exception:
            pass

    def clear(self) -> int:
        store = self._open()
        return store.clear() if store is not None else 0

    def __len__(self) -> int:
        store = self._open()
        return len(store) if store is not None else 0


_default: list[ProgramStore] = []


def default_program_store() -> ProgramStore:
    if not _default:
        _default.append(ProgramStore())
    return _default[0]
