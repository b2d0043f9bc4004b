"""Random graphs: a seeded program of steps over 1-3 inputs, each step one op of ops.OPS.

The generator runs every proposed step in torch (in the graph's own dtypes) and keeps it only where
admissible.py admits it, so that a mismatch is a bug, not rounding.
Shapes come from a small pool so that graphs share kernels and a cold cache compiles fewer of them.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import numpy as np
import torch

from .admissible import POSITIVE_DOMAIN, admissible
from .ops import OPS, namespace

SHAPES = [(), (1,), (7,), (3, 5), (1, 5), (5, 1), (2, 3, 4), (2, 1, 4), (3, 1, 2, 5), (10000,), (4, 2500)]
SCALARS = [2.0, -0.5, 0.1, 3.0]
PAD_VALUES = [0.0, 1.5, -1.0]
INPUT_OPS = {"input", "index", "gather_index"}

INPUT_FORMS = {  # the inputs of a graph, as source per framework (numpy and torch cast to their shadow dtype)
    "input": {"zyx": "zyx.tensor(input_data({seed}, {shape}, '{dtype}', {low}, {high}), device=dev)",
              "numpy": "input_data({seed}, {shape}, '{dtype}', {low}, {high}).astype({dtype})",
              "torch": "torch.from_numpy(input_data({seed}, {shape}, '{dtype}', {low}, {high})).to({dtype})"},
    "index": {"zyx": "zyx.tensor(index_data({seed}, {shape}, {size}), device=dev)",
              "numpy": "index_data({seed}, {shape}, {size})",
              "torch": "torch.from_numpy(index_data({seed}, {shape}, {size}))"},
    "gather_index": {"zyx": "zyx.tensor(gather_index({seed}, {shape}, {size}), device=dev)",
                     "numpy": "gather_index({seed}, {shape}, {size})",
                     "torch": "torch.from_numpy(gather_index({seed}, {shape}, {size}))"},
}


@dataclass(frozen=True)
class Step:
    """`name = op(args..., **params)`; params are source text (repr of numbers, tuples; bare dtype names)."""
    name: str
    op: str
    args: tuple[str, ...]
    params: tuple[tuple[str, str], ...] = ()

    def source(self, framework: str) -> str:
        form = INPUT_FORMS[self.op][framework] if self.op in INPUT_OPS else OPS[self.op].form(framework)
        return form.format(**dict(zip("abc", self.args)), **dict(self.params))


@dataclass(frozen=True)
class Graph:
    """A seeded program; its output is the last step. `sources`: the float inputs gradients are taken for."""
    seed: int
    steps: tuple[Step, ...]

    @property
    def output(self) -> str:
        return self.steps[-1].name

    @property
    def sources(self) -> list[str]:
        return [s.name for s in self.steps if s.op == "input" and "float" in dict(s.params)["dtype"]]

    @property
    def ops(self) -> set[str]:
        return {s.op for s in self.steps}

    def lines(self, framework: str) -> list[str]:
        return [f"{s.name} = {s.source(framework)}" for s in self.steps]

    def truncated(self, name: str) -> "Graph":
        """The graph whose output is step `name`, keeping only the steps it depends on."""
        by_name = {s.name: s for s in self.steps}
        needed, stack = set(), [name]
        while stack:
            current = stack.pop()
            if current not in needed:
                needed.add(current)
                stack.extend(by_name[current].args)
        cut = [s for s in self.steps if s.name in needed]
        return replace(self, steps=tuple(cut[:cut.index(by_name[name]) + 1]))


def run_steps(steps: tuple[Step, ...], framework: str, names: dict[str, Any],
              track: tuple[str, ...] = ()) -> dict[str, Any]:
    """Evaluate steps in order into `names` (a framework namespace) and return it; torch leaves named in
    `track` record gradients."""
    for step in steps:
        value = eval(step.source(framework), names)  # noqa: S307 (our own generated source)
        names[step.name] = value.requires_grad_() if step.name in track else value
    return names


# ---- the generator ----------------------------------------------------------------------------------------

class GraphBuilder:
    """Grows a graph step by step, keeping each step's torch value to choose and check the next ones."""

    def __init__(self, seed: int):
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.steps: list[Step] = []
        self.values = namespace("torch", shadow=False)
        self.counter = 0

    # values
    def names(self, kind: str = "any") -> list[str]:
        """Step names whose values are of `kind`: float, int, bool, numeric (float or int), any."""
        found = []
        for step in self.steps:
            v = self.values[step.name]
            is_kind = {"float": v.is_floating_point(), "bool": v.dtype == torch.bool,
                       "int": v.dtype in (torch.int32, torch.int64),
                       "numeric": v.dtype != torch.bool, "any": True}[kind]
            if is_kind and step.op not in ("index", "gather_index"):
                found.append(step.name)
        return found

    def pick(self, kind: str = "any", shape_ok: Callable[[tuple[int, ...]], bool] = lambda s: True,
             latest: float = 0.6) -> Optional[str]:
        """A value of `kind`: the latest with probability `latest`, else recent ones likelier (so a graph is a
        chain of ops, not a bag of leaves)."""
        names = [m for m in self.names(kind) if shape_ok(tuple(self.values[m].shape))]
        if not names:
            return None
        if self.rng.random() < latest:
            return names[-1]
        weights = np.arange(1, len(names) + 1, dtype=np.float64) ** 2
        return names[self.rng.choice(len(names), p=weights / weights.sum())]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.values[name].shape)

    def choice(self, options: list[Any]) -> Any:
        return options[self.rng.integers(len(options))]

    # steps
    def try_step(self, op: str, args: tuple[str, ...], params: dict[str, Any]) -> Optional[str]:
        """Append the step if torch can run it and it is admissible; its name, or None."""
        step = Step(f"v{self.counter}", op, args, tuple((k, str(v)) for k, v in params.items()))
        try:
            with warnings.catch_warnings():  # a degenerate proposal (var of one element) warns, then is refused
                warnings.simplefilter("ignore")
                out = eval(step.source("torch"), self.values)  # noqa: S307
        except (RuntimeError, ValueError, IndexError, TypeError):
            return None
        if op not in INPUT_OPS and not admissible(step, [self.values[a] for a in args], out):
            return None
        self.values[step.name] = out
        self.steps.append(step)
        self.counter += 1
        return step.name

    def add_input(self, shape: tuple[int, ...], dtype: str, low: float = -2.0, high: float = 2.0) -> str:
        name = self.try_step("input", (), dict(seed=self.seed * 16 + self.counter, shape=shape, dtype=dtype,
                                               low=low, high=high))
        assert name is not None
        return name

    def add_index(self, op: str, shape: tuple[int, ...], size: int) -> str:
        name = self.try_step(op, (), dict(seed=self.seed * 16 + self.counter, shape=shape, size=size))
        assert name is not None
        return name

    def condition(self) -> Optional[str]:
        """A bool value: a recent one, else a new comparison of two numeric values (bools are rare otherwise)."""
        found = self.pick("bool")
        if found is None and (a := self.pick("numeric")) is not None:
            other = self.pick("numeric", _broadcasts(self.shape(a)), latest=0.1)
            found = other and self.try_step("lt", (a, other), {})
        return found

    def positive(self, name: str) -> Optional[str]:
        """A positive operand for log, sqrt and 1/x: the value itself if it already is one."""
        if bool((self.values[name] >= 0.1).all()):
            return name
        return self.try_step("positive", (name,), {})


