"""Handwritten digits: an MLP on scikit-learn's bundled 8x8 digits, trained by a @zyx.jit step on OpenCL.

    python examples/digits.py                   # 40 epochs: about 98.5% test accuracy
    python examples/digits.py --short           # a few steps (what tests/test_examples.py runs)
    python examples/digits.py --device cpu      # the numpy reference backend (no JIT, nothing compiled)
    python examples/digits.py --device wgpu     # WebGPU (Vulkan, Metal, DirectX 12) instead of OpenCL
    python examples/digits.py --autocast bfloat16   # mixed precision: products in bfloat16 (tensor cores on NVIDIA)
    python examples/digits.py --autocast float16    # products in float16, the loss scaled (zyx.nn.GradScaler)
    mpirun -n 2 python examples/digits.py --distributed   # data parallel: each rank takes its share of each batch

The training step is traced once and then replayed; its kernels and the program persist in the disk cache
(ZYX_CACHE_DIR, else ~/.cache/zyx), so a second run of this script compiles no kernel: the last line prints
`kernels_compiled` and `graphs_scheduled` for the whole process (for each rank, with --distributed).

With --distributed the global batch (--batch-size) is split between the ranks, and the gradients are averaged
inside the jitted step, so the run computes what one process computes, up to the order of float additions.
"""
from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import zyx  # noqa: E402
import zyx.devices  # noqa: E402
import zyx.distributed as dist  # noqa: E402
from _progress import ProgressBar  # noqa: E402

nn = zyx.nn
DEFAULT_CHECKPOINT = pathlib.Path(__file__).resolve().parent / "out" / "digits.safetensors"


def load_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): 1797 images of 8x8 pixels scaled to [0, 1], a stratified 20% held out."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32).reshape(len(digits.images), 64)
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=0.2, random_state=seed,
                                                        stratify=labels)
    return x_train, y_train, x_test, y_test


def build_model(device: zyx.Device, hidden: int = 256) -> nn.Module:
    return nn.Sequential(nn.Linear(64, hidden, device=device), nn.ReLU(),
                         nn.Linear(hidden, hidden, device=device), nn.ReLU(),
                         nn.Linear(hidden, 10, device=device))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("opencl", "wgpu", "cpu"), default="opencl")
    parser.add_argument("--checkpoint", type=pathlib.Path, default=DEFAULT_CHECKPOINT,
                        help="where to save the trained weights (safetensors)")
    parser.add_argument("--short", action="store_true", help="3 epochs of 8 steps: a smoke test")
    parser.add_argument("--autocast", choices=("bfloat16", "float16"),
                        help="mixed precision: products in this dtype, weights and reductions in float32")
    parser.add_argument("--distributed", action="store_true",
                        help="data parallel over the ranks of an MPI job (mpirun -n 2 python digits.py --distributed)")
    return parser.parse_args(argv)


def choose_device(args: argparse.Namespace) -> zyx.Device:
    """--device's kind; with --distributed, this rank's own device of that kind (its GPU) where there is one."""
    if args.distributed:
        dist.init()
        if dist.device().kind == args.device:
            return dist.device()
    return {"opencl": zyx.OpenCL, "wgpu": zyx.WGPU, "cpu": zyx.CPU}[args.device]()


