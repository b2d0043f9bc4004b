"""A cold program's builds in processes of their own, where the driver builds one program at a time in a process.

NVIDIA's OpenCL compiler holds a lock of its own for most of a build. Measured on an H100 (driver 580.159, 16 cores,
2026-12-07, `.gpu/compile_probe.py`, `.gpu/mp_probe.py`): W7's 67 distinct bf16 kernel sources (1 layer) built in
18.7 s one after another and in 13.9 s on 16 threads of one process, but in 7.2 s in 16 processes (2-3 s of it
their start and contexts), and a cold W7 bf16 first step spent 20 s in 40 builds on 16 threads, each taking 16 s.
So where a cold build holds at least PROCESS_MIN_SOURCES sources, child processes (`build_process`, each with a
context on the same device) build them, largest first, each taking the next source as it finishes one, and send the
program binaries back; the parent loads them (`build_binary`). NVIDIA's binary is PTX, which the parent's load
compiles to machine code again unless the driver's compute cache (CUDA_CACHE_*) holds it: the child's build put it
there (the 67 loads took 0.0 s; 12.3 s with the cache disabled). So with CUDA_CACHE_DISABLE=1 builds stay here.

A child that fails a build answers without a binary, and the parent builds that source itself (a compile error is
then raised with its log, as ever); a child that dies leaves its source to the others, or to the parent, which
builds them all where no child can be started.
ZYX_BUILD_PROCESSES=0 keeps every build in the process; a number caps the children (default: one per core, at most
MAX_PROCESSES).

Protocol: `python -m zyx.jit.build_process FINGERPRINT_JSON`; one JSON line a job on stdin (`index`, `source`,
`options`), one a job on stdout (`index`, `binary`: base64 or null, `seconds`); the end of stdin ends the child.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import subprocess
import threading
from typing import Iterator, Optional, Sequence

import pyopencl as cl

from .cache_key import device_fingerprint
from .helper_process import start_helper_process

__all__ = ["build_apart", "builds_apart", "compile_threads", "kept_children"]

PROCESS_MIN_SOURCES = 8  # fewer builds do not pay for the children's start (1-3 s on the H100's host)
MAX_PROCESSES = 16       # 16 children built W7's sources in 7.2 s, 8 in 8.4 s (H100, 16 cores)
SETTING = "ZYX_BUILD_PROCESSES"


def builds_apart(device: cl.Device, sources: int) -> bool:
    """Whether `sources` builds for `device` go to child processes: an NVIDIA driver whose compute cache is on,
    at least PROCESS_MIN_SOURCES of them, more than one core, and ZYX_BUILD_PROCESSES not 0."""
    children = process_count(sources)  # (a bad ZYX_BUILD_PROCESSES is refused on any device)
    return (sources >= PROCESS_MIN_SOURCES and children > 1 and "NVIDIA" in device.platform.name
            and os.environ.get("CUDA_CACHE_DISABLE", "0") in ("", "0"))


def compile_threads() -> int:
    """How many builds run at once: one per core (each build is single-threaded in the drivers seen so far)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def process_count(sources: int) -> int:
    """Children for `sources` builds: one per core (ZYX_BUILD_PROCESSES, where set, caps them), at most
    MAX_PROCESSES and one per source."""
    setting = os.environ.get(SETTING, "").strip()
    if setting and not setting.isdigit():
        raise ValueError(f"{SETTING}={setting!r}: expected 0 (every build in this process) or the most child "
                         f"processes to build in (unset: one a core, at most {MAX_PROCESSES})")
    cap = int(setting) if setting else MAX_PROCESSES
    return max(0, min(compile_threads(), cap, MAX_PROCESSES, sources))


def build_apart(device: cl.Device, sources: Sequence[str],
                options: Sequence[str]) -> Iterator[tuple[int, Optional[bytes], float]]:
    """(index, binary, seconds) for each of `sources` as a child finishes it (largest first); the binary is None
    where no child built it (the caller builds it itself). The children end when the generator does, unless
    `kept_children` keeps them for the next build."""
    kept = _kept.get(device.int_ptr)
    if kept is not None:
        yield from kept.build(sources, options)
        return
    children = _Children(device)
    try:
        yield from children.build(sources, options)
    finally:
        children.end()


