"""W4's jitted training step as a device would schedule it, on any machine, without compiling or running a kernel:
each launch (name, global and local size) and each kernel it runs (work groups, what it stores, the products it
computes and how they are shaped), and digests of the program, to show what a change to the scheduler changed.

    python bench/w4_schedule.py [--traits h200|cpu] [--optimizer SGD|Adam|both] [--digests]

With the H200's traits (w7_schedule.h200_traits: 132 compute units) this is the schedule the H200 runs; the
launches are grouped as there (launch_groups.py: kernels of any size share launches on a GPU).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import OPTIMIZERS, inputs, zyx_step  # noqa: E402
from w7_schedule import H200_UNITS, Scheduled, digests, h200_traits  # noqa: E402


def products(kernel: Any) -> Iterator[str]:
    """`n x m (k K)` for each matrix product the kernel computes itself (not one it sums from partials)."""
    from zyx.jit.kernel_nodes import contained_nodes
    from zyx.jit.tiling import matmul_axes
    apart = {id(node) for node in kernel.summed_apart}
    for node in contained_nodes(kernel):
        axes = matmul_axes(node)
        if axes is not None:
            k = node.src[0].shape[node.arg[0]]
            summed = " summed from partials" if id(node) in apart else ""
            yield f"{node.shape[axes[0]]}x{node.shape[axes[1]]} (k {k}){summed}"


def describe(kernel: Any) -> str:
    """One line of what a scheduled kernel is: size, work groups, shaping choice, what it stores and multiplies."""
    from zyx.trace.node import short_name
    groups = kernel.global_size // (kernel.local_size or 1)
    choice = kernel.site.applied.describe() if kernel.site is not None else "-"
    stores = ", ".join(short_name(node) for node in kernel.outputs)
    multiplies = "; ".join(products(kernel))
    return (f"{kernel.name} global={kernel.global_size} local={kernel.local_size} groups={groups} [{choice}] "
            f"stores {stores}" + (f" | products {multiplies}" if multiplies else ""))


def scheduled_launches(optimizer: str, traits: str) -> tuple[Any, list[list[Any]]]:
    """The step's program and, per launch, the scheduler's kernels it runs (recorded as launch_groups groups them)."""
    import dataclasses
    import zyx
    from zyx.jit import launch_groups
    from zyx.jit.program_store import default_program_store
    dev = zyx.OpenCL()
    if traits == "h200":
        dev.traits = h200_traits()
        dev.runtime.compute_units = H200_UNITS
        dev.runtime.limits = dataclasses.replace(dev.runtime.limits, total_bytes=140 << 30,
                                                 max_buffer_bytes=140 << 30)
    members: dict[str, list[Any]] = {}
    launched: list[Any] = []
    grouped, grouping = launch_groups._grouped, launch_groups.group_launches  # (program.py imports it per call)

    def recording_group(kernels: list, printer: Any) -> Any:
        launch = grouped(kernels, printer)
        members[launch.name] = list(kernels)
        return launch

    def recording_launches(*a: Any, **k: Any) -> Any:
        launched[:] = grouping(*a, **k)
        return launched
    build = dev.program_for

    def scheduled(*a: Any, **k: Any) -> Any:
        raise Scheduled(build(*a, **k))
    launch_groups._grouped, launch_groups.group_launches, dev.program_for = recording_group, recording_launches, scheduled
    default_program_store().clear()
    step, x, y = zyx_step(dev, inputs(), optimizer)
    try:
        step(x, y)
    except Scheduled as done:
        program = done.program
    finally:
        launch_groups._grouped, launch_groups.group_launches = grouped, grouping
    return program, [members.get(kernel.name, [kernel]) for kernel in launched]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--traits", choices=("h200", "cpu"), default="h200")
    p.add_argument("--optimizer", choices=(*OPTIMIZERS, "both"), default="both")
    p.add_argument("--digests", action="store_true", help="one JSON line of digests per optimizer instead")
    args = p.parse_args()
    for optimizer in OPTIMIZERS if args.optimizer == "both" else (args.optimizer,):
        program, launches = scheduled_launches(optimizer, args.traits)
        if args.digests:
            print(json.dumps({"optimizer": optimizer, "traits": args.traits, **digests(program)}), flush=True)
            continue
        print(f"W4 {optimizer} ({args.traits}): {program.kernel_count} kernels in {len(launches)} launches")
        for index, (launch, kernels) in enumerate(zip(program.launches, launches)):
            print(f"{index:3d} {launch.name} global={launch.global_size} local={launch.local_size}")
            for kernel in kernels:
                print(f"      {describe(kernel)}")


if __name__ == "__main__":
    main()
