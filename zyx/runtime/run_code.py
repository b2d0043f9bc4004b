"""A bound Program's run written out once as straight-line Python: what `execute.Executable` calls per run.

A replayed step launches a dozen kernels or more, and a loop over precomputed steps still pays, per launch,
for unpacking a step, four inner loops and a table lookup per argument. The generated function instead has one
line per allocation, argument tuple and release (`t12 = s256.pop() if s256 else new_buffer(256)`,
`a3 = (t0, t12)`, `s256.append(t12)`), its kernels, sizes and constants bound as globals, and each value a local
variable named by its position in the run's table (inputs, then slots, then seeds, then offsets, as
`Executable` numbers them).

Its launches come last, back to back (`launch(k3, g3, l3, a3)`), or before a collective step (any of them: its
host staging may read their results): PoCL's enqueue costs the host more when the device's threads went idle since the last one, some 2 µs
more per launch for 5 µs of Python between launches. Buffers given back to the pool before the launches that
use them are enqueued are safe: the queue runs in order, so a later use of one runs after them.

A replayed step's run may instead launch kernels of its own whose arguments it set before (`owner`, the
OpenCL runtime's `own_kernel`): each launch is then one `enqueue(k3, g3, l3)` (no argument tuple, no launcher
call), and the run compares the buffers of this call with the ones its kernels hold in one tuple comparison
(`HeldArguments`: the same ones at every call in a training loop, its intermediates in an arena), setting
arguments only where one changed, and its random seeds at every call.

A run may be given a `gate`, a function called before the first launch that writes an input in place (or the
first collective step, or the end): a replayed step's index checks wait for their results there, so that the
launches computing only new buffers are already queued behind the checks while the host waits, and a failing
check raises before anything the caller holds is overwritten. A program computing its step's index checks
(`program.checks`, all before that launch) first hands its gate their raw buffers, right after the launch
computing the last of them (`gate = gate(arena[3])`): the gate enqueues their read and returns what is called in its
place. Those buffers are internal ones (the arena's where there is one): the run returns None for them.
"""
from __future__ import annotations

import bisect
import collections
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .. import counters
from .collectives import START

# run(inputs, rand_args, pool, allocate_taken, allocate, launch, runtime, gate, arena) -> the outputs' buffers
RunFunction = Callable[..., list[Any]]


