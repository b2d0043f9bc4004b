"""Structural hashes: the same program on same-shaped inputs hashes equal in any process; data, seeds, object
ids and Python's hash() never enter; any change of op, shape, dtype or constant changes the hash."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import zyx
from zyx import tensor_layers as layers_module
from zyx.trace import node as node_module
from zyx.trace.hashing import Walk, signature, structural_hash
from zyx.trace.node import toposort

STEP = textwrap.dedent('''
    import numpy as np
    import zyx
    from zyx.trace.hashing import structural_hash

    def training_step_hash(data_seed=0, rows=8, dtype="float32", lr=0.1, activation="relu"):
        zyx.manual_seed(data_seed)
        rng = np.random.default_rng(data_seed)
        device = zyx.CPU()
        x = zyx.tensor(rng.standard_normal((rows, 4)), device=device, dtype=dtype)
        labels = zyx.tensor(rng.integers(0, 3, rows), device=device)
        w = zyx.randn(4, 3, device=device, dtype=dtype)
        b = zyx.zeros(3, device=device, dtype=dtype)
        hidden = getattr(x @ w + b, activation)()
        loss = -(hidden.log_softmax() * labels.one_hot(3)).sum(1).mean()
        gw, gb = loss.backward([w, b])
        return structural_hash([loss.node, (w - lr * gw).node, (b - lr * gb).node])
''')
namespace: dict = {}
exec(STEP, namespace)  # noqa: S102 - the same source runs here and in the subprocesses
training_step_hash = namespace["training_step_hash"]


def _hash_in_subprocess(hash_seed: str, **kwargs) -> str:
    code = STEP + f"\nprint(training_step_hash(**{kwargs!r}))\n"
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, ZYX_DEVICE="cpu")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          check=True)
    return done.stdout.strip().splitlines()[-1]


def test_training_step_hashes_equal_across_processes():
    here = training_step_hash()
    assert len(here) == 32 and int(here, 16) >= 0
    assert training_step_hash() == here  # built twice in one process
    assert _hash_in_subprocess("1") == here
    assert _hash_in_subprocess("12345", data_seed=7) == here  # other data, seed and Python hash()


@pytest.mark.parametrize("change", [dict(activation="tanh"), dict(rows=9), dict(dtype="float64"), dict(lr=0.2)],
                         ids=["op", "shape", "dtype", "constant"])
def test_any_change_changes_the_hash(change):
    assert training_step_hash(**change) != training_step_hash()


def test_hash_details(device):
    x = zyx.tensor([1.0, 2.0], device=device)
    y = zyx.tensor([3.0, 4.0], device=device)
    assert (x * 2).structural_hash() == (y * 2).structural_hash()          # data does not enter
    assert (x * 2).structural_hash() != (x * 3).structural_hash()          # constants do
    assert (x + x).structural_hash() != (x + y).structural_hash()          # which inputs are shared does
    assert (x + y).structural_hash() == (y + x).structural_hash()          # leaves numbered by first use
    assert (x - y).structural_hash() != (x + y).structural_hash()
    assert x.exp().structural_hash() != x.log().structural_hash()
    assert x.reshape(2, 1).structural_hash() != x.reshape(1, 2).structural_hash()
    assert x.sum().structural_hash() != x.max().structural_hash()
    assert (x * 0.0).structural_hash() != (x * -0.0).structural_hash()
    assert x.pad(((1, 0),)).structural_hash() != x.pad(((0, 1),)).structural_hash()
    assert x.pad(((1, 0),)).structural_hash() != x.pad(((1, 0),), value=1).structural_hash()
    assert x.cast(zyx.float64).structural_hash() != x.cast(zyx.float16).structural_hash()
    zyx.manual_seed(0)
    first = zyx.rand(3, device=device)
    zyx.manual_seed(1)
    assert zyx.rand(3, device=device).structural_hash() == first.structural_hash()  # seeds do not enter
    assert x.permute(np.int64(0)).structural_hash() == x.permute(0).structural_hash()
    assert x.expand(np.int64(2), 2).structural_hash() == x.expand(2, 2).structural_hash()


def test_signature_orders_leaves(device):
    x = zyx.tensor([1.0], device=device)
    y = zyx.tensor([2.0], device=device)
    r = zyx.rand(1, device=device)
    digest, leaves, rands = signature([(y * x + r).node])
    assert digest == structural_hash([(y * x + r).node])
    assert leaves == [y.node, x.node] and rands == [r.node]


def test_walk_structure_tells_apart_exactly_what_the_hash_does(device):
    """The in-memory key (Walk.structure, gathered from keys nodes made when built) and the digest agree."""
    x = zyx.tensor([1.0, 2.0], device=device)
    y = zyx.tensor([3.0, 4.0], device=device)
    i = zyx.tensor([1, 2], device=device)
    pairs = [(x * 2, y * 2), (x * 2, x * 3), (x + x, x + y), (x + y, y + x), (x * 0.0, x * -0.0),
             (x.pad(((1, 0),)), x.pad(((1, 0),), value=1)), (x.cast(zyx.float64), x.cast(zyx.float16)),
             (i * 1, i * True), (i << 1, i >> 1), (x.sum(), x.max()), (x.reshape(2, 1), x.reshape(1, 2))]
    for a, b in pairs:
        same_structure = Walk([a.node]).structure == Walk([b.node]).structure
        assert same_structure == (a.structural_hash() == b.structural_hash()), (a.node, b.node)
    assert Walk([(x * 2).node]).structure == Walk([(y * 2).node]).structure
    assert Walk([(x * 0.0).node]).structure != Walk([(x * -0.0).node]).structure


def test_walk_meets_nodes_as_toposort_does():
    """The walk numbers nodes in its one pass in toposort's order (what the digests were made from), with shared
    sources, a root below another root and a root given twice."""
    x = zyx.tensor([1.0, 2.0])
    y = zyx.tensor([3.0, 4.0])
    shared = (x * y).exp()
    top = shared * x + shared.tanh() * y
    roots = [top.node, shared.node, (y - x).node, top.node]
    walk = Walk(roots)
    assert walk.order == toposort(roots)
    assert walk.numbering == {node: position for position, node in enumerate(walk.order)}
    assert walk.leaves == [x.node, y.node]


def test_node_key_numbers_are_never_given_to_another_key(monkeypatch):
    """Past KEYS_KEPT the numbers are forgotten: an equal key then gets a new number, another key never an old one
    (a structure of other ops must never equal a remembered one)."""
    monkeypatch.setattr(node_module, "KEYS_KEPT", 3)
    monkeypatch.setattr(node_module, "_key_numbers", {})
    keys = [(1, (2,), "float32", None), (2, (2,), "float32", None), (3, (2,), "float32", None)]
    first = [node_module.key_number(key) for key in keys]
    assert [node_module.key_number(key) for key in keys] == first and len(set(first)) == 3
    later = [node_module.key_number(key) for key in [(4, (2,), "float32", None), keys[0]]]
    assert not set(later) & set(first) and len(set(later)) == 2


def test_a_leaf_makers_leaves_are_what_buffer_leaf_makes():
    """node.leaf_maker sets Node's slots itself (a replay's result leaves, made fast): every slot must match."""
    device, buffer = zyx.CPU(), object()
    made = node_module.leaf_maker((3, 4), zyx.float32, device)(buffer)
    built = node_module.buffer_leaf(buffer, (3, 4), zyx.float32, device)
    for slot in node_module.Node.__slots__:
        if slot != "__weakref__":
            assert getattr(made, slot) == getattr(built, slot), slot


@pytest.mark.parametrize("left, right, dtypes", [
    ((3, 4), (4, 5), ("float32", "float32")), ((4,), (4, 5), ("float32", "float32")),
    ((3, 4), (4,), ("float32", "float32")), ((4,), (4,), ("float32", "float32")),
    ((2, 1, 3, 4), (5, 4, 2), ("float32", "float32")), ((3, 4), (4, 5), ("int32", "float16")),
    ((3, 4), (4, 5), ("int32", "int32")), ((3, 4), (4, 5), ("bool", "bool"))])
def test_products_made_again_are_the_products_traced(left, right, dtypes):
    """matmul makes a product's nodes again for operands met before (node.graph_maker, slot for slot as Node's
    constructors set them): the nodes `_matmul` builds one by one, the same structure, digest and values, for
    vectors, batches that broadcast, mixed dtypes, integers and booleans."""
    rng = np.random.default_rng(3)
    arrays = [(rng.standard_normal(shape) * 3).astype(dtype) for shape, dtype in zip((left, right), dtypes)]
    x, y = (zyx.tensor(array) for array in arrays)
    (x @ y).realize()  # its maker made
    a_shape, b_shape = left if len(left) > 1 else (1,) + left, right if len(right) > 1 else right + (1,)
    batch = tuple(np.broadcast_shapes(a_shape[:-2], b_shape[:-2]))
    made = layers_module._product_makers[(x.node.shape, y.node.shape, x.dtype, y.dtype)](x.node, y.node)
    built = layers_module._matmul(x.node, y.node, a_shape, b_shape, batch, zyx.dtypes.promote(x.dtype, y.dtype))
    assert Walk([made]).structure == Walk([built]).structure and structural_hash([made]) == structural_hash([built])
    for ours, theirs in zip(toposort([made]), toposort([built]), strict=True):
        for slot in node_module.Node.__slots__:
            if slot not in ("src", "__weakref__"):
                mine, other = getattr(ours, slot), getattr(theirs, slot)
                assert mine is other or mine == other, slot
    np.testing.assert_array_equal(zyx.Tensor(made).numpy(), zyx.Tensor(built).numpy())
    # what matmul made around the product before its makers covered all of it: the cast back from int64, the
    # squeezes of 1-D operands' axes, op for op
    dtype = zyx.dtypes.promote(x.dtype, y.dtype)
    reference = zyx.Tensor(layers_module._product(x.node, y.node, a_shape, b_shape, batch, dtype))
    reference = reference.cast(dtype) if dtype.is_int else reference
    reference = reference.squeeze(-2) if len(left) == 1 else reference
    reference = reference.squeeze(-1) if len(right) == 1 else reference
    assert (x @ y).structural_hash() == reference.structural_hash()


def test_a_product_of_a_transpose_reads_the_matrix_itself():
    """`x @ w.T.T` (a linear layer's weight as its trace reads it) is built node by node, where the product's own
    permute of the operand folds into its permutes: the trace reads w, not a permute of a permute of it."""
    x, w = zyx.tensor(np.ones((2, 3), np.float32)), zyx.tensor(np.ones((4, 3), np.float32))
    nodes = toposort([(x @ w.T).node])
    assert w.node in nodes and sum(node.op is zyx.trace.ops.Op.PERMUTE for node in nodes) == 0


def test_walks_of_one_structure_share_its_plan():
    """A structure is planned at its first walk (hashing.Plan: leaf, rand and root positions, the graph spelled
    out, a number for the in-memory caches); a later walk of an equal graph finds that plan and binds its own
    leaves by its positions, a graph of another structure gets a plan and number of its own."""
    x, y, z = (zyx.tensor(np.full((2, 3), float(k), np.float32)) for k in range(3))
    first, again = Walk([(x * y + x).node]), Walk([(z * x + z).node])
    assert again.plan is first.plan and again.structure == first.structure
    assert again.leaves == [z.node, x.node] and first.leaves == [x.node, y.node]
    assert again.order == toposort(again.roots) and again.numbering == {n: k for k, n in enumerate(again.order)}
    other = Walk([(x * y + y).node])  # the other leaf reused: another structure
    assert other.plan is not first.plan and other.structure != first.structure
    assert [op for op, *_ in first.plan.nodes] == [node.op for node in first.order]
    assert first.plan.root_keys == (node_module.buffer_key((2, 3), zyx.float32),)


def test_a_walk_deeper_than_the_recursion_limit_meets_nodes_as_a_shallow_one_does():
    """The walk recurses; past the interpreter's recursion limit it walks again iteratively, in the same order and
    to the same plan as the recursive pass gives a graph of that structure."""
    x = zyx.tensor([1.0, 2.0])
    deep = x
    for _ in range(sys.getrecursionlimit() + 100):
        deep = deep.exp() + x
    walk = Walk([deep.node])
    assert walk.order == toposort([deep.node]) and walk.leaves == [x.node]
    limit = sys.getrecursionlimit()
    try:
        sys.setrecursionlimit(limit + 10_000)
        assert Walk([deep.node]).plan is walk.plan
    finally:
        sys.setrecursionlimit(limit)
