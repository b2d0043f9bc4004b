"""Launch groups: kernels that depend on nothing between them run in one launch.

A training step launches kernels of a few work items beside its big ones: an index range check, the optimizer's
step counter, the loss, a bias's update. On the host each launch costs as much as a large one (microseconds of
enqueue, and a wake-up of the device's threads), so `group_launches` folds each tiny kernel into a launch that
already runs, where their order allows: the group's kernels run side by side, work items numbered through them
(`print_opencl.print_group`).

Kernels in one launch run in no order, so two of them may share it only when neither depends on the other:
neither reads what the other stores, and (`program._dependencies`) neither reads the old value of a buffer the
other overwrites in place. A step counter updated in place is then grouped with a kernel that does not read it,
before its readers, and never with a reader of its old value.

Kernels with work groups take whole groups of the launch (one work-group size in a launch; a kernel without one
gets its items rounded up to whole groups), each group running one kernel's body, so their barriers are reached
by the whole group; their local arrays are declared once each at the kernel's top.

On GPUs (`Grouping.any_size`) kernels of any size share launches: a launch costs the host and the device about as
much as a small kernel runs (~10 µs), and independent kernels running side by side fill the device better than
one after the other. A W4 Adam step's 20 kernels take 9 launches there, its labels' index check one of its own; a
kernel with local memory that fills the device alone (`Grouping.fills_device` groups) keeps its own launch. On
CPUs only tiny kernels join others: a big kernel keeps its own work-group size (PoCL's products run in groups of
one item, where an elementwise kernel would lose its vectors).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

from .kernel_nodes import kernel_bytes, kernel_flops
from .kernel_ir import (Gather, If, Kernel, LocalArray, LocalLoad, LocalStore, Load, Loop, MatrixLoad, Rand,
                        RenderedKernel, Role, Store, walk)

TINY_ITEMS = 64  # a kernel of at most this many work items is tiny: it may join another kernel's launch
LOOKBACK = 8     # launches a kernel may join, counted back from the last (a program may have thousands)
SHORT_BYTES = 16 << 20  # a kernel moving less memory and computing fewer FLOPs is short (`_short`): 4 µs of the
SHORT_FLOPS = 1 << 28   # H200's memory bandwidth, 5 µs of its float32 arithmetic
FLOPS_PER_BYTE = 10     # a GPU's float32 arithmetic over its memory bandwidth (the H200's ~50 TFLOP/s, 4.8 TB/s):
# a work group's time is about the larger of its FLOPs and this many times its bytes (`_longest_first`)

# (the members' IR, renamed apart; the launch's work-group size or None) -> (name, source)
GroupPrinter = Callable[[Sequence[Kernel], Optional[int]], tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class Grouping:
    """How a device's kernels may share launches: the printer of a launch's kernel, the most parameters and bytes
    of local memory one kernel may have, and whether kernels of any size may share (GPUs) or only tiny ones."""

    printer: GroupPrinter
    max_params: int
    local_memory: int
    any_size: bool = False
    fills_device: int = 0  # work groups that fill the device alone (0: no limit)
    longest_first: bool = False  # a launch's kernels ordered by `_longest_first` (GPU drivers only: see there)


def group_launches(kernels: Sequence[RenderedKernel], before: Sequence[set[int]], grouping: Grouping,
                   late: frozenset[int] | set[int] = frozenset(),
                   alone: frozenset[int] | set[int] = frozenset()) -> list[RenderedKernel]:
    """`kernels` (in launch order; `before[k]`: the kernels k must run after, all earlier) in launches: a kernel
    joins a launch it may join (one placed after everything it runs after, one of the last LOOKBACK, whose kernels
    it fits with: `_may_join`), else it gets its own. It joins the earliest such launch, so that a kernel the
    step's longest chain of kernels waits for runs as soon as it may, and the launches are about as few as
    that chain is long (the latest launch instead left a W4 SGD step with 12 launches where 10 do). A kernel in
    `late` (a tiny one overwriting an input in place: a replay waits for its index checks before the first such
    launch) joins the latest instead, so that the launches before it are queued while the host waits. A kernel in
    `alone` (one computing a replay's index checks, whose read is queued right behind its launch) keeps a launch
    of its own: in the step's first launch group the read waited for the step's first product (W4 on the H200:
    0.37 ms a step, against 0.32–0.34 ms when the checks ran as a program of their own before the step's)."""
    launches: list[list[int]] = []
    launch_of: list[int] = []
    groupable = [_groupable(kernel) and k not in alone and not _fills_device(kernel, grouping.fills_device)
                 for k, kernel in enumerate(kernels)]
    for k, kernel in enumerate(kernels):
        earliest = max(1 + max((launch_of[p] for p in before[k]), default=-1), len(launches) - LOOKBACK)
        candidates = range(len(launches) - 1, earliest - 1, -1) if k in late else range(earliest, len(launches))
        joined = next((g for g in candidates if groupable[k]
                       and all(groupable[m] for m in launches[g])
                       and _may_join(kernel, [kernels[m] for m in launches[g]], grouping)), None)
        if joined is None:
            joined = len(launches)
            launches.append([])
        launches[joined].append(k)
        launch_of.append(joined)
    ordered = _longest_first if grouping.longest_first else list
    return [kernels[members[0]] if len(members) == 1 else
            _grouped(ordered([kernels[m] for m in members]), grouping.printer) for members in launches]


def _longest_first(members: list[RenderedKernel]) -> list[RenderedKernel]:
    """A GPU launch's kernels, those whose work groups run longest first: a GPU starts a launch's groups in order, so
    the long ones start while the short ones fill the units they leave (W4's 784 x 512 weight gradient, 104 long
    groups behind 768 short ones, started only once most of those had run: the launch took 0.09 ms on the H200).
    A group's length is the larger of its FLOPs and FLOPS_PER_BYTE times its bytes; equal ones keep their order.
    Not on PoCL, which runs GPU-shaped kernels on a CPU in tests: PoCL 3.0 and 3.1 miscompile a launch whose first
    work groups run a kernel with a barrier ahead of one without (the later groups ran the first kernel's stores
    after its barrier too, out of its output's bounds: heap corruption, a crashed CI worker), as this order makes
    them; the schedule's order ran them right."""
    def length(kernel: RenderedKernel) -> float:
        groups = kernel.global_size // (kernel.local_size or 1) or 1
        return max(kernel_flops(kernel), FLOPS_PER_BYTE * kernel_bytes(kernel)) / groups
    return sorted(members, key=length, reverse=True)


def _may_join(kernel: RenderedKernel, group: list[RenderedKernel], grouping: Grouping) -> bool:
    """Whether a kernel may join a launch of groupable kernels that it is independent of: one of them tiny (or
    any size on GPUs), one work-group size among them, their parameters and local memory within the device's.
    On CPUs not where a kernel larger than tiny would take a tiny one's work-group size, having none of its own:
    W4's last weight gradient (64 items in groups of one) made a copy's 52 736 items as many groups of one, each
    a call of PoCL's work-group function: 0.47 ms, against 0.14 ms alone (PoCL 3.1, Zen 2)."""
    members = [kernel, *group]
    tiny = kernel.global_size <= TINY_ITEMS or all(member.global_size <= TINY_ITEMS for member in group)
    sizes = {m.local_size for m in members if m.local_size}
    imposed = not grouping.any_size and sizes and any(m.local_size is None and m.global_size > TINY_ITEMS
                                                      for m in members)
    return ((tiny or grouping.any_size) and len(sizes) <= 1 and not imposed
            and sum(len(m.params) for m in members) <= grouping.max_params
            and sum(_local_bytes(m.ir) for m in members) <= grouping.local_memory)  # type: ignore[arg-type]


def _fills_device(kernel: RenderedKernel, fills: int) -> bool:
    """A kernel with local memory whose work groups fill the device alone gains nothing from company and loses
    occupancy: a launch's local memory is its members' sum (the fused attention backward's two kernels took 44 ms
    in one launch on the H200, 26-29 ms apart). A short one (`_short`) loses less than a launch of its own costs."""
    groups = kernel.global_size // (kernel.local_size or 1)
    local = _local_bytes(kernel.ir)  # type: ignore[arg-type]
    return fills > 0 and groups >= fills and local > 0 and not _short(kernel)


def _short(kernel: RenderedKernel) -> bool:
    """A kernel that moves and computes so little that it runs for microseconds on a GPU it fills: about what a
    launch costs (W4's second weight gradient, 640 groups a tree-reducing 512 rows, 1.1 MB and 2.6 MFLOP)."""
    return kernel_bytes(kernel) < SHORT_BYTES and kernel_flops(kernel) < SHORT_FLOPS


def _groupable(kernel: RenderedKernel) -> bool:
    """A kernel printed from IR (not a collective step) whose local arrays are declared in its body's outer
    block (where a launch group's kernel declares them all)."""
    ir = kernel.ir
    return (ir is not None and not kernel.collective and kernel.global_size > 0
            and sum(isinstance(s, LocalArray) for s in walk(ir.body)) == sum(isinstance(s, LocalArray) for s in ir.body))


def _local_bytes(kernel: Kernel) -> int:
    return sum(s.size * s.width * s.dtype.itemsize for s in kernel.body if isinstance(s, LocalArray))


def launch_groups_of(kernel: Kernel, local_size: Optional[int]) -> int:
    """Work groups of `local_size` items a launch group gives `kernel` (its items when `local_size` is None)."""
    global_size, _ = kernel.launch
    if kernel.axis(Role.LOCAL) is not None:
        return kernel.work_items
    return global_size if local_size is None else math.ceil(global_size / local_size)


def _grouped(members: list[RenderedKernel], printer: GroupPrinter) -> RenderedKernel:
    """One kernel running `members` side by side (their parameters and local arrays renamed apart)."""
    irs = [_renamed(member.ir, f"_{k}") for k, member in enumerate(members)]  # type: ignore[arg-type]
    local_size = next((m.local_size for m in members if m.local_size), None)
    name, source = printer(irs, local_size)
    total = sum(launch_groups_of(ir, local_size) for ir in irs) * (local_size or 1)
    return RenderedKernel(
        name, source, (total,), [p for ir in irs for p in ir.params], [n for m in members for n in m.outputs],
        [n for m in members for n in m.loads], [n for m in members for n in m.needs],
        set().union(*(m.misaligned for m in members)), total, local_size, max(m.longest_reduction for m in members),
        kernels=sum(m.kernels for m in members), summed_apart=tuple(n for m in members for n in m.summed_apart))


def _renamed(kernel: Kernel, suffix: str) -> Kernel:
    """`kernel` with `suffix` after each parameter's and local array's name, in its signature and wherever its
    statements name one."""
    names = {p.name: p.name + suffix for p in kernel.params}
    names.update((s.name, s.name + suffix) for s in walk(kernel.body) if isinstance(s, LocalArray))
    return dataclasses.replace(kernel, params=tuple(dataclasses.replace(p, name=names[p.name]) for p in kernel.params),
                               body=_renamed_body(kernel.body, names))


def _renamed_body(body: tuple, names: dict[str, str]) -> tuple:
    return tuple(_renamed_statement(statement, names) for statement in body)


def _renamed_statement(statement: object, names: dict[str, str]) -> object:
    if isinstance(statement, (Load, Gather, Store)):
        return dataclasses.replace(statement, buffer=names[statement.buffer])
    if isinstance(statement, LocalArray):
        return dataclasses.replace(statement, name=names[statement.name])
    if isinstance(statement, (LocalStore, LocalLoad, MatrixLoad)):
        return dataclasses.replace(statement, array=names[statement.array])
    if isinstance(statement, Rand):
        return dataclasses.replace(statement, seed=names[statement.seed], offset=names[statement.offset])
    if isinstance(statement, (Loop, If)):
        return dataclasses.replace(statement, body=_renamed_body(statement.body, names))
    return statement
