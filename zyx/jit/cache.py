"""Persistent OpenCL program cache: memory first, then the disk store, then the compiler.

On disk an entry is one row of the `kernels` table of `disk_store.DiskStore` (SQLite, shared safely by
processes, bounded by an LRU size limit): the program binary, and JSON metadata (key components, source,
binary checksum, kernel names, compile time) that is parsed and validated before the binary is handed to the
driver. Nothing stored is ever unpickled or run as Python. Binaries are read after a program's first launch
(see `KernelCache.commit`) and written by a background thread (`commit_later`; on a PoCL CPU device, by a helper
process: `pocl_helper`), so the first step does not wait for them; the exit waits about as long as the process
spent compiling (`KernelCache._exit_wait_seconds`).

A damaged entry is dropped with one `CacheWarning` and recompiled; the store handles damaged databases,
read-only and untrusted directories (see `disk_store`). None of these interrupts the run.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pyopencl as cl

from zyx.jit.background import BackgroundWriter
from zyx.jit.build_processes import build_apart, builds_apart, compile_threads
from zyx.jit.pocl_helper import PoclHelper, serves
from zyx.jit.compile_lock import compile_lock
from zyx.jit.compiler import build_binary, build_source
from zyx.jit.driver_warm_up import warm_up, warm_up_options
from zyx.jit.program_binary import program_binary
from zyx.jit.cache_key import (
    CACHE_FORMAT, COMPONENT_NAMES, FINGERPRINT_NAMES, cache_key, device_fingerprint, differing_components, hash_hex,
    key_components, zyx_version,
)
from zyx.jit.disk_store import CacheDirectoryWarning, CacheWarning, DiskStore, Row
from zyx.cache_dir import cache_directory
from zyx import progress
from zyx.counters import bump
from zyx.runtime.pocl_cache import place_pocl_cache
from ..debug import explain_cache_misses, logger

__all__ = ["CacheDirectoryWarning", "CacheWarning", "KernelCache", "cache_directory", "default_cache",
           "device_fingerprint", "device_matches", "parse_size", "selected"]

DEFAULT_SIZE_LIMIT = 1 << 30
EXIT_WAIT_SECONDS = 1.0         # the least the exit waits for binaries to be stored
EXIT_WAIT_LIMIT_SECONDS = 60.0  # the most, however long this process compiled
SHORT_KEY_LENGTH = 12
TABLE = "kernels"
_PENDING_ATTRIBUTE = "_zyx_cache_pending"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEX_KEY = re.compile(r"[0-9a-f]{32}")
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


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


# A program of fewer launches is compiled by this process alone: the helper's share would cost about what its
# build of the program (served by PoCL's cache) and its job do, and one kernel may be compiled by both where they
# meet. Where every core is busy anyway (tests/trace on both cores) compiling every program ahead took 2-7 % more
# CPU.
AHEAD_MIN_LAUNCHES = 4


def _size_limit_from_env() -> int:
    text = os.environ.get("ZYX_CACHE_SIZE")
    if not text:
        return DEFAULT_SIZE_LIMIT
    try:
        return parse_size(text)
    except ValueError as error:
        warnings.warn(f"ZYX_CACHE_SIZE: {error}; using 1G", CacheWarning, stacklevel=3)
        return DEFAULT_SIZE_LIMIT


def _kernel_names(program: cl.Program) -> list[str]:
    return [name for name in program.get_info(cl.program_info.KERNEL_NAMES).split(";") if name]


class _DamagedEntry(Exception):
    """A stored entry that cannot be trusted; the message says why."""


def _parse_meta(text: str) -> dict:
    """The metadata JSON as a dict with every field of the right type, else _DamagedEntry."""
    try:
        meta = json.loads(text)
    except ValueError:
        raise _DamagedEntry("its metadata is garbled") from None
    if not isinstance(meta, dict):
        raise _DamagedEntry("its metadata is garbled")
    components = meta.get("components")
    if not (isinstance(components, dict) and set(components) == set(COMPONENT_NAMES)
            and all(isinstance(value, str) for value in components.values())):
        raise _DamagedEntry("its metadata is garbled (key components)")
    names = meta.get("kernel_names")
    if not (isinstance(names, list) and names and all(isinstance(n, str) and _IDENTIFIER.fullmatch(n) for n in names)):
        raise _DamagedEntry("its metadata is garbled (kernel names)")
    if not (isinstance(meta.get("source"), str) and isinstance(meta.get("checksum"), str)
            and _HEX_KEY.fullmatch(meta["checksum"])):
        raise _DamagedEntry("its metadata is garbled (source or checksum)")
    for field in ("compile_seconds", "binary_size"):
        value = meta.get(field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise _DamagedEntry(f"its metadata is garbled ({field})")
    return meta


def _checked_entry(text: str, binary: bytes, components: dict[str, str]) -> dict:
    meta = _parse_meta(text)
    if meta["components"] != components:
        raise _DamagedEntry("its metadata does not match its key")
    if meta["binary_size"] != len(binary) or hash_hex(binary) != meta["checksum"]:
        raise _DamagedEntry("its binary fails the checksum")
    return meta


def _valid_meta(row: Row) -> dict | None:
    """A listed row's metadata, or None when it is damaged (listing skips it; `prune` removes it)."""
    try:
        return _parse_meta(row.meta)
    except _DamagedEntry:
        return None


