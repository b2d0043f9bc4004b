"""W7: one training step of a GPT-2-style decoder (embeddings, pre-norm causal attention blocks, GELU MLP, tied
head, AdamW, gradient clipping), zyx beside torch eager, torch.compile and tinygrad.

    python bench/gpt_step.py [--size cpu|gpu] [--train-steps 20] [--warmup 3] [--device N] [--json OUT]
                             [--only torch,torch.compile,tinygrad,zyx] [--first-step] [--first-step-repeat 1]
                             [--autocast bfloat16|float16]

Sizes (--size): cpu 4 layers, d=256, 4 heads, context 256, batch 8, vocabulary 512 (the default);
gpu 12 layers, d=768, 12 heads, context 1024, batch 16, vocabulary 50304 (GPT-2 small). float32 throughout, or
with --autocast bfloat16|float16 the forward under each library's autocast (torch.autocast, zyx.autocast; float32
weights and optimizer state; float16 without a loss scaler: one step's loss is far from overflowing).

One model, written once as a function of a `functional` namespace (torch.nn.functional or zyx.nn.functional,
which share names and arguments) and a dict of parameters, so every implementation computes the same step from
the same initial weights (GPT-2's: normal(0, 0.02), zero biases, unit norms) on the same batch:
    torch          eager: the forward, loss.backward(), clip_grad_norm_(1.0), AdamW.step(), loss.item()
    torch.compile  the same with the forward and loss under torch.compile (default mode); the optimizer eager
    tinygrad       skipped with a note where it does not import (it has no functional namespace to share)
    zyx            a @zyx.jit step: forward, loss.backward(params), zyx.nn.clip_grad_norm, AdamW.update
AdamW: lr 3e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on every parameter. The warm-up losses of each
implementation are checked against torch eager's (rtol 2e-3). Reported: the median step time of at least 20
timed steps after the warm-up (implementations timed in turn, see _harness.measure_interleaved), tokens/s
(batch × context ÷ step time), zyx's kernels per step, peak device memory over one step (zyx.memory_stats;
torch only on CUDA, where torch.cuda.max_memory_allocated counts it; the CPU allocator keeps no statistics),
and with --first-step the time to the first step's loss in a new process (see `first_step_records`).
"""
from __future__ import annotations

import time

CHILD_STARTED = time.time()  # a --child process's clock starts here, before its imports

import argparse  # noqa: E402
import copy  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Optional  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _harness import (Case, Record, Skip, Workload, pick_device, run_workload, script_main,  # noqa: E402
                      set_ratios, wants)
from train_step import _case, zyx_device  # noqa: E402

