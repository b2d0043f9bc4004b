"""W4: one training step of an MLP 784-512-512-10 (ReLU, softmax cross-entropy, batch 512) with SGD and Adam;
W6: the peak device memory of that step against its theoretical minimum.

    python bench/train_step.py [--train-steps 20] [--warmup 3] [--device N] [--json OUT]
                               [--only numpy,torch,torch-1t,tinygrad,zyx,zyx-nojit,zyx-wgpu]
    python bench/train_step.py --profile-kernels      # each kernel of zyx's step timed alone

W4 reports milliseconds per step (median of at least 20 timed steps after the warm-up; each step ends by reading
its loss, which waits for the device; all implementations are set up first, then timed in turn, 5 steps each
per round after a pause and an untimed step, so that load from other processes on this shared machine falls on
all of them alike; see _harness.measure_interleaved) and GFLOP/s counting the matrix products only (forward,
weight gradients, input gradients of layers 2 and 3). Every implementation starts from the same weights and its
warm-up losses are checked against a numpy reference of the same steps.
    numpy     hand-written forward/backward/update in float32 (OpenBLAS), the reference
    torch     eager: zero_grad, forward, cross_entropy, backward, optimizer.step, loss.item(); the baseline
    torch-cuda  the same on torch's CUDA device (skipped without one); its note counts the CUDA kernels one step
              launches (torch.profiler), beside zyx's launches per step
    torch-1t  the same with one intra-op thread, timed after the others (not in turn with them: switching
              torch's thread count slows the steps that follow): on this shared 2-core machine other processes'
              load slows torch's two OpenMP threads more than anything else (each parallel region waits for the
              slower thread)
    tinygrad  TinyJit on its CL backend (the same OpenCL device), skipped with a note when it cannot run
    zyx       @zyx.jit step with zyx.nn.Linear, zyx.nn.cross_entropy and zyx.nn.SGD / zyx.nn.Adam
    zyx-nojit the same step without @zyx.jit (traced and scheduled every step; schedule cache hits)
    zyx-wgpu  the jitted step on zyx.WGPU() (the adapter wgpu prefers: a GPU through Vulkan, else lavapipe)
Adam uses lr 1e-3 (betas 0.9, 0.999, eps 1e-8), SGD lr 0.01 without momentum. The target: zyx's time per step
≤ 0.8 × torch eager's.

W6 measures zyx.memory_stats(dev)["peak_bytes"] over one replayed step after zyx.reset_peak_memory(dev); with
torch on CUDA it would be torch.cuda.max_memory_allocated (skipped without CUDA). See `minimum_bytes`.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _harness import (Case, Record, Skip, Workload, check_args, finish, parser, pick_device,  # noqa: E402
                      run_workload, set_ratios, wants)
from _impls import _version, tinygrad_cl_device  # noqa: E402

SIZES = (784, 512, 512, 10)
BATCH = 512
MIN_STEPS = 20
MIN_WARMUP = 3   # TinyJit runs the step plainly once and captures it on the second call
OPTIMIZERS = {"SGD": {"lr": 0.01}, "Adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}}


# ---- the data and the numpy reference ---------------------------------------------------------------------
def inputs(batch: int = BATCH, sizes: tuple[int, ...] = SIZES, seed: int = 4) -> dict[str, np.ndarray]:
    """The batch and PyTorch-style initial weights (U(±1/sqrt(fan_in))) shared by every implementation."""
    rng = np.random.default_rng(seed)
    data = {"x": rng.standard_normal((batch, sizes[0]), dtype=np.float32),
            "y": rng.integers(0, sizes[-1], batch).astype(np.int32)}
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        bound = 1 / math.sqrt(fan_in)
        data[f"w{i}"] = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32)
        data[f"b{i}"] = rng.uniform(-bound, bound, fan_out).astype(np.float32)
    return data


def layer_count(data: dict[str, np.ndarray]) -> int:
    return sum(1 for k in data if k.startswith("w"))


def step_flops(batch: int, sizes: tuple[int, ...]) -> float:
    """Matrix-product FLOPs of one step: forward, weight gradients, and input gradients past the first layer."""
    products = [a * b for a, b in zip(sizes, sizes[1:])]
    return 2.0 * batch * (2 * sum(products) + sum(products[1:]))


class NumpyMLP:
    """The step written out by hand: the reference every implementation is checked against, and a timed row."""

    def __init__(self, data: dict[str, np.ndarray], optimizer: str):
        self.x, self.y = data["x"], data["y"].astype(np.int64)
        n = layer_count(data)
        self.params = [data[f"{kind}{i}"].copy() for i in range(n) for kind in ("w", "b")]
        self.optimizer, self.options = optimizer, OPTIMIZERS[optimizer]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def step(self) -> float:
        weights, biases = self.params[0::2], self.params[1::2]
        activations = [self.x]
        for i, (w, b) in enumerate(zip(weights, biases)):
            z = activations[-1] @ w.T + b
            activations.append(np.maximum(z, 0) if i < len(weights) - 1 else z)
        logits = activations.pop()
        shifted = logits - logits.max(1, keepdims=True)
        log_sum = np.log(np.exp(shifted).sum(1, keepdims=True))
        rows = np.arange(len(self.y))
        loss = float(-(shifted - log_sum)[rows, self.y].mean())
        dz = np.exp(shifted - log_sum)
        dz[rows, self.y] -= 1
        dz /= len(self.y)
        grads: list[np.ndarray] = [None] * len(self.params)  # type: ignore[list-item]
        for i in reversed(range(len(weights))):
            grads[2 * i], grads[2 * i + 1] = dz.T @ activations[i], dz.sum(0)
            if i:
                dz = (dz @ weights[i]) * (activations[i] > 0)
        self._update(grads)
        return loss

    def _update(self, grads: list[np.ndarray]) -> None:
        lr = self.options["lr"]
        if self.optimizer == "SGD":
            for p, g in zip(self.params, grads):
                p -= lr * g
            return
        beta1, beta2 = self.options["betas"]
        self.t += 1
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * g * g
            p -= lr / (1 - beta1 ** self.t) * m / (np.sqrt(v / (1 - beta2 ** self.t)) + self.options["eps"])


def reference_losses(data: dict[str, np.ndarray], optimizer: str, steps: int) -> np.ndarray:
    model = NumpyMLP(data, optimizer)
    return np.array([model.step() for _ in range(steps)])


# ---- one case per implementation: `run` is one step ending in the loss read, `result` the warm-up losses ----
def _case(step: Callable[[], float], note: str = "") -> Case:
    losses: list[float] = []
    warmup: list[np.ndarray] = []

    def run() -> None:
        losses.append(step())

    def result() -> np.ndarray:  # called once, right after the warm-up
        warmup[:] = [np.array(losses)]
        return warmup[0]
    return Case(run=run, result=result, note=note)


def numpy_case(optimizer: str):
    def make(workload: Workload) -> Case:
        return _case(NumpyMLP(workload.inputs, optimizer).step)
    return make


def torch_model(data: dict[str, np.ndarray], device: str = "cpu") -> tuple[Any, list]:
    import torch
    layers = []
    for i in range(layer_count(data)):
        w = data[f"w{i}"]
        linear = torch.nn.Linear(w.shape[1], w.shape[0], device=device)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w))
            linear.bias.copy_(torch.from_numpy(data[f"b{i}"]))
        layers += [linear, torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    return model, list(model.parameters())


def torch_optimizer(torch: Any, params: list, optimizer: str) -> Any:
    options = OPTIMIZERS[optimizer]
    return torch.optim.SGD(params, lr=options["lr"]) if optimizer == "SGD" else torch.optim.Adam(params, **options)


def torch_case(optimizer: str, device: str = "cpu"):
    def make(workload: Workload) -> Case:
        try:
            import torch
        except Exception as error:
            raise Skip(f"torch not importable ({error})")
        if device == "cuda" and not torch.cuda.is_available():
            raise Skip("torch has no CUDA device here")
        model, params = torch_model(workload.inputs, device)
        opt = torch_optimizer(torch, params, optimizer)
        x = torch.from_numpy(workload.inputs["x"]).to(device)
        y = torch.from_numpy(workload.inputs["y"].astype(np.int64)).to(device)

        step = torch_step(torch, model, opt, x, y)
        if device == "cuda":
            return _case(step, f"torch {torch.__version__} on {torch.cuda.get_device_name()}, "
                               f"{cuda_kernels_per_step(torch, step)} CUDA kernels per step")
        threads = torch.get_num_threads()
        return _case(step, f"torch {torch.__version__}, {threads} thread{'s' * (threads != 1)}")
    return make


def cuda_kernels_per_step(torch: Any, step: Callable[[], float]) -> int:
    """How many CUDA kernels one step launches, by torch.profiler (after two unprofiled steps: the optimizer's
    state is made at the first). The steps change the model like any other step would."""
    for _ in range(2):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
        step()
        torch.cuda.synchronize()
    return sum(1 for event in profiler.events() if event.device_type == torch.autograd.DeviceType.CUDA)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch with `count` intra-op threads for a while (process-wide: never interleaved with the default)."""
    import torch
    default = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(default)


