"""Where a jitted step finds the tensors it does not get as arguments: paths from the call into Python state.

A path starts at the call's root `(fn, args, kwargs)` and is a tuple of steps: ("attr", name) reads an
attribute, ("item", key) indexes a dict, list or tuple. The search follows what a step can read: a function's
globals named in its code, closure cells and defaults, a bound method's `self`, a partial's arguments,
`__wrapped__`, and the attributes, dict values and elements of user objects (modules, optimizers, lists). A
replay resolves each recorded path again, so a rebound global, closure variable or attribute is noticed
instead of the tensor seen at capture being used in its place.
"""
from __future__ import annotations

import functools
import keyword
import types
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..tensor import Tensor

Step = tuple[str, Any]
Path = tuple[Step, ...]

MAX_OBJECTS = 20000     # objects expanded per search: a huge object graph is searched only this far
MAX_PATHS = 4           # paths kept per tensor (each one is checked at every replay)
MISSING = object()      # what `resolve` returns when a path no longer leads anywhere
_ATOMS = (str, bytes, int, float, complex, bool, type(None), np.ndarray, np.generic, type)
_KEY_TYPES = (str, int, bool, type(None))
MISSING_ERRORS = (AttributeError, LookupError, TypeError, ValueError)  # ValueError: an empty closure cell


@dataclass
class Located:
    """A tensor found from the call's root: every path that leads to it (up to MAX_PATHS) and their names."""

    tensor: Tensor
    paths: list[Path] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def locate_tensors(root: tuple[Any, tuple, dict]) -> dict[int, Located]:
    """Every tensor reachable from `(fn, args, kwargs)`, breadth first (shortest paths first), by id."""
    found: dict[int, Located] = {}
    names = _code_names(root[0])
    seen: set[int] = set()
    queue: deque[tuple[Any, Path, str]] = deque([(root, (), "")])
    expanded = 0
    while queue and expanded < MAX_OBJECTS:
        obj, path, name = queue.popleft()
        children = _root_children(root) if obj is root else _children(obj, name, names)
        expanded += 1
        for steps, child_name, child in children:
            if isinstance(child, Tensor):
                located = found.setdefault(id(child), Located(child))
                if len(located.paths) < MAX_PATHS:
                    located.paths.append(path + steps)
                    located.names.append(child_name)
            elif id(child) not in seen and not isinstance(child, _ATOMS):
                seen.add(id(child))
                if isinstance(child, types.FunctionType):
                    names |= _code_names(child)
                queue.append((child, path + steps, child_name))
    return found


def resolve(root: tuple[Any, tuple, dict], path: Path) -> Any:
    """What `path` leads to from `root` now, or MISSING."""
    obj: Any = root
    try:
        for kind, key in path:
            obj = getattr(obj, key) if kind == "attr" else obj[key]
    except MISSING_ERRORS:
        return MISSING
    return obj


class PathTree:
    """Many paths from one root, followed together: a prefix that several share (the function's closure, an
    optimizer's state dict) is followed once per call instead of once per path. A replay checks every path of
    every tensor it binds, so this is most of a guard's cost; its binder (binder.py) runs the steps as straight-line
    Python (`step_lines`), so a call that finds every step in place runs a few bytecodes per step."""

    def __init__(self, paths: list[Path]):
        position: dict[Path, int] = {(): 0}
        self.steps: list[tuple[int, str, Any]] = []  # (position of the object it reads from, kind, key)
        self.ends: list[int] = []                    # where each path's object is, numbered as the steps
        for path in paths:
            for depth in range(1, len(path) + 1):
                if path[:depth] not in position:
                    position[path[:depth]] = len(self.steps) + 1
                    self.steps.append((position[path[:depth - 1]], *path[depth - 1]))
            self.ends.append(position[path])

    def step_lines(self, indent: str) -> list[str]:
        """One statement per step, the object at position n named `o{n}` (`o3 = o1.__dict__`, `o4 = o3['weight']`;
        the root is `o0`): a step that fails raises as `getattr` or `[]` would (`MISSING_ERRORS`). A key is written
        as a literal when its repr reads back as itself (exactly a `_KEY_TYPES` type), else read from `keys[n - 1]`
        (`keys`: a tuple of every step's key, to bind where the lines run)."""
        lines = []
        for n, (parent, kind, key) in enumerate(self.steps, start=1):
            if kind == "attr" and key.isidentifier() and not keyword.iskeyword(key):
                read = f"o{parent}.{key}"
            elif kind == "attr":
                read = f"getattr(o{parent}, keys[{n - 1}])"
            else:
                read = f"o{parent}[{key!r}]" if type(key) in _KEY_TYPES else f"o{parent}[keys[{n - 1}]]"
            lines.append(f"{indent}o{n} = {read}")
        return lines

    @property
    def keys(self) -> tuple[Any, ...]:
        return tuple(key for _, _, key in self.steps)


