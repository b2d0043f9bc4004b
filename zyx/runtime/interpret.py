"""Running a trace op by op through an array library: numpy for zyx.CPU(), torch for zyx.Torch().

`build` turns a trace into an InterpretedProgram: one step per node in topological order, each filling one
numbered slot, with a memory plan (a slot is dropped after its last reader; targets are kept). Buffers and
random streams are bound by position, in the order the structural hash numbers them, so one program serves
every trace of the same structure. `run` executes a program through an `ArrayLibrary`; `EVALUATE`, the
op-keyed table (as trace/autodiff.py's is for gradients), says which library method computes each op.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from ..trace.cost import buffer_bytes, total_flops
from ..trace.node import Node, short_name
from ..dtypes import float32
from ..trace.attention_grad import under_views
from ..trace.ops import BINARY_OPS, Op, SHIFT_OPS, UNARY_OPS
from . import fusions, profiling, softmax_fusion, view_chains
from .arrays import ArrayLibrary, Shape
from .foreach_groups import Groupable, sunk_order
from .memory_plan import frugal_order, late_updates, overwrites
from .steps import ALLOCATING, ELEMENTWISE, Fused, Step, roots, step_bytes


@dataclass
class InterpretedProgram:
    """Steps over slots, which slots to drop after each step, and in-place writes to inputs (jitted updates)."""

    steps: list[Step]
    outputs: list[int]                       # the slot of each target
    frees: list[list[int]]                   # slots dropped after each step
    writes: list[list[tuple[int, int]]]      # after each step: (slot, input) whose buffer the slot overwrites
    aliases: dict[int, int] = field(default_factory=dict)  # output slot -> the input it was written into
    name: str = ""                           # the trace structure's hash, where the program is cached by it
    evaluators: list[Any] = field(init=False)  # EVALUATE's entry for each step, looked up once
    kernel_count: int = field(init=False)  # steps the library computes (one library call or kernel each; views
    # and leaves aside)

    def __post_init__(self) -> None:
        self.evaluators = [EVALUATE.get(step.op) for step in self.steps]
        self.kernel_count = sum(step.computes for step in self.steps)

    @property
    def launch_count(self) -> int:
        """Library calls the program makes: one per computed step (an interpreter groups none)."""
        return self.kernel_count

    def stored(self) -> list[Step]:
        """The steps whose results take memory of their own, outputs included (what a device's limits check)."""
        kept = set(self.outputs)
        return [step for k, step in enumerate(self.steps) if step.op in ALLOCATING or k in kept]

    @property
    def planned_peak_bytes(self) -> int:
        """Most bytes of new arrays held at once, counting a view as its source's memory (inputs aside)."""
        root = roots(self.steps)
        end: dict[int, int] = {}  # root slot -> the step after which its memory is dropped
        for k, frees in enumerate(self.frees):
            for slot in frees:
                end[root[slot]] = max(end.get(root[slot], k), k)
        for slot in self.outputs:
            if slot not in self.aliases:
                end[root[slot]] = len(self.steps)
        dropped = [0] * (len(self.steps) + 1)
        for slot, k in end.items():
            dropped[k] += step_bytes(self.steps[slot])
        live = peak = 0
        for k, step in enumerate(self.steps):
            live += step_bytes(step) if root[k] == k else 0
            peak = max(peak, live)
            live -= dropped[k]
        return peak


def build(targets: Sequence[Node], order: Sequence[Node], optimize: bool = False,
          in_place: Sequence[tuple[int, int]] = (), groupable: Optional[Groupable] = None) -> InterpretedProgram:
    """The program computing `targets` (`order`: their toposort). `optimize`: a float SUM of a MUL read by
    nothing else becomes one CONTRACT step (of the MUL's operands, or their sources where they are expands
    nothing else reads), an elementwise op whose sources are all constant along some axes
    (broadcast: `x - 3`) is computed once along them and broadcast, any other reads its expanded sources
    unexpanded and lets the library broadcast them (`_broadcast_reads`), the steps run in `frugal_order`, an
    input's update where its write is due (`late_updates`), and elementwise steps write over dying sources
    (`overwrites`). `in_place`: (target index, input
    index) pairs whose target may overwrite the input's buffer once nothing reads the old value (the input
    must have the target's shape and dtype). `groupable` (with `optimize`): which steps a library computes in
    groups (`foreach_groups.py`), whose chains then run last, side by side (`sunk_order`)."""
    skipped, fused, order = _fusions(targets, order) if optimize else (set(), {}, order)
    terms = _summed_terms(targets, order)
    slot_of: dict[int, int] = {}
    steps: list[Step] = []
    constant: list[frozenset[int]] = []  # per slot: axes along which its value does not change
    counts = {Op.BUFFER: 0, Op.RAND: 0}
    for node in order:
        if id(node) in skipped:
            continue
        op, arg, sources = fused.get(id(node)) or (node.op, node.arg, node.src)
        if op in counts:
            arg, counts[op] = counts[op], counts[op] + 1
        slots = tuple(slot_of[id(s)] for s in sources)
        axes = _constant_axes(op, arg, node.shape, [(steps[s].shape, constant[s]) for s in slots]) if optimize \
            else frozenset()
        compact = None
        if axes and op in ELEMENTWISE and op is not Op.DETACH:
            compact = tuple((0, 1) if axis in axes else (0, size) for axis, size in enumerate(node.shape))
        elif optimize and op in ELEMENTWISE:
            slots = _broadcast_reads(steps, slots, node.shape)
        slot_of[id(node)] = len(steps)
        constant.append(axes)
        steps.append(Step(op, arg, node.shape, float32 if id(node) in terms else node.dtype, slots, compact))
    outputs = [slot_of[id(t)] for t in targets]
    if optimize:
        steps, outputs = view_chains.simplified(steps, outputs)
        steps, outputs = _reordered(steps, outputs, frugal_order(steps, set(outputs)))
        if groupable is not None:
            steps, outputs = _reordered(steps, outputs, sunk_order(steps, groupable))
        steps, outputs = _reordered(steps, outputs, late_updates(steps, outputs, in_place))
        steps = overwrites(steps, set(outputs))
    last_use = {slot: k for k, step in enumerate(steps) for slot in step.sources}
    writes: list[list[tuple[int, int]]] = [[] for _ in steps]
    aliases = _in_place_writes(steps, outputs, in_place, last_use, writes)
    written_at = {slot: k for k, pairs in enumerate(writes) for slot, _ in pairs}
    frees: list[list[int]] = [[] for _ in steps]
    kept = set(outputs) - set(aliases)
    for slot in range(len(steps)):
        if slot not in kept:
            frees[max(last_use.get(slot, slot), written_at.get(slot, -1))].append(slot)
    return InterpretedProgram(steps, outputs, frees, writes, aliases)


def _summed_terms(targets: Sequence[Node], order: Sequence[Node]) -> set[int]:
    """Half-precision values that sums add up (a product's terms): kept in float32, not rounded by their op, as a
    kernel's accumulation and PyTorch's products keep them. A maximum's terms are rounded: other ops compare
    them with the (rounded) maximum, as argmax does."""
    wanted = {id(t) for t in targets}
    terms = set()
    for node in order:
        if node.op is Op.SUM:
            term = under_views(node.src[0])
            if term.dtype.is_narrow_float and term.op in ELEMENTWISE and id(term) not in wanted:
                terms.add(id(term))
    return terms


def _broadcast_reads(steps: Sequence[Step], slots: tuple[int, ...], shape: Shape) -> tuple[int, ...]:
    """An elementwise step's sources with each EXPAND (of the step's rank) replaced by its source, which the
    library broadcasts, where the sources then still broadcast to the step's shape: `h + b` reads the bias as
    (1, n), `i == j` of a column and a row expanded to a matrix reads both unexpanded, and an expand nothing else
    reads is no step at all."""
    expanded = {s for s in slots if steps[s].op is Op.EXPAND and len(steps[steps[s].sources[0]].shape) == len(shape)}
    if not expanded:
        return slots
    read = tuple(steps[s].sources[0] if s in expanded else s for s in slots)
    return read if _broadcast_of([steps[s].shape for s in read]) == shape else slots


def _broadcast_of(shapes: Sequence[Shape]) -> Optional[Shape]:
    """The shape same-rank `shapes` broadcast to (each axis of size 1 or of the one other size), else None."""
    axes = []
    for sizes in zip(*shapes):
        others = set(sizes) - {1}
        if len(others) > 1:
            return None
        axes.append(others.pop() if others else 1)
    return tuple(axes)


def _reordered(steps: Sequence[Step], outputs: Sequence[int], order: Sequence[int]) -> tuple[list[Step], list[int]]:
    """The steps in `order` (old positions), slots renumbered to match."""
    position = {old: new for new, old in enumerate(order)}
    moved = [dataclasses.replace(steps[old], sources=tuple(position[s] for s in steps[old].sources)) for old in order]
    return moved, [position[slot] for slot in outputs]


def _constant_axes(op: Any, arg: Any, shape: Shape, sources: Sequence[tuple[Shape, frozenset[int]]]) -> frozenset[int]:
    """Axes (of size > 1) along which a step's value is constant, from its sources' (shape, constant axes)."""
    if op is Op.EXPAND:
        (source_shape, axes), = sources
        return axes | {axis for axis, (old, new) in enumerate(zip(source_shape, shape)) if old == 1 < new}
    if op is Op.PERMUTE:
        axes = sources[0][1]
        return frozenset(new for new, old in enumerate(arg) if old in axes)
    if op is Op.SHRINK:
        return frozenset(axis for axis in sources[0][1] if shape[axis] > 1)
    if op is Op.RESHAPE:  # followed only where the reshape just adds or drops axes of size 1
        source_shape, axes = sources[0]
        old = [axis for axis, size in enumerate(source_shape) if size != 1]
        new = [axis for axis, size in enumerate(shape) if size != 1]
        if [source_shape[a] for a in old] != [shape[a] for a in new]:
            return frozenset()
        return frozenset(n for o, n in zip(old, new) if o in axes)
    if op is Op.DETACH or op in ELEMENTWISE:
        return frozenset.intersection(*[axes for _, axes in sources])
    return frozenset()


def _fusions(targets: Sequence[Node], order: Sequence[Node]) -> tuple[set[int], dict[int, tuple[Any, Any, tuple]],
                                                                     Sequence[Node]]:
    """The nodes no step computes (ids), the nodes computed as a fused step: id -> (op, arg, sources), and the
    order to build the steps in (`order`, a fused step's sources before it).
    A float SUM of a MUL read by nothing else is a CONTRACT of the MUL's operands (of their sources where they are
    EXPANDs only such products read: the contraction broadcasts them), unless a factor is a constant; a float ADD of a NEG read by nothing else
    is a SUB; log_softmax, logsumexp and their gradients (`softmax_fusion.py`); and the elementwise chains of
    `fusions.py`.
    A target is always computed."""
    readers: dict[int, int] = {}
    for node in order:
        for src in node.src:
            readers[id(src)] = readers.get(id(src), 0) + 1
    wanted = {id(t) for t in targets}

    def only_here(node: Node, op: Op) -> bool:
        return node.op is op and readers[id(node)] == 1 and id(node) not in wanted

    sums = [node for node in order if node.op is Op.SUM and node.dtype.is_float and only_here(node.src[0], Op.MUL)
            and all(fusions.constant_of(factor) is None for factor in node.src[0].src)]  # sum(x * 3): a mul, a sum
    skipped = {id(node.src[0]) for node in sums}
    product_reads: dict[int, int] = {}  # EXPAND nodes those products read: how often
    for node in sums:
        for src in node.src[0].src:
            if src.op is Op.EXPAND and id(src) not in wanted:
                product_reads[id(src)] = product_reads.get(id(src), 0) + 1
    skipped |= {key for key, count in product_reads.items() if count == readers[key]}
    fused = {id(node): (Fused.CONTRACT, view_chains.contract_arg(node.arg, node.src[0].shape),
                        tuple(s.src[0] if id(s) in skipped else s for s in node.src[0].src)) for node in sums}
    order = softmax_fusion.fuse(order, readers, wanted, skipped, fused)  # (a row's library call rounds once)
    # half-precision results are rounded by each op (NumpyArrays.conform): a chain's fused step would round once
    wanted |= {id(node) for node in order if node.dtype.is_narrow_float and node.op in ELEMENTWISE
               and id(node) not in skipped}
    fusions.fuse(order, readers, wanted, skipped, fused)
    for node in order:
        if node.op is Op.ADD and node.dtype.is_float and id(node) not in fused and id(node) not in skipped:
            for position in (1, 0):
                negation, other = node.src[position], node.src[1 - position]
                if only_here(negation, Op.NEG) and other is not negation:
                    skipped.add(id(negation))
                    fused[id(node)] = (Fused.SUB, None, (other, negation.src[0]))
                    break
    return skipped, fused, order


def _in_place_writes(steps: Sequence[Step], outputs: Sequence[int], in_place: Sequence[tuple[int, int]],
                     last_use: dict[int, int], writes: list[list[tuple[int, int]]]) -> dict[int, int]:
    """Schedule each in-place write after the step computing the new value and after the last step reading
    the old one (through any view of it); returns output slot -> input position."""
    root = roots(steps)
    loads = {step.arg: k for k, step in enumerate(steps) if step.op is Op.BUFFER}
    aliases: dict[int, int] = {}
    for target_index, position in in_place:
        slot, load = outputs[target_index], loads.get(position)
        if load is None or slot in aliases or position in aliases.values() or steps[slot].op is Op.BUFFER:
            continue
        value, old = steps[slot], steps[load]
        if (value.shape, value.dtype) != (old.shape, old.dtype) or not all(value.shape):
            continue
        old_readers = [last_use.get(k, k) for k in range(len(steps)) if root[k] == root[load]]
        writes[max([slot, *old_readers])].append((slot, position))
        aliases[slot] = position
    return aliases


def _unary(lib: ArrayLibrary, step: Step, x: Sequence[Any]) -> Any:
    return lib.unary[step.op](x[0])


def _binary(lib: ArrayLibrary, step: Step, x: Sequence[Any]) -> Any:
    return lib.binary[step.op](x[0], x[1])


def _shaped(lib: ArrayLibrary, value: Any, shape: Shape) -> Any:
    """`value` reshaped to `shape` where it has another (a SUM with its reshape folded in: view_chains.py)."""
    return value if value.shape == shape else lib.reshape(value, shape)


def _subtract(lib: ArrayLibrary, a: Any, b: Any) -> Any:
    return lib.binary[Op.ADD](a, lib.unary[Op.NEG](b))


def _shifted(lib: ArrayLibrary, x: Any, axis: int, dtype: Any) -> tuple[Any, Any]:
    """(x - p, p) for p the maximum along `axis`, or 0 where that is infinite (as the trace's logsumexp shifts)."""
    peak = lib.rmax(x, (axis,), x.shape[:axis] + (1,) + x.shape[axis + 1:], dtype)
    magnitude = lib.binary[Op.MAX](peak, lib.unary[Op.NEG](peak))
    infinite = lib.binary[Op.CMPEQ](magnitude, lib.constant(float("inf"), dtype))
    shift = lib.where(infinite, lib.constant(0.0, dtype), peak)
    return _subtract(lib, x, shift), shift


def _log_softmax(lib: ArrayLibrary, x: Any, axis: int, dtype: Any) -> Any:
    """x - p - log(sum(exp(x - p))) along `axis` (what Fused.LOG_SOFTMAX stands for)."""
    shifted, _ = _shifted(lib, x, axis, dtype)
    return _subtract(lib, shifted, lib.unary[Op.LOG](lib.sum(lib.unary[Op.EXP](shifted), (axis,), dtype)))


def _logsumexp(lib: ArrayLibrary, x: Any, axis: int, dtype: Any) -> Any:
    """log(sum(exp(x - p))) + p along `axis`, kept (Fused.LOGSUMEXP)."""
    shifted, shift = _shifted(lib, x, axis, dtype)
    return lib.binary[Op.ADD](lib.unary[Op.LOG](lib.sum(lib.unary[Op.EXP](shifted), (axis,), dtype)), shift)


def _logsumexp_grad(lib: ArrayLibrary, x: Any, upstream: Any, axis: int, dtype: Any) -> Any:
    """exp(x - p) * (h / sum(exp(x - p))) along `axis`: softmax(x) * h (Fused.LOGSUMEXP_GRAD)."""
    exponential = lib.unary[Op.EXP](_shifted(lib, x, axis, dtype)[0])
    scale = lib.binary[Op.MUL](upstream, lib.unary[Op.RECIP](lib.sum(exponential, (axis,), dtype)))
    return lib.binary[Op.MUL](exponential, scale)


def _log_softmax_grad(lib: ArrayLibrary, gradient: Any, value: Any, axis: int, dtype: Any) -> Any:
    """g - exp(y) * sum(g) along `axis`, the gradient of y = log_softmax(x) (Fused.LOG_SOFTMAX_GRAD)."""
    return _subtract(lib, gradient, lib.binary[Op.MUL](lib.unary[Op.EXP](value), lib.sum(gradient, (axis,), dtype)))


def _less_equal(lib: ArrayLibrary, a: Any, b: Any) -> Any:
    return lib.binary[Op.OR](lib.binary[Op.CMPLT](a, b), lib.binary[Op.CMPEQ](a, b))


def _relu_where(lib: ArrayLibrary, test: Any, value: Any, dtype: Any) -> Any:
    """`value` where `test` is above 0, else 0: relu (test = value = x) and its gradient (test: relu's output)."""
    zero = lib.constant(0.0, dtype)
    return lib.where(_less_equal(lib, test, zero), zero, value)


def _concatenate(lib: ArrayLibrary, step: Step, pieces: Sequence[Any]) -> Any:
    """The pieces padded with zeros to the step's shape along its axis and summed (OR-ed for booleans): cat's
    trace, what Fused.CAT stands for."""
    axis, total = step.arg, step.shape[step.arg]
    combine = lib.binary[Op.OR if step.dtype.is_bool else Op.ADD]
    joined, start = None, 0
    for piece in pieces:
        end = start + piece.shape[axis]
        padding = tuple((start, total - end) if a == axis else (0, 0) for a in range(len(step.shape)))
        padded = lib.pad(piece, padding, False if step.dtype.is_bool else 0, step.shape)
        joined, start = padded if joined is None else combine(joined, padded), end
    return joined


EVALUATE: dict[Any, Callable[[ArrayLibrary, Step, Sequence[Any]], Any]] = {
    Op.CONST: lambda lib, step, x: lib.constant(step.arg, step.dtype),
    **{op: _unary for op in UNARY_OPS - {Op.CAST}},
    Op.CAST: lambda lib, step, x: lib.cast(x[0], step.dtype),
    **{op: _binary for op in BINARY_OPS - SHIFT_OPS - {Op.DIV}},
    Op.DIV: lambda lib, step, x: lib.divide(x[0], x[1], step.dtype),
    Op.SHL: lambda lib, step, x: lib.shift(x[0], x[1], step.dtype, left=True),
    Op.SHR: lambda lib, step, x: lib.shift(x[0], x[1], step.dtype, left=False),
    Op.WHERE: lambda lib, step, x: lib.where(x[0], x[1], x[2]),
    Op.SUM: lambda lib, step, x: _shaped(lib, lib.sum(x[0], step.arg, step.dtype), step.shape),
    Op.RMAX: lambda lib, step, x: lib.rmax(x[0], step.arg, step.shape, step.dtype),
    Fused.SUB: lambda lib, step, x: _subtract(lib, x[0], x[1]),
    Fused.LE: lambda lib, step, x: _less_equal(lib, x[0], x[1]),
    Fused.NE: lambda lib, step, x: lib.unary[Op.NOT](lib.binary[Op.CMPEQ](x[0], x[1])),
    Fused.RELU: lambda lib, step, x: _relu_where(lib, x[0], x[0], step.dtype),
    Fused.RELU_GRAD: lambda lib, step, x: _relu_where(lib, x[1], x[0], step.dtype),
    Fused.MULADD: lambda lib, step, x: lib.binary[Op.ADD](x[0], lib.binary[Op.MUL](x[1], x[2])),
    Fused.MULSUB: lambda lib, step, x: _subtract(lib, x[0], lib.binary[Op.MUL](x[1], x[2])),
    Fused.LERP: lambda lib, step, x: lib.binary[Op.ADD](x[0], lib.binary[Op.MUL](_subtract(lib, x[1], x[0]), x[2])),
    Fused.LOG_SOFTMAX: lambda lib, step, x: _log_softmax(lib, x[0], step.arg, step.dtype),
    Fused.LOG_SOFTMAX_GRAD: lambda lib, step, x: _log_softmax_grad(lib, x[0], x[1], step.arg, step.dtype),
    Fused.LOGSUMEXP: lambda lib, step, x: _logsumexp(lib, x[0], step.arg, step.dtype),
    Fused.LOGSUMEXP_GRAD: lambda lib, step, x: _logsumexp_grad(lib, x[0], x[1], step.arg, step.dtype),
    Fused.CONTRACT: lambda lib, step, x: lib.contract(*x[:2], *step.arg, step.shape, *x[2:]),
    Fused.CAT: _concatenate,
    Op.COLLECTIVE: lambda lib, step, x: lib.collective(x, step.dtype, *step.arg),
    Op.RESHAPE: lambda lib, step, x: lib.reshape(x[0], step.arg),
    Op.PERMUTE: lambda lib, step, x: lib.permute(x[0], step.arg),
    Op.EXPAND: lambda lib, step, x: lib.expand(x[0], step.arg),
    Op.PAD: lambda lib, step, x: lib.pad(x[0], step.arg[0], step.arg[1], step.shape),
    Op.SHRINK: lambda lib, step, x: lib.shrink(x[0], step.arg),
    Op.FLIP: lambda lib, step, x: lib.flip(x[0], step.arg),
}


def compute(program: InterpretedProgram, lib: ArrayLibrary, inputs: Sequence[Any], streams: Sequence[Any]) -> list[Any]:
    """Run the steps on `inputs` (one per BUFFER leaf) and random `streams` (one per RAND), writing in place
    where the program says; the values of the outputs not written into an input, as the library computed them."""
    values: list[Any] = [None] * len(program.steps)
    with lib.quiet():
        for k, (step, evaluate) in enumerate(zip(program.steps, program.evaluators)):
            if step.op is Op.BUFFER:
                value = lib.load(inputs[step.arg], step.dtype)
            elif step.op is Op.RAND:
                value = lib.rand(streams[step.arg], step.shape, step.dtype)
            else:
                sources = [values[s] for s in step.sources]
                if step.compact is not None:
                    sources = [lib.shrink(x, step.compact) for x in sources]
                if step.into is not None:
                    value = lib.overwrite(step.op, sources, step.into)
                else:
                    value = evaluate(lib, step, sources)
                if step.computes:
                    value = lib.conform(value, step.dtype)
                if step.compact is not None:
                    value = lib.expand(value, step.shape)
            values[k] = value
            for slot, position in program.writes[k]:
                lib.write(inputs[position], values[slot])
                values[slot] = lib.written(inputs[position], values[slot])
            for slot in program.frees[k]:
                values[slot] = None
    return [values[slot] for slot in program.outputs if slot not in program.aliases]


def store(program: InterpretedProgram, lib: ArrayLibrary, inputs: Sequence[Any], values: Sequence[Any]) -> list[Any]:
    """The output buffers, from `compute`'s values and the inputs written in place."""
    kept = [program.steps[slot] for slot in program.outputs if slot not in program.aliases]
    stored = iter(lib.outputs(values, kept, inputs))
    return [inputs[program.aliases[slot]] if slot in program.aliases else next(stored) for slot in program.outputs]


def run(program: InterpretedProgram, lib: ArrayLibrary, inputs: Sequence[Any], streams: Sequence[Any]) -> list[Any]:
    """The output buffers of `program` (see `compute`)."""
    return store(program, lib, inputs, compute(program, lib, inputs, streams))


def released_error() -> RuntimeError:
    """A BUFFER leaf whose value was dropped (a tensor released before its gradients were realized)."""
    return RuntimeError("a gradient needs the value of a tensor that was released; keep a reference to it "
                        "until its gradients are realized")


def profiled(device: Any, kernel: str, program: str, targets: Sequence[Node], order: Sequence[Node],
             run_program: Callable[[], list[Any]]) -> list[Any]:
    """`run_program()`, recorded for `zyx.profile()` as one launch timed by the host clock (the device is
    synchronized around it), with the bytes of its inputs and targets and the FLOPs of its trace."""
    device.synchronize()
    start = time.perf_counter_ns()
    values = run_program()
    device.synchronize()
    leaves = [node for node in order if node.op is Op.BUFFER]
    more = f" and {len(targets) - 1} more" if len(targets) > 1 else ""
    profiling.record(profiling.KernelRecord(
        device, device.name, kernel, program, short_name(targets[0]) + more, (), None,
        sum(buffer_bytes(node) for node in [*leaves, *targets]), total_flops(order), start, time.perf_counter_ns()))
    return values
