"""W2: reductions. W2a x.sum(-1) on 4096×4096; W2b softmax(-1) on 4096×1024 (float32).

GB/s counts the input once and the output once (W2a: 64 MiB in, 16 KiB out; W2b: 16 MiB in, 16 MiB out).
    python bench/reduce.py [--repeat 7] [--device N] [--json OUT]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _harness import Workload, run_workload, script_main  # noqa: E402
from _impls import numpy_case, tinygrad_case, torch_case, zyx_case  # noqa: E402


def w2a(x):
    return x.sum(-1)


def w2b(x):
    return x.softmax(-1)


def w2a_numpy(x):
    return x.sum(-1)


def w2b_numpy(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def workloads(rows: int = 4096, sum_cols: int = 4096, softmax_cols: int = 1024) -> list[Workload]:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((rows, sum_cols), dtype=np.float32)
    b = rng.standard_normal((rows, softmax_cols), dtype=np.float32)
    return [
        # float32 sums of 4096 terms differ by order of summation: compare loosely
        Workload("W2a", "x.sum(-1)", {"x": a}, w2a_numpy, "GB/s", a.nbytes + rows * 4, rtol=1e-3, atol=1e-3),
        Workload("W2b", "x.softmax(-1)", {"x": b}, w2b_numpy, "GB/s", 2 * b.nbytes, rtol=1e-3, atol=1e-7),
    ]


def cases(workload: Workload, device, cl_device) -> dict:
    expression, function = {"W2a": (w2a, w2a_numpy), "W2b": (w2b, w2b_numpy)}[workload.name]
    return {
        "numpy": numpy_case(function),
        "torch": torch_case(expression),
        "tinygrad": tinygrad_case(expression, device),
        "zyx": zyx_case(expression, device),
    }


def run(args, device, cl_device) -> list:
    records = []
    for workload in workloads():
        records += run_workload(workload, cases(workload, device, cl_device), args)
    return records


def main() -> None:
    script_main(__doc__.splitlines()[0], run)


if __name__ == "__main__":
    main()
