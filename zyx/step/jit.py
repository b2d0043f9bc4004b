"""`@zyx.jit`: trace a step once per call key, then replay its program with new inputs.

The first call with a key (see `arguments.call_key`) runs the function on lazy tensors and realizes every
result and every in-place update (`t.assign(v)`) as one program. Each program input is bound by where the
traced call found it: the i-th tensor argument, a tensor located by a path from the function or its arguments
(a global, a closure variable, `self.w`, an optimizer's state: see `reach.py`), or a tensor the step made from
data (a constant). A later call replays only when it can prove the same bindings hold: every path still leads
to the tensor seen at capture, arguments alias each other and that state the same way, module modes and the
`zyx.autocast` state and float32 product precision around the call are the same. Otherwise it traces again. Updates go to the tensors bound now
(the argument passed in this call). A call passing tensors only tries the last replayed call's step first without
making its key: the step's guards, which check the arguments' layouts and how the tensors alias, decide as above
(`binder.py` writes the guards, the binding and the checks of what a replay may overwrite as one function).
A new process finds the program (and its kernels) in the disk cache by the step's structure.

Memory: a captured step keeps the buffers of its intermediates (activations, gradients: what its program
computes and drops within one call) reserved between calls, in an arena planned once (`memory.Arena`), as
CUDA graphs keep a private pool: a replay then takes and gives back nothing but its results and passes every
kernel the same buffers. A training loop loses nothing by it (the pool would keep those buffers between steps
anyway, as torch's caching allocator does); what changes is that other work cannot borrow them meanwhile, so
`zyx.memory_stats()` counts them in `current_bytes` and `reserved_bytes`. Live arenas plan at most a quarter of
a device's memory (a step past that takes its buffers from the pool at each call), they go back to the pool
when their step is dropped (the jitted function is collected, or its tensors died and it is recaptured), and
the pool takes them back when an allocation runs out of memory.
"""
from __future__ import annotations

import collections
import functools
import math
import operator
import sys
import types
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .. import counters
from .. import random as zrandom
from ..autocast import autocast_dtype
from ..precision import get_float32_matmul_precision
from ..realize import realize
from ..runtime.execute import picker
from ..tensor import Tensor
from ..trace.checks import RangeCheck, checks_in
from ..trace.hashing import signature
from ..trace.node import Node, leaf_maker, toposort
from ..debug import logger
from ..dtypes import int64
from ..devices import CAPTURING_KINDS, FUSING_KINDS
from . import recapture
from .arguments import Rebuild, call_key, flatten, tensors_key
from ..trace.capture import Capture, active_capture, pop_capture, push_capture
from ..jit.program import Program
from .binder import Binding, compile_binder
from .reach import Located, PathTree, locate_tensors, resolve

MAX_CAPTURES = 8
Root = tuple[Any, tuple, dict]


class JitWarning(UserWarning):
    """A jitted function keeps capturing new programs or running eagerly (see the message for why)."""


class JitError(RuntimeError):
    """A jitted step reads or updates a tensor whose place at the next call cannot be found."""


@dataclass(frozen=True)
class Source:
    """Where one value of a replay comes from: "arg" i / "located" i (a bound tensor), "input" i (the node
    bound to program input i), "target" i (program output i) or "constant" (a node made inside the step)."""

    kind: str
    index: int = 0
    node: Optional[Node] = None


@dataclass
class StateRef:
    """A tensor the step reads or updates that is not an argument, and every path it was found at."""

    tensor: "weakref.ref[Tensor]"
    paths: list[Any]
    names: list[str]

    def resolve(self, root: Root) -> Optional[Tensor]:
        """The tensor, if every path still leads to it; None if one leads elsewhere or it was deleted."""
        tensor = self.tensor()
        if tensor is None or any(resolve(root, path) is not tensor for path in self.paths):
            return None
        return tensor


def alias_pattern(tensors: list[Tensor], nodes: list[Node]) -> tuple:
    """For each tensor (holding the node at the same position), the first one it is or shares a node or buffer
    with: a program is replayed only on tensors that alias each other as the traced ones did."""
    first: dict[tuple[str, int], int] = {}
    return tuple(tuple(first.setdefault(key, i) for key in (("tensor", id(t)), ("node", id(n)), ("buffer", id(n.buffer))))
                 for i, (t, n) in enumerate(zip(tensors, nodes)))