def write_run(program: Any, kernels: Sequence[Any], slot_positions: Sequence[int], first_slot: int, rands: int,
              size_class: Callable[[int], int], internal: set[int],
              arena: Optional[dict[int, int]] = None, owner: Optional[Owner] = None) -> RunFunction:
    """The run of `program` with `kernels[k]` launching launch k. Slots in `internal` are raw pool buffers, popped
    from their size class's free list before their first reader (a new one when it is empty) and appended back
    after their last (or when a launch raises); the other slots that are not inputs overwritten in place
    (`program.aliases`) are the outputs, allocated as Buffers. The pool's peak is noted once, from the plan.
    `gate` (a run's argument, None for none) is called before the first launch writing a slot in `program.aliases`
    (or the first collective step, or after the last launch); with `program.checks`, first with their buffers
    once they are computed, and then what that call returned (see the module docstring).

    With `arena` (internal slot -> buffer number, `arena_plan`), the internal slots are instead the buffers of the
    run's `arena` argument (a list, counted in the pool already): the run takes and gives back only its outputs.

    With `owner` (`bindable` must hold), the run is a function of (inputs, rand_args, gate, launch) launching
    kernels of its own (`Owner`) through `launch.enqueue`, their arguments held between calls (see the module
    docstring), and counting its launches itself."""
    names: dict[str, Any] = {"uint64": np.uint64}
    # per value a launch passes (its name in the run), the (launch, argument index) pairs it is set on
    uses: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    slot_bytes, aliases, arena = program.slot_bytes, program.aliases, arena or {}
    used: set[int] = set()  # the inputs some launch reads or writes
    sizes: set[int] = set()  # the size classes of internal slots
    held = peak = 0  # bytes taken in the run so far, and the most at once
    # per size class, the free list's length relative to the run's start, and the lowest it gets (`_settle`)
    level: dict[int, int] = collections.defaultdict(int)
    lowest: dict[int, int] = collections.defaultdict(int)

    def value(kind: str, index: int) -> str:
        if kind in ("seed", "offset"):
            return f"{'r' if kind == 'seed' else 'f'}{index}"
        if kind == "slot" and index in arena:
            return f"b{arena[index]}"
        position = slot_positions[index] if kind == "slot" else index
        if position < first_slot:
            used.add(position)
        return f"t{position}"

    body: list[str] = []
    pending: list[str] = []  # launches whose arguments are known, enqueued together (see the module docstring)
    gated = False  # whether the gate's line is written (see the module docstring)
    checks = [program.outputs[target] for target in program.checks]  # the slots handed to the gate first
    unchecked = set(checks)  # those not computed yet
    for k, launch in enumerate(program.launches):
        for slot in program.allocs[k]:
            if slot in arena:
                continue  # the arena's
            size = size_class(slot_bytes[slot])
            if slot not in aliases:  # taken from the free list (an output by `allocate_taken`)
                level[size] -= 1
                lowest[size] = min(lowest[size], level[size])
            if slot in internal:
                sizes.add(size)
                body.append(f"t{first_slot + slot} = s{size}.pop() if s{size} else new_buffer({size})")
            elif slot not in aliases:
                body += [f"h{slot} = allocate_taken({size}, {slot_bytes[slot]})", f"t{first_slot + slot} = h{slot}.raw"]
            held += size if slot not in aliases else 0
        peak = max(peak, held)
        arguments = [value(kind, index) for kind, index in launch.args]
        if launch.is_kernel:
            kernel = kernels[k] if owner is None else owner.runtime.own_kernel(kernels[k])
            names[f"k{k}"], names[f"g{k}"], names[f"l{k}"] = kernel, launch.global_size, launch.local_size
            if not gated and any(kind == "slot" and index in aliases for kind, index in launch.args):
                pending.append(_GATE)
                gated = True
            if owner is None:
                body.append(f"a{k} = ({''.join(a + ', ' for a in arguments)})")
                pending.append(f"launch(k{k}, g{k}, l{k}, a{k})")
            else:
                for position, argument in enumerate(arguments):
                    uses[argument].append((k, position))
                pending.append(f"enqueue(k{k}, g{k}, l{k})")
        elif launch.collective and launch.global_size[0] > 0:
            body += pending + [_GATE] * (not gated) + [_collective(k, launch, arguments, slot_bytes, names)]
            pending.clear()
            gated = True
        if unchecked:
            unchecked.difference_update(program.allocs[k])
            if not unchecked:
                raws = ", ".join(f"arena[{arena[s]}]" if s in arena else value("slot", s) for s in checks)
                pending.append(f"if gate is not None: gate = gate({raws})")
        for slot in program.frees[k]:
            if slot in internal and slot not in arena:
                size = size_class(slot_bytes[slot])
                body += [f"s{size}.append(t{first_slot + slot})", f"t{first_slot + slot} = None"]
                held -= size
                level[size] += 1
    if owner is not None:
        body += _bind_lines(uses, first_slot, owner, names)
    body += pending + [_GATE] * (not gated)
    allocated = {slot for allocs in program.allocs for slot in allocs}
    pooled = internal - arena.keys()  # internal slots taken from the free lists
    taken = [(first_slot + slot, size_class(slot_bytes[slot])) for slot in sorted(pooled & allocated)]
    head = [_read_inputs(sorted(used), names)] if used and owner is None else []  # (a bound run: `_bind_lines`)
    if arena and owner is None:
        head.append(", ".join(f"b{number}" for number in range(max(arena.values()) + 1)) + ", = arena")
    head += [f"r{r} = uint64(rand_args[{r}][0]); f{r} = uint64(rand_args[{r}][1])" for r in range(rands)]
    empty = [o for o in dict.fromkeys(program.outputs) if slot_bytes[o] == 0 and o not in internal and o not in aliases]
    head += [f"h{slot} = allocate(0)" for slot in empty]
    head += [f"s{size} = pool.free_list({size})" for size in sorted(sizes)]
    # the peak of the buffers taken from the free lists directly (`pool.take` notes its own: outputs, an arena)
    head += ["start = pool.current_bytes"] * bool(taken)
    settled = [size for size in sorted(lowest) if lowest[size] < -1]  # free lists the run takes 2 or more from
    head += [f"s{size} = pool.free_list({size})" for size in settled if size not in sizes]
    head += [_settle(size, -lowest[size]) for size in settled]
    unfreed = (pooled & allocated) - {slot for frees in program.frees for slot in frees}  # none in a well-formed plan
    if taken:
        head.append(" = ".join(f"t{position}" for position, _ in taken) + " = None")
        pairs = ", ".join(f"(t{position}, s{size})" for position, size in taken)
        body = (["try:"] + ["    " + line for line in body]
                + ["except BaseException:  # what is queued still runs in order, before any later use of the pool",
                   f"    for raw, free_list in ({pairs}, ):", "        if raw is not None:",
                   "            free_list.append(raw)", "    raise"]
                + [f"s{size_class(slot_bytes[slot])}.append(t{first_slot + slot})" for slot in sorted(unfreed)])
    outputs = [f"inputs[{aliases[slot]}]" if slot in aliases else "None" if slot in checks
               else f"h{slot}" if slot in allocated or slot in empty else "allocate(0)" for slot in program.outputs]
    if owner is None:
        signature = ["def run(inputs, rand_args, pool, allocate_taken, allocate, launch, runtime, gate, arena):",
                     "    new_buffer = pool.new_buffer"]
        tail = []
    else:
        signature, tail = _bound_frame(owner, names, any(name[0] == "b" for name in uses))
    lines = (signature + ["    " + line for line in head + body]
             + [f"    pool.note_peak(start + {peak})"] * bool(taken) + tail + [f"    return [{', '.join(outputs)}]"])
    source = "\n".join(lines)
    exec(compile(source, f"<zyx run {program.name or id(program)}>", "exec"), names)  # noqa: S102 - built above
    return names["run"]


