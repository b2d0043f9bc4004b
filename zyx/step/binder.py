"""What a replay binds at each call, compiled: its guards, tensors, nodes and buffers in one Python function.

A replayed step checks that every path into the user's state still leads to the tensor it traced (by id), then
binds the call's tensor arguments and those state tensors, reads their nodes and buffers, and asks whether the
nodes of the inputs it overwrites in place are held by their tensors alone (`run` then lets them stand for the new
values). Written out as straight-line Python over the path tree's steps (`reach.PathTree.step_lines`), that is a
few bytecodes per step and per tensor, and no loop, list or call between them: an Adam step binds twenty tensors
at every call, and its guards were most of a replay's host time.
"""
from __future__ import annotations

import sys
import weakref
from typing import Any, Callable, Optional, Sequence

from .reach import MISSING_ERRORS, PathTree

# the call's tensors (arguments, then state tensors), their nodes, the nodes' buffers, and whether each node `sole`
# asked about is held by its tensor alone (None: not asked; the caller checks)
Binding = tuple[list[Any], list[Any], list[Any], Optional[bool]]
Binder = Callable[[Any, Sequence[Any]], Optional[Binding]]


def compile_binder(tree: PathTree, expected_ids: Sequence[int], bound_paths: Sequence[int],
                   argument_layouts: Sequence[tuple[type, tuple[int, ...], Any, Any]],
                   sole: Optional[Sequence[int]]) -> Binder:
    """A function of (root, the call's tensor arguments) giving the tensors (the arguments, then those at
    `bound_paths`, indices of the tree's paths), their nodes and the nodes' buffers, and whether the nodes of the
    tensors at positions `sole` each have no origin, no weak reference and no holder but their tensor (None when
    `sole` is None); None where a path leads to another object than the one `expected_ids` holds for it, or
    nowhere, or where the arguments are not laid out as `argument_layouts` says (one (class, shape, dtype, device)
    each: what a call's key tells apart)."""
    arguments = len(argument_layouts)
    tensors = [f"a{i}" for i in range(arguments)] + [f"o{tree.ends[path]}" for path in bound_paths]
    lines = ["def bind(o0, arguments, keys=keys):", "    try:", *tree.step_lines("        ")]
    if arguments:
        lines.append("        " + "".join(f"a{i}, " for i in range(arguments)) + "= arguments")
    lines += ["    except MISSING_ERRORS:", "        return None  # a path that leads nowhere now, or other arguments"]
    # the objects themselves first (the state tensors by id, the arguments by class), then their nodes
    found = [f"id(o{end}) != {expected}" for end, expected in zip(tree.ends, expected_ids)]
    found += [f"a{i}.__class__ is not class{i}" for i in range(arguments)]
    if found:
        lines += ["    if " + " or ".join(found) + ":", "        return None  # led elsewhere, or no tensor"]
    lines += [f"    n{i} = {tensor}.node" for i, tensor in enumerate(tensors)]
    laid_out = [f"n{i}.shape != shape{i} or n{i}.dtype != dtype{i} or n{i}.device != device{i}"
                for i in range(arguments)]
    if laid_out:
        lines += ["    if " + " or ".join(laid_out) + ":", "        return None  # laid out otherwise"]
    # held here by its tensor, its local name and getrefcount's argument: no one else
    held_alone = " and ".join(f"getrefcount(n{i}) <= 3 and n{i}.origin is None and not getweakrefcount(n{i})"
                              for i in sole or ())
    lines.append(f"    sole = {'None' if sole is None else held_alone or 'True'}")  # (before the lists hold them)
    nodes = [f"n{i}" for i in range(len(tensors))]
    lines.append(f"    return ([{', '.join(tensors)}], [{''.join(n + ', ' for n in nodes)}], "
                 f"[{''.join(n + '.buffer, ' for n in nodes)}], sole)")
    namespace: dict[str, Any] = {"keys": tree.keys, "MISSING_ERRORS": MISSING_ERRORS, "getrefcount": sys.getrefcount,
                                 "getweakrefcount": weakref.getweakrefcount}
    for i, (kind, shape, dtype, device) in enumerate(argument_layouts):
        namespace.update({f"class{i}": kind, f"shape{i}": shape, f"dtype{i}": dtype, f"device{i}": device})
    exec("\n".join(lines), namespace)  # noqa: S102 - source built above from step kinds, names, literals, ids
    return namespace["bind"]
