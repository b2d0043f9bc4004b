"""A1: causal attention's forward (--train: forward and backward) over context length: time and memory growth.

    python bench/attention.py [--contexts 1024,2048,4096] [--batch 1] [--heads 4] [--head-dim 64] [--full] [--train]
                              [--repeat 5] [--device N] [--only torch,zyx-staged,zyx-rows,zyx-unfused] [--json OUT]

`zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True)` (`--full`: not causal, every block of keys computed:
the staged kernel's causal time against it shows the blocks it skips) on (batch, heads, T, head_dim) float32
inputs, as a @zyx.jit function, each in a process of its own. The zyx implementations:
- zyx-staged / zyx-rows: softmax(QK^T) V fused at every T (ZYX_ATTENTION_MIN_BYTES=0) in the named form
  (ZYX_ATTENTION_FORM: attention_tiles.py's work groups with keys and values staged in local memory, the default,
  or attention.py's work item per query row, the former kernel);
- zyx-unfused: products and a row softmax, the T x T probabilities stored (ZYX_ATTENTION_MIN_BYTES past any size).
torch is eager F.scaled_dot_product_attention on the host. Reported: the median time of --repeat calls after two
(each ends by reading the output); for zyx also the median device time of its kernels per call (zyx.profile,
in calls of their own), the median CPU time of the process per call (every thread: PoCL's are the kernels), the
growth of peak device memory over one call (zyx.memory_stats after
zyx.reset_peak_memory, less what was held before it) beside the size of one T x T matrix of all heads, and the
largest error of the first head against numpy (float64).
`--train` (A2) times a @zyx.jit step returning the output and the gradients of sum(out * dO) with respect to q, k
and v (the fused backward: zyx/jit/attention_grad.py; the error is then dV's, the first head's);
torch runs the same step with autograd. Each call ends with the device synchronized instead of reading the output.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Record, pick_device, script_main, wants  # noqa: E402

IMPLEMENTATIONS = ("torch", "zyx-staged", "zyx-rows", "zyx-unfused")
FUSED_FORMS = {"zyx-staged": "staged", "zyx-rows": "rows"}  # implementation: ZYX_ATTENTION_FORM


def inputs(args: argparse.Namespace, context: int) -> list:
    import numpy as np
    rng = np.random.default_rng(0)
    return [rng.standard_normal((args.batch, args.heads, context, args.head_dim), dtype=np.float32) for _ in range(3)]


def first_head_weights(arrays: list, causal: bool) -> Any:
    """The first head's attention weights P from numpy in float64."""
    import numpy as np
    q, k = (a[0, 0].astype(np.float64) for a in arrays[:2])
    scores = q @ k.T / np.sqrt(q.shape[-1])
    if causal:
        scores = np.where(np.tri(len(q), len(k), dtype=bool), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


def first_head_error(arrays: list, out: Any, causal: bool) -> float:
    """The largest absolute difference of the first head's output from numpy's attention in float64."""
    import numpy as np
    return float(np.abs(first_head_weights(arrays, causal) @ arrays[2][0, 0].astype(np.float64) - out[0, 0]).max())


def first_head_value_gradient_error(arrays: list, grad_v: Any, causal: bool) -> float:
    """The largest absolute difference of the first head's dV = P^T dO from numpy's in float64."""
    import numpy as np
    grad_out = arrays[3][0, 0].astype(np.float64)
    return float(np.abs(first_head_weights(arrays, causal).T @ grad_out - grad_v[0, 0]).max())


def zyx_call(args: argparse.Namespace, dev: Any, arrays: list) -> tuple[Any, Any]:
    """(the jitted call, a function running it once to completion) for the forward or, with --train, the step."""
    import zyx
    causal = not args.full
    tensors = [dev.tensor(a) for a in arrays]
    zyx.realize(*tensors)
    if not args.train:
        attend = zyx.jit(lambda q, k, v: zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=causal))
        return attend, lambda: attend(*tensors[:3]).numpy()

    def step(q: Any, k: Any, v: Any, grad_out: Any) -> tuple:
        out = zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return (out, *(out * grad_out).sum().backward([q, k, v]))

    train = zyx.jit(step)

    def run_once() -> Any:
        results = train(*tensors)
        zyx.realize(*results)
        dev.synchronize()
        return results
    return train, run_once


