"""A tiny character-level GPT trained on text that ships with Python: the Zen of Python and stdlib docstrings.

    python examples/char_gpt.py                   # 3000 steps, a sample every 500, the loss curve as a PNG
    python examples/char_gpt.py --short           # 30 steps (what tests/test_examples.py runs)
    python examples/char_gpt.py --steps 10000 --temperature 0 --plot loss.png   # longer, greedy
    python examples/char_gpt.py --autocast bfloat16   # mixed precision (tensor cores on NVIDIA GPUs)

Token and position embeddings, causal TransformerBlocks, a final LayerNorm and a linear head; the training
step is one @zyx.jit program replayed every step, and generation replays a second one (the forward pass on a
fixed-length window) once per character.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import zyx  # noqa: E402
from _progress import ProgressBar  # noqa: E402

nn = zyx.nn
DEFAULT_PLOT = pathlib.Path(__file__).resolve().parent / "out" / "char_gpt_loss.png"
MODULES = ("collections", "itertools", "functools", "textwrap", "json", "string", "re", "random", "pathlib",
           "argparse", "dataclasses", "statistics", "heapq", "bisect", "contextlib", "datetime", "shutil", "os")


def corpus() -> str:
    """The Zen of Python, then the docstrings of some stdlib modules and of their public functions and classes."""
    with contextlib.redirect_stdout(io.StringIO()):  # `import this` prints the Zen
        this = importlib.import_module("this")
    zen = "".join(this.d.get(c, c) for c in this.s)  # the module keeps it in rot13
    seen, docs = set(), [zen]
    for name in MODULES:
        module = importlib.import_module(name)
        objects = [module] + [obj for key, obj in sorted(vars(module).items()) if not key.startswith("_") and
                              (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj))]
        for obj in objects:
            doc = inspect.getdoc(obj)
            if doc and doc not in seen:
                seen.add(doc)
                docs.append(doc)
    text = "\n\n".join(docs).replace("\t", "    ")
    return "".join(c for c in text if c == "\n" or " " <= c <= "~")  # printable ASCII only


def sinusoids(length: int, dim: int) -> np.ndarray:
    """(length, dim) float32: sin and cos of each position at geometrically spaced frequencies."""
    position = np.arange(length)[:, None]
    frequency = np.exp(-np.log(10000.0) * np.arange(0, dim, 2) / dim)
    table = np.zeros((length, dim), dtype=np.float32)
    table[:, 0::2], table[:, 1::2] = np.sin(position * frequency), np.cos(position * frequency)
    return table


class CharGPT(nn.Module):
    def __init__(self, vocab: int, context: int, dim: int, heads: int, layers: int, device: zyx.Device):
        self.token = nn.Embedding(vocab, dim, device=device)
        self.position = nn.Embedding(context, dim, device=device)
        # start the (trainable) positions as sinusoids: nearby positions look alike from the first step, so
        # attending to the last few characters is easy to learn; random rows would have to learn that first
        self.position.weight = zyx.tensor(sinusoids(context, dim), device=device)
        self.blocks = [nn.TransformerBlock(dim, heads, causal=True, device=device) for _ in range(layers)]
        self.norm = nn.LayerNorm(dim, device=device)
        self.head = nn.Linear(dim, vocab, device=device)

    def forward(self, ids: zyx.Tensor) -> zyx.Tensor:
        """(N, T) character ids -> (N, T, vocab) logits for the character after each position."""
        x = self.token(ids) + self.position(zyx.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--context", type=int, default=128, help="characters per training window")
    parser.add_argument("--batch", type=int, default=8,
                        help="windows per step (8 trains 1.3x the characters/s of 1 on a 2-core CPU with PoCL)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--sample-every", type=int, default=500)
    parser.add_argument("--sample-length", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy decoding")
    parser.add_argument("--prompt", default="Return the ")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("opencl", "cpu"), default="opencl")
    parser.add_argument("--plot", type=pathlib.Path, default=DEFAULT_PLOT, help="where to write the loss curve")
    parser.add_argument("--short", action="store_true", help="30 steps and short samples: a smoke test")
    parser.add_argument("--autocast", choices=("bfloat16", "float16"),
                        help="mixed precision: products in this dtype, weights and reductions in float32")
    args = parser.parse_args(argv)
    if args.short:
        args.steps, args.sample_every, args.sample_length = 30, 15, 40
    return args


def main(argv: list[str] | None = None) -> dict:
    started = time.perf_counter()
    args = parse_args(argv)
    dev = zyx.OpenCL() if args.device == "opencl" else zyx.CPU()
    zyx.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    text = corpus()
    chars = sorted(set(text))
    index_of = {c: i for i, c in enumerate(chars)}
    ids = np.array([index_of[c] for c in text], dtype=np.int32)
    split = int(0.9 * len(ids))
    train_ids, val_ids = ids[:split], ids[split:]
    print(f"device: {dev}\ntext: {len(text)} characters ({len(chars)} distinct), "
          f"{len(train_ids)} to train on, {len(val_ids)} held out")

    T = args.context
    model = CharGPT(len(chars), T, args.dim, args.heads, args.layers, dev)
    params = model.parameters()
    print(f"model: {sum(p.numel() for p in params)} parameters, {args.layers} blocks of width {args.dim}, "
          f"context {T}")
    opt = nn.AdamW(lr=args.lr, weight_decay=0.01)
    schedule = nn.CosineAnnealingLR(opt, T_max=args.steps, eta_min=args.lr / 10)

    scaler = nn.GradScaler(enabled=args.autocast == "float16")  # float16 gradients underflow unscaled

    def loss_of(x: zyx.Tensor, y: zyx.Tensor) -> zyx.Tensor:
        with zyx.autocast(args.autocast or zyx.bfloat16, enabled=args.autocast is not None):
            logits = model(x)
            return nn.cross_entropy(logits.reshape(-1, len(chars)), y.reshape(-1))

    @zyx.jit
    def train_step(x: zyx.Tensor, y: zyx.Tensor) -> zyx.Tensor:
        loss = loss_of(x, y)
        scaler.update_step(opt, params, scaler.scale(loss).backward(params))
        return loss

    @zyx.jit
    def evaluate(x: zyx.Tensor, y: zyx.Tensor) -> zyx.Tensor:
        return loss_of(x, y)

    @zyx.jit
    def window_logits(window: zyx.Tensor) -> zyx.Tensor:
        with zyx.autocast(args.autocast or zyx.bfloat16, enabled=args.autocast is not None):
            return model(window)[0].float()

    def windows(source: np.ndarray, starts: np.ndarray) -> tuple[zyx.Tensor, zyx.Tensor]:
        x = np.stack([source[s:s + T] for s in starts])
        y = np.stack([source[s + 1:s + T + 1] for s in starts])
        return dev.tensor(x), dev.tensor(y)

    held_out = args.batch * -(-(8 if not args.short else 2) // args.batch)  # whole batches of held-out windows
    val_starts = np.linspace(0, len(val_ids) - T - 2, held_out).astype(int)
    val_batches = [windows(val_ids, val_starts[i:i + args.batch]) for i in range(0, held_out, args.batch)]

    def validation_loss() -> float:
        return float(np.mean([evaluate(x, y).item() for x, y in val_batches]))

    def generate(prompt: str, length: int) -> str:
        """Extend `prompt` one character at a time; the window is padded on the right (causal attention
        never looks there), so every call has one shape and replays one program."""
        out = [index_of.get(c, index_of[" "]) for c in prompt]
        for _ in range(length):
            context = out[-T:]
            window = np.zeros((1, T), dtype=np.int32)
            window[0, :len(context)] = context
            logits = window_logits(dev.tensor(window)).numpy()[len(context) - 1].astype(np.float64)
            if args.temperature <= 0:
                out.append(int(logits.argmax()))
            else:
                probs = np.exp((logits - logits.max()) / args.temperature)
                out.append(int(rng.choice(len(chars), p=probs / probs.sum())))
        return "".join(chars[i] for i in out)

    def show_sample(step: int) -> None:
        sample = generate(args.prompt, args.sample_length)
        print(f"--- sample at step {step} ---\n{sample}\n---", flush=True)

    show_sample(0)
    losses: list[float] = []
    pending: list[zyx.Tensor] = []
    val_points: list[tuple[int, float]] = [(0, validation_loss())]
    bar = ProgressBar(args.steps, desc="train", unit="chars", unit_scale=args.batch * T, skip_first=True)
    train_seconds, first_step_seconds = 0.0, 0.0
    tick = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = windows(train_ids, rng.integers(0, len(train_ids) - T - 1, size=args.batch))
        loss = train_step(x, y)
        pending.append(loss)
        schedule.step()
        if step == 1:  # the first call traced the step and compiled (or loaded from the cache) its kernels
            loss.item()
            first_step_seconds = time.perf_counter() - tick
            tick = time.perf_counter()
        bar.update(loss=loss)
        if step % args.sample_every == 0 or step == args.steps:
            losses += [p.item() for p in pending]  # waits for the queued steps
            pending.clear()
            train_seconds += time.perf_counter() - tick
            bar.clear()
            val_points.append((step, validation_loss()))
            recent = float(np.mean(losses[-args.sample_every:]))
            bar.postfix["loss"] = recent
            print(f"step {step}/{args.steps}  train loss {recent:.3f}  validation loss {val_points[-1][1]:.3f}  "
                  f"{(step - 1) / max(train_seconds, 1e-9):.1f} steps/s", flush=True)
            show_sample(step)
            tick = time.perf_counter()
    bar.close()

    steps_per_second = (args.steps - 1) / max(train_seconds, 1e-9)
    head, tail = np.mean(losses[:10]), np.mean(losses[-10:])
    print(f"loss: first 10 steps {head:.3f} -> last 10 steps {tail:.3f} (validation {val_points[-1][1]:.3f})")
    print(f"throughput: {steps_per_second:.1f} steps/s, {steps_per_second * args.batch * T:.0f} characters/s "
          f"(the first step, which traces the program and compiles or loads its kernels, "
          f"took {first_step_seconds:.2f} s)")
    plot_losses(losses, val_points, args.plot)
    print(f"plot: {args.plot}")
    stats = zyx.stats()
    print(f"wall time {time.perf_counter() - started:.2f} s")
    print(f"kernels_compiled {stats['kernels_compiled']} graphs_scheduled {stats['graphs_scheduled']} "
          f"(programs_loaded {stats['programs_loaded']}, cache_disk_hits {stats['cache_disk_hits']})")
    return {"losses": losses, "validation": val_points, "steps_per_second": steps_per_second}


def plot_losses(losses: list[float], val_points: list[tuple[int, float]], path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(losses) + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="train (each step)")
    window = max(1, min(50, len(losses) // 10))
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, color="tab:blue", label=f"train (mean of {window})")
    ax.plot(*zip(*val_points), "o-", color="tab:orange", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per character)")
    ax.set_title("char_gpt.py")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
