"""Persistent OpenCL program cache: memory first, then a process-safe disk store, then the compiler.

The disk store is a `diskcache.Cache` (SQLite, safe across processes) bounded by an LRU size limit.
Each entry is two records, written in one transaction; values are bytes or JSON text, never pickles,
so a shared cache directory cannot smuggle code into a process:

    "m:<key>"  JSON metadata: key components, source, binary checksum, kernel names, times, hits
    "b:<key>"  the program binary, read after the program's first launch (see `KernelCache.commit`)

A damaged entry is dropped with one `CacheWarning` and recompiled; a directory that cannot be used
turns the cache memory-only with one `CacheWarning`. Neither interrupts the run.
"""
from __future__ import annotations

import atexit
import collections
import json
import os
import re
import sqlite3
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import diskcache
import pyopencl as cl

from zyx.jit.cache_key import (
    CACHE_FORMAT, FINGERPRINT_NAMES, cache_key, device_fingerprint, differing_components, hash_hex, key_components,
    zyx_version,
)
from zyx.counters import bump
from ..debug import debug_level

__all__ = ["CacheDirectoryWarning", "CacheWarning", "KernelCache", "cache_directory", "default_cache",
           "device_fingerprint", "device_matches", "parse_size", "selected"]

DEFAULT_SIZE_LIMIT = 1 << 30
SHORT_KEY_LENGTH = 12
_META, _BINARY = "m:", "b:"
_STORE_ERRORS = (sqlite3.Error, OSError, diskcache.Timeout)
_PENDING_ATTRIBUTE = "_zyx_cache_pending"
_META_FIELDS = frozenset({"components", "source", "checksum", "kernel_names", "compile_seconds", "binary_size",
                          "created", "last_used", "hits"})
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

T = TypeVar("T")


class CacheWarning(UserWarning):
    """The cache met a fault it recovered from (a damaged entry, an unusable directory); the run goes on."""


class CacheDirectoryWarning(CacheWarning):
    """The cache directory cannot be used, so compiled programs stay in memory only."""

    def __init__(self, reason: str):
        super().__init__(f"zyx kernel cache: {reason}; keeping compiled kernels in memory only")
        self.reason = reason


