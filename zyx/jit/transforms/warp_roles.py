"""Warpgroups with roles: one more warpgroup (the producer) only copies the slices of a warpgroup product's staging
loop into local memory, the others (the consumers) only multiply them and store the outputs. On the H200 a
hand-written product of this form ran bfloat16 8192³ at 0.88 of cuBLAS where every item copying and multiplying
ran at 0.82 (bench/wgmma_probe): the consumers issue no address arithmetic and wait on no copies of their own.

The stages are handed over by named barriers (NamedBarrier) of all items: slice s lies in buffer s % stages;
full(s) = 1 + s % stages (the producer arrives once the slice has landed, the consumers wait on it), empty(s) =
1 + stages + s % stages (the consumers arrive once their products no longer read it, the producer waits before
refilling it). With `wait_one` the consumers keep one batch of products in flight, so they release slice s only
after issuing slice s + 1; the producer then hands slice s over at step s + stages - 2 (at stages - 1 it would wait
on a release that waits on that hand-over). A barrier never gets a second generation's arrivals early: the producer's
next arrival on full(s) follows its wait on empty(s), which follows the consumers' wait on full(s); likewise for
empty(s) (bench/wgmma_probe/simulate_handover.py checks the protocol, tests/jit/test_warp_roles.py the IR's).
A tile TF32 products read through a descriptor is rounded to TF32 by the producer once a slice has landed, before
its fence and hand-over (async_pipeline.tf32_rounding: each producer item rounds the copies it issued).

TF32 products' consumers hold their a in registers (tensor_cores.py): they take registers from the producer
(RegisterBudget, setmaxnreg) so that 128 x 256 blocks fit with a batch in flight.

Persistent groups (`units`): where the blocks outnumber the device's compute units, `resident_groups` of them
(a divisor of the blocks) each take blocks gid, gid + groups, ... in turn. The slices run on through the same
buffers and barriers from one block to the next, so the producer copies the next block's first slices while the
consumers store the last one's outputs: a block starts with its slices landed, not a global load's latency after
its launch (W7's products with k = 768 take 12 slices a block).

Ping-pong (`pingpong`: a lowered group of one warpgroup multiplying a whole block): two such consumer warpgroups
take a persistent group's blocks in turn, warpgroup w blocks w, w + 2, ...; the producer copies the blocks' slices
in order, so one consumer's products run while the other stores its block's outputs (a short product's epilogue
takes about as long as its products: tensor_cores.PINGPONG). Each slice has one consumer, so a barrier's count is
the producer and one warpgroup (256), and a consumer releases its block's last slice as its products end (its next
block comes after the other's). The consumers take turns by two more barriers, turn(w) = 2·stages + 1 + w: a
consumer waits on its own before its block's slices (but the first block's) and arrives on the other's after them
(unless no block follows). Without that, both could wait on one full barrier at once for slices `stages` apart
(the second consumer's first slice and the first's still to land: with 12 slices a block and 6 stages, slices 12
and 0), and their 256 items would complete its generation without the producer; with it, the full barriers' waits
come in the order of the slices, and a release follows its slice's wait.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

from ..kernel_ir import (AsyncCommit, AsyncProxyFence, AsyncWait, Axis, Barrier, If, Kernel, LocalArray,
                         LocalRoundTF32, Loop, NamedBarrier, RegisterBudget, Role, WarpgroupWait, walk)
from ..symbolic import Expr
from ..wgmma import WARPGROUP
from . import copy_body
from .async_pipeline import staging_parts, tf32_rounding, when
from .double_buffer import at_step

# setmaxnreg's counts: the producer keeps few registers, the consumers (128 accumulators each) take the rest of the
# 64 Ki a group of 3 warpgroups may hold (40 x 128 + 232 x 256 <= 65536)
PRODUCER_REGISTERS, CONSUMER_REGISTERS = 40, 232
BARRIERS = 15  # named barriers 1-15 (0 is Barrier's): two per stage
TILE = "tile"  # the consumers' loop over a persistent group's blocks
RESIDENT_SHARE = 0.75  # persistent groups only where a divisor of the blocks keeps this share of the units busy


def warp_roles(kernel: Kernel, stages: int, wait_one: bool = True, budget: bool = False,
               round_tiles: bool = True, early: bool = False, units: int = 0,
               pingpong: bool = False) -> Optional[Kernel]:
    """`kernel` (a warpgroup product's staging loop, as lowered) with a producer warpgroup after its items copying
    the slices into `stages` buffers (rounding TF32 tiles unless not `round_tiles`) and its items multiplying them;
    `budget`: the registers moved from the producer to the consumers (RegisterBudget); `early`: the producer hands
    a slice over before it waits for a buffer to refill (_Roles.producer); `units`: the device's compute units
    (0: unknown), for persistent groups (`resident_groups`) where every copy moves 16 bytes (the form a GPU checked:
    bench/GPU.md, session 47); `pingpong`: two consumer warpgroups, each multiplying every other block of its
    persistent group. None where that form does not apply: no staging loop, an operand staged through registers (a
    fused prologue), a Barrier outside the loop (the producer leaves before the outputs), fewer than 3 stages (no
    slice would be in flight while one is handed over) or more than the barriers hold, ping-pong without persistent
    groups of two blocks or more."""
    position = next((p for p, s in enumerate(kernel.body) if staging_parts(s) is not None), None)
    workers = 2 if pingpong else 1  # consumer warpgroups taking blocks in turn (in ping-pong a barrier each)
    if position is None or not 3 <= stages <= (BARRIERS - (workers if pingpong else 0)) // 2:
        return None
    loop: Loop = kernel.body[position]
    fetch, copies, stores, compute = staging_parts(loop)  # type: ignore[misc]
    before, after = kernel.body[:position], kernel.body[position + 1:]
    prefix = tuple(s for s in before if not isinstance(s, LocalArray))
    if fetch or stores or not compute or compute[-1] != WarpgroupWait(0) \
            or any(isinstance(s, Barrier) for s in walk(prefix + after)):
        return None
    group = kernel.axis(Role.LOCAL).size  # type: ignore[union-attr]
    consumers = group * workers
    items = consumers + WARPGROUP
    blocks = kernel.work_items
    whole = all(c.width * c.itemsize == 16 for c in copies)  # (the persistent form checked on a GPU: bench/GPU.md)
    groups = resident_groups(blocks, units if whole else 0)
    if blocks // groups < workers:
        return None
    halves = {s.name: s for s in before if isinstance(s, LocalArray) and s.name in {c.array for c in copies}}
    lid = Expr.var("lid", items)
    worker = Expr.clamped(lid, 0, consumers - 1) // group if pingpong else Expr(0)
    roles = _Roles(loop.var, loop.trips, stages, group + WARPGROUP, wait_one, early, blocks // groups, workers, worker)
    producer_item = Expr.clamped(lid, consumers, items - 1) - consumers  # 0-127, as an index's lower bound needs
    rounds = tf32_rounding(copies, compute) if round_tiles else ()
    shares = [copy_body(copies + rounds, {"lid": producer_item + WARPGROUP * share}, "", {})
              for share in range(group // WARPGROUP)]
    copied = tuple(s for share in shares for s in share if not isinstance(s, LocalRoundTF32))
    rounded = tuple(s for share in shares for s in share if isinstance(s, LocalRoundTF32))
    copied = copy_body(copied, roles.producer_block(groups), "", {})
    produce = roles.producer(at_step(copied, loop.var, roles.step, roles.step % stages, halves, ""),
                             lambda slice_: at_step(rounded, loop.var, slice_, (slice_ + stages) % stages, halves, ""))
    consumed = roles.consumed
    own = {"lid": lid % group} if pingpong else {}  # (each consumer warpgroup's items as the lowered group's)
    compute = at_step(copy_body(compute[:-1], own, "", {}), loop.var, Expr.var(loop.var, loop.trips),
                      consumed % stages, halves, "")
    block = {**roles.consumer_block(groups), **own}
    consume = roles.consumer(compute, copy_body(prefix, block, "", {}), copy_body(after, block, "", {}))
    if budget:
        produce = (RegisterBudget(PRODUCER_REGISTERS, False), *produce)
        consume = (RegisterBudget(CONSUMER_REGISTERS, True), *consume)
    arrays = tuple(dataclasses.replace(s, size=stages * s.size) if s.name in halves else s
                   for s in before if isinstance(s, LocalArray))
    body = (*arrays, If(((lid, "ge", consumers),), produce), If(((lid, "lt", consumers),), consume))
    axes = tuple(Axis(a.name, items, a.role) if a.role is Role.LOCAL
                 else Axis(a.name, groups, a.role) if a.role is Role.GLOBAL else a for a in kernel.axes)
    return dataclasses.replace(kernel, axes=axes, body=body)


def resident_groups(blocks: int, units: int) -> int:
    """The work groups a product of `blocks` blocks launches: the largest divisor of `blocks` up to `units` (the
    device's compute units, one group each: a 128 x 256 block's 200 KiB of local memory and 384 items fill an SM)
    where it keeps RESIDENT_SHARE of them busy, each group then taking blocks // groups blocks in turn; else
    `blocks` (a group a block). ZYX_WGMMA_PERSISTENT=0: always `blocks`."""
    if units <= 0 or blocks <= units or os.environ.get("ZYX_WGMMA_PERSISTENT") == "0":
        return blocks
    groups = next(g for g in range(units, 0, -1) if blocks % g == 0)
    return groups if groups >= RESIDENT_SHARE * units else blocks


@dataclasses.dataclass(frozen=True)
class _Roles:
    """The two roles' loops over `trips` slices a block, `tiles` blocks a group, handed over through `stages`
    buffers by barriers of `items` (the producer's and a slice's consumers'): the producer counts the slices of all
    its blocks in one loop, the consumers loop over blocks, then slices; in ping-pong `workers` consumer
    warpgroups take the blocks in turn, `worker` (an Expr of the item) the consumer's."""

    var: str
    trips: int
    stages: int
    items: int
    wait_one: bool
    early: bool = False
    tiles: int = 1
    workers: int = 1
    worker: Expr = Expr(0)

    @property
    def slices(self) -> int:
        return self.trips * self.tiles

    @property
    def step(self) -> Expr:
        """The producer's slice: its loop counter over all its blocks' slices."""
        return Expr.var(self.var, self.slices)

    @property
    def turns(self) -> int:
        """Blocks each consumer warpgroup takes (the last one's fewer where the workers do not divide the tiles)."""
        return -(-self.tiles // self.workers)

    @property
    def block(self) -> Expr:
        """The consumers' block: their loop counter over blocks, in ping-pong turn by turn."""
        return Expr.var(TILE, self.turns) * self.workers + self.worker if self.tiles > 1 else Expr(0)

    @property
    def consumed(self) -> Expr:
        """The consumers' slice: their block's first slice + their loop counter."""
        inner = Expr.var(self.var, self.trips)
        return inner if self.tiles == 1 else self.block * self.trips + inner

    def producer_block(self, groups: int) -> dict[str, Expr]:
        """What the lowering's block (`gid`) and slice are at the producer's step."""
        if self.tiles == 1:
            return {}
        step = self.step
        return {"gid": Expr.var("gid", groups) + groups * (step // self.trips), self.var: step % self.trips}

    def consumer_block(self, groups: int) -> dict[str, Expr]:
        """What the lowering's block (`gid`) is in the consumers' block loop."""
        return {} if self.tiles == 1 else {"gid": Expr.var("gid", groups) + groups * self.block}

    @property
    def ahead(self) -> int:
        """Slices the producer copies before handing the first over (see the module's docstring)."""
        return self.stages - 2 if self.wait_one else self.stages - 1

    def full(self, slice_: Expr) -> Expr:
        return slice_ % self.stages + 1

    def empty(self, slice_: Expr) -> Expr:
        return slice_ % self.stages + 1 + self.stages

    def producer(self, copies: tuple, landed: Callable[[Expr], tuple]) -> tuple:
        """Per step: wait until the buffer is released (from the stages-th slice on), issue the slice's `copies`
        (each of the producer's items those of consumers' items), then hand over the slice copied `ahead` steps
        before once it has landed, after what it does to a landed slice (`landed`); after the loop, the last ones.
        `early`: the hand-over first, so that it waits neither for a release nor for the copies' issue (the
        consumers' release of the buffer refilled at step s follows their wait for slice s - stages + 1, handed
        over at step s - 1)."""
        step, ahead = self.step, self.ahead
        last = range(max(self.slices - ahead, 0), self.slices)
        refill = (*when(((step, "ge", self.stages),), (NamedBarrier(self.empty(step), self.items, True),)),
                  *copies, AsyncCommit())
        hand_over = when(((step, "ge", ahead),), (AsyncWait(ahead - 1 if self.early else ahead), *landed(step - ahead),
                                                 AsyncProxyFence(),
                                                 NamedBarrier(self.full(step + self.stages - ahead), self.items, False)))
        body = (*hand_over, *refill) if self.early else (*refill, *hand_over)
        return (Loop(self.var, self.slices, body), AsyncWait(0), *(s for first in last for s in landed(Expr(first))),
                AsyncProxyFence(), *(NamedBarrier(self.full(Expr(s)), self.items, False) for s in last))

    def consumer(self, compute: tuple, prefix: tuple = (), after: tuple = ()) -> tuple:
        """Per block: `prefix`, then per step: wait for the slice, multiply it (`compute`: its batch issued and
        committed), wait for the batch before (`wait_one`) or this one, release the buffer of the batch waited for
        unless no slice is left to refill it; then the last batch waited for (in ping-pong its buffer released: the
        next slices are the other consumer's) and `after` (the block's outputs)."""
        step, pending, inner = self.consumed, int(self.wait_one), Expr.var(self.var, self.trips)
        first = inner if self.workers > 1 else step  # (in ping-pong a block's first slice releases none of the last)
        release = when(((first, "ge", pending), (step, "lt", self.slices - self.stages + pending)),
                       (self._release(step - pending),))
        body = (NamedBarrier(self.full(step), self.items, True), *compute, WarpgroupWait(pending), *release)
        last = ()
        if pending:
            end = self.block * self.trips + self.trips - 1
            last = (WarpgroupWait(0), *(when(((end, "lt", self.slices - self.stages),), (self._release(end),))
                                        if self.workers > 1 else ()))
        if self.workers == 1:
            block = (*prefix, Loop(self.var, self.trips, body), *last, *after)
            return block if self.tiles == 1 else (Loop(TILE, self.tiles, block),)
        wait_turn = when(((self.block, "ge", 1),), (NamedBarrier(self._turn(self.worker), self.items, True),))
        pass_turn = when(((self.block + 1, "lt", self.tiles),),
                         (NamedBarrier(self._turn(Expr(self.workers - 1) - self.worker), self.items, False),))
        block = (*prefix, *wait_turn, Loop(self.var, self.trips, body), *pass_turn, *last, *after)
        return (Loop(TILE, self.turns, when(((self.block, "lt", self.tiles),), block)),)

    def _turn(self, worker: Expr) -> Expr:
        """The barrier on which consumer `worker` waits for its turn (the module's docstring)."""
        return Expr(2 * self.stages + 1) + worker

    def _release(self, slice_: Expr) -> NamedBarrier:
        """The consumers' arrival on slice `slice_`'s empty barrier: its reads are done."""
        return NamedBarrier(self.empty(slice_ + self.stages), self.items, False)