def main(argv: list[str] | None = None) -> float:
    started = time.perf_counter()
    args = parse_args(argv)
    epochs, steps_per_epoch = (3, 8) if args.short else (args.epochs, None)
    dev = choose_device(args)
    rank, ranks = (dist.rank(), dist.world_size()) if args.distributed else (0, 1)
    if args.batch_size % ranks:
        raise SystemExit(f"--batch-size {args.batch_size} does not split evenly between {ranks} ranks")
    shard = args.batch_size // ranks  # this rank's samples of each batch
    say = print if rank == 0 else (lambda *_, **__: None)
    say(f"device: {dev}" + (f" (rank 0 of {ranks}; each rank {shard} samples of every batch)" if ranks > 1 else ""))
    zyx.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)  # the same order on every rank: each takes its own slice of a batch

    x_train, y_train, x_test, y_test = load_data(args.seed)
    model = build_model(dev, args.hidden)
    params = model.parameters()
    if args.distributed:
        dist.broadcast_parameters(params)  # already equal here (same seed); a real run starts from rank 0's
    opt = nn.Adam(lr=args.lr)
    schedule = nn.CosineAnnealingLR(opt, T_max=epochs)  # the rate lives in a buffer: replays see each change

    def precision() -> contextlib.AbstractContextManager:
        return zyx.autocast(args.autocast) if args.autocast else contextlib.nullcontext()

    scaler = nn.GradScaler(enabled=args.autocast == "float16")  # float16 gradients underflow unscaled

    @zyx.jit
    def train_step(x: zyx.Tensor, y: zyx.Tensor) -> zyx.Tensor:
        with precision():
            loss = nn.cross_entropy(model(x), y, label_smoothing=args.label_smoothing)
        grads = scaler.scale(loss).backward(params)
        if args.distributed:
            grads = dist.average_gradients(grads)  # one all-reduce, a step of the captured program
        scaler.update_step(opt, params, grads)  # in place (assign): the replayed program updates them
        return loss

    @zyx.jit
    def predict(x: zyx.Tensor) -> zyx.Tensor:
        with precision():
            return model(x).argmax(-1)

    x_test_dev = dev.tensor(x_test)
    batches = len(x_train) // args.batch_size  # whole batches only: one shape, one captured program
    if steps_per_epoch:
        batches = min(batches, steps_per_epoch)
    train_seconds, timed_steps, first_step_seconds = 0.0, 0, 0.0
    accuracy = 0.0
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x_train))
        bar = ProgressBar(batches, desc=f"epoch {epoch:2d}/{epochs}", unit="samples", unit_scale=args.batch_size,
                          skip_first=epoch == 1, quiet=rank > 0)
        losses = []
        tick = time.perf_counter()
        for b in range(batches):
            index = order[b * args.batch_size + rank * shard:b * args.batch_size + (rank + 1) * shard]
            loss = train_step(dev.tensor(x_train[index]), dev.tensor(y_train[index]))
            losses.append(loss)
            if epoch == 1 and b == 0:  # the first call traces the step and compiles (or loads) its kernels
                loss.item()
                first_step_seconds = time.perf_counter() - tick
                tick = time.perf_counter()
            bar.update(loss=loss)
        mean_loss = float(np.mean([loss.item() for loss in losses]))  # waits for the queued steps
        train_seconds += time.perf_counter() - tick
        if args.distributed:  # each rank's loss is over its own shard
            mean_loss = dist.all_reduce(zyx.tensor([mean_loss], device=dev), "mean").item()
        timed_steps += batches - (1 if epoch == 1 else 0)
        bar.postfix["loss"] = mean_loss
        bar.close()
        accuracy = float((predict(x_test_dev).numpy() == y_test).mean())
        say(f"epoch {epoch}/{epochs}  loss {mean_loss:.4f}  test accuracy {100 * accuracy:.2f}%  "
            f"lr {opt.lr:.2e}", flush=True)
        schedule.step()

    correct = int(round(accuracy * len(y_test)))
    say(f"test accuracy {100 * accuracy:.2f}% ({correct}/{len(y_test)})")
    steps_per_second = timed_steps / max(train_seconds, 1e-9)
    say(f"throughput: {steps_per_second:.1f} steps/s, {steps_per_second * args.batch_size:.0f} samples/s "
        f"(batch {args.batch_size}; the first step, which traces the program and compiles or loads its "
        f"kernels, took {first_step_seconds:.2f} s)")
    if rank == 0:
        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        zyx.save(model.state_dict(), args.checkpoint)
    say(f"checkpoint: {args.checkpoint}")
    stats = zyx.stats()
    say(f"wall time {time.perf_counter() - started:.2f} s")
    print(f"{f'rank {rank}: ' if ranks > 1 else ''}kernels_compiled {stats['kernels_compiled']} graphs_scheduled "
          f"{stats['graphs_scheduled']} (programs_loaded {stats['programs_loaded']}, cache_disk_hits "
          f"{stats['cache_disk_hits']})", flush=True)
    return accuracy


if __name__ == "__main__":
    main()
