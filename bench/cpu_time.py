"""W3 and W4 on a CPU in CPU time: the seconds every thread of the process spends per product or step.

On a shared machine the wall time swings with the load (2 cores, 8 agents: tenfold within seconds); the CPU time
a computation takes swings far less, so it compares implementations, and builds, run at different moments.
zyx's PoCL worker threads count; numpy (OpenBLAS) and torch run on one thread, as their threads spin while they
wait for each other, which on a loaded machine (a thread descheduled) burns more CPU than the work takes.

    python bench/cpu_time.py [--only zyx,numpy,torch] [--repeat 5]

To compare CPU targets on one machine, PoCL can compile for another CPU than its own, and the peers can take
their kernels for it too: for AVX2 on an AVX-512 machine, POCL_KERNELLIB_NAME=avx2 POCL_LLVM_CPU_NAME=haswell
OPENBLAS_CORETYPE=Haswell ATEN_CPU_CAPABILITY=avx2 (zyx's device is then named pthread-haswell-...).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"  # (before numpy loads OpenBLAS)

import numpy as np  # noqa: E402

SIZES = (1024, 2048)


def cpu_seconds(run: Callable[[], object], repeat: int) -> float:
    """The median over `repeat` timed runs (after two untimed) of the process's CPU time per run."""
    for _ in range(2):
        run()
    samples = []
    for _ in range(repeat):
        start = time.process_time()
        run()
        samples.append(time.process_time() - start)
    return statistics.median(samples)


def w3_runs(implementation: str, n: int) -> Callable[[], object]:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    if implementation == "numpy":
        return lambda: a @ b
    if implementation == "torch":
        import torch
        torch.set_num_threads(1)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        return lambda: ta @ tb
    import zyx
    dev = zyx.OpenCL()
    za, zb = dev.tensor(a).realize(), dev.tensor(b).realize()
    return lambda: (za @ zb).numpy()


def w4_runs(implementation: str, optimizer: str) -> Callable[[], object]:
    from train_step import inputs, torch_model, torch_optimizer, torch_step, zyx_step
    data = inputs()
    if implementation == "torch":
        import torch
        torch.set_num_threads(1)
        model, params = torch_model(data)
        opt = torch_optimizer(torch, params, optimizer)
        x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"].astype(np.int64))
        return torch_step(torch, model, opt, x, y)
    import zyx
    step, x, y = zyx_step(zyx.OpenCL(), data, optimizer)
    return lambda: step(x, y).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="zyx,numpy,torch", help="implementations: zyx, numpy (W3 only), torch")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    chosen = args.only.split(",")
    if "zyx" in chosen:
        import zyx
        dev = zyx.OpenCL()
        print(f"zyx on {dev.runtime.name} ({dev.traits.native_width} floats per vector)")
    for n in SIZES:
        for implementation in (i for i in ("zyx", "numpy", "torch") if i in chosen):
            seconds = cpu_seconds(w3_runs(implementation, n), args.repeat)
            print(f"W3 {n}³ {implementation:6s} {seconds * 1e3:9.2f} ms of CPU ({2 * n ** 3 / seconds / 1e9:6.1f} GFLOP "
                  f"per CPU-second)", flush=True)
    for optimizer in ("SGD", "Adam"):
        for implementation in (i for i in ("zyx", "torch") if i in chosen):
            seconds = cpu_seconds(w4_runs(implementation, optimizer), args.repeat)
            print(f"W4 {optimizer:4s} {implementation:6s} {seconds * 1e3:9.2f} ms of CPU per step", flush=True)


if __name__ == "__main__":
    main()
