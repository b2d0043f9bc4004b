"""W5: seconds from spawning a fresh Python process to the first W4 training step's loss, with cold and warm caches.

    python bench/cold_start.py [--cold-repeat 5] [--cold-optimizers SGD,Adam] [--device N] [--only torch,zyx]
                               [--json OUT]

Each run is `python -c CHILD` in a new process (the child is what a user script would be: import, open the
device, build the 784-512-512-10 MLP with the library's own Linear layers and initialisation, one training step
on a random batch of 512, read the loss, print). The clock starts in this process just before the spawn and
stops when the child's line arrives, which it prints right after reading the loss (interpreter teardown is not
counted). The child's own clock splits the time into interpreter start, imports, device, model and first step.
    zyx cold  a fresh, empty ZYX_CACHE_DIR (and a fresh POCL_CACHE_DIR, so PoCL has compiled nothing either)
    zyx warm  the same two directories again, right after the cold run: kernels and programs come from disk
    zyx cold, PoCL warm  a fresh ZYX_CACHE_DIR with the PoCL cache the cold run filled: what zyx itself costs
              when the OpenCL compiler has seen these kernels (not a target; it splits the cold time)
    torch     eager PyTorch on the CPU (it has no compile cache: every start is alike), in the cold rows
Targets for zyx on this CPU: cold ≤ 5 s, warm ≤ 1.5 s, and the warm run compiles no kernel and schedules no
graph (zyx.stats() kernels_compiled and graphs_scheduled, counted over the whole child process, are 0 and 0).
Each time is the median of --cold-repeat runs (default 5; --repeat and --warmup do not apply here), after one
untimed run per implementation that loads the libraries into the OS page cache.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Record, check_args, finish, parser, pick_device, wants  # noqa: E402

OPTIMIZERS = ("SGD", "Adam")
PHASES = ("interpreter", "imports", "device", "model", "first_step")
COLD_REPEAT = 5   # each zyx repetition spawns three processes, the cold one taking seconds
WARMUP_RUNS = 1   # untimed, per implementation: pulls the libraries into the OS page cache
MAX_RETRIES = 3   # repetitions redone because zyx's sources changed while they ran

# Placeholders (upper case) are filled in by `child_code`. The child prints one JSON line, then exits.
ZYX_CHILD = """
import time
t_start = time.time()
import json
import numpy as np
import zyx
t_import = time.time()
dev = zyx.OpenCL(platform=PLATFORM, device=DEVICE)
t_device = time.time()
sizes, batch = SIZES, BATCH
layers = [zyx.nn.Linear(a, b, device=dev) for a, b in zip(sizes, sizes[1:])]
params = [t for layer in layers for t in (layer.weight, layer.bias)]
opt = zyx.nn.SGD(lr=0.01) if OPTIMIZER == "SGD" else zyx.nn.Adam(lr=1e-3)
rng = np.random.default_rng(0)
x = dev.tensor(rng.standard_normal((batch, sizes[0]), dtype=np.float32))
y = dev.tensor(rng.integers(0, sizes[-1], batch).astype(np.int32))

@zyx.jit
def step(x, y):
    h = x
    for i, layer in enumerate(layers):
        h = layer(h)
        if i < len(layers) - 1:
            h = h.relu()
    loss = zyx.nn.cross_entropy(h, y)
    opt.update(params, loss.backward(params))
    return loss

t_model = time.time()
loss = step(x, y).item()
t_step = time.time()
s = zyx.stats()
print(json.dumps({"loss": loss, "t_start": t_start, "t_import": t_import, "t_device": t_device,
                  "t_model": t_model, "t_step": t_step,
                  "stats": {k: s[k] for k in ("kernels_compiled", "graphs_scheduled", "programs_loaded",
                                              "programs_captured", "cache_disk_hits", "compile_seconds")}}),
      flush=True)
"""

TORCH_CHILD = """
import time
t_start = time.time()
import json
import numpy as np
import torch
t_import = time.time()
t_device = time.time()
sizes, batch = SIZES, BATCH
layers = []
for a, b in zip(sizes, sizes[1:]):
    layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
model = torch.nn.Sequential(*layers[:-1])
opt = (torch.optim.SGD(model.parameters(), lr=0.01) if OPTIMIZER == "SGD" else
       torch.optim.Adam(model.parameters(), lr=1e-3))
