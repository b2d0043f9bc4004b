"""Autotuning: search the shapes one kernel may take on the device, keep the fastest that computes the same values.

Modes, from ZYX_TUNE (`@zyx.jit(tune=True)` and `zyx tune script.py` ask for at least 1):
  0  no search (the default): the heuristics, and the winners stored for this device
  1  search each newly scheduled kernel whose untuned time exceeds threshold_seconds (1 ms; 50 us on GPUs), over the
     heuristics' choice and its neighbours (each parameter one allowed value up or down, halved or doubled): the
     NEIGHBOURS nearest
  2  search every newly scheduled kernel over every choice its options allow (minutes per kernel on PoCL); a GPU
     product's in two stages (STAGES)

A kernel is searched in isolation (`Isolated`): the part of the trace it computes, cut where the full program
reads memory (the buffers, and every value another kernel stores), scheduled on its own with each candidate forced
on it (`TunedChoices.with_choice`) and run on scratch inputs of random values. So a candidate that changes the
kernels around it (a CPU product's tile changes how its operands are packed) is timed with them. Each candidate
is printed and compiled, run once and checked against the heuristics' outputs (one that differs is rejected),
then timed in pairs: a sample of it right after a sample of the heuristics' kernel, so both meet the same load
(on a shared machine the load can change tenfold within seconds), and its time relative to the heuristics' is
the median of the pairs' ratios. One clearly slower after its first pair is cut there; the few fastest get more
pairs. The winner is stored (tune_store.py) only if it beat the heuristics' kernel in every pair, by MIN_GAIN in
the median; else the heuristics' choice is, so the kernel is not searched again. Then the winners of a step's
searches are timed in the step (`Tuner.kept_in_step`): those that leave it no faster are stored as searched, the
heuristics' choice kept.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pyopencl as cl

from ..counters import bump
from ..debug import logger
from ..runtime.execute import Executable
from ..runtime.replay import record_launches, replay
from ..trace.hashing import signature
from ..trace.node import Node, buffer_leaf
from ..trace.ops import Op
from .build_processes import compile_threads, kept_children
from .cache import default_cache, device_fingerprint
from .choices import Choice, TunedChoices, TuneSite
from .compiler import KernelBuildError, kernel_options
from .cpu_matmul import fits_registers
from .kernel_ir import RenderedKernel
from .matmul import feasible
from .tensor_cores import feasible_on_tensor_cores
from .program import Program, build_program
from .device_traits import DeviceTraits
from .schedule import plain_effect, schedule
from .tune_store import Trial, TuneRecord, TuningStore, default_tuning_store
from .tuning_mode import threshold_seconds

NEIGHBOURS = 9          # candidates of a ZYX_TUNE=1 search, the heuristics' included
EXHAUSTIVE_LIMIT = 128  # candidates of a ZYX_TUNE=2 search (the nearest to the heuristics, where there are more;
                        # a GPU product with few blocks has 114 on the H200: matmul.feasible, split.split_options)
CUT = 1.5               # a candidate whose first pair says it is this much slower than the heuristics' is cut,
CUT_OVER_BEST = 1.3     # or this much slower than the fastest so far (a 5% gain is what a search keeps)
PAIRS = 3               # pairs of samples (the heuristics' kernel, then the candidate) per candidate
SAMPLE_SECONDS = 0.01   # a sample replays the kernel's launches for at least this long
CONFIRM = 3             # the fastest few get ...
CONFIRM_PAIRS = 3       # ... this many pairs more
MIN_GAIN = 0.05         # a winner must be this much faster than the heuristics' kernel (else it may be noise)
TOLERANCE = {"float16": 1e-2, "bfloat16": 3e-2, "float32": 1e-3, "float64": 1e-8}
"""Relative tolerance per output dtype: candidates sum in other orders (integers and bools must be equal)."""
COMPARED_CHUNK = 1 << 22  # elements of an output compared at once with its reference (`_same_values`)

FEASIBLE: dict[str, Callable[[Choice, DeviceTraits], bool]] = {
    "cpu_matmul": lambda choice, traits: fits_registers(choice),
    "local_tiles": lambda choice, traits: feasible(choice, traits.search_local_memory, traits.max_group_size),
    "plain": lambda choice, traits: choice.get("tile_n", 1) * choice.get("tile_m", 1) <= 64,
    "tensor_cores": lambda choice, traits: feasible_on_tensor_cores(choice, traits.tensor_core_local_memory),
}
"""Per family, whether a combination of allowed values is worth compiling (registers, local memory)."""
STAGES = {"local_tiles": ("block", "per_item", "split", "wide")}
"""Families ZYX_TUNE=2 searches in two stages, by the parameters of the first: what shapes the work (blocks and
work groups) first, the other parameters (how slices of k are staged) then only around the FINALISTS fastest
shapes. On the H200 that is about 60 candidates of a float32 product instead of every one of 200."""
FINALISTS = 3
EFFECT = {"plain": plain_effect}
"""Per family, the parameters of a choice that shape the kernel (others are ignored: no two candidates alike)."""


# ---- candidates --------------------------------------------------------------------------------------------

def candidates(site: TuneSite, traits: DeviceTraits, mode: int, finalist: Optional[Choice] = None) -> list[Choice]:
    """The heuristics' choice first, then the others a search of `mode` tries, nearest first: mode 1 each
    parameter at or around its heuristic value (`_around`); mode 2 every value, and for a family of STAGES in two
    stages: first one choice per combination of the first stage's parameters (the nearest to the heuristics'),
    then (`finalist`: one of the first stage's fastest) every choice sharing the finalist's first-stage values."""
    heuristic = dict(site.heuristic.values)
    names = [name for name, _ in site.options]
    if mode >= 2:
        values = [allowed for _, allowed in site.options]
    else:
        values = [_around(allowed, heuristic[name]) for name, allowed in site.options]
    family = site.heuristic.family
    effect = EFFECT.get(family, lambda choice: choice.values)
    found = [Choice.of(family, **dict(zip(names, combination))) for combination in itertools.product(*values)]
    found = sorted((c for c in found if FEASIBLE[family](c, traits)), key=lambda c: _distance(c, heuristic))
    first = STAGES.get(family, ()) if mode >= 2 else ()
    if first and finalist is not None:
        found = [c for c in found if all(c[name] == finalist[name] for name in first)]
    elif first:  # (the nearest per combination of the first stage's parameters)
        nearest: dict[tuple[int, ...], Choice] = {}
        for choice in found:
            nearest.setdefault(tuple(choice[name] for name in first), choice)
        found = list(nearest.values())
    distinct = {effect(site.heuristic): site.heuristic}
    for choice in found:  # (the nearest of the choices that shape the kernel alike)
        distinct.setdefault(effect(choice), choice)
    return list(distinct.values())[:NEIGHBOURS if mode < 2 else EXHAUSTIVE_LIMIT]


def _around(allowed: Sequence[int], value: int) -> list[int]:
    """`value`, the allowed values next to it, and it halved and doubled (the nearest allowed values on a log
    scale). Where 0 is allowed it means "none" (no work groups): the neighbours of any value include it, and
    those of 0 the middle value."""
    positive = [a for a in allowed if a > 0]
    if value == 0:
        return [0, positive[len(positive) // 2]]
    index = positive.index(value)
    near = {min(positive, key=lambda a: (abs(math.log2(a / target)), a)) for target in (value / 2, value * 2)}
    return sorted(near | set(positive[max(index - 1, 0):index + 2]) | ({0} if 0 in allowed else set()))


def _distance(choice: Choice, heuristic: dict[str, int]) -> tuple[int, float]:
    """How many parameters differ from the heuristics', then by how many doublings."""
    changed = [(value, heuristic[name]) for name, value in choice.values if value != heuristic[name]]
    return len(changed), sum(abs(math.log2(max(a, 1) / max(b, 1))) or 1.0 for a, b in changed)


# ---- a kernel on its own -----------------------------------------------------------------------------------

@dataclass
class Isolated:
    """The part of a trace one kernel computes, cut where the full program reads memory: its outputs rebuilt
    over fresh leaves (one per buffer or value another kernel stores), and scratch inputs of random values."""

    targets: list[Node]
    leaves: list[Node]
    rands: list[Node]
    inputs: list[Any]

    @staticmethod
    def cut(kernel: RenderedKernel, stored: set[int], upload: Callable[[np.ndarray], Any],
            rng: np.random.Generator) -> "Isolated":
        """`stored`: ids of every node a kernel of the full program stores."""
        own = {id(node) for node in kernel.outputs}
        copies: dict[int, Node] = {}
        stack: list[tuple[Node, bool]] = [(node, False) for node in kernel.outputs]
        while stack:
            node, sources_done = stack.pop()
            if id(node) in copies:
                continue
            if node.op is Op.BUFFER or (id(node) in stored and id(node) not in own):
                copies[id(node)] = buffer_leaf(None, node.shape, node.dtype, node.device)
            elif sources_done:
                copies[id(node)] = Node(node.op, tuple(copies[id(s)] for s in node.src), node.arg, node.shape,
                                        node.dtype, node.device)
            else:
                stack.append((node, True))
                stack.extend((source, False) for source in node.src if id(source) not in copies)
        targets = [copies[id(node)] for node in kernel.outputs]
        _, leaves, rands = signature(targets)
        return Isolated(targets, leaves, rands, [upload(_random(leaf, rng)) for leaf in leaves])


def _random(node: Node, rng: np.random.Generator) -> np.ndarray:
    """Values for a scratch input: normal floats, small integers, random bools (indices never address memory in
    zyx kernels, so any values are safe)."""
    dtype = node.dtype
    if dtype.is_float:
        return rng.standard_normal(node.shape, dtype=np.float32).astype(dtype.np)
    if dtype.is_bool:
        return rng.random(node.shape) < 0.5
    return rng.integers(0, 4, node.shape).astype(dtype.np)


@dataclass
class _Candidate:
    """A candidate's program once it ran: its launches (to replay), outputs, and best time so far."""

    choice: Optional[Choice]  # None: a whole step's program (Tuner.kept_in_step)
    launches: list[tuple] = field(default_factory=list)
    seconds: Optional[float] = None  # its fastest sample
    ratios: list[float] = field(default_factory=list)  # its samples over the heuristics' kernel's, pair by pair
    status: str = "ok"
    name: str = ""
    twin: Optional["_Candidate"] = None  # an earlier candidate making the same kernels: it ran for both

    @property
    def relative(self) -> float:
        """Its time relative to the heuristics' kernel: the median ratio of its pairs (1 for that kernel)."""
        return statistics.median(self.ratios) if self.ratios else 1.0

    def trial(self) -> Trial:
        """What the record keeps of it: its twin's outcome where it has one, as it stands after every pair."""
        ran = self.twin or self
        return Trial(self.choice, ran.seconds, ran.status, ran.relative if ran.ratios else None)


class Tuner:
    """Searches kernels on one OpenCL runtime and stores the winners (see the module docstring)."""

    def __init__(self, runtime: Any, traits: DeviceTraits, store: Optional[TuningStore] = None):
        self.runtime, self.traits = runtime, traits
        self.store = store or default_tuning_store()
        self.device = device_fingerprint(runtime.device)
        self._searched: set[str] = set()
        self._log = logger("zyx.tune")

    def search(self, kernels: Sequence[RenderedKernel], tuned: TunedChoices, mode: int) -> list[TuneRecord]:
        """Search each kernel of a schedule that `mode` asks for and no record of at least that mode holds;
        return the new records (stored already)."""
        stored = {id(node) for kernel in kernels for node in kernel.outputs}
        records = []
        with kept_children(self.runtime.device):  # (child processes building candidates, kept from kernel to kernel)
            for kernel in kernels:
                tuned = self._search_kernel(kernel, stored, tuned, mode, records)
        return records

    def _search_kernel(self, kernel: RenderedKernel, stored: set[int], tuned: TunedChoices, mode: int,
                       records: list[TuneRecord]) -> TunedChoices:
        """Search one kernel unless searched or recorded already; its record added to `records`; the tuned choices
        with its winner."""
        site = kernel.site
        if site is None or site.key in self._searched or kernel.global_size == 0:
            return tuned
        self._searched.add(site.key)
        known = self.store.get(site.key, self.device)
        if known is not None and known.mode >= mode:
            return tuned
        record = self._search(kernel, site, stored, tuned, mode)
        if record is None:
            return tuned
        self.store.put(record)
        records.append(record)
        return tuned.with_choice(site.key, record.choice) if record.improves else tuned

    def kept_in_step(self, program_with: Callable[[TunedChoices], Program], before: TunedChoices,
                     winners: list[TuneRecord], leaves: Sequence[Node], rands: Sequence[Node]) -> list[TuneRecord]:
        """The winners of a step's searches that make the whole step faster (its program, every kernel and launch,
        on scratch inputs; `program_with`: the step's program with some tuned choices): all of them, else those
        that add no launches (a split product's partials take a kernel of their own: faster alone, it may not pay
        for its launch in the step), else none. The others are stored as searched, the heuristics' choice kept,
        so a winner is one in its step and not only on its own."""
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        inputs = [self.runtime.upload(_random(leaf, rng)) for leaf in leaves]
        untuned = _Candidate(None)
        untuned.launches = self._launches(program_with(before), inputs, rands)[1]
        self._time(untuned, untuned)

        def faster(records: list[TuneRecord]) -> bool:
            tuned = before
            for record in records:
                tuned = tuned.with_choice(record.kernel, record.choice)
            step = _Candidate(None)
            step.launches = self._launches(program_with(tuned), inputs, rands)[1]
            self._time(step, untuned, pairs=PAIRS + CONFIRM_PAIRS)
            self._log.info("tuning a step: %d of %d winners, %.2fx the untuned step (%d launches against %d)",
                           len(records), len(winners), 1 / step.relative, len(step.launches), len(untuned.launches))
            return step.relative < 1 - MIN_GAIN and max(step.ratios) < 1

        kept: list[TuneRecord] = winners if faster(winners) else []
        if not kept:
            plain = [r for r in winners
                     if len(program_with(before.with_choice(r.kernel, r.choice)).launches) <= len(untuned.launches)]
            kept = plain if 0 < len(plain) < len(winners) and faster(plain) else []
        for record in winners:
            if record not in kept:
                self.store.put(record.kept_heuristic())
        self._log.info("tuning a step: kept %d of %d winners in %.1f s", len(kept), len(winners),
                       time.perf_counter() - start)
        return kept

    def _search(self, kernel: RenderedKernel, site: TuneSite, stored: set[int], tuned: TunedChoices,
                mode: int) -> Optional[TuneRecord]:
        """The heuristics' kernel first (its outputs are the reference; under ZYX_TUNE=1 a kernel faster than
        its threshold_seconds ends the search there), then every other candidate, built side by side; for a
        family of STAGES, the second stage's candidates around the first stage's fastest."""
        start = time.perf_counter()
        isolated = Isolated.cut(kernel, stored, self.runtime.upload, np.random.default_rng(0))
        trials = [_Candidate(choice) for choice in candidates(site, self.traits, mode)]
        untuned = trials[0]
        program = self._program(isolated, site, tuned.with_choice(site.key, untuned.choice), untuned)
        reference = self._run(isolated, program, untuned) if program is not None else None
        if reference is None:
            return None  # the heuristics' kernel fails in isolation: nothing to compare with
        self._time(untuned, untuned)
        threshold = threshold_seconds(self.traits)
        if mode == 1 and untuned.seconds < threshold:  # type: ignore[operator]
            self._log.info("tuning %s: %.3f ms, under the %g ms threshold: not searched", site.name,
                           untuned.seconds * 1e3, threshold * 1e3)  # type: ignore[operator]
            return None
        runs = {_sources(program): untuned}  # by the sources of their launches: choices printing alike
        self._try(isolated, site, tuned, trials[1:], reference, runs)
        if mode >= 2 and site.heuristic.family in STAGES:
            finalists = [untuned] + sorted((t for t in trials[1:] if t.twin is None and t.status == "ok"),
                                           key=lambda t: t.relative)[:FINALISTS]
            tried = {t.choice for t in trials}
            around = [choice for f in finalists for choice in candidates(site, self.traits, mode, f.choice)]
            second = [_Candidate(choice) for choice in dict.fromkeys(around) if choice not in tried]
            self._try(isolated, site, tuned, second, reference, runs)
            trials += second
        return self._verdict(site, trials, mode, time.perf_counter() - start)

    def _try(self, isolated: Isolated, site: TuneSite, tuned: TunedChoices, trials: list[_Candidate],
             reference: list[np.ndarray], runs: dict[tuple[str, ...], _Candidate]) -> None:
        """Build `trials` side by side, run each once against the reference values and time those that match
        (`runs`: the candidates run so far, by their kernels' sources: one printing alike is their twin)."""
        untuned = next(iter(runs.values()))
        start = time.perf_counter()
        programs = [self._program(isolated, site, tuned.with_choice(site.key, t.choice), t) for t in trials]
        self._build_all([launch.source for program in programs if program for launch in program.launches])
        self._log.info("tuning %s: %d candidates scheduled and built in %.1f s", site.name, len(trials),
                       time.perf_counter() - start)
        for candidate, program in zip(trials, programs):
            if program is None:
                continue
            earlier = runs.setdefault(_sources(program), candidate)
            if earlier is not candidate:  # the same kernels as an earlier candidate: its outcome
                candidate.twin = earlier
                continue
            outputs = self._run(isolated, program, candidate)
            if outputs is None:
                continue
            if not _same_values(outputs, reference, isolated.targets):
                candidate.status = "wrong"
                self._log.warning("tuning %s: %s computes other values than the heuristics' kernel; rejected",
                                  site.name, candidate.choice.describe())
                continue
            self._time(candidate, untuned, min([1.0] + [t.relative for t in runs.values() if t.ratios]))

    def _build_all(self, sources: list[str]) -> None:
        """Build the candidates' kernels side by side (the driver compiles without the GIL). Where one fails,
        each is built again alone when it runs (`_run`), so that only that candidate fails."""
        try:
            default_cache().build_many(self.runtime.context, self.runtime.device, list(dict.fromkeys(sources)),
                                       kernel_options(self.traits, self.runtime))
        except (KernelBuildError, cl.Error):
            self._log.info("tuning: a candidate failed to build; building them one by one")

    def _program(self, isolated: Isolated, site: TuneSite, tuned: TunedChoices,
                 candidate: _Candidate) -> Optional[Program]:
        """The isolated trace scheduled with the candidate forced on the kernel; None (status "failed") when the
        kernel cannot take it there."""
        kernels, targets = schedule(isolated.targets, self.traits, tuned)
        found = [k for k in kernels if k.site is not None and k.site.key == site.key]
        if len(found) != 1 or found[0].site.applied != candidate.choice:  # type: ignore[union-attr]
            candidate.status = "failed"
            return None
        candidate.name = found[0].name
        return build_program(kernels, targets, isolated.leaves, isolated.rands)

    def _run(self, isolated: Isolated, program: Program, candidate: _Candidate) -> Optional[list[np.ndarray]]:
        """Compile and run the candidate's program once, recording its launches; its outputs on the host."""
        try:
            outputs, candidate.launches = self._launches(program, isolated.inputs, isolated.rands)
            return [self.runtime.download(buffer, node.shape, node.dtype.np)
                    for buffer, node in zip(outputs, isolated.targets)]
        except (KernelBuildError, cl.Error) as error:
            candidate.status = "failed"
            self._log.info("tuning: %s failed (%s)", candidate.choice.describe(), str(error).splitlines()[0])
            return None

    def _launches(self, program: Program, inputs: list[Any], rands: Sequence[Node]) -> tuple[list[Any], list[tuple]]:
        """Run `program` once on `inputs`: its output buffers and its launches (to replay)."""
        kernels = [self._compiled(launch.source, launch.name) if launch.global_size[0] else None
                   for launch in program.launches]
        executable = Executable(program, kernels, self.runtime)
        return record_launches(self.runtime, lambda: executable.run(self.runtime, inputs, [r.arg for r in rands]))

    def _compiled(self, source: str, name: str) -> cl.Kernel:
        """Through the kernel cache, which keeps it in memory: the winner is found there when the program runs
        (and stored on disk then); the others are never written."""
        return cl.Kernel(default_cache().build(self.runtime.context, self.runtime.device, source,
                                               kernel_options(self.traits, self.runtime)), name)

    def _time(self, candidate: _Candidate, untuned: _Candidate, best: float = 1.0, pairs: int = PAIRS) -> None:
        """`pairs` more pairs of samples (the heuristics' kernel's, then the candidate's); cut after the first pair
        if the candidate is CUT times slower than the heuristics' kernel or CUT_OVER_BEST times slower than the
        `best` so far (relative to that kernel). The heuristics' kernel itself gets plain samples."""
        if candidate is untuned:
            first = replay(self.runtime, untuned.launches, 1)
            untuned.seconds = min(_sample(self.runtime, untuned.launches, first) for _ in range(pairs))
            return
        for _ in range(pairs):
            reference = _sample(self.runtime, untuned.launches, untuned.seconds)  # type: ignore[arg-type]
            sample = _sample(self.runtime, candidate.launches, candidate.seconds or reference)
            untuned.seconds = min(untuned.seconds, reference)  # type: ignore[type-var]
            candidate.seconds = min(candidate.seconds or sample, sample)
            candidate.ratios.append(sample / reference)
            if candidate.ratios[0] > min(CUT, CUT_OVER_BEST * best):
                candidate.status = "cut"
                return

    def _verdict(self, site: TuneSite, trials: list[_Candidate], mode: int, seconds: float) -> Optional[TuneRecord]:
        """The record of the search: the fastest few get CONFIRM_PAIRS more pairs; the winner is the fastest of
        those faster than the heuristics' kernel in every pair and by MIN_GAIN in the median (`relative`): by
        chance, a candidate no faster wins all six pairs once in 64 searches."""
        untuned = trials[0]
        finalists = sorted((t for t in trials[1:] if t.twin is None and t.status == "ok"),
                           key=lambda t: t.relative)[:CONFIRM]
        for finalist in finalists:
            self._time(finalist, untuned, pairs=CONFIRM_PAIRS)
        faster = [t for t in finalists if t.relative < 1 - MIN_GAIN and max(t.ratios) < 1]
        best = min(faster, key=lambda t: t.relative, default=untuned)
        bump("kernels_tuned")
        record = TuneRecord(site.key, self.device, site.name, best.name, site.heuristic, best.choice,
                            untuned.seconds, best.seconds, best.relative,  # type: ignore[arg-type]
                            tuple(t.trial() for t in trials),
                            min(mode, 2), seconds, time.time())
        self._log.info("tuned %s in %.1f s: %s, %.2fx (%d candidates)", site.name, seconds, best.choice.describe(),
                       record.speedup, len(trials))
        return record


def _sources(program: Program) -> tuple[str, ...]:
    return tuple(launch.source for launch in program.launches)


def _sample(runtime: Any, launches: list[tuple], estimate: float) -> float:
    """Seconds per run of `launches`, replayed for about SAMPLE_SECONDS (`estimate`: about one run's time)."""
    return replay(runtime, launches, max(1, min(1000, math.ceil(SAMPLE_SECONDS / max(estimate, 1e-9)))))


def _same_values(outputs: list[np.ndarray], reference: list[np.ndarray], targets: list[Node]) -> bool:
    """Whether each output equals its reference (integers and bools) or is within TOLERANCE of it, relative to the
    value and to the reference's largest finite magnitude; compared COMPARED_CHUNK elements at a time, in float32
    (float64 for float64), the chunks on every core (numpy releases the GIL): W7's LM head (16384 x 50304 float32)
    compared whole in float64 took about 20 s a candidate on an H100's host, most of a 184 s search (on this
    project's 2-vCPU Xeon, 10.2 s for 10^8 elements, now 0.2 s)."""
    for out, ref, node in zip(outputs, reference, targets):
        tolerance = TOLERANCE.get(node.dtype.name)
        if tolerance is None:
            if not np.array_equal(out, ref):
                return False
            continue
        wide = np.float64 if node.dtype.name == "float64" else np.float32
        out, ref = out.reshape(-1), ref.reshape(-1)
        starts = range(0, ref.size, COMPARED_CHUNK)

        def largest(start: int) -> float:
            chunk = ref[start:start + COMPARED_CHUNK].astype(wide, copy=False)
            return float(np.max(np.abs(chunk), initial=0.0, where=np.isfinite(chunk)))

        def close(start: int) -> bool:
            piece = slice(start, start + COMPARED_CHUNK)
            return _close(out[piece].astype(wide, copy=False), ref[piece].astype(wide, copy=False), tolerance,
                          tolerance * scale)
        with concurrent.futures.ThreadPoolExecutor(min(len(starts), compile_threads()) or 1) as pool:
            scale = max([1.0, *pool.map(largest, starts)])
            if not all(pool.map(close, starts)):
                return False
    return True


def _close(out: np.ndarray, ref: np.ndarray, rtol: float, atol: float) -> bool:
    """np.allclose(out, ref, rtol, atol, equal_nan=True) in half the time: the bound first, the exceptions (equal
    infinities, NaN against NaN) only where it fails."""
    difference = np.subtract(out, ref)
    np.abs(difference, out=difference)
    bound = np.abs(ref)
    bound *= rtol
    bound += atol
    failed = ~(difference <= bound) | np.isinf(bound)  # (an infinite reference bounds nothing: equal or not)
    if not failed.any():
        return True
    out, ref = out[failed], ref[failed]
    return bool(np.all((out == ref) | (np.isnan(out) & np.isnan(ref))))
