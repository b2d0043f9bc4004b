"""The OpenCL driver's first-link set-up, done early on a thread while a cold start schedules its program.

PoCL loads its kernel library at the first link of a process: about 0.9 s of a cold W5 build's 2.0 s on a 2-core
EPYC (PoCL 3.1), whatever the source. A one-line program compiled and linked beforehand takes that cost, so the
scheduling, which comes first, overlaps it. Compiled and linked rather than built: PoCL's cache serves a build of
the same source from the second process on, having warmed nothing, while a link runs again in every process (and
leaves the same two small entries in PoCL's cache). pyopencl holds the GIL in clCompileProgram and clLinkProgram,
which would stop the scheduling thread, so the calls go through ctypes, which releases it, to the ICD loader
pyopencl uses (the objects dispatch through their own driver's table). The one-line program names no builtin, so
where programs carry their own declarations (builtin_declarations.py) it is built with the header's guard alone,
and the header is parsed after the link, for the first real build. What the thread needs is found before it starts
(`warm_up_options`): a thread that takes the GIL back after every system call while the scheduling holds it took
0.2 s to reach its compile, 0.03 s alone.
"""
from __future__ import annotations

import ctypes

import pyopencl as cl

from ..runtime.platforms import QUIET_OPTION
from .builtin_declarations import declarations_for, options_naming_no_builtin
from .icd_loader import HANDLE, STATUS, icd_loader

__all__ = ["warm_up", "warm_up_options"]

WARM_UP_SOURCE = "__kernel void zyx_warm_up(__global int* x) { x[0] = 0; }"


def warm_up_options(device: cl.Device) -> list[str]:
    """The options `warm_up` compiles with for `device` (the ICD loader loaded too), found on the calling thread."""
    icd_loader()
    return options_naming_no_builtin(device, [QUIET_OPTION])


def warm_up(context: cl.Context, device: cl.Device, options: list[str]) -> bool:
    """Compile and link WARM_UP_SOURCE for `device` with `options` (`warm_up_options`), without the GIL, then read
    the header whose declarations its programs carry (builtin_declarations.py), off the scheduling thread; whether
    it linked (a failure is left for the real build to report)."""
    try:
        return _compile_and_link(context, device, options)
    finally:
        declarations_for(device)


def _compile_and_link(context: cl.Context, device: cl.Device, options: list[str]) -> bool:
    library = icd_loader()
    if library is None:
        return False
    status = STATUS(0)
    source = ctypes.c_char_p(WARM_UP_SOURCE.encode())
    devices = HANDLE(device.int_ptr)
    program = library.clCreateProgramWithSource(context.int_ptr, 1, ctypes.byref(source), None, ctypes.byref(status))
    if not program or status.value:
        return False
    try:
        if library.clCompileProgram(program, 1, ctypes.byref(devices), " ".join(options).encode(), 0, None,
                                    None, None, None):
            return False
        compiled = HANDLE(program)
        linked = library.clLinkProgram(context.int_ptr, 1, ctypes.byref(devices), b"", 1, ctypes.byref(compiled),
                                       None, None, ctypes.byref(status))
        if linked:
            library.clReleaseProgram(linked)
        return bool(linked) and not status.value
    finally:
        library.clReleaseProgram(program)
