"""A jitted call's arguments: the tensors in them, and the key that picks a captured program.

Tensors (also inside nested tuples, lists and dicts) are inputs of the program: they enter the key by shape,
dtype and device, and by which earlier tensor argument they are (`f(w, w)` is another program than
`f(w1, w2)`). Anything else is a constant of the program and enters the key by type and value: `1`, `1.0` and
`True` are different constants, and a numpy scalar counts by its dtype and value. A numpy array is refused
(pass `dev.tensor(array)`: an input, not a constant), and so is an unhashable value.
"""
from __future__ import annotations

from itertools import repeat
from operator import attrgetter
from typing import Any, Callable

import numpy as np

from ..tensor import Tensor

Rebuild = Callable[[list], Any]


def flatten(value: Any, leaves: list[Tensor]) -> Rebuild:
    """Collect the tensors in nested tuples/lists/dicts; return a function that rebuilds the structure."""
    if isinstance(value, Tensor):
        position = len(leaves)
        leaves.append(value)
        return lambda new: new[position]
    if isinstance(value, (list, tuple)):
        parts = [flatten(v, leaves) for v in value]
        kind = type(value)
        if hasattr(value, "_fields"):  # a namedtuple takes its fields one by one
            return lambda new: kind(*(p(new) for p in parts))
        return lambda new: kind(p(new) for p in parts)
    if isinstance(value, dict):
        parts_by_key = {k: flatten(v, leaves) for k, v in value.items()}
        return lambda new: {k: p(new) for k, p in parts_by_key.items()}
    return lambda new: value


def call_key(args: tuple, kwargs: dict[str, Any]) -> tuple:
    """The key of one call (see the module docstring); raises TypeError naming an argument it cannot key."""
    first_of: dict[int, int] = {}   # id(tensor) -> its position among the tensor arguments
    buffer_of: dict[int, int] = {}  # id(buffer) -> the first tensor argument holding it
    parts = [_tensor_key(value, first_of, buffer_of) if type(value) is Tensor  # most arguments, named only on error
             else _key(value, f"argument {i}", first_of, buffer_of) for i, value in enumerate(args)]
    parts += [(name, _key(kwargs[name], f"argument {name!r}", first_of, buffer_of)) for name in sorted(kwargs)]
    return tuple(parts)


def tensors_key(tensors: tuple) -> tuple:
    """`call_key` of a call whose arguments are all tensors, passed by position (most steps'), made at C speed
    where they are distinct tensors in distinct buffers (each is then its own first and holds its own buffer)."""
    nodes = list(map(_node_of, tensors))
    count = len(nodes)
    if len(set(map(id, tensors))) < count or len(set(map(id, map(_buffer_of, nodes)))) < count:
        return call_key(tensors, {})
    return tuple(zip(repeat("tensor"), map(_shape_of, nodes), map(_dtype_name_of, nodes),
                     map(id, map(_device_of, nodes)), range(count), range(count)))


_node_of, _buffer_of, _shape_of = attrgetter("node"), attrgetter("buffer"), attrgetter("shape")
_dtype_name_of, _device_of = attrgetter("dtype.name"), attrgetter("device")


def _tensor_key(tensor: Tensor, first_of: dict[int, int], buffer_of: dict[int, int]) -> tuple:
    """A tensor argument's part of the key: its layout and device, which tensor argument it is first and which one
    first holds its buffer."""
    node = tensor.node
    position = first_of.setdefault(id(tensor), len(first_of))
    buffer = node.buffer
    shares = buffer_of.setdefault(id(buffer), position) if buffer is not None else position
    return ("tensor", node.shape, node.dtype.name, id(node.device), position, shares)


def _key(value: Any, name: str, first_of: dict[int, int], buffer_of: dict[int, int]) -> Any:
    if isinstance(value, Tensor):
        return _tensor_key(value, first_of, buffer_of)
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_key(v, f"{name}[{i}]", first_of, buffer_of) for i, v in enumerate(value)))
    if isinstance(value, dict):
        return ("dict", tuple((k, _key(v, f"{name}[{k!r}]", first_of, buffer_of)) for k, v in value.items()))
    if isinstance(value, float):
        return (float, value.hex())  # nan equals itself, -0.0 differs from 0.0
    if isinstance(value, np.generic):
        return (np.generic, value.dtype.str, value.tobytes())
    if isinstance(value, np.ndarray):
        raise TypeError(f"zyx.jit: {name} is a numpy array of shape {value.shape}; pass dev.tensor(array) "
                        "(a tensor is an input of the program, a numpy array would be a constant of it)")
    try:
        hash(value)
    except TypeError:
        raise TypeError(f"zyx.jit: {name} ({type(value).__name__}) is unhashable; a value that is not a tensor "
                        "is a constant of the program, keyed by its value") from None
    return (type(value), value)