def torch_step(torch: Any, model: Any, opt: Any, x: Any, y: Any, read: bool = True) -> Callable[[], Any]:
    """One eager PyTorch training step, returning the loss: read as a float (which synchronises), or with
    `read=False` the loss tensor (the step's kernels may still be running)."""
    def step() -> Any:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item() if read else loss
    return step


def tinygrad_case(optimizer: str, device):
    def make(workload: Workload) -> Case:
        if device is None:
            raise Skip("no OpenCL device")
        tinygrad_cl_device(device)  # raises Skip unless tinygrad runs on the benchmarked device
        from tinygrad import Tensor, TinyJit, nn
        from tinygrad.helpers import Context
        data = workload.inputs
        layers = []
        for i in range(layer_count(data)):
            w = data[f"w{i}"]
            linear = nn.Linear(w.shape[1], w.shape[0])
            linear.weight = Tensor(w, device="CL").contiguous().realize()
            linear.bias = Tensor(data[f"b{i}"], device="CL").contiguous().realize()
            layers.append(linear)
        params = [t for layer in layers for t in (layer.weight, layer.bias)]
        options = OPTIMIZERS[optimizer]
        opt = (nn.optim.SGD(params, lr=options["lr"]) if optimizer == "SGD" else
               nn.optim.Adam(params, lr=options["lr"], b1=options["betas"][0], b2=options["betas"][1],
                             eps=options["eps"]))
        x = Tensor(data["x"], device="CL").realize()
        y = Tensor(data["y"], device="CL").realize()

        @TinyJit
        def jitted(x: Any, y: Any) -> Any:
            with Context(TRAINING=1):
                opt.zero_grad()
                h = x
                for i, layer in enumerate(layers):
                    h = layer(h)
                    if i < len(layers) - 1:
                        h = h.relu()
                loss = h.sparse_categorical_crossentropy(y)
                loss.backward()
                return loss.realize(*opt.schedule_step())  # with the update: the loss of the weights before it
        return _case(lambda: float(jitted(x, y).item()), f"tinygrad {_version('tinygrad')}, TinyJit")
    return make


