"""W1a, W1b, W2a, W2b (and W3 with --matmul) as kernel time only: zyx's kernels against the hand-written
float-vector kernel, on OpenCL, on WGPU, or on both side by side.

Each zyx expression is realized once with its launches recorded, then the launches are enqueued `--repeat` times
and waited for once (bench/_replay.py); the hand-written kernel (W1 only, OpenCL) is timed the same way in each of
its variants, the fastest kept. GB/s counts bytes as the workloads do (bench/elementwise.py, bench/reduce.py);
W3 counts 2·n³ flops (bench/matmul.py). With `--device both`, each row gives zyx on WGPU over zyx on OpenCL.
"host" is the enqueuing's own time per launch (the wait not counted): on WGPU, what of it comes before the first
submit adds to the kernels' time. --wgpu-unchecked builds the shaders without naga's runtime checks (index clamps,
loop bounding counters), through wgpu-native's trusted entry point: a measurement of what they cost, not a mode.

    python bench/kernel_time.py [--repeat 60] [--only W1a,W2b] [--device opencl|wgpu|both] [--matmul] [--big]
                                [--size 4096] [--wgpu-unchecked]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import elementwise  # noqa: E402
import matmul  # noqa: E402
import reduce  # noqa: E402
from _impls import hand_kernel_configs  # noqa: E402
from _replay import describe, replayed_seconds  # noqa: E402

EXPRESSIONS = {"W1a": elementwise.w1a, "W1b": elementwise.w1b, "W2a": reduce.w2a, "W2b": reduce.w2b, "W3": matmul.w3}
HAND_BODIES = {"W1a": elementwise.W1A_BODY, "W1b": elementwise.W1B_BODY}


def zyx_seconds(dev, workload, repeat: int) -> tuple[float, float, str]:
    tensors = {k: dev.tensor(np.ascontiguousarray(v)).realize() for k, v in workload.inputs.items()}
    out = EXPRESSIONS[workload.name.split()[0]](**tensors)
    seconds, host, recorded = replayed_seconds(dev.runtime, out.realize, repeat)
    np.testing.assert_allclose(out.numpy(), workload.reference(*workload.inputs.values()),
                               rtol=workload.rtol, atol=workload.atol)
    return seconds, host, describe(recorded)


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


def rate(workload, seconds: float) -> str:
    return f"{workload.amount / seconds / 1e9:7.0f} {workload.unit}"


def build_shaders_unchecked() -> None:
    """wgpu-py's shader modules made by wgpuDeviceCreateShaderModuleTrusted with no runtime checks (wgpu-py has
    no API for it: its call into wgpu-native is replaced)."""
    from wgpu.backends.wgpu_native import _api
    from wgpu.backends.wgpu_native._ffi import lib
    _api.libf.wgpuDeviceCreateShaderModule = lambda device, descriptor: lib.wgpuDeviceCreateShaderModuleTrusted(
        device, descriptor, lib.WGPUShaderRuntimeChecks_None)


def devices(which: str) -> dict:
    """The zyx devices to time, by name."""
    import zyx
    found = {}
    if which in ("opencl", "both"):
        dev = found["opencl"] = zyx.OpenCL()
        cl_device = dev.runtime.device
        print(f"OpenCL: {cl_device.name.strip()} ({cl_device.platform.version.strip()})")
    if which in ("wgpu", "both"):
        dev = found["wgpu"] = zyx.WGPU()
        print(f"WGPU: {dev.name} ({dev.runtime.adapter.info['description']})")
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=60)
    p.add_argument("--only", default="", help="comma-separated workloads (W1a,W1b,W2a,W2b,W3)")
    p.add_argument("--device", choices=("opencl", "wgpu", "both"), default="opencl")
    p.add_argument("--matmul", action="store_true", help="also W3 (1024³, 2048³)")
    p.add_argument("--big", action="store_true", help="W3 also at 4096³")
    p.add_argument("--size", type=int, default=elementwise.SIZE, help="rows and columns of W1 and W2a")
    p.add_argument("--wgpu-unchecked", action="store_true", help="WGSL without naga's bounds checks and loop bounds")
    args = p.parse_args()
    if args.wgpu_unchecked:
        build_shaders_unchecked()
    found = devices(args.device)
    print(f"{args.repeat} launches, one wait")
    chosen = elementwise.workloads(args.size) + reduce.workloads(args.size, args.size)
    chosen += matmul.workloads(args.big) if args.matmul or args.big else []
    for workload in chosen:
        if args.only and workload.name.split()[0] not in args.only.split(","):
            continue
        line, times = workload.name, {}
        for name, dev in found.items():
            times[name], host, kernels = zyx_seconds(dev, workload, args.repeat)
            line += (f"  zyx {name} {rate(workload, times[name])} ({times[name] * 1e6:8.1f} us, host "
                     f"{host * 1e6:.1f} us/launch) [{kernels}]")
        if len(times) == 2:
            line += f"  wgpu/opencl {times['opencl'] / times['wgpu']:.2f}"
        if workload.name in HAND_BODIES and "opencl" in found:
            hand, config = hand_seconds(found["opencl"].runtime.device, workload, args.repeat)
            line += f"  hand-written {rate(workload, hand)} ({config})  zyx/hand {hand / times['opencl']:.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
