"""A1: causal attention's forward (--train: forward and backward) over context length: time and memory growth.

    python bench/attention.py [--contexts 1024,2048,4096] [--batch 1] [--heads 4] [--head-dim 64] [--full] [--train]
                              [--repeat 5] [--device N] [--json OUT]
                              [--only torch,zyx-cores,zyx-staged,zyx-tiled,zyx-rows,zyx-unfused]
                              [--variants default,rows-32,keys-64+rows-128,split,two-pass] [--calls 1]
                              [--torch-device cpu] [--check-torch] [--beside-torch] [--autocast bfloat16|float16]

`zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True)` (`--full`: not causal, every block of keys computed:
the staged kernel's causal time against it shows the blocks it skips) on (batch, heads, T, head_dim) float32
inputs, as a @zyx.jit function, each in a process of its own. The zyx implementations:
- zyx-staged / zyx-tiled / zyx-rows: softmax(QK^T) V fused at every T (ZYX_ATTENTION_MIN_BYTES=0) in the named
  form (ZYX_ATTENTION_FORM: attention_tiles.py's work groups with keys and values staged in local memory, the
  default, attention_tiled.py's register tiles, or attention.py's work item per query row, the former kernel);
- zyx-cores: the same in attention_cores.py's form (ZYX_ATTENTION_FORM=cores: 16-bit q, k, v on NVIDIA tensor
  cores, so with --autocast; elsewhere it falls back to the tiled form);
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
`--variants` (or `--backward`) names the fused forms' variants to measure, each in a process of its own (VARIANTS:
their ZYX_ATTENTION_* settings; `--only zyx-tiled --variants default,staged-backward` times the tiled
backward against the staged one beside the same tiled forward); with --train each zyx record lists its kernels'
device time per call (`--calls` calls launched back to back, one wait). `--torch-device cuda` runs torch on the GPU
(then the backward alone is timed too), `--check-torch` compares zyx's output (and with --train its gradients)
with torch's in float64 on that device (PASS where every largest error is at most CHECK_TOLERANCE of the
reference's largest value), and `--beside-torch` times torch in each zyx process as well, zyx and torch alike
(--calls launches, one wait).
`--autocast bfloat16|float16` runs the attention under each library's autocast (zyx.autocast, torch.autocast on
--torch-device): half-precision operands, float32 accumulation, a half-precision output (the fused kernels round
where the unfused trace does); --check-torch then allows AUTOCAST_TOLERANCE.
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

IMPLEMENTATIONS = ("torch", "zyx-cores", "zyx-staged", "zyx-tiled", "zyx-rows", "zyx-unfused")
FUSED_FORMS = {"zyx-cores": "cores", "zyx-staged": "staged", "zyx-tiled": "tiled",  # implementation:
               "zyx-rows": "rows"}                                                    # ZYX_ATTENTION_FORM
# The fused forms' variants (--variants, also spelled --backward): their ZYX_* settings. Forward and backward:
# rows per group (ZYX_ATTENTION_ROWS) and keys per staged block (ZYX_ATTENTION_KEYS, attention_tiles.py); the
# backward's: dK and dV in one kernel or two (attention_grad.py), each block of walked rows in one pass or two
# (attention_grad_tiles.py); the forward in register tiles (attention_tiled.py) with TY x CK items and keys a block
# (ZYX_ATTENTION_TILE); the backward in another form (ZYX_ATTENTION_GRAD_FORM) or, tiled, with TY x CK items and
# walked rows a block (ZYX_ATTENTION_GRAD_TILE; grad-dq-tile: dQ's kernel alone). Names joined by "+" combine
# their settings ("rows-32+keys-64").
VARIANTS = {
    "default": {},
    "split": {"ZYX_ATTENTION_GRAD_SHARED": "0"},
    "shared": {"ZYX_ATTENTION_GRAD_SHARED": "1"},
    "two-pass": {"ZYX_ATTENTION_GRAD_PASSES": "2"},
    "no-break": {"ZYX_ATTENTION_BREAK": "0"},  # every causal block tested, the walk never stopped
    "split-two-pass": {"ZYX_ATTENTION_GRAD_SHARED": "0", "ZYX_ATTENTION_GRAD_PASSES": "2"},
    **{f"rows-{rows}": {"ZYX_ATTENTION_ROWS": str(rows)} for rows in (16, 32, 64, 128, 256)},
    **{f"keys-{keys}": {"ZYX_ATTENTION_KEYS": str(keys)} for keys in (16, 32, 64, 128)},
    "tiled": {"ZYX_ATTENTION_FORM": "tiled"},
    **{f"tiled-{ty}x{ck}": {"ZYX_ATTENTION_FORM": "tiled", "ZYX_ATTENTION_TILE": f"{ty},{ck}"}
       for ty in (4, 8, 16, 32) for ck in (2, 4, 8)},
    **{f"{form}-backward": {"ZYX_ATTENTION_GRAD_FORM": form} for form in FUSED_FORMS.values()},
    **{f"grad-{kernels}tile-{ty}x{ck}": {f"ZYX_ATTENTION_GRAD_{setting}TILE": f"{ty},{ck}"}
       for kernels, setting in (("", ""), ("dq-", "DQ_")) for ty in (4, 8, 16, 32) for ck in (2, 4, 8)},
}
CHECK_TOLERANCE = 1e-4  # --check-torch: the largest error allowed, relative to the reference's largest value
# --check-torch under --autocast: 4 machine epsilons of the dtype (bfloat16 2^-7, float16 2^-10): q, k, v, the
# scores, the probabilities and the output are each rounded to it once, every error relative to values the largest
# of which bounds the output (a weighted mean of v's rows) and the gradients alike
AUTOCAST_TOLERANCE = {"bfloat16": 4 * 2.0 ** -7, "float16": 4 * 2.0 ** -10}


def variant_settings(variant: str) -> dict[str, str]:
    """The ZYX_* settings of a variant name, its "+"-joined parts' merged."""
    settings: dict[str, str] = {}
    for part in variant.split("+"):
        if part not in VARIANTS:
            raise SystemExit(f"--variants {variant}: {part!r} is none of {', '.join(VARIANTS)}")
        settings.update(VARIANTS[part])
    return settings


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
    expected = first_head_weights(arrays, causal) @ arrays[2][0, 0].astype(np.float64)
    return float(np.abs(expected - np.asarray(out[0, 0], dtype=np.float64)).max())


