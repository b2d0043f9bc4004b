"""The PoCL helper's process (`pocl_helper.PoclHelper` starts it as `python -m`): builds each job's source for its
device, the key checked against the source, then runs its launches ahead of the parent (compiling their work-group
functions) or stores the program through the cache's validated writer."""
from __future__ import annotations

import json
import os
import queue
import sys
import threading

import numpy as np
import pyopencl as cl

from zyx.jit.cache import KernelCache, pending_entry
from zyx.jit.cache_key import device_with
from zyx.jit.compiler import build_source

# A launch whose buffers take more than this is left to the parent: the helper's zeroed copies of them would be
# memory the training process may need (W5's largest launch takes 5.6 MB).
AHEAD_BYTES_LIMIT = 256 * 2 ** 20
_ZERO = np.uint32(0)


class _Jobs:
    """What the helper does for its jobs, with one context and queue per device."""

    def __init__(self, directory: str, size_limit: str):
        self.cache = KernelCache(directory, int(size_limit))
        self.contexts: dict[cl.Device, tuple[cl.Context, cl.CommandQueue]] = {}
        self.launched: set[str] = set()  # keys whose binary job came: the parent has run all their launches

    def do(self, job: dict) -> dict:
        if "launches" in job:
            return {"compiled": self.compile_ahead(job)}
        return {"stored": self.store(job)}

    def _built(self, job: dict):
        """(context, queue, the job's program, its pending entry), or None where the job's key is not its source's
        (nothing is done under it) or its device is not here."""
        device = device_with(job["components"])
        if device is None:
            return None
        if device not in self.contexts:
            context = cl.Context([device])
            self.contexts[device] = (context, cl.CommandQueue(context))
        context, commands = self.contexts[device]
        options = tuple(str(option) for option in job["options"])
        pending = pending_entry(device, job["source"], options, float(job.get("compile_seconds", 0.0)))
        if pending.key != job["key"] or pending.components != job["components"]:
            return None
        return context, commands, build_source(context, device, job["source"], options), pending

    def store(self, job: dict) -> bool:
        built = self._built(job)
        return built is not None and self.cache.store(built[2], built[3])

    def compile_ahead(self, job: dict) -> int:
        """Run the job's launches in order until the parent has run them itself; how many ran."""
        built = None if job["key"] in self.launched else self._built(job)
        if built is None:
            return 0
        context, commands, program, _ = built
        ran = 0
        for name, global_size, local_size, arguments in job["launches"]:
            if job["key"] in self.launched:
                break
            if sum(size for size in arguments if size is not None) > AHEAD_BYTES_LIMIT:
                continue
            try:
                _run_on_zeros(context, commands, cl.Kernel(program, name), tuple(global_size),
                              None if local_size is None else tuple(local_size), arguments)
            except cl.Error:
                continue  # (the parent's own launch compiles it)
            ran += 1
        return ran


def _run_on_zeros(context: cl.Context, commands: cl.CommandQueue, kernel: cl.Kernel, global_size: tuple[int, ...],
                  local_size: tuple[int, ...] | None, arguments: list[int | None]) -> None:
    """One launch of `kernel` on zeroed buffers of the given byte sizes (None: a 64-bit integer 0)."""
    values = []
    for size in arguments:
        if size is None:
            values.append(np.uint64(0))
            continue
        size = max(4, -(-size // 4) * 4)
        buffer = cl.Buffer(context, cl.mem_flags.READ_WRITE, size)
        cl.enqueue_fill_buffer(commands, buffer, _ZERO, 0, size)
        values.append(buffer)
    kernel.set_args(*values)
    cl.enqueue_nd_range_kernel(commands, kernel, global_size, local_size).wait()


def _serve(directory: str, size_limit: str) -> None:
    jobs_done = _Jobs(directory, size_limit)
    jobs: queue.Queue[dict | None] = queue.Queue()
    threading.Thread(target=_read_jobs, args=(jobs, jobs_done.launched), name="zyx-helper-jobs", daemon=True).start()
    while (job := jobs.get()) is not None:
        try:
            answer = jobs_done.do(job)
        except Exception:  # noqa: BLE001 - one failed job must not stop the ones after it
            answer = {"compiled": 0} if "launches" in job else {"stored": False}
        print(json.dumps(answer), flush=True)
    os._exit(0)


def _read_jobs(jobs: queue.Queue, launched: set[str]) -> None:
    """Queue the jobs as they come (a binary job's key marks its program launched: a job compiling it ahead stops);
    at the exit line, end the process when its seconds are up (or sooner, when the jobs are done); at the end of
    input without it (the parent died), end it now."""
    for line in sys.stdin:
        job = json.loads(line)
        if "exit_within" in job:
            _exit_in(float(job["exit_within"]))
            jobs.put(None)
            return
        if "launches" not in job:
            launched.add(job["key"])
        jobs.put(job)
    os._exit(0)


def _exit_in(seconds: float) -> None:
    """End this process after `seconds`, wherever it is (an entry is one transaction: none is left half written)."""
    timer = threading.Timer(seconds, os._exit, args=(0,))
    timer.daemon = True
    timer.start()


if __name__ == "__main__":
    _serve(*sys.argv[1:3])
