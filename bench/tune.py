"""W3 at sizes the heuristics miss and W4's steps, untuned against tuned (issue 19), kernel time only, in one run.

Per product (or step): realize it untuned (ZYX_TUNE=0) and record its launches; realize it again with ZYX_TUNE=1
(or 2 with --exhaustive), which searches its kernels (the search's wall time is reported); realize it once more
untuned, which now schedules the winners; then replay both recordings alternately `--rounds` times
(bench/_replay.py), so a busy machine slows both alike, and report the medians and the median of the rounds'
ratios (the speed-up). The tuned values are checked against the untuned ones; each search's line counts its
candidates by outcome (ok, cut, wrong: other values than the heuristics' kernel, failed: not built or not
launched) and names the fastest three (time relative to the heuristics' kernel). A fresh ZYX_CACHE_DIR per run:
every search starts from nothing.

    python bench/tune.py [--quick] [--exhaustive] [--rounds 7] [--only 1021,batched] [--dtype bfloat16]
                         [--torch] [--json FILE] [--target 1.3] [--steps SGD,Adam]

--quick: the same shapes scaled down (for a CPU: a search at full size takes minutes there). --dtype: the
operands' type (bfloat16 and float16 products run on tensor cores where the device has them). --torch: torch's
product of the same shape and dtype on CUDA (TF32 off for float32), timed in the same run, for scale. --json:
every search's candidates with their relative times. --target: a PASS/FAIL line per product for a speed-up of at
least that. --steps: W4's training steps (bench/train_step.py) after the products (a step's searches keep only
winners that make the whole step faster: tune.Tuner.kept_in_step); `--only SGD` runs that step alone.
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _replay import WARM_REPLAYS, cuda_seconds, describe  # noqa: E402

# (name, batch, n, k, m): a @ b with a batch x n x k and b batch x k x m (batch 0: plain matrices)
SHAPES = [("W3 1021³", 0, 1021, 1021, 1021), ("W3 3000x700x5000", 0, 3000, 700, 5000),
          ("W3 batched 64x128x128", 64, 128, 128, 128)]
ROUND_SECONDS = 0.05  # each round replays a recording at least this long (many times over, for a short kernel)
QUICK = [("W3 509³ (quick)", 0, 509, 509, 509), ("W3 750x175x1250 (quick)", 0, 750, 175, 1250),
         ("W3 batched 16x128x128 (quick)", 16, 128, 128, 128)]


def operands(dev, batch: int, n: int, k: int, m: int, dtype: str):
    rng = np.random.default_rng(0)
    lead = (batch,) if batch else ()
    return (dev.tensor(rng.standard_normal(lead + (n, k), dtype=np.float32)).to(dtype).realize(),
            dev.tensor(rng.standard_normal(lead + (k, m), dtype=np.float32)).to(dtype).realize())


def torch_seconds(batch: int, n: int, k: int, m: int, dtype: str, rounds: int) -> float:
    """The median over `rounds` of torch's `a @ b` on CUDA (float32 without TF32), each round ROUND_SECONDS of
    back-to-back products and one synchronize."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    lead = (batch,) if batch else ()
    a = torch.randn(lead + (n, k), device="cuda").to(getattr(torch, dtype))
    b = torch.randn(lead + (k, m), device="cuda").to(getattr(torch, dtype))
    repeat = max(1, round(ROUND_SECONDS / cuda_seconds(lambda: a @ b, WARM_REPLAYS)))
    return statistics.median(cuda_seconds(lambda: a @ b, repeat) for _ in range(rounds))


def recorded(dev, prepare, tune: str):
    """The launches of one run of what `prepare()` returns (a function), and its value, prepared afresh with
    ZYX_TUNE=`tune` (programs in memory forgotten: the searches happen in `prepare`)."""
    from zyx.runtime.replay import record_launches
    os.environ["ZYX_TUNE"] = tune
    dev.forget_programs()
    run = prepare()
    out, launches = record_launches(dev.runtime, run)
    return out.numpy(), launches


def product(a, b):
    """`prepare` for recorded(): the product realized (its first realization schedules it, and under ZYX_TUNE
    searches its kernels)."""
    return lambda: lambda: (a @ b).realize()


