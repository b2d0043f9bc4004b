"""R1–R5: row operations and their gradients (issue 15), kernel time against the device's bandwidth and torch.

Each workload is a softmax, a layer norm or a cross-entropy over 4096 rows of 1024 float32 values (GPT-2's
rows are 768–1024 wide), forward or backward. zyx realizes it once with its launches recorded, then replays
them `--repeat` times with one wait (bench/_replay.py); torch does the same work as one CUDA graph replayed the
same number of times (on a CPU, in a plain loop). GB/s counts each row-sized input once and each row-sized
output once (the minimum any implementation moves); "of copy" divides by a copy's rate timed the same way
(zyx's own `x + 0` kernel), the bandwidth the device really gives.

    python bench/rows.py [--repeat 60] [--device opencl|wgpu] [--torch cuda|cpu|none] [--rows 4096] [--cols 1024]
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _replay import replayed_seconds  # noqa: E402


@dataclass(frozen=True)
class RowWorkload:
    name: str
    what: str
    matrices: int                      # row-sized arrays moved: inputs read plus outputs written
    zyx: Callable                      # (zyx module, tensors) -> tensors to realize
    torch: Callable                    # (torch module, tensors) -> tensors


def _layer_norm_zyx(zyx, x, w, b):
    return zyx.nn.functional.layer_norm(x, x.shape[-1:], w, b)


def _cross_entropy_zyx(zyx, x, target):
    return zyx.nn.functional.cross_entropy(x, target)


WORKLOADS = [
    RowWorkload("R0", "copy x + 0 (the bandwidth)", 2, lambda zyx, t: [t["x"] + 0], lambda torch, t: [t["x"] + 0]),
    RowWorkload("R1", "softmax forward", 2, lambda zyx, t: [t["x"].softmax(-1)],
                lambda torch, t: [torch.softmax(t["x"], -1)]),
    RowWorkload("R2", "softmax backward (y, dy -> dx)", 3,
                lambda zyx, t: [t["y"] * (t["dy"] - (t["dy"] * t["y"]).sum(-1, keepdim=True))],
                lambda torch, t: [torch._softmax_backward_data(t["dy"], t["y"], -1, torch.float32)]),
    RowWorkload("R3", "layer norm forward (weight, bias)", 2,
                lambda zyx, t: [_layer_norm_zyx(zyx, t["x"], t["w"], t["b"])],
                lambda torch, t: [torch.nn.functional.layer_norm(t["x"], t["x"].shape[-1:], t["w"], t["b"])]),
    RowWorkload("R4", "layer norm backward (x, dy -> dx)", 3,
                lambda zyx, t: list(((_layer_norm_zyx(zyx, t["x"], t["w"], t["b"]) * t["dy"]).sum()).backward([t["x"]])),
                lambda torch, t: list(torch.autograd.grad(
                    (torch.nn.functional.layer_norm(t["xg"], t["x"].shape[-1:], t["w"], t["b"]) * t["dy"]).sum(),
                    [t["xg"]]))),
    RowWorkload("R5", "cross-entropy forward and backward (logits -> loss, dlogits)", 2,
                lambda zyx, t: [(loss := _cross_entropy_zyx(zyx, t["x"], t["target"])), *loss.backward([t["x"]])],
                lambda torch, t: [loss := torch.nn.functional.cross_entropy(t["xg"], t["target"]),
                                  *torch.autograd.grad(loss, [t["xg"]])]),
]


def arrays(rows: int, cols: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, cols), dtype=np.float32)
    y = np.exp(x - x.max(-1, keepdims=True))
    return {"x": x, "y": y / y.sum(-1, keepdims=True), "dy": rng.standard_normal((rows, cols), dtype=np.float32),
            "w": rng.standard_normal(cols, dtype=np.float32), "b": rng.standard_normal(cols, dtype=np.float32),
            "target": rng.integers(0, cols, rows)}


def zyx_seconds(dev, workload: RowWorkload, data: dict, repeat: int) -> tuple[float, list[np.ndarray]]:
    import zyx
    tensors = {k: dev.tensor(v).realize() for k, v in data.items()}
    outs = workload.zyx(zyx, tensors)
    seconds, _, _ = replayed_seconds(dev.runtime, lambda: zyx.realize(*outs), repeat)
    return seconds, [o.numpy() for o in outs]


def torch_seconds(device: str, workload: RowWorkload, data: dict, repeat: int) -> tuple[float, list[np.ndarray]]:
    import torch
    t = {k: torch.from_numpy(v).to(device) for k, v in data.items()}
    t["xg"] = t["x"].clone().requires_grad_(True)
    run = lambda: workload.torch(torch, t)  # noqa: E731
    if device == "cuda":
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                run()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = run()
        step, wait = graph.replay, torch.cuda.synchronize
    else:
        outs, step, wait = run(), run, (lambda: None)
    step()
    wait()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeat):
            step()
        wait()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best, [o.detach().cpu().numpy() for o in outs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=60)
    p.add_argument("--device", choices=("opencl", "wgpu"), default="opencl")
    p.add_argument("--torch", choices=("cuda", "cpu", "none"), default="cuda")
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--cols", type=int, default=1024)
    p.add_argument("--only", default="", help="comma-separated workloads (R0..R5)")
    args = p.parse_args()
    import zyx
    dev = zyx.OpenCL() if args.device == "opencl" else zyx.WGPU()
    data = arrays(args.rows, args.cols)
    row_bytes = data["x"].nbytes
    print(f"{dev}, {args.rows}x{args.cols} float32, {args.repeat} replays, one wait; torch on {args.torch}")
    copy = None
    for workload in WORKLOADS:
        if args.only and workload.name not in args.only.split(",") and workload.name != "R0":
            continue
        seconds, values = zyx_seconds(dev, workload, data, args.repeat)
        rate = workload.matrices * row_bytes / seconds / 1e9
        copy = copy or rate
        line = f"{workload.name} {workload.what:58s} zyx {seconds * 1e6:8.1f} us {rate:6.0f} GB/s ({rate / copy:.2f} of copy)"
        if args.torch != "none":
            theirs, expected = torch_seconds(args.torch, workload, data, args.repeat)
            for got, want in zip(values, expected):
                np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-5)
            line += f"  torch {theirs * 1e6:8.1f} us ({theirs / seconds:.2f}x zyx's speed)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
