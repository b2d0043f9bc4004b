"""Kernels memoized by region (kernel_memo.py): a region met again gets exactly the kernel a fresh build gives."""
import numpy as np
import pytest

import zyx
from zyx.jit.schedule import DeviceTraits, schedule
from zyx.trace.node import toposort

LAYERS = 4
TRAITS = [DeviceTraits(vector_width=16), DeviceTraits(gpu=True, vector_width=4, max_group_size=1024)]


def _described(targets, traits, memoize):
    """The schedule's kernels in launch order, each as everything a program takes from it, nodes by position."""
    before = zyx.stats()["kernel_memo_hits"]
    kernels, rewritten = schedule(targets, traits, memoize=memoize)
    position = {id(node): k for k, node in enumerate(toposort(rewritten))}
    at = lambda nodes: [position.get(id(node), (node.op, node.shape)) for node in nodes]  # noqa: E731
    described = [(k.name, k.source, k.space, k.global_size, k.local_size, k.longest_reduction, k.site,
                  at(k.outputs), at(k.loads), at(k.needs), [(p.kind, p.name, *at([p.node])) for p in k.params],
                  at(node for node in k.loads if id(node) in k.misaligned)) for k in kernels]
    return described, zyx.stats()["kernel_memo_hits"] - before


@pytest.mark.parametrize("traits", TRAITS, ids=["cpu-kernels", "gpu-kernels"])
def test_a_memoized_gpt_schedule_is_the_fresh_one(small_gpt, traits):
    """Sources, launch order, and every node a kernel reads or stores equal with the memo on and off; the
    repeated layers' kernels come from the memo."""
    targets = [t.node for t in small_gpt(zyx.CPU(), layers=LAYERS)]
    fresh, none = _described(targets, traits, memoize=False)
    memoized, hits = _described(targets, traits, memoize=True)
    assert none == 0 and hits >= LAYERS - 1
    assert memoized == fresh


def test_a_repeated_region_reads_its_own_inputs():
    """Two row sums alike: the second is the first's kernel re-bound to its own buffers, and computes its own."""
    dev = zyx.OpenCL()
    data = [np.random.default_rng(k).standard_normal((64, 33)).astype(np.float32) for k in range(4)]
    a, b, c, d = (dev.tensor(x) for x in data)
    first, second = ((a * b).exp().sum(1), (c * d).exp().sum(1))
    hits = zyx.stats()["kernel_memo_hits"]
    kernels, targets = schedule([first.node, second.node], DeviceTraits(vector_width=16))
    assert zyx.stats()["kernel_memo_hits"] == hits + 1 and len(kernels) == 2
    assert kernels[0].source == kernels[1].source
    for target, inputs in zip(targets, ((a, b), (c, d))):
        kernel = next(k for k in kernels if k.outputs == [target])
        assert {id(p.node) for p in kernel.params} == {id(target), *(id(x.node) for x in inputs)}
    for got, x, y in ((first, data[0], data[1]), (second, data[2], data[3])):
        np.testing.assert_allclose(got.numpy(), np.exp(x * y).sum(1), rtol=1e-5)
