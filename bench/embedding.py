"""An embedding's forward and backward, as in a GPT step (zyx/jit/indirect.py reads the forward's rows directly;
zyx/jit/segments.py sums each row's incoming gradients): a @zyx.jit step returning the rows and the gradient of
(rows * upstream).sum() with respect to the weight, checked against numpy's scatter-add.

    python bench/embedding.py [--vocab 50304] [--dim 768] [--tokens 2048] [--steps 5] [--profile]

Prints the median step time (wall, after one warm-up) and, with --profile, one step's kernels (zyx.profile()).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import zyx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    device = zyx.OpenCL()
    rng = np.random.default_rng(0)
    weight = device.tensor(rng.standard_normal((args.vocab, args.dim)).astype(np.float32))
    index = device.tensor(rng.integers(0, args.vocab, args.tokens))
    upstream = device.tensor(rng.standard_normal((args.tokens, args.dim)).astype(np.float32))

    @zyx.jit
    def step(weight, index, upstream):
        rows = zyx.nn.functional.embedding(index, weight)
        grad, = (rows * upstream).sum().backward([weight])
        return rows, grad

    started = time.perf_counter()
    rows, grad = step(weight, index, upstream)
    grad.numpy()
    print(f"first step {time.perf_counter() - started:.2f} s")
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        rows, grad = step(weight, index, upstream)
        grad.numpy()
        times.append(time.perf_counter() - started)
    print(f"embedding vocab {args.vocab} dim {args.dim} tokens {args.tokens}: forward+backward "
          f"{statistics.median(times) * 1e3:.1f} ms median of {args.steps} on {device}")
    sample = rng.integers(0, args.tokens, 8)
    expected = weight.numpy()[index.numpy()[sample]]
    print("rows", "PASS" if np.array_equal(rows.numpy()[sample], expected) else "FAIL")
    added = np.zeros((args.vocab, args.dim), np.float32)
    np.add.at(added, index.numpy(), upstream.numpy())  # each row's incoming gradients, as torch's backward sums them
    print("grad", "PASS" if np.allclose(grad.numpy(), added, rtol=1e-4, atol=1e-4) else "FAIL")
    if args.profile:
        with zyx.profile() as profile:
            step(weight, index, upstream)[1].numpy()
        profile.table(limit=20)


if __name__ == "__main__":
    main()
