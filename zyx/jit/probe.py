"""Whether an OpenCL device can compile, remembered across processes in the kernel cache.

Choosing the default device compiles a probe kernel on the best candidates (`platforms.compile_problem`): the
pip wheel's PoCL cannot compile on CPUs newer than its LLVM. That costs 0.1-0.4 s at every start. Here the probe
is a kernel like any other: its binary is kept in the kernel cache under the key of every kernel (platform,
device, driver and OpenCL C versions, zyx version), so a later process loads it instead of compiling it. The
load is the check: the binary's checksum is verified and the driver must accept it. A binary the driver
rejects is dropped and the probe compiled again, and a new driver is a new key, so a remembered pass is never
taken on trust. Failures are not remembered: the next process probes again.
"""
from __future__ import annotations

import pyopencl as cl

from ..runtime.platforms import PROBE, first_error_line
from .cache import default_cache
from .compiler import KernelBuildError

_problems: dict[int, str | None] = {}


def compile_problem(cl_device: cl.Device) -> str | None:
    """Why `cl_device` cannot build the probe kernel (None when it can); for `select_device(problem=...)`."""
    key = cl_device.int_ptr
    if key not in _problems:
        _problems[key] = _probe(cl_device)
    return _problems[key]


def _probe(cl_device: cl.Device) -> str | None:
    cache = default_cache()
    try:
        program = cache.build(cl.Context([cl_device]), cl_device, PROBE)
    except (KernelBuildError, cl.Error) as error:
        return first_error_line(str(error))
    cache.commit_later(program)  # a compiled probe is stored for the next process; a loaded one is not again
    return None
