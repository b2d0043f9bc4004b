"""Reading a built program's binary without holding Python's interpreter lock.

pyopencl keeps the GIL through `clGetProgramInfo(CL_PROGRAM_BINARIES)`, and on PoCL that call compiles every
kernel's work-group function again (seconds for a large program). Made from the cache's writer thread, it would
stall the main thread, and the exit, for that long. A ctypes call releases the GIL, so the same call through
ctypes on the OpenCL library pyopencl already loaded lets the step, and the exit, go on meanwhile.
"""
from __future__ import annotations

import ctypes

import pyopencl as cl

from .icd_loader import icd_loader

__all__ = ["program_binary"]

_PROGRAM_NUM_DEVICES = 0x1162
_PROGRAM_DEVICES = 0x1163
_PROGRAM_BINARY_SIZES = 0x1165
_PROGRAM_BINARIES = 0x1166


def _info(library: ctypes.CDLL, program: int, name: int, value: ctypes._SimpleCData | ctypes.Array) -> None:
    status = library.clGetProgramInfo(program, name, ctypes.sizeof(value), ctypes.byref(value), None)
    if status != 0:
        raise cl.Error(f"clGetProgramInfo({name:#x}) failed with status {status}")


def _binary_through_ctypes(library: ctypes.CDLL, program: cl.Program, device: cl.Device) -> bytes:
    handle = program.int_ptr
    count = ctypes.c_uint32()
    _info(library, handle, _PROGRAM_NUM_DEVICES, count)
    devices = (ctypes.c_void_p * count.value)()
    _info(library, handle, _PROGRAM_DEVICES, devices)
    sizes = (ctypes.c_size_t * count.value)()
    _info(library, handle, _PROGRAM_BINARY_SIZES, sizes)
    buffers = [ctypes.create_string_buffer(size) for size in sizes]
    pointers = (ctypes.c_char_p * count.value)(*[ctypes.cast(b, ctypes.c_char_p) for b in buffers])
    _info(library, handle, _PROGRAM_BINARIES, pointers)
    position = [address or 0 for address in devices].index(device.int_ptr)
    return buffers[position].raw[:sizes[position]]


def program_binary(program: cl.Program, device: cl.Device) -> bytes:
    """The program's binary for `device`, read with the GIL released where the OpenCL library can be found."""
    library = icd_loader()
    if library is not None:
        try:
            return _binary_through_ctypes(library, program, device)
        except (cl.Error, ValueError, OSError, AttributeError):
            pass  # an unusual loader: the slower path below gives the same bytes
    devices = program.get_info(cl.program_info.DEVICES)
    return program.get_info(cl.program_info.BINARIES)[devices.index(device)]