def _summary(row: Row, meta: dict) -> dict:
    components = meta["components"]
    return {
        "key": row.key, "short_key": row.key[:SHORT_KEY_LENGTH], "kernel": ";".join(meta["kernel_names"]),
        "kernel_names": meta["kernel_names"], "device": components["device"], "platform": components["platform"],
        "zyx_version": components["zyx_version"], "size": meta["binary_size"],
        "compile_seconds": meta["compile_seconds"], "hits": row.hits, "created": row.created,
        "last_used": row.last_used, "components": components,
    }


def _present_fingerprints() -> set[tuple[str, ...]]:
    """Fingerprints of every OpenCL device visible now (an OpenCL error propagates: prune then refuses)."""
    place_pocl_cache()
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
    options: tuple[str, ...]
    compile_seconds: float


def pending_entry(device: cl.Device, source: str, options: tuple[str, ...], compile_seconds: float) -> _Pending:
    """What storing `source` built for `device` with `options` needs, its key computed here."""
    components = key_components(device, source, options)
    return _Pending(cache_key(components), components, source, device, options, compile_seconds)


class KernelCache:
    """Built OpenCL programs, keyed by source, device, driver, build options and zyx version."""

    def __init__(self, directory: str | os.PathLike | None = None, size_limit: int | None = None):
        self.directory = Path(directory) if directory is not None else cache_directory()
        self.size_limit = size_limit if size_limit is not None else _size_limit_from_env()
        self._memory: dict[tuple[cl.Context, cl.Device, str], cl.Program] = {}
        self._lock = threading.Lock()
        self._compiled_seconds = 0.0  # spent compiling programs in this process
        self._warmed: set[int] = set()  # devices whose driver was warmed up (`prepare_compiles`)
        self._writer = BackgroundWriter(self._exit_wait_seconds, finish=self._stop_helper)
        self._store = DiskStore(self.directory, TABLE, self.size_limit)
        self._helper = PoclHelper(self.directory, self.size_limit, lambda: bump("cache_disk_writes"))
        self._shared = False  # see share_compiles

    # -- the JIT's entry points ------------------------------------------------------------------

    def build(self, context: cl.Context, device: cl.Device, source: str,
              options: tuple[str, ...] = ()) -> cl.Program:
        """Return a built program: from memory, else from disk (binary), else compiled."""
        return self.build_many(context, device, [source], options)[0]

    def build_many(self, context: cl.Context, device: cl.Device, sources: Sequence[str],
                   options: tuple[str, ...] = (), on_built: Callable[[int], None] = lambda index: None
                   ) -> list[cl.Program]:
        """Built programs for `sources` (memory, else disk, else compiled); `on_built(i)` as the i-th is ready.

        The ones to compile are compiled at once on up to `compile_threads()` threads: the driver's compiler
        runs without the GIL (pyopencl releases it in clBuildProgram), so a cold program's builds overlap. Their
        bookkeeping (counters, memory, logs) stays on the calling thread.
        """
        programs: list[cl.Program | None] = []
        wanted: list[tuple[dict[str, str], str]] = []
        for index, source in enumerate(sources):
            components = key_components(device, source, options)
            key = cache_key(components)
            wanted.append((components, key))
            with self._lock:
                program = self._memory.get((context, device, key))
            if program is not None:
                bump("cache_memory_hits")
            else:
                program = self._load(context, device, key, components, options)
            programs.append(program)
            if program is not None:
                on_built(index)
        missing = [index for index, program in enumerate(programs) if program is None]
        if missing and self._shares_compiles:
            self._build_shared(context, device, sources, options, wanted, programs, on_built)
        elif missing:
            self._compile_into(context, device, sources, options, wanted, programs, missing, on_built)
        with self._lock:
            return [self._memory.setdefault((context, device, key), program)
                    for (_, key), program in zip(wanted, programs)]

    def share_compiles(self) -> None:
        """Other processes use this cache directory at the same time (the ranks of an MPI job on one node): from
        now on one of them compiles a missing kernel while the others wait for its binary and load it, instead of
        each compiling it (see compile_lock.py). Binaries are then stored as soon as they are built."""
        self._shared = True

    @property
    def _shares_compiles(self) -> bool:
        return self._shared and self.stores_binaries and not self._store.read_only

    def holds(self, device: cl.Device, source: str, options: tuple[str, ...] = ()) -> bool:
        """Whether `build` would find the program in memory or on disk (it may still prove damaged there)."""
        key = cache_key(key_components(device, source, options))
        with self._lock:
            if any(memory_key[1:] == (device, key) for memory_key in self._memory):
                return True
        return self._store.holds(key)

    def commit(self, program: cl.Program) -> None:
        """Store a freshly compiled program's binary; call it after the program's first kernel launch.

        PoCL fixes a binary the first time CL_PROGRAM_BINARIES is read, so reading it after a launch
        keeps the work-group function compiled by that launch. Programs that came from the cache, or
        were committed already, are not stored again.
        """
        pending: _Pending | None = vars(program).pop(_PENDING_ATTRIBUTE, None)
        if pending is not None and self.store(program, pending):
            bump("cache_disk_writes")

    def store(self, program: cl.Program, pending: _Pending) -> bool:
        """Read `program`'s binary and write it with its metadata as one entry; whether it was written."""
        if not self.stores_binaries:
            return False
        binary = program_binary(program, pending.device)
        meta = {
            "components": pending.components, "source": pending.source, "checksum": hash_hex(binary),
            "kernel_names": _kernel_names(program), "compile_seconds": pending.compile_seconds,
            "binary_size": len(binary),
        }
        return self._store.put(pending.key, json.dumps(meta), binary)

    def commit_later(self, program: cl.Program, after: cl.Event | None = None) -> None:
        """`commit`, off the caller's way: reading a program's binary can compile every kernel again (1.9 s of a
        4.9 s cold MLP start on PoCL), which the first step need not wait for. On a PoCL CPU device the binary is
        read by the helper process (`pocl_helper`), once `after` (a marker behind the program's launches) is
        done, so that PoCL's cache holds the launches' compiled code for it; elsewhere `commit` runs on the
        cache's writer thread. At exit both wait about as long as this process spent compiling (1 to 60 s), then
        leave the rest to be compiled again next time (on PoCL from its own cache, which is quick)."""
        if not self.stores_binaries:
            return
        pending: _Pending | None = vars(program).get(_PENDING_ATTRIBUTE)
        if pending is None or not serves(pending.device):
            self._writer.submit(lambda: self.commit(program))
            return
        del vars(program)[_PENDING_ATTRIBUTE]

        def hand_over() -> None:
            if after is not None:
                after.wait()
            self._helper.submit(pending.key, pending.components, pending.source, pending.options,
                                pending.compile_seconds)
        self._writer.submit(hand_over)

    def start_helper(self, device: cl.Device) -> None:
        """Start the helper process now where it will work for `device` (pocl_helper.py): a cold JIT start calls
        this before its compiles, so that the helper's own start (1-2 s at load) overlaps them."""
        if self.stores_binaries and serves(device):
            self._helper.start()

    def is_empty(self) -> bool:
        """Whether nothing was ever stored here (or all was cleared): a process using it will compile."""
        return self._store.is_empty()

    def prepare_compiles(self, context: cl.Context, device: cl.Device) -> None:
        """A program is about to be scheduled for `device`, and likely compiled: where the helper serves the
        device (PoCL on a CPU), warm the driver up (`driver_warm_up`) on a thread of its own, once per device, so
        that it overlaps the scheduling (0.7 s of a cold W5 start on a 2-core EPYC). Not on the writer thread: the
        binaries queued behind it could miss the exit's wait. Not a daemon: an exit waits for the driver to return
        (at most the warm-up's second), as one inside the driver's link could crash in its teardown."""
        if not serves(device) or device.int_ptr in self._warmed:
            return
        self._warmed.add(device.int_ptr)
        threading.Thread(target=warm_up, args=(context, device, warm_up_options(device)),
                         name="zyx-driver-warm-up").start()

    def compile_ahead(self, program: cl.Program, launches: list) -> None:
        """Have the helper process compile the work-group functions of a freshly compiled `program`'s `launches`
        (name, global size, local size, argument bytes or None for a 64-bit integer), which its first run is about
        to make in this order: it takes them from the last one back while this process's launches compile from the
        first one on (PoCL compiles a work-group function at a kernel's first launch, one at a time in a process).
        Not for fewer than AHEAD_MIN_LAUNCHES launches."""
        pending: _Pending | None = vars(program).get(_PENDING_ATTRIBUTE)
        if (pending is None or len(launches) < AHEAD_MIN_LAUNCHES or not self.stores_binaries
                or not serves(pending.device)):
            return
        self._helper.compile_ahead(pending.key, pending.components, pending.source, pending.options,
                                   launches[::-1])

    @property
    def stores_binaries(self) -> bool:
        """Whether built programs are written to disk: not with a size limit of 0 (`ZYX_CACHE_SIZE=0`), where
        nothing is read back from the driver either (on PoCL that read compiles every kernel again)."""
        return self.size_limit > 0 and self._store.on_disk

    def _exit_wait_seconds(self) -> float:
        """How long the exit waits for binaries still to be stored: as long as this process spent compiling
        them (at least EXIT_WAIT_SECONDS, at most EXIT_WAIT_LIMIT_SECONDS). A binary not stored is compiled
        again by the next process, and on PoCL storing one costs about what compiling it did."""
        return min(max(EXIT_WAIT_SECONDS, self._compiled_seconds), EXIT_WAIT_LIMIT_SECONDS)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every program `commit_later` queued is stored; False if `timeout` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._writer.wait(timeout) and self._helper.wait(
            None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _stop_helper(self, deadline: float) -> None:
        """Give the helper the writer's budget twice: on PoCL the compile time counted here is the front end's, and
        the helper's binary reads repeat the launches' code generation, which takes about as long again. A
        terminal is told while binaries are still being stored (char_gpt's first run: 22 s after its last line)."""
        with contextlib.nullcontext() if self._helper.wait(0) else progress.storing():
            self._helper.stop(deadline + self._exit_wait_seconds())

    # -- inspection and maintenance (the `zyx cache` commands) ----------------------------------

    def entries(self) -> list[dict]:
        """Every valid entry's metadata, without its source, most recently used first."""
        summaries = [_summary(row, meta) for row, meta in self._valid_rows()]
        return sorted(summaries, key=lambda summary: summary["last_used"], reverse=True)

    def entry(self, name: str) -> dict:
        """One entry, with source and checksum, by a unique key prefix or by a kernel name (as ZYX_DEBUG prints
        them); KeyError names what went wrong. A kernel held by several entries gives the most recently used,
        with the others' short keys under "also_in"."""
        wanted = name.strip()
        rows = {row.key: (row, meta) for row, meta in self._valid_rows()}
        matches = [key for key in rows if key.startswith(wanted.lower())] if wanted else []
        if len(matches) > 1:
            raise KeyError(f"{name!r} is ambiguous: {len(matches)} entries start with it; give more digits")
        if not matches:
            matches = sorted((key for key, (_, meta) in rows.items() if wanted in meta["kernel_names"]),
                             key=lambda key: rows[key][0].last_used, reverse=True)
        if not matches:
            raise KeyError(f"no cache entry has a key starting with {name!r} or a kernel named {name!r}")
        row, meta = rows[matches[0]]
        return {**_summary(row, meta), "source": meta["source"], "checksum": meta["checksum"],
                "also_in": [key[:SHORT_KEY_LENGTH] for key in matches[1:]]}

    def clear(self, device: str | None = None, older_than_seconds: float | None = None) -> int:
        """Remove entries (all, or those matching the device and last used before the age); return how many.

        The memory layer is emptied too, so a cleared cache recompiles in this process as well.
        """
        with self._lock:
            self._memory.clear()
        if device is None and older_than_seconds is None:
            return self._store.clear()
        return self._store.delete([entry["key"] for entry in self.entries()
                                   if selected(entry, device, older_than_seconds)])

    def prune(self) -> int:
        """Remove entries this zyx version and the present devices can never load, and damaged ones."""
        present = _present_fingerprints()
        doomed = []
        for row in self._store.rows():
            meta = _valid_meta(row)
            if meta is None or not _usable_here(meta["components"], present):
                doomed.append(row.key)
        return self._store.delete(doomed)

    def info(self) -> dict:
        """Directory, entry count, bytes held against the limit, and entries per device and zyx version."""
        summaries = self.entries()
        return {
            "directory": str(self.directory), "on_disk": self._store.on_disk, "read_only": self._store.read_only,
            "entries": len(summaries), "bytes": self._store.volume(), "size_limit": self.size_limit,
            "memory_programs": len(self._memory),
            "by_device": dict(collections.Counter(summary["device"] for summary in summaries)),
            "by_zyx_version": dict(collections.Counter(summary["zyx_version"] for summary in summaries)),
        }

    def _valid_rows(self) -> list[tuple[Row, dict]]:
        return [(row, meta) for row in self._store.rows() if (meta := _valid_meta(row)) is not None]

    # -- the three ways to get a program ---------------------------------------------------------

    def _load(self, context: cl.Context, device: cl.Device, key: str, components: dict[str, str],
              options: tuple[str, ...]) -> cl.Program | None:
        start = time.perf_counter()
        stored = self._store.get(key)
        if stored is None:
            return None
        row, binary = stored
        try:
            meta = _checked_entry(row.meta, binary, components)
        except _DamagedEntry as damage:
            self._drop_damaged(key, str(damage))
            return None
        try:
            program = build_binary(context, device, binary, options)
        except cl.Error as error:
            self._drop_damaged(key, f"the driver rejected its binary ({str(error).splitlines()[0]})")
            return None
        self._store.record_use(key)
        bump("cache_disk_hits")
        logger("zyx.cache").info("loaded %s from the cache in %.1f ms (key %s)", ";".join(meta["kernel_names"]),
                                 (time.perf_counter() - start) * 1e3, key[:SHORT_KEY_LENGTH])
        return program

    def _compile_into(self, context: cl.Context, device: cl.Device, sources: Sequence[str], options: tuple[str, ...],
                      wanted: list[tuple[dict[str, str], str]], programs: list, indices: Sequence[int],
                      on_built: Callable[[int], None]) -> list[int]:
        """Compile `sources[i]` for each i of `indices`, side by side, into `programs[i]`; returns the indices."""
        if not indices:
            return []
        for index, (program, seconds) in _compile_all(context, device, [sources[i] for i in indices], options,
                                                      indices):
            components, key = wanted[index]
            programs[index] = self._record_compiled(program, seconds, sources[index], device, options, key,
                                                    components)
            on_built(index)
        return list(indices)

    def _build_shared(self, context: cl.Context, device: cl.Device, sources: Sequence[str], options: tuple[str, ...],
                      wanted: list[tuple[dict[str, str], str]], programs: list,
                      on_built: Callable[[int], None]) -> None:
        """The missing programs, each compiled by one of the processes sharing the directory: this one locks the
        keys no other holds, loads those stored meanwhile, compiles the rest side by side and stores them before
        letting go; then it waits for the keys others hold and loads what they stored (compiling what they did not)."""
        def load(index: int) -> bool:
            components, key = wanted[index]
            programs[index] = self._load(context, device, key, components, options)
            if programs[index] is not None:
                on_built(index)
            return programs[index] is not None

        missing = [index for index, program in enumerate(programs) if program is None]
        with contextlib.ExitStack() as held:
            mine = [i for i in missing if held.enter_context(compile_lock(self.directory, wanted[i][1], wait=False))]
            for index in self._compile_into(context, device, sources, options, wanted, programs,
                                            [i for i in mine if not load(i)], on_built):
                self.commit(programs[index])
        for index in missing:
            if programs[index] is None:
                with compile_lock(self.directory, wanted[index][1], wait=True):
                    if not load(index):  # the holder stored nothing (it failed, or its binary was rejected)
                        self._compile_into(context, device, sources, options, wanted, programs, [index], on_built)
                        self.commit(programs[index])

    def _record_compiled(self, program: cl.Program, seconds: float, source: str, device: cl.Device,
                         options: tuple[str, ...], key: str, components: dict[str, str]) -> cl.Program:
        bump("kernels_compiled")
        bump("cache_misses")
        bump("compile_seconds", seconds)
        self._compiled_seconds += seconds
        vars(program)[_PENDING_ATTRIBUTE] = _Pending(key, components, source, device, options, seconds)
        log = logger("zyx.cache")
        log.info("compiled %s in %.1f ms (key %s)", ";".join(_kernel_names(program)), seconds * 1e3,
                 key[:SHORT_KEY_LENGTH])
        if explain_cache_misses():
            log.info("%s", self._explain_miss(key, components))
        return program

    def _explain_miss(self, key: str, components: dict[str, str]) -> str:
        """Name the components that differ from the closest stored entry compiled from the same source."""
        short = key[:SHORT_KEY_LENGTH]
        same_source = {row.key: meta["components"] for row, meta in self._valid_rows()
                       if meta["components"]["source_hash"] == components["source_hash"]}
        if not same_source:
            return f"cache miss {short}: no entry holds this source"
        differences = {stored_key: differing_components(components, stored)
                       for stored_key, stored in same_source.items()}
        nearest = min(differences, key=lambda stored_key: len(differences[stored_key]))
        stored = same_source[nearest]
        described = ", ".join(f"{name} ({components[name]!r} here, {stored.get(name)!r} stored)"
                              for name in differences[nearest])
        return f"cache miss {short}: nearest entry {nearest[:SHORT_KEY_LENGTH]} differs in {described}"

    def _drop_damaged(self, key: str, reason: str) -> None:
        warnings.warn(f"zyx kernel cache: dropped entry {key[:SHORT_KEY_LENGTH]} because {reason}; recompiling",
                      CacheWarning, stacklevel=5)
        self._store.delete([key])


def _compile_all(context: cl.Context, device: cl.Device, sources: Sequence[str], options: tuple[str, ...],
                 indices: Sequence[int]) -> Iterator[tuple[int, tuple[cl.Program, float]]]:
    """(index, (program, seconds)) for each source as its build finishes; a failed build raises its
    KernelBuildError once the others stop (none waits in the queue after a failure). Where the driver builds one
    program at a time in a process, child processes build them (build_processes.py), else threads here."""
    def timed(source: str) -> tuple[cl.Program, float]:
        start = time.perf_counter()
        program = build_source(context, device, source, options)
        return program, time.perf_counter() - start

    def loaded(position: int, binary: bytes | None, seconds: float) -> tuple[cl.Program, float]:
        """The program a build process made (`binary`, built in `seconds` there), else built here."""
        if binary is not None:
            try:
                return build_binary(context, device, binary, options), seconds
            except cl.Error:
                pass  # (a binary the driver will not take here: built from the source as ever)
        return timed(sources[position])

    if builds_apart(device, len(sources)):
        for position, binary, seconds in build_apart(device, sources, options):
            yield indices[position], loaded(position, binary, seconds)
        return
    threads = min(len(sources), compile_threads())
    if threads == 1:
        for source, index in zip(sources, indices):
            yield index, timed(source)
        return
    import concurrent.futures  # only a cold start needs it
    pool = concurrent.futures.ThreadPoolExecutor(threads, "zyx-compile")
    try:
        futures = {pool.submit(timed, source): index for source, index in zip(sources, indices)}
        for future in concurrent.futures.as_completed(futures):
            yield futures[future], future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_default: KernelCache | None = None
_default_lock = threading.Lock()


def default_cache() -> KernelCache:
    """The process-wide cache; its directory and size limit are read from the environment at first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = KernelCache()
        return _default