@dataclass
class CapturedStep:
    """One key's program with the bindings that feed it and the guards that say it may be replayed."""

    program: Program
    device: Any
    inputs: list[Source]                   # per program input: "arg", "located" or "constant"
    state: list[StateRef]
    aliases: tuple                         # alias_pattern(arguments + state tensors) when traced
    rand_counts: list[int]
    outputs: list[tuple[Source, tuple[int, ...], Any]]  # per result: where it comes from, shape, dtype
    assigned: list[tuple[Source, Source]]  # (updated tensor: "arg"/"located", its new value)
    rebuild: Rebuild
    target_layouts: list[tuple[tuple[int, ...], Any]]  # (shape, dtype) per program output
    checks: list[tuple[RangeCheck, int]]   # index range checks: (check, target of its extremes)
    modes: list[tuple[Any, bool]] = field(default_factory=list)  # (weakref module, `training` when traced)
    autocast: Any = None                   # the zyx.autocast dtype the call was traced under (None: off)
    precision: str = "highest"             # the float32 product precision it was traced under (zyx/precision.py)
    # (class, shape, dtype, device) of each tensor argument of the call as traced, what `bind` checks of a call's
    # (state tensors are bound after them)
    argument_layouts: list[tuple[type, tuple[int, ...], Any, Any]] = field(default_factory=list)
    input_layouts: list[tuple[tuple[int, ...], Any]] = field(default_factory=list)  # (shape, dtype) per input
    # the program computing the checks before the step and the inputs it reads (None: `program` computes them)
    checking: Optional[tuple[Program, list[int]]] = None
    gated_checks: bool = False  # whether `program`'s run hands its gate the checks' extremes (`Program.checks`)
    kernels: int = field(init=False)

    def __post_init__(self) -> None:
        self.kernels = self.program.kernel_count + (self.checking[0].kernel_count if self.checking else 0)
        self._plan_values()
        self._plan_guards()
        # where the index checks' extremes are among a program's outputs, and their (shapes, dtypes)
        self._pick_check_outputs = picker([target for _, target in self.checks])
        self._check_layouts = ([(2,)] * len(self.checks), [int64.np] * len(self.checks))
        self._check_inputs = picker(self.checking[1]) if self.checking else None
        # the buffers the checks' own program last passed on, as the runtime tells their contents apart
        # (TorchRuntime.contents): the same, unwritten since, pass again without a run and a read (a wait)
        self._checked: Optional[tuple] = None
        self._gate = self._read_checks if self.gated_checks else None  # (the run's: see run_code.py)
        self._read: Callable[[], None] = _nothing_read  # the wait for the checks' extremes of the run under way
        self._checks_after = bool(self.checks) and self.checking is None and not self.gated_checks
        # where the gate reads the checks' extremes at every call (a row [-smallest, largest] each, and its bytes),
        # and the most each may be: [-low, high - 1]
        self._extremes = np.zeros((len(self.checks), 2), int64.np)
        self._extremes_read = list(self._extremes.view(np.uint8))
        self._extremes_flat = self._extremes.reshape(-1)
        self._extremes_allowed = [bound for check, _ in self.checks for bound in (-check.low, check.high - 1)]
        self._runtime = self.device.runtime
        # the buffers the program's intermediates take at every replay, reserved while this step lives (see
        # memory.Arena); None where the device has no arenas or its share of memory is planned already
        self._arena = self.device.replay_arena(self.program)
        self._run_program = self.device.replay_run(self.program, self._arena)
        self._run_checks = self.device.replay_run(self.checking[0]) if self.checking else None

    @property
    def argument_count(self) -> int:
        """Tensor arguments of the call."""
        return len(self.argument_layouts)

    @property
    def launch_count(self) -> int:
        """Launches per replay, the checks' own program included (the torch backend's: `checking`)."""
        return self.program.launch_count + (self.checking[0].launch_count if self.checking else 0)

    def _plan_guards(self) -> None:
        """What `bind` checks. It compares the ids of what the paths lead to now with those of the state tensors:
        exact while those tensors live, and `_dead` turns non-empty when one dies (another could take its id). The
        binder also tells whether the nodes of the inputs overwritten in place are their tensors' alone, where `run`
        would ask (no old value read) and every one is a bound tensor's."""
        tensors = [ref.tensor() for ref in self.state]
        overwritten = [self._input_plan[position][0] for position in self._aliased_inputs]
        self._bind_paths = compile_binder(
            PathTree([path for ref in self.state for path in ref.paths]),
            [id(tensor) for tensor, ref in zip(tensors, self.state) for _ in ref.paths],
            _first_positions([len(ref.paths) for ref in self.state]), self.argument_layouts,  # each one's first path
            None if self._old_values_read or min(overwritten, default=0) < 0 else overwritten)
        self._dead: list[Any] = [None] if any(tensor is None for tensor in tensors) else []
        self._watches = [weakref.ref(tensor, self._dead.append) for tensor in tensors if tensor is not None]
        self._all_distinct = self.aliases == tuple((i, i, i) for i in range(len(self.aliases)))

    def _plan_values(self) -> None:
        """Where `run` finds each input node and each value of the step (an update's or a result's): one index
        into `stored + nodes + constants` (the program's outputs, its input nodes, the nodes the step made).

        An update whose program output overwrites its own tensor's buffer in place (`_in_place`: input position
        -> (the tensor's position, target, what makes its leaf)) needs nothing at all when no one else sees that
        tensor's node: the node already holds the new value. Only the others are planned as stores and assignments.
        """
        self._input_plan = [(self._bound_index(source), source.node) for source in self.inputs]
        # `run` picks its input nodes and buffers from the bound tensors' followed by the constant inputs'
        self._input_constants = [node for position, node in self._input_plan if position < 0]
        self._input_constant_buffers = [node.buffer for node in self._input_constants]
        picks, next_constant = [], self.argument_count + len(self.state)
        for position, _ in self._input_plan:
            picks.append(position if position >= 0 else next_constant)
            next_constant += position < 0
        self._pick_inputs = picker(picks)
        self._aliased_inputs = tuple(self.program.aliases.values())
        self._aliased_nodes = picker(self._aliased_inputs)
        self._all_aliased = frozenset(self._aliased_inputs)
        self._constants = self._input_constants + [new_value.node for _, new_value in self.assigned
                                                   if new_value.kind == "constant"]
        self._constants += [source.node for source, _, _ in self.outputs if source.kind == "constant"]
        values = [source for source, _, _ in self.outputs] + [new_value for _, new_value in self.assigned]
        # target -> the input whose buffer it is written into, where that input's node may simply stay the tensor's
        # node: same shape and dtype, and no value of the step is that input's old value
        read_inputs = {source.index for source in values if source.kind == "input"}
        # inputs overwritten in place whose old value the step also returns or assigns: always copied first
        self._old_values_read = frozenset(position for position in self._aliased_inputs if position in read_inputs)
        slot_target = {slot: target for target, slot in enumerate(self.program.outputs)}
        overwrites = {slot_target[slot]: position for slot, position in self.program.aliases.items()
                      if position not in read_inputs and self.inputs[position].kind in ("arg", "located")
                      and self.input_layouts[position] == self.target_layouts[slot_target[slot]]}
        uses = collections.Counter(source.index for source in values if source.kind == "target")
        self._in_place: dict[int, tuple[int, int, Callable[[Any], Node]]] = {}
        self._assign_plan = []
        for tensor, new_value in self.assigned:
            position = self._bound_index(tensor)
            target = new_value.index if new_value.kind == "target" else -1
            overwritten = overwrites.get(target, -1)
            if uses[target] == 1 and overwritten >= 0 and self._input_plan[overwritten][0] == position:
                self._in_place[overwritten] = (position, target, self._leaf_maker(target))
            else:
                self._assign_plan.append((position, self._value_index(new_value)))
        self._output_plan = [(self._bound_index(source), self._value_index(source)) for source, _, _ in self.outputs]
        in_place_targets = {target for _, target, _ in self._in_place.values()}
        self._stores = [(target, overwrites.get(target, -1), self._leaf_maker(target))
                        for target in sorted(uses) if target not in in_place_targets]
        # whether every result is a new tensor (none is a bound one), and where `run` finds their nodes
        self._results_all_new = all(position < 0 for position, _ in self._output_plan)
        self._pick_results = picker([index for _, index in self._output_plan])
        # whether `run` reads a value past the stored outputs (an input's node or a constant)
        self._values_beyond_stored = any(index >= len(self.target_layouts) for _, index in
                                         self._assign_plan + [plan for plan in self._output_plan if plan[0] < 0])

    def _leaf_maker(self, target: int) -> Callable[[Any], Node]:
        """What makes the leaf holding program output `target` at each replay (`node.leaf_maker`)."""
        return leaf_maker(*self.target_layouts[target], self.device)

    @property
    def alive(self) -> bool:
        return all(ref.tensor() is not None for ref in self.state)

    def bind(self, root: Root, arguments: list[Tensor]) -> Optional[Binding]:
        """The tensors to bind now (the arguments, then the state tensors), their nodes and their buffers, and
        whether the nodes `run` would overwrite are their tensors' alone (None: `run` checks), or None when this
        step's guards do not hold for this call (binder.py)."""
        if self._dead:
            return None  # a tensor that was deleted (another may have its id now)
        binding = self._bind_paths(root, arguments)
        if binding is None or self.modes and not self.modes_hold() or self.autocast is not autocast_dtype() \
                or self.precision != get_float32_matmul_precision():
            return None  # (binding: a path that leads elsewhere now)
        bound, nodes, buffers, _ = binding
        if self._all_distinct and _all_distinct_buffers(buffers):
            return binding  # the usual case: all realized, all buffers distinct
        if any(map(_is_none, buffers)):  # a tensor assigned eagerly since the last call (`is`: `None in buffers`
            # would call torch.Tensor.__eq__, tens of µs a tensor)
            assigned_eagerly = [t for t in bound if not t.node.realized]
            if assigned_eagerly:
                realize(*assigned_eagerly)
                nodes = list(map(_node_of, bound))
                buffers = list(map(_buffer_of, nodes))
        return (bound, nodes, buffers, None) if self._aliased_as_traced(bound, nodes, buffers) else None

    def _aliased_as_traced(self, bound: list[Tensor], nodes: list[Node], buffers: list[Any]) -> bool:
        if self._all_distinct:  # the usual case: distinct buffers mean distinct nodes, hence distinct tensors
            return len(set(map(id, buffers))) == len(buffers)
        return alias_pattern(bound, nodes) == self.aliases

    def modes_hold(self) -> bool:
        """Every module mode the traced call read is still the same (a deleted module reads as changed)."""
        for module_ref, training in self.modes:
            module = module_ref()
            if module is None or module.__dict__.get("_training", True) != training:
                return False
        return True

    def run(self, bound: list[Tensor], bound_nodes: list[Node], bound_buffers: list[Any], sole: Optional[bool],
            rand_args: list[tuple[int, int]], copy_donated: bool = False) -> Any:
        """Launch the program on the bound tensors (`bind`'s binding; `bound_nodes` is emptied, so that the nodes'
        reference counts say who else holds them) and point every updated tensor at its new value. `sole`: whether
        the binder found the nodes of the inputs overwritten in place held by their tensors alone (None: unknown).

        A buffer the program overwrites in place is first copied when anything besides its tensor still holds
        its node (a lazy expression, another tensor, a gradient's origin), or when the step itself returns or
        assigns its old value: they keep the old value, as eagerly.
        """
        if self._input_constants:
            nodes = self._pick_inputs(bound_nodes + self._input_constants)
            buffers: Sequence[Any] = self._pick_inputs(bound_buffers + self._input_constant_buffers)
        else:  # (the usual case: every input a bound tensor's)
            nodes = self._pick_inputs(bound_nodes)
            buffers = self._pick_inputs(bound_buffers)
        bound_nodes.clear()  # (the reference counts of `nodes` are read below: `_all_sole`, `_sole`)
        launch = self.device.replay_launch()  # (None: each run looks up its own)
        if self._check_inputs is not None:  # (the torch backend's: the checks' own program, read before the step)
            checked = self._check_inputs(buffers)
            if not self._runtime.unchanged(self._checked, checked):  # (the same labels as the last call's: passed)
                extremes = self._check_requests(self._run_checks(checked, (), None, launch))
                self._raise_if_an_index_failed(self._runtime.download_all(extremes))
                self._checked = self._runtime.contents(checked)
        # inputs whose own buffer the program overwrites and whose node stands for the new value (`kept`), and
        # the others, whose tensor gets a new leaf if `_in_place` (`fresh`)
        kept: set[int] | frozenset[int]
        fresh: list[int] = []
        if sole is None and not copy_donated and not self._old_values_read:
            sole = _all_sole(self._aliased_nodes(nodes))  # (at C speed)
        if sole and not copy_donated:  # (the usual case)
            kept = self._all_aliased
        else:
            kept, buffers = set(), list(buffers)
            for position in self._aliased_inputs:
                read = position in self._old_values_read
                if not copy_donated and not read and _sole(nodes[position]):
                    kept.add(position)
                else:
                    if copy_donated or read or _shared(nodes[position]):
                        buffers[position] = self._runtime.copy(buffers[position])
                    fresh.append(position)
        outputs = self._run_program(buffers, rand_args, self._gate, launch)
        if self._checks_after:
            self._raise_if_an_index_failed(self._runtime.download_all(self._check_requests(outputs)))
        for position in fresh:
            if position in self._in_place:
                destination, target, leaf = self._in_place[position]
                bound[destination].node = leaf(outputs[target])
        values: list[Optional[Node]] = [None] * len(outputs)  # the stored outputs, then `nodes` and constants
        for target, position, leaf in self._stores:
            if position in kept:
                values[target] = nodes[position]  # the leaf already holds this buffer, and no one else sees it
            else:
                values[target] = leaf(outputs[target])
        if self._values_beyond_stored:
            values += [*nodes, *self._constants]
        for position, index in self._assign_plan:
            bound[position].node = values[index]  # type: ignore[assignment]
        if self._results_all_new:  # (at C speed)
            return self.rebuild(list(map(Tensor, self._pick_results(values))))
        return self.rebuild([bound[position] if position >= 0 else Tensor(values[index])
                             for position, index in self._output_plan])

    def _value_index(self, source: Source) -> int:
        """Where `run` finds the value `source` names in `stored + nodes + constants`; -1 for a bound tensor."""
        if source.kind in ("arg", "located"):
            return -1
        if source.kind == "target":
            return source.index
        if source.kind == "input":
            return len(self.target_layouts) + source.index
        constant = next(i for i, node in enumerate(self._constants) if node is source.node)
        return len(self.target_layouts) + len(self.inputs) + constant

    def _bound_index(self, source: Source) -> int:
        """Where a bound tensor ("arg" i, "located" i) is among the arguments and then the state tensors; -1 for
        another source."""
        if source.kind == "arg":
            return source.index
        return source.index + self.argument_count if source.kind == "located" else -1

    def _check_requests(self, outputs: list[Any]) -> list[tuple[Any, tuple[int, ...], Any]]:
        """The reads of the index checks' extremes among a program's `outputs`."""
        return [*zip(self._pick_check_outputs(outputs), *self._check_layouts)]  # (at C speed)

    def _read_checks(self, *extremes: Any) -> Callable[[], None]:
        """The gate of the program's run (run_code.py), handed the raw buffers of the checks' extremes as soon as
        the launches computing them are queued: it enqueues their read, and what it returns waits for that and
        raises for an index out of range, before the run's first launch overwriting an input in place (its other
        launches queued meanwhile)."""
        self._read = self._runtime.read_later([*zip(extremes, self._extremes_read)])
        return self._check_read

    def _check_read(self) -> None:
        """What `_read_checks` returns: waits for the read it enqueued and raises for an index out of range."""
        self._read()
        if not all(map(operator.le, self._extremes_flat.tolist(), self._extremes_allowed)):  # (at C speed)
            self._raise_if_an_index_failed(self._extremes)

    def _raise_if_an_index_failed(self, extremes: list[Any]) -> None:
        """Index tensors the step selects with are checked as eagerly, from their extremes as read: before the
        step's launches that overwrite inputs in place where the program can compute them first (its run's gate,
        `_read_checks`; the torch backend's own program for them, `checking`), else after the step, when buffers
        it updates in place were written though no tensor is pointed at the step's results."""
        for (check, _), pair in zip(self.checks, extremes):
            negated_smallest, largest = pair.tolist()
            error = check.error_from_extremes(-negated_smallest, largest)
            if error is not None:
                raise error