def measure_zyx(args: argparse.Namespace, context: int) -> dict[str, Any]:
    """Time and peak-memory growth of the jitted forward or training step (in this process: call it in a child for
    a clean one)."""
    import zyx
    device, _, why = pick_device(args.device)
    if device is None:
        raise SystemExit(why)
    dev = zyx.OpenCL(platform=device.platform_index, device=device.device_index)
    causal = not args.full
    arrays = inputs(args, context) + ([inputs(args, context)[0][::-1].copy()] if args.train else [])
    jitted, run_once = zyx_call(args, dev, arrays)
    first = run_once()
    if not args.train:
        error = first_head_error(arrays, first, causal)
    else:
        error = first_head_value_gradient_error(arrays, first[3].numpy(), causal)
    del first
    run_once()
    before = zyx.memory_stats(dev)["current_bytes"]
    zyx.reset_peak_memory(dev)
    runs, cpu_runs = [], []
    for _ in range(args.repeat):
        start, cpu_start = time.perf_counter(), time.process_time()
        run_once()
        runs.append(time.perf_counter() - start)
        cpu_runs.append(time.process_time() - cpu_start)
    grown = zyx.memory_stats(dev)["peak_bytes"] - before
    kernel_runs = []
    for _ in range(args.repeat):
        with zyx.profile() as profiler:
            run_once()
        kernel_runs.append(sum(row.seconds for row in profiler.summaries()))
    return {"runs_s": runs, "cpu_runs_s": cpu_runs, "kernel_runs_s": kernel_runs, "grown_bytes": grown,
            "first_head_error": error,
            "kernels": jitted.captured[0]["kernels"]}


def measure_torch(args: argparse.Namespace, context: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    q, k, v = (torch.from_numpy(a).requires_grad_(args.train) for a in inputs(args, context))
    grad_out = torch.from_numpy(inputs(args, context)[0][::-1].copy())
    runs = []
    with torch.set_grad_enabled(args.train):
        for repeat in range(args.repeat + 2):
            start = time.perf_counter()
            out = F.scaled_dot_product_attention(q, k, v, is_causal=not args.full)
            if args.train:
                torch.autograd.grad((out * grad_out).sum(), [q, k, v])
            if repeat >= 2:
                runs.append(time.perf_counter() - start)
    return {"runs_s": runs}


def in_child(args: argparse.Namespace, context: int, implementation: str) -> dict[str, Any]:
    """One measurement in a new process with a new zyx cache directory."""
    with tempfile.TemporaryDirectory(prefix="attention_") as root:
        env = dict(os.environ, ZYX_CACHE_DIR=os.path.join(root, "zyx"),
                   ZYX_ATTENTION_MIN_BYTES="0" if implementation in FUSED_FORMS else str(1 << 62))
        if implementation in FUSED_FORMS:
            env["ZYX_ATTENTION_FORM"] = FUSED_FORMS[implementation]
        command = [sys.executable, __file__, "--child", implementation, "--contexts", str(context),
                   "--batch", str(args.batch), "--heads", str(args.heads), "--head-dim", str(args.head_dim),
                   "--repeat", str(args.repeat)] + ["--full"] * args.full + ["--train"] * args.train
        if args.device is not None:
            command += ["--device", str(args.device)]
        finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    if finished.returncode != 0:
        raise RuntimeError(finished.stderr.strip().splitlines()[-1] if finished.stderr.strip() else "no output")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace, device: Any, cl_device: Any) -> list[Record]:
    records = []
    for context in (int(c) for c in args.contexts.split(",")):
        matrix = args.batch * args.heads * context * context * 4
        for implementation in IMPLEMENTATIONS:
            if not wants(args, implementation):
                continue
            record = Record(f"{'A2' if args.train else 'A1'} T={context}{' full' * args.full}", implementation,
                            unit="MiB grown")
            print(f"  {record.workload:<10} {implementation:<11} ...", file=sys.stderr, flush=True)
            try:
                found = in_child(args, context, implementation)
            except Exception as error:
                record.note = f"skipped: {error}"
                records.append(record)
                continue
            record.runs_s, record.median_s = found["runs_s"], statistics.median(found["runs_s"])
            notes = [f"one T×T matrix of all heads: {matrix / 2**20:.1f} MiB"]
            if "grown_bytes" in found:
                record.throughput = found["grown_bytes"] / 2**20
                notes[:0] = [f"kernels {statistics.median(found['kernel_runs_s']) * 1e3:.2f} ms",
                             f"CPU {statistics.median(found['cpu_runs_s']) * 1e3:.1f} ms"]
                notes.append(f"{found['kernels']} kernel{'s' * (found['kernels'] != 1)}")
                notes.append(f"first head{' dV' * args.train} off numpy by {found['first_head_error']:.1e}")
            record.note, record.extra = "; ".join(notes), found
            records.append(record)
    return records


def child(args: argparse.Namespace) -> None:
    context = int(args.contexts)
    found = (measure_torch(args, context) if args.child == "torch" else
             measure_zyx(args, context))
    print(json.dumps(found), flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--contexts", default="1024,2048,4096", help="context lengths T (default 1024,2048,4096)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--full", action="store_true", help="attention over every key (default: causal)")
    p.add_argument("--train", action="store_true", help="forward and backward (A2): a jitted step with gradients")
    p.add_argument("--child", choices=IMPLEMENTATIONS, default=None, help=argparse.SUPPRESS)


if __name__ == "__main__":
    script_main(__doc__.splitlines()[0], run, add_arguments, child)
