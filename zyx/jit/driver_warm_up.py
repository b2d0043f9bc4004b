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
import ctypes.util
import functools
import glob
import os
from typing import Optional

import pyopencl as cl

__all__ = ["warm_up"]

WARM_UP_SOURCE = b"__kernel void zyx_warm_up(__global int* x) { x[0] = 0; }"
_HANDLE = ctypes.c_void_p
_STATUS = ctypes.c_int32


@functools.lru_cache(maxsize=1)
def icd_loader() -> Optional[ctypes.CDLL]:
    """pyopencl's own ICD loader (its wheels bundle one), else the system's; None where neither loads."""
    bundled = sorted(glob.glob(os.path.join(os.path.dirname(cl.__file__), ".libs", "libOpenCL*")))
    for path in [*bundled, ctypes.util.find_library("OpenCL")]:
        if not path:
            continue
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        library.clCreateProgramWithSource.restype = _HANDLE
        library.clCreateProgramWithSource.argtypes = [_HANDLE, ctypes.c_uint32, ctypes.POINTER(ctypes.c_char_p),
                                                      _HANDLE, ctypes.POINTER(_STATUS)]
        library.clCompileProgram.restype = _STATUS
        library.clCompileProgram.argtypes = [_HANDLE, ctypes.c_uint32, ctypes.POINTER(_HANDLE), ctypes.c_char_p,
                                             ctypes.c_uint32, _HANDLE, _HANDLE, _HANDLE, _HANDLE]
        library.clLinkProgram.restype = _HANDLE
        library.clLinkProgram.argtypes = [_HANDLE, ctypes.c_uint32, ctypes.POINTER(_HANDLE), ctypes.c_char_p,
                                          ctypes.c_uint32, ctypes.POINTER(_HANDLE), _HANDLE, _HANDLE,
                                          ctypes.POINTER(_STATUS)]
        library.clReleaseProgram.restype = _STATUS
        library.clReleaseProgram.argtypes = [_HANDLE]
        return library
    return None


def warm_up(context: cl.Context, device: cl.Device) -> bool:
    """Compile and link WARM_UP_SOURCE for `device`, without the GIL; whether it linked (a failure is left for
    the real build to report)."""
    library = icd_loader()
    if library is None:
        return False
    status = _STATUS(0)
    source = ctypes.c_char_p(WARM_UP_SOURCE)
    devices = _HANDLE(device.int_ptr)
    program = library.clCreateProgramWithSource(context.int_ptr, 1, ctypes.byref(source), None, ctypes.byref(status))
    if not program or status.value:
        return False
    try:
        if library.clCompileProgram(program, 1, ctypes.byref(devices), b"-w", 0, None, None, None, None):
            return False
        compiled = _HANDLE(program)
        linked = library.clLinkProgram(context.int_ptr, 1, ctypes.byref(devices), b"", 1, ctypes.byref(compiled),
                                       None, None, ctypes.byref(status))
        if linked:
            library.clReleaseProgram(linked)
        return bool(linked) and not status.value
    finally:
        library.clReleaseProgram(program)
