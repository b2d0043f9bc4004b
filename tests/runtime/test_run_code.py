"""Executable's generated run (runtime/run_code.py) on a fake runtime: what it launches with which buffers, and
how its internal buffers go through the pool (taken, given back, also when a launch raises; the peak noted)."""
import functools
import math
from types import SimpleNamespace

import numpy as np
import pytest

from zyx.jit.program import Launch, Program
from zyx.runtime.execute import Executable
from zyx.runtime.limits import MemoryLimits
from zyx.runtime.memory import BufferPool, PooledRuntime
from zyx.runtime.run_code import _arena_plan, arena_plan


class Raw:
    """A driver buffer."""


class FakeBuffer:
    def __init__(self, raw, nbytes, runtime):
        self.raw, self.nbytes, self.runtime = raw, nbytes, runtime

    def __del__(self):
        self.runtime.pool.release(self.raw, self.nbytes)


class FakeRuntime(PooledRuntime):
    """Records each launch as (kernel, global size, arguments); `fail_at` makes that kernel's launch raise."""

    def __init__(self, fail_at=None):
        self.pool = BufferPool(lambda nbytes: Raw(), granularity=256)
        self.limits = MemoryLimits(1 << 30, 1 << 30, "fake")
        self.launches, self.fail_at = [], fail_at

    def _buffer(self, raw, nbytes):
        return FakeBuffer(raw, nbytes, self)

    def launcher(self, timed):
        def launch(kernel, global_size, local_size, args):
            if kernel == self.fail_at:
                raise RuntimeError(f"{kernel} failed")
            self.launches.append((kernel, global_size, args))
        return launch


def launch(name, size, *args):
    return Launch(name, "", (size,), None, args)


# input 0 -> internal slot 0 (1000 bytes) -> output slot 1 (100 bytes), written into input 1 in place (slot 2),
# with an empty launch and a random stream between
PROGRAM = Program(
    launches=[launch("a", 4, ("input", 0), ("slot", 0)), launch("empty", 0, ("slot", 0)),
              launch("b", 4, ("slot", 0), ("seed", 0), ("offset", 0), ("slot", 1)),
              launch("c", 4, ("slot", 1), ("slot", 2))],
    slot_bytes=[1000, 100, 16], outputs=[1, 2],
    frees=[[], [], [0], []], allocs=[[0], [], [1], [2]], aliases={2: 1})


def test_a_run_launches_in_order_with_its_buffers_and_gives_internal_buffers_back():
    runtime = FakeRuntime()
    inputs = [FakeBuffer(Raw(), 16, runtime), FakeBuffer(Raw(), 16, runtime)]
    executable = Executable(PROGRAM, ["K0", None, "K2", "K3"], runtime)
    output, written = executable.run(runtime, inputs, [(7, 11)])
    (k0, _, (x, internal)), (k2, _, (source, seed, offset, out)), (k3, _, (result, target)) = runtime.launches
    assert (k0, k2, k3) == ("K0", "K2", "K3") and x is inputs[0].raw
    assert source is internal and out is result is output.raw and target is inputs[1].raw and written is inputs[1]
    assert (seed, offset) == (7, 11) and type(seed) is np.uint64
    pool = runtime.pool
    assert pool.free_list(1024) == [internal] and pool.current_bytes == 256  # the output is held
    assert pool.peak_bytes == 1024 + 256  # both held while "b" runs, in their size classes
    executable.run(runtime, inputs, [(7, 11)])
    assert runtime.launches[3][2][1] is internal  # the next run takes the same buffer again


def test_a_launch_that_raises_gives_the_internal_buffers_back():
    runtime = FakeRuntime(fail_at="K2")
    inputs = [FakeBuffer(Raw(), 16, runtime), FakeBuffer(Raw(), 16, runtime)]
    executable = Executable(PROGRAM, ["K0", None, "K2", "K3"], runtime)
    with pytest.raises(RuntimeError, match="K2 failed"):
        executable.run(runtime, inputs, [(7, 11)])
    (_, _, (_, internal)), = runtime.launches
    assert runtime.pool.free_list(1024) == [internal]
    assert runtime.pool.current_bytes == 0 and runtime.pool.pool_bytes == 1024 + 256  # the output died too


