"""W3 in half precision on tensor cores: zyx's product kernels against torch (cuBLAS) on the same GPU, kernel time.

Each zyx product is realized once (compiled; with ZYX_TUNE=1, searched: a recording would hold the search's launches
too), then once more with its launches recorded, which are launched `--repeat` times back to back and waited for
once (bench/_replay.py); torch's `a @ b` is timed the same way (one synchronize). TFLOP/s = 2·n·k·m / time per
product. Inputs are stored in the dtype (no cast in the timed kernel); the product is stored in it too.

    python bench/tensor_cores.py [--repeat 20] [--dtypes bfloat16,float16,tf32] [--sizes 4096,8192] [--odd]
                                 [--shapes NxKxM,...] [--transposed | --left-transposed] [--batch B]

`--transposed`: the right operand stored (m, k), the product `a @ b.T` (both operands along k, as the hand-written
probe bench/wgmma_probe measured, and as `linear` multiplies by its weight), for both. `--left-transposed`: the left
operand stored (k, n), the product `a.T @ b` (a weight gradient's xᵀ·dY over tokens). `--shapes`: products of
other shapes, e.g. W7's 16384x768x3072. `--batch B`: the left operand's n rows as B batches of n / B (a linear layer
on [B, n / B, k] tokens, its weight shared: W7's products are [16, 1024, 768] @ w.T). "tf32" is float32 with
`zyx.set_float32_matmul_precision("high")` (torch: `allow_tf32`).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _replay import cuda_seconds, describe, replayed_seconds  # noqa: E402

ODD = [(3000, 700, 5000), (1021, 1021, 1021), (64 * 128, 128, 128)]  # (n, k, m); the last: batched 64 x 128³


FORMS = {"a@b": ((0, 1), (1, 2), lambda a, b: a @ b), "a@b.T": ((0, 1), (2, 1), lambda a, b: a @ b.T),
         "a.T@b": ((1, 0), (1, 2), lambda a, b: a.T @ b)}
"""Each product's form: the stored shapes of a and b as positions in (n, k, m), and the product of them."""


def batched(a: Any, batch: int) -> Any:
    """The left operand's rows as `batch` batches (a view: the same values, a batched product)."""
    return a if batch == 1 else a.reshape(batch, a.shape[0] // batch, a.shape[1])


def torch_seconds(n: int, k: int, m: int, dtype: str, repeat: int, form: str, batch: int = 1) -> float:
    import torch
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    kind = torch.float32 if dtype == "tf32" else getattr(torch, dtype)
    (a_shape, b_shape, multiply), sizes = FORMS[form], (n, k, m)
    a = batched(torch.randn(*(sizes[i] for i in a_shape), device="cuda").to(kind), batch)
    b = torch.randn(*(sizes[i] for i in b_shape), device="cuda").to(kind)
    product = lambda: multiply(a, b)  # noqa: E731
    cuda_seconds(product, 3)
    return cuda_seconds(product, repeat)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--dtypes", default="bfloat16,float16,tf32")
    p.add_argument("--sizes", default="4096,8192")
    p.add_argument("--odd", action="store_true", help="also 3000x700x5000, 1021³ and 8192x128x128")
    p.add_argument("--shapes", default="", help="comma-separated NxKxM products besides --sizes")
    forms = p.add_mutually_exclusive_group()
    forms.add_argument("--transposed", action="store_true", help="a @ b.T, b stored (m, k)")
    forms.add_argument("--left-transposed", action="store_true", help="a.T @ b, a stored (k, n)")
    p.add_argument("--batch", type=int, default=1, help="a's rows as this many batches (not with --left-transposed)")
    args = p.parse_args()
    if args.batch > 1 and args.left_transposed:
        p.error("--batch takes a's rows as batches: a @ b or a @ b.T only")
    form = "a@b.T" if args.transposed else "a.T@b" if args.left_transposed else "a@b"
    os.environ.setdefault("ZYX_CACHE_DIR", tempfile.mkdtemp(prefix="zyx-tensor-cores-"))
    import zyx
    dev = zyx.OpenCL()
    print(f"{dev.name}: tensor cores for {dev.traits.tensor_cores or 'nothing'}")
    shapes = [(s, s, s) for s in map(int, filter(None, args.sizes.split(",")))] + (ODD if args.odd else [])
    shapes += [tuple(int(v) for v in shape.split("x")) for shape in filter(None, args.shapes.split(","))]
    rng = np.random.default_rng(0)
    for dtype in args.dtypes.split(","):
        zyx.set_float32_matmul_precision("high" if dtype == "tf32" else "highest")
        stored = "float32" if dtype == "tf32" else dtype
        for n, k, m in shapes:
            (a_shape, b_shape, multiply), sizes = FORMS[form], (n, k, m)
            if n % args.batch:
                raise SystemExit(f"--batch {args.batch} does not divide n = {n}")
            a = batched(dev.tensor(rng.standard_normal([sizes[i] for i in a_shape], dtype=np.float32)).to(stored),
                        args.batch).realize()
            b = dev.tensor(rng.standard_normal([sizes[i] for i in b_shape], dtype=np.float32)).to(stored).realize()
            product = lambda: multiply(a, b)  # noqa: E731
            product().realize()
            seconds, _, recorded = replayed_seconds(dev.runtime, lambda: product().realize(), args.repeat)
            flops = 2 * n * k * m
            name = f"{n}x{k}x{m}{'' if form == 'a@b' else ' ' + form}{f' in {args.batch} batches' * (args.batch > 1)}"
            line = f"{dtype:9s} {name}: zyx {seconds * 1e3:8.3f} ms {flops / seconds / 1e12:7.1f} TFLOP/s"
            try:
                theirs = torch_seconds(n, k, m, dtype, args.repeat, form, args.batch)
                line += f" | torch {flops / theirs / 1e12:7.1f} TFLOP/s, zyx/torch speed {theirs / seconds:5.2f}"
            except Exception as error:  # no torch, or no CUDA
                line += f" | torch: {type(error).__name__}"
            print(line + f"  [{describe(recorded)}]", flush=True)


if __name__ == "__main__":
    main()
