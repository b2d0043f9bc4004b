"""W7's cold capture on the host alone: the Python of a first `@zyx.jit` step (trace, hash, schedule, lower,
print, build the program, store it) for W7 as the H200 would schedule it, on any machine, without compiling or
running a kernel; and digests of what it made, to show a change to the scheduler keeps every kernel identical.

    python bench/w7_schedule.py [--traits h200|cpu] [--layers 12] [--autocast bfloat16|float16] [--repeat 1]
                                [--profile OUT.prof]

Each repetition schedules afresh (the device forgets its programs and the program store in ZYX_CACHE_DIR is
cleared), timing the step call up to the program's return from `program_for` (its kernels are then neither
compiled nor run). The memory check allows the H200's 140 GiB, whatever this host's OpenCL has. Prints one JSON
line per repetition: seconds (wall, and the process's CPU: steadier on a shared host), kernels, the sha256 of the
persisted program (`program_to_json`) and of its kernel sources in launch order.
"""
from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpt_step import SIZES, batch_of_tokens, initial_parameters, zyx_step  # noqa: E402

H200_UNITS = 132


class Scheduled(Exception):
    """Raised once the step's program is built: what follows (compiling, running) is not timed here."""

    def __init__(self, program: Any):
        super().__init__("scheduled")
        self.program = program


def h200_traits() -> Any:
    """The traits zyx reads from the H200's OpenCL (DeviceTraits.of on NVIDIA 9.0: 1024-item groups, 48 KiB of
    local memory reported, float4 lanes, tensor cores with warpgroups)."""
    from zyx.jit.device_traits import DeviceTraits, tensor_core_kinds, tensor_core_local_memory
    return DeviceTraits(True, 256, 4, 1, 1024, local_memory=48 * 1024, tensor_cores=tensor_core_kinds((9, 0)),
                        tensor_core_memory=tensor_core_local_memory((9, 0), 48 * 1024), compute_units=H200_UNITS)


def digests(program: Any) -> dict[str, Any]:
    """Counts, source bytes (those the compiler gets: each source once) and digests of `program`."""
    from zyx.jit.program_json import program_to_json
    sources = hashlib.sha256()
    for launch in program.launches:
        sources.update(launch.source.encode() + b"\0")
    return {"kernels": program.kernel_count, "launches": len(program.launches),
            "source_bytes": sum(len(launch.source) for launch in program.launches),
            "compiled_bytes": sum(map(len, {launch.source for launch in program.launches if launch.is_kernel})),
            "sources_sha256": sources.hexdigest()[:16],
            "program_sha256": hashlib.sha256(program_to_json(program).encode()).hexdigest()[:16]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--traits", choices=("h200", "cpu"), default="h200")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--autocast", choices=("bfloat16", "float16"), default=None)
    p.add_argument("--profile", default="")
    args = p.parse_args()
    import dataclasses
    import zyx
    from zyx.jit.program_store import default_program_store
    cfg = dataclasses.replace(SIZES["gpu"], layers=args.layers)
    dev = zyx.OpenCL()
    if args.traits == "h200":
        dev.traits = h200_traits()
        dev.runtime.compute_units = H200_UNITS
    # the H200's 139 GiB hold W7's 10 GiB, this host's OpenCL may not
    dev.runtime.limits = dataclasses.replace(dev.runtime.limits, total_bytes=140 << 30, max_buffer_bytes=140 << 30)
    build = dev.program_for

    def scheduled(*a: Any, **k: Any) -> Any:
        raise Scheduled(build(*a, **k))
    dev.program_for = scheduled
    params, data = initial_parameters(cfg), batch_of_tokens(cfg)
    for _ in range(args.repeat):
        dev.forget_programs()
        default_program_store().clear()
        step = zyx_step(dev, cfg, params, data, args.autocast)
        profile = cProfile.Profile() if args.profile else None
        start, cpu = time.perf_counter(), time.process_time()
        try:
            if profile:
                profile.enable()
            step()
        except Scheduled as done:
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
            if profile:
                profile.disable()
                profile.dump_stats(args.profile)
            print(json.dumps({"traits": args.traits, "layers": args.layers, "autocast": args.autocast,
                              "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
                              **digests(done.program)}), flush=True)


if __name__ == "__main__":
    main()
