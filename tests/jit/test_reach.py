"""The paths a jitted step's guards follow at every call, written as straight-line statements: they lead where
resolving each path alone leads, with every kind of step and key."""
from __future__ import annotations

import types

from zyx.step.reach import PathTree, resolve


def test_the_step_lines_lead_where_each_path_alone_leads():
    holder = types.SimpleNamespace(weights={"w": 1, 7: 2, None: 3, True: 4, ("a", 1): 5}, items=[10, 11])
    setattr(holder, "not an identifier", 6)
    setattr(holder, "class", 7)
    root = (holder, (holder.items,), {})
    paths = [(("item", 0), ("attr", "weights"), ("item", key)) for key in ("w", 7, None, True, ("a", 1))]
    paths += [(("item", 0), ("attr", "not an identifier")), (("item", 0), ("attr", "class")),
              (("item", 1), ("item", 0), ("item", 1)), (("item", 0), ("attr", "items"), ("item", 0))]
    tree = PathTree(paths)
    names: dict = {"o0": root, "keys": tree.keys}
    exec("\n".join(tree.step_lines("")), names)  # noqa: S102 - the lines under test
    assert [names[f"o{end}"] for end in tree.ends] == [resolve(root, path) for path in paths] == \
        [1, 2, 3, 4, 5, 6, 7, 11, 10]
    assert len(tree.steps) == 14 < sum(map(len, paths))  # shared prefixes (the holder, its weights, the args) once
