"""The OpenCL driver's first-link set-up, done early on a thread while a cold start schedules its program.

PoCL loads its kernel library at the first link of a process: about 0.9 s of a cold W5 build's 2.0 s on a 2-core
EPYC (PoCL 3.1), whatever the source. A one-line program compiled and linked beforehand takes that cost, so the
scheduling, which comes first, overlaps it. Compiled and linked rather than built: PoCL's cache serves a build of
the same source from the second process on, having warmed nothing, while a link runs again in every process (and
leaves the same two small entries in PoCL's cache). pyopencl holds the GIL in clCompileProgram and clLinkProgram,
which would stop the scheduling thread, so the calls go through ctypes, which releases it, to the ICD loader
pyopencl uses (the objects dispatch through their own driver's table).
"""
from __future__ import annotations

import ctypes

import pyopencl as cl

from .builtin_declarations import with_declarations
from .icd_loader import HANDLE, STATUS, icd_loader

__all__ = ["warm_up"]

WARM_UP_SOURCE = "__kernel void zyx_warm_up(__global int* x) { x[0] = 0; }"


def warm_up(context: cl.Context, device: cl.Device) -> bool:
    """Compile and link WARM_UP_SOURCE for `device`, without the GIL, with only the builtins it names declared
    where programs are so built (builtin_declarations.py, whose header is read here, off the scheduling thread);
    whether it linked (a failure is left for the real build to report)."""
    library = icd_loader()
    if library is None:
        return False
    text, options = with_declarations(device, WARM_UP_SOURCE, ["-w"]) or (WARM_UP_SOURCE, ["-w"])
    status = STATUS(0)
    source = ctypes.c_char_p(text.encode())
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
