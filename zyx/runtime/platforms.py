"""Which OpenCL devices exist, and which one Zyx should use when the user does not say.

Enumerating platforms costs milliseconds and loads every ICD, so it happens once per process. The default
choice matters on CPU-only machines: two PoCL builds can both be installed and the older one (the pip
wheel's 3.0-rc2) runs the same kernels several times slower, so among CPU devices the newest PoCL wins.
"""
from __future__ import annotations

import functools
import re
import warnings
from typing import Any, Callable

import pyopencl as cl

from .pocl_cache import place_pocl_cache

_TYPE_NAMES = (  # checked in order: a device may set several bits (PoCL reports DEFAULT | CPU)
    (cl.device_type.GPU, "GPU"),
    (cl.device_type.ACCELERATOR, "ACCELERATOR"),
    (cl.device_type.CPU, "CPU"),
    (cl.device_type.CUSTOM, "CUSTOM"),
)
_TYPE_PREFERENCE = {"GPU": 3, "ACCELERATOR": 2, "CPU": 1}
_POCL_VERSION = re.compile(r"PoCL (\d+)\.(\d+)(?:\.(\d+))?(\S*)", re.IGNORECASE)


def _type_name(device_type: int) -> str:
    for bit, name in _TYPE_NAMES:
        if device_type & bit:
            return name
    return "OTHER"


def _describe(platform_index: int, platform: cl.Platform, device_index: int, device: cl.Device) -> dict[str, Any]:
    extensions = device.extensions.split()
    return {
        "platform_index": platform_index,
        "platform": platform.name.strip(),
        "platform_version": platform.version.strip(),
        "device_index": device_index,
        "device": device.name.strip(),
        "type": _type_name(device.type),
        "global_mem_bytes": device.global_mem_size,
        "max_alloc_bytes": device.max_mem_alloc_size,
        "compute_units": device.max_compute_units,
        "opencl_c_version": device.opencl_c_version.strip(),
        "driver_version": device.driver_version.strip(),
        "fp16": "cl_khr_fp16" in extensions,
        "fp64": "cl_khr_fp64" in extensions,
    }


def _platform_devices(platform: cl.Platform) -> list[cl.Device]:
    try:
        return platform.get_devices()
    except cl.Error:  # a platform with no usable device reports DEVICE_NOT_FOUND
        return []


@functools.cache
def _enumerate() -> tuple[tuple[dict[str, Any], cl.Device], ...]:
    """Every (description, device) pair in platform order, then device order; empty when no ICD is installed."""
    place_pocl_cache()
    try:
        platforms = cl.get_platforms()
    except cl.Error:  # PLATFORM_NOT_FOUND_KHR
        return ()
    return tuple(
        (_describe(platform_index, platform, device_index, device), device)
        for platform_index, platform in enumerate(platforms)
        for device_index, device in enumerate(_platform_devices(platform))
    )


def describe_devices() -> list[dict[str, Any]]:
    """One dict per device, in the order `select_device_by_ordinal` counts them."""
    return [dict(description) for description, _ in _enumerate()]


def is_pocl(platform: cl.Platform) -> bool:
    """Whether `platform` is PoCL, by its name (`pocl_version` reads its version)."""
    return platform.name.startswith("Portable Computing Language")


def pocl_version(platform_version: str) -> tuple[int, int, int, int] | None:
    """(major, minor, patch, is_release) from a PoCL platform version string, or None when it is not PoCL."""
    match = _POCL_VERSION.search(platform_version)
    if match is None:
        return None
    major, minor, patch, suffix = match.groups()
    is_release = 0 if suffix.startswith("-") else 1  # "3.0-rc2" precedes "3.0"; "3.1+debian" is a release
    return int(major), int(minor), int(patch or 0), is_release


def preference(description: dict[str, Any]) -> tuple:
    """Sort key for the default choice: GPU over CPU, then newer PoCL, then any PoCL over unknown, then memory."""
    version = pocl_version(description["platform_version"])
    return (
        _TYPE_PREFERENCE.get(description["type"], 0),
        version is not None,
        version or (0, 0, 0, 0),
        description["global_mem_bytes"],
    )


def _matches(choice: int | str | None, index: int, *names: str) -> bool:
    if choice is None:
        return True
    if isinstance(choice, str) and choice.strip().isdigit():  # "1" from a command line means index 1
        choice = int(choice)
    if isinstance(choice, int):
        return index == choice
    return any(choice.lower() in name.lower() for name in names)