_GATE = "if gate is not None: gate()"


class HeldArguments:
    """The buffers a bound run's kernels were last given (`now`, a tuple: one entry per buffer of a call, the
    arena as one list) and where each goes (`uses`, per entry: (kernel, argument index, position in the arena
    list or -1)): a run sets arguments only where its buffers differ from these. It holds those buffers, so the
    runtime forgets it (`now = None`) when its pool trims."""

    __slots__ = ("now", "uses", "__weakref__")

    def __init__(self, uses: list[list[tuple[Any, int, int]]]) -> None:
        self.now: Optional[tuple] = None
        self.uses = uses

    def bind(self, now: tuple) -> None:
        """Set the arguments of the entries of `now` that are not those held (all of them when none are)."""
        last, self.now = self.now, None  # (unknown while being set: a set_arg may raise)
        for position, (value, uses) in enumerate(zip(now, self.uses)):
            if last is None or value is not last[position]:
                for kernel, index, number in uses:
                    kernel.set_arg(index, value if number < 0 else value[number])
        self.now = now


@dataclass(frozen=True)
class Owner:
    """What a bound run needs besides its program (`write_run`'s `owner`): the runtime giving it kernels of its own
    (`own_kernel`, `held_arguments`) and its pool and allocations, its arena's `take` (None for no arena), the run
    it hands a call to whose launch function has no `enqueue` (`unbound`: a profiler's, a recorder's), and the
    launches and kernels it counts per run (`counters.note_run`)."""

    runtime: Any
    take: Optional[Callable[[], list[Any]]]
    unbound: Callable[..., list[Any]]
    launches: int
    kernels: int


def _bound_frame(owner: Owner, names: dict[str, Any], takes_arena: bool) -> tuple[list[str], list[str]]:
    """A bound run's first lines (its signature, the hand-over to `unbound`, the arena taken) and the line before
    its return (its counts): a replay calls it directly, as (inputs, rand_args, gate, launch)."""
    runtime = owner.runtime
    names.update(pool=runtime.pool, allocate_taken=runtime.allocate_taken, allocate=runtime.allocate,
                 unbound=owner.unbound, take=owner.take, note_run=counters.note_run)
    signature = ["def run(inputs, rand_args, gate, launch):",
                 "    enqueue = getattr(launch, 'enqueue', None)",
                 "    if enqueue is None: return unbound(inputs, rand_args, gate, launch)"]
    return signature + ["    arena = take()"] * takes_arena, \
        [f"    note_run(pool.peak_bytes, {owner.launches}, {owner.kernels})"]


def bindable(program: Any, internal: set[int], arena: dict[int, int]) -> bool:
    """Whether a run can launch kernels of its own whose arguments it holds (`write_run`'s `owner`): its
    internal buffers are all the arena's (a pooled one is taken and given back before the launches, so its name
    holds no buffer by then) and it has no collective steps (a host step between launches)."""
    return internal <= arena.keys() and not any(launch.collective for launch in program.launches)


def _bind_lines(uses: dict[str, list[tuple[int, int]]], first_slot: int, owner: Owner,
                names: dict[str, Any]) -> list[str]:
    """The lines before a bound run's launches (`uses`: per value, the launches and argument positions taking
    it): the buffers of this call (the inputs' read at C speed) compared, as one tuple, with those its kernels
    hold (the arena as one list: `Arena.take` gives the same list until it is released) and set where they
    differ (`HeldArguments.bind`); the random seeds and offsets set at every call."""
    buffers = sorted((name for name in uses if name[0] == "t"), key=lambda name: int(name[1:]))
    inputs = [int(name[1:]) for name in buffers if int(name[1:]) < first_slot]
    arena_uses = [(names[f"k{k}"], position, int(name[1:])) for name in sorted(uses) if name[0] == "b"
                  for k, position in uses[name]]
    per_value = [[(names[f"k{k}"], position, -1) for k, position in uses[name]] for name in buffers]
    values = ([_raws(inputs, names)] if inputs else []) + buffers[len(inputs):] + ["arena"] * bool(arena_uses)
    lines = []
    if values:
        names["held"] = owner.runtime.held_arguments(per_value + [arena_uses] * bool(arena_uses))
        lines += [f"now = ({''.join(value + ', ' for value in values)})", "if now != held.now: held.bind(now)"]
    return lines + [f"k{k}.set_arg({position}, {name})" for name in sorted(uses) if name[0] in "rf"
                    for k, position in uses[name]]


