"""The paths a jitted step's guards follow at every call: the compiled binder finds what resolving each path
alone finds, and binds nothing where a path leads elsewhere or nowhere."""
from __future__ import annotations

import types

from zyx.step.reach import PathTree, resolve


def tensor(name: str) -> types.SimpleNamespace:
    """What a binder reads of a tensor: its node, and the node's buffer."""
    return types.SimpleNamespace(node=types.SimpleNamespace(buffer=f"{name}'s buffer"))


def test_the_compiled_paths_bind_what_each_path_alone_leads_to():
    w = [tensor(f"w{i}") for i in range(9)]
    holder = types.SimpleNamespace(weights={"w": w[0], 7: w[1], None: w[2], True: w[3], ("a", 1): w[4]},
                                   items=[w[7], w[8]])
    setattr(holder, "not an identifier", w[5])
    setattr(holder, "class", w[6])
    x = tensor("x")
    root = (holder, (x, (holder.items,)), {})
    paths = [(("item", 0), ("attr", "weights"), ("item", key)) for key in ("w", 7, None, True, ("a", 1))]
    paths += [(("item", 0), ("attr", "not an identifier")), (("item", 0), ("attr", "class")),
              (("item", 1), ("item", 1), ("item", 0), ("item", 0)), (("item", 0), ("attr", "items"), ("item", 1)),
              (("item", 0), ("attr", "items"), ("item", 0))]  # a second path to w7
    found = [resolve(root, path) for path in paths]
    assert found == [*w, w[7]]
    bind = PathTree(paths).binder([id(t) for t in found], list(range(9)), 1)
    bound, nodes, buffers = bind(root, [x])
    assert bound == [x, *w] and nodes == [t.node for t in bound] and buffers == [t.node.buffer for t in bound]


def test_a_path_that_leads_elsewhere_or_nowhere_binds_nothing():
    one, two = tensor("one"), tensor("two")
    holder = types.SimpleNamespace(state={"step": one, "lr": two})
    root = (holder, (), {})
    paths = [(("item", 0), ("attr", "state"), ("item", "step")), (("item", 0), ("attr", "state"), ("item", "lr"))]
    bind = PathTree(paths).binder([id(one), id(two)], [0, 1], 0)
    assert bind(root, [])[0] == [one, two]
    holder.state["lr"] = tensor("another")
    assert bind(root, []) is None
    holder.state["lr"] = two
    del holder.state["step"]
    assert bind(root, []) is None
    holder.state = None  # (an object a step cannot index)
    assert bind(root, []) is None
    assert PathTree([]).binder([], [], 2)(root, [one, two]) == ([one, two], [one.node, two.node],
                                                                [one.node.buffer, two.node.buffer])
