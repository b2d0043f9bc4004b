"""Whether an OpenCL device can compile, remembered across processes in the kernel cache.

Choosing the default device compiles a probe kernel on the best candidates (`platforms.compile_problem`): the
pip wheel's PoCL cannot compile on CPUs newer than its LLVM. That costs 0.1-0.4 s at every start. Here the probe
is a kernel like any other: its binary is kept in the kernel cache under the key of every kernel (platform,
device, driver and OpenCL C versions, zyx version), so a later process loads it instead of compiling it. The
load is the check: the binary's checksum is verified and the driver must accept it. A binary the driver
rejects is dropped and the probe compiled again, and a new driver is a new key, so a remembered pass is never
taken on trust. Failures are not remembered: the next process probes again.

Where nothing is remembered, the check is the compiler's front end alone (`front_end_problem`: 0.02 s on PoCL),
which is where a driver whose LLVM does not know the CPU fails ("unknown target CPU 'generic'"); the probe's
whole build, which stores its binary, runs on a thread of its own. That build is the process's first link, which
loads PoCL's kernel library (0.5 s on a 2-core EPYC): the caller goes on building its model meanwhile, where it
waited for it before (a cold start through `zyx.OpenCL()`).
"""
from __future__ import annotations

from threading import Thread
import warnings

import pyopencl as cl

from ..runtime.platforms import PROBE, QUIET_OPTION, first_error_line
from .builtin_declarations import options_naming_no_builtin
from .cache import KernelCache, default_cache
from .compiler import KernelBuildError

__all__ = ["compile_problem", "front_end_problem"]

FRONT_END_PROBE = "__kernel void zyx_front_end_probe(__global float* x) { x[0] += 1.0f; }"  # (names no builtin)

_problems: dict[int, str | None] = {}


def compile_problem(cl_device: cl.Device) -> str | None:
    """Why `cl_device` cannot build the probe kernel (None when it can); for `select_device(problem=...)`."""
    key = cl_device.int_ptr
    if key not in _problems:
        _problems[key] = _probe(cl_device)
    return _problems[key]


def front_end_problem(context: cl.Context, cl_device: cl.Device, source: str = FRONT_END_PROBE) -> str | None:
    """Why the compiler's front end rejects `source` for `cl_device` (its log's error line), or None: a compile
    without a link, with the header's guard alone where programs carry their own declarations."""
    options = options_naming_no_builtin(cl_device, [QUIET_OPTION])
    program = cl.Program(context, source)
    try:
        with warnings.catch_warnings():  # (pyopencl's note that a program compiled, not built, is not cached)
            warnings.simplefilter("ignore", UserWarning)
            program.compile(options=options, devices=[cl_device])
    except cl.Error as error:
        try:
            log = program.get_build_info(cl_device, cl.program_build_info.LOG)
        except cl.Error:
            log = ""
        return first_error_line(log if "error" in log.lower() else str(error))
    return None


def _probe(cl_device: cl.Device) -> str | None:
    cache = default_cache()
    context = cl.Context([cl_device])
    if not cache.holds(cl_device, PROBE):
        problem = front_end_problem(context, cl_device)
        if problem is None:
            Thread(target=_remember, args=(cache, context, cl_device), name="zyx-probe").start()
        return problem
    try:
        program = cache.build(context, cl_device, PROBE)
    except (KernelBuildError, cl.Error) as error:
        return first_error_line(str(error))
    cache.commit_later(program)  # (a binary the driver rejected was compiled again: stored anew)
    return None


def _remember(cache: KernelCache, context: cl.Context, cl_device: cl.Device) -> None:
    """Build the probe through the cache, which stores its binary for the next process's check. Not a daemon: a
    thread inside the driver's link could crash in the interpreter's teardown."""
    try:
        cache.commit_later(cache.build(context, cl_device, PROBE))
    except (KernelBuildError, cl.Error):
        pass  # (not remembered; a failing link shows at the program's own build, with its log)
