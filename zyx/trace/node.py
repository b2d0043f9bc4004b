"""Trace nodes and their constructors.

A node records one primitive op; its shape and dtype are inferred when it is made. Nodes never change,
except once: when a node is realized it turns into a BUFFER leaf in place, so every holder sees the data
and the graph above it can be garbage-collected.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Optional, Sequence

from ..dtypes import DType, bool_, int_range
from ..errors import AxisError, ShapeError
from .ops import BINARY_OPS, BITWISE_OPS, COMPARE_OPS, Op, REDUCE_OPS, REDUCTIONS_ACROSS_PROCESSES, SHIFT_OPS

Shape = tuple[int, ...]


class Node:
    __slots__ = ("op", "src", "arg", "shape", "dtype", "device", "buffer", "origin", "key", "__weakref__")

    def __init__(self, op: Op, src: tuple["Node", ...], arg: Any, shape: Shape, dtype: DType, device: Any):
        self.op, self.src, self.arg = op, src, arg
        self.shape, self.dtype, self.device = shape, dtype, device
        self.buffer: Any = None
        # The node's own part of the structural key, made once here so that a realize only gathers them (see
        # hashing.Walk): op, shape, dtype and the arg that changes semantics (a RAND's seed and offset are data),
        # as the number `key_number` gives them.
        key = (op._value_, shape, dtype.name, None if arg is None or op is Op.RAND
               else arg if op in INT_ARG_OPS else arg_key(arg))
        self.key: int = _key_numbers.get(key) or key_number(key)  # a number met before, found without a call
        self.origin: Any = None  # after realization: how it was computed, for autodiff (see origin.py)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def realized(self) -> bool:
        return self.op is Op.BUFFER

    def become_buffer(self, buffer: Any, origin: Any = None, key: Optional[int] = None) -> None:
        """Turn into a leaf holding `buffer`, releasing the graph above (`origin` keeps a detached copy); `key`: the
        leaf's, `buffer_key(shape, dtype)`, where known already."""
        self.op, self.src, self.arg, self.buffer, self.origin = Op.BUFFER, (), None, buffer, origin
        self.key = buffer_key(self.shape, self.dtype) if key is None else key

    def __repr__(self) -> str:
        return f"Node({self.op.name}, shape={self.shape}, dtype={self.dtype.name}, arg={self.arg!r})"


# ops whose arg holds Python ints only (their constructors below make it so): its own key, as `arg_key` gives it
INT_ARG_OPS = frozenset({Op.RESHAPE, Op.PERMUTE, Op.EXPAND, Op.SHRINK, Op.FLIP}) | REDUCE_OPS
KEYS_KEPT = 1 << 16  # node keys remembered; past that all are forgotten (in-memory program caches then miss once)
_key_numbers: dict[tuple, int] = {}
_next_numbers = itertools.count()


def key_number(key: tuple) -> int:
    """A number standing for a node's key, the same for equal keys: a walk's structure (`hashing.Walk`) is then a
    tuple of ints, quick to hash and compare at every realize. A number is never given to another key."""
    number = _key_numbers.get(key)
    if number is None:
        if len(_key_numbers) >= KEYS_KEPT:
            _key_numbers.clear()
        number = _key_numbers[key] = next(_next_numbers)
    return number


def buffer_key(shape: Shape, dtype: DType) -> int:
    """The key of a buffer leaf of `shape` and `dtype` (what a realized node becomes)."""
    return key_number((Op.BUFFER._value_, shape, dtype.name, None))


def arg_key(arg: Any) -> Any:
    """`arg` as a dict key that tells apart what changes a kernel: floats by their exact bits (0.0 and -0.0 differ,
    as do the dtypes of 1 and 1.0), a DType by name."""
    kind = type(arg)
    if arg is None or kind is int or kind is bool:
        return arg if kind is not bool else ("bool", arg)
    if kind is float:
        return ("float", arg.hex())
    if kind is tuple:
        return tuple(map(arg_key, arg))
    return getattr(arg, "name", arg)


def short_name(node: Node) -> str:
    """What the profiler calls a node: `SUM (512, 1) float32`."""
    return f"{node.op.name} {node.shape} {node.dtype.name}"


def _same_device(nodes: Sequence[Node], op: Op) -> Any:
    device = nodes[0].device
    for node in nodes[1:]:
        if node.device is not device:
            raise ValueError(f"{op.name.lower()}: operands live on different devices ({device} and {node.device});"
                             " move one with .to(device)")
    return device


# ---- leaves ------------------------------------------------------------------------------------------------