MIN_STEPS = 20
MIN_WARMUP = 3
ADAMW = {"lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
MAX_NORM = 1.0
LOSS_RTOL = 2e-3
AUTOCAST_LOSS_RTOL = 2e-2  # half-precision products: the losses agree to bf16's 8 bits, not float32's


@dataclass(frozen=True)
class Config:
    layers: int
    dim: int
    heads: int
    context: int
    batch: int
    vocab: int

    @property
    def tokens(self) -> int:
        return self.batch * self.context


SIZE_FIELDS = ("layers", "dim", "heads", "context", "batch", "vocab")
SIZES = {"cpu": Config(layers=4, dim=256, heads=4, context=256, batch=8, vocab=512),
         "gpu": Config(layers=12, dim=768, heads=12, context=1024, batch=16, vocab=50304)}


# ---- the model, once for every library ------------------------------------------------------------------------
def initial_parameters(cfg: Config, seed: int = 7) -> dict[str, np.ndarray]:
    """GPT-2's initialisation: weights normal(0, 0.02), biases 0, norms 1 and 0."""
    rng = np.random.default_rng(seed)
    d = cfg.dim

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
    p = {"wte": normal(cfg.vocab, d), "wpe": normal(cfg.context, d)}
    for i in range(cfg.layers):
        p |= {f"h{i}.ln1.w": np.ones(d, np.float32), f"h{i}.ln1.b": np.zeros(d, np.float32),
              f"h{i}.qkv.w": normal(3 * d, d), f"h{i}.qkv.b": np.zeros(3 * d, np.float32),
              f"h{i}.proj.w": normal(d, d), f"h{i}.proj.b": np.zeros(d, np.float32),
              f"h{i}.ln2.w": np.ones(d, np.float32), f"h{i}.ln2.b": np.zeros(d, np.float32),
              f"h{i}.fc.w": normal(4 * d, d), f"h{i}.fc.b": np.zeros(4 * d, np.float32),
              f"h{i}.out.w": normal(d, 4 * d), f"h{i}.out.b": np.zeros(d, np.float32)}
    return p | {"lnf.w": np.ones(d, np.float32), "lnf.b": np.zeros(d, np.float32)}


def batch_of_tokens(cfg: Config, seed: int = 11) -> dict[str, np.ndarray]:
    """Token ids (batch, context) and the next token of each as the target."""
    ids = np.random.default_rng(seed).integers(0, cfg.vocab, (cfg.batch, cfg.context + 1)).astype(np.int32)
    return {"ids": ids[:, :-1].copy(), "targets": ids[:, 1:].copy(),
            "positions": np.arange(cfg.context, dtype=np.int32)}


def gpt_loss(F: Any, p: dict[str, Any], ids: Any, targets: Any, positions: Any, cfg: Config) -> Any:
    """The mean next-token cross-entropy of the decoder; `F` is torch.nn.functional or zyx.nn.functional."""
    batch, length, d, heads = ids.shape[0], ids.shape[1], cfg.dim, cfg.heads

    def split_heads(x: Any) -> Any:
        return x.reshape(batch, length, heads, d // heads).transpose(1, 2)
    x = F.embedding(ids, p["wte"]) + F.embedding(positions, p["wpe"])
    for i in range(cfg.layers):
        h = F.layer_norm(x, (d,), p[f"h{i}.ln1.w"], p[f"h{i}.ln1.b"])
        qkv = F.linear(h, p[f"h{i}.qkv.w"], p[f"h{i}.qkv.b"])
        q, k, v = (split_heads(qkv[..., j * d:(j + 1) * d]) for j in range(3))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, length, d)
        x = x + F.linear(a, p[f"h{i}.proj.w"], p[f"h{i}.proj.b"])
        h = F.layer_norm(x, (d,), p[f"h{i}.ln2.w"], p[f"h{i}.ln2.b"])
        x = x + F.linear(F.gelu(F.linear(h, p[f"h{i}.fc.w"], p[f"h{i}.fc.b"])), p[f"h{i}.out.w"], p[f"h{i}.out.b"])
    logits = F.linear(F.layer_norm(x, (d,), p["lnf.w"], p["lnf.b"]), p["wte"])  # the head tied to wte
    return F.cross_entropy(logits.reshape(batch * length, cfg.vocab), targets.reshape(batch * length))


def step_flops(cfg: Config) -> float:
    """Matrix-product FLOPs of a step: 6 per weight per token (forward, both gradients), plus attention's two
    products (causal: half of them needed; counted whole, as most implementations compute them whole)."""
    weights = cfg.layers * 12 * cfg.dim ** 2 + cfg.vocab * cfg.dim
    attention = cfg.layers * 2 * 2 * cfg.batch * cfg.context ** 2 * cfg.dim
    return 6.0 * weights * cfg.tokens + 3 * attention


# ---- torch ----------------------------------------------------------------------------------------------------
def torch_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_step(cfg: Config, params: dict[str, np.ndarray], data: dict[str, np.ndarray],
               compiled: bool = False, autocast: Optional[str] = None) -> Callable[[], float]:
    """One torch training step returning the loss (`compiled`: the forward and loss under torch.compile;
    `autocast`: the forward and loss under torch.autocast in that dtype)."""
    import contextlib
    import torch
    import torch.nn.functional as F
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 means float32
    where = torch_device()
    p = {k: torch.tensor(v, device=where, requires_grad=True) for k, v in params.items()}  # copies
    ids, targets, positions = (torch.from_numpy(data[k].astype(np.int64)).to(where)
                               for k in ("ids", "targets", "positions"))
    loss_of = torch.compile(gpt_loss) if compiled else gpt_loss
    opt = torch.optim.AdamW(list(p.values()), **ADAMW)

    def mixed() -> Any:
        return (torch.autocast(where, dtype=getattr(torch, autocast)) if autocast else contextlib.nullcontext())

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with mixed():
            loss = loss_of(F, p, ids, targets, positions, cfg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(p.values()), MAX_NORM)
        opt.step()
        return loss.item()
    return step


def torch_case(cfg: Config, params: dict[str, np.ndarray], compiled: bool = False, autocast: Optional[str] = None):
    """torch eager, or torch.compile (which compiles in the first warm-up step: a failure there skips the row)."""
    def make(workload: Workload) -> Case:
        try:
            import torch
        except Exception as error:
            raise Skip(f"torch not importable ({error})")
        step = torch_step(cfg, params, workload.inputs, compiled, autocast)
        threads, where = torch.get_num_threads(), torch_device()
        return _case(step, f"torch {torch.__version__} on {where}" + (f", {threads} threads" if where == "cpu" else ""))
    return make


def torch_cuda_peak(cfg: Config, params: dict[str, np.ndarray], data: dict[str, np.ndarray],
                    compiled: bool, autocast: Optional[str] = None) -> Optional[int]:
    """torch's peak CUDA memory over one step after two, or None without CUDA."""
    import torch
    if not torch.cuda.is_available():
        return None
    step = torch_step(cfg, params, data, compiled, autocast)
    step(), step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    return torch.cuda.max_memory_allocated()


# ---- tinygrad -------------------------------------------------------------------------------------------------
def tinygrad_case():
    def make(workload: Workload) -> Case:
        try:
            import tinygrad  # noqa: F401
        except Exception as error:
            raise Skip(f"tinygrad not importable ({type(error).__name__}: {error})")
        raise Skip("tinygrad has no functional namespace shaped like torch's; W7 has no tinygrad model yet")
    return make


# ---- zyx ------------------------------------------------------------------------------------------------------
def zyx_step(dev: Any, cfg: Config, params: dict[str, np.ndarray], data: dict[str, np.ndarray],
             autocast: Optional[str] = None) -> Callable:
    """A @zyx.jit training step on `dev` (its forward under zyx.autocast in `autocast`'s dtype if given); call it
    with no arguments for the loss tensor."""
    import zyx
    F = zyx.nn.functional
    p = {k: dev.tensor(v) for k, v in params.items()}
    ids, targets, positions = (dev.tensor(data[k]) for k in ("ids", "targets", "positions"))
    weights = list(p.values())
    opt = zyx.nn.AdamW(**ADAMW)

    mixed = zyx.autocast(autocast or "bfloat16", enabled=autocast is not None)

    @zyx.jit
    def step(ids: Any, targets: Any, positions: Any) -> Any:
        with mixed:
            loss = gpt_loss(F, p, ids, targets, positions, cfg)
        grads, _ = zyx.nn.clip_grad_norm(loss.backward(weights), MAX_NORM)
        opt.update(weights, grads, realize_with=[loss])
        return loss

    def run() -> Any:
        return step(ids, targets, positions)
    run.captured = lambda: step.captured  # type: ignore[attr-defined]
    return run


def zyx_case(cfg: Config, params: dict[str, np.ndarray], device: Any, autocast: Optional[str] = None):
    def make(workload: Workload) -> Case:
        if device is None:
            raise Skip("no OpenCL device")
        step = zyx_step(zyx_device(device), cfg, params, workload.inputs, autocast)
        case = _case(lambda: step().item())
        run = case.run

        def run_and_count() -> None:  # the note (read after the warm-up) gives the program's kernel count
            run()
            captured = step.captured()
            case.note = f"{captured[0]['kernels']} kernels per step" if captured else ""
        case.run = run_and_count
        return case
    return make


def zyx_peak(cfg: Config, params: dict[str, np.ndarray], data: dict[str, np.ndarray], device: Any,
             autocast: Optional[str] = None) -> dict:
    """zyx's peak device memory over one replayed step, and the program's planned peak and kernel count."""
    import zyx
    dev = zyx_device(device)
    step = zyx_step(dev, cfg, params, data, autocast)
    for _ in range(2):  # capture, then one replay
        step().item()
    gc.collect()
    zyx.reset_peak_memory(dev)
    step().item()
    captured = step.captured()[0]
    return {"peak_bytes": zyx.memory_stats(dev)["peak_bytes"], "planned_peak_bytes": captured["planned_peak_bytes"],
            "kernels": captured["kernels"]}


# ---- cases ----------------------------------------------------------------------------------------------------
def reference_losses(cfg: Config, params: dict[str, np.ndarray], data: dict[str, np.ndarray],
                     steps: int, autocast: Optional[str] = None) -> np.ndarray:
    """torch eager's losses for the first `steps` steps: what every implementation's warm-up must give."""
    step = torch_step(cfg, params, data, autocast=autocast)
    return np.array([step() for _ in range(steps)])


def cases(cfg: Config, params: dict[str, np.ndarray], device: Any,
          autocast: Optional[str] = None) -> dict[str, Callable[[Workload], Case]]:
    return {"torch": torch_case(cfg, params, autocast=autocast),
            "torch.compile": torch_case(cfg, params, compiled=True, autocast=autocast),
            "tinygrad": tinygrad_case(), "zyx": zyx_case(cfg, params, device, autocast)}


def memory_records(cfg: Config, params: dict[str, np.ndarray], data: dict[str, np.ndarray], device: Any,
                   args: argparse.Namespace) -> list[Record]:
    records = []
    if wants(args, "zyx"):
        record = Record("W7 peak memory", "zyx", unit="MiB")
        try:
            if device is None:
                raise Skip("no OpenCL device")
            found = zyx_peak(cfg, params, data, device, args.autocast)
            record.throughput, record.extra = found["peak_bytes"] / 2**20, found
            record.note = (f"zyx.memory_stats peak over one replayed step; planned "
                           f"{found['planned_peak_bytes'] / 2**20:.1f} MiB; {found['kernels']} kernels per step")
        except Exception as error:
            record.note = f"skipped: {type(error).__name__}: {error}"
        records.append(record)
    for name, compiled in (("torch", False), ("torch.compile", True)):
        if wants(args, name):
            record = Record("W7 peak memory", name, unit="MiB")
            try:
                peak = torch_cuda_peak(cfg, params, data, compiled, args.autocast)
                record.throughput = None if peak is None else peak / 2**20
                record.note = ("torch.cuda.max_memory_allocated over one step" if peak is not None else
                               "not measured: torch keeps no allocator statistics on the CPU")
            except Exception as error:
                record.note = f"skipped: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
            records.append(record)
    return records


# ---- the first step in a new process ---------------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    """--child IMPLEMENTATION: build the model, take one step, print one JSON line (cold_start.spawn's format)."""
    cfg = config(args)
    params, data = initial_parameters(cfg), batch_of_tokens(cfg)
    t_import = time.time()
    if args.child == "zyx":
        import zyx
        if args.device is None:  # what a user's script does (zyx's own choice, its probe remembered)
            dev = zyx.OpenCL()
        else:
            device, _, why = pick_device(args.device)
            if device is None:
                raise SystemExit(why)
            dev = zyx_device(device)
        t_device = time.time()
        step = zyx_step(dev, cfg, params, data, args.autocast)
        t_model = time.time()
        loss = step().item()
        counters = zyx.stats()
        stats = {k: counters[k] for k in ("kernels_compiled", "graphs_scheduled", "programs_loaded")}
    else:
        t_device = time.time()
        torch_run = torch_step(cfg, params, data, compiled=args.child == "torch.compile", autocast=args.autocast)
        t_model = time.time()
        loss, stats = torch_run(), {}
    print(json.dumps({"loss": loss, "t_start": CHILD_STARTED, "t_import": t_import, "t_device": t_device,
                      "t_model": t_model, "t_step": time.time(), "stats": stats}), flush=True)


# The caches a cold process starts without; CUDA_CACHE_PATH is the driver's own (NVIDIA's OpenCL hands it PTX, which it
# compiles to machine code at load and keeps there: without a new one a "cold" zyx process loads that code warm).
CACHE_VARIABLES = {"zyx": ("ZYX_CACHE_DIR", "POCL_CACHE_DIR", "CUDA_CACHE_PATH"),
                   "torch.compile": ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "CUDA_CACHE_PATH"),
                   "torch": ()}