def _listing() -> str:
    lines = [
        f"  opencl:{ordinal} platform {d['platform_index']} {d['platform']!r} ({d['platform_version']}), "
        f"device {d['device_index']} {d['device']!r} [{d['type']}]"
        for ordinal, d in enumerate(describe_devices())
    ]
    return "\n".join(lines) if lines else "  (no OpenCL platform found)"


def select_device(platform: int | str | None = None, device: int | str | None = None,
                  problem: Callable[[cl.Device], str | None] | None = None) -> cl.Device:
    """The device to use: the best among those matching the choices.

    `platform` is an index or a case-insensitive substring of the platform's name or version; `device` is an
    index within its platform or a substring of the device name. Unset choices match everything, and the
    `preference` order picks among what matches: the first that `problem` (`compile_problem` unless given; the
    JIT passes one that remembers passes across processes) finds no problem with.
    """
    candidates = [
        (description, cl_device)
        for description, cl_device in _enumerate()
        if _matches(platform, description["platform_index"], description["platform"], description["platform_version"])
        and _matches(device, description["device_index"], description["device"])
    ]
    if not candidates:
        raise ValueError(f"no OpenCL device matches platform={platform!r}, device={device!r}; available:\n{_listing()}")
    ranked = sorted(candidates, key=lambda pair: preference(pair[0]), reverse=True)
    if platform is not None or device is not None:
        return ranked[0][1]  # an explicit choice is honoured even if it turns out not to compile
    failures = []
    for description, cl_device in ranked:
        reason = (problem or compile_problem)(cl_device)
        if reason is None:
            return cl_device
        failures.append(f"{description['device']} on {description['platform_version']}: {reason}")
    raise RuntimeError("no OpenCL device here can compile a kernel:\n  " + "\n  ".join(failures))


QUIET_OPTION = "-w"


def build_quietly(program: cl.Program, options: list[str], devices: list[cl.Device] | None = None) -> cl.Program:
    """`program.build` without pyopencl's `CompilerWarning`: NVIDIA's compiler leaves a non-empty log even under
    `-w`, and pyopencl turns any such log into a warning on every cold build. Callers read the log themselves."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cl.CompilerWarning)
        return program.build(options=options, devices=devices)


PROBE = "__kernel void zyx_probe(__global float* x) { x[get_global_id(0)] += 1.0f; }"
_compile_problems: dict[int, str | None] = {}


def compile_problem(cl_device: cl.Device) -> str | None:
    """Why `cl_device` cannot build a trivial kernel (None when it can); the pip wheel's PoCL 3.0 cannot on
    CPUs newer than its LLVM (e.g. AMD Zen 5: "unknown target CPU 'generic'"), so the default skips it."""
    key = cl_device.int_ptr
    if key not in _compile_problems:
        try:
            build_quietly(cl.Program(cl.Context([cl_device]), PROBE), [QUIET_OPTION])
            _compile_problems[key] = None
        except cl.Error as error:
            _compile_problems[key] = first_error_line(str(error))
    return _compile_problems[key]


def first_error_line(log: str) -> str:
    """The line of a compiler's log that says what went wrong (its last line if none says "error")."""
    lines = log.strip().splitlines() or [""]
    return next((line for line in lines if "error" in line.lower()), lines[-1])[:200]


def select_device_by_ordinal(ordinal: int) -> cl.Device:
    """The ordinal-th device in `describe_devices` order (what ZYX_DEVICE=opencl:N names)."""
    devices = _enumerate()
    if not 0 <= ordinal < len(devices):
        raise ValueError(f"no OpenCL device opencl:{ordinal}; available:\n{_listing()}")
    return devices[ordinal][1]


def ordinal_of(cl_device: cl.Device) -> int:
    """`cl_device`'s position in `describe_devices` order (what ZYX_DEVICE=opencl:N names)."""
    return next(ordinal for ordinal, (_, each) in enumerate(_enumerate()) if each == cl_device)


def default_ordinal(problem: Callable[[cl.Device], str | None] | None = None) -> int | None:
    """The `describe_devices` position of the device `select_device()` picks, or None when none can compile."""
    try:
        chosen = select_device(problem=problem)
    except (RuntimeError, ValueError):
        return None
    return ordinal_of(chosen)
