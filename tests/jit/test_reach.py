"""The paths a jitted step's guards resolve at every call: the compiled resolver agrees with resolving them one
step at a time, also where a step no longer leads anywhere."""
from __future__ import annotations

import types

from zyx.step.reach import MISSING, PathTree, resolve


def test_the_compiled_paths_resolve_as_each_path_alone():
    holder = types.SimpleNamespace(weights={"w": 1, 7: 2, None: 3, True: 4, ("a", 1): 5}, items=[10, 11])
    setattr(holder, "not an identifier", 6)
    setattr(holder, "class", 7)
    root = (holder, (holder.items,), {})
    paths = [(("item", 0), ("attr", "weights"), ("item", key)) for key in ("w", 7, None, True, ("a", 1))]
    paths += [(("item", 0), ("attr", "not an identifier")), (("item", 0), ("attr", "class")),
              (("item", 1), ("item", 0), ("item", 1)), (("item", 0), ("attr", "items"), ("item", 0))]
    tree = PathTree(paths)
    assert list(tree.resolve_all(root)) == [resolve(root, path) for path in paths] == [1, 2, 3, 4, 5, 6, 7, 11, 10]


def test_a_path_that_no_longer_leads_anywhere_is_missing_and_the_others_still_resolve():
    holder = types.SimpleNamespace(state={"step": 1, "lr": 2})
    root = (holder, (), {})
    paths = [(("item", 0), ("attr", "state"), ("item", "step")), (("item", 0), ("attr", "state"), ("item", "lr")),
             (("item", 0), ("attr", "gone"), ("item", 0))]
    tree = PathTree(paths)
    assert list(tree.resolve_all(root)) == [1, 2, MISSING]
    del holder.state["step"]
    assert list(tree.resolve_all(root)) == [MISSING, 2, MISSING] == [resolve(root, path) for path in paths]
