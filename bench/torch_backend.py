"""W3, W4 and W6 on zyx.Torch(device) against plain PyTorch eager doing the same work on the same device.

    python -m bench.torch_backend [--device cuda|cpu|mps|cuda:N] [--quick] [--compile [MODE]] [--repeat N]
                                  [--steps N] [--batch N] [--threads N] [--big] [--sizes N,N...]
                                  [--calls N] [--json OUT]

W3   a @ b, n×n float32 (1024 and 2048; 4096 with --big; 256 and 512 with --quick): zyx builds the expression,
     realizes it and waits for the device; torch computes `a @ b` and waits. Both times include the call's own
     Python overhead. GFLOP/s = 2·n³ / time. "W3 n³ jit": the same product as a @zyx.jit function's replay.
     --sizes picks n (8: a product that takes no time, so the rows show the host time per call). With --calls N
     each timed run is N calls back to back and one wait, per call: on a GPU the device's time wherever the
     host keeps ahead of it.
W4   one training step of the MLP 784-512-512-10 of bench/train_step.py (batch 512; SGD lr 0.01, Adam lr 1e-3):
     zyx a @zyx.jit step (zyx.nn.Linear, cross_entropy, zyx.nn.SGD/Adam), torch eager (zero_grad, forward,
     backward, opt.step()); each step ends by reading the loss. Both start from the same weights, and the losses
     of both are checked against bench/train_step.py's numpy reference. The notes count what one step asks of
     torch, both sides: aten operators reaching the dispatcher (a kernel launch each on a GPU, or a view) and
     torch functions called from Python (see `torch_calls`), and the buffers zyx's step reads back to the host
     besides the loss (each a wait for the device: `host_reads`). With --calls N a second row times N steps
     back to back, no loss read, one wait at the end.
W6   the memory of one W4 step after warm-up, three ways: zyx.memory_stats' peak (zyx's own count of its
     buffers); every storage torch allocates during the step, for zyx and for torch eager alike (a
     TorchDispatchMode that counts each new storage until it is freed: what the step adds to what was held
     before it); on CUDA also what torch.cuda.max_memory_allocated rises by over the step, for both (the
     process's whole peak, both models' state included, is in the notes; eager's gradients of its previous step
     are dropped before zyx's step), which is then the compared figure. The notes also give the bytes each holds
     before a step (zyx's count; eager's parameters, optimizer state and batch).
The ratio column is zyx ÷ torch (time, or bytes): below 1 zyx is faster or smaller. The runs alternate in one
process (torch eager, zyx, torch eager, zyx, ...), so that load from other processes, and the drift one process
shows against another (eager's W4 step moved 12–29 % between processes on the H200), fall on both alike; a timed
row's ratio is the median over the rounds of zyx's time ÷ eager's in the same round, its times the medians. On
CUDA a run is timed by CUDA events too (queued before its first call and after its last), and the GPU's time is
the figure: with --calls N, the device's time per call wherever the host keeps ahead of it. --unfused adds a
third run to W4's rounds, the same step with the softmax family unfused (its programs built with
`runtime/softmax_fusion.py` off). --target R prints PASS/FAIL per timed row (issue 18: 1.10). With --compile zyx
runs each program as a torch.compile'd function (zyx.Torch(device, compile=MODE): default, or reduce-overhead for
CUDA graphs); the first W4 step's time (capture and compile) is in the notes. --quick (fewer and smaller runs)
finishes in under a minute on a CPU, without --compile.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from train_step import (OPTIMIZERS, inputs, minimum_bytes, reference_losses, torch_model,  # noqa: E402
                        torch_optimizer, torch_step, zyx_step)

QUICK = {"sizes": (256, 512), "repeat": 3, "steps": 5, "batch": 128}
FULL = {"sizes": (1024, 2048), "repeat": 7, "steps": 20, "batch": 512}


def arguments(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="torch device: cuda, cuda:N, cpu, mps (default: cuda if any)")
    p.add_argument("--quick", action="store_true", help="smaller, fewer runs: under a minute on a CPU")
    p.add_argument("--big", action="store_true", help="W3 also at 4096")
    p.add_argument("--sizes", default=None, help="W3's sizes, comma-separated (default 1024,2048; --quick 256,512)")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="zyx.Torch(device, compile=MODE): a torch.compile mode (default, reduce-overhead, ...)")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per W3 size (median reported)")
    p.add_argument("--steps", type=int, default=None, help="timed W4 steps (median reported)")
    p.add_argument("--batch", type=int, default=None,
                   help="W4's batch (small: a step bound by the host's per-call work, as on a GPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch's intra-op threads (default torch's own; 1 is steadier on a shared CPU)")
    p.add_argument("--calls", type=int, default=1,
                   help="calls back to back per timed run, one wait at the end (time per call; W4: a second row)")
    p.add_argument("--unfused", action="store_true",
                   help="W4 also with the softmax family unfused (softmax_fusion.py off), in the same rounds")
    p.add_argument("--target", type=float, default=None,
                   help="print PASS/FAIL per timed row: zyx/torch at most this (issue 18: 1.10)")
    p.add_argument("--json", metavar="OUT", default=None, help="also write the rows as JSON to OUT")
    return p.parse_args(argv)


# ---- timing --------------------------------------------------------------------------------------------------
class Rounds:
    """Seconds per call of each run, one entry per round (`alternate`): the host's clock from the wait before
    the calls to the wait after them (`wall`), and on CUDA the GPU's, between events queued before the first call
    and after the last (`gpu`: the host's time to queue is in it wherever the GPU waited for the host)."""

    def __init__(self, names: list[str], gpu: bool) -> None:
        self.wall: dict[str, list[float]] = {name: [] for name in names}
        self.gpu: Optional[dict[str, list[float]]] = {name: [] for name in names} if gpu else None

    def seconds(self, name: str) -> float:
        """The median over the rounds, GPU time where there is one."""
        return statistics.median((self.gpu or self.wall)[name])

    def ratio(self, name: str, peer: str = "torch") -> float:
        """The median over the rounds of `name`'s time ÷ `peer`'s in the same round: load that falls on one
        round falls on both of its runs."""
        times = self.gpu or self.wall
        return statistics.median(a / b for a, b in zip(times[name], times[peer]))

    def note(self) -> str:
        """Both clocks' medians, and how the rounds spread, for a row's notes."""
        parts = []
        for name, wall in self.wall.items():
            text = f"{name} wall {statistics.median(wall) * 1e3:.4g} ms"
            if self.gpu is not None:
                text += f", GPU {statistics.median(self.gpu[name]) * 1e3:.4g} ms"
            parts.append(text)
        ratios = sorted((a / b) for a, b in zip(*((self.gpu or self.wall)[n] for n in ("zyx", "torch"))))
        return "; ".join(parts) + f"; zyx/torch per round {ratios[0]:.2f}–{ratios[-1]:.2f} ({len(ratios)} rounds)"


def alternate(runs: dict[str, Callable[[], Any]], repeat: int, sync: Callable[[], None], calls: int = 1,
              events: Optional[Callable[[], Any]] = None) -> Rounds:
    """Each run taken in turn `repeat` times (torch eager first: eager, zyx, eager, zyx, ...), each time `calls`
    calls back to back and then a wait for the device; `events`: a CUDA event factory (torch.cuda.Event with
    timing), to time each run on the GPU too."""
    rounds = Rounds(list(runs), events is not None)
    for _ in range(repeat):
        for name, run in runs.items():
            sync()
            if events is not None:
                first, last = events(), events()
                first.record()
            start = time.perf_counter()
            for _ in range(calls):
                run()
            if events is not None:
                last.record()
            sync()
            rounds.wall[name].append((time.perf_counter() - start) / calls)
            if rounds.gpu is not None:
                rounds.gpu[name].append(first.elapsed_time(last) / 1e3 / calls)
    return rounds


class StoragePeak:
    """Bytes of every storage torch allocates while active, each counted until it is freed, and their peak.

    torch keeps one Python object per storage as long as the storage lives, so a finalizer on it runs exactly
    when the memory goes; storages that existed before (parameters, optimizer state) are not counted, even
    when an in-place op returns them."""

    def __init__(self) -> None:
        self.live = self.peak = 0
        self._known: set[int] = set()

    def __enter__(self) -> "StoragePeak":
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                import torch
                from torch.utils._pytree import tree_flatten
                for tensor in tree_flatten((args, kwargs))[0]:
                    if isinstance(tensor, torch.Tensor):
                        tracker._see(tensor, counted=False)
                out = func(*args, **(kwargs or {}))
                for tensor in tree_flatten(out)[0]:
                    if isinstance(tensor, torch.Tensor):
                        tracker._see(tensor, counted=True)
                return out

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)

    def _see(self, tensor: Any, counted: bool) -> None:
        storage = tensor.untyped_storage()
        if id(storage) in self._known:
            return
        self._known.add(id(storage))
        nbytes = storage.nbytes() if counted else 0
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._freed, id(storage), nbytes)

    def _freed(self, key: int, nbytes: int) -> None:
        self._known.discard(key)
        self.live -= nbytes


