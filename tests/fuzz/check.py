"""Run a graph on zyx devices and on the references, compare, and shrink a failing graph to a reproducer.

Forward values are compared with numpy computing in float64 ("shadow" precision), dtypes with torch in the
graph's own dtypes, and gradients of sum(output * weight) with torch autograd in float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

import zyx

from .graphs import Graph, run_steps
from .ops import APPROXIMATE, namespace

# max |actual - expected| allowed, relative to max(1, max |expected|) of the compared tensor
TOLERANCE = {"float32": 1e-4, "float64": 1e-9}
APPROXIMATE_TOLERANCE = 1e-5  # float64 graphs using an op that zyx approximates (erf in gelu)


@dataclass(frozen=True)
class Failure:
    """What differed: `part` is "error", "shape", "dtype", "forward" or "grad <input>"; on which device."""
    graph: Graph
    device: str
    part: str
    detail: str

    def __str__(self) -> str:
        return f"seed {self.graph.seed} on {self.device}: {self.part}: {self.detail}"


@dataclass(frozen=True)
class Reference:
    """What zyx should give: numpy's output (in float64), torch's dtype, torch's gradients (in float64)."""
    output: np.ndarray
    dtype: str
    grads: list[np.ndarray]


def weight_line(graph: Graph, shape: tuple[int, ...]) -> str:
    """Source of the weight the output is multiplied by before summing to the scalar gradients are taken of."""
    return f"input_data({10 ** 9 + graph.seed}, {shape}, 'float64', -1.0, 1.0)"


def reference(graph: Graph) -> Reference:
    output = np.asarray(run_steps(graph.steps, "numpy", namespace("numpy"))[graph.output])
    dtype = str(run_steps(graph.steps, "torch", namespace("torch", shadow=False))[graph.output].dtype)
    grads: list[np.ndarray] = []
    if graph.sources and output.dtype.kind == "f":
        names = run_steps(graph.steps, "torch", namespace("torch"), track=tuple(graph.sources))
        out = names[graph.output]
        weight = torch.from_numpy(eval(weight_line(graph, tuple(out.shape)), names))  # noqa: S307
        leaves = [names[s] for s in graph.sources]
        found = torch.autograd.grad((out * weight).sum(), leaves, allow_unused=True) if out.requires_grad \
            else [None] * len(leaves)  # the output depends on no source through a differentiable path
        grads = [np.zeros(names[s].shape) if g is None else g.numpy() for s, g in zip(graph.sources, found)]
    return Reference(output, dtype.removeprefix("torch."), grads)


def run_zyx(graph: Graph, device: zyx.Device) -> tuple[np.ndarray, str, list[Optional[np.ndarray]]]:
    """The output (realized first, alone), then the gradients of sum(output * weight) w.r.t. the sources."""
    names = run_steps(graph.steps, "zyx", namespace("zyx", device))
    out = names[graph.output]
    value = out.numpy()
    grads: list[Optional[np.ndarray]] = []
    if graph.sources and out.dtype.is_float:
        weight = zyx.tensor(eval(weight_line(graph, out.shape), names).astype(out.dtype.np), device=device)  # noqa: S307
        found = (out * weight).sum().backward([names[s] for s in graph.sources])
        zyx.realize(*(g for g in found if g is not None))  # one program for all gradients, as a training step
        grads = [None if g is None else g.numpy() for g in found]
    return value, out.dtype.name, grads


def tolerance(graph: Graph) -> float:
    """The tolerance of the least precise float the graph computes in (an input's dtype or a cast's)."""
    named = {dict(step.params).get("dtype") for step in graph.steps}
    if "float32" in named:
        return TOLERANCE["float32"]
    return APPROXIMATE_TOLERANCE if graph.ops & APPROXIMATE else TOLERANCE["float64"]


def difference(actual: np.ndarray, expected: np.ndarray, tol: Optional[float]) -> Optional[str]:
    """Why `actual` does not match `expected` (None if it does): shape, or the worst element."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return f"shape {actual.shape}, expected {expected.shape}"
    if actual.size == 0:
        return None
    if tol is None:
        bad = actual != expected
    else:
        scale = max(1.0, float(np.abs(expected).max()))
        bad = ~(np.abs(actual.astype(np.float64) - expected) <= tol * scale)
    if not bad.any():
        return None
    worst = np.unravel_index(int(np.argmax(bad if tol is None else np.where(
        bad, np.abs(actual.astype(np.float64) - expected), 0))), actual.shape)
    return (f"{int(bad.sum())} of {actual.size} elements differ; at {tuple(int(i) for i in worst)}: "
            f"{actual[worst]!r}, expected {expected[worst]!r}")


def _float64_refused(graph: Graph, error: Exception) -> bool:
    """A graph computing in float64 on a device without it (WGSL has none): refused at the call, by design (the
    refusal itself is tested with the device), not a finding."""
    uses = "float64" in {dict(step.params).get("dtype") for step in graph.steps}
    return uses and isinstance(error, TypeError) and "has no float64 support" in str(error)


def check(graph: Graph, devices: dict[str, zyx.Device]) -> list[Failure]:
    """Every way each device's results differ from the references."""
    ref = reference(graph)
    failures = []
    for label, device in devices.items():
        try:
            output, dtype, grads = run_zyx(graph, device)
        except Exception as error:  # noqa: BLE001 (any exception is a finding)
            if not _float64_refused(graph, error):
                failures.append(Failure(graph, label, "error", f"{type(error).__name__}: {error}"))
            continue
        if dtype != ref.dtype:
            failures.append(Failure(graph, label, "dtype", f"{dtype}, torch gives {ref.dtype}"))
            continue
        found = difference(output, ref.output, tolerance(graph) if dtype.startswith("float") else None)
        if found:
            failures.append(Failure(graph, label, "forward", found))
        for source, grad, expected in zip(graph.sources, grads, ref.grads):
            found = difference(np.zeros_like(expected) if grad is None else grad, expected, tolerance(graph))
            if found:
                failures.append(Failure(graph, label, f"grad {source}", found))
    return failures


def shrink(failure: Failure, devices: dict[str, zyx.Device]) -> Failure:
    """The failure of the shortest prefix of the graph (only the steps its output needs) failing on the same
    device in the same way (an error, a shape, a dtype, a forward value or a gradient)."""
    kind = failure.part.split()[0]
    for step in failure.graph.steps:
        if step.name == failure.graph.output:
            break
        smaller = failure.graph.truncated(step.name)
        found = [f for f in check(smaller, {failure.device: devices[failure.device]}) if f.part.split()[0] == kind]
        if found:
            return found[0]
    return failure


def reproducer(failure: Failure) -> str:
    """A script that shows the failure: the zyx program, then the numpy lines that give the expected output."""
    graph = failure.graph
    device = "zyx.OpenCL()" if failure.device == "opencl" else "zyx.CPU()"
    lines = ["import numpy as np", "import torch", "import zyx",
             "from tests.fuzz.data import gather_index, index_data, input_data", f"dev = {device}",
             *graph.lines("zyx"), f"print({graph.output}.numpy())"]
    if failure.part.startswith("grad"):
        lines += [f"w = zyx.tensor({weight_line(graph, '{0}.shape'.format(graph.output))}, device=dev)"
                  f".cast({graph.output}.dtype)",
                  f"grads = ({graph.output} * w).sum().backward([{', '.join(graph.sources)}])",
                  "print([g.numpy() for g in grads])"]
    lines += ["# numpy reference (float32 computed as float64):",
              *(f"# {line}" for line in graph.lines("numpy"))]
    return "\n".join(lines)