@contextlib.contextmanager
def kept_children(device: cl.Device) -> Iterator[None]:
    """Within it, builds for `device` reuse their child processes: a tuner's searches build 8 candidates each, and
    started anew for each, 16 children took 2-3 s of contexts on the H100's host."""
    children = _kept.setdefault(device.int_ptr, _Children(device))
    try:
        yield
    finally:
        if _kept.get(device.int_ptr) is children:
            del _kept[device.int_ptr]
            children.end()


class _Children:
    """The child processes building for one device, started as builds want them."""

    def __init__(self, device: cl.Device):
        self.device = device
        self.running: list[_Child] = []
        self.answers: queue.SimpleQueue = queue.SimpleQueue()

    def build(self, sources: Sequence[str], options: Sequence[str]) -> Iterator[tuple[int, Optional[bytes], float]]:
        """build_apart's answers, from up to `process_count` children (those running first)."""
        self.running = [child for child in self.running if child.alive]
        wanted = process_count(len(sources))
        while len(self.running) < wanted:
            try:
                self.running.append(_Child(self.device, len(self.running), self.answers))
            except OSError:  # (no more processes to be had: those running build, or the caller)
                break
        children = self.running[:wanted]
        waiting = sorted(range(len(sources)), key=lambda index: -len(sources[index]))
        for child in children:
            child.give(waiting, sources, options)
        try:
            answered = 0
            while answered < len(sources):
                if not any(child.busy for child in children):  # every child is gone: the rest are the caller's
                    for index in waiting:
                        yield index, None, 0.0
                    return
                child, answer = self.answers.get()
                if child not in children:  # (one a build before ended: its last word)
                    continue
                if answer is None:  # (the child ended; what it held goes to the others)
                    if child.busy:
                        waiting.insert(0, child.held)
                        child.held = None
                        for other in children:
                            if not other.busy and other.alive:
                                other.give(waiting, sources, options)
                    continue
                index, binary, seconds = answer
                child.held = None
                answered += 1
                yield index, binary, seconds
                child.give(waiting, sources, options)
        finally:
            for child in children:
                if child.busy:  # (the caller stopped early: a child still building is not reused)
                    child.end()

    def end(self) -> None:
        for child in self.running:
            child.end()
        self.running = []


_kept: dict[int, _Children] = {}  # the children `kept_children` keeps, by device


class _Child:
    """One build process: the source it holds (at most one at a time) and the thread reading its answers."""

    def __init__(self, device: cl.Device, number: int, answers: queue.SimpleQueue):
        self.number = number
        self.process = start_helper_process("zyx.jit.build_process", [json.dumps(device_fingerprint(device))])
        self.held: Optional[int] = None
        self.alive = True
        self._listen(answers)

    @property
    def busy(self) -> bool:
        return self.held is not None

    def give(self, waiting: list[int], sources: Sequence[str], options: Sequence[str]) -> None:
        """Send it the next waiting source, if any (and if it still reads)."""
        if not waiting or not self.alive:
            return
        index = waiting.pop(0)
        try:
            self.process.stdin.write(json.dumps({"index": index, "source": sources[index],
                                                 "options": list(options)}) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            waiting.insert(0, index)
            self.alive = False
            return
        self.held = index

    def _listen(self, answers: queue.SimpleQueue) -> None:
        def read() -> None:
            for line in self.process.stdout:
                try:
                    answer = json.loads(line)
                    binary = answer["binary"]
                    answers.put((self, (int(answer["index"]), None if binary is None else base64.b64decode(binary),
                                        float(answer["seconds"]))))
                except (ValueError, KeyError, TypeError):
                    break  # not an answer: the child is not what it should be
            self.alive = False
            answers.put((self, None))
        threading.Thread(target=read, name=f"zyx-build-{self.number}", daemon=True).start()

    def end(self) -> None:
        """Close its input (it exits) and reap it; one still building after a second is killed."""
        self.alive = False
        try:
            self.process.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass
        try:
            self.process.wait(1.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