def child_arguments(args: argparse.Namespace) -> list[str]:
    """The size, its overrides and the device, for a --child process."""
    chosen = [("--size", args.size), ("--device", args.device), ("--autocast", args.autocast),
              *((f"--{k}", getattr(args, k)) for k in SIZE_FIELDS)]
    return [text for flag, value in chosen if value is not None for text in (flag, str(value))]


def first_step_records(args: argparse.Namespace) -> list[Record]:
    """Per implementation, a new process to its first step's loss: cold (new, empty cache directories) and warm
    (the same directories again). Each time is the median of --first-step-repeat pairs; the note splits it into
    the step alone and the rest (interpreter, imports, device, model)."""
    from cold_start import spawn
    script = Path(__file__).resolve()
    records = []
    for name, variables in CACHE_VARIABLES.items():
        if not wants(args, name):
            continue
        times: dict[str, list[tuple[float, dict]]] = {"cold": [], "warm": []}
        try:
            for _ in range(args.first_step_repeat):
                with tempfile.TemporaryDirectory(prefix="gpt_step_") as root:
                    env = dict(os.environ, **{v: os.path.join(root, v.lower()) for v in variables})
                    code = (f"import sys; sys.argv = {[str(script), '--child', name, *child_arguments(args)]!r}; "
                            f"sys.path.insert(0, {str(script.parent)!r}); import runpy; "
                            f"runpy.run_path({str(script)!r}, run_name='__main__')")
                    for kind in ("cold", "warm") if variables else ("cold",):
                        times[kind].append(spawn(code, env, timeout=3600))
        except Exception as error:
            records.append(Record("W7 first step", name, note=f"skipped: {error}"))
            continue
        for kind, runs in times.items():
            if not runs:
                continue
            record = Record(f"W7 first step, {kind}" if variables else "W7 first step", name)
            record.runs_s = [elapsed for elapsed, _ in runs]
            record.median_s = statistics.median(record.runs_s)
            step_alone = statistics.median(payload["phases"]["first_step"] for _, payload in runs)
            stats = runs[-1][1]["stats"]
            record.note = (f"new process to the first loss; the step alone {step_alone:.2f} s"
                           + (f"; {', '.join(f'{k} {v}' for k, v in stats.items())}" if stats else ""))
            record.extra = {"first_step_s": step_alone, **stats}
            records.append(record)
    return records


