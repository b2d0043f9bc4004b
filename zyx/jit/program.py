"""A Program: kernel launches over numbered buffer slots, with a memory plan. What the runtime executes.

Inputs are bound by position (the order the structural hash met the BUFFER leaves), random streams by
the order of RAND nodes, so one Program serves every trace with the same structure.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

from ..trace.node import Node, short_name

if TYPE_CHECKING:  # (the scheduler's modules, which a process that loads its programs does not import)
    from .kernel_ir import RenderedKernel
    from .launch_groups import Grouping

FREES_MIN = 64 * 2 ** 20  # a ready kernel whose run frees this many bytes more than it allocates runs first


@dataclass(frozen=True)
class Launch:
    name: str
    source: str
    global_size: tuple[int, ...]
    local_size: tuple[int, ...] | None
    args: tuple[tuple[str, int], ...]  # ("input", i) | ("slot", j) | ("seed", r) | ("offset", r)
    flops: int = 0          # useful arithmetic of the nodes it computes (trace/cost.py), for the profiler
    bytes_moved: int = 0    # bytes of the buffers it reads and writes
    node: str = ""          # the trace node it stores, e.g. "SUM (512, 1) float32"
    collective: str = ""    # a host step, not a kernel: the collective it starts or finishes (collective.py)
    kernels: int = 1        # the scheduler's kernels it runs side by side (a launch group: launch_groups.py)

    @property
    def is_kernel(self) -> bool:
        """A kernel with work to do: compiled and launched (collective steps and empty kernels are not)."""
        return not self.collective and self.global_size[0] > 0


@dataclass
class Program:
    launches: list[Launch]
    slot_bytes: list[int]
    outputs: list[int]                      # the slot holding each target
    frees: list[list[int]] = field(default_factory=list)  # slots released after each launch
    allocs: list[list[int]] = field(default_factory=list)  # slots allocated before each launch
    aliases: dict[int, int] = field(default_factory=dict)  # slot -> input whose buffer it overwrites in place
    name: str = ""  # the trace structure's hash, set by whoever looks the program up (what the profiler shows)
    # the targets a run hands its gate as soon as the launches computing them are queued (a replayed step's index
    # checks: run_code.py), all computed before the first launch writing an input in place or collective step
    checks: list[int] = field(default_factory=list)

    @property
    def planned_peak_bytes(self) -> int:
        """Most bytes this program holds at once (inputs aside), following its memory plan."""
        live, peak = 0, 0
        for allocs, frees in zip(self.allocs, self.frees):
            live += sum(self.slot_bytes[s] for s in allocs if s not in self.aliases)
            peak = max(peak, live)
            live -= sum(self.slot_bytes[s] for s in frees if s not in self.aliases)
        return peak

    @property
    def kernel_count(self) -> int:
        """Kernels the program runs (its collective steps are no kernels; a launch group runs several)."""
        return sum(launch.kernels for launch in self.launches if not launch.collective)

    @property
    def launch_count(self) -> int:
        """Launches of kernels the program makes."""
        return sum(1 for launch in self.launches if not launch.collective)


def launch_size(kernel: RenderedKernel) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Global and local size of the kernel's launch (the global size rounded up to whole work groups)."""
    if not kernel.local_size:
        return (kernel.global_size,), None
    return (math.ceil(kernel.global_size / kernel.local_size) * kernel.local_size,), (kernel.local_size,)


