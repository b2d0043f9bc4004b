"""A helper process beside the one that trains, where the driver compiles one thing at a time (PoCL on a CPU).

PoCL compiles each kernel's work-group function at the kernel's first launch (0.1-0.25 s each for W5's kernels,
one at a time in a process: `pocl_llvm_codegen_lock`), and reading a program's binary (CL_PROGRAM_BINARIES)
compiles a generic one for every kernel again under the locks every launch takes (read in the process that
trains, it held a cold W5 start up by 2.5-3 s of CPU). This helper, a second Python process with a PoCL of its
own, sharing PoCL's cache (POCL_CACHE_DIR), takes both off the training process:

- compiling ahead: given a fresh program's launches as its first run starts, it builds the same source (PoCL's
  cache hands it the program) and runs the launches from the last one back, once each, on zeroed buffers of their
  sizes: PoCL compiles each work-group function exactly as the training process's launch would (same local size,
  offsets and grid class) into its cache, where the training process, launching from the first one on, finds the
  later ones compiled. It stops once the training process has launched them all (the binary job below comes then).
  Kernels run on zeros: an index is 0, a loop bound from memory is 0; a kernel that divides integers by what it
  reads could trap and end the helper, which costs only the work it would have done.
- storing binaries: it builds the same source, reads the binary there and stores it through the same validated
  `KernelCache` writer: the same key, recomputed here, and one SQLite transaction per entry, so a helper killed at
  any point leaves an entry whole or absent.

Protocol: one JSON object a line on stdin, a job or, last, `{"exit_within": seconds}`; one line on stdout per job.
A binary job (`key`, `components`, `source`, `options`, `compile_seconds`) is answered `{"stored": bool}`; a job
compiling ahead (`key`, `components`, `source`, `options`, `launches`: [name, global size, local size or null,
[argument bytes, or null for a 64-bit integer]]) `{"compiled": launches run}`. At end of input without the exit
line the parent has died, and the helper exits at once; with it, it stops when the seconds are up (the parent kills
it then too).
"""
from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, TextIO

import pyopencl as cl

from ..runtime.platforms import is_pocl
from .helper_process import start_helper_process

__all__ = ["PoclHelper", "serves"]

KILL_GRACE_SECONDS = 0.5  # past the exit budget, before the parent kills a helper that did not stop itself
START_SECONDS = 2.0  # added to the exit budget: a helper's Python, imports and platform take about 1-2 s (load 9)


def serves(device: cl.Device) -> bool:
    """Whether the helper works for `device`: PoCL CPU devices (GPU drivers compile kernels at build time, several
    at once, and read binaries in-process)."""
    return is_pocl(device.platform) and bool(device.type & cl.device_type.CPU)


class PoclHelper:
    """The parent's side: starts the helper at the first job, counts its answers, bounds it at exit."""

    def __init__(self, directory: Path, size_limit: int, on_stored: Callable[[], None]):
        self._arguments = [str(directory), str(size_limit)]
        self._on_stored = on_stored
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self._sent = 0
        self._done = 0

    def submit(self, key: str, components: dict[str, str], source: str, options: tuple[str, ...],
               compile_seconds: float) -> None:
        """Store the binary of the program built from `source` (launched by now) under `key`."""
        self._send({"key": key, "components": components, "source": source, "options": list(options),
                    "compile_seconds": compile_seconds})

    def compile_ahead(self, key: str, components: dict[str, str], source: str, options: tuple[str, ...],
                      launches: list[tuple[str, tuple[int, ...], tuple[int, ...] | None, list[int | None]]]) -> None:
        """Compile the work-group functions of `launches` (name, global size, local size, argument bytes or None for
        a 64-bit integer) in the order given, until the binary of the same key is submitted."""
        self._send({"key": key, "components": components, "source": source, "options": list(options),
                    "launches": launches})

    def _send(self, job: dict) -> None:
        with self._lock:
            process = self._started()
            try:
                process.stdin.write(json.dumps(job) + "\n")
                process.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                return  # the helper is gone: the program is compiled again next time
            self._sent += 1

    def start(self) -> None:
        """Start the helper now (the first compile of a cold start), so its start overlaps the compiles."""
        with self._lock:
            self._started()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the helper answered every job (or died); False if `timeout` seconds passed first."""
        with self._answered:
            return self._answered.wait_for(lambda: self._done >= self._sent, timeout)

    def stop(self, deadline: float) -> None:
        """Let the helper finish what it can until `deadline` (time.monotonic) plus START_SECONDS, then end it."""
        with self._lock:
            process, self._process = self._process, None
        if process is None:
            return
        deadline += START_SECONDS
        try:
            process.stdin.write(json.dumps({"exit_within": max(0.0, deadline - time.monotonic())}) + "\n")
            process.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass
        try:
            process.wait(max(0.0, deadline - time.monotonic()) + KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _started(self) -> subprocess.Popen:
        if self._process is None:
            self._process = start_helper_process("zyx.jit.pocl_helper_process", self._arguments)
            threading.Thread(target=self._read_answers, args=(self._process.stdout,), name="zyx-pocl-helper",
                             daemon=True).start()
        return self._process

    def _read_answers(self, answers: TextIO) -> None:
        for line in answers:
            try:
                stored = json.loads(line).get("stored") is True
            except (ValueError, AttributeError):
                stored = False
            if stored:
                self._on_stored()
            with self._answered:
                self._done += 1
                self._answered.notify_all()
        with self._answered:  # the helper is gone: nothing more will be answered
            self._done = self._sent = max(self._done, self._sent)
            self._answered.notify_all()