def zyx_model(dev: Any, data: dict[str, np.ndarray]) -> tuple[list, list]:
    """zyx.nn.Linear layers holding the shared initial weights."""
    import zyx
    layers = []
    for i in range(layer_count(data)):
        w = data[f"w{i}"]
        linear = zyx.nn.Linear(w.shape[1], w.shape[0], device=dev)
        linear.weight, linear.bias = dev.tensor(w), dev.tensor(data[f"b{i}"])
        layers.append(linear)
    return layers, [t for layer in layers for t in (layer.weight, layer.bias)]


def zyx_step(dev: Any, data: dict[str, np.ndarray], optimizer: str, jit: bool = True) -> tuple[Callable, Any, Any]:
    """(step(x, y) -> loss tensor, x, y); with `jit` the step is a @zyx.jit function."""
    import zyx
    layers, params = zyx_model(dev, data)
    options = OPTIMIZERS[optimizer]
    opt = zyx.nn.SGD(lr=options["lr"]) if optimizer == "SGD" else zyx.nn.Adam(**options)

    def step(x: Any, y: Any) -> Any:
        h = x
        for i, layer in enumerate(layers):
            h = layer(h)
            if i < len(layers) - 1:
                h = h.relu()
        loss = zyx.nn.cross_entropy(h, y)
        opt.update(params, loss.backward(params), realize_with=[loss])
        return loss
    return (zyx.jit(step) if jit else step), dev.tensor(data["x"]), dev.tensor(data["y"])