rng = np.random.default_rng(0)
x = torch.from_numpy(rng.standard_normal((batch, sizes[0]), dtype=np.float32))
y = torch.from_numpy(rng.integers(0, sizes[-1], batch))
t_model = time.time()
opt.zero_grad(set_to_none=True)
loss = torch.nn.functional.cross_entropy(model(x), y)
loss.backward()
opt.step()
loss = loss.item()
t_step = time.time()
print(json.dumps({"loss": loss, "t_start": t_start, "t_import": t_import, "t_device": t_device,
                  "t_model": t_model, "t_step": t_step, "stats": {}}), flush=True)
"""


def child_code(template: str, optimizer: str, sizes: tuple[int, ...], batch: int, device=None) -> str:
    code = (template.replace("OPTIMIZER", repr(optimizer)).replace("SIZES", repr(tuple(sizes)))
            .replace("BATCH", str(batch)))
    if device is not None:
        code = code.replace("PLATFORM", str(device.platform_index)).replace("DEVICE", str(device.device_index))
    return textwrap.dedent(code)


def spawn(code: str, env: dict[str, str], timeout: float = 300) -> tuple[float, dict[str, Any]]:
    """(seconds from just before the spawn to the child's line, the child's JSON with a split by phase)."""
    start_wall, start = time.time(), time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    line = process.stdout.readline()  # type: ignore[union-attr]
    elapsed = time.perf_counter() - start
    _, stderr = process.communicate(timeout=timeout)
    if process.returncode != 0 or not line.strip():
        tail = [text for text in stderr.strip().splitlines() if text.strip()][-1:] or ["no output"]
        raise RuntimeError(f"child exited with {process.returncode}: {tail[0][:160]}")
    payload = json.loads(line)
    marks = [start_wall, payload["t_start"], payload["t_import"], payload["t_device"], payload["t_model"],
             payload["t_step"]]
    payload["phases"] = {name: b - a for name, a, b in zip(PHASES, marks, marks[1:])}
    return elapsed, payload


def zyx_sources_digest() -> str:
    """A hash of zyx's Python sources: the program cache is keyed by the scheduler's code, so an edit between a
    cold and a warm run (others work in the same checkout) makes the warm run schedule again."""
    import hashlib
    import importlib.util
    spec = importlib.util.find_spec("zyx")
    digest = hashlib.sha256()
    for path in sorted(Path(spec.origin).parent.rglob("*.py")) if spec and spec.origin else []:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def child_environment() -> dict[str, str]:
    """This process's environment for a child, with Python's bytecode cache on: an installed library has its
    bytecode compiled (pip writes it), and PYTHONDONTWRITEBYTECODE, which some sandboxes set, would have every
    child compile zyx's sources again (0.2-0.5 s of its imports on this CPU)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def fresh_caches(root: str) -> dict[str, str]:
    """An environment whose zyx, PoCL and NVIDIA driver caches are new, empty directories under `root`."""
    env = child_environment()
    for variable, name in (("ZYX_CACHE_DIR", "zyx"), ("POCL_CACHE_DIR", "pocl"), ("CUDA_CACHE_PATH", "cuda")):
        path = Path(root) / name
        path.mkdir(parents=True, exist_ok=True)
        env[variable] = str(path)
    return env


def _record(workload: str, implementation: str, runs: list[tuple[float, dict]], note: str = "") -> Record:
    record = Record(workload, implementation, unit="s")
    times = [elapsed for elapsed, _ in runs]
    record.runs_s = times
    record.median_s = statistics.median(times)
    phases = {name: statistics.median(p["phases"][name] for _, p in runs) for name in PHASES}
    counters: dict[str, Any] = {}
    for key in ("kernels_compiled", "graphs_scheduled", "programs_loaded", "compile_seconds"):
        values = [p["stats"][key] for _, p in runs if key in p["stats"]]
        if values:
            counters[key] = max(values) if key != "compile_seconds" else statistics.median(values)
    record.extra = {**counters, "phases_s": phases, "losses": [p["loss"] for _, p in runs]}
    split = ", ".join(f"{name.replace('_', ' ')} {value:.2f}" for name, value in phases.items())
    parts = [f"median split (s): {split}"]
    if "kernels_compiled" in counters:
        parts.insert(0, f"kernels_compiled {counters['kernels_compiled']:g}, graphs_scheduled "
                        f"{counters['graphs_scheduled']:g} (most of any run), compile "
                        f"{counters['compile_seconds']:.2f} s")
    record.note = "; ".join(parts + ([note] if note else []))
    return record


def _failed(workload: str, implementation: str, error: Exception) -> Record:
    return Record(workload, implementation, unit="s", note=f"skipped: {type(error).__name__}: {error}"[:200])


