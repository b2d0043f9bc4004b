"""Foreach groups: independent steps running the same op on different buffers, made one multi-tensor call.

A training step updates each parameter with the same chain of elementwise ops (Adam: nine), each a library
call per parameter; a library with multi-tensor kernels (torch's `_foreach_*`, `torch_foreach.py`) computes
one op of every chain in one call, as PyTorch's own optimizers do. Two passes, in the spirit of the OpenCL
launch groups (`jit/launch_groups.py`):

`sunk_order`, before the memory plan: the steps that only feed groupable steps (an update chain, from the
gradients on), in chains of MIN_CHAIN steps or more, move to the program's end, by level (the longest chain of
such steps before them), and within a level by op, so the chains' same ops stand side by side. Nothing a moved
step reads is written by it or by a later step (the in-place writes are planned after this order), and no step
left in place reads one.

`runs`, when a program is written out (`program_code.py`): consecutive steps with one key (op, dtype, the
operands' kinds, in place or not) that read none of each other's values, nor, where they write over a source,
the storage another member writes over, form a group (two steps or more).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from ..trace.ops import Op
from .steps import Step, roots

Groupable = Callable[[Step, Sequence[Step]], bool]
# Chains shorter than this stay where they are: moving a chain holds its inputs (the gradients) to the program's
# end, which pays for itself where each chain is many calls (Adam's nine), not where it is one (SGD's: a W4 SGD
# step's storages grew from 1.8 to 5.1 MiB for 5 calls of 68; Adam's stay below torch eager's).
MIN_CHAIN = 3
LIST, TENSOR = "list", "tensor"


def operand_kinds(steps: Sequence[Step], step: Step) -> tuple[Any, ...]:
    """Per source: its value where it is a constant (the same for all members), TENSOR where it is a 0-d value
    (which every member of a group then reads: the same slot), else LIST."""
    kinds: list[Any] = []
    for source in step.sources:
        found = steps[source]
        kinds.append(found.arg if found.op is Op.CONST else (TENSOR, source) if found.shape == () else LIST)
    return tuple(kinds)


def sunk_order(steps: Sequence[Step], groupable: Groupable) -> list[int]:
    """The steps' positions with the sinkable ones last, by level then op (see the module docstring)."""
    readers: list[list[int]] = [[] for _ in steps]
    for k, step in enumerate(steps):
        for source in step.sources:
            readers[source].append(k)
    sinkable = [False] * len(steps)
    for k in reversed(range(len(steps))):
        step = steps[k]
        sinkable[k] = groupable(step, [steps[s] for s in step.sources]) and all(sinkable[r] for r in readers[k])
    level = [0] * len(steps)
    for k, step in enumerate(steps):
        if sinkable[k]:
            level[k] = 1 + max([level[s] for s in step.sources], default=0)
    chain = level[:]  # the longest chain of sinkable steps through each
    for k in reversed(range(len(steps))):
        if sinkable[k]:  # (so are its readers, whose chains are then its own)
            chain[k] = max([chain[k]] + [chain[r] for r in readers[k]])
    group: dict[int, tuple] = {}  # a moved step's position -> its group key
    first_of: dict[tuple, int] = {}  # a group key -> the position of its first step, which orders the level
    for k in reversed(range(len(steps))):  # a chain too short stays, and so does what it reads (a source's chain
        # may be long through another reader): a step left in place must not read a moved one
        sinkable[k] = sinkable[k] and chain[k] >= MIN_CHAIN and all(sinkable[r] for r in readers[k])
    for k, step in enumerate(steps):
        if sinkable[k]:
            group[k] = (level[k], step.op, step.dtype, operand_kinds(steps, step))
            first_of.setdefault(group[k], k)
    moved = sorted(group, key=lambda k: (level[k], first_of[group[k]], k))
    return [k for k in range(len(steps)) if not sinkable[k]] + moved


def runs(steps: Sequence[Step], key: Callable[[int], Optional[tuple]]) -> list[list[int]]:
    """Groups of consecutive steps (see the module docstring); `key(k)`: the step's group key, None where it
    joins no group. A member claims the storages it may write over (its first source's where it runs in place,
    the key's last item; its `into` source's): no other member may read them."""
    root = roots(steps)

    def overwritten(k: int, in_place: bool) -> set[int]:
        """The storages step k may write over: its first source's in place, its `into` source's."""
        step = steps[k]
        return {root[step.sources[position]] for position in ([0] if in_place else []) +
                ([step.into] if step.into is not None else [])}

    found: list[list[int]] = []
    k = 0
    while k < len(steps):
        first = key(k)
        members = [k]
        if first is not None:
            in_place = first[-1]
            claimed = overwritten(k, in_place)
            read = {root[s] for s in steps[k].sources}
            while k + len(members) < len(steps):
                candidate = k + len(members)
                if key(candidate) != first:
                    break
                sources = steps[candidate].sources
                targets = overwritten(candidate, in_place)
                if any(s in members for s in sources) or any(root[s] in claimed for s in sources) or targets & read:
                    break
                members.append(candidate)
                read |= {root[s] for s in sources}
                claimed |= targets
        if len(members) > 1:
            found.append(members)
        k += len(members)
    return found