def _read_inputs(positions: list[int], names: dict[str, Any]) -> str:
    """The line giving each input a launch uses its raw buffer (`t3 = inputs[3].raw`, at C speed for several)."""
    targets = f"t{positions[0]}" if len(positions) == 1 else "".join(f"t{i}, " for i in positions)
    return f"{targets} = {_raws(positions, names).lstrip('*')}"


def _raws(positions: list[int], names: dict[str, Any]) -> str:
    """An expression unpacking the raw buffers of the inputs at `positions` (`*map(_raw, _used(inputs))`)."""
    if len(positions) == 1:
        return f"inputs[{positions[0]}].raw"
    names["_raw"], names["_used"] = operator.attrgetter("raw"), operator.itemgetter(*positions)
    return "*map(_raw, _used(inputs))"


def arena_plan(program: Any, internal: set[int], size_class: Callable[[int], int]) -> tuple[dict[int, int], list[int]]:
    """The buffers a run's `internal` slots can share, planned once: (slot -> buffer number, each buffer's size
    class). A slot takes the smallest buffer the run gave back before (its last reader was enqueued earlier: the
    queue is in order) that is at least its size and at most `cap` times it, else a new one; of the caps in
    ARENA_CAPS the plan with the fewest bytes is kept. A kernel reads and writes only the slot's bytes of a larger
    buffer. With GPT-2's step (W7, H200 traits) no cap gave a 14 190 MiB arena for slots holding 10 372 at their
    peak: small slots took the large buffers that the larger slots after them then had to allocate again; the same
    size class only (as the free lists hand them out) 11 148 MiB."""
    plans = [_arena_plan(program, internal, size_class, cap) for cap in ARENA_CAPS]
    return min(plans, key=lambda plan: sum(plan[1]))


ARENA_CAPS = (1.0, 1.5, 2.0, 4.0, math.inf)  # how much larger than a slot a buffer it takes may be (arena_plan)


def _arena_plan(program: Any, internal: set[int], size_class: Callable[[int], int], cap: float
                ) -> tuple[dict[int, int], list[int]]:
    number: dict[int, int] = {}
    sizes: list[int] = []
    free: list[tuple[int, int]] = []  # (size, buffer number) of the buffers given back, sorted
    for allocs, frees in zip(program.allocs, program.frees):
        for slot in allocs:
            if slot in internal:
                size = size_class(program.slot_bytes[slot])
                fitting = bisect.bisect_left(free, (size, -1))
                if fitting < len(free) and free[fitting][0] <= size * cap:
                    number[slot] = free.pop(fitting)[1]
                else:
                    number[slot] = len(sizes)
                    sizes.append(size)
        for slot in frees:
            if slot in number:
                bisect.insort(free, (sizes[number[slot]], number[slot]))
    return number, sizes


def _settle(size: int, depth: int) -> str:
    """The line putting the `depth` buffers on top of size class `size`'s free list, the ones the run will take
    (for its internal slots and its outputs), in one order whatever order the last run's frees and its outputs'
    releases left them in: a replay then takes the same buffers for the same slots at every call, and its
    launches pass the very arguments the last one did (kernels are not given arguments they hold already:
    opencl.py). Only single-step list operations: a buffer released by a garbage-collected tensor's finalizer
    mid-line is appended, never lost (a slice assignment could drop it and list another buffer twice)."""
    return f"s{size}.extend(sorted([s{size}.pop() for _ in range(min({depth}, len(s{size})))], key=id))"


def _collective(k: int, launch: Any, arguments: list[str], slot_bytes: Sequence[int], names: dict[str, Any]) -> str:
    """A collective step's line: a START hands its sources (one bucket) to the communication thread, the FINISH of
    the same result slot waits for it and writes the result (jit/collective.py places them)."""
    names[f"c{k}"] = launch.collective
    result = launch.args[-1][1] if launch.name == START else launch.args[0][1]
    if launch.name == START:
        sources = [f"({argument}, {slot_bytes[index] if kind == 'slot' else f'inputs[{index}].nbytes'})"
                   for argument, (kind, index) in zip(arguments[:-1], launch.args[:-1])]
        return f"p{result} = runtime.start_collective([{', '.join(sources)}], {launch.global_size[0]}, c{k})"
    return f"runtime.finish_collective(p{result}, {arguments[0]}, c{k})"

