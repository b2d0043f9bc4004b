"""The OpenCL compiler, run quietly: nothing on the terminal unless ZYX_DEBUG asks or a build fails.

PoCL's clang writes "N warnings generated." straight to the process's stderr and pyopencl turns a non-empty
build log into a `CompilerWarning`, on every cold build. For Zyx's generated code these are ABI notes about
16-lane vectors (`-Wpsabi`) that no user can act on, so builds pass the standard `-w` option (no warnings are
made at all). NVIDIA's compiler still leaves a log, so pyopencl's warning is silenced for Zyx's own builds
only. ZYX_DEBUG=2 and more builds without `-w` and logs the build log on `zyx.cache`. The option is not part of the cache key: the binary does not depend on it.

A source with sm_90a PTX hidden in comments (ptx_patch.py: Hopper's wgmma) is built, its PTX patched, and the
patched PTX built as a binary; that program's binary (the patched PTX) is what the cache stores.

A failed build raises `KernelBuildError` with the compiler's log, after writing the source and the log to
`<cache directory>/build-errors/` (where they can be compiled again by hand, or attached to a bug report).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Sequence

import pyopencl as cl

from ..cache_dir import private_folder
from ..debug import debug_level, logger
from ..errors import KernelBuildError
from ..runtime.platforms import QUIET_OPTION, build_quietly
from .builtin_declarations import give_up, with_declarations
from .program_binary import program_binary
from .ptx_patch import hides_ptx, patch

__all__ = ["KernelBuildError", "build_binary", "build_source", "kernel_options"]

ERROR_FOLDER = "build-errors"
_LOG_LINES_SHOWN = 40
_KERNEL_NAME = re.compile(r"__kernel\s+void\s+(\w+)")


# GPU-shaped kernels on a CPU driver (ZYX_GPU_KERNELS=1, the tests' GPU-shaped devices) run only to check them:
# unoptimized, PoCL builds one in seconds where its optimizer spent minutes on a GPU kernel's unrolled barrier
# regions (a tensor-core attention forward with its warp instructions emulated: 118 barriers, 75.8 s to its first
# launch on PoCL 3.1, 1.3 s unoptimized). Not a kernel without a work-group size (no barriers): PoCL then picks the
# group's size (3370 items for a launch group of a GPU-shaped W4 step's, 131 072 items' worth for a bf16 MLP's
# product with GELU's backward as its epilogue), and unoptimized it keeps each item's private values in arrays of
# that many on its thread's stack, which overflowed (a crash). Groups of a set size (at most the device's 256 items:
# an attention backward's, 32) are checked unoptimized too: optimized, one took 27 s to compile.
CHECKING_OPTIONS = ("-cl-opt-disable",)
# Defined where NVIDIA's PTX conversions exist (sm_80 and later): print_opencl's bfloat16 rounding is one cvt there
PTX_CONVERSIONS = "ZYX_PTX_CVT"
# Defined on GPUs, whose native functions are the hardware's approximations (NVIDIA: rcp.approx within 1 ulp,
# ex2.approx within 2): opencl_prelude's erf polynomials take 1/|x| by native_recip there, a division elsewhere (on an
# H100 the IEEE division cost W7's bf16 GELU-backward product, erf in its epilogue, 0.373 -> 0.285 ms, and the builtin
# erf was as slow as the division: bench/GPU.md); the half-precision attention kernels' exponentials and divisions are
# native (transforms/approximate_math)
NATIVE_MATH = "ZYX_NATIVE_MATH"


def kernel_options(traits: object, runtime: object, unsized: bool = False) -> tuple[str, ...]:
    """The options a device's kernels are built with (part of each binary's cache key, as the source is):
    CHECKING_OPTIONS for GPU-shaped kernels on a CPU driver (but where a build holds a kernel without a work-group
    size, `unsized`); on GPUs NATIVE_MATH, and PTX_CONVERSIONS on NVIDIA sm_80 and later."""
    on_gpu = bool(getattr(runtime, "is_gpu", False))
    if getattr(traits, "gpu", False) and not on_gpu:
        return () if unsized else CHECKING_OPTIONS
    if not on_gpu:
        return ()
    capability = getattr(runtime, "compute_capability", None)
    conversions = (f"-D{PTX_CONVERSIONS}",) if capability is not None and capability >= (8, 0) else ()
    return (f"-D{NATIVE_MATH}", *conversions)


def _options(options: Sequence[str]) -> list[str]:
    return list(options) if debug_level() >= 2 else [*options, QUIET_OPTION]


def build_source(context: cl.Context, device: cl.Device, source: str, options: Sequence[str] = ()) -> cl.Program:
    """Compile `source` for `device` (KernelBuildError when the compiler rejects it); on PoCL with only the
    builtins it names declared (builtin_declarations.py), with the whole header where that fails."""
    declared = with_declarations(device, source, options)
    program = None
    if declared is not None:
        try:
            program = _build_retried(context, device, *declared)
        except cl.RuntimeError as error:
            failure = str(error)
    if program is None:
        try:
            program = _build_retried(context, device, source, options)
        except cl.RuntimeError as error:
            raise _build_error(source, device, error) from None
        if declared is not None:
            give_up(device, failure)
    _log_build(program, device, source)
    return _patched(context, device, program, source, options) if hides_ptx(source) else program


def _build_retried(context: cl.Context, device: cl.Device, source: str, options: Sequence[str]) -> cl.Program:
    """PoCL's own cache can fail a build when several processes fill it at once: tried once more, so only a real
    compile error reaches the caller."""
    try:
        return _build(cl.Program(context, source), device, options)
    except cl.RuntimeError:
        return _build(cl.Program(context, source), device, options)


def _patched(context: cl.Context, device: cl.Device, program: cl.Program, source: str,
             options: Sequence[str]) -> cl.Program:
    """The program of a source with hidden sm_90a PTX (ptx_patch.py): its PTX patched and built as a binary (the
    cache then stores that PTX)."""
    try:
        return build_binary(context, device, patch(program_binary(program, device)), options)
    except (cl.Error, ValueError) as error:
        raise _build_error(source, device, error) from None


def build_binary(context: cl.Context, device: cl.Device, binary: bytes, options: Sequence[str] = ()) -> cl.Program:
    """Load a binary the driver made earlier (cl.Error when it rejects it: the caller recompiles)."""
    return _build(cl.Program(context, [device], [binary]), device, options)


def _build(program: cl.Program, device: cl.Device, options: Sequence[str]) -> cl.Program:
    return build_quietly(program, _options(options), [device])


def _kernel_names(source: str) -> str:
    names = _KERNEL_NAME.findall(source)
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "") if names else "a program"


def _log_build(program: cl.Program, device: cl.Device, source: str) -> None:
    log = logger("zyx.cache")
    if log.isEnabledFor(logging.DEBUG):  # only then is the log worth reading back from the driver
        text = program.get_build_info(device, cl.program_build_info.LOG).strip()
        if text:
            log.debug("build log of %s:\n%s", _kernel_names(source), text)


def _build_error(source: str, device: cl.Device, error: Exception) -> KernelBuildError:
    text = str(error).strip()
    lines = text.splitlines()
    shown = "\n".join(lines[-_LOG_LINES_SHOWN:])
    more = f"(last {_LOG_LINES_SHOWN} of {len(lines)} lines)\n" if len(lines) > _LOG_LINES_SHOWN else ""
    saved = _save_failure(source, text)
    where = (f"source: {saved[0]}\nfull log: {saved[1]}" if saved
             else "(the source was not saved: the cache directory is not private)")
    return KernelBuildError(f"OpenCL could not build {_kernel_names(source)} on {device.name.strip()}; this is a bug in Zyx or the "
                            f"driver, please report it with these files.\n{where}\n{more}{shown}")


def _save_failure(source: str, log: str) -> tuple[Path, Path] | None:
    """The source and log as `<first kernel>-<source hash>.cl` and `.log` in the build-errors folder."""
    folder = private_folder(ERROR_FOLDER)
    if folder is None:
        return None
    names = _KERNEL_NAME.findall(source)
    stem = f"{names[0] if names else 'program'}-{hashlib.sha256(source.encode()).hexdigest()[:12]}"
    paths = (folder / f"{stem}.cl", folder / f"{stem}.log")
    try:
        for path, text in zip(paths, (source, log)):
            _write_private(path, text)
    except OSError:
        return None
    return paths


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` (0600), never through a symbolic link someone planted there."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
