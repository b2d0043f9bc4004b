"""`zyx.viz`: a picture of what the JIT makes of a trace, one coloured cluster per kernel.

For tensors, the trace below them is scheduled as their device would schedule it (nothing runs or compiles):
each cluster holds the trace nodes that kernel computes and is labelled with the kernel's name and launch
size; nodes it stores to memory are double-bordered boxes with their shape; buffers read from outside are
cylinders. For a `@zyx.jit` function, each captured program is drawn from its launches (the trace is gone by
then): a cluster per launch (a launch group's kernels share one) with the node it stores, the slots it writes,
and the inputs and slots it reads.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Sequence, Union

from .dot import Cluster, DotGraph
from .step.jit import JitFunction
from .jit.kernel_nodes import contained_nodes
from .runtime.interpret import InterpretedProgram
from .jit.program import Program, launch_size
from .jit.device_traits import CPU_VECTOR_WIDTH, DeviceTraits
from .jit.schedule import schedule
from .tensor import Tensor
from .trace.node import Node
from .trace.ops import Op
from .trace.origin import recorded_structure

log = logging.getLogger("zyx.viz")

PALETTE = ("#cfe2f3", "#d9ead3", "#fff2cc", "#f4cccc", "#d9d2e9", "#fce5cd", "#d0e0e3", "#ead1dc")

Drawable = Union[Tensor, Sequence[Tensor], JitFunction]


def viz(tensor_or_step: Drawable, path: str | os.PathLike) -> Path:
    """Draw the kernels of a tensor's trace (or several tensors', or a `@zyx.jit` function's captured programs)
    to `path`. A `.dot` path gets DOT source; any other gets SVG from Graphviz's `dot`, or, where Graphviz is
    not installed, DOT source beside it (`path` with the suffix `.dot`). Returns the path written."""
    graph = _graph(tensor_or_step)
    path = Path(path)
    dot = shutil.which("dot")
    if path.suffix == ".dot" or dot is None:
        if path.suffix != ".dot":
            log.warning("zyx.viz: Graphviz's dot is not installed; writing DOT source to %s", path.with_suffix(".dot"))
            path = path.with_suffix(".dot")
        path.write_text(graph.text())
        return path
    result = subprocess.run([dot, "-Tsvg", "-o", str(path)], input=graph.text(), text=True, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"zyx.viz: dot failed rendering {path}: {result.stderr.strip()}")
    return path


def _graph(target: Drawable) -> DotGraph:
    if isinstance(target, JitFunction):
        programs = [step.program for steps in target.steps.values() for step in steps]
        if not programs:
            raise ValueError(f"zyx.viz: {getattr(target.fn, '__name__', 'the function')} has captured no program "
                             "yet; call it once first")
        graph = DotGraph()
        for number, program in enumerate(programs):
            draw = _draw_interpreted if isinstance(program, InterpretedProgram) else _draw_program
            draw(graph, program, f"p{number}")
        return graph
    tensors = [target] if isinstance(target, Tensor) else list(target)
    for position, tensor in enumerate(tensors):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"zyx.viz: expected a Tensor, a list of Tensors or a @zyx.jit function; item "
                            f"{position} is a {type(tensor).__name__}")
    if not tensors:
        raise ValueError("zyx.viz: nothing to draw (an empty list)")
    return _draw_trace(tensors)


def _draw_trace(tensors: list[Tensor]) -> DotGraph:
    """Schedule the tensors' trace (a realized tensor's recorded one) and draw each kernel's nodes."""
    graph = DotGraph()
    roots = [recorded_structure(t.node) for t in tensors]
    pending = [node for node in roots if node.op is not Op.BUFFER]
    kernels = schedule(pending, _traits(tensors[0].device))[0] if pending else []
    name_of: dict[int, str] = {}
    serial: dict[int, int] = {}  # node -> a number in the order drawn (stable names, unlike ids)
    for k, kernel in enumerate(kernels):
        global_size, local_size = launch_size(kernel)
        cluster = graph.cluster(f"{kernel.name}\nglobal {global_size} local {local_size or '-'}",
                                PALETTE[k % len(PALETTE)])
        stored = {id(node) for node in kernel.outputs}
        local: dict[int, str] = {}
        for node in contained_nodes(kernel):
            number = serial.setdefault(id(node), len(serial))
            name = f"n{number}" if id(node) in stored else f"k{k}n{number}"
            local[id(node)] = name
            if id(node) in stored:
                name_of[id(node)] = name
                graph.node(name, f"{node.op.name}\nstored {node.shape} {node.dtype.name}", cluster,
                           shape="box", peripheries="2")
            else:
                graph.node(name, _node_label(node), cluster, shape="ellipse")
        read_by_trace = set()
        for node in contained_nodes(kernel):
            for src in node.src:
                read_by_trace.add(id(src))
                graph.edge(local.get(id(src)) or _outside(graph, src, name_of, serial), local[id(node)])
        for node in kernel.loads:  # a buffer the scheduler made (a product's packed operand) is no trace source
            if id(node) not in read_by_trace and id(node) not in local:
                graph.edge(_outside(graph, node, name_of, serial), local[id(kernel.outputs[0])])
    for node in roots:
        if node.op is Op.BUFFER:
            _outside(graph, node, name_of, serial)
    return graph


