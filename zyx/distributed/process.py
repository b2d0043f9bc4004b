"""Joining the MPI job: ranks, this rank's device, the shared kernel cache, and how a failing rank ends the job.

MPI's launcher (`mpirun`, `srun`) starts the processes and tells each its place; mpi4py reads it. A rank that
raises an uncaught exception would leave the others waiting in their next collective, so `init` makes it abort the
whole job after printing its traceback (as `python -m mpi4py` does); a rank the launcher stops because another
failed says so before it exits; and every collective gives up after `timeout` seconds (a rank that left early
or hangs) with `CollectiveTimeout`, which, uncaught, aborts the job the same way.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Any, Optional

from ..devices import Device, default_device, device_from_spec, set_default_device
from ..runtime.collectives import CollectiveTimeout, ProcessGroup, process_group, start_group

__all__ = ["CollectiveTimeout", "DEFAULT_TIMEOUT", "device", "init", "is_initialized", "local_rank",
           "local_world_size", "rank", "world_size"]

DEFAULT_TIMEOUT = 600.0
"""Seconds a collective waits for the other ranks (ZYX_DISTRIBUTED_TIMEOUT overrides it): a cold start compiles for
minutes on some ranks while others wait."""

_joined: list[ProcessGroup] = []


def init(timeout: Optional[float] = None) -> None:
    """Join the MPI job this process was started in (a process started alone is a job of one). This rank's device
    (`device()`) becomes the default, the ranks on one node compile each kernel once between them (unless
    ZYX_SHARE_COMPILES=0), and a rank that fails ends the job. Calling it again does nothing.

    `timeout`: seconds a collective waits for the others before `CollectiveTimeout` (default ZYX_DISTRIBUTED_TIMEOUT,
    else 600).
    """
    if _joined:
        return
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError("zyx.distributed needs mpi4py and an MPI library: `apt-get install openmpi-bin "
                          "libopenmpi-dev` (or your cluster's MPI module), then `pip install 'zyx[mpi]'`") from error
    if MPI.Query_thread() < MPI.THREAD_SERIALIZED:
        raise RuntimeError("zyx.distributed calls MPI from its communication thread, which needs MPI_THREAD_SERIALIZED "
                           f"or more; this MPI library gives level {MPI.Query_thread()}")
    comm = MPI.COMM_WORLD.Dup()  # zyx's own communicator: the user's messages on COMM_WORLD never meet ours
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    group = ProcessGroup(comm, comm.Get_rank(), comm.Get_size(), node.Get_rank(), node.Get_size(),
                         _timeout(timeout))
    node.Free()
    start_group(group)
    _joined.append(group)
    if group.size > 1:
        _end_the_job_on_failure(group)
    set_default_device(device())
    if group.local_size > 1 and os.environ.get("ZYX_SHARE_COMPILES", "1") != "0":
        from ..jit.cache import default_cache
        default_cache().share_compiles()


def _timeout(given: Optional[float]) -> float:
    if given is not None:
        seconds = float(given)
    else:
        text = os.environ.get("ZYX_DISTRIBUTED_TIMEOUT", "")
        try:
            seconds = float(text) if text else DEFAULT_TIMEOUT
        except ValueError:
            raise ValueError(f"ZYX_DISTRIBUTED_TIMEOUT={text!r} is not a number of seconds") from None
    if not seconds > 0:
        raise ValueError(f"the collective timeout must be a positive number of seconds, got {seconds}")
    return seconds


def _end_the_job_on_failure(group: ProcessGroup) -> None:
    """An uncaught exception aborts every rank; a SIGTERM from the launcher (another rank failed) is explained."""
    previous_hook = sys.excepthook

    def abort_the_job(kind: type, error: BaseException, traceback: Any) -> None:
        previous_hook(kind, error, traceback)
        _say(f"rank {group.rank} of {group.size} failed ({kind.__name__}); aborting the job, as the other ranks "
             "would wait for it forever")
        group.comm.Abort(1)

    sys.excepthook = abort_the_job
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def stopped(signum: int, frame: Any) -> None:
            _say(f"rank {group.rank} of {group.size} was stopped by the launcher (SIGTERM): most likely another "
                 "rank failed or exited; its error is above")
            os._exit(128 + signum)
        signal.signal(signal.SIGTERM, stopped)


def _say(text: str) -> None:
    sys.stderr.write(f"zyx.distributed: {text}\n")
    sys.stderr.flush()


def is_initialized() -> bool:
    """Whether `init()` has run in this process."""
    return bool(_joined)


def rank() -> int:
    """This process's rank in the job, 0 to world_size() - 1."""
    return process_group().rank


def world_size() -> int:
    """How many processes the job has."""
    return process_group().size


def local_rank() -> int:
    """This process's rank among those on its node (which device it takes)."""
    return process_group().local_rank


def local_world_size() -> int:
    """How many of the job's processes run on this node."""
    return process_group().local_size


def device() -> Device:
    """This rank's device: from ZYX_DEVICE when set (a comma-separated list, `opencl:0,opencl:1`, gives local rank
    i its i-th entry, round robin), else the node's OpenCL GPUs round robin by local rank, else the default
    device. One rank per GPU is the intended layout; more ranks than GPUs share them."""
    spec = os.environ.get("ZYX_DEVICE", "")
    choices = [part for part in spec.split(",") if part.strip()]
    if choices:
        return device_from_spec(choices[local_rank() % len(choices)])
    from ..runtime.platforms import describe_devices
    gpus = [ordinal for ordinal, found in enumerate(describe_devices()) if found["type"] == "GPU"]
    if gpus:
        return device_from_spec(f"opencl:{gpus[local_rank() % len(gpus)]}")
    return default_device()