def _variant(b: GraphBuilder, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts with `shape`: a suffix of it, some axes set to 1, or a matmul partner."""
    kind = b.rng.integers(4)
    if kind == 0 or not shape:
        return shape
    if kind == 1:
        return shape[b.rng.integers(len(shape)):]
    if kind == 2:
        return tuple(1 if b.rng.random() < 0.5 else s for s in shape)
    return (shape[-1], b.choice([1, 3, 6])) if shape[-1] <= 64 else (shape[-1],)


def _broadcasts(shape: tuple[int, ...]) -> Callable[[tuple[int, ...]], bool]:
    def ok(other: tuple[int, ...]) -> bool:
        try:
            np.broadcast_shapes(shape, other)
            return True
        except ValueError:
            return False
    return ok


def _axes(b: GraphBuilder, ndim: int) -> Any:
    """Reduction axes: an int or a tuple, some negative."""
    count = int(b.rng.integers(1, ndim + 1))
    axes = sorted(b.rng.choice(ndim, size=count, replace=False).tolist())
    axes = [a - ndim if b.rng.random() < 0.3 else a for a in axes]
    return axes[0] if count == 1 and b.rng.random() < 0.5 else tuple(axes)


def _basic_index(b: GraphBuilder, shape: tuple[int, ...]) -> str:
    items = []
    for size in shape[:int(b.rng.integers(1, len(shape) + 1))]:
        if b.rng.random() < 0.25:
            items.append(str(int(b.rng.integers(-size, size))))
            continue
        step = b.choice([1, 2, 3, -1, -2])
        start = b.choice(["", str(int(b.rng.integers(-size, size)))])
        stop = b.choice(["", str(int(b.rng.integers(-size, size + 1)))])
        items.append(f"{start}:{stop}" + (f":{step}" if step != 1 else ""))
    return ", ".join(items)


def _reshape_target(b: GraphBuilder, shape: tuple[int, ...]) -> tuple[int, ...]:
    numel = math.prod(shape)
    options = [(numel,), tuple(reversed(shape)), shape + (1,), (1,) + shape]
    if len(shape) >= 2:
        k = int(b.rng.integers(len(shape) - 1))
        options.append(shape[:k] + (shape[k] * shape[k + 1],) + shape[k + 2:])
    divisors = [d for d in (2, 3, 4, 5) if numel % d == 0 and numel > d]
    if divisors:
        d = b.choice(divisors)
        options.append((d, -1) if b.rng.random() < 0.5 else (numel // d, d))
    return b.choice(options)


def _unary(kind: str) -> Callable[[GraphBuilder, str], Optional[str]]:
    def propose(b: GraphBuilder, op: str) -> Optional[str]:
        a = b.pick(kind)
        if a is not None and op in POSITIVE_DOMAIN:
            a = b.positive(a)
        return None if a is None else b.try_step(op, (a,), {})
    return propose


def _binary(kind: str, other: str = "") -> Callable[[GraphBuilder, str], Optional[str]]:
    def propose(b: GraphBuilder, op: str) -> Optional[str]:
        a = b.pick(kind)
        if a is None:
            return None
        c = b.pick(other or kind, _broadcasts(b.shape(a)), latest=0.1)
        if op == "pow":
            a = b.positive(a)
        return None if a is None or c is None else b.try_step(op, (a, c), {})
    return propose


def _logical(b: GraphBuilder, op: str) -> Optional[str]:
    a = b.condition()
    if a is None or op == "logical_not":
        return a and b.try_step(op, (a,), {})
    other = b.pick("bool", _broadcasts(b.shape(a)), latest=0.1)
    return other and b.try_step(op, (a, other), {})


def _where(b: GraphBuilder, op: str) -> Optional[str]:
    cond = b.condition()
    x = cond and b.pick("numeric", _broadcasts(b.shape(cond)), latest=0.3)
    y = x and b.pick("numeric", _broadcasts(np.broadcast_shapes(b.shape(cond), b.shape(x))), latest=0.1)
    return y and b.try_step(op, (cond, x, y), {})


def _scale(b: GraphBuilder, op: str) -> Optional[str]:
    a = b.pick("numeric")
    return a and b.try_step(op, (a,), dict(value=b.choice(SCALARS)))


def _cast(b: GraphBuilder, op: str) -> Optional[str]:
    a = b.pick("any")
    return a and b.try_step(op, (a,), dict(dtype=b.choice(["float32", "float64", "int32", "int64", "bool"])))


def _view(make: Callable[[GraphBuilder, tuple[int, ...]], Optional[dict[str, Any]]], min_ndim: int = 0):
    def propose(b: GraphBuilder, op: str) -> Optional[str]:
        a = b.pick("any", lambda s: len(s) >= min_ndim)
        params = a and make(b, b.shape(a))
        return params and b.try_step(op, (a,), params)
    return propose


def _permute_params(b: GraphBuilder, shape: tuple[int, ...]) -> dict[str, Any]:
    return dict(order=tuple(b.rng.permutation(len(shape)).tolist()))


def _transpose_params(b: GraphBuilder, shape: tuple[int, ...]) -> dict[str, Any]:
    i, j = b.rng.choice(len(shape), size=2, replace=False).tolist()
    return dict(i=i - len(shape) if b.rng.random() < 0.3 else i, j=j)


def _expand_params(b: GraphBuilder, shape: tuple[int, ...]) -> Optional[dict[str, Any]]:
    target = tuple(b.choice([2, 3]) if s == 1 else s for s in shape)
    if target == shape or b.rng.random() < 0.3:
        target = (2,) + target if len(target) < 4 else target
    return None if target == shape else dict(shape=target)


def _flip_params(b: GraphBuilder, shape: tuple[int, ...]) -> dict[str, Any]:
    count = int(b.rng.integers(1, len(shape) + 1))
    return dict(axes=sorted(b.rng.choice(len(shape), size=count, replace=False).tolist()))


def _pad_params(b: GraphBuilder, shape: tuple[int, ...]) -> dict[str, Any]:
    count = int(b.rng.integers(1, len(shape) + 1))
    return dict(pairs=[(int(b.rng.integers(3)), int(b.rng.integers(3))) for _ in range(count)],
                value=b.choice(PAD_VALUES))


def _reduce(kind: str) -> Callable[[GraphBuilder, str], Optional[str]]:
    def propose(b: GraphBuilder, op: str) -> Optional[str]:
        a = b.pick(kind, lambda s: len(s) >= 1)
        return a and b.try_step(op, (a,), dict(axis=_axes(b, len(b.shape(a))), keepdim=b.rng.random() < 0.4))
    return propose


def _matmul(b: GraphBuilder, op: str) -> Optional[str]:
    a = b.pick("float", lambda s: len(s) >= 1)
    if a is None:
        return None
    partners = [m for m in b.names("float") if b.shape(m) and b.shape(m)[-2 if len(b.shape(m)) > 1 else -1]
                == b.shape(a)[-1]]
    if partners:
        return b.try_step(op, (a, b.choice(partners)), {})
    if len(b.shape(a)) >= 2:
        turned = b.try_step("transpose", (a,), dict(i=-1, j=-2))
        return turned and b.try_step(op, (a, turned), {})
    return None


def _take(b: GraphBuilder, op: str) -> Optional[str]:
    a = b.pick("numeric", lambda s: len(s) >= 1)
    if a is None:
        return None
    axis = int(b.rng.integers(len(b.shape(a))))
    index = b.add_index("index", b.choice([(), (4,), (2, 3)]), b.shape(a)[axis])
    return b.try_step(op, (a, index), dict(lead=": , " * axis))


def _gather(b: GraphBuilder, op: str) -> Optional[str]:
    a = b.pick("numeric", lambda s: len(s) >= 1)
    if a is None:
        return None
    shape = b.shape(a)
    axis = int(b.rng.integers(len(shape)))
    index_shape = tuple(int(b.rng.integers(1, 5)) if d == axis else int(b.rng.integers(1, s + 1))
                        for d, s in enumerate(shape))
    index = b.add_index("gather_index", index_shape, shape[axis])
    return b.try_step(op, (a, index), dict(axis=axis))


def _join(b: GraphBuilder, op: str) -> Optional[str]:
    a = b.pick("any", lambda s: len(s) >= 1 or op == "stack")
    if a is None:
        return None
    ndim = len(b.shape(a))
    axis = int(b.rng.integers(ndim + (op == "stack")))
    same = [m for m in b.names("any") if len(b.shape(m)) == ndim and all(
        x == y for d, (x, y) in enumerate(zip(b.shape(m), b.shape(a))) if d != axis or op == "stack")]
    return b.try_step(op, (a, b.choice(same)), dict(axis=axis))


PROPOSERS: dict[str, tuple[float, Callable[[GraphBuilder, str], Optional[str]]]] = {  # op -> (weight, proposer)
    **{op: (1.0, _unary("float")) for op in ("exp", "log", "sqrt", "reciprocal", "sin", "cos", "tanh", "sigmoid",
                                             "relu", "square", "floor", "ceil", "silu", "softplus", "gelu")},
    "neg": (1.0, _unary("numeric")), "abs": (1.0, _unary("numeric")), "logical_not": (0.5, _logical),
    **{op: (2.0, _binary("numeric")) for op in ("add", "sub", "mul")},
    "div": (1.0, _binary("float", "numeric")), "pow": (0.5, _binary("float")),
    "maximum": (1.0, _binary("numeric")), "minimum": (1.0, _binary("numeric")),
    "lt": (1.0, _binary("numeric")), "ge": (1.0, _binary("numeric")), "eq": (0.5, _binary("int")),
    "logical_and": (0.5, _logical), "logical_or": (0.5, _logical),
    "where": (1.5, _where), "scale": (1.0, _scale), "cast": (1.5, _cast),
    "reshape": (2.0, _view(lambda b, s: dict(shape=_reshape_target(b, s)))),
    "permute": (1.5, _view(_permute_params, 2)), "transpose": (1.0, _view(_transpose_params, 2)),
    "expand": (1.5, _view(_expand_params)), "getitem": (2.0, _view(lambda b, s: dict(index=_basic_index(b, s)), 1)),
    "flip": (1.0, _view(_flip_params, 1)), "pad": (1.5, _view(_pad_params, 1)),
    "sum": (2.0, _reduce("any")), "max": (1.5, _reduce("numeric")), "min": (1.0, _reduce("numeric")),
    "mean": (1.0, _reduce("float")), "var": (1.0, _reduce("float")), "prod": (0.7, _reduce("numeric")),
    "logsumexp": (1.0, _reduce("float")),
    "matmul": (2.0, _matmul), "take": (1.0, _take), "gather": (1.0, _gather),
    "cat": (1.0, _join), "stack": (0.7, _join),
}


def generate(seed: int, exclude: frozenset[str] = frozenset()) -> Graph:
    """The graph of `seed`: 1-3 inputs (float32 or float64, sometimes an int32 one), then 2-8 op steps."""
    b = GraphBuilder(seed)
    dtype = "float64" if b.rng.random() < 0.2 else "float32"
    shape = SHAPES[b.rng.integers(len(SHAPES))]
    b.add_input(shape, dtype)
    for _ in range(int(b.rng.integers(0, 3))):
        if b.rng.random() < 0.25:
            b.add_input(_variant(b, shape), "int32", -4, 5)
        else:
            b.add_input(_variant(b, shape), dtype)
    ops = [op for op in PROPOSERS if op not in exclude]
    weights = np.array([PROPOSERS[op][0] for op in ops])
    target = len(b.steps) + int(b.rng.integers(2, 9))
    for _ in range(60):
        if len(b.steps) >= target and b.steps[-1].op not in INPUT_OPS:
            break
        op = ops[b.rng.choice(len(ops), p=weights / weights.sum())]
        PROPOSERS[op][1](b, op)
    if b.steps[-1].op in INPUT_OPS:  # rare: end on an op, not an input
        b.try_step("scale", (b.names("numeric")[-1],), dict(value=2.0))
    return Graph(seed, tuple(b.steps))