ARANGE = "arange"  # the arg of a BUFFER leaf holding 0, 1, ..., n-1 (int64): indexing's one-hot masks compare with
# it, and lowering reads the mask's one hit directly (jit/indirect.py); its hash tells it from other buffers


def buffer_leaf(buffer: Any, shape: Shape, dtype: DType, device: Any, arg: Any = None) -> Node:
    node = Node(Op.BUFFER, (), arg, tuple(map(int, shape)), dtype, device)
    node.buffer = buffer
    return node


def leaf_maker(shape: Shape, dtype: DType, device: Any) -> Callable[[Any], Node]:
    """`buffer_leaf(buffer, shape, dtype, device)` for many buffers of one layout, its key made once: a replayed
    step stores its results in new leaves at every call, and making the key was most of a leaf's cost."""
    template = buffer_leaf(None, shape, dtype, device)
    shape, key, op, new = template.shape, template.key, Op.BUFFER, Node.__new__

    def leaf(buffer: Any) -> Node:
        node = new(Node)
        node.op, node.src, node.arg, node.shape, node.dtype, node.device = op, (), None, shape, dtype, device
        node.buffer, node.key, node.origin = buffer, key, None
        return node
    return leaf


def graph_maker(build: Callable[..., Node], operands: Sequence[Node]) -> Callable[..., Node]:
    """`build(*operands)` for other operands of the same shapes and dtypes on one device: the nodes `build` makes
    above them, made again with their keys, args and shapes found once (each node as `leaf_maker` makes a leaf),
    not through each constructor's checks and key. `build` must make the same nodes whatever the operands are
    beyond their shapes and dtypes (it is traced once, on placeholder leaves) and make at least one. The maker is
    written out as straight-line Python (a line per node, its constants bound by name): a third of a loop's time
    over the plan, paid by every un-jitted product."""
    placeholders = [buffer_leaf(None, operand.shape, operand.dtype, operand.device) for operand in operands]
    position = {id(leaf): k for k, leaf in enumerate(placeholders)}  # operands first, then the nodes made
    made = [node for node in toposort([build(*placeholders)]) if id(node) not in position]
    if not made or any(node.op is Op.BUFFER for node in made):
        raise ValueError("graph_maker: `build` must make nodes, and read no leaf besides its operands")
    for node in made:
        position[id(node)] = len(position)
    lines = [f"def make({', '.join(f'n{k}' for k in range(len(operands)))}):", "    device = n0.device"]
    names: dict[str, Any] = {"new": Node.__new__, "Node": Node}
    for node in made:  # one line per node: its attributes set from the plan's constants, its sources by name
        k = position[id(node)]
        names.update({f"op{k}": node.op, f"arg{k}": node.arg, f"shape{k}": node.shape, f"dtype{k}": node.dtype,
                      f"key{k}": node.key})
        sources = "".join(f"n{position[id(source)]}, " for source in node.src)
        lines += [f"    n{k} = new(Node)",
                  f"    n{k}.op, n{k}.src, n{k}.arg, n{k}.shape, n{k}.dtype, n{k}.device, n{k}.buffer, n{k}.key, "
                  f"n{k}.origin = op{k}, ({sources}), arg{k}, shape{k}, dtype{k}, device, None, key{k}, None"]
    lines.append(f"    return n{len(position) - 1}")
    exec(compile("\n".join(lines), "<zyx graph_maker>", "exec"), names)
    return names["make"]


def const(value: Any, shape: Shape, dtype: DType, device: Any) -> Node:
    """A constant filling `shape`; stored as a scalar broadcast by an EXPAND so kernels never read memory."""
    shape = tuple(int(s) for s in shape)
    scalar = Node(Op.CONST, (), _coerce_scalar(value, dtype), (), dtype, device)
    return expand(reshape(scalar, (1,) * len(shape)), tuple(shape)) if shape else scalar


def _coerce_scalar(value: Any, dtype: DType) -> Any:
    """`value` as a Python scalar of `dtype`; an integer that `dtype` cannot hold raises instead of wrapping
    (numpy 2's rule for Python scalars; the devices would otherwise disagree on how it wraps)."""
    if dtype.is_bool:
        return bool(value)
    if dtype.is_int:
        if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
            raise ValueError(f"an {dtype.name} tensor cannot hold {value}")
        number = int(value)
        low, high = int_range(dtype)
        if not low <= number <= high:
            raise OverflowError(f"Python integer {number} does not fit {dtype.name} (range {low} to {high}); "
                                f"cast the tensor to a wider dtype first")
        return number
    return float(value)



