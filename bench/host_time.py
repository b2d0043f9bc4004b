"""H1, H2, H3: zyx's host time per call, the microseconds of Python a user pays on top of the kernels.

    python bench/host_time.py [--calls 200] [--repeat 7] [--device N] [--json OUT]
                              [--host-sizes 64,32,32,10] [--host-batch 32]

H1  `.realize()` of a 20-node expression whose structure was realized before (x and y 64×64, 18 elementwise
    ops: one fused kernel). Each call builds a new expression (untimed; its cost is in the notes) and realizes
    it: what a user who does not jit pays per expression once the program is cached.
H3  `(x @ y).realize()` of x, y 64×64 without jit: the product's trace built and realized in each call (its
    program cached): issue 18's un-jitted W3 loop, where this host time keeps a fast device waiting.
H2  a `@zyx.jit` replay of the W4 training step (the MLP of train_step.py, ReLU, cross-entropy, SGD or Adam) at
    small sizes, so that the kernels take no time and the host's share shows.
Each row runs --calls calls in a block, waits for the device once at its end, and reports the median over
--repeat blocks of the wall time per call and of the main thread's CPU time per call (`time.thread_time`: the
Python and the driver's enqueue calls, not the device's worker threads, not waiting). "Python" is that CPU time
again with the driver's launches and reads replaced by no-ops: zyx's own share. The `opencl` row beside each is
the floor: the very launches one call made (same kernels, buffers, sizes; a replay's arguments set once, as it
passes the same ones at every call) and its waits for results (a W4 step reads its labels' range check), straight through
pyopencl. (zyx's CPU less the floor's would overstate its Python:
on PoCL an enqueue costs more CPU when the device's threads went idle between launches.)
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _harness import Record, check_args, finish, parser, pick_device  # noqa: E402

CALLS = 200
EXPRESSION_NODES = 20
HOST_SIZES = (64, 32, 32, 10)
HOST_BATCH = 32


def expression(x: Any, y: Any) -> Any:
    """x, y and 18 elementwise ops on them (20 trace nodes, no constants): one fused kernel."""
    z = x
    for _ in range(3):
        z = ((z * y + x).exp() * x).tanh() + y
    return z


def timed_blocks(call: Callable[[int], None], prepare: Callable[[], None], synchronize: Callable[[], None],
                 calls: int, repeat: int) -> tuple[float, float]:
    """(median wall seconds per call, median main-thread CPU seconds per call) over `repeat` blocks."""
    walls, cpus = [], []
    for _ in range(repeat):
        prepare()
        synchronize()
        wall, cpu = time.perf_counter(), time.thread_time()
        for i in range(calls):
            call(i)
        synchronize()
        walls.append((time.perf_counter() - wall) / calls)
        cpus.append((time.thread_time() - cpu) / calls)
    return statistics.median(walls), statistics.median(cpus)


def recorded_commands(runtime: Any, call: Callable[[], None]) -> list[tuple]:
    """What `call` asks the driver for, in order: ("launch", kernel, global size, local size, arguments),
    ("read", raw buffers) for each read of results and ("wait",) where it waits for them (a jitted step reads its
    index checks' extremes behind its first launch, and waits before those that overwrite its inputs)."""
    commands: list[tuple] = []
    launcher, download_later, read_later = runtime.launcher, runtime.download_later, runtime.read_later

    def recording(timed: bool) -> Callable:
        launch = launcher(timed)

        def record(kernel: Any, global_size: Any, local_size: Any, args: Any) -> Any:
            commands.append(("launch", kernel, global_size, local_size, list(args)))
            return launch(kernel, global_size, local_size, args)
        return record

    def waiting(wait: Callable[[], Any]) -> Callable[[], Any]:
        def waited() -> Any:
            commands.append(("wait",))
            return wait()
        return waited

    def downloading(requests: list) -> Callable[[], list]:
        commands.append(("read", [buffer.raw for buffer, _, _ in requests]))
        return waiting(download_later(requests))

    def reading(copies: list) -> Callable[[], None]:
        commands.append(("read", [raw for raw, _ in copies]))
        return waiting(read_later(copies))
    runtime.launcher, runtime.download_later, runtime.read_later = recording, downloading, reading
    try:
        call()
    finally:
        del runtime.launcher, runtime.download_later, runtime.read_later
    return commands


def floor_record(workload: str, runtime: Any, commands: list[tuple], args: argparse.Namespace,
                 new_arguments: bool) -> Record:
    """The same launches and reads straight through pyopencl: what any host code must pay for them. Each launch
    gets a kernel of its own; `new_arguments`: it is given its arguments at every call (a realize's output is a
    new buffer each time), else once, before the timing (a replay passes the same ones at every call, and zyx
    sets only those a kernel does not hold already: `OpenCLRuntime.launcher`)."""
    import pyopencl as cl
    queue = runtime.queue
    steps: list[tuple] = []
    for command in commands:
        if command[0] == "launch":
            _, kernel, global_size, local_size, arguments = command
            own = cl.Kernel(kernel.program, kernel.function_name)
            own.set_args(*arguments)
            steps.append(("launch", own, global_size, local_size, arguments if new_arguments else None))
        else:
            steps.append(command)
    launches = sum(step[0] == "launch" for step in steps)
    word = np.empty(1, np.int64)

    def call(i: int) -> None:
        events: list = []
        for step in steps:
            if step[0] == "launch":
                if step[4] is not None:
                    step[1].set_args(*step[4])
                cl.enqueue_nd_range_kernel(queue, step[1], step[2], step[3])
            elif step[0] == "read":
                events = [cl.enqueue_copy(queue, word, buffer, is_blocking=False) for buffer in step[1]]
            else:
                events[-1].wait()
    wall, cpu = timed_blocks(call, lambda: None, runtime.synchronize, args.calls, args.repeat)
    reads = sum(step[0] == "wait" for step in steps)
    what = _launches(launches) + (f" and {reads} wait{'s' * (reads != 1)} for a read" if reads else "") + " per call"
    return _record(workload, "opencl", wall, cpu, {"launches_per_call": launches, "reads_per_call": reads},
                   f"{what}: {'set_args + ' if new_arguments else ''}enqueue_nd_range_kernel, enqueue_copy")


def _launches(count: float) -> str:
    return f"{count:g} launch{'es' * (count != 1)}"


def _record(workload: str, implementation: str, wall: float, cpu: float, extra: dict, note: str) -> Record:
    record = Record(workload, implementation, median_s=wall, unit="µs")
    record.extra = {"wall_us": wall * 1e6, "cpu_us": cpu * 1e6, **extra}
    record.note = f"main-thread CPU {cpu * 1e6:.1f} µs per call; {note}"
    return record


@contextlib.contextmanager
def driver_stubbed(runtime: Any) -> Iterator[None]:
    """Launches and reads replaced by no-ops (reads give zeros): what is left of a call is zyx's own Python.
    The launch function's `enqueue` is what a replay's kernels holding their arguments launch through; it is made
    once, as the runtime's `launcher` makes its function once (a stub made per call would count its own making)."""
    def launch(kernel: Any, global_size: Any, local_size: Any, args: Any) -> None:
        return None
    launch.enqueue = lambda kernel, global_size, local_size: None  # type: ignore[attr-defined]

    def launcher(timed: bool) -> Callable:
        return launch
    def download_later(requests: list) -> Callable[[], list]:
        arrays = [np.zeros(tuple(shape), dtype) for _, shape, dtype in requests]  # (holding no buffer, as the driver's)
        return lambda: arrays

    def no_wait() -> None:
        return None

    def read_later(copies: list) -> Callable[[], None]:
        return no_wait  # (the host arrays keep what the last real read left there)
    runtime.launcher, runtime.download_later, runtime.read_later = launcher, download_later, read_later
    try:
        yield
    finally:
        del runtime.launcher, runtime.download_later, runtime.read_later


def with_python(record: Record, python_s: float) -> Record:
    record.extra["python_us"] = python_s * 1e6
    record.note = f"Python {python_s * 1e6:.1f} µs per call (driver calls stubbed); {record.note}"
    return record


def realize_rows(dev: Any, args: argparse.Namespace) -> list[Record]:
    """H1 (a cached structure's realize, built untimed) and H3 (`(x @ y).realize()`, built in the call)."""
    from zyx.trace.node import toposort
    rng = np.random.default_rng(0)
    x, y = (dev.tensor(rng.standard_normal((64, 64), dtype=np.float32)).realize() for _ in range(2))
    nodes = len(toposort([expression(x, y).node]))
    assert nodes == EXPRESSION_NODES, nodes
    return (realize_row(dev, f"H1 realize, cached {EXPRESSION_NODES}-node structure", lambda: expression(x, y),
                        built_in_call=False, args=args)
            + realize_row(dev, "H3 (x @ y).realize() un-jitted, 64×64, cached program", lambda: x @ y,
                          built_in_call=True, args=args))


def realize_row(dev: Any, workload: str, build: Callable[[], Any], built_in_call: bool,
                args: argparse.Namespace) -> list[Record]:
    """`build().realize()` per call once its structure's program is cached; building is timed only when
    `built_in_call` (what a user who does not jit pays per expression), else done before each block."""
    import zyx
    build().realize()  # the structure is now cached
    pending: list[Any] = []

    def prepare() -> None:
        pending[:] = [] if built_in_call else [build() for _ in range(args.calls)]

    def call(i: int) -> None:
        (build() if built_in_call else pending[i]).realize()
    start = time.perf_counter()
    for _ in range(args.calls):
        build()
    build_us = (time.perf_counter() - start) / args.calls * 1e6
    before = zyx.stats()
    wall, cpu = timed_blocks(call, prepare, zyx.synchronize, args.calls, args.repeat)
    after = zyx.stats()
    launches = (after["launches"] - before["launches"]) / (args.calls * args.repeat)
    row = _record(workload, "zyx", wall, cpu, {"launches_per_call": launches, "build_us": build_us},
                  f"{_launches(launches)} per call; building the expression "
                  f"({'timed' if built_in_call else 'not timed'}) {build_us:.0f} µs")
    runtime = dev.runtime
    floor = floor_record(workload, runtime, recorded_commands(runtime, lambda: build().realize()), args,
                         new_arguments=True)
    with driver_stubbed(runtime):
        python = timed_blocks(call, prepare, lambda: None, args.calls, args.repeat)[1]
    return [with_python(row, python), floor]


def replay_rows(dev: Any, optimizer: str, args: argparse.Namespace) -> list[Record]:
    import zyx
    from train_step import inputs, zyx_step
    sizes = tuple(int(s) for s in args.host_sizes.split(","))
    step, x, y = zyx_step(dev, inputs(args.host_batch, sizes), optimizer)
    for _ in range(3):
        step(x, y)
    before = zyx.stats()
    wall, cpu = timed_blocks(lambda i: step(x, y), lambda: None, zyx.synchronize, args.calls, args.repeat)
    after = zyx.stats()
    launches, kernels = ((after[name] - before[name]) / (args.calls * args.repeat)
                         for name in ("launches", "kernels_launched"))
    workload = f"H2 jitted replay, W4 step ({optimizer})"
    row = _record(workload, "zyx", wall, cpu, {"launches_per_call": launches, "kernels_per_call": kernels},
                  f"{_launches(launches)} ({kernels:g} kernels) per call; MLP {'-'.join(map(str, sizes))}, "
                  f"batch {args.host_batch}")
    runtime = dev.runtime
    floor = floor_record(workload, runtime, recorded_commands(runtime, lambda: step(x, y)), args,
                         new_arguments=False)
    with driver_stubbed(runtime):
        python = timed_blocks(lambda i: step(x, y), lambda: None, lambda: None, args.calls, args.repeat)[1]
    return [with_python(row, python), floor]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calls", type=int, default=CALLS, help=f"calls per timed block (default {CALLS})")
    p.add_argument("--host-sizes", default=",".join(map(str, HOST_SIZES)), help="H2 layer widths, input first")
    p.add_argument("--host-batch", type=int, default=HOST_BATCH, help=f"H2's batch (default {HOST_BATCH})")


def run(args: argparse.Namespace, device: Any, cl_device: Any) -> list[Record]:
    if device is None:
        return [Record("H1-H3", "zyx", note="skipped: no OpenCL device")]
    import zyx
    dev = zyx.OpenCL(platform=device.platform_index, device=device.device_index)
    return realize_rows(dev, args) + [row for optimizer in ("SGD", "Adam") for row in replay_rows(dev, optimizer, args)]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args()
    check_args(args)
    device, cl_device, why = pick_device(args.device)
    finish(args, run(args, device, cl_device), device, why)


if __name__ == "__main__":
    main()