def zyx_device(device) -> Any:
    import zyx
    return zyx.OpenCL(platform=device.platform_index, device=device.device_index)


def wgpu_device() -> Any:
    """zyx.WGPU() on the adapter wgpu prefers (a GPU through Vulkan/Metal/DirectX, else lavapipe)."""
    import zyx
    try:
        return zyx.WGPU()
    except (ImportError, RuntimeError) as error:
        raise Skip(f"no WebGPU adapter: {error}") from error


def zyx_case(optimizer: str, device, jit: bool = True, wgpu: bool = False):
    def make(workload: Workload) -> Case:
        if device is None and not wgpu:
            raise Skip("no OpenCL device")
        dev = wgpu_device() if wgpu else zyx_device(device)
        step, x, y = zyx_step(dev, workload.inputs, optimizer, jit)
        case = _case(lambda: step(x, y).item(), "" if jit else "no @zyx.jit: traced and scheduled each step")
        if jit:
            run = case.run

            def run_and_count() -> None:  # the note (read after the warm-up) gives the program's kernel count
                run()
                captured = step.captured[0] if step.captured else None
                case.note = (f"{captured['kernels']} kernels in {captured['launches']} launches per step"
                             if captured else "")
            case.run = run_and_count
        return case
    return make


def profile_zyx(data: dict[str, np.ndarray], optimizer: str, device, steps: int = 5) -> str:
    """Each kernel of the jitted step timed alone (the queue is drained before and after every launch): wall time,
    and CPU time of the process (every PoCL thread; on a loaded machine the wall time says little).

    The sum exceeds a step's time a little (no overlap, a wait per launch), but it shows which kernels dominate.
    """
    import statistics
    dev = zyx_device(device)
    step, x, y = zyx_step(dev, data, optimizer)
    for _ in range(3):
        step(x, y).item()
    runtime = dev.runtime
    launcher = runtime.launcher
    times: dict[int, list[float]] = {}
    cpu_times: dict[int, list[float]] = {}
    names: dict[int, str] = {}
    position = [0]

    def timed_launcher(timed: bool) -> Callable:
        launch = launcher(timed)

        def timed_launch(kernel: Any, global_size: Any, local_size: Any, args: Any) -> None:
            runtime.synchronize()
            start, cpu_start = time.perf_counter(), time.process_time()
            launch(kernel, global_size, local_size, args)
            runtime.synchronize()
            times.setdefault(position[0], []).append(time.perf_counter() - start)
            cpu_times.setdefault(position[0], []).append(time.process_time() - cpu_start)
            names[position[0]] = f"{kernel.function_name} global={tuple(global_size)} local={local_size}"
            position[0] += 1
        return timed_launch
    runtime.launcher = timed_launcher
    try:
        for _ in range(steps):
            position[0] = 0
            step(x, y).item()
    finally:
        del runtime.launcher
    rows = [(statistics.median(t), statistics.median(cpu_times[k]), k) for k, t in times.items()]
    total, cpu_total = sum(t for t, _, _ in rows), sum(c for _, c, _ in rows)
    lines = [f"W4 {optimizer}, zyx: {len(rows)} launches per step, {total * 1e3:.2f} ms in kernels timed alone, "
             f"{cpu_total * 1e3:.2f} ms of CPU (medians of {steps} steps)"]
    lines += [f"  {k:3d} {t * 1e3:9.2f} ms {c * 1e3:9.2f} ms of CPU {c / cpu_total:6.1%}  {names[k]}"
              for t, c, k in rows]
    return "\n".join(lines)


