"""Holding less memory at once: the order steps run in, and elementwise steps that write over a dying source.

`frugal_order`: the step run next is, among those ready, the one that allocates least net of what it lets go.
A backward pass in the trace's depth-first order computes every layer's input gradient before the weight
gradients that read them; this order takes each weight gradient (and its update) as soon as it can, as
PyTorch's autograd does, so activations and input gradients go as early as there. Ties keep the trace's order.

`late_updates`: an update of a jitted step's input (a parameter's `p - lr * g`) that nothing but its write reads
runs where the write is due, after the last step reading the old value (a backward product reading the old
weight), not before it: it is then computed straight into the input's buffer (`program_code._direct_writes`),
not into a temporary copied over the buffer afterwards.

`overwrites`: an elementwise step whose source is read for the last time there, and whose storage nothing else
needs, computes into that storage (PyTorch's `out=`): an optimizer's update chain `p - lr * m / (sqrt(v) + eps)`
then holds one temporary, not one per op.
"""
from __future__ import annotations

import dataclasses
import heapq
from typing import Optional, Sequence

from ..trace.ops import BINARY_OPS, SHIFT_OPS, UNARY_OPS, Op
from .steps import ELEMENTWISE, FUSED_ELEMENTWISE, ROW_OPS, SHARING, Fused, Step, roots, step_bytes

# elementwise ops one library call computes, so it can take an output to write to; the rest compose several
OVERWRITING_OPS = (UNARY_OPS - {Op.CAST, Op.DETACH}) | (BINARY_OPS - SHIFT_OPS) | {Op.WHERE} | FUSED_ELEMENTWISE
FRESH_OPS = OVERWRITING_OPS | ROW_OPS | {Op.SUM, Op.RMAX, Op.PAD, Fused.CONTRACT}  # their results are new, dense arrays
DENSE_VIEW_OPS = {Op.RESHAPE, Op.PERMUTE, Op.SHRINK, Op.FLIP, Op.DETACH, Op.CAST}  # dense if their source is

_RESCORE_AT = 3  # a storage frees when one step reads all its remaining uses: WHERE reads at most three


def frugal_order(steps: Sequence[Step], kept: set[int]) -> list[int]:
    """A topological order of `steps` (their positions) that keeps memory low; `kept`: slots never dropped
    (targets), whose storage therefore never counts as freed."""
    root = roots(steps)
    uses = [0] * len(steps)            # per root: reads of any slot sharing its storage not yet scheduled
    readers: list[list[int]] = [[] for _ in steps]
    waiting = [len(set(step.sources)) for step in steps]
    for k, step in enumerate(steps):
        for source in set(step.sources):
            readers[source].append(k)
        for source in step.sources:
            uses[root[source]] += 1
    by_root: list[list[int]] = [[] for _ in steps]  # per root: steps reading a slot of it
    for k, step in enumerate(steps):
        for source in set(step.sources):
            by_root[root[source]].append(k)
    kept_roots = {root[slot] for slot in kept}

    def score(k: int) -> int:
        """Bytes step k allocates minus the bytes of the storages it reads for the last time."""
        reads: dict[int, int] = {}
        for source in steps[k].sources:
            reads[root[source]] = reads.get(root[source], 0) + 1
        freed = sum(step_bytes(steps[r]) for r, count in reads.items() if count == uses[r] and r not in kept_roots)
        return step_bytes(steps[k]) - freed

    ready = [(score(k), k) for k in range(len(steps)) if waiting[k] == 0]
    heapq.heapify(ready)
    done = [False] * len(steps)
    order: list[int] = []
    while ready:
        current, k = heapq.heappop(ready)
        if done[k]:
            continue  # taken already through a fresher entry
        if current != score(k):
            heapq.heappush(ready, (score(k), k))  # its storages were read since: score it again
            continue
        done[k] = True
        order.append(k)
        touched = set()
        for source in steps[k].sources:
            uses[root[source]] -= 1
            touched.add(root[source])
        for r in touched:  # readers that would now free this storage score better
            if 0 < uses[r] <= _RESCORE_AT and step_bytes(steps[r]):
                for reader in by_root[r]:
                    if not done[reader] and waiting[reader] == 0:
                        heapq.heappush(ready, (score(reader), reader))
        for reader in readers[k]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, (score(reader), reader))
    return order


