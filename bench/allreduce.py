"""All-reduce (sum) of one float32 tensor across the ranks of an MPI job: zyx against mpi4py on numpy arrays.

    mpirun -n 2 python bench/allreduce.py [--megabytes 10] [--repeat 20] [--warmup 3]

Rows, each the median over --repeat runs (after --warmup), every rank starting together (a barrier before each):
    mpi4py      comm.Allreduce(IN_PLACE, array) on a numpy array: the floor, what MPI itself costs
    zyx cpu     zyx.distributed.all_reduce(t) on zyx.CPU(): the value is in RAM already
    zyx opencl  the same on zyx.OpenCL(), eager: a program of two host steps (copy to host, Allreduce, copy back)
    zyx jit     a @zyx.jit function returning all_reduce(x), replayed: the same two steps without tracing
The zyx rows are timed until the result is on the device (`zyx.synchronize`). Target: zyx ≤ 2× mpi4py.
Rank 0 prints a markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np

import zyx
import zyx.distributed as dist


def timed(run: Callable[[], None], comm, repeat: int, warmup: int) -> float:
    """Median seconds of `run`, each run starting after a barrier."""
    seconds = []
    for index in range(warmup + repeat):
        comm.Barrier()
        start = time.perf_counter()
        run()
        if index >= warmup:
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=float, default=10.0, help="size of the reduced tensor (MB, 10^6 bytes)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    dist.init()
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    count = int(args.megabytes * 1e6) // 4
    host = np.random.default_rng(dist.rank()).standard_normal(count).astype(np.float32)

    work = host.copy()  # reduced in place again and again: the values grow, the cost does not
    rows = {"mpi4py": timed(lambda: comm.Allreduce(MPI.IN_PLACE, work), comm, args.repeat, args.warmup)}
    for name, device in (("zyx cpu", zyx.CPU()), ("zyx opencl", zyx.OpenCL())):
        x = device.tensor(host).realize()
        rows[name] = timed(lambda: (dist.all_reduce(x), zyx.synchronize(device)), comm, args.repeat, args.warmup)
    opencl = zyx.OpenCL()
    x = opencl.tensor(host).realize()
    reduce = zyx.jit(lambda t: dist.all_reduce(t))
    rows["zyx jit"] = timed(lambda: (reduce(x), zyx.synchronize(opencl)), comm, args.repeat, args.warmup)

    expected = sum(np.random.default_rng(r).standard_normal(count).astype(np.float32) for r in range(dist.world_size()))
    assert np.allclose(reduce(x).numpy(), expected, rtol=1e-5, atol=1e-5), "the all-reduce is wrong"
    if dist.rank() == 0:
        floor = rows["mpi4py"]
        print(f"all-reduce (sum) of {count * 4 / 1e6:g} MB float32 over {dist.world_size()} ranks, median of "
              f"{args.repeat}; MPI: {MPI.Get_library_version().splitlines()[0].strip()}")
        print("| implementation | ms | × mpi4py |\n| --- | ---: | ---: |")
        for name, seconds in rows.items():
            print(f"| {name} | {seconds * 1e3:.2f} | {seconds / floor:.2f} |")


if __name__ == "__main__":
    main()
