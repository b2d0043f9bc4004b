"""W3: float32 matmul n×n @ n×n for n = 1024 and 2048 (and 4096 with --big); GFLOP/s = 2·n³ / time.

    python bench/matmul.py [--big] [--repeat 7] [--device N] [--json OUT]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _harness import Workload, run_workload, script_main  # noqa: E402
from _impls import numpy_case, tinygrad_case, torch_case, zyx_case  # noqa: E402


def w3(a, b):
    return a @ b


def w3_numpy(a, b):
    return a @ b


def sizes(big: bool) -> list[int]:
    return [1024, 2048] + ([4096] if big else [])


def workloads(big: bool = False) -> list[Workload]:
    rng = np.random.default_rng(2)
    found = []
    for n in sizes(big):
        data = {"a": rng.standard_normal((n, n), dtype=np.float32),
                "b": rng.standard_normal((n, n), dtype=np.float32)}
        # entries are sums of n products of N(0,1) values (size ~ sqrt(n)); float32 accumulation order differs
        found.append(Workload(f"W3 {n}³", f"matmul {n}³", data, w3_numpy, "GFLOP/s", 2.0 * n ** 3,
                              rtol=1e-3, atol=1e-3 * np.sqrt(n)))
    return found


def cases(workload: Workload, device, cl_device) -> dict:
    return {
        "numpy": numpy_case(w3_numpy),
        "torch": torch_case(w3),
        "tinygrad": tinygrad_case(w3, device),
        "zyx": zyx_case(w3, device),
    }


def add_arguments(p) -> None:
    p.add_argument("--big", action="store_true", help="also 4096³")


def run(args, device, cl_device) -> list:
    records = []
    for workload in workloads(args.big):
        records += run_workload(workload, cases(workload, device, cl_device), args)
    return records


def main() -> None:
    script_main(__doc__.splitlines()[0], run, add_arguments)


if __name__ == "__main__":
    main()
