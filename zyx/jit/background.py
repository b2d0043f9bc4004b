"""One writer thread for work that should hold up neither the caller nor, for longer than it is worth, the exit."""
from __future__ import annotations

import atexit
import queue
import threading
import time
import warnings
from typing import Callable

__all__ = ["BackgroundWriter"]


class BackgroundWriter:
    """Runs submitted jobs in order on a daemon thread. At exit it waits at most `exit_wait_seconds()` and then
    starts no further job, so a process that queued minutes of work still exits soon; what was not done is
    simply not there (each job must leave things consistent if the process dies around it). A job already
    running is waited for: it may be inside the OpenCL driver with the GIL released, and a process that exits
    under it can crash in the driver's teardown."""

    def __init__(self, exit_wait_seconds: Callable[[], float] = lambda: 1.0,
                 finish: Callable[[float], None] = lambda deadline: None):
        self.exit_wait_seconds = exit_wait_seconds
        self._finish = finish  # at exit, after the jobs: given the same deadline (time.monotonic)
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._running = threading.Lock()  # held while a job runs
        self._stopping = False

    def submit(self, job: Callable[[], None]) -> None:
        """Queue `job`; the thread starts with the first one."""
        with self._start_lock:
            if self._stopping:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="zyx-cache-writer", daemon=True)
                self._thread.start()
                atexit.register(self._at_exit)
        self._jobs.put(job)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job has run (at most `timeout` seconds); True when none is left."""
        with self._jobs.all_tasks_done:
            return self._jobs.all_tasks_done.wait_for(lambda: not self._jobs.unfinished_tasks, timeout)

    def _at_exit(self) -> None:
        budget = self.exit_wait_seconds()
        deadline = time.monotonic() + budget
        self.wait(budget)
        with self._start_lock:
            self._stopping = True
        with self._running:  # the job in flight, if any, finishes; no other starts
            pass
        self._finish(deadline)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                with self._running:
                    if not self._stopping:
                        job()
            except Exception as error:  # one failed job must not stop the ones after it
                warnings.warn(f"zyx: a background write failed ({error!r})", RuntimeWarning)
            finally:
                self._jobs.task_done()