def rand(seed: int, offset: int, shape: Shape, dtype: DType, device: Any) -> Node:
    return Node(Op.RAND, (), (int(seed), int(offset)), tuple(int(s) for s in shape), dtype, device)


# ---- elementwise -------------------------------------------------------------------------------------------

FLOAT_ONLY_OPS = frozenset({Op.RECIP, Op.SQRT, Op.EXP, Op.LOG, Op.SIN, Op.COS, Op.TANH, Op.SIGMOID, Op.FLOOR,
                            Op.CEIL, Op.RINT, Op.ERF})


def unary(op: Op, x: Node) -> Node:
    if op is Op.NOT and x.dtype.is_float:
        raise TypeError(f"not needs a bool or integer tensor, got {x.dtype.name}")
    if op is Op.NEG and x.dtype.is_bool:
        raise TypeError("negation of a bool tensor is not supported; use logical_not (~)")
    if op in FLOAT_ONLY_OPS and not x.dtype.is_float:
        raise TypeError(f"{op.name.lower()} needs a float tensor, got {x.dtype.name}")
    return Node(op, (x,), None, x.shape, x.dtype, x.device)


def cast(x: Node, dtype: DType) -> Node:
    if x.dtype == dtype:
        return x
    return Node(Op.CAST, (x,), dtype, x.shape, dtype, x.device)


def binary(op: Op, a: Node, b: Node) -> Node:
    assert op in BINARY_OPS
    if a.shape != b.shape:
        raise ShapeError(f"{op.name.lower()}: shapes {a.shape} and {b.shape} differ")
    if a.dtype != b.dtype:
        raise TypeError(f"{op.name.lower()}: dtypes {a.dtype.name} and {b.dtype.name} differ")
    if op in BITWISE_OPS and a.dtype.is_float:
        raise TypeError(f"{op.name.lower()} needs bool or integer tensors, got {a.dtype.name}")
    if op in SHIFT_OPS and not a.dtype.is_int:
        raise TypeError(f"{op.name.lower()} needs integer tensors, got {a.dtype.name}")
    dtype = bool_ if op in COMPARE_OPS else a.dtype
    return Node(op, (a, b), None, a.shape, dtype, a.device if b.device is a.device else _same_device((a, b), op))


def where(condition: Node, a: Node, b: Node) -> Node:
    if not (condition.shape == a.shape == b.shape):
        raise ShapeError(f"where: shapes {condition.shape}, {a.shape} and {b.shape} differ")
    if not condition.dtype.is_bool or a.dtype != b.dtype:
        raise TypeError(f"where: needs a bool condition and equal dtypes, got {condition.dtype.name}, "
                        f"{a.dtype.name}, {b.dtype.name}")
    return Node(Op.WHERE, (condition, a, b), None, a.shape, a.dtype, _same_device((condition, a, b), Op.WHERE))


# ---- reductions --------------------------------------------------------------------------------------------

def reduce(op: Op, x: Node, axes: Sequence[int]) -> Node:
    """Reduce over `axes` (non-negative, sorted); the reduced axes stay with size 1."""
    assert op in REDUCE_OPS
    axes = tuple(sorted(set(map(int, axes))))
    if axes and (axes[0] < 0 or axes[-1] >= len(x.shape)):
        raise AxisError(f"{op.name.lower()}: axes {axes} are out of range for shape {x.shape}")
    if not axes:
        return x
    sizes = list(x.shape)
    for axis in axes:
        sizes[axis] = 1
    return Node(op, (x,), axes, tuple(sizes), x.dtype, x.device)


# ---- movement ----------------------------------------------------------------------------------------------

def reshape(x: Node, shape: Shape) -> Node:
    shape = tuple(map(int, shape))
    if shape == x.shape:
        return x
    if math.prod(shape) != math.prod(x.shape) or shape and min(shape) < 0:
        raise ShapeError(f"reshape: cannot view shape {x.shape} ({x.numel} elements) as {shape}")
    return Node(Op.RESHAPE, (x,), shape, shape, x.dtype, x.device)


def permute(x: Node, order: Sequence[int]) -> Node:
    order = tuple(map(int, order))
    if sorted(order) != list(range(len(x.shape))):
        raise ShapeError(f"permute: {order} is not an ordering of the {len(x.shape)} axes of shape {x.shape}")
    if x.op is Op.PERMUTE:  # a permute of a permute is one permute (`w.T` inside a matmul: no node at all)
        x, order = x.src[0], tuple(map(x.arg.__getitem__, order))
    if order == tuple(range(len(order))):
        return x
    return Node(Op.PERMUTE, (x,), order, tuple(map(x.shape.__getitem__, order)), x.dtype, x.device)