# ---- W6: memory -------------------------------------------------------------------------------------------
def minimum_bytes(data: dict[str, np.ndarray], optimizer: str) -> dict[str, int]:
    """What one step must hold at its peak, by the task's accounting, in bytes:

    - params: every weight and bias (float32);
    - grads: one gradient per parameter (all of them alive together before the update);
    - state: Adam's exp_avg and exp_avg_sq per parameter (SGD without momentum has none);
    - batch: x (float32) and the int32 class targets;
    - activations: what the backward pass reads of the forward pass: the output of every hidden ReLU (it is
      the next layer's input, needed for that layer's weight gradient, and its sign is the ReLU's mask, so the
      pre-activations need not be kept) and the logits (for softmax minus one-hot). x is counted in batch.

    Scalars (Adam's step counts, the learning rate) and the loss are left out. The figure is the usual
    "parameters + gradients + optimizer state + batch + saved activations"; a schedule can go lower (a
    gradient folded into its parameter's update need never be stored as a whole) or briefly higher (the
    gradients of activations, e.g. dL/dz1 while dL/dz2 and h1 are alive, are not counted).
    """
    n = layer_count(data)
    params = sum(data[f"{k}{i}"].nbytes for i in range(n) for k in ("w", "b"))
    batch_rows = data["x"].shape[0]
    hidden = [data[f"w{i}"].shape[0] for i in range(n)]
    return {
        "params": params,
        "grads": params,
        "state": 2 * params if optimizer == "Adam" else 0,
        "batch": data["x"].nbytes + data["y"].nbytes,
        "activations": 4 * batch_rows * sum(hidden),  # hidden ReLU outputs and the logits
    }


def _describe_minimum(parts: dict[str, int]) -> str:
    return " + ".join(f"{name} {value / 2**20:.2f}" for name, value in parts.items() if value) + " MiB"


def zyx_memory(data: dict[str, np.ndarray], optimizer: str, device) -> Record:
    record = Record(f"W6 {optimizer}", "zyx", unit="MiB peak")
    try:
        if device is None:
            raise Skip("no OpenCL device")
        import zyx
        dev = zyx_device(device)
        step, x, y = zyx_step(dev, data, optimizer)
        for _ in range(2):  # capture, then one replay
            step(x, y).item()
        gc.collect()
        before = zyx.memory_stats(dev)["current_bytes"]
        zyx.reset_peak_memory(dev)
        loss = step(x, y)
        loss.item()
        peak = zyx.memory_stats(dev)["peak_bytes"]
        del loss
        minimum = sum(minimum_bytes(data, optimizer).values())
        record.throughput = peak / 2**20
        record.ratio = peak / minimum
        planned = step.captured[0]["planned_peak_bytes"]
        record.note = (f"peak {peak / 2**20:.2f} MiB = {peak / minimum:.2f} × minimum {minimum / 2**20:.2f} MiB "
                       f"({_describe_minimum(minimum_bytes(data, optimizer))}); held before the step "
                       f"{before / 2**20:.2f} MiB; program's planned peak {planned / 2**20:.2f} MiB; "
                       "ratio column = peak ÷ minimum")
        record.extra = {"peak_bytes": peak, "minimum_bytes": minimum, "held_before_bytes": before,
                        "planned_peak_bytes": planned, **{f"minimum_{k}": v for k, v in
                                                          minimum_bytes(data, optimizer).items()}}
    except Skip as why:
        record.note = f"skipped: {why}"
    except Exception as error:
        record.note = f"skipped: {type(error).__name__}: {error}"[:200]
    return record


def torch_cuda_memory(data: dict[str, np.ndarray], optimizer: str) -> Record:
    record = Record(f"W6 {optimizer}", "torch", unit="MiB peak")
    try:
        import torch
    except Exception as error:
        record.note = f"skipped: torch not importable ({error})"
        return record
    if not torch.cuda.is_available():
        record.note = "skipped: torch has no CUDA device here (torch.cuda.max_memory_allocated needs one)"
        return record
    model, params = torch_model(data, "cuda")
    opt = torch_optimizer(torch, params, optimizer)
    x = torch.from_numpy(data["x"]).cuda()
    y = torch.from_numpy(data["y"].astype(np.int64)).cuda()

    step = torch_step(torch, model, opt, x, y)
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    peak = torch.cuda.max_memory_allocated()
    minimum = sum(minimum_bytes(data, optimizer).values())
    record.throughput, record.ratio = peak / 2**20, peak / minimum
    record.note = f"torch.cuda.max_memory_allocated on {torch.cuda.get_device_name()}; ratio column = peak ÷ minimum"
    record.extra = {"peak_bytes": peak, "minimum_bytes": minimum}
    return record


