"""The OpenCL ICD loader pyopencl uses, through ctypes: for calls pyopencl makes with the GIL held (a link, reading a
program's binary) or does not offer (a platform's extension function addresses). ctypes.CDLL releases the GIL
around each call."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
from typing import Optional

import pyopencl as cl

__all__ = ["HANDLE", "STATUS", "icd_loader"]

HANDLE = ctypes.c_void_p
STATUS = ctypes.c_int32


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
        library.clCreateProgramWithSource.restype = HANDLE
        library.clCreateProgramWithSource.argtypes = [HANDLE, ctypes.c_uint32, ctypes.POINTER(ctypes.c_char_p),
                                                      HANDLE, ctypes.POINTER(STATUS)]
        library.clCompileProgram.restype = STATUS
        library.clCompileProgram.argtypes = [HANDLE, ctypes.c_uint32, ctypes.POINTER(HANDLE), ctypes.c_char_p,
                                             ctypes.c_uint32, HANDLE, HANDLE, HANDLE, HANDLE]
        library.clLinkProgram.restype = HANDLE
        library.clLinkProgram.argtypes = [HANDLE, ctypes.c_uint32, ctypes.POINTER(HANDLE), ctypes.c_char_p,
                                          ctypes.c_uint32, ctypes.POINTER(HANDLE), HANDLE, HANDLE,
                                          ctypes.POINTER(STATUS)]
        library.clReleaseProgram.restype = STATUS
        library.clReleaseProgram.argtypes = [HANDLE]
        library.clGetProgramInfo.restype = STATUS
        library.clGetProgramInfo.argtypes = [HANDLE, ctypes.c_uint32, ctypes.c_size_t, HANDLE,
                                             ctypes.POINTER(ctypes.c_size_t)]
        library.clGetExtensionFunctionAddressForPlatform.restype = HANDLE
        library.clGetExtensionFunctionAddressForPlatform.argtypes = [HANDLE, ctypes.c_char_p]
        return library
    return None
