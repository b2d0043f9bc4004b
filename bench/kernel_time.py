"""W1a, W1b, W2a, W2b as kernel time only: zyx's kernels against the hand-written float-vector kernel.

Each zyx expression is realized once with its launches recorded, then the launches are enqueued `--repeat` times
and waited for once (bench/_replay.py); the hand-written kernel (W1 only) is timed the same way in each of its
variants, the fastest kept. GB/s counts bytes as the workloads do (bench/elementwise.py, bench/reduce.py).

    python bench/kernel_time.py [--repeat 60] [--only W1a,W2b]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import elementwise  # noqa: E402
import reduce  # noqa: E402
from _impls import hand_kernel_configs  # noqa: E402
from _replay import describe, replayed_seconds  # noqa: E402

EXPRESSIONS = {"W1a": elementwise.w1a, "W1b": elementwise.w1b, "W2a": reduce.w2a, "W2b": reduce.w2b}
HAND_BODIES = {"W1a": elementwise.W1A_BODY, "W1b": elementwise.W1B_BODY}


def zyx_seconds(dev, workload, repeat: int) -> tuple[float, str]:
    tensors = {k: dev.tensor(np.ascontiguousarray(v)).realize() for k, v in workload.inputs.items()}
    out = EXPRESSIONS[workload.name](**tensors)
    seconds, recorded = replayed_seconds(dev.backend.runtime, out.realize, repeat)
    np.testing.assert_allclose(out.numpy(), workload.reference(*workload.inputs.values()),
                               rtol=workload.rtol, atol=workload.atol)
    return seconds, describe(recorded)


def hand_seconds(cl_device, workload, repeat: int) -> tuple[float, str]:
    import pyopencl as cl
    x, y = (np.ascontiguousarray(workload.inputs[k], dtype=np.float32) for k in ("x", "y"))
    ctx = cl.Context([cl_device])
    queue = cl.CommandQueue(ctx)
    flags = cl.mem_flags
    buffers = (cl.Buffer(ctx, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=x),
               cl.Buffer(ctx, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=y),
               cl.Buffer(ctx, flags.WRITE_ONLY, size=x.nbytes))
    best = (float("inf"), "")
    for vec, per, local, kernel, global_size in hand_kernel_configs(HAND_BODIES[workload.name], ctx, buffers,
                                                                       x.size):
        def launches(count: int) -> float:
            start = time.perf_counter()
            for _ in range(count):
                cl.enqueue_nd_range_kernel(queue, kernel, (global_size,), None if local is None else (local,))
            queue.finish()
            return (time.perf_counter() - start) / count
        launches(3)
        best = min(best, (launches(repeat), f"float{vec}, {per}/item, local {local or 'auto'}"))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=60)
    p.add_argument("--only", default="", help="comma-separated workloads (W1a,W1b,W2a,W2b)")
    args = p.parse_args()
    import zyx
    dev = zyx.OpenCL()
    cl_device = dev.backend.runtime.device
    print(f"{cl_device.name.strip()} ({cl_device.platform.version.strip()}), {args.repeat} launches, one wait")
    for workload in elementwise.workloads() + reduce.workloads():
        if args.only and workload.name not in args.only.split(","):
            continue
        seconds, kernels = zyx_seconds(dev, workload, args.repeat)
        line = f"{workload.name}  zyx {workload.amount / seconds / 1e9:7.0f} GB/s ({seconds * 1e6:7.1f} us)"
        if workload.name in HAND_BODIES:
            hand, config = hand_seconds(cl_device, workload, args.repeat)
            line += (f"  hand-written {workload.amount / hand / 1e9:7.0f} GB/s ({config})"
                     f"  zyx/hand {hand / seconds:.2f}")
        print(f"{line}  [{kernels}]", flush=True)


if __name__ == "__main__":
    main()