def build_program(kernels: Sequence[RenderedKernel], targets: Sequence[Node], leaves: Sequence[Node],
                  rands: Sequence[Node], in_place: Sequence[tuple[int, int]] = (),
                  grouping: Optional[Grouping] = None, checks: Sequence[int] = (),
                  reuse_buffers: bool = False) -> Program:
    """`in_place`: (target index, leaf index) pairs whose target may overwrite the leaf's buffer. With a
    `grouping`, kernels share launches where it allows (launch_groups.py). `checks`: the targets that are a
    replayed step's index checks, computed first where they can be (`Program.checks` names them then: else none
    is named, and the step reads them after the run). `reuse_buffers`: a kernel may store a value in the buffer of
    one it reads for the last time (`_reused_buffers`; not on WebGPU, which binds no buffer twice in a dispatch)."""
    from .collective import place_steps
    from .kernel_nodes import kernel_bytes, kernel_flops
    from .launch_groups import group_launches
    checking = _producers(kernels, [targets[target] for target in checks])
    writes = _in_place_writers(kernels, targets, in_place)
    producer, producing = _producing(kernels)
    before = _dependencies(kernels, producer, producing, targets, leaves, in_place, checking)
    order = _launch_order(before, _waits_for_collectives(kernels, producing), writes, checking,
                          _FreedMemory(kernels, targets))
    position = {k: i for i, k in enumerate(order)}
    kernels = [kernels[k] for k in order]
    reused = _reused_buffers(kernels, targets) if reuse_buffers else {}
    if grouping is not None and not any(kernel.collective for kernel in kernels):
        # (a kernel taking a buffer is kept alone: in a launch shared with the value's other readers it would race)
        reusing = {k for k, kernel in enumerate(kernels) if any(id(node) in reused for node in kernel.outputs)}
        kernels = group_launches(kernels, [{position[p] for p in before[k]} for k in order], grouping,
                                 {position[k] for k in writes} | {k for k, kernel in enumerate(kernels) if kernel.late},
                                 {position[k] for k in checking} | reusing)
        reused = _reused_buffers(kernels, targets) if reuse_buffers else {}  # (the launches' own: grouped now)
    leaf_position = {id(n): i for i, n in enumerate(leaves)}
    rand_position = {id(n): i for i, n in enumerate(rands)}
    slot_of: dict[int, int] = {}
    slot_bytes: list[int] = []
    for kernel in kernels:
        for node in kernel.outputs:
            if id(node) in reused:
                slot_of[id(node)] = slot_of[id(reused[id(node)])]
                continue
            slot_of[id(node)] = len(slot_bytes)
            slot_bytes.append(node.numel * node.dtype.itemsize)
    launches: list[Launch] = []
    for kernel in kernels:
        args = []
        for param in kernel.params:
            if param.kind in ("seed", "offset"):
                args.append((param.kind, rand_position[id(param.node)]))
            elif id(param.node) in leaf_position and param.kind == "load":
                args.append(("input", leaf_position[id(param.node)]))
            else:
                args.append(("slot", slot_of[id(param.node)]))
        global_size, local = launch_size(kernel)
        launches.append(Launch(kernel.name, kernel.source, global_size, local, tuple(args), kernel_flops(kernel),
                               kernel_bytes(kernel), short_name(kernel.outputs[0]), kernel.collective,
                               kernel.kernels))
    launches = place_steps(launches)
    outputs = [slot_of[id(t)] for t in targets]
    program = Program(launches, slot_bytes, outputs, *_memory_plan(launches, len(slot_bytes), outputs))
    program.aliases = _in_place_aliases(kernels, targets, leaves, in_place, program)
    program.checks = list(checks) if computed_before_writes(program, checks) else []
    return program


def _reused_buffers(kernels: Sequence[RenderedKernel], targets: Sequence[Node]) -> dict[int, Node]:
    """Per value (id) a kernel stores, the value whose buffer it takes: one the same kernel (alone in its launch,
    with no reduction) reads for the last time, only at the positions it stores, of the same bytes (FREES_MIN or
    more: smaller buffers go back to the pool soon enough), neither of them a target. Each work item reads its
    element before it writes it, so W7's logits' gradient (3.1 GiB) is written over the logits: they are never
    both held."""
    kept = {id(target) for target in targets}
    stored = {id(node) for kernel in kernels for node in kernel.outputs}
    last_reader = {id(node): k for k, kernel in enumerate(kernels) for node in kernel.loads}
    reused: dict[int, Node] = {}
    taken: set[int] = set()
    for k, kernel in enumerate(kernels):
        if kernel.kernels != 1 or kernel.longest_reduction or kernel.collective:
            continue
        for output in kernel.outputs:
            nbytes = output.numel * output.dtype.itemsize
            value = next((node for node in kernel.loads if id(node) in stored and id(node) not in kept
                          and id(node) not in taken and last_reader[id(node)] == k and id(node) not in kernel.misaligned
                          and node.numel * node.dtype.itemsize == nbytes), None)
            if value is not None and id(output) not in kept and nbytes >= FREES_MIN:
                reused[id(output)] = value
                taken.add(id(value))
    return reused


def computed_before_writes(program: Program, targets: Sequence[int]) -> bool:
    """Whether `targets` are all computed before the program's first launch writing an input in place and its
    first collective step (where a run's gate waits for what it was handed)."""
    uncomputed = {program.outputs[target] for target in targets}
    for launch, allocs in zip(program.launches, program.allocs):
        if not uncomputed:
            return True
        if launch.collective or any(kind == "slot" and index in program.aliases for kind, index in launch.args):
            return False
        uncomputed -= set(allocs)
    return not uncomputed