def test_the_gate_runs_before_the_first_launch_writing_an_input_in_place_and_stops_the_run_when_it_raises():
    """A replay's index checks (the gate) are read once the launches computing new buffers are queued: a failing
    one raises before the launch that overwrites input 1 ("c") is enqueued, and the internal buffers go back."""
    runtime = FakeRuntime()
    inputs = [FakeBuffer(Raw(), 16, runtime), FakeBuffer(Raw(), 16, runtime)]
    executable = Executable(PROGRAM, ["K0", None, "K2", "K3"], runtime)
    seen = []
    executable.run(runtime, inputs, [(7, 11)], gate=lambda: seen.append([k for k, _, _ in runtime.launches]))
    assert seen == [["K0", "K2"]] and [k for k, _, _ in runtime.launches] == ["K0", "K2", "K3"]

    def failing():
        raise IndexError("index 9 is out of bounds")
    runtime.launches.clear()
    with pytest.raises(IndexError, match="index 9"):
        executable.run(runtime, inputs, [(7, 11)], gate=failing)
    assert [k for k, _, _ in runtime.launches] == ["K0", "K2"]
    assert runtime.pool.current_bytes == 0 and runtime.pool.free_list(1024) == [runtime.launches[0][2][1]]


def test_a_run_writing_no_input_in_place_calls_its_gate_after_its_last_launch():
    runtime = FakeRuntime()
    executable = Executable(SHARED_SIZE, ["A", "B", "C", "D"], runtime)
    seen = []
    executable.run(runtime, [FakeBuffer(Raw(), 16, runtime)], [], gate=lambda: seen.append(len(runtime.launches)))
    assert seen == [4]


# two internal slots and two outputs, all of one size class, the internal ones given back in the order they were taken
SHARED_SIZE = Program(
    launches=[launch("a", 4, ("input", 0), ("slot", 0)), launch("b", 4, ("slot", 0), ("slot", 1)),
              launch("c", 4, ("slot", 1), ("slot", 2)), launch("d", 4, ("slot", 0), ("slot", 2), ("slot", 3))],
    slot_bytes=[100, 100, 100, 100], outputs=[2, 3],
    frees=[[], [], [1], [0]], allocs=[[0], [1], [2], [3]], aliases={})


@pytest.mark.parametrize("release_order", [(0, 1), (1, 0)])
def test_every_run_takes_the_same_buffers_for_the_same_slots(release_order):
    # whatever order the last run's frees and its outputs' releases left the free list in: a replay then passes its
    # kernels the arguments they hold already
    runtime = FakeRuntime()
    inputs = [FakeBuffer(Raw(), 16, runtime)]
    executable = Executable(SHARED_SIZE, ["A", "B", "C", "D"], runtime)
    arguments = []
    for _ in range(4):
        runtime.launches.clear()
        outputs = executable.run(runtime, inputs, [])
        arguments.append([args for _, _, args in runtime.launches])
        for position in release_order:
            outputs[position] = None
    assert len({id(raw) for args in arguments[1] for raw in args}) == 4  # the input and three of the pool's
    assert all(all(a is b for a, b in zip(sum(run, ()), sum(arguments[1], ()))) for run in arguments[2:])


def test_a_buffer_released_while_a_run_settles_its_free_list_is_neither_lost_nor_listed_twice():
    """A tensor's finalizer may release a buffer in the middle of the run's settling line (the garbage collector
    runs between bytecodes): the line takes buffers off the list one by one, so the released one stays listed."""
    from zyx.runtime.run_code import _settle

    class Interrupted(list):
        released = False

        def pop(self, *args):
            value = super().pop(*args)
            if not self.released:
                self.released = True
                self.append("released")
            return value

    free = Interrupted(["a", "b", "c", "d"])
    exec(_settle(8, 3), {"s8": free})  # noqa: S102 - the generated line itself
    assert sorted(free) == ["a", "b", "c", "d", "released"]


# internal slots 0 and 1 (1000 bytes each; 0 is given back after "b", before 2 is taken) and output slot 3
ARENA_PROGRAM = Program(
    launches=[launch("a", 4, ("input", 0), ("slot", 0)), launch("b", 4, ("slot", 0), ("slot", 1)),
              launch("c", 4, ("slot", 1), ("slot", 2)), launch("d", 4, ("slot", 2), ("slot", 3))],
    slot_bytes=[1000, 1000, 1000, 16], outputs=[3],
    frees=[[], [0], [1], [2]], allocs=[[0], [1], [2], [3]], aliases={})