def expand(x: Node, shape: Shape) -> Node:
    shape = tuple(map(int, shape))
    if shape == x.shape:
        return x
    if len(shape) != len(x.shape):
        raise ShapeError(f"expand: cannot expand shape {x.shape} to {shape}")
    for size, target in zip(x.shape, shape):  # a loop, not any(...): no generator made at every node
        if size != target and size != 1:
            raise ShapeError(f"expand: cannot expand shape {x.shape} to {shape}")
    return Node(Op.EXPAND, (x,), shape, shape, x.dtype, x.device)


def pad(x: Node, padding: Sequence[tuple[int, int]], value: Any = 0) -> Node:
    padding = tuple((int(b), int(a)) for b, a in padding)
    if len(padding) != len(x.shape) or any(b < 0 or a < 0 for b, a in padding):
        raise ShapeError(f"pad: padding {padding} does not fit shape {x.shape} (non-negative, one pair per axis)")
    if all(b == 0 and a == 0 for b, a in padding):
        return x
    shape = tuple(s + b + a for s, (b, a) in zip(x.shape, padding))
    return Node(Op.PAD, (x,), (padding, _coerce_scalar(value, x.dtype)), shape, x.dtype, x.device)


def shrink(x: Node, bounds: Sequence[tuple[int, int]]) -> Node:
    bounds = tuple([(int(s), int(e)) for s, e in bounds])
    if len(bounds) != len(x.shape):
        raise ShapeError(f"shrink: bounds {bounds} do not fit shape {x.shape}")
    sizes = []
    for (start, end), size in zip(bounds, x.shape):  # a loop, not any(...)/all(...): no generators per node
        if not 0 <= start <= end <= size:
            raise ShapeError(f"shrink: bounds {bounds} do not fit shape {x.shape}")
        sizes.append(end - start)
    if tuple(sizes) == x.shape:
        return x
    return Node(Op.SHRINK, (x,), bounds, tuple(sizes), x.dtype, x.device)


def flip(x: Node, axes: Sequence[int]) -> Node:
    axes = tuple(sorted(int(a) for a in set(axes) if x.shape[a] > 1))
    if not axes:
        return x
    return Node(Op.FLIP, (x,), axes, x.shape, x.dtype, x.device)


# ---- across processes --------------------------------------------------------------------------------------

def collective(sources: Sequence[Node], kind: str, parameter: Any) -> Node:
    """The sources flattened one after another (one flat buffer: a bucket), combined with the same node of every
    other process: ("all_reduce", "sum"|"max"|"min") or ("broadcast", source rank). Which processes take part
    is the runtime's business."""
    if kind not in ("all_reduce", "broadcast"):
        raise ValueError(f"unknown collective {kind!r}; expected all_reduce or broadcast")
    if kind == "all_reduce" and parameter not in REDUCTIONS_ACROSS_PROCESSES:
        raise ValueError(f"all_reduce: unknown reduction {parameter!r}; expected one of "
                         f"{', '.join(REDUCTIONS_ACROSS_PROCESSES)}")
    if kind == "broadcast" and (isinstance(parameter, bool) or not isinstance(parameter, int) or parameter < 0):
        raise ValueError(f"broadcast: the source rank must be a non-negative integer, got {parameter!r}")
    sources = tuple(sources)
    if not sources:
        raise ValueError(f"{kind}: nothing to combine (no tensors)")
    dtypes = {s.dtype.name for s in sources}
    if len(dtypes) > 1:
        raise TypeError(f"{kind}: one bucket holds one dtype, got {', '.join(sorted(dtypes))}")
    device = _same_device(sources, Op.COLLECTIVE)
    return Node(Op.COLLECTIVE, sources, (kind, parameter), (sum(s.numel for s in sources),), sources[0].dtype,
                device)


# ---- graph walks -------------------------------------------------------------------------------------------

def toposort(roots: Sequence[Node]) -> list[Node]:
    """Every node the roots depend on, sources before users (iterative: traces can be deep)."""
    order: list[Node] = []
    seen: set[int] = set()
    for root in roots:
        if id(root) in seen:
            continue
        seen.add(id(root))
        stack = [(root, iter(root.src))]
        while stack:
            node, sources = stack[-1]
            for src in sources:
                if id(src) not in seen:
                    seen.add(id(src))
                    stack.append((src, iter(src.src)))
                    break
            else:
                stack.pop()
                order.append(node)
    return order
