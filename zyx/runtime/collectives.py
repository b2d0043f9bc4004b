"""Host arrays combined across the processes of an MPI job (mpi4py): what a program's collective steps and
`zyx.distributed` run.

Every MPI call runs on one communication thread, in the order it was submitted, and the caller waits for its
result at most `timeout` seconds. So a program can start an all-reduce and go on launching kernels (the device
computes while the host communicates), every rank issues its collectives in program order, and a rank whose peer
died or is stuck elsewhere raises `CollectiveTimeout` instead of waiting inside MPI forever.

float16 and bfloat16 are reduced in float32 (MPI has no such types; the sum is rounded once, at the end); bool
arrays reduce by logical or (sum, max) and logical and (min), as PyTorch does for sum.
"""
from __future__ import annotations

import concurrent.futures
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..dtypes import to_dtype
from ..trace.ops import REDUCTIONS_ACROSS_PROCESSES

__all__ = ["CollectiveTimeout", "FINISH", "ProcessGroup", "START", "combine", "combine_in_place", "describe",
           "parse_step", "process_group", "start_group"]

START = "collective_start"    # a program step: copy the sources to one host bucket, start combining it
FINISH = "collective_finish"  # the step that waits for that and writes the result


class CollectiveTimeout(RuntimeError):
    """A collective did not complete within the process group's timeout: a rank died, hangs, or runs other steps."""


class _CommunicationThread:
    """One daemon thread that runs submitted jobs in order (a daemon: a rank that gave up on a collective can
    still exit while the thread waits inside MPI)."""

    def __init__(self) -> None:
        self._jobs: "queue.SimpleQueue[tuple[concurrent.futures.Future, Callable[[], Any]]]" = queue.SimpleQueue()
        threading.Thread(target=self._run, name="zyx-collectives", daemon=True).start()

    def submit(self, job: Callable[[], Any]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((future, job))
        return future

    def _run(self) -> None:
        while True:
            future, job = self._jobs.get()
            try:
                future.set_result(job())
            except BaseException as error:  # handed to the waiting caller, which raises it
                future.set_exception(error)


@dataclass
class ProcessGroup:
    """The processes of the job: this one's rank among `size`, its rank among the `local_size` on its node."""

    comm: Any  # an mpi4py communicator
    rank: int
    size: int
    local_rank: int
    local_size: int
    timeout: float
    _thread: _CommunicationThread = field(default_factory=_CommunicationThread, repr=False)

    def submit(self, job: Callable[[Any], Any]) -> concurrent.futures.Future:
        """Run `job(comm)` on the communication thread, after every job submitted before it."""
        return self._thread.submit(lambda: job(self.comm))

    def wait(self, pending: concurrent.futures.Future, what: str) -> Any:
        """The job's result; CollectiveTimeout naming `what` when it takes longer than the timeout."""
        try:
            return pending.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            raise CollectiveTimeout(
                f"zyx.distributed: rank {self.rank} of {self.size} waited {self.timeout:g} s for {what}; another "
                "rank has died, hangs, or runs different collectives (every rank must run the same steps in the "
                "same order). If the others are only slow (compiling on a cold cache), raise "
                "ZYX_DISTRIBUTED_TIMEOUT") from None

    def run(self, job: Callable[[Any], Any], what: str) -> Any:
        """`submit` and `wait`."""
        return self.wait(self.submit(job), what)


def describe(arg: tuple[str, Any], dtype: str) -> str:
    """A COLLECTIVE node's arg and dtype as a step's text: "all_reduce sum float32", "broadcast 0 int64"."""
    return f"{arg[0]} {arg[1]} {dtype}"


def parse_step(text: str) -> tuple[str, Any, np.dtype]:
    """(kind, reduction or source rank, numpy dtype) from `describe`'s text; ValueError when it is not one."""
    try:
        kind, parameter, name = text.split(" ")
        dtype = to_dtype(name)
    except (ValueError, TypeError):
        kind, parameter, dtype = "", "", None
    if dtype is not None and dtype.name == name:
        if kind == "all_reduce" and parameter in REDUCTIONS_ACROSS_PROCESSES:
            return kind, parameter, dtype.np
        if kind == "broadcast" and parameter.isdigit():
            return kind, int(parameter), dtype.np
    raise ValueError(f"{text!r} is not a collective (\"all_reduce sum float32\", \"broadcast 0 int64\")")


_group: list[ProcessGroup] = []


def start_group(group: ProcessGroup) -> None:
    """Make `group` the one every collective uses (zyx.distributed.init does this once)."""
    _group[:] = [group]


def process_group() -> ProcessGroup:
    """The job's process group; RuntimeError when zyx.distributed.init() has not run in this process."""
    if not _group:
        raise RuntimeError("a collective (all_reduce, broadcast, barrier) needs zyx.distributed.init() first, in "
                           "every process of an MPI job (mpirun -n 2 python script.py)")
    return _group[0]


def _reduction(array: np.ndarray, reduction: str) -> Any:
    from mpi4py import MPI
    if array.dtype == np.bool_:
        return MPI.LAND if reduction == "min" else MPI.LOR
    return {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[reduction]


def _is_narrow_float(dtype: np.dtype) -> bool:
    return dtype.itemsize == 2 and dtype.kind in "fV"  # float16, and ml_dtypes' bfloat16 (kind V)


def combine_in_place(comm: Any, array: np.ndarray, kind: str, parameter: Any) -> None:
    """Replace the contiguous `array` by ("all_reduce", reduction) of every rank's, or ("broadcast", root)'s."""
    flat = array.reshape(-1)
    if kind == "broadcast":
        comm.Bcast(flat.view(np.uint8), root=parameter)
        return
    staged = flat.astype(np.float32) if _is_narrow_float(flat.dtype) else flat
    from mpi4py import MPI
    comm.Allreduce(MPI.IN_PLACE, staged, op=_reduction(staged, parameter))
    if staged is not flat:
        flat[...] = staged


def combine(bucket: np.ndarray, kind: str, parameter: Any) -> np.ndarray:
    """`bucket` (a contiguous array, overwritten) combined across the job's processes, waited for here."""
    process_group().run(lambda comm: combine_in_place(comm, bucket, kind, parameter),
                        f"{kind} of {bucket.size} {bucket.dtype} elements")
    return bucket