def cache_directory() -> Path:
    """ZYX_CACHE_DIR, else $XDG_CACHE_HOME/zyx, else ~/.cache/zyx."""
    if os.environ.get("ZYX_CACHE_DIR"):
        return Path(os.environ["ZYX_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "zyx"
    return Path.home() / ".cache" / "zyx"


def parse_size(text: str) -> int:
    """Bytes from "1073741824", "512M", "1.5G" or "64KiB" (suffixes are powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])I?)?B?\s*", text.upper())
    if match is None:
        raise ValueError(f"not a size: {text!r} (write bytes, or a number with K, M, G or T)")
    return int(float(match[1]) * _SIZE_UNITS[match[2] or ""])


def device_matches(name_filter: str, device_name: str) -> bool:
    """`--device NAME` filters: a case-insensitive substring, so "epyc" finds "pthread-AMD EPYC"."""
    return name_filter.casefold() in device_name.casefold()


def selected(entry: dict, device: str | None = None, older_than_seconds: float | None = None) -> bool:
    """Whether an `entries()` row passes the `clear` filters (None means no filter)."""
    return ((device is None or device_matches(device, entry["device"]))
            and (older_than_seconds is None or entry["last_used"] < time.time() - older_than_seconds))


def _size_limit_from_env() -> int:
    text = os.environ.get("ZYX_CACHE_SIZE")
    if not text:
        return DEFAULT_SIZE_LIMIT
    try:
        return parse_size(text)
    except ValueError as error:
        warnings.warn(f"ZYX_CACHE_SIZE: {error}; using 1G", CacheWarning, stacklevel=3)
        return DEFAULT_SIZE_LIMIT


def _debug(message: str) -> None:
    print(f"zyx: {message}", file=sys.stderr, flush=True)


def _kernel_names(program: cl.Program) -> list[str]:
    return [name for name in program.get_info(cl.program_info.KERNEL_NAMES).split(";") if name]


def _binary_for(program: cl.Program, device: cl.Device) -> bytes:
    devices = program.get_info(cl.program_info.DEVICES)
    return program.get_info(cl.program_info.BINARIES)[devices.index(device)]


def _parse_meta(text: object) -> dict | None:
    """The metadata record as a dict, or None when it is garbled or lacks a field."""
    try:
        meta = json.loads(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not isinstance(meta, dict) or not _META_FIELDS <= meta.keys() or not isinstance(meta["components"], dict):
        return None
    return meta


def _summary(key: str, meta: dict) -> dict:
    components = meta["components"]
    return {
        "key": key, "short_key": key[:SHORT_KEY_LENGTH], "kernel": ";".join(meta["kernel_names"]),
        "kernel_names": meta["kernel_names"], "device": components.get("device", ""),
        "platform": components.get("platform", ""), "zyx_version": components.get("zyx_version", ""),
        "size": meta["binary_size"], "compile_seconds": meta["compile_seconds"], "hits": meta["hits"],
        "created": meta["created"], "last_used": meta["last_used"], "components": components,
    }


def _present_fingerprints() -> set[tuple[str, ...]]:
    """Fingerprints of every OpenCL device visible now (an OpenCL error propagates: prune then refuses)."""
    fingerprints = set()
    for platform in cl.get_platforms():
        try:
            devices = platform.get_devices()
        except cl.Error:  # a platform without devices
            continue
        fingerprints.update(tuple(device_fingerprint(device).values()) for device in devices)
    return fingerprints


def _usable_here(components: dict, present: set[tuple[str, ...]]) -> bool:
    return (components.get("zyx_version") == zyx_version() and components.get("format") == CACHE_FORMAT
            and tuple(components.get(name) for name in FINGERPRINT_NAMES) in present)


@dataclass(frozen=True)
class _Pending:
    """What `commit` needs to store a program compiled by `build`."""
    key: str
    components: dict[str, str]
    source: str
    device: cl.Device
    compile_seconds: float


class _DamagedEntry(Exception):
    """A stored entry that cannot be trusted; the message says why."""


class KernelCache:
    """Built OpenCL programs, keyed by source, device, driver, build options and zyx version."""

    def __init__(self, directory: str | os.PathLike | None = None, size_limit: int | None = None):
        self.directory = Path(directory) if directory is not None else cache_directory()
        self.size_limit = size_limit if size_limit is not None else _size_limit_from_env()
        self._memory: dict[tuple[cl.Context, cl.Device, str], cl.Program] = {}
        self._lock = threading.Lock()
        self._store: diskcache.Cache | None = None
        self._browser: diskcache.Cache | None = None
        self._disk_usable = True
        self._later: list[cl.Program] = []
        self._store = self._guarded("open", lambda: self._open_store("least-recently-used"))

    # -- the JIT's entry points ------------------------------------------------------------------

    def build(self, context: cl.Context, device: cl.Device, source: str,
              options: tuple[str, ...] = ()) -> cl.Program:
        """Return a built program: from memory, else from disk (binary), else compiled."""
        components = key_components(device, source, options)
        key = cache_key(components)
        memory_key = (context, device, key)
        with self._lock:
            program = self._memory.get(memory_key)
        if program is not None:
            bump("cache_memory_hits")
            return program
        program = self._load(context, device, key, components, options)
        if program is None:
            program = self._compile(context, device, source, options, key, components)
        with self._lock:
            return self._memory.setdefault(memory_key, program)

    def commit(self, program: cl.Program) -> None:
        """Store a freshly compiled program's binary; call it after the program's first kernel launch.

        PoCL fixes a binary the first time CL_PROGRAM_BINARIES is read, so reading it after a launch
        keeps the work-group function compiled by that launch. Programs that came from the cache, or
        were committed already, are not stored again.
        """
        pending: _Pending | None = vars(program).pop(_PENDING_ATTRIBUTE, None)
        if pending is None or self._store is None:
            return
        binary = _binary_for(program, pending.device)
        now = time.time()
        meta = {
            "components": pending.components, "source": pending.source, "checksum": hash_hex(binary),
            "kernel_names": _kernel_names(program), "compile_seconds": pending.compile_seconds,
            "binary_size": len(binary), "created": now, "last_used": now, "hits": 0,
        }
        if self._guarded("write to", lambda: self._write(pending.key, meta, binary)):
            bump("cache_disk_writes")

    def commit_later(self, program: cl.Program) -> None:
        """`commit` when the process exits (or at `flush`): on PoCL, reading a program's binary compiles every
        kernel's work-group function again (1.9 s of a 4.9 s cold MLP start here), which the first step need
        not wait for."""
        with self._lock:
            if not self._later:
                atexit.register(self.flush)
            self._later.append(program)

    def flush(self) -> None:
        """Store every program `commit_later` queued."""
        with self._lock:
            later, self._later = self._later, []
        for program in later:
            self.commit(program)

    # -- inspection and maintenance (the `zyx cache` commands) ----------------------------------

    def entries(self) -> list[dict]:
        """Every readable entry's metadata, without its source, most recently used first."""
        summaries = [_summary(key, meta) for key, meta in self._all_metas().items() if meta is not None]
        return sorted(summaries, key=lambda summary: summary["last_used"], reverse=True)

    def entry(self, short_key: str) -> dict:
        """One entry, with source and checksum, by a unique key prefix; KeyError names what went wrong."""
        prefix = short_key.strip().lower()
        metas = {key: meta for key, meta in self._all_metas().items() if meta is not None}
        matches = [key for key in metas if key.startswith(prefix)] if prefix else []
        if not matches:
            raise KeyError(f"no cache entry has a key starting with {short_key!r}")
        if len(matches) > 1:
            raise KeyError(f"{short_key!r} is ambiguous: {len(matches)} entries start with it; give more digits")
        key = matches[0]
        return {**_summary(key, metas[key]), "source": metas[key]["source"], "checksum": metas[key]["checksum"]}

    def clear(self, device: str | None = None, older_than_seconds: float | None = None) -> int:
        """Remove entries (all, or those matching the device and last used before the age); return how many.

        The memory layer is emptied too, so a cleared cache recompiles in this process as well.
        """
        with self._lock:
            self._memory.clear()
        if self._store is None:
            return 0
        if device is None and older_than_seconds is None:
            count = len(self._all_metas())
            return count if self._guarded("clear", lambda: self._store.clear()) is not None else 0
        return self._delete_all([entry["key"] for entry in self.entries()
                                 if selected(entry, device, older_than_seconds)])

    def prune(self) -> int:
        """Remove entries this zyx version and the present devices can never load, plus damaged halves."""
        present = _present_fingerprints()
        metas = self._all_metas()
        doomed = {key for key, meta in metas.items() if meta is None or not _usable_here(meta["components"], present)}
        doomed.update(key for key in self._binary_keys() if key not in metas)
        return self._delete_all(sorted(doomed))

    def info(self) -> dict:
        """Directory, entry count, size on disk against the limit, and entries per device and zyx version."""
        summaries = self.entries()
        volume = self._guarded("read", lambda: self._store.volume()) if self._store is not None else None
        return {
            "directory": str(self.directory), "on_disk": self._store is not None, "entries": len(summaries),
            "bytes": volume or 0, "size_limit": self.size_limit, "memory_programs": len(self._memory),
            "by_device": dict(collections.Counter(summary["device"] for summary in summaries)),
            "by_zyx_version": dict(collections.Counter(summary["zyx_version"] for summary in summaries)),
        }

    # -- the three ways to get a program ---------------------------------------------------------

    def _load(self, context: cl.Context, device: cl.Device, key: str, components: dict[str, str],
              options: tuple[str, ...]) -> cl.Program | None:
        if self._store is None:
            return None
        start = time.perf_counter()
        stored = self._guarded("read", lambda: self._read_entry(key, components))
        if stored is None:
            return None
        meta, binary = stored
        try:
            program = cl.Program(context, [device], [binary]).build(options=list(options), devices=[device])
        except cl.Error as error:
            self._drop_damaged(key, f"the driver rejected its binary ({str(error).splitlines()[0]})")
            return None
        self._guarded("write to", lambda: self._record_hit(key))
        bump("cache_disk_hits")
        if debug_level() >= 1:
            names = ";".join(meta["kernel_names"])
            _debug(f"loaded {names} from the cache in {(time.perf_counter() - start) * 1e3:.1f} ms "
                   f"(key {key[:SHORT_KEY_LENGTH]})")
        return program

    def _compile(self, context: cl.Context, device: cl.Device, source: str, options: tuple[str, ...],
                 key: str, components: dict[str, str]) -> cl.Program:
        start = time.perf_counter()
        try:
            program = cl.Program(context, source).build(options=list(options), devices=[device])
        except cl.RuntimeError:
            # PoCL's own kernel cache can fail a build when several processes fill it at once: try once more,
            # so only a real compile error reaches the caller
            program = cl.Program(context, source).build(options=list(options), devices=[device])
        seconds = time.perf_counter() - start
        bump("kernels_compiled")
        bump("cache_misses")
        bump("compile_seconds", seconds)
        vars(program)[_PENDING_ATTRIBUTE] = _Pending(key, components, source, device, seconds)
        if debug_level() >= 1:
            names = ";".join(_kernel_names(program))
            _debug(f"compiled {names} in {seconds * 1e3:.1f} ms (key {key[:SHORT_KEY_LENGTH]})")
        if os.environ.get("ZYX_DEBUG_CACHE") == "1":
            _debug(self._explain_miss(key, components))
        return program

    def _explain_miss(self, key: str, components: dict[str, str]) -> str:
        """Name the components that differ from the closest stored entry compiled from the same source."""
        short = key[:SHORT_KEY_LENGTH]
        same_source = {stored_key: meta["components"] for stored_key, meta in self._all_metas().items()
                       if meta is not None and meta["components"].get("source_hash") == components["source_hash"]}
        if not same_source:
            return f"cache miss {short}: no entry holds this source"
        differences = {stored_key: differing_components(components, stored)
                       for stored_key, stored in same_source.items()}
        nearest = min(differences, key=lambda stored_key: len(differences[stored_key]))
        stored = same_source[nearest]
        described = ", ".join(f"{name} ({components[name]!r} here, {stored.get(name)!r} stored)"
                              for name in differences[nearest])
        return f"cache miss {short}: nearest entry {nearest[:SHORT_KEY_LENGTH]} differs in {described}"

    # -- the disk store ------------------------------------------------------------------------

    def _open_store(self, eviction_policy: str) -> diskcache.Cache:
        """cull_limit 4: a write over the limit evicts at most two entries (diskcache's default is five)."""
        return diskcache.Cache(str(self.directory), size_limit=self.size_limit, eviction_policy=eviction_policy,
                               cull_limit=4)

    def _inspection_store(self) -> diskcache.Cache | None:
        """A handle whose reads do not refresh LRU times, so listing the cache does not reorder eviction."""
        if self._browser is None and self._store is not None:
            self._browser = self._guarded("open", lambda: self._open_store("none"))
        return self._browser

    def _guarded(self, action: str, operation: Callable[[], T]) -> T | None:
        """Run a disk operation; on a store error fall back to memory only and return None."""
        try:
            return operation()
        except _STORE_ERRORS as error:
            self._fall_back_to_memory(f"cannot {action} {self.directory} ({error})")
            return None

    def _fall_back_to_memory(self, reason: str) -> None:
        self._store = self._browser = None
        if self._disk_usable:
            self._disk_usable = False
            warnings.warn(CacheDirectoryWarning(reason), stacklevel=4)

    def _read_entry(self, key: str, components: dict[str, str]) -> tuple[dict, bytes] | None:
        """The stored metadata and binary, or None for a miss; a damaged entry is dropped and misses."""
        text = self._store.get(_META + key)
        if text is None:
            return None
        binary = self._store.get(_BINARY + key)
        if binary is None:  # LRU eviction took the binary half: an ordinary miss
            self._delete(key)
            return None
        try:
            return _checked_entry(text, binary, components), binary
        except _DamagedEntry as damage:
            self._drop_damaged(key, str(damage))
            return None

    def _drop_damaged(self, key: str, reason: str) -> None:
        warnings.warn(f"zyx kernel cache: dropped entry {key[:SHORT_KEY_LENGTH]} because {reason}; recompiling",
                      CacheWarning, stacklevel=5)
        self._guarded("write to", lambda: self._delete(key))

    def _write(self, key: str, meta: dict, binary: bytes) -> bool:
        """Store both halves in one transaction; False when another process stored this key first."""
        with self._store.transact():
            if _META + key in self._store:
                return False
            self._store.set(_BINARY + key, binary)
            self._store.set(_META + key, json.dumps(meta))
        return True

    def _record_hit(self, key: str) -> None:
        with self._store.transact():
            meta = _parse_meta(self._store.get(_META + key))
            if meta is None:  # removed or replaced since it was read: nothing to count
                return
            meta["hits"] += 1
            meta["last_used"] = time.time()
            self._store.set(_META + key, json.dumps(meta))

    def _delete(self, key: str) -> None:
        with self._store.transact():
            self._store.delete(_META + key)
            self._store.delete(_BINARY + key)

    def _delete_all(self, keys: list[str]) -> int:
        """Delete entries one by one; return how many went (fewer when the store fails midway)."""
        for deleted, key in enumerate(keys):
            self._guarded("write to", lambda: self._delete(key))
            if self._store is None:
                return deleted
        return len(keys)

    def _all_metas(self) -> dict[str, dict | None]:
        browser = self._inspection_store()
        return (self._guarded("read", lambda: _read_metas(browser)) or {}) if browser is not None else {}

    def _binary_keys(self) -> list[str]:
        browser = self._inspection_store()
        return (self._guarded("read", lambda: _keys_with(browser, _BINARY)) or []) if browser is not None else []


def _keys_with(store: diskcache.Cache, prefix: str) -> list[str]:
    return [db_key[len(prefix):] for db_key in list(store.iterkeys())
            if isinstance(db_key, str) and db_key.startswith(prefix)]


def _read_metas(store: diskcache.Cache) -> dict[str, dict | None]:
    """Every metadata record by key; None marks a garbled one or one whose binary half was evicted."""
    return {key: _parse_meta(store.get(_META + key)) if _BINARY + key in store else None
            for key in _keys_with(store, _META)}


def _checked_entry(text: object, binary: object, components: dict[str, str]) -> dict:
    meta = _parse_meta(text)
    if meta is None:
        raise _DamagedEntry("its metadata is garbled")
    if meta["components"] != components:
        raise _DamagedEntry("its metadata does not match its key")
    if not isinstance(binary, bytes) or hash_hex(binary) != meta["checksum"]:
        raise _DamagedEntry("its binary fails the checksum")
    return meta


_default: KernelCache | None = None
_default_lock = threading.Lock()


def default_cache() -> KernelCache:
    """The process-wide cache; its directory and size limit are read from the environment at first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = KernelCache()
        return _default