def _first_positions(counts: list[int]) -> list[int]:
    """Where each of consecutive runs of `counts` items starts."""
    starts, start = [], 0
    for count in counts:
        starts.append(start)
        start += count
    return starts


_origin_of = operator.attrgetter("origin")
_buffer_of = operator.attrgetter("buffer")
_buffer_of_tensor = operator.attrgetter("node.buffer")
_node_of = operator.attrgetter("node")
_layout_of = operator.attrgetter("__class__", "node.shape", "node.dtype", "node.device")  # (what a key tells apart)
_is_none = functools.partial(operator.is_, None)
_is_not_tensor_type = functools.partial(operator.is_not, Tensor)


def _nothing_read() -> None:
    """`CapturedStep._read` before a run's gate enqueued a read."""


def _all_distinct_buffers(buffers: list[Any]) -> bool:
    """Whether every buffer is a distinct object and none is None, in one set at C speed: a set of the buffers
    themselves takes a third of the time of a set of their ids. Their types hash by identity; one that did not
    could only make this False for distinct buffers equal to each other, and `bind` then compares their ids."""
    try:
        return len({None, *buffers}) > len(buffers)
    except TypeError:  # a buffer type that is not hashable
        return False


def _shared(node: Node) -> bool:
    """Whether anything holds `node` besides its tensor and the replay's list (and this call's argument)."""
    return sys.getrefcount(node) > 4