def torch_calls(torch: Any, run: Callable[[], Any]) -> dict[str, int]:
    """What one call of `run` asks of torch, counted two ways: `python`, the torch functions and tensor methods
    called from Python (views, copies, property reads and optimizer steps included: what each costs the host),
    by a TorchFunctionMode; `aten`, the operators that reach torch's dispatcher (autograd's C++ calls included:
    each is a kernel launch on a GPU, or a view), by a TorchDispatchMode, profiler markers aside."""
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = {"python": 0, "aten": 0}

    class Functions(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            counts["python"] += 1
            return func(*args, **(kwargs or {}))

    class Operators(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counts["aten"] += func.namespace == "aten"
            return func(*args, **(kwargs or {}))

    with Functions():
        run()
    with Operators():
        run()
    return counts


def host_reads(runtime: Any, run: Callable[[], Any]) -> int:
    """How many buffers one call of `run` reads back from zyx's device (`TorchRuntime.download`: each waits for
    the device's queued work)."""
    download = runtime.download
    count = [0]

    def counted(*args: Any) -> Any:
        count[0] += 1
        return download(*args)

    runtime.download = counted
    try:
        run()
    finally:
        del runtime.download
    return count[0]


# ---- the workloads -------------------------------------------------------------------------------------------
def w3(zyx: Any, torch: Any, dev: Any, device: Any, sizes: list[int], repeat: int, sync: Callable,
       calls: int, events: Optional[Callable]) -> list[dict]:
    rows = []
    rng = np.random.default_rng(2)
    for n in sizes:
        a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
        x, y = dev.tensor(a).realize(), dev.tensor(b).realize()
        ta, tb = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)
        jitted = zyx.jit(lambda p, q: p @ q)
        for label, product in ((f"W3 {n}³", lambda: (x @ y).realize()), (f"W3 {n}³ jit", lambda: jitted(x, y))):
            runs = {"torch": lambda: ta @ tb, "zyx": product}
            for run in runs.values():
                run()
            ok = np.allclose(product().numpy(), a @ b, rtol=1e-3, atol=1e-3 * np.sqrt(n))
            rounds = alternate(runs, repeat, sync, calls, events)
            flops = 2.0 * n ** 3
            rows.append(_row(label + _back_to_back(calls), rounds, "" if ok else "MISMATCH",
                             gflops={name: flops / rounds.seconds(name) / 1e9 for name in runs}))
    return rows


@contextlib.contextmanager
def softmax_fusions_off() -> Iterator[None]:
    """Programs built inside compute the softmax family as the trace spells it (`runtime/softmax_fusion.py`
    matches nothing): the A/B of the fusions in one process."""
    from zyx.runtime import softmax_fusion
    fuse = softmax_fusion.fuse
    softmax_fusion.fuse = lambda order, *_: list(order)
    try:
        yield
    finally:
        softmax_fusion.fuse = fuse


def w4_and_w6(zyx: Any, torch: Any, dev: Any, device: Any, batch: int, steps: int, sync: Callable,
              calls: int, events: Optional[Callable], unfused: bool) -> list[dict]:
    rows = []
    data = inputs(batch)
    for optimizer in OPTIMIZERS:
        reference = reference_losses(data, optimizer, 3)
        step, x, y = zyx_step(dev, data, optimizer)
        start = time.perf_counter()
        losses = [step(x, y).item()]
        first = time.perf_counter() - start
        losses += [step(x, y).item() for _ in range(2)]
        model, params = torch_model(data, str(device))
        opt = torch_optimizer(torch, params, optimizer)
        tx = torch.from_numpy(data["x"]).to(device)
        ty = torch.from_numpy(data["y"].astype(np.int64)).to(device)
        eager = torch_step(torch, model, opt, tx, ty)
        eager_losses = [eager() for _ in range(3)]
        ok = np.allclose(losses, reference, rtol=1e-3) and np.allclose(eager_losses, reference, rtol=1e-3)
        runs = {"torch": eager, "zyx": lambda: step(x, y).item()}
        launches = {"torch": torch_step(torch, model, opt, tx, ty, read=False), "zyx": lambda: step(x, y)}
        if unfused:  # the same step on a device of its own, its programs built with the fusions off
            from zyx.runtime.torch_device import TorchDevice
            with softmax_fusions_off():
                plain, px, py = zyx_step(TorchDevice(device), data, optimizer)
                ok = ok and np.allclose([plain(px, py).item() for _ in range(3)], reference, rtol=1e-3)
            runs["zyx, softmax fusions off"] = lambda: plain(px, py).item()
            launches["zyx, softmax fusions off"] = lambda: plain(px, py)
        rounds = alternate(runs, steps, sync, 1, events)
        counts = {name: torch_calls(torch, run) for name, run in runs.items()}
        work = "capture and compile" if dev.compile else "capture"
        reads = host_reads(dev.runtime, lambda: step(x, y))
        aten = ", ".join(f"{name} {count['aten']}" for name, count in counts.items())
        python = ", ".join(f"{name} {count['python']}" for name, count in counts.items())
        rows.append(_row(f"W4 {optimizer}", rounds, ("" if ok else "MISMATCH; ") +
                         f"per step, aten operators: {aten}; Python-level torch calls: {python}; "
                         f"buffers zyx reads back besides the loss: {reads}; "
                         f"zyx's first step ({work}) {first * 1e3:.0f} ms", calls=counts))
        if calls > 1:
            rounds = alternate(launches, max(steps // 2, 3), sync, calls, events)
            rows.append(_row(f"W4 {optimizer}" + _back_to_back(calls), rounds, "the loss not read"))
        held = sum(t.untyped_storage().nbytes() for t in [*params, tx, ty] +
                   [v for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor)])
        rows.append(w6(zyx, torch, dev, device, optimizer, data, lambda: step(x, y).item(), eager, sync,
                       lambda: opt.zero_grad(set_to_none=True), held))
    return rows


def w6(zyx: Any, torch: Any, dev: Any, device: Any, optimizer: str, data: dict, zyx_run: Callable,
       eager_run: Callable, sync: Callable, drop_eager_gradients: Callable, eager_held: int) -> dict:
    """Peak bytes of one step of each, measured three ways (see the module docstring). Eager's gradients of its
    last step are dropped before zyx's step is measured (torch's zero_grad drops them at the start of its own
    step): they counted against zyx in torch.cuda.max_memory_allocated (2.5 MiB of W4's 512-batch model).
    `eager_held`: the bytes of eager's parameters, optimizer state and batch, beside what zyx holds."""
    cuda = device.type == "cuda"
    found: dict[str, dict[str, float]] = {"zyx": {}, "torch": {"held_before": eager_held}}
    for name, run in (("zyx", zyx_run), ("torch", eager_run)):
        if name == "zyx":
            drop_eager_gradients()
        gc.collect()
        sync()
        if name == "zyx":
            before = zyx.memory_stats(dev)["current_bytes"]
            zyx.reset_peak_memory(dev)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            allocated = torch.cuda.memory_allocated(device)
        with StoragePeak() as storages:
            run()
            sync()
        found[name]["step_storages_peak"] = storages.peak
        if cuda:
            found[name]["cuda_max_memory_allocated"] = torch.cuda.max_memory_allocated(device)
            found[name]["cuda_step_rise"] = found[name]["cuda_max_memory_allocated"] - allocated
        if name == "zyx":
            found[name]["zyx_peak_bytes"] = zyx.memory_stats(dev)["peak_bytes"]
            found[name]["held_before"] = before
    key = "cuda_step_rise" if cuda else "step_storages_peak"
    ratio = found["zyx"][key] / max(found["torch"][key], 1)
    mib = {name: {k: v / 2**20 for k, v in values.items()} for name, values in found.items()}
    note = (f"zyx.memory_stats peak {mib['zyx']['zyx_peak_bytes']:.2f} MiB (held before "
            f"{mib['zyx']['held_before']:.2f}, eager {mib['torch']['held_before']:.2f}); storages the step adds: "
            f"zyx {mib['zyx']['step_storages_peak']:.2f},"
            f" torch {mib['torch']['step_storages_peak']:.2f} MiB")
    if cuda:
        note += (f"; torch.cuda.max_memory_allocated over the step (both models' state included): zyx "
                 f"{mib['zyx']['cuda_max_memory_allocated']:.2f}, torch {mib['torch']['cuda_max_memory_allocated']:.2f}"
                 f" MiB; its rise above the step's start: zyx {mib['zyx']['cuda_step_rise']:.2f}, torch "
                 f"{mib['torch']['cuda_step_rise']:.2f} MiB")
    note += f"; minimum {sum(minimum_bytes(data, optimizer).values()) / 2**20:.2f} MiB (train_step.minimum_bytes)"
    return {"workload": f"W6 {optimizer}", "zyx": mib["zyx"][key], "torch": mib["torch"][key], "unit": "MiB",
            "ratio": ratio, "note": note, "measured": found}


def _back_to_back(calls: int) -> str:
    """A row name's suffix saying how its runs were timed."""
    return f", {calls} back to back" if calls > 1 else ""


def _row(workload: str, rounds: Rounds, note: str, gflops: Optional[dict] = None,
         calls: Optional[dict] = None) -> dict:
    row = {"workload": workload, "zyx": rounds.seconds("zyx") * 1e3, "torch": rounds.seconds("torch") * 1e3,
           "unit": "ms", "ratio": rounds.ratio("zyx"), "note": "; ".join(filter(None, [note, rounds.note()]))}
    if "zyx, softmax fusions off" in rounds.wall:
        row["unfused_ratio"] = rounds.ratio("zyx, softmax fusions off")
        row["note"] += f"; fusions off ÷ torch {row['unfused_ratio']:.2f}"
    if calls:
        row["calls"] = calls
    if gflops:
        row["note"] = f"zyx {gflops['zyx']:.0f} GFLOP/s, torch {gflops['torch']:.0f} GFLOP/s; " + row["note"]
    return row


def table(rows: list[dict]) -> str:
    lines = ["| workload | zyx.Torch | torch eager | ratio zyx/torch | notes |", "| --- | ---: | ---: | ---: | --- |"]
    for row in rows:
        unit = row["unit"]
        lines.append(f"| {row['workload']} | {row['zyx']:.4g} {unit} | {row['torch']:.4g} {unit} | "
                     f"{row['ratio']:.2f} | {row['note']} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    args = arguments(argv)
    import torch

    import zyx
    settings = QUICK if args.quick else FULL
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = zyx.Torch(args.device, compile=args.compile)
    device = dev.torch_device
    sync = dev.synchronize
    sizes = [int(n) for n in args.sizes.split(",")] if args.sizes else list(settings["sizes"])
    sizes += [4096] if args.big else []
    started = time.perf_counter()
    events = (lambda: torch.cuda.Event(enable_timing=True)) if device.type == "cuda" else None
    rows = w3(zyx, torch, dev, device, sizes, args.repeat or settings["repeat"], sync, args.calls, events)
    batch = args.batch or settings["batch"]
    rows += w4_and_w6(zyx, torch, dev, device, batch, args.steps or settings["steps"], sync, args.calls, events,
                      args.unfused)
    print(f"**{dev!r}** ({dev.name}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"zyx W4 batch {batch}, {time.perf_counter() - started:.0f} s in all")
    print(table(rows))
    if args.target:
        for row in rows:
            if row["unit"] == "ms":
                verdict = "PASS" if row["ratio"] <= args.target else "FAIL"
                print(f"{verdict} {row['workload']}: zyx/torch {row['ratio']:.3f} (target <= {args.target})")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": repr(dev), "torch": torch.__version__, "rows": rows},
                                              indent=2, default=str))


if __name__ == "__main__":
    main()