def first_head_value_gradient_error(arrays: list, grad_v: Any, causal: bool) -> float:
    """The largest absolute difference of the first head's dV = P^T dO from numpy's in float64."""
    import numpy as np
    grad_out = arrays[3][0, 0].astype(np.float64)
    return float(np.abs(first_head_weights(arrays, causal).T @ grad_out - grad_v[0, 0]).max())


def zyx_attention(args: argparse.Namespace, q: Any, k: Any, v: Any) -> Any:
    """scaled_dot_product_attention, under zyx.autocast where --autocast says."""
    import zyx
    with zyx.autocast(args.autocast or "bfloat16", enabled=args.autocast is not None):
        return zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=not args.full)


def zyx_call(args: argparse.Namespace, dev: Any, arrays: list) -> tuple[Any, Any]:
    """(the jitted call, a function running it once to completion) for the forward or, with --train, the step."""
    import zyx
    tensors = [dev.tensor(a) for a in arrays]
    zyx.realize(*tensors)
    if not args.train:
        attend = zyx.jit(lambda q, k, v: zyx_attention(args, q, k, v))
        return attend, lambda: attend(*tensors[:3]).numpy()

    def step(q: Any, k: Any, v: Any, grad_out: Any) -> tuple:
        out = zyx_attention(args, q, k, v)
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
    found = {"runs_s": runs, "cpu_runs_s": cpu_runs, "kernel_runs_s": kernel_runs, "grown_bytes": grown,
             "first_head_error": error, "kernels": jitted.captured[0]["kernels"]}
    if args.train:
        found["kernel_table"] = kernel_table(jitted, dev, arrays, args.calls)
    if args.check_torch:
        results = run_once()
        found["torch_errors"] = torch_errors(args, arrays, [r.numpy() for r in results] if args.train else [results])
    if args.beside_torch:
        found["beside_torch"] = beside_torch(args, jitted, dev, arrays)
    return found


def kernel_table(train: Any, dev: Any, arrays: list, calls: int) -> list[dict[str, Any]]:
    """Each kernel's device time per call of the step over `calls` calls launched back to back, one wait."""
    import zyx
    tensors = [dev.tensor(a) for a in arrays]
    zyx.realize(*tensors)
    dev.synchronize()
    with zyx.profile() as profiler:
        results = [train(*tensors) for _ in range(calls)]
        zyx.realize(*(r for step in results for r in step))
        dev.synchronize()
    return [{"kernel": row.kernel, "node": row.node, "ms": row.seconds / calls * 1e3, "tflops": row.gflops / 1e3,
             "peak_tflops": row.peak.gflops / 1e3 if row.peak.gflops else None}
            for row in sorted(profiler.summaries(), key=lambda row: -row.seconds)]