def _all_sole(nodes: Sequence[Node]) -> bool:
    """`_sole` of each node of a sequence made for this call (`picker`'s), each node in it once. While counted, a
    node is held by its tensor, the replay's list, this sequence and `map`: four, as `_sole` counts (its tensor,
    the list, its parameter and the count's argument)."""
    return (max(map(sys.getrefcount, nodes), default=0) <= 4 and not any(map(_origin_of, nodes))
            and not any(map(weakref.getweakrefcount, nodes)))


def _sole(node: Node) -> bool:
    """Whether a leaf whose buffer a replay overwrites can stand for the new value: nothing holds it besides its
    tensor (as `_shared`), it has no origin (autodiff would read its old computation) and no weak reference (an
    origin elsewhere, a range check) that expects the old value."""
    return sys.getrefcount(node) <= 4 and node.origin is None and not weakref.getweakrefcount(node)


class JitFunction:
    """A function traced once per call key and replayed afterwards (see the module docstring)."""

    def __init__(self, fn: Callable[..., Any], tune: bool = False):
        self.fn = fn
        self.tune = tune  # search the kernels of each new program (ZYX_TUNE=1 for this function: see tune.py)
        self.steps: dict[Any, list[CapturedStep]] = {}  # per key, one step per set of guards seen
        self._eager_keys: set[Any] = set()  # keys whose last call ran eagerly because the step stored a tensor
        self._recaptures: list[recapture.Reason] = []  # why each capture after the first happened
        self._bound: "weakref.WeakKeyDictionary[Any, JitFunction]" = weakref.WeakKeyDictionary()
        # the step the last call replayed, when it passed tensors only, by position: the next such call tries it
        # first, without making its key (see `__call__`)
        self._last: Optional[CapturedStep] = None
        functools.update_wrapper(self, fn)

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        """Methods: each instance gets its own captures (its parameters are different tensors)."""
        if instance is None:
            return self
        if instance not in self._bound:
            self._bound[instance] = JitFunction(types.MethodType(self.fn, instance), self.tune)
        return self._bound[instance]

    @property
    def captured(self) -> list[dict[str, Any]]:
        """One entry per captured program: its key, kernel and launch counts and planned peak memory."""
        return [{"signature": key, "kernels": step.kernels, "launches": step.launch_count,
                 "planned_peak_bytes": step.program.planned_peak_bytes,
                 "training_modes": [training for _, training in step.modes]}
                for key, steps in self.steps.items() for step in steps]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if active_capture() is not None:
            return self.fn(*args, **kwargs)  # called inside another jitted step: part of its trace
        step = self._last
        if step is not None and not kwargs:
            # the step the last call replayed, where this call's tensors are laid out as that one's: the same key
            # (`bind` checks the layouts, and the aliasing among the arguments, the rest of the key)
            binding = step.bind((self.fn, args, kwargs), args)
            if binding is not None:
                counts = step.rand_counts
                return step.run(*binding, [zrandom.reserve(count) for count in counts] if counts else [])
        self._last = None  # (it may be dropped below: its arena goes back to the pool when no one holds it)
        arguments: list[Tensor] = []
        tensors_only = not kwargs and not any(map(_is_not_tensor_type, map(type, args)))  # as most steps take
        if tensors_only:
            arguments += args  # what flatten would collect
        else:
            flatten((args, kwargs), arguments)
        if any(map(_is_none, map(_buffer_of_tensor, arguments))):  # an expression (or a released leaf) among them
            realize(*[t for t in arguments if not t.node.realized])
        key = tensors_key(args) if tensors_only else call_key(args, kwargs)
        root: Root = (self.fn, args, kwargs)
        steps = self.steps.get(key, [])
        for step in steps:
            binding = step.bind(root, arguments)  # None for a step whose state tensors died
            if binding is not None:
                if tensors_only:
                    self._last = step
                return step.run(*binding, [zrandom.reserve(count) for count in step.rand_counts])
        refused = list(steps)
        steps[:] = [step for step in steps if step.alive]
        self._log_recapture(key, root, refused, len(args))
        return self._capture(key, root, arguments)

    def _log_recapture(self, key: Any, root: Root, refused: list[CapturedStep], positional: int) -> None:
        """Say on `zyx.jit` why this call traces again (nothing for the first capture)."""
        if refused:
            reason = recapture.guard_failure(refused[-1], root)
        else:
            nearest = recapture.nearest_key(self.steps, key)
            if nearest is None:
                return
            reason = recapture.key_change(nearest, key, positional)
        self._recaptures.append(reason)
        logger("zyx.jit").info("%s traced again (capture %d): %s", self._name, len(self._recaptures) + 1,
                               reason.text)

    def _capture(self, key: Any, root: Root, arguments: list[Tensor]) -> Any:
        fn, args, kwargs = root
        before = locate_tensors(root)
        nodes_before = {i: located.tensor.node for i, located in before.items()}
        capture = Capture()
        push_capture(capture)
        try:
            result = fn(*args, **kwargs)
        finally:
            pop_capture()
        results: list[Tensor] = []
        rebuild = flatten(result, results)
        updated = [t for t, _, _ in capture.assigned.values()]
        device = results[0].device if results else updated[0].device if updated else None
        if device is None or device.kind not in CAPTURING_KINDS or any(t.device is not device for t in arguments):
            realize(*results, *updated)  # eager: nothing to capture
            return result
        after = locate_tensors(root)
        graph = {id(node) for node in toposort([t.node for t in results + updated])}
        lazy_read = [located.tensor for i, located in before.items()
                     if not nodes_before[i].realized and id(nodes_before[i]) in graph]
        stored = [located for i, located in after.items() if not located.tensor.node.realized
                  and id(located.tensor) not in capture.assigned and nodes_before.get(i) is not located.tensor.node]
        if lazy_read or stored or any(not old.realized for _, old, _ in capture.assigned.values()):
            self._note_eager(key, stored)
            realize(*results, *updated, *lazy_read, *(located.tensor for located in stored))
            return result  # state that was an expression (or a tensor the step stored): captured next call
        self._eager_keys.discard(key)
        built = _build_step(capture, results, arguments, after, rebuild, device, self.tune)
        if built is None:
            realize(*results, *updated)
            return result
        step, traced_rand_args = built
        step.modes = list(capture.modes.values())
        step.autocast = autocast_dtype()
        step.precision = get_float32_matmul_precision()
        self._remember(key, step)
        for tensor, old, _ in capture.assigned.values():
            tensor.node = old  # the step's program makes the update
        bound = arguments + [ref.tensor() for ref in step.state]
        nodes = list(map(_node_of, bound))
        return step.run(bound, nodes, list(map(_buffer_of, nodes)), None, traced_rand_args,  # type: ignore[arg-type]
                        copy_donated=True)

    def _note_eager(self, key: Any, stored: list[Located]) -> None:
        """A step that stores a tensor it computes (not by `assign`) runs eagerly; say so when it keeps doing it."""
        if stored and key in self._eager_keys:
            names = ", ".join(located.names[0] for located in stored)
            warnings.warn(f"zyx.jit: {self._name} stores tensors it computes in {names} instead of updating them "
                          "with .assign(...); a replay could not update them, so each call runs eagerly",
                          JitWarning, stacklevel=4)
        if stored:
            self._eager_keys.add(key)

    def _remember(self, key: Any, step: CapturedStep) -> None:
        self.steps.setdefault(key, []).append(step)
        counters.bump("programs_captured")
        captured = sum(len(steps) for steps in self.steps.values())
        if captured > MAX_CAPTURES:
            how = recapture.advice(self._recaptures) or "pass varying values as tensors, keep shapes fixed"
            warnings.warn(f"zyx.jit: {self._name} has captured {captured} programs; {how} (ZYX_DEBUG=1 logs why "
                          "each capture happened)", JitWarning, stacklevel=4)

    @property
    def _name(self) -> str:
        return getattr(self.fn, "__name__", "function")


