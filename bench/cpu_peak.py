"""The multiply-add peak of the CPU OpenCL device in GFLOP per CPU-second, to read W3's and W4's CPU times against.

A kernel whose work items each run CHAINS independent chains of vector multiply-adds in registers (no memory
traffic), timed in CPU time of the process (every PoCL thread), as bench/cpu_time.py times W3 and W4. Twelve
chains cover the latency of the multiply-add units (4 cycles on 2 pipes: 8 in flight) with room to spare. PoCL
compiles for the CPU its device is named after (POCL_LLVM_CPU_NAME=haswell: AVX2 code on any x86 machine); there
twelve float16 chains take 24 of AVX2's 16 registers and spill, so float8 is the figure to read.

    python bench/cpu_peak.py [--repeat 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyopencl as cl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import pick_device  # noqa: E402

CHAINS = 12
STEPS = 1 << 16  # multiply-adds per chain and work item
ITEMS = 64       # work items per launch (PoCL spreads them over its threads)


def source(lanes: int) -> str:
    """The kernel: CHAINS float`lanes` accumulators, each multiplied and added STEPS times, summed into `out`."""
    vector = f"float{lanes}"
    chains = range(CHAINS)
    return "\n".join([
        "__kernel void peak(__global float* out, float a, float b) {",
        *(f"  {vector} c{i} = ({vector})({i}.0f);" for i in chains),
        f"  for (int s = 0; s < {STEPS}; s++) {{",
        *(f"    c{i} = fma(c{i}, ({vector})(a), ({vector})(b));" for i in chains),
        "  }",
        f"  {vector} sum = " + " + ".join(f"c{i}" for i in chains) + ";",
        "  out[get_global_id(0)] = sum.s0;",
        "}"])


def gflops_per_cpu_second(device: cl.Device, lanes: int, repeat: int) -> float:
    context = cl.Context([device])
    queue = cl.CommandQueue(context)
    kernel = cl.Program(context, source(lanes)).build().peak
    out = cl.Buffer(context, cl.mem_flags.WRITE_ONLY, ITEMS * 4)
    kernel.set_args(out, np.float32(1.0000001), np.float32(1e-7))
    samples = []
    for run in range(repeat + 1):
        start = time.process_time()
        cl.enqueue_nd_range_kernel(queue, kernel, (ITEMS,), None)
        queue.finish()
        if run:  # (the first run compiles the work-group function)
            samples.append(time.process_time() - start)
    return 2 * lanes * CHAINS * STEPS * ITEMS / statistics.median(samples) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--device", type=int, default=None, help="OpenCL device, numbered as bench/run_all.py lists them")
    args = p.parse_args()
    _, device, why = pick_device(args.device)
    if device is None:
        raise SystemExit(why)
    for lanes in (8, 16):
        print(f"{device.name}: float{lanes} multiply-adds, {gflops_per_cpu_second(device, lanes, args.repeat):6.1f} "
              f"GFLOP per CPU-second", flush=True)


if __name__ == "__main__":
    main()
