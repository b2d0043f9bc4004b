"""`@zyx.jit`: trace a step once per input signature, then replay its program with new inputs.

The first call with a signature (shapes, dtypes and devices of tensor arguments, values of other arguments)
runs the function on lazy tensors, finds every tensor it reads besides its arguments (parameters, optimizer
state) and every tensor it assigns in place, and realizes all results as one program. Later calls bind the
new arguments and current state to that program's inputs and launch its kernels: no tracing, no
scheduling. A new process finds the program (and its kernels) in the disk cache by the step's structure.
"""
from __future__ import annotations

import functools
import gc
import math
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .. import counters
from .. import random as zrandom
from ..realize import realize
from ..tensor import Tensor
from ..trace.hashing import signature
from ..trace.node import Node, buffer_leaf
from .capture import Capture, push_capture, pop_capture
from .program import Program

MAX_CAPTURES = 8


class JitWarning(UserWarning):
    """A jitted function keeps capturing new programs (its inputs' shapes or Python arguments vary)."""


def _flatten(value: Any, leaves: list) -> Callable[[list], Any]:
    """Collect the tensors in nested tuples/lists/dicts; return a function that rebuilds the structure."""
    if isinstance(value, Tensor):
        position = len(leaves)
        leaves.append(value)
        return lambda new: new[position]
    if isinstance(value, (list, tuple)):
        parts = [_flatten(v, leaves) for v in value]
        kind = type(value)
        return lambda new: kind(p(new) for p in parts)
    if isinstance(value, dict):
        parts_by_key = {k: _flatten(v, leaves) for k, v in value.items()}
        return lambda new: {k: p(new) for k, p in parts_by_key.items()}
    return lambda new: value


def _describe(value: Any) -> Any:
    """One argument's part of the signature: tensors by shape/dtype/device, anything else by value."""
    if isinstance(value, Tensor):
        return ("tensor", value.shape, value.dtype.name, id(value.device))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_describe(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _describe(v)) for k, v in sorted(value.items())))
    if isinstance(value, (int, float, bool, str, type(None))):
        return ("value", type(value).__name__, value)
    return ("object", id(value))


@dataclass
class Binding:
    """Where a program input comes from at each call."""

    kind: str                   # "arg": the i-th tensor argument; "tensor": a tensor's current value; "node"
    index: int = 0
    tensor: Any = None          # weakref to a Tensor
    node: Optional[Node] = None

    def buffer(self, arguments: list[Tensor]) -> Any:
        if self.kind == "arg":
            return arguments[self.index].node.buffer
        if self.kind == "tensor":
            tensor = self.tensor()
            if tensor is None:
                raise RuntimeError("a tensor read by this jitted function was deleted; it cannot be replayed")
            if not tensor.node.realized:
                realize(tensor)
            return tensor.node.buffer
        return self.node.buffer  # type: ignore[union-attr]


@dataclass
class CapturedStep:
    """One signature's program with the bindings that feed it."""

    program: Program
    backend: Any
    device: Any
    bindings: list[Binding]
    rand_counts: list[int]
    outputs: list[tuple[int, tuple[int, ...], Any]]   # (target index or -1-binding, shape, dtype) per result
    assigned: list[tuple[Any, int]]                   # (weakref Tensor, target index)
    rebuild: Callable[[list], Any]
    traced_rand_args: list[tuple[int, int]]           # the streams the traced call itself drew
    modes: list[tuple[Any, bool]] = field(default_factory=list)  # (weakref module, `training` when traced)
    kernels: int = field(init=False)

    def __post_init__(self) -> None:
        self.kernels = self.program.kernel_count

    def modes_hold(self) -> bool:
        """Every module mode the traced call read is still the same (a deleted module reads as changed)."""
        for module_ref, training in self.modes:
            module = module_ref()
            if module is None or module.__dict__.get("_training", True) != training:
                return False
        return True

    def replay(self, arguments: list[Tensor]) -> Any:
        inputs = [b.buffer(arguments) for b in self.bindings]
        rand_args = [zrandom.reserve(count) for count in self.rand_counts]
        return self.finish(self.backend.run(self.program, inputs, rand_args), arguments, inputs)

    def finish(self, buffers: list[Any], arguments: list[Tensor], inputs: list[Any]) -> Any:
        results = []
        for target, shape, dtype in self.outputs:
            buffer = buffers[target] if target >= 0 else inputs[-1 - target]
            results.append(Tensor(buffer_leaf(buffer, shape, dtype, self.device)))
        for tensor_ref, target in self.assigned:
            tensor = tensor_ref()
            if tensor is not None:
                tensor.node = buffer_leaf(buffers[target], tensor.shape, tensor.dtype, self.device)
        return self.rebuild(results)