def late_updates(steps: Sequence[Step], outputs: Sequence[int], in_place: Sequence[tuple[int, int]]) -> list[int]:
    """The steps' positions with each elementwise update that only its in-place write reads (`in_place`: (target
    index, input position) pairs) moved to just after the last step reading the input's old value, where that
    comes later and the move holds no more memory: the update's sources that die there take no more bytes than
    the update's own result, which it no longer holds from its old place to the write's."""
    root = roots(steps)
    loads = {step.arg: k for k, step in enumerate(steps) if step.op is Op.BUFFER}
    last_read: dict[int, int] = {}  # per storage (root): the last step reading any slot of it
    read: set[int] = set()
    for k, step in enumerate(steps):
        for source in step.sources:
            last_read[root[source]] = k
            read.add(source)
    after: dict[int, list[int]] = {}  # position -> the updates moved to just after it
    for target, position in in_place:
        slot, load = outputs[target], loads.get(position)
        step = steps[slot]
        if load is None or step.op not in ELEMENTWISE or slot in read or outputs.count(slot) != 1 or \
                last_read.get(root[load], -1) <= slot:
            continue
        dying = {root[source] for source in step.sources
                 if root[source] != root[load] and last_read[root[source]] == slot}
        if sum(step_bytes(steps[r]) for r in dying) <= step_bytes(step):
            after.setdefault(last_read[root[load]], []).append(slot)
    moved = {slot for slots in after.values() for slot in slots}
    order: list[int] = []
    for k in range(len(steps)):
        if k not in moved:
            order.append(k)
        order += sorted(after.get(k, []))
    return order


def overwrites(steps: Sequence[Step], kept: set[int]) -> list[Step]:
    """`steps` with `into` set where a float elementwise step may write its result over a source of its shape
    and dtype: a dense array it reads for the last time, whose storage no later step and no target holds."""
    last: dict[int, int] = {}  # slot -> the last step reading it
    for k, step in enumerate(steps):
        for source in step.sources:
            last[source] = k
    root: list[int] = []       # per slot: the slot whose storage it uses (as `roots`, with the overwrites so far)
    root_last: dict[int, int] = {}  # per storage: the last step reading any slot that uses it
    root_kept: dict[int, bool] = {}
    dense: list[bool] = []     # per slot: its elements have memory of their own (no broadcast, no overlap)
    result = list(steps)
    for k, step in enumerate(steps):
        into = _overwritable(step, k, steps, root, root_last, root_kept, dense)
        if into is not None:
            result[k] = dataclasses.replace(step, into=into)
            root.append(root[step.sources[into]])
        else:
            root.append(root[step.sources[0]] if step.op in SHARING and step.sources else k)
        r = root[k]
        root_last[r] = max(root_last.get(r, -1), last.get(k, -1))
        root_kept[r] = root_kept.get(r, False) or k in kept
        if into is not None or step.op in DENSE_VIEW_OPS:
            dense.append(dense[step.sources[into or 0]])
        else:
            dense.append(step.op in FRESH_OPS and step.compact is None and r == k)
    return result


def _overwritable(step: Step, k: int, steps: Sequence[Step], root: list[int], root_last: dict[int, int],
                  root_kept: dict[int, bool], dense: list[bool]) -> Optional[int]:
    """The position of the source step k may write over, if any."""
    if step.op not in OVERWRITING_OPS or step.compact is not None or not step.dtype.is_float:
        return None
    for position, source in enumerate(step.sources):
        r = root[source]
        if (dense[source] and (steps[source].shape, steps[source].dtype) == (step.shape, step.dtype)
                and root_last[r] == k and not root_kept[r]
                and all(root[other] != r or other == source for other in step.sources)):
            return position
    return None
