"""Matrix products of sizes that do not divide the GPU kernel's blocks, kernel time only (bench/GPU.md).

Each product is realized once with the launches recorded, then its kernels are launched again `--repeat` times
back to back and synchronized once: TFLOP/s = 2·n·k·m / time per product (no Python, no tracing).

    python bench/products.py [--repeat 30] [--blocks 128,64,32] [--only NAME,...]

`--blocks` limits the local-tile kernel to those block sizes (to compare block choices); each run schedules
afresh (a temporary ZYX_CACHE_DIR).
"""
from __future__ import annotations

import argparse
import importlib
import os
import tempfile

import numpy as np

from _replay import describe, replayed_seconds

# (name, n, k, m, how): "ab" is a @ b, "wgrad" x.T @ dy with x k×n and dy k×m (a weight gradient), "conv" the
# weight gradient of a 3x3 convolution (n output channels, m = channels·9 inputs, k = batch·pixels)
SHAPES = [
    ("W4 h1 512x784x512", 512, 784, 512, "ab"),
    ("W4 512^3", 512, 512, 512, "ab"),
    ("W4 wgrad 784x512 (k=512)", 784, 512, 512, "wgrad"),
    ("W4 wgrad 512x512 (k=512)", 512, 512, 512, "wgrad"),
    ("W4 dx 512x10x512", 512, 10, 512, "ab"),
    ("1000-wide 512x784x1000", 512, 784, 1000, "ab"),
    ("1000^3", 1000, 1000, 1000, "ab"),
    ("1021^3 (prime)", 1021, 1021, 1021, "ab"),
    ("2000^3", 2000, 2000, 2000, "ab"),
    ("4000^3", 4000, 4000, 4000, "ab"),
    ("conv wgrad 32x144 (k=8*14*14)", 32, 8 * 14 * 14, 144, "conv"),
    ("conv wgrad 32x144 (k=64*30*30)", 32, 64 * 30 * 30, 144, "conv"),
]


def build(dev, n: int, k: int, m: int, how: str):
    rng = np.random.default_rng(0)
    if how == "ab":
        return dev.tensor(rng.standard_normal((n, k), dtype=np.float32)) @ dev.tensor(
            rng.standard_normal((k, m), dtype=np.float32))
    if how == "wgrad":
        return dev.tensor(rng.standard_normal((k, n), dtype=np.float32)).T @ dev.tensor(
            rng.standard_normal((k, m), dtype=np.float32))
    batch, side = (8, 16) if k == 8 * 14 * 14 else (64, 32)
    x = dev.tensor(rng.standard_normal((batch, m // 9, side, side), dtype=np.float32))
    w = dev.tensor(rng.standard_normal((n, m // 9, 3, 3), dtype=np.float32))
    out = x.conv2d(w).realize()  # the forward pass is not what is measured
    dy = dev.tensor(rng.standard_normal(out.shape, dtype=np.float32))
    return (out * dy).sum().backward([w])[0]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--blocks", default="")
    p.add_argument("--only", default="")
    args = p.parse_args()
    os.environ["ZYX_CACHE_DIR"] = tempfile.mkdtemp(prefix="zyx-products-")
    import zyx
    matmul = importlib.import_module("zyx.jit.matmul")
    if args.blocks:
        keep = {int(b) for b in args.blocks.split(",")}
        matmul.BLOCKS = tuple(b for b in matmul.BLOCKS if b[0] in keep)
    dev = zyx.OpenCL()
    runtime = dev.runtime
    for name, n, k, m, how in SHAPES:
        if args.only and not any(word in name for word in args.only.split(",")):
            continue
        out = build(dev, n, k, m, how)
        seconds, _, recorded = replayed_seconds(runtime, out.realize, args.repeat)
        kernels = describe(recorded)
        print(f"{name:34s} {seconds * 1e6:9.1f} us {2 * n * k * m / seconds / 1e12:7.2f} TFLOP/s  [{kernels}]",
              flush=True)


if __name__ == "__main__":
    main()