def test_an_arena_holds_the_internal_slots_peak_and_its_runs_take_only_their_outputs_from_the_pool():
    runtime = FakeRuntime()
    inputs = [FakeBuffer(Raw(), 16, runtime)]
    executable = Executable(ARENA_PROGRAM, ["A", "B", "C", "D"], runtime)
    assert executable.arena_sizes == [1024, 1024]  # slot 2 takes the buffer slot 0 gave back
    arena = runtime.pool.arena(executable.arena_sizes)
    runs = []
    for _ in range(3):
        runtime.launches.clear()
        (output,) = executable.run(runtime, inputs, [], arena=arena)
        runs.append([args for _, _, args in runtime.launches])
        assert runtime.pool.current_bytes == 2048 + 256 and runtime.pool.reserved_bytes == 2048
        assert runtime.pool.free_list(1024) == []  # the arena's buffers never pass through the free list
        del output
    (_, (x, first)), (_, (a, second)), (_, (b, third)), (_, (c, out)) = [(None, args) for args in runs[0]]
    assert x is inputs[0].raw and a is first and b is second and c is third is first and second is not first
    assert [first, second] == arena.buffers
    assert all(all(p is q for p, q in zip(sum(run[:3], ()), sum(runs[0][:3], ()))) for run in runs[1:])
    del arena
    assert runtime.pool.reserved_bytes == 0 and runtime.pool.free_list(1024) == [first, second]


def test_an_arena_keeps_large_buffers_for_large_slots():
    """A small slot taking the large buffer a large slot gave back would make the next large slot allocate again:
    4096 + 4096 bytes where 4096 + 256 do (of the caps tried, the plan with the fewest bytes is kept)."""
    program = SimpleNamespace(slot_bytes=[4096, 256, 4096], allocs=[[0], [1], [2]], frees=[[0], [], [1, 2]])
    numbers, sizes = arena_plan(program, {0, 1, 2}, lambda n: n)
    assert sorted(sizes) == [256, 4096] and numbers[2] == numbers[0] != numbers[1]
    assert sum(_arena_plan(program, {0, 1, 2}, lambda n: n, math.inf)[1]) == 8192  # the smallest that fits, uncapped


def test_arenas_past_the_pools_budget_are_refused():
    runtime = FakeRuntime()
    runtime.pool.arena_budget = 3000
    kept = runtime.pool.arena([1024, 1024])
    assert kept is not None and runtime.pool.arena([1024]) is None and runtime.pool.arena([512]) is not None


class OwnKernel:
    """A bound run's kernel of its own: the arguments it holds, and how many were set."""

    def __init__(self, name):
        self.name, self.held, self.sets = name, {}, 0

    def set_arg(self, index, value):
        self.held[index], self.sets = value, self.sets + 1


class BindingRuntime(FakeRuntime):
    """A runtime giving runs kernels of their own (OpenCL's `own_kernel`): `enqueue` records each launch with the
    arguments its kernel holds then."""

    def __init__(self):
        super().__init__()
        self.own = []

    def own_kernel(self, kernel):
        self.own.append(OwnKernel(kernel))
        return self.own[-1]

    def held_arguments(self, uses):
        from zyx.runtime.run_code import HeldArguments
        self.held = HeldArguments(uses)
        return self.held

    def launcher(self, timed):
        launch = super().launcher(timed)

        def enqueue(kernel, global_size, local_size):
            self.launches.append((kernel.name, global_size, tuple(kernel.held[i] for i in range(len(kernel.held)))))
        launch.enqueue = enqueue
        return launch


def unbound_run(inputs, rand_args, gate, launch):
    raise AssertionError("a bound run handed its call over")


def test_a_bound_run_launches_its_own_kernels_setting_only_the_arguments_that_changed():
    runtime = BindingRuntime()
    executable = Executable(PROGRAM, ["K0", None, "K2", "K3"], runtime)
    arena = runtime.pool.arena(executable.arena_sizes)
    bound = executable.bound_run(runtime, arena, unbound_run)
    first = [FakeBuffer(Raw(), 16, runtime), FakeBuffer(Raw(), 16, runtime)]
    second = [FakeBuffer(Raw(), 16, runtime), first[1]]  # a new input 0 (a new batch), the same input 1
    sets = []
    for inputs, (seed, offset) in [(first, (7, 11)), (first, (8, 12)), (second, (9, 13))]:
        runtime.launches.clear()
        before = sum(kernel.sets for kernel in runtime.own)
        output, written = bound(inputs, [(seed, offset)], None, runtime.launcher(False))
        sets.append(sum(kernel.sets for kernel in runtime.own) - before)
        (internal,) = arena.buffers
        (k0, _, (x, a)), (k2, _, (b, s, f, out)), (k3, _, (result, target)) = runtime.launches
        assert (k0, k2, k3) == ("K0", "K2", "K3") and written is inputs[1]
        assert x is inputs[0].raw and a is b is internal and out is result is output.raw and target is inputs[1].raw
        assert (s, f) == (seed, offset) and type(s) is np.uint64
        del output, written  # (the next call's output takes its buffer back)
    # all 8 arguments; then only the seeds; then the seeds and the new input's one use
    assert sets == [8, 2, 3]