def _launch_order(before: Sequence[set[int]], waits: Sequence[bool], writes: set[int], checking: set[int],
                  freeing: "_FreedMemory") -> list[int]:
    """The kernels' launch order (their positions in the scheduler's order), changed so that a kernel storing a
    leaf's new value runs after the kernels that read the old one wherever their own dependencies allow (an
    optimizer's update after the backward kernels that still read the old weight: then it can write in place;
    `before`: `_dependencies`), and so that kernels waiting for a value combined across processes (`waits`:
    `_waits_for_collectives`) run after all that does not wait (the host then communicates while the device runs
    the rest of the backward pass), and so that a tiny kernel overwriting a leaf in place (`writes`:
    `_in_place_writers`) runs after all that does not wait for it: a replay waits for its index checks before the
    first launch writing an input in place (run_code.py's gate), so the launches queued ahead of that one run
    meanwhile (W4's step counter, updated in place, ran in its first launch, where the whole step waited for the
    checks' read). The kernels computing the index checks (`checking`) run as early as they may, before every
    kernel writing a leaf in place (`_dependencies`): the read of their results is then queued ahead of most
    launches. A kernel whose run frees much memory (`freeing`) runs as soon as it may. Otherwise kernels keep the
    scheduler's order."""
    waiting = [len(b) for b in before]
    followers: list[list[int]] = [[] for _ in before]
    for k, earlier in enumerate(before):
        for p in earlier:
            followers[p].append(k)
    key: dict[int, tuple] = {}  # per ready kernel, its place in the heap (an entry with another is stale)

    def make_ready(k: int) -> None:
        key[k] = (waits[k], k not in checking, not freeing.frees_much(k), k in writes, k)
        heapq.heappush(ready, key[k])
    ready: list[tuple] = []
    for k, count in enumerate(waiting):
        if count == 0:
            make_ready(k)
    order = []
    while ready:  # what does not wait for a collective first, then the checks, then what frees much memory, then
        entry = heapq.heappop(ready)  # what writes no leaf, then the scheduler's order
        k = entry[-1]
        if key.get(k) != entry:
            continue
        del key[k]
        order.append(k)
        for reader in freeing.ran(k):
            if reader in key and freeing.frees_much(reader):
                make_ready(reader)
        for follower in followers[k]:
            waiting[follower] -= 1
            if waiting[follower] == 0:
                make_ready(follower)
    return order


class _FreedMemory:
    """What running a kernel frees: the stored values (not the program's targets) it is the last kernel left to
    read, less what it stores. A kernel freeing FREES_MIN or more runs as soon as it may: in the scheduler's order
    W7's loss (a sum over the logits, 3.1 GiB) and its tied head's weight gradient (reading the logits' gradient,
    another 3.1 GiB) ran after the whole backward pass, which held both all along."""

    def __init__(self, kernels: Sequence[RenderedKernel], targets: Sequence[Node]):
        kept = {id(target) for target in targets}
        self.bytes = {id(node): node.numel * node.dtype.itemsize for kernel in kernels for node in kernel.outputs
                      if id(node) not in kept}
        self.reads = [{id(node) for node in kernel.loads if id(node) in self.bytes} for kernel in kernels]
        self.stores = [sum(node.numel * node.dtype.itemsize for node in kernel.outputs) for kernel in kernels]
        self.readers: dict[int, list[int]] = {}
        for k, reads in enumerate(self.reads):
            for value in reads:
                self.readers.setdefault(value, []).append(k)
        self.left = {value: len(readers) for value, readers in self.readers.items()}
        self.done: set[int] = set()

    def frees_much(self, k: int) -> bool:
        """Whether running k frees FREES_MIN more than it stores, or brings a value of FREES_MIN closer to being
        freed while storing next to nothing (a loss summed over the logits: the logits' gradient, their other
        reader, may then take their buffer, `_reused_buffers`)."""
        freed = sum(self.bytes[value] for value in self.reads[k] if self.left[value] == 1)
        largest = max((self.bytes[value] for value in self.reads[k]), default=0)
        return freed - self.stores[k] >= FREES_MIN or (largest >= FREES_MIN and self.stores[k] * 1024 <= largest)

    def ran(self, k: int) -> list[int]:
        """Record that kernel k ran; returns the kernels now left as the only reader of a value k read."""
        self.done.add(k)
        last = []
        for value in self.reads[k]:
            self.left[value] -= 1
            if self.left[value] == 1:
                last.extend(r for r in self.readers[value] if r not in self.done)
        return last


def _in_place_writers(kernels: Sequence[RenderedKernel], targets: Sequence[Node],
                      in_place: Sequence[tuple[int, int]]) -> set[int]:
    """The kernels storing a target that may overwrite a leaf in place and reading only tiny values
    (`launch_groups.TINY_ITEMS` elements: a step counter). Others keep their place: run late, an update would hold
    what it reads longer (W6 SGD held 1 MiB more with a bias's update, which sums a gradient over the batch, last),
    and the wait before it is behind the backward kernels queued ahead of it anyway."""
    from .launch_groups import TINY_ITEMS
    written = {id(targets[target]) for target, _ in in_place}
    return {k for k, kernel in enumerate(kernels) if any(id(node) in written for node in kernel.outputs)
            and all(node.numel <= TINY_ITEMS for node in kernel.loads)}