# ---- running ----------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-batch", type=int, default=BATCH, help=f"W4-W6 batch size (default {BATCH})")
    p.add_argument("--train-sizes", default=",".join(map(str, SIZES)),
                   help="W4-W6 layer widths, input first (default 784,512,512,10)")
    p.add_argument("--train-steps", type=int, default=None,
                   help=f"W4 timed steps (default: --repeat, at least {MIN_STEPS})")


def workloads(args: argparse.Namespace) -> list[Workload]:
    sizes = tuple(int(s) for s in args.train_sizes.split(","))
    data = inputs(args.train_batch, sizes)
    shape = "-".join(map(str, sizes))
    return [Workload(f"W4 {name}", f"MLP {shape} batch {args.train_batch}, {name}", data,
                     lambda **_: None, "GFLOP/s", step_flops(args.train_batch, sizes), rtol=1e-3, atol=1e-4)
            for name in OPTIMIZERS]


def cases(optimizer: str, device) -> dict:
    return {
        "numpy": numpy_case(optimizer),
        "torch": torch_case(optimizer),
        "torch-cuda": torch_case(optimizer, "cuda"),
        "tinygrad": tinygrad_case(optimizer, device),
        "zyx": zyx_case(optimizer, device),
        "zyx-nojit": zyx_case(optimizer, device, jit=False),
        "zyx-wgpu": zyx_case(optimizer, device, wgpu=True),
    }


def run(args: argparse.Namespace, device, cl_device) -> list[Record]:
    step_args = copy.copy(args)
    step_args.warmup = max(args.warmup, MIN_WARMUP)
    step_args.repeat = args.train_steps if args.train_steps is not None else max(args.repeat, MIN_STEPS)
    found: dict[str, list[Record]] = {}
    chosen = workloads(args)
    for workload in chosen:
        optimizer = workload.name.split()[-1]
        losses = reference_losses(workload.inputs, optimizer, step_args.warmup)
        workload.reference = lambda losses=losses, **_: losses
        found[workload.name] = run_workload(workload, cases(optimizer, device), step_args, interleave=True)
    if wants(args, "torch-1t"):  # last: switching torch's thread count slows the steps that follow it
        with contextlib.suppress(ImportError), torch_threads(1):
            for workload in chosen:
                one = {"torch-1t": torch_case(workload.name.split()[-1])}
                found[workload.name] += run_workload(workload, one, step_args)
    records: list[Record] = []
    for rows in found.values():
        set_ratios(rows)
        torch_row = next((r for r in rows if r.implementation == "torch" and r.median_s), None)
        for r in rows:
            if torch_row is not None and r is not torch_row and r.median_s is not None:
                share = f"{r.median_s / torch_row.median_s:.2f} × torch eager's time"
                r.note = f"{share}; {r.note}" if r.note else share
        records += rows
    data = chosen[0].inputs
    for optimizer in OPTIMIZERS:
        if wants(args, "zyx"):
            records.append(zyx_memory(data, optimizer, device))
        if wants(args, "torch"):
            records.append(torch_cuda_memory(data, optimizer))
    return records


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    add_arguments(p)
    p.add_argument("--profile-kernels", action="store_true",
                   help="instead of the table: time each kernel of zyx's jitted step alone, for SGD and Adam")
    args = p.parse_args()
    check_args(args)
    device, cl_device, why = pick_device(args.device)
    if device is not None:
        print(device.header(), file=sys.stderr)
    if args.profile_kernels:
        data = workloads(args)[0].inputs
        for optimizer in OPTIMIZERS:
            print(profile_zyx(data, optimizer, device))
        return
    finish(args, run(args, device, cl_device), device, why)


if __name__ == "__main__":
    main()