def test_a_run_with_internal_buffers_from_the_pool_is_not_bound():
    runtime = BindingRuntime()
    executable = Executable(PROGRAM, ["K0", None, "K2", "K3"], runtime)
    assert executable.bound_run(runtime, None, unbound_run) is None  # its internal slot's name holds no buffer at the launches
    assert executable.bound_run(runtime, runtime.pool.arena(executable.arena_sizes), unbound_run) is not None


def test_a_bound_run_sets_every_argument_again_once_its_arguments_are_forgotten():
    """What the OpenCL runtime does when its pool trims (the held buffers may be freed, the arena is given back):
    the next run sets them all, on the arena's buffers taken again."""
    runtime = BindingRuntime()
    executable = Executable(ARENA_PROGRAM, ["A", "B", "C", "D"], runtime)
    arena = runtime.pool.arena(executable.arena_sizes)
    bound = executable.bound_run(runtime, arena, unbound_run)
    inputs = [FakeBuffer(Raw(), 16, runtime)]
    counts = []
    for trimmed in (False, False, True):
        if trimmed:
            arena.release()
            runtime.held.now = None
        before = sum(kernel.sets for kernel in runtime.own)
        bound(inputs, [], None, runtime.launcher(False))
        counts.append(sum(kernel.sets for kernel in runtime.own) - before)
        *_, (_, _, (last_internal, _)) = runtime.launches
        assert last_internal is arena.buffers[0]
    assert counts == [8, 0, 8]


def test_a_bound_run_hands_a_call_whose_launch_function_has_no_enqueue_to_the_plain_run():
    """A profiler's or a recorder's launch function sees each launch with its arguments (and None: `run`'s own)."""
    runtime = BindingRuntime()
    executable = Executable(ARENA_PROGRAM, ["A", "B", "C", "D"], runtime)
    handed = []
    bound = executable.bound_run(runtime, runtime.pool.arena(executable.arena_sizes),
                                 lambda *call: handed.append(call) or ["plain"])
    inputs = [FakeBuffer(Raw(), 16, runtime)]
    recorder = FakeRuntime.launcher(runtime, False)
    assert bound(inputs, [], None, recorder) == ["plain"] and bound(inputs, [], None, None) == ["plain"]
    assert [call[3] for call in handed] == [recorder, None] and runtime.own and not runtime.launches


# a replay's index check (target 2, slot 0) computed first, then an output (slot 1) and its update of input 1 in place
CHECKED = Program(
    launches=[launch("check", 1, ("input", 0), ("slot", 0)), launch("a", 4, ("input", 0), ("slot", 1)),
              launch("w", 4, ("slot", 1), ("slot", 2))],
    slot_bytes=[16, 100, 16], outputs=[1, 2, 0], frees=[[], [], []], allocs=[[0], [1], [2]], aliases={2: 1},
    checks=[2])


@pytest.mark.parametrize("bound", [False, True])
def test_a_run_hands_its_gate_the_checks_raw_buffers_behind_their_launch_then_waits_before_writing_in_place(bound):
    """The gate gets the check's buffer (an internal one: the arena's where there is one) right after the launch
    computing it, and what it returns is called before the launch writing input 1; the run returns None for it.
    A failing check raises there, before that launch, and the check's buffer is no one's output."""
    runtime = BindingRuntime()
    executable = Executable(CHECKED, ["K0", "K1", "K2"], runtime)
    arena = runtime.pool.arena(executable.arena_sizes) if bound else None
    run = (executable.bound_run(runtime, arena, unbound_run) if bound
           else lambda inputs, rands, gate, launch: executable.run(runtime, inputs, rands, gate=gate))
    inputs = [FakeBuffer(Raw(), 16, runtime), FakeBuffer(Raw(), 16, runtime)]
    seen = []

    def gate(extremes, fail=False):
        seen.append(("read", extremes, [k for k, _, _ in runtime.launches]))

        def wait():
            seen.append(("wait", [k for k, _, _ in runtime.launches]))
            if fail:
                raise IndexError("index 9 is out of bounds")
        return wait
    output, written, check = run(inputs, [], gate, runtime.launcher(False))
    (_, _, (_, extremes)), *_ = runtime.launches
    assert seen == [("read", extremes, ["K0"]), ("wait", ["K0", "K1"])]
    assert check is None and written is inputs[1] and output.raw is runtime.launches[1][2][1]
    assert (extremes in arena.buffers) if bound else (runtime.pool.free_list(256) == [extremes])
    runtime.launches.clear()
    with pytest.raises(IndexError, match="index 9"):
        run(inputs, [], functools.partial(gate, fail=True), runtime.launcher(False))
    assert [k for k, _, _ in runtime.launches] == ["K0", "K1"]
