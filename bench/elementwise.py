"""W1: elementwise chains on 4096×4096 float32, where fusion decides everything.

W1a  exp(x + y) - x
W1b  ((((x*1.5 + y).relu() * x - y/3).exp().tanh() * 2 + x).sigmoid() - y*0.5)   (12 ops)

GB/s counts the bytes of x, y and the output once each, whatever an implementation moves in between.
    python bench/elementwise.py [--repeat 7] [--device N] [--json OUT]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _harness import Workload, run_workload, script_main  # noqa: E402
from _impls import numpy_case, opencl_case, tinygrad_case, torch_case, zyx_case  # noqa: E402

SIZE = 4096


def w1a(x, y):
    return (x + y).exp() - x


def w1b(x, y):
    return ((((x * 1.5 + y).relu() * x - y / 3).exp().tanh() * 2 + x).sigmoid() - y * 0.5)


def w1a_numpy(x, y):
    return np.exp(x + y) - x


def w1b_numpy(x, y):
    with np.errstate(over="ignore"):  # exp overflows to inf for large inputs, as in every implementation
        return _w1b_numpy(x, y)


def _w1b_numpy(x, y):
    v = np.maximum(x * np.float32(1.5) + y, np.float32(0)) * x - y / np.float32(3)
    v = np.tanh(np.exp(v)) * np.float32(2) + x
    return np.float32(1) / (np.float32(1) + np.exp(-v)) - y * np.float32(0.5)


# The same computations as OpenCL C over vectors a = x, b = y (the hand-written ceiling).
W1A_BODY = "exp(a + b) - a"
W1B_BODY = ("(1.0f / (1.0f + exp(-(tanh(exp(fmax(a * 1.5f + b, 0.0f) * a - b / 3.0f)) * 2.0f + a)))) - b * 0.5f")


def inputs(size: int = SIZE) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((size, size), dtype=np.float32),
            "y": rng.standard_normal((size, size), dtype=np.float32)}


def workloads(size: int = SIZE) -> list[Workload]:
    data = inputs(size)
    moved = 3 * size * size * 4  # x, y in; one output
    return [
        Workload("W1a", "exp(x + y) - x", data, w1a_numpy, "GB/s", moved),
        Workload("W1b", "12-op chain", data, w1b_numpy, "GB/s", moved),
    ]


def cases(workload: Workload, device, cl_device, vectors=(4, 8, 16)) -> dict:
    expression, function, body = {"W1a": (w1a, w1a_numpy, W1A_BODY), "W1b": (w1b, w1b_numpy, W1B_BODY)}[workload.name]
    return {
        "numpy": numpy_case(function),
        "torch": torch_case(expression),
        "tinygrad": tinygrad_case(expression, device),
        "opencl": opencl_case(body, cl_device, vecs=vectors),
        "zyx": zyx_case(expression, device),
    }


def run(args, device, cl_device) -> list:
    records = []
    for workload in workloads(args.size):
        vectors = tuple(int(v) for v in args.vectors.split(","))
        # interleaved: the verdict compares zyx with the hand-written kernel, so load falls on both alike
        records += run_workload(workload, cases(workload, device, cl_device, vectors), args, interleave=True)
    return records


def add_arguments(p) -> None:
    p.add_argument("--size", type=int, default=SIZE, help="side of the square inputs (default 4096)")
    p.add_argument("--vectors", default="4,8,16", help="vector widths the hand-written kernel may use "
                                                        "(PoCL 1.2's LLVM 6 aborts on float16 exp: use 4,8)")


def main() -> None:
    script_main(__doc__.splitlines()[0], run, add_arguments)


if __name__ == "__main__":
    main()
