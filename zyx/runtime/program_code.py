"""An interpreted program written out once as a Python function, for devices that replay programs many times.

`interpret.compute` looks every step up and branches on its kind at every run. `generate` writes the program
as straight-line Python instead (`v3 = s3(v1, v2)`, `del v1` after a slot's last reader, the in-place writes
where the program puts them), over one callable per step that the array library binds once
(`ArrayLibrary.step_function`, else `step_function` here), so a replay makes one Python call per step and
nothing else. It computes what `compute` does, value for value; torch.compile traces the same function.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

from ..trace.ops import Op
from . import foreach_groups
from .arrays import ArrayLibrary
from .steps import ELEMENTWISE, Step, roots

STATIC_VIEWS = {Op.RESHAPE, Op.PERMUTE, Op.EXPAND, Op.SHRINK}  # views of a constant, made once
ProgramFunction = Callable[[Sequence[Any], Sequence[Any]], list[Any]]  # (inputs, random streams) -> values


def step_function(lib: ArrayLibrary, step: Step, evaluate: Callable[..., Any]) -> Callable[..., Any]:
    """The value of a computing or view step from its sources' values, as `interpret.compute` makes it."""
    compact, into, computes, shape, dtype = step.compact, step.into, step.computes, step.shape, step.dtype

    def run(*sources: Any) -> Any:
        if compact is not None:
            sources = tuple(lib.shrink(x, compact) for x in sources)
        value = lib.overwrite(step.op, sources, into) if into is not None else evaluate(lib, step, sources)
        if computes:
            value = lib.conform(value, dtype)
        return lib.expand(value, shape) if compact is not None else value

    return run


class Tracker(Protocol):
    """Watches the values a program holds (a device's memory accounting)."""

    def hold(self, slot: int, value: Any, shares: Optional[int]) -> None:
        """Slot `slot` holds `value`, which uses the memory of slot `shares` when that is not None."""

    def drop(self, slot: int) -> None: ...


@dataclass(frozen=True)
class GeneratedProgram:
    """A program's two generated functions: `run(inputs, streams)`, and `tracked(inputs, streams, tracker)`,
    which also tells a `Tracker` what each slot holds and when it is dropped."""

    tracked: Callable[[Sequence[Any], Sequence[Any], Tracker], list[Any]]
    define_run: Callable[[], ProgramFunction]  # writes `run` out
    names: dict[str, Any]  # what the functions call, by name

    @functools.cached_property
    def run(self) -> ProgramFunction:
        """Written out at its first use: a program run once (most of an eager script's, each realize a new
        trace) runs only `tracked`, and Python's compile of a long function costs about as much as building it."""
        return self.define_run()

    def settle(self) -> None:
        """After a first run: each step function that planned itself on it (`settled`, as
        torch_products.bound_contract's) is replaced by what it planned, so later runs call that directly."""
        for name, function in list(self.names.items()):
            settled = getattr(function, "settled", None)
            if settled is not None:
                self.names[name] = settled()


def generate(program: Any, lib: ArrayLibrary, evaluators: Sequence[Any]) -> GeneratedProgram:
    """`program` (an interpret.InterpretedProgram) as functions returning the values of its outputs that are not
    written into inputs; `evaluators`: EVALUATE's entry per step."""
    names: dict[str, Any] = {"_write": lib.write, "_written": lib.written}
    static: dict[int, Any] = {}
    values = [_value(lib, program.steps, k, step, evaluate, names, static)
              for k, (step, evaluate) in enumerate(zip(program.steps, evaluators))]
    direct = _direct_writes(program, lib)
    for slot, position in direct.items():
        step = program.steps[slot]
        names[f"o{slot}"] = lib.out_function(step, [program.steps[s] for s in step.sources])
        values[slot] = f"o{slot}({', '.join(f'v{s}' for s in step.sources)}, out=inputs[{position}])"
    groups = _groups(program, lib, direct, names)
    label = program.name or str(id(program))

    def define(function: str, tracked: bool) -> Callable[..., Any]:
        source = "\n".join(_lines(program, lib, values, direct, groups, function, tracked))
        exec(compile(source, f"<zyx {function} {label}>", "exec"), names)
        return names[function]

    return GeneratedProgram(define("tracked", True), functools.partial(define, "program", False), names)


