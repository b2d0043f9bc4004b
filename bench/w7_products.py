"""W7's matrix products (bench/gpt_step.py) in the blocks they come from: kernel time of zyx's kernels against
torch's (float32, TF32 off), and the gradients checked against torch's.

    python bench/w7_products.py [--size gpu|cpu] [--repeat 20] [--only mlp,attention]

Each block is GPT-2's, forward and backward in one realization, with a random output gradient: `mlp` is
layer norm, fc (d -> 4d), GELU, out (4d -> d); `attention` layer norm and the qkv projection (d -> 3d), and the
output projection (d -> d) of an attention result given as data. Their gradients hold the weight gradients xᵀ·dY
over all batch × context tokens (both operands read along their rows), the input gradients dY·W and the
forward products with their fused prologues (layer norm's x̂, GELU) and epilogues (bias). Per zyx kernel: its
node, its time when its launch is replayed `--repeat` times back to back and waited for once, and TFLOP/s; per
block: the sum of zyx's kernels against torch's forward and backward (CUDA events around `--repeat` runs), and
each of torch's products alone (cuBLAS) at the shapes zyx's product kernels have.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

SIZES = {"gpu": (16, 1024, 768), "cpu": (2, 128, 128)}  # batch, context, d
RTOL = 2e-3
MIN_SIDE = 64  # a kernel whose node or FLOPs make n, k or m shorter is no product (a split product's sum, a row sum)


def parameters(d: int, seed: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)
    return {"ln.w": 1 + normal(d), "ln.b": normal(d), "fc.w": normal(4 * d, d), "fc.b": normal(4 * d),
            "out.w": normal(d, 4 * d), "out.b": normal(d), "qkv.w": normal(3 * d, d), "qkv.b": normal(3 * d),
            "proj.w": normal(d, d), "proj.b": normal(d)}


def mlp(F: Any, p: dict[str, Any], x: Any, _: Any) -> Any:
    d = x.shape[-1]
    h = F.layer_norm(x, (d,), p["ln.w"], p["ln.b"])
    return F.linear(F.gelu(F.linear(h, p["fc.w"], p["fc.b"])), p["out.w"], p["out.b"])


def attention(F: Any, p: dict[str, Any], x: Any, a: Any) -> Any:
    d = x.shape[-1]
    qkv = F.linear(F.layer_norm(x, (d,), p["ln.w"], p["ln.b"]), p["qkv.w"], p["qkv.b"])
    return qkv[..., :d] + F.linear(a, p["proj.w"], p["proj.b"])


BLOCKS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "mlp": (mlp, ("fc.w", "fc.b", "out.w", "out.b", "ln.w", "ln.b", "x")),
    "attention": (attention, ("qkv.w", "qkv.b", "proj.w", "proj.b", "ln.w", "ln.b", "x", "a")),
}


def inputs(batch: int, context: int, d: int, seed: int = 9) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal((batch, context, d)).astype(np.float32) for name in ("x", "a", "dy")}


def zyx_block(dev: Any, block: str, params: dict[str, np.ndarray], data: dict[str, np.ndarray]):
    """The gradients of the block's parameters and inputs (BLOCKS) as zyx tensors, not realized."""
    import zyx.nn.functional as F
    forward, names = BLOCKS[block]
    p = {k: dev.tensor(v) for k, v in params.items()}
    p.update((k, dev.tensor(data[k])) for k in ("x", "a"))
    y = forward(F, p, p["x"], p["a"])
    return (y * dev.tensor(data["dy"])).sum().backward([p[n] for n in names])


def zyx_kernels(dev: Any, block: str, params, data, repeat: int) -> tuple[list, list[np.ndarray]]:
    """(kernel, node, launches, seconds, flops) per zyx kernel of the block in launch order (each launch replayed
    `repeat` times), and the gradients."""
    import zyx
    from zyx.runtime.replay import record_launches, replay

    runtime = dev.runtime
    grads = zyx_block(dev, block, params, data)
    zyx.realize(*grads)
    grads = zyx_block(dev, block, params, data)  # (the kernels compiled: now record and profile)
    with zyx.profile() as prof:
        _, recorded = record_launches(runtime, lambda: zyx.realize(*grads))
    rows = []
    for record, launch in zip(prof.records, recorded):
        replay(runtime, [launch], 2)
        rows.append((record.kernel, record.node, replay(runtime, [launch], repeat), record.flops))
    return rows, [g.numpy() for g in grads]


