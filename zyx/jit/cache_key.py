"""What a cached kernel binary depends on, as named components, and the key hashed from them.

Each component is stored next to the binary, so a miss can be explained ("driver_version differs")
and `zyx cache prune` can tell which entries no present device could ever load again.
"""
from __future__ import annotations

import functools
import importlib.metadata
import json

import pyopencl as cl
import xxhash

CACHE_FORMAT = "1"
"""Bump when the stored record layout changes: older entries then miss and `prune` removes them."""

FINGERPRINT_NAMES = ("device", "platform", "platform_version", "driver_version", "opencl_c_version")
COMPONENT_NAMES = ("source_hash", *FINGERPRINT_NAMES, "options", "zyx_version", "format")


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