def training_step(dev, optimizer: str):
    """`prepare` for recorded(): a fresh @zyx.jit W4 step (bench/train_step.py) with the shared initial weights,
    run twice (its first call traces it, and under ZYX_TUNE searches its kernels), then its loss realized."""
    from train_step import inputs, zyx_step
    data = inputs()

    def prepare():
        step, x, y = zyx_step(dev, data, optimizer)
        for _ in range(2):
            step(x, y).realize()
        return lambda: step(x, y).realize()
    return prepare


def _trials(record) -> dict:
    """A search as --json writes it: each candidate's choice, status and time relative to the heuristics'."""
    return {"kernel": record.untuned_name, "heuristic": record.heuristic.describe(), "winner": record.choice.describe(),
            "speedup": record.speedup, "search_seconds": record.search_seconds,
            "trials": [{"choice": t.choice.describe(), "status": t.status, "seconds": t.seconds,
                        "relative": t.relative} for t in record.trials]}


def _outcome(record, fastest: int = 3) -> str:
    """How many of a search's candidates ran ("ok"), were cut, computed other values ("wrong") or failed; and the
    `fastest` few, by their time relative to the heuristics' kernel."""
    counts = collections.Counter(trial.status for trial in record.trials)
    timed = sorted((t for t in record.trials[1:] if t.status == "ok" and t.relative is not None),
                   key=lambda t: t.relative)  # type: ignore[arg-type, return-value]
    best = ", ".join(f"{t.choice.describe()}: {t.relative:.2f}" for t in timed[:fastest])
    return " ".join(f"{status} {count}" for status, count in sorted(counts.items())) + f"; fastest {best}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller shapes (for a CPU)")
    p.add_argument("--exhaustive", action="store_true", help="ZYX_TUNE=2: every choice, not the neighbourhood")
    p.add_argument("--rounds", type=int, default=7, help="alternate replays of untuned and tuned; medians reported")
    p.add_argument("--only", default="", help="comma-separated parts of the names to run")
    p.add_argument("--dtype", default="float32", help="the operands' type: float32, bfloat16 or float16")
    p.add_argument("--torch", action="store_true", help="torch's product on CUDA in the same run, for scale")
    p.add_argument("--json", default="", help="write every search's candidates here")
    p.add_argument("--target", type=float, default=0.0, help="print PASS/FAIL for a speed-up of at least this")
    p.add_argument("--unstaged", action="store_true", help="ZYX_TUNE=2 tries every choice at once (tune.STAGES "
                   "off), to compare the staged search with it")
    p.add_argument("--log", action="store_true", help="the searches' log (zyx.tune at INFO) on stderr")
    p.add_argument("--steps", default="", help="W4 training steps to tune after the products: SGD,Adam")
    p.add_argument("--threshold", type=float, default=None, help="ZYX_TUNE=1 searches kernels slower than this many "
                   "seconds (tuning_mode.threshold_seconds; a GPU's W4 kernels run under its 50 us)")
    args = p.parse_args()
    if args.log:
        logging.basicConfig(format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("zyx.tune").setLevel(logging.INFO)
    os.environ["ZYX_CACHE_DIR"] = tempfile.mkdtemp(prefix="zyx-tune-bench-")
    import zyx
    from zyx.jit import tune, tuning_mode
    if args.unstaged:
        tune.STAGES.clear()
    if args.threshold is not None:
        tuning_mode.THRESHOLD_SECONDS = tuning_mode.GPU_THRESHOLD_SECONDS = args.threshold
    dev = zyx.OpenCL()
    print(f"{dev.runtime.name}: {args.dtype} untuned (heuristics) against tuned (ZYX_TUNE={2 if args.exhaustive else 1}), "
          f"kernel time, median of {args.rounds} alternate rounds", flush=True)
    searches = []
    for name, batch, n, k, m in QUICK if args.quick else SHAPES:
        if args.only and not any(word in name for word in args.only.split(",")):
            continue
        a, b = operands(dev, batch, n, k, m, args.dtype)
        flops = 2.0 * max(batch, 1) * n * k * m
        rtol = 1e-3 if args.dtype == "float32" else 3e-2
        searches.append(compare(args, dev, name, product(a, b), flops, (rtol, rtol * np.sqrt(k)), batch, n, k, m))
        if args.json:
            Path(args.json).write_text(json.dumps(searches, indent=1))
    for optimizer in filter(None, args.steps.split(",")):
        name = f"W4 {optimizer} step"
        if args.only and not any(word in name for word in args.only.split(",")):
            continue
        searches.append(compare(args, dev, name, training_step(dev, optimizer), 0.0, None))
        if args.json:
            Path(args.json).write_text(json.dumps(searches, indent=1))


def compare(args, dev, name: str, prepare, flops: float, tolerance, *shape: int) -> dict:
    """Untuned against tuned in the same run (see the module docstring): print the line, return the JSON.
    `tolerance`: (rtol, atol) of the tuned value against the untuned one (None: not compared, as a training
    step's loss after other steps)."""
    from zyx.jit.tune_store import default_tuning_store
    from zyx.runtime.replay import replay
    runtime = dev.runtime
    untuned, untuned_launches = recorded(dev, prepare, "0")
    start = time.time()
    recorded(dev, prepare, "2" if args.exhaustive else "1")
    search = time.time() - start
    tuned, tuned_launches = recorded(dev, prepare, "0")
    if tolerance is not None:
        np.testing.assert_allclose(tuned.astype(np.float32), untuned.astype(np.float32), rtol=tolerance[0],
                                   atol=tolerance[1])
    times: dict[str, list[float]] = {"untuned": [], "tuned": []}
    repeat = {what: max(1, round(ROUND_SECONDS / replay(runtime, launches, WARM_REPLAYS)))
              for what, launches in (("untuned", untuned_launches), ("tuned", tuned_launches))}
    for _ in range(args.rounds):
        for what, launches in (("untuned", untuned_launches), ("tuned", tuned_launches)):
            times[what].append(replay(runtime, launches, repeat[what]))
    before, after = (statistics.median(times[what]) for what in ("untuned", "tuned"))
    speedup = statistics.median(u / t for u, t in zip(times["untuned"], times["tuned"]))  # round by round
    found = [r for r in default_tuning_store().records() if r.created >= start]
    chosen = "; ".join(f"{r.untuned_name} {r.heuristic.describe()} -> {r.choice.describe()} ({r.speedup:.2f}x in the "
                       f"search; candidates {_outcome(r)})" for r in found)
    theirs = ""
    if args.torch and shape:
        try:
            seconds = torch_seconds(*shape, args.dtype, args.rounds)
            theirs = (f"  torch {seconds * 1e3:9.3f} ms ({flops / seconds / 1e9:8.1f} GFLOP/s, tuned/torch "
                      f"{seconds / after:4.2f})")
        except Exception as error:  # no torch, or no CUDA
            theirs = f"  torch: {type(error).__name__}"
    rate = (lambda seconds: f" ({flops / seconds / 1e9:8.1f} GFLOP/s)") if flops else (lambda seconds: "")
    print(f"{name:30s} untuned {before * 1e3:9.3f} ms{rate(before)}  tuned {after * 1e3:9.3f} ms{rate(after)}  "
          f"{speedup:5.2f}x{theirs}  search {search:6.1f} s, {len(found)} kernels  [{chosen or 'nothing searched'}] "
          f"[{len(untuned_launches)} -> {len(tuned_launches)} launches: {describe(tuned_launches)}]", flush=True)
    if args.target:
        print(f"{'PASS' if speedup >= args.target else 'FAIL'} {args.dtype} {name}: tuned {speedup:.2f}x untuned "
              f"(target {args.target:g}x), search {search:.1f} s", flush=True)
    return {"name": name, "dtype": args.dtype, "untuned_seconds": before, "tuned_seconds": after, "speedup": speedup,
            "search_seconds": search, "launches": [len(untuned_launches), len(tuned_launches)],
            "searches": [_trials(r) for r in found]}


if __name__ == "__main__":
    main()