def _groups(program: Any, lib: ArrayLibrary, direct: dict[int, int], names: dict[str, Any]) -> dict[int, Group]:
    """The program's foreach groups (`foreach_groups.runs`) by their first member, their calls bound in `names`.
    A member runs in place where it writes over its first source (`into` 0), or where the program writes it
    straight into the input buffer its first source loads or an early write fills (an update `p - lr * u`). A
    step written over another source (Adam's `m / (√v + ε)` over its divisor), or straight into an input that its
    first source is not, keeps its own call: as a group it would hold a new list while its sources live (W4
    Adam's step peaked at 5.1 MiB of storages, not 2.8)."""
    steps = program.steps
    functions: dict[int, Any] = {}

    def key(k: int) -> Optional[tuple]:
        step = steps[k]
        if step.op not in ELEMENTWISE or step.compact is not None:
            return None
        if k not in direct and step.into not in (None, 0):
            return None  # (written over a later source: a group would hold a new list while its sources live)
        if k in direct:  # in place where its first source is the buffer: the input's old value, or an early write
            first = step.sources[0]
            loads_it = steps[first].op is Op.BUFFER and steps[first].arg == direct[k]
            if not loads_it and direct.get(first, -1) != direct[k]:
                return None
        in_place = k in direct or step.into == 0
        kinds = foreach_groups.operand_kinds(steps, step)
        function = lib.group_function(step, [steps[s] for s in step.sources],
                                      [kind if kind.__class__ is not tuple else kind[0] for kind in kinds], in_place)
        if function is None:
            return None
        functions[k] = function
        return step.op, step.dtype, kinds, step.into, in_place

    groups: dict[int, Group] = {}
    for members in foreach_groups.runs(steps, key):
        first = members[0]
        names[f"g{first}"] = functions[first]
        operands = []
        for position, kind in enumerate(foreach_groups.operand_kinds(steps, steps[first])):
            if kind is foreach_groups.LIST:
                operands.append(f"[{', '.join(f'v{steps[m].sources[position]}' for m in members)}]")
            elif kind.__class__ is tuple:
                operands.append(f"v{kind[1]}")
            else:
                names[f"c{first}_{position}"] = kind
                operands.append(f"c{first}_{position}")
        groups[first] = Group(members, f"g{first}({', '.join(operands)})")
    return groups


@dataclass(frozen=True)
class Group:
    """A foreach group as the generated code runs it: its members (slots) and the call computing their values."""

    members: list[int]
    call: str


def _direct_writes(program: Any, lib: ArrayLibrary) -> dict[int, int]:
    """Steps computed straight into the input buffer the program writes them to (slot -> input position): the
    write is due right after the step (nothing reads the old value later), the library can compute the step into
    a buffer of its dtype (`out_function`), and no source is a view of that buffer (the buffer itself is: an
    elementwise op may write over an operand it reads element for element). An update `p - lr * g` then costs
    no temporary and no copy."""
    root = roots(program.steps)
    loads = {step.arg: k for k, step in enumerate(program.steps) if step.op is Op.BUFFER}
    direct: dict[int, int] = {}
    for k, writes in enumerate(program.writes):
        for slot, position in writes:
            step, load = program.steps[slot], loads.get(position)
            if slot == k and load is not None and \
                    all(root[s] != root[load] or s == load for s in step.sources) and \
                    lib.out_function(step, [program.steps[s] for s in step.sources]) is not None:
                direct[slot] = position
    return _early_writes(program, lib, root, loads, direct)


def _early_writes(program: Any, lib: ArrayLibrary, root: Sequence[int], loads: dict[int, int],
                  direct: dict[int, int]) -> dict[int, int]:
    """`direct` with the steps that may be computed into the input buffer one step earlier: the first source s of
    a direct write into input p, where s is an elementwise step of p's old value (its first source, p's load,
    of its shape and dtype) read by nothing after s, and s is read only by that write. Adam's `v·β2 + (1-β2)·g²`
    then scales v in place and adds to it, holding no temporary (as PyTorch's `mul_` and `addcmul_`)."""
    steps = program.steps
    readers: dict[int, list[int]] = {}
    last_read: dict[int, int] = {}  # per root: the last step reading a slot of it
    for k, step in enumerate(steps):
        for source in step.sources:
            readers.setdefault(source, []).append(k)
            last_read[root[source]] = k
    kept = {root[slot] for slot in program.outputs}
    early = dict(direct)
    for slot, position in direct.items():
        first, load = steps[slot].sources[0], loads[position]
        step = steps[first]
        if step.op in ELEMENTWISE and step.sources and step.sources[0] == load and first not in direct and \
                readers[first] == [slot] and last_read[root[load]] == first and root[load] not in kept and \
                (step.shape, step.dtype) == (steps[load].shape, steps[load].dtype) and \
                all(root[s] != root[load] for s in step.sources[1:]) and \
                lib.out_function(step, [steps[s] for s in step.sources]) is not None:
            early[first] = position
    return early