class JitFunction:
    """A function traced once per signature and replayed afterwards (see the module docstring)."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.steps: dict[Any, list[CapturedStep]] = {}  # per signature, one step per set of module modes
        self._bound: "weakref.WeakKeyDictionary[Any, JitFunction]" = weakref.WeakKeyDictionary()
        functools.update_wrapper(self, fn)

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        """Methods: each instance gets its own captures (its parameters are different tensors)."""
        if instance is None:
            return self
        if instance not in self._bound:
            self._bound[instance] = JitFunction(functools.partial(self.fn, instance))
        return self._bound[instance]

    @property
    def captured(self) -> list[dict[str, Any]]:
        """One entry per captured program: its signature, kernel count and planned peak memory."""
        return [{"signature": key, "kernels": step.kernels, "planned_peak_bytes": step.program.planned_peak_bytes,
                 "training_modes": [training for _, training in step.modes]}
                for key, steps in self.steps.items() for step in steps]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        arguments: list[Tensor] = []
        _flatten((args, kwargs), arguments)
        key = _describe((args, kwargs))
        for step in self.steps.get(key, ()):
            if step.modes_hold():
                return step.replay(arguments)
        return self._capture(key, args, kwargs, arguments)

    def _capture(self, key: Any, args: tuple, kwargs: dict, arguments: list[Tensor]) -> Any:
        realize(*[t for t in arguments if not t.node.realized])
        devices = {id(t.device) for t in arguments}
        capture = Capture()
        push_capture(capture)
        try:
            result = self.fn(*args, **kwargs)
        finally:
            pop_capture()
        results: list[Tensor] = []
        rebuild = _flatten(result, results)
        device = (results[0].device if results else
                  next(iter(capture.assigned.values()))[0].device if capture.assigned else None)
        if device is None or device.kind != "opencl" or len(devices | {id(device)}) > 1:
            realize(*results, *[t for t, _, _ in capture.assigned.values()])  # eager: nothing to capture
            return result
        built = self._build_step(capture, results, arguments, rebuild, device)
        if built is None:
            realize(*results, *[t for t, _, _ in capture.assigned.values()])
            return result
        step, leaves = built
        step.modes = list(capture.modes.values())
        self.steps.setdefault(key, []).append(step)
        counters.bump("programs_captured")
        captured = sum(len(steps) for steps in self.steps.values())
        if captured > MAX_CAPTURES:
            warnings.warn(f"zyx.jit: {getattr(self.fn, '__name__', 'function')} has captured {captured} "
                          "programs; pass varying values as tensors, keep shapes fixed", JitWarning, stacklevel=3)
        inputs = [leaf.buffer for leaf in leaves]  # the traced values (assigned tensors already point ahead)
        buffers = step.backend.run(step.program, inputs, step.traced_rand_args)
        return step.finish(buffers, arguments, inputs)

    def _build_step(self, capture: Capture, results: list[Tensor], arguments: list[Tensor],
                    rebuild: Callable[[list], Any], device: Any) -> Optional[tuple[CapturedStep, list[Node]]]:
        targets: list[Node] = []
        target_of: dict[int, int] = {}

        def target(node: Node) -> int:
            if id(node) not in target_of:
                target_of[id(node)] = len(targets)
                targets.append(node)
            return target_of[id(node)]

        if any(not old.realized for _, old, _ in capture.assigned.values()):
            return None  # an assigned tensor still held an expression: run eagerly now, capture next call
        pending_results = [t for t in results if not t.node.realized]
        for tensor in pending_results:
            target(tensor.node)
        assigned_targets = [(weakref.ref(t), target(t.node)) for t, _, _ in capture.assigned.values()
                            if not t.node.realized]
        if not targets:
            return None
        structure, leaves, rands = signature(targets)
        bindings = self._bindings(leaves, arguments, capture)
        outputs = []
        for tensor in results:
            if tensor.node.realized:
                position = next((i for i, leaf in enumerate(leaves) if leaf is tensor.node), None)
                if position is None:
                    return None
                outputs.append((-1 - position, tensor.shape, tensor.dtype))
            else:
                outputs.append((target_of[id(tensor.node)], tensor.shape, tensor.dtype))
        leaf_position = {id(leaf): i for i, leaf in enumerate(leaves)}
        in_place = [(index, leaf_position[id(old)]) for (ref, index), (_, old, _) in
                    zip(assigned_targets, capture.assigned.values()) if id(old) in leaf_position]
        program = device.backend.program_for(structure, targets, leaves, rands, in_place)
        step = CapturedStep(program, device.backend, device, bindings, [math.prod(r.shape) for r in rands],
                            outputs, assigned_targets, rebuild, [r.arg for r in rands])
        return step, leaves

    @staticmethod
    def _bindings(leaves: list[Node], arguments: list[Tensor], capture: Capture) -> list[Binding]:
        argument_of = {id(t.node): i for i, t in enumerate(arguments)}
        assigned_old = {id(old): tensor for tensor, old, _ in capture.assigned.values()}
        bindings = []
        for leaf in leaves:
            if id(leaf) in argument_of:
                bindings.append(Binding("arg", index=argument_of[id(leaf)]))
            elif id(leaf) in assigned_old:
                bindings.append(Binding("tensor", tensor=weakref.ref(assigned_old[id(leaf)])))
            else:
                owners = [r for r in gc.get_referrers(leaf) if isinstance(r, Tensor)]
                bindings.append(Binding("tensor", tensor=weakref.ref(owners[0])) if owners
                                else Binding("node", node=leaf))
        return bindings


def jit(fn: Callable[..., Any]) -> JitFunction:
    """Trace `fn` once per signature and replay its compiled program on later calls."""
    return JitFunction(fn)