# ---- running --------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=sorted(SIZES), default="cpu", help="model and batch size (default cpu)")
    p.add_argument("--train-steps", type=int, default=None,
                   help=f"timed steps (default: --repeat, at least {MIN_STEPS})")
    p.add_argument("--first-step", action="store_true",
                   help="also time the first step in new processes with cold and warm caches (slow)")
    p.add_argument("--first-step-repeat", type=int, default=1, help="cold/warm process pairs (default 1)")
    p.add_argument("--autocast", choices=("bfloat16", "float16"), default=None,
                   help="the forward and loss under autocast in this dtype (default: float32 throughout)")
    p.add_argument("--child", choices=sorted(CACHE_VARIABLES), default=None, help=argparse.SUPPRESS)
    for name in SIZE_FIELDS:
        p.add_argument(f"--{name}", type=int, default=None, help=f"override the size's {name}")


def config(args: argparse.Namespace) -> Config:
    base = SIZES[args.size]
    chosen = {k: getattr(args, k) for k in SIZE_FIELDS}
    return Config(**{k: v if v is not None else getattr(base, k) for k, v in chosen.items()})


def run(args: argparse.Namespace, device: Any, cl_device: Any) -> list[Record]:
    cfg = config(args)
    step_args = copy.copy(args)
    step_args.warmup = max(args.warmup, MIN_WARMUP)
    step_args.repeat = args.train_steps if args.train_steps is not None else max(args.repeat, MIN_STEPS)
    params, data = initial_parameters(cfg), batch_of_tokens(cfg)
    reference = reference_losses(cfg, params, data, step_args.warmup, args.autocast)
    name = (f"W7 {args.size}" if cfg == SIZES[args.size] else f"W7 {cfg.layers}L d{cfg.dim} h{cfg.heads} "
            f"T{cfg.context} B{cfg.batch} V{cfg.vocab}")
    if args.autocast:
        name += f" {args.autocast} autocast"
    workload = Workload(name, "GPT training step", data, lambda **_: reference, "tokens/s", step_flops(cfg),
                        rtol=AUTOCAST_LOSS_RTOL if args.autocast else LOSS_RTOL, atol=1e-5)
    records = run_workload(workload, cases(cfg, params, device, args.autocast), step_args, interleave=True)
    torch_row = next((r for r in records if r.implementation == "torch" and r.median_s), None)
    for r in records:
        if r.median_s:
            r.throughput, r.unit = cfg.tokens / r.median_s, "tokens/s"
            if torch_row is not None and r is not torch_row:
                share = f"{r.median_s / torch_row.median_s:.2f} × torch eager's time"
                r.note = f"{share}; {r.note}" if r.note else share
    set_ratios(records)
    records += memory_records(cfg, params, data, device, args)
    if args.first_step:
        records += first_step_records(args)
    return records


if __name__ == "__main__":
    script_main(__doc__.splitlines()[0], run, add_arguments, child)