def _producers(kernels: Sequence[RenderedKernel], nodes: Sequence[Node]) -> set[int]:
    """The kernels storing `nodes`."""
    wanted = {id(node) for node in nodes}
    return {k for k, kernel in enumerate(kernels) if any(id(node) in wanted for node in kernel.outputs)}


def _dependencies(kernels: Sequence[RenderedKernel], producer: dict[int, int], producing: Sequence[set[int]],
                  targets: Sequence[Node], leaves: Sequence[Node], in_place: Sequence[tuple[int, int]],
                  checking: set[int]) -> list[set[int]]:
    """Per kernel, the kernels it must run after: those storing what it reads (`producing`, `producer`: see
    `_producing`), and for a kernel storing a leaf's new value (that may be written in place) the kernels reading
    the old one that do not run after it anyway, and those computing a replay's index checks (`checking`: they
    must pass before anything is overwritten) that do not run after it."""
    before = [set(producers) for producers in producing]

    def needs(later: int, earlier: int) -> bool:
        """Kernel `later` (transitively) runs after kernel `earlier`."""
        stack, seen = [later], {later}
        while stack:
            k = stack.pop()
            if k == earlier:
                return True
            for p in before[k] - seen:
                seen.add(p)
                stack.append(p)
        return False

    readers: dict[int, list[int]] = {}  # per node, the kernels loading it (found once: W7 updates 444 leaves)
    for k, kernel in enumerate(kernels):
        for key in {id(node) for node in kernel.loads}:
            readers.setdefault(key, []).append(k)
    for target_index, leaf_index in in_place:
        writer = producer.get(id(targets[target_index]))
        if writer is None:
            continue
        for reader in readers.get(id(leaves[leaf_index]), ()):
            if reader != writer and not needs(reader, writer):
                before[writer].add(reader)
        for checker in checking:
            if checker != writer and not needs(checker, writer):
                before[writer].add(checker)
    return before


def _producing(kernels: Sequence[RenderedKernel]) -> tuple[dict[int, int], list[set[int]]]:
    """The kernel storing each node (by the node's id), and per kernel the kernels storing what it reads."""
    producer = {id(node): k for k, kernel in enumerate(kernels) for node in kernel.outputs}
    return producer, [{producer[id(node)] for node in kernel.loads if id(node) in producer} for kernel in kernels]


def _waits_for_collectives(kernels: Sequence[RenderedKernel], producing: Sequence[set[int]]) -> list[bool]:
    """Per kernel (in the scheduler's order, producers first; `producing`: see `_producing`): whether it reads,
    directly or through other kernels, the result of a collective."""
    waits: list[bool] = []
    for producers in producing:
        waits.append(any(kernels[p].collective or waits[p] for p in producers))
    return waits


def _in_place_aliases(kernels: Sequence[RenderedKernel], targets: Sequence[Node], leaves: Sequence[Node],
                      in_place: Sequence[tuple[int, int]], program: Program) -> dict[int, int]:
    """Slots that can be written straight into an input's buffer: the kernel storing the new value reads
    the old one only at the position it writes, and no later kernel reads the old value."""
    aliases: dict[int, int] = {}
    writer_of: dict[int, int] = {}  # the first kernel storing each node, the last loading it (W7: 445 updates in
    last_load: dict[int, int] = {}  # place, each looked for among 700 kernels took 0.2 s)
    for k, kernel in enumerate(kernels):
        for node in kernel.outputs:
            writer_of.setdefault(id(node), k)
        for node in kernel.loads:
            last_load[id(node)] = k
    for target_index, leaf_index in in_place:
        target, leaf = targets[target_index], leaves[leaf_index]
        if target.numel * target.dtype.itemsize != leaf.numel * leaf.dtype.itemsize or target.numel == 0:
            continue
        writer = writer_of[id(target)]
        if id(leaf) in kernels[writer].misaligned:
            continue
        if last_load.get(id(leaf), -1) > writer:
            continue
        slot = program.outputs[target_index]
        if slot in aliases or leaf_index in aliases.values():
            continue
        aliases[slot] = leaf_index
    return aliases


def _memory_plan(launches: Sequence[Launch], slots: int, outputs: Sequence[int]) -> tuple[list[list[int]], list[list[int]]]:
    """Allocate each slot right before its first use and release it right after its last (outputs stay)."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for k, launch in enumerate(launches):
        for kind, index in launch.args:
            if kind == "slot":
                first.setdefault(index, k)
                last[index] = k
    frees: list[list[int]] = [[] for _ in launches]
    allocs: list[list[int]] = [[] for _ in launches]
    kept = set(outputs)
    for slot in range(slots):
        if slot in first:
            allocs[first[slot]].append(slot)
            if slot not in kept:
                frees[last[slot]].append(slot)
    return frees, allocs