def torch_block(block: str, params, data, repeat: int) -> tuple[float, list[np.ndarray], Callable]:
    """Seconds per forward and backward of the block in torch (CUDA where it has it), its gradients, and a timer
    of single products."""
    import torch
    import torch.nn.functional as F
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    forward, names = BLOCKS[block]
    p = {k: torch.tensor(v, device=device, requires_grad=True) for k, v in {**params, **data}.items()}
    wanted = [p[n] for n in names]

    def run() -> list:
        return list(torch.autograd.grad((forward(F, p, p["x"], p["a"]) * p["dy"]).sum(), wanted))
    grads = run()

    def timed(work: Callable) -> float:
        for _ in range(2):
            work()
        if device == "cpu":
            import time
            start = time.perf_counter()
            for _ in range(repeat):
                work()
            return (time.perf_counter() - start) / repeat
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(repeat):
            work()
        end.record()
        torch.cuda.synchronize()
        return begin.elapsed_time(end) / 1e3 / repeat

    def product(n: int, k: int, m: int, transposed: bool) -> float:
        """cuBLAS's seconds for an n x k by k x m product, the left operand stored k x n where `transposed`."""
        left = torch.randn((k, n) if transposed else (n, k), device=device)
        right = torch.randn(k, m, device=device)
        return timed(lambda: torch.mm(left.t() if transposed else left, right))
    return timed(run), [g.detach().cpu().numpy() for g in grads], product


def product_shape(node: str, flops: int, tokens: int) -> tuple[int, int, int, bool]:
    """(n, k, m, transposed) of the product a zyx kernel computes, from its node ("SUM (1, 3072, 768) float32":
    of its axes longer than 1, n all but the last, m the last) and FLOPs (2·n·k·m, fused prologues and epilogues rounded off); a weight
    gradient (n not the tokens: its own rows, times the chunks of a split k) reads its left operand transposed."""
    shape = [int(s) for s in node[node.index("(") + 1:node.index(")")].split(",") if s.strip() and int(s) != 1]
    m = shape[-1] if shape else 1
    n = int(np.prod(shape[:-1]))
    k = 64 * round(flops / (2 * n * m) / 64)
    return n, k, m, n != tokens


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="gpu", choices=sorted(SIZES))
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--only", default="")
    args = p.parse_args()
    os.environ.setdefault("ZYX_CACHE_DIR", tempfile.mkdtemp(prefix="zyx-w7-products-"))
    import zyx
    dev = zyx.OpenCL()
    batch, context, d = SIZES[args.size]
    params, data = parameters(d), inputs(batch, context, d)
    tokens = batch * context
    print(f"device {dev}; batch {batch}, context {context}, d {d}; {args.repeat} replays per kernel", flush=True)
    for block in BLOCKS:
        if args.only and block not in args.only.split(","):
            continue
        rows, grads = zyx_kernels(dev, block, params, data, args.repeat)
        torch_seconds, expected, cublas = torch_block(block, params, data, args.repeat)
        for name, got, want in zip(BLOCKS[block][1], grads, expected):
            scale = float(np.abs(want).max()) or 1.0
            error = float(np.abs(got - want).max()) / scale
            print(f"{'PASS' if error < RTOL else 'FAIL'} {block} d{name} max error {error:.2e} of max |grad|", flush=True)
        total = sum(r[2] for r in rows)
        print(f"{block}: zyx {total * 1e3:.3f} ms in {len(rows)} kernels, torch {torch_seconds * 1e3:.3f} ms "
              f"(zyx/torch {total / torch_seconds:.2f})", flush=True)
        products = [0.0, 0.0]  # zyx's and cuBLAS's seconds over the block's products
        for kernel, node, seconds, flops in sorted(rows, key=lambda r: -r[2]):
            line = f"  {kernel:16s} {node:36s} {seconds * 1e6:9.1f} us"
            n, k, m, transposed = product_shape(node, flops, tokens) if node.startswith("SUM") else (0, 0, 0, False)
            if min(n, k, m) >= MIN_SIDE:
                reference = cublas(n, k, m, transposed)
                products = [products[0] + seconds, products[1] + reference]
                line += (f" {flops / seconds / 1e12:6.2f} TFLOP/s; cuBLAS {n}x{k}x{m}{' (Aᵀ)' if transposed else ''}"
                         f" {2 * n * k * m / reference / 1e12:6.2f} TFLOP/s, cuBLAS/zyx time {reference / seconds:.2f}")
            print(line, flush=True)
        print(f"{block} products: zyx {products[0] * 1e3:.3f} ms, cuBLAS {products[1] * 1e3:.3f} ms "
              f"(cuBLAS/zyx {products[1] / max(products[0], 1e-12):.2f})", flush=True)


if __name__ == "__main__":
    main()