def torch_errors(args: argparse.Namespace, arrays: list, found: list) -> dict[str, float]:
    """The largest error of zyx's output and, with --train, gradients (`found`) against torch's in float64 on
    --torch-device, each relative to the reference's largest value."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    device = torch.device(args.torch_device)
    q, k, v = (torch.tensor(a, dtype=torch.float64, device=device, requires_grad=args.train) for a in arrays[:3])
    out = F.scaled_dot_product_attention(q, k, v, is_causal=not args.full)
    grads = (torch.autograd.grad((out * torch.tensor(arrays[3], dtype=torch.float64, device=device)).sum(), [q, k, v])
             if args.train else ())
    errors = {}
    for name, reference, value in zip(("out", "dq", "dk", "dv"), (out.detach(), *grads), found):
        reference = reference.cpu().numpy()
        value = np.asarray(value, dtype=np.float64)
        errors[name] = float(np.abs(value - reference).max() / max(np.abs(reference).max(), 1e-30))
    return errors


def measure_torch(args: argparse.Namespace, context: int) -> dict[str, Any]:
    """torch's time per call on --torch-device (waiting for the device); with --train on a GPU also the backward
    alone (autograd over a kept graph)."""
    import torch
    import torch.nn.functional as F
    device = torch.device(args.torch_device)
    q, k, v = (torch.from_numpy(a).to(device).requires_grad_(args.train) for a in inputs(args, context))
    grad_out = torch.from_numpy(inputs(args, context)[0][::-1].copy()).to(device)
    wait = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def forward() -> Any:
        with torch.autocast(device.type, dtype=getattr(torch, args.autocast or "bfloat16"),
                            enabled=args.autocast is not None):
            return F.scaled_dot_product_attention(q, k, v, is_causal=not args.full)

    def step() -> None:
        out = forward()
        if args.train:
            torch.autograd.grad((out * grad_out).sum(), [q, k, v])

    with torch.set_grad_enabled(args.train):
        found = {"runs_s": timed(step, wait, args)}
        if args.train and device.type == "cuda":
            loss = (forward() * grad_out).sum()
            found["backward_runs_s"] = timed(lambda: torch.autograd.grad(loss, [q, k, v], retain_graph=True), wait,
                                             args)
    return found


def timed(call: Any, wait: Any, args: argparse.Namespace) -> list[float]:
    """Seconds per call of `call`, --calls of them launched back to back and one `wait`, for --repeat runs after
    two."""
    runs = []
    for repeat in range(args.repeat + 2):
        wait()
        start = time.perf_counter()
        for _ in range(args.calls):
            call()
        wait()
        if repeat >= 2:
            runs.append((time.perf_counter() - start) / args.calls)
    return runs


def beside_torch(args: argparse.Namespace, jitted: Any, dev: Any, arrays: list) -> dict[str, list[float]]:
    """Seconds per call of zyx's jitted forward or step and of torch's on --torch-device, in this process, each
    timed alike (timed: launches back to back, one wait)."""
    import zyx
    tensors = [dev.tensor(a) for a in arrays]
    zyx.realize(*tensors)
    last = {}

    def zyx_call() -> None:
        results = jitted(*tensors)
        zyx.realize(*(results if isinstance(results, tuple) else (results,)))
        last["results"] = results  # kept until the next call: the launches stay queued
    return {"zyx_s": timed(zyx_call, dev.synchronize, args),
            "torch_s": measure_torch(args, arrays[0].shape[2])["runs_s"]}


def in_child(args: argparse.Namespace, context: int, implementation: str, variant: str = "default"
             ) -> dict[str, Any]:
    """One measurement in a new process with a new zyx cache directory (a fused form's with its `variant`)."""
    with tempfile.TemporaryDirectory(prefix="attention_") as root:
        env = dict(os.environ, ZYX_CACHE_DIR=os.path.join(root, "zyx"),
                   ZYX_ATTENTION_MIN_BYTES="0" if implementation in FUSED_FORMS else str(1 << 62))
        if implementation in FUSED_FORMS:
            env["ZYX_ATTENTION_FORM"] = FUSED_FORMS[implementation]
        env.update(variant_settings(variant))
        command = [sys.executable, __file__, "--child", implementation, "--contexts", str(context),
                   "--batch", str(args.batch), "--heads", str(args.heads), "--head-dim", str(args.head_dim),
                   "--repeat", str(args.repeat), "--calls", str(args.calls), "--torch-device", args.torch_device]
        command += (["--full"] * args.full + ["--train"] * args.train + ["--check-torch"] * args.check_torch
                    + ["--beside-torch"] * args.beside_torch + ["--autocast", args.autocast] * bool(args.autocast))
        if args.device is not None:
            command += ["--device", str(args.device)]
        finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    if finished.returncode != 0:
        raise RuntimeError(finished.stderr.strip().splitlines()[-1] if finished.stderr.strip() else "no output")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def measurements(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(implementation, variant) of every measurement asked for: each fused form's once per --variants variant."""
    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    for variant in variants:
        variant_settings(variant)
    return [(implementation, variant) for implementation in IMPLEMENTATIONS if wants(args, implementation)
            for variant in (variants if implementation in FUSED_FORMS else ["default"])]


def notes_of(found: dict[str, Any], args: argparse.Namespace, matrix: int) -> list[str]:
    """The record's notes: kernel and CPU time, the T x T matrix for scale, kernels, the errors."""
    notes = [f"one T×T matrix of all heads: {matrix / 2**20:.1f} MiB"]
    if "backward_runs_s" in found:
        notes.append(f"backward alone {statistics.median(found['backward_runs_s']) * 1e3:.2f} ms")
    if "grown_bytes" not in found:
        return notes
    notes[:0] = [f"kernels {statistics.median(found['kernel_runs_s']) * 1e3:.2f} ms",
                 f"CPU {statistics.median(found['cpu_runs_s']) * 1e3:.1f} ms"]
    notes.append(f"{found['kernels']} kernel{'s' * (found['kernels'] != 1)}")
    notes.append(f"first head{' dV' * args.train} off numpy by {found['first_head_error']:.1e}")
    if "beside_torch" in found:
        zyx_s, torch_s = (statistics.median(found["beside_torch"][key]) for key in ("zyx_s", "torch_s"))
        notes.append(f"beside torch: zyx {zyx_s * 1e3:.3f} ms, torch {torch_s * 1e3:.3f} ms, "
                     f"zyx / torch {zyx_s / torch_s:.2f}")
    if "torch_errors" in found:
        errors = found["torch_errors"]
        tolerance = AUTOCAST_TOLERANCE[args.autocast] if args.autocast else CHECK_TOLERANCE
        verdict = "PASS" if all(e <= tolerance for e in errors.values()) else "FAIL"
        notes.append(f"{verdict} against torch: " + ", ".join(f"{k} {e:.1e}" for k, e in errors.items()))
    return notes


def run(args: argparse.Namespace, device: Any, cl_device: Any) -> list[Record]:
    records = []
    for context in (int(c) for c in args.contexts.split(",")):
        matrix = args.batch * args.heads * context * context * 4
        for implementation, variant in measurements(args):
            name = implementation if variant == "default" else f"{implementation}/{variant}"
            record = Record(f"{'A2' if args.train else 'A1'} T={context}{' full' * args.full}", name,
                            unit="MiB grown")
            print(f"  {record.workload:<10} {name:<11} ...", file=sys.stderr, flush=True)
            try:
                found = in_child(args, context, implementation, variant)
            except Exception as error:
                record.note = f"skipped: {error}"
                records.append(record)
                continue
            record.runs_s, record.median_s = found["runs_s"], statistics.median(found["runs_s"])
            if "grown_bytes" in found:
                record.throughput = found["grown_bytes"] / 2**20
            record.note, record.extra = "; ".join(notes_of(found, args, matrix)), found
            records.append(record)
            print(f"{record.workload} {name}: {record.note}", flush=True)
            for row in found.get("kernel_table", []):
                share = f" {row['tflops'] / row['peak_tflops']:.1%} of peak" if row["peak_tflops"] else ""
                print(f"    {row['kernel']} {row['node']:<36} {row['ms']:8.3f} ms {row['tflops']:6.1f} TFLOP/s{share}",
                      flush=True)
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
    p.add_argument("--variants", "--backward", default="default",
                   help=f"the fused forms' variants to measure, each in a process ({', '.join(VARIANTS)}; "
                        "'+' combines)")
    p.add_argument("--calls", type=int, default=1, help="calls launched back to back per timed run (one wait)")
    p.add_argument("--torch-device", default="cpu", help="where torch runs (cpu, cuda)")
    p.add_argument("--check-torch", action="store_true",
                   help="compare zyx's output and gradients with torch's in float64 on --torch-device")
    p.add_argument("--beside-torch", action="store_true",
                   help="time torch on --torch-device in zyx's process too, both as launches back to back, one wait")
    p.add_argument("--autocast", choices=("bfloat16", "float16"), default=None,
                   help="the attention under zyx.autocast / torch.autocast in this dtype")
    p.add_argument("--child", choices=IMPLEMENTATIONS, default=None, help=argparse.SUPPRESS)


if __name__ == "__main__":
    script_main(__doc__.splitlines()[0], run, add_arguments, child)