def _draw_interpreted(graph: DotGraph, program: InterpretedProgram, prefix: str) -> None:
    """A program run op by op (zyx.Torch()): one node per library call, drawn through the views between them."""
    drawn: dict[int, str] = {}  # slot -> the node its value comes from (a view's is its source's)
    for k, step in enumerate(program.steps):
        if step.sources and not step.computes:
            drawn[k] = drawn[step.sources[0]]
            continue
        drawn[k] = f"{prefix}s{k}"
        op = step.op.name if step.op is not Op.CONST else f"CONST {step.arg}"
        label = f"input {step.arg}" if step.op is Op.BUFFER else op
        graph.node(drawn[k], f"{label}\n{step.shape} {step.dtype.name}",
                   shape="cylinder" if step.op is Op.BUFFER else "ellipse")
        for source in dict.fromkeys(step.sources):
            graph.edge(drawn[source], drawn[k])


def _outside(graph: DotGraph, node: Node, name_of: dict[int, str], serial: dict[int, int]) -> str:
    """The name of a node read from memory: stored by a kernel, or a buffer from outside (drawn once)."""
    if id(node) not in name_of:
        name_of[id(node)] = f"n{serial.setdefault(id(node), len(serial))}"
        graph.node(name_of[id(node)], f"buffer {node.shape} {node.dtype.name}", shape="cylinder")
    return name_of[id(node)]


def _node_label(node: Node) -> str:
    if node.op is Op.CONST:
        return f"CONST {node.arg}"
    if node.op in (Op.SUM, Op.RMAX, Op.PERMUTE):
        return f"{node.op.name} {node.arg}\n{node.shape}"
    return f"{node.op.name}\n{node.shape}"


def _traits(device: Any) -> DeviceTraits:
    """The device's own traits; the CPU reference device is drawn as zyx.OpenCL() on a CPU would run it."""
    traits = getattr(device, "traits", None)
    return traits if traits is not None else DeviceTraits(vector_width=CPU_VECTOR_WIDTH)


def _draw_program(graph: DotGraph, program: Program, prefix: str) -> None:
    """A captured program: each launch's cluster holds its kernel and the slots it writes first."""
    written: dict[int, str] = {}
    inputs: set[int] = set()
    for k, launch in enumerate(program.launches):
        local = f"local {launch.local_size}" if launch.local_size else "local -"
        cluster: Cluster = graph.cluster(f"{launch.name}\nglobal {launch.global_size} {local}",
                                         PALETTE[k % len(PALETTE)])
        kernel = f"{prefix}k{k}"
        graph.node(kernel, f"{launch.node or launch.name}\n{launch.flops} FLOPs, {launch.bytes_moved} bytes",
                   cluster, shape="ellipse")
        for slot in program.allocs[k]:
            written[slot] = f"{prefix}s{slot}"
            graph.node(written[slot], f"stored slot {slot}\n{program.slot_bytes[slot]} bytes", cluster,
                       shape="box", peripheries="2")
            graph.edge(kernel, written[slot])
        for kind, index in launch.args:
            if kind == "input":
                if index not in inputs:
                    inputs.add(index)
                    graph.node(f"{prefix}i{index}", f"input {index}", shape="cylinder")
                graph.edge(f"{prefix}i{index}", kernel)
            elif kind == "slot" and index not in program.allocs[k]:
                graph.edge(written[index], kernel)
