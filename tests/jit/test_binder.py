"""What a replay binds at each call (zyx/step/binder.py): the tensors its paths lead to, their nodes and buffers,
nothing where a path leads elsewhere or nowhere, and whether the nodes it would overwrite are their tensors'
alone."""
from __future__ import annotations

import types
import weakref

from zyx.step.binder import compile_binder
from zyx.step.reach import PathTree


class FakeNode:
    __slots__ = ("buffer", "origin", "shape", "dtype", "device", "__weakref__")

    def __init__(self, buffer: str, shape: tuple[int, ...]) -> None:
        self.buffer, self.origin, self.shape, self.dtype, self.device = buffer, None, shape, "float32", "dev"


def tensor(name: str, shape: tuple[int, ...] = (2, 3)) -> types.SimpleNamespace:
    """What a binder reads of a tensor: its node, the node's buffer, layout, origin and weak references."""
    return types.SimpleNamespace(node=FakeNode(f"{name}'s buffer", shape))


class Trap:
    @property
    def node(self):
        raise AssertionError("a binder read the node of an object it did not trace")


def layout(t: types.SimpleNamespace) -> tuple:
    return type(t), t.node.shape, t.node.dtype, t.node.device


def test_the_tensors_the_paths_lead_to_are_bound_after_the_arguments_with_their_nodes_and_buffers():
    w = [tensor(f"w{i}") for i in range(4)]
    holder = types.SimpleNamespace(weights={"w": w[0], 7: w[1]}, items=[w[2], w[3]])
    x = tensor("x")
    root = (holder, (x,), {})
    paths = [(("item", 0), ("attr", "weights"), ("item", "w")), (("item", 0), ("attr", "weights"), ("item", 7)),
             (("item", 0), ("attr", "items"), ("item", 0)), (("item", 0), ("attr", "items"), ("item", 1)),
             (("item", 1), ("item", 0))]  # the argument's path too: checked, not bound again
    bind = compile_binder(PathTree(paths), [id(t) for t in [*w, x]], [0, 1, 2, 3], [layout(x)], None)
    bound, nodes, buffers, sole = bind(root, [x])
    assert bound == [x, *w] and nodes == [t.node for t in bound] and buffers == [t.node.buffer for t in bound]
    assert sole is None


def test_arguments_laid_out_otherwise_than_traced_bind_nothing():
    x, y = tensor("x"), tensor("y")
    bind = compile_binder(PathTree([]), [], [], [layout(x), layout(y)], None)
    root = (None, (x, y), {})
    assert bind(root, (x, y))[0] == [x, y]
    assert bind(root, (x, tensor("y", (3, 2)))) is None  # another shape
    other = tensor("y")
    other.node.dtype = "float16"
    assert bind(root, (x, other)) is None
    other.node.dtype, other.node.device = "float32", "another device"
    assert bind(root, (x, other)) is None
    assert bind(root, (x, types.SimpleNamespace(node=y.node))) is not None  # (the same class: SimpleNamespace)
    assert bind(root, (x, 3)) is None and bind(root, (x,)) is None and bind(root, (x, y, y)) is None
    assert bind(root, (x, Trap())) is None  # (refused by its class before its node is read)


def test_a_path_that_leads_elsewhere_or_nowhere_binds_nothing():
    one, two = tensor("one"), tensor("two")
    holder = types.SimpleNamespace(state={"step": one, "lr": two})
    root = (holder, (), {})
    paths = [(("item", 0), ("attr", "state"), ("item", "step")), (("item", 0), ("attr", "state"), ("item", "lr"))]
    bind = compile_binder(PathTree(paths), [id(one), id(two)], [0, 1], [], None)
    assert bind(root, [])[0] == [one, two]
    holder.state["lr"] = tensor("another")
    assert bind(root, []) is None
    holder.state["lr"] = Trap()  # another object is refused by its id before anything of it is read
    assert bind(root, []) is None
    holder.state["lr"] = two
    del holder.state["step"]
    assert bind(root, []) is None
    holder.state = None  # (an object a step cannot index)
    assert bind(root, []) is None
    assert compile_binder(PathTree([]), [], [], [layout(one), layout(two)], None)(root, [one, two]) == (
        [one, two], [one.node, two.node], [one.node.buffer, two.node.buffer], None)


def test_the_nodes_to_overwrite_are_sole_only_without_another_holder_an_origin_or_a_weak_reference():
    x, m, v = tensor("x"), tensor("m"), tensor("v")
    holder = types.SimpleNamespace(m=m, v=v)
    root = (holder, (x,), {})
    bind = compile_binder(PathTree([(("item", 0), ("attr", "m")), (("item", 0), ("attr", "v"))]), [id(m), id(v)],
                          [0, 1], [layout(x)], [1, 2])  # m's and v's nodes (bound after x)
    assert bind(root, [x])[3] is True
    held = x.node  # x is not asked about
    assert bind(root, [x])[3] is True
    held = v.node  # noqa: F841 - a holder besides v
    assert bind(root, [x])[3] is False
    del held
    m.node.origin = "how it was computed"
    assert bind(root, [x])[3] is False
    m.node.origin = None
    watch = weakref.ref(v.node)
    assert bind(root, [x])[3] is False
    del watch
    assert bind(root, [x])[3] is True
    assert compile_binder(PathTree([]), [], [], [layout(x)], [])(root, [x])[3] is True  # nothing to overwrite
