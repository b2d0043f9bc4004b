"""What a cached kernel binary, or a cached program, depends on, as named components, and the keys hashed from them.

Each kernel component is stored next to the binary, so a miss can be explained ("driver_version differs")
and `zyx cache prune` can tell which entries no present device could ever load again. A program's key is
derived from everything that can shape it (every zyx source file, every ZYX_* setting but a few known not to),
so no hand-kept list of modules or settings can fall behind.
"""
from __future__ import annotations

import functools
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

import pyopencl as cl
import xxhash

CACHE_FORMAT = "1"
"""Bump when the stored record layout changes: older entries then miss and `prune` removes them."""

FINGERPRINT_NAMES = ("device", "platform", "platform_version", "driver_version", "opencl_c_version")
COMPONENT_NAMES = ("source_hash", *FINGERPRINT_NAMES, "options", "zyx_version", "format")

PROGRAM_FORMAT = "program-4"
"""Bump when the stored program layout changes."""
PROGRAM_COMPONENT_NAMES = ("structure", *FINGERPRINT_NAMES, "traits", "tuning", "settings", "zyx_source",
                           "zyx_version", "format")
SETTINGS_THAT_SHAPE_NO_PROGRAM = frozenset({"ZYX_BUILD_PROCESSES", "ZYX_CACHE_DIR", "ZYX_CACHE_SIZE", "ZYX_DEBUG",
                                            "ZYX_DEBUG_CACHE", "ZYX_DEVICE", "ZYX_DISTRIBUTED_TIMEOUT",
                                            "ZYX_SHARE_COMPILES", "ZYX_TORCH_COMPILE", "ZYX_TUNE"})
"""Where the cache lives, how builds are spread over processes, what is printed, which device is the default, how
ranks wait for each other, whether kernels are searched (what a search finds is the "tuning" component), how
zyx.Torch() runs: everything else named ZYX_* is in a program's key (a setting listed here wrongly would return old
programs; one missing only costs a reschedule)."""


def hash_hex(data: str | bytes) -> str:
    """xxh3_128 as 32 hex digits: fast enough to hash every source on every build call."""
    return xxhash.xxh3_128_hexdigest(data.encode() if isinstance(data, str) else data)


@functools.cache
def zyx_version() -> str:
    """The installed zyx version; a source checkout that was never installed reads "0+unknown"."""
    try:
        return importlib.metadata.version("zyx")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@functools.cache
def _fingerprint_items(device: cl.Device) -> tuple[tuple[str, str], ...]:
    platform = device.platform
    values = (device.name, platform.name, platform.version, device.driver_version, device.opencl_c_version)
    return tuple((name, value.strip()) for name, value in zip(FINGERPRINT_NAMES, values))


def device_fingerprint(device: cl.Device) -> dict[str, str]:
    """The device and driver facts a program binary is only valid for (queried once per device)."""
    return dict(_fingerprint_items(device))


def device_with(fingerprint: dict[str, str]) -> cl.Device | None:
    """A device of this machine whose `device_fingerprint` agrees with `fingerprint` on FINGERPRINT_NAMES (a helper
    process finding its parent's device: identical cards are alike for building), else None."""
    wanted = tuple(fingerprint.get(name) for name in FINGERPRINT_NAMES)
    for platform in cl.get_platforms():
        try:
            devices = platform.get_devices()
        except cl.Error:
            continue
        for device in devices:
            if tuple(device_fingerprint(device)[name] for name in FINGERPRINT_NAMES) == wanted:
                return device
    return None


def key_components(device: cl.Device, source: str, options: tuple[str, ...]) -> dict[str, str]:
    return {
        "source_hash": hash_hex(source),
        **device_fingerprint(device),
        "options": " ".join(options),
        "zyx_version": zyx_version(),
        "format": CACHE_FORMAT,
    }


def cache_key(components: dict[str, str]) -> str:
    return hash_hex(json.dumps(components, sort_keys=True))


def differing_components(wanted: dict[str, str], stored: dict[str, str]) -> list[str]:
    return [name for name in COMPONENT_NAMES if wanted.get(name) != stored.get(name)]


def package_source_hash(package: Path) -> str:
    """A hash of every Python file under `package`, paths included."""
    digest = xxhash.xxh3_128()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.cache
def zyx_source_hash() -> str:
    """The hash of the whole zyx package: whatever module the path from trace to program imports (the
    scheduler, Philox constants, dtypes...) is in it. An edit anywhere in zyx reschedules, which is cheap."""
    return package_source_hash(Path(__file__).resolve().parents[1])


def program_settings() -> str:
    """The ZYX_* environment settings that may shape a program (ZYX_TILE, ZYX_GPU_KERNELS, ...), as JSON."""
    return json.dumps({name: value for name, value in sorted(os.environ.items())
                       if name.startswith("ZYX_") and name not in SETTINGS_THAT_SHAPE_NO_PROGRAM})


def program_components(structure: str, fingerprint: dict[str, str], traits: Any,
                       tuning: str = "none") -> dict[str, str]:
    """What a scheduled program depends on: the trace's structural hash, the device's fingerprint (an OpenCL
    device's `device_fingerprint`, or a WebGPU adapter's facts under the same names), the traits its kernels were
    shaped for, the tuned choices the scheduler had (`TunedChoices.digest`), the settings, the code and the
    format."""
    return {
        "structure": structure,
        **fingerprint,
        "traits": repr(traits),
        "tuning": tuning,
        "settings": program_settings(),
        "zyx_source": zyx_source_hash(),
        "zyx_version": zyx_version(),
        "format": PROGRAM_FORMAT,
    }