def _build_step(capture: Capture, results: list[Tensor], arguments: list[Tensor], located: dict[int, Located],
                rebuild: Rebuild, device: Any, tune: bool = False) -> Optional[tuple[CapturedStep, list[tuple[int, int]]]]:
    """The step for a traced call (and the random streams the call drew), or None when it computes nothing.

    Raises JitError for a tensor it reads or updates that is neither an argument, nor reachable from the
    function or its arguments, nor made inside the step (its place at the next call is unknown).
    """
    updates = [(tensor, old) for tensor, old, _ in capture.assigned.values()]
    targets: list[Node] = []
    target_of: dict[int, int] = {}
    for node in [t.node for t in results] + [t.node for t, _ in updates]:
        if not node.realized and id(node) not in target_of:
            target_of[id(node)] = len(targets)
            targets.append(node)
    if not targets:
        return None
    found_checks = checks_in(toposort(targets))
    extremes = [check.extremes() for check in found_checks]
    # a fusing device's run hands the checks' extremes to its gate between its launches (run_code.py): the step's
    # program computes them; a torch program runs as one piece, so they get a program of their own before it,
    # reading the step's inputs. The trace is hashed once where it can be (W7's took 0.2 s a hash).
    gated = device.kind in FUSING_KINDS
    signed = None if gated else signature(targets)
    checking = None if gated else _check_program(extremes, _positions(signed[1]), device)
    checks = [(check, k) for k, check in enumerate(found_checks)]
    if extremes and checking is None:  # computed by the step's program
        checks = [(check, len(targets) + k) for k, check in enumerate(found_checks)]
        targets += extremes
        signed = None
    structure, leaves, rands = signed or signature(targets)
    leaf_position = _positions(leaves)
    binder = _Binder(arguments, located)
    old_owner = {id(old): tensor for tensor, old in updates}
    state_owner = {id(l.tensor.node): l.tensor for l in located.values() if l.tensor.node.realized}

    def value_source(node: Node, what: str) -> Source:
        if not node.realized:
            return Source("target", target_of[id(node)])
        if id(node) in leaf_position:
            return Source("input", leaf_position[id(node)])
        if id(node) in capture.created:
            return Source("constant", node=node)
        raise _unlocatable(what, node)

    inputs = []
    for leaf in leaves:
        owner = next((t for t in (old_owner.get(id(leaf)), binder.argument_with(leaf), state_owner.get(id(leaf)))
                      if t is not None), None)
        source = binder.source(owner) if owner is not None else None
        if source is None and id(leaf) not in capture.created:
            raise _unlocatable("reads", leaf)
        inputs.append(source or Source("constant", node=leaf))
    outputs = [(binder.source(t) or value_source(t.node, "returns"), t.shape, t.dtype) for t in results]
    assigned, in_place = [], []
    for tensor, old in updates:
        destination = binder.source(tensor)
        if destination is None:
            if id(old) in capture.created:
                continue  # a tensor the step made and updates: its own, nothing to write back
            raise _unlocatable("updates", old)
        assigned.append((destination, value_source(tensor.node, "updates")))
        if not tensor.node.realized and id(old) in leaf_position and _sole_holder_of_buffer(old, leaves):
            in_place.append((target_of[id(tensor.node)], leaf_position[id(old)]))
    checked = [target for _, target in checks] if gated else []
    key = (structure + (f"|in-place {sorted(in_place)}" if in_place else "")  # another program than without
           + (f"|checks {checked}" if checked else ""))
    program = device.program_for(key, targets, leaves, rands, in_place, tune=int(tune), checks=checked)
    traced_nodes = {id(t): old for t, old in updates}
    bound = arguments + binder.state_tensors
    step = CapturedStep(program, device, inputs, binder.state,
                        alias_pattern(bound, [traced_nodes.get(id(t), t.node) for t in bound]),
                        [math.prod(r.shape) for r in rands], outputs, assigned, rebuild,
                        [(node.shape, node.dtype) for node in targets], checks,
                        argument_layouts=list(map(_layout_of, arguments)),
                        input_layouts=[(leaf.shape, leaf.dtype) for leaf in leaves], checking=checking,
                        gated_checks=bool(checked) and bool(program.checks))
    return step, [r.arg for r in rands]