def measure_zyx(optimizer: str, device, args: argparse.Namespace, sizes, batch) -> list[Record]:
    """Per repetition, in one temporary directory: cold, then warm, then a fresh zyx cache over PoCL's warm one."""
    names = [f"W5 cold ({optimizer})", f"W5 warm ({optimizer})", f"W5 cold, PoCL warm ({optimizer})"]
    if device is None:
        return [Record(name, "zyx", unit="s", note="skipped: no OpenCL device") for name in names]
    code = child_code(ZYX_CHILD, optimizer, sizes, batch, device)
    runs: list[list[tuple[float, dict]]] = [[], [], []]
    retried = 0
    try:
        attempt = 0
        while attempt < WARMUP_RUNS + args.cold_repeat:
            before = zyx_sources_digest()
            with tempfile.TemporaryDirectory(prefix="zyx-w5-") as root:
                env = fresh_caches(root)
                cold, warm = spawn(code, env), spawn(code, env)
                env["ZYX_CACHE_DIR"] = str(Path(root) / "zyx-again")
                pocl_warm = spawn(code, env)
            if zyx_sources_digest() != before and retried < MAX_RETRIES:
                retried += 1
                print(f"  W5 ({optimizer}) zyx: its sources changed during the runs; again", file=sys.stderr)
                continue
            attempt += 1
            if attempt > WARMUP_RUNS:
                for found, result in zip(runs, (cold, warm, pocl_warm)):
                    found.append(result)
            print(f"  W5 ({optimizer}) zyx: cold {cold[0]:6.2f} s, warm {warm[0]:6.2f} s, cold with PoCL's cache "
                  f"warm {pocl_warm[0]:6.2f} s", file=sys.stderr, flush=True)
    except Exception as error:
        return [_failed(name, "zyx", error) for name in names]
    retry_note = [f"{retried} repetitions redone: zyx's sources changed meanwhile"] if retried else []
    notes = ["fresh ZYX_CACHE_DIR and POCL_CACHE_DIR", "the cold run's two cache directories again",
             "a fresh ZYX_CACHE_DIR, the POCL_CACHE_DIR the cold run filled: zyx's own share of a cold start"]
    return [_record(name, "zyx", found, "; ".join([note] + retry_note))
            for name, found, note in zip(names, runs, notes)]


def measure_torch(optimizer: str, args: argparse.Namespace, sizes, batch) -> Record:
    name = f"W5 cold ({optimizer})"
    try:
        import torch  # noqa: F401  (only to say why when it is missing)
        version = torch.__version__
    except Exception as error:
        return Record(name, "torch", unit="s", note=f"skipped: torch not importable ({error})")
    code = child_code(TORCH_CHILD, optimizer, sizes, batch)
    runs = []
    try:
        for attempt in range(WARMUP_RUNS + args.cold_repeat):
            result = spawn(code, child_environment())
            if attempt >= WARMUP_RUNS:
                runs.append(result)
            print(f"  {name:<15} torch {result[0]:6.2f} s", file=sys.stderr, flush=True)
    except Exception as error:
        return _failed(name, "torch", error)
    return _record(name, "torch", runs, f"torch {version} eager, no cache to warm")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cold-optimizers", default=",".join(OPTIMIZERS),
                   help="W5 optimizers to start with (default SGD,Adam)")
    p.add_argument("--cold-repeat", type=int, default=COLD_REPEAT,
                   help=f"W5 timed process starts per row; the median is reported (default {COLD_REPEAT})")


def run(args: argparse.Namespace, device, cl_device) -> list[Record]:
    sizes = tuple(int(s) for s in getattr(args, "train_sizes", "784,512,512,10").split(","))
    batch = getattr(args, "train_batch", 512)
    records: list[Record] = []
    for optimizer in [o.strip() for o in args.cold_optimizers.split(",") if o.strip()]:
        zyx_rows = measure_zyx(optimizer, device, args, sizes, batch) if wants(args, "zyx") else []
        torch_row = [measure_torch(optimizer, args, sizes, batch)] if wants(args, "torch") else []
        records += torch_row + zyx_rows
        if torch_row and torch_row[0].median_s:
            for r in zyx_rows:
                if r.median_s:
                    r.note = f"{r.median_s / torch_row[0].median_s:.2f} × torch's start; {r.note}"
    return records


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    add_arguments(p)
    p.add_argument("--train-batch", type=int, default=512, help="batch size (default 512)")
    p.add_argument("--train-sizes", default="784,512,512,10", help="layer widths, input first")
    args = p.parse_args()
    check_args(args)
    device, cl_device, why = pick_device(args.device)
    if device is not None:
        print(device.header(), file=sys.stderr)
    finish(args, run(args, device, cl_device), device, why)


if __name__ == "__main__":
    main()