def _root_children(root: tuple[Any, tuple, dict]) -> Iterator[tuple[Path, str, Any]]:
    fn, args, kwargs = root
    yield (("item", 0),), "", fn
    for i, value in enumerate(args):
        yield (("item", 1), ("item", i)), f"argument {i}", value
    for key, value in kwargs.items():
        yield (("item", 2), ("item", key)), f"argument {key!r}", value


def _children(obj: Any, name: str, names: set[str]) -> Iterator[tuple[Path, str, Any]]:
    """(steps from `obj`, display name, child) for what a step could read through `obj`; a module only offers
    the attributes that the code searched so far names (`names`)."""
    if isinstance(obj, types.FunctionType):
        yield from _function_children(obj, names)
    elif isinstance(obj, types.MethodType):
        yield (("attr", "__self__"),), "self", obj.__self__
        yield (("attr", "__func__"),), "", obj.__func__
    elif isinstance(obj, functools.partial):
        yield (("attr", "func"),), "", obj.func
        for i, value in enumerate(obj.args):
            yield (("attr", "args"), ("item", i)), f"partial argument {i}", value
        for key, value in obj.keywords.items():
            yield (("attr", "keywords"), ("item", key)), f"partial argument {key!r}", value
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield (("item", i),), f"{name}[{i}]", value
    elif isinstance(obj, types.ModuleType):
        for key in sorted(names & obj.__dict__.keys()):
            yield (("attr", "__dict__"), ("item", key)), f"{name}.{key}", obj.__dict__[key]
    elif isinstance(obj, dict):
        for key, value in list(obj.items()):
            if isinstance(key, _KEY_TYPES):
                yield (("item", key),), f"{name}[{key!r}]", value
    else:
        attributes = getattr(obj, "__dict__", None)
        if not isinstance(attributes, dict):
            return
        if type(obj).__module__.startswith("zyx.") and not type(obj).__module__.startswith("zyx.nn"):
            attributes = {"__wrapped__": attributes["__wrapped__"]} if "__wrapped__" in attributes else {}
        for key, value in list(attributes.items()):
            if isinstance(key, str):
                yield (("attr", "__dict__"), ("item", key)), f"{name}.{key}" if name else key, value


def _function_children(fn: types.FunctionType, names: set[str]) -> Iterator[tuple[Path, str, Any]]:
    for key in sorted(_code_names(fn)):
        if key in fn.__globals__:
            yield (("attr", "__globals__"), ("item", key)), key, fn.__globals__[key]
    for i, (key, cell) in enumerate(zip(fn.__code__.co_freevars, fn.__closure__ or ())):
        try:
            value = cell.cell_contents
        except ValueError:  # not assigned yet
            continue
        yield (("attr", "__closure__"), ("item", i), ("attr", "cell_contents")), key, value
    for i, value in enumerate(fn.__defaults__ or ()):
        yield (("attr", "__defaults__"), ("item", i)), f"default {i} of {fn.__name__}", value
    for key, value in (fn.__kwdefaults__ or {}).items():
        yield (("attr", "__kwdefaults__"), ("item", key)), f"default {key!r} of {fn.__name__}", value
    if isinstance(fn.__dict__.get("__wrapped__"), types.FunctionType):
        yield (("attr", "__wrapped__"),), "", fn.__wrapped__


def _code_names(fn: Any) -> set[str]:
    """The global and attribute names a function's code (and the code nested in it) mentions."""
    code = getattr(fn, "__code__", None)
    names: set[str] = set()
    stack = [code] if isinstance(code, types.CodeType) else []
    while stack:
        code = stack.pop()
        names.update(code.co_names)
        stack += [const for const in code.co_consts if isinstance(const, types.CodeType)]
    return names