def _positions(nodes: Sequence[Node]) -> dict[int, int]:
    """Each node's position in `nodes`, by id."""
    return {id(node): i for i, node in enumerate(nodes)}


def _check_program(extremes: list[Node], leaf_position: dict[int, int],
                   device: Any) -> Optional[tuple[Program, list[int]]]:
    """The program computing the index checks' extremes before the step runs (on a device whose runs cannot hand
    them to their gate between launches: the torch backend's), and which of the step's inputs it reads: a failing
    check then raises before any buffer is overwritten in place. None (the checks are computed with the step and
    read after it) when there are none, or when they read random numbers or a value the step's own inputs do not
    hold."""
    if not extremes:
        return None
    structure, leaves, rands = signature(extremes)
    if rands or any(id(leaf) not in leaf_position for leaf in leaves):
        return None
    return device.program_for(structure + "|index checks", extremes, leaves, []), \
        [leaf_position[id(leaf)] for leaf in leaves]


class _Binder:
    """Names the tensors of a traced call by where a replay finds them: argument i, or state tensor i."""

    def __init__(self, arguments: list[Tensor], located: dict[int, Located]):
        self.arguments = arguments
        self.located = located
        self.argument_index: dict[int, int] = {}
        for i, t in enumerate(arguments):
            self.argument_index.setdefault(id(t), i)
        self.state: list[StateRef] = []
        self.state_tensors: list[Tensor] = []
        self.state_index: dict[int, int] = {}

    def argument_with(self, node: Node) -> Optional[Tensor]:
        return next((t for t in self.arguments if t.node is node), None)

    def source(self, tensor: Tensor) -> Optional[Source]:
        if id(tensor) in self.argument_index:
            return Source("arg", self.argument_index[id(tensor)])
        located = self.located.get(id(tensor))
        if located is None:
            return None
        if id(tensor) not in self.state_index:
            self.state_index[id(tensor)] = len(self.state)
            self.state.append(StateRef(weakref.ref(tensor), located.paths, located.names))
            self.state_tensors.append(tensor)
        return Source("located", self.state_index[id(tensor)])


def _sole_holder_of_buffer(leaf: Node, leaves: list[Node]) -> bool:
    return not any(other is not leaf and other.buffer is leaf.buffer for other in leaves)


def _unlocatable(what: str, node: Node) -> JitError:
    return JitError(f"zyx.jit: the step {what} a tensor of shape {node.shape} ({node.dtype.name}) that is not an "
                    "argument, not reachable from the function's globals, closure, defaults or bound instance, and "
                    "not made inside the step; pass it as an argument so each call binds the right tensor")


def jit(fn: Optional[Callable[..., Any]] = None, *, tune: bool = False) -> Any:
    """Trace `fn` once per call key and replay its compiled program on later calls (see the module docstring).
    `@zyx.jit(tune=True)`: search the kernels of each new program for faster shapes first, as ZYX_TUNE=1 does
    (the winners persist in the kernel cache: see `zyx cache ls`)."""
    if fn is None:
        return lambda function: JitFunction(function, tune)
    return JitFunction(fn, tune)
