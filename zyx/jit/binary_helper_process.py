"""The binary helper's process (`binary_helper.BinaryHelper` starts it as `python -m`): builds each job's source
for its device and stores the program through the cache's validated writer, the key checked against the source."""
from __future__ import annotations

import json
import os
import queue
import sys
import threading

import pyopencl as cl

from zyx.jit.cache import KernelCache, pending_entry
from zyx.jit.cache_key import FINGERPRINT_NAMES, device_fingerprint
from zyx.jit.compiler import build_source


def _device_for(components: dict[str, str]) -> cl.Device | None:
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
    cache = KernelCache(directory, int(size_limit))
    contexts: dict[cl.Device, cl.Context] = {}

    def store(job: dict) -> bool:
        device = _device_for(job["components"])
        if device is None:
            return False
        if device not in contexts:
            contexts[device] = cl.Context([device])
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
