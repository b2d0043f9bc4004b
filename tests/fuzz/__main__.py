"""python -m tests.fuzz [--seed S] [--count N] [--device cpu,opencl,torch]: run N graphs from seed S, print a shrunk
reproducer for each failure and a summary (graphs run, seconds, failures by op class)."""
from __future__ import annotations

import argparse
import collections
import os
import pathlib
import time
import warnings

os.environ.setdefault("ZYX_CACHE_DIR", str(pathlib.Path(__file__).resolve().parents[2] / "cache"))

from ..conftest import make_device  # noqa: E402
from .check import check, reproducer, shrink  # noqa: E402
from .graphs import generate  # noqa: E402
from .test_fuzz import DEFAULT_GRAPHS  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--seed", type=int, default=0, help="first graph seed")
    parser.add_argument("--count", type=int, default=DEFAULT_GRAPHS, help="how many graphs")
    parser.add_argument("--device", default="cpu,opencl",
                        help="zyx devices to test, comma-separated (cpu, opencl, torch, torch:DEVICE)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # torch's and numpy's notes about the reference computations
    devices = {name: make_device(name) for name in args.device.split(",")}
    start, failed = time.perf_counter(), collections.Counter()
    for seed in range(args.seed, args.seed + args.count):
        if (seed - args.seed) % 100 == 0 and seed > args.seed:
            print(f"... {seed - args.seed} graphs, {time.perf_counter() - start:.0f} s", flush=True)
        for failure in check(generate(seed), devices):
            small = shrink(failure, devices)
            failed[(small.device, small.part.split()[0], small.graph.steps[-1].op)] += 1
            print(f"FAIL {failure}\n  shrunk: {small}\n{reproducer(small)}\n", flush=True)
    seconds = time.perf_counter() - start
    print(f"{args.count} graphs (seeds {args.seed}..{args.seed + args.count - 1}) in {seconds:.1f} s; "
          f"{sum(failed.values())} failures")
    for (device, kind, op), count in failed.most_common():
        print(f"  {count:4d}  {device:7s} {kind:8s} last op {op}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