def _lines(program: Any, lib: ArrayLibrary, values: Sequence[str], direct: dict[int, int],
           groups: dict[int, Group], function: str, tracked: bool) -> list[str]:
    """The source of one generated function (see `generate`): a group's call computes all its members where the
    first would be computed; their writes and drops follow it, in the members' order."""
    lines = [f"def {function}(inputs, streams{', tracker' if tracked else ''}):"]
    root = roots(program.steps)
    grouped = {slot for group in groups.values() for slot in group.members}
    for k in range(len(program.steps)):
        if k in grouped and k not in groups:
            continue  # computed with its group's first member
        group = groups.get(k)
        members = group.members if group is not None else [k]
        lines.append(f"    {', '.join(f'v{m}' for m in members)}{',' if group else ''} = "
                     f"{group.call if group else values[k]}")
        for member in members:
            shares = None if member in direct else program.steps[member].shares
            lines += _after(program, lib, member, direct, root, tracked, shares)
    kept = [f"v{slot}" for slot in program.outputs if slot not in program.aliases]
    lines.append(f"    return [{', '.join(kept)}]")
    return lines


def _after(program: Any, lib: ArrayLibrary, k: int, direct: dict[int, int], root: Sequence[int], tracked: bool,
           shares: Optional[int]) -> list[str]:
    """The lines after step k's value is computed: its tracking (`shares`: the slot whose memory it uses), the
    input buffers written then, and the slots dropped."""
    lines = []
    if tracked and program.steps[k].op is not Op.CONST:  # constants may be kept by the library
        lines.append(f"    tracker.hold({k}, v{k}, {shares})")
    for slot, position in program.writes[k]:
        if direct.get(slot) == position:
            continue  # computed there
        fresh = program.steps[root[slot]].op not in (Op.BUFFER, Op.CONST)  # its memory is the program's own
        lines.append(f"    _write(inputs[{position}], v{slot}, {fresh})")
        lines.append(f"    v{slot} = " + (f"inputs[{position}]" if lib.loads_as_stored(program.steps[slot].dtype)
                                         else f"_written(inputs[{position}], v{slot})"))
        if tracked:
            lines.append(f"    tracker.drop({slot}); tracker.hold({slot}, v{slot}, None)")
    for slot in program.frees[k]:
        lines.append(f"    del v{slot}" + (f"; tracker.drop({slot})" if tracked else ""))
    return lines


def _value(lib: ArrayLibrary, steps: Sequence[Step], k: int, step: Step, evaluate: Any, names: dict[str, Any],
           static: dict[int, Any]) -> str:
    """The expression computing step k's value, binding what it calls in `names`. Constants and views of them
    (`static`: slot -> value) are made here, once: `x - 3` broadcasts its 3 through two views on every run."""
    if step.op is Op.BUFFER:
        names[f"s{k}"] = lambda buffer, dtype=step.dtype: lib.load(buffer, dtype)
        return f"s{k}(inputs[{step.arg}])" if not lib.loads_as_stored(step.dtype) else f"inputs[{step.arg}]"
    if step.op is Op.RAND:
        names[f"s{k}"] = lambda stream, shape=step.shape, dtype=step.dtype: lib.rand(stream, shape, dtype)
        return f"s{k}(streams[{step.arg}])"
    if step.op is Op.CONST:
        static[k] = names[f"s{k}"] = lib.constant(step.arg, step.dtype)
        return f"s{k}"
    function: Callable[..., Any] = lib.step_function(step, [steps[s] for s in step.sources]) or \
        step_function(lib, step, evaluate)
    if step.op in STATIC_VIEWS and all(s in static for s in step.sources):
        static[k] = names[f"s{k}"] = function(*[static[s] for s in step.sources])
        return f"s{k}"
    names[f"s{k}"] = function
    return f"s{k}({', '.join(f'v{s}' for s in step.sources)})"
