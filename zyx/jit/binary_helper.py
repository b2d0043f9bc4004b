"""Program binaries read in a helper process, where the driver builds one program at a time (PoCL on a CPU).

On PoCL, reading a program's binary (CL_PROGRAM_BINARIES) compiles a generic work-group function for every kernel
under locks that every launch of the process also takes, and a process compiles one thing at a time: read in the
process that trains, it held a cold W5 start up by 2.5-3 s of CPU, and read later, it stalled the launches behind
it (see bench/README.md, cold start). This helper, a second Python process with a PoCL of its own, builds the same
source for the same device (PoCL's cache, shared through POCL_CACHE_DIR, hands it the program and the work-group
functions the launches compiled), reads the binary there and stores it through the same validated `KernelCache`
writer: the same key, recomputed here, and one SQLite transaction per entry, so a helper killed at any point
leaves an entry whole or absent.

Protocol: one JSON object a line on stdin, a job (`key`, `components`, `source`, `options`, `compile_seconds`) or,
last, `{"exit_within": seconds}`; one line on stdout per job (`{"stored": bool}`). At end of input without that
last line the parent has died, and the helper exits at once; with it, it stops when the seconds are up (the parent
kills it then too).
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, TextIO

import pyopencl as cl

__all__ = ["BinaryHelper", "serves"]

KILL_GRACE_SECONDS = 0.5  # past the exit budget, before the parent kills a helper that did not stop itself
START_SECONDS = 2.0  # added to the exit budget: a helper's Python, imports and platform take about 1-2 s (load 9)
_POCL_PLATFORM = "Portable Computing Language"


def serves(device: cl.Device) -> bool:
    """Whether binaries for `device` are read in the helper: PoCL CPU devices (GPU drivers read them in-process)."""
    return device.platform.name.startswith(_POCL_PLATFORM) and bool(device.type & cl.device_type.CPU)


class BinaryHelper:
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
        job = {"key": key, "components": components, "source": source, "options": list(options),
               "compile_seconds": compile_seconds}
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
            import zyx
            root = Path(zyx.__file__).resolve().parent.parent
            # run from zyx's own import root, so `-m` finds this zyx and nothing from the caller's directory
            self._process = subprocess.Popen(
                [sys.executable, "-m", "zyx.jit.binary_helper", *self._arguments], cwd=root,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
            threading.Thread(target=self._read_answers, args=(self._process.stdout,), name="zyx-binary-helper",
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


# -- the helper process ------------------------------------------------------------------------------------------

def _device_for(components: dict[str, str]) -> cl.Device | None:
    from zyx.jit.cache_key import FINGERPRINT_NAMES, device_fingerprint
    wanted = tuple(components.get(name) for name in FINGERPRINT_NAMES)
    for platform in cl.get_platforms():
        try:
            devices = platform.get_devices()
        except cl.Error:
            continue
        for device in devices:
            if tuple(device_fingerprint(device)[name] for name in FINGERPRINT_NAMES) == wanted:
                return device
    return None


def _serve(directory: str, size_limit: str) -> None:
    from zyx.jit.cache import KernelCache, pending_entry
    cache = KernelCache(directory, int(size_limit))
    contexts: dict[cl.Device, cl.Context] = {}

    def store(job: dict) -> bool:
        device = _device_for(job["components"])
        if device is None:
            return False
        if device not in contexts:
            contexts[device] = cl.Context([device])
        from zyx.jit.compiler import build_source
        options = tuple(str(option) for option in job["options"])
        pending = pending_entry(device, job["source"], options, float(job["compile_seconds"]))
        if pending.key != job["key"] or pending.components != job["components"]:
            return False  # the job's key is not this source's: store nothing under it
        program = build_source(contexts[device], device, job["source"], options)
        return cache.store(program, pending)

    jobs: queue.Queue[dict | None] = queue.Queue()
    threading.Thread(target=_read_jobs, args=(jobs,), name="zyx-binary-jobs", daemon=True).start()
    while (job := jobs.get()) is not None:
        try:
            stored = store(job)
        except Exception:  # noqa: BLE001 - one failed job must not stop the ones after it
            stored = False
        print(json.dumps({"stored": stored}), flush=True)
    os._exit(0)


def _read_jobs(jobs: queue.Queue) -> None:
    """Queue the jobs as they come; at the exit line, end the process when its seconds are up (or sooner, when the
    jobs are done); at the end of input without it (the parent died), end it now."""
    for line in sys.stdin:
        job = json.loads(line)
        if "exit_within" in job:
            _exit_in(float(job["exit_within"]))
            jobs.put(None)
            return
        jobs.put(job)
    os._exit(0)


def _exit_in(seconds: float) -> None:
    """End this process after `seconds`, wherever it is (an entry is one transaction: none is left half written)."""
    timer = threading.Timer(seconds, os._exit, args=(0,))
    timer.daemon = True
    timer.start()


if __name__ == "__main__":
    _serve(*sys.argv[1:3])
