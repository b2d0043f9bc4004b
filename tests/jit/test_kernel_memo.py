"""Kernels memoized by region (kernel_memo.py): a region met again gets exactly the kernel a fresh build gives; kernels
closing a cycle through their extra outputs are rebuilt alone without them."""
import contextlib
import importlib

import numpy as np
import pytest

import zyx
from zyx.jit.choices import NO_TUNING
from zyx.jit.kernel_memo import KernelMemo
from zyx.jit.kernel_nodes import kernel_flops
from zyx.jit.rewrite import rewrite_graph
from zyx.jit.device_traits import DeviceTraits
from zyx.jit.schedule import KernelCycle, _schedule, schedule
from zyx.trace.node import toposort

LAYERS = 4
RESIDUAL_LAYERS = 6
TRAITS = [DeviceTraits(vector_width=16), DeviceTraits(gpu=True, vector_width=4, max_group_size=1024)]


@pytest.fixture
def cycling(monkeypatch):
    """Schedules that leave the operands products and column sums share to each reader (as before
    schedule._stored_shared_operands): a GPT step's kernels then wait for each other through the row statistics
    they store as extra outputs, which these tests need to break."""
    monkeypatch.setattr(importlib.import_module("zyx.jit.schedule"), "_product_operand", lambda *arguments: False)


def _described(targets, traits, memoize):
    """The schedule's kernels in launch order, each as everything a program takes from it, nodes by position."""
    before = zyx.stats()["kernel_memo_hits"]
    kernels, rewritten = schedule(targets, traits, memoize=memoize)
    return _description(kernels, rewritten), zyx.stats()["kernel_memo_hits"] - before


def _description(kernels, rewritten):
    position = {id(node): k for k, node in enumerate(toposort(rewritten))}
    at = lambda nodes: [position.get(id(node), (node.op, node.shape)) for node in nodes]  # noqa: E731
    described = [(k.name, k.source, k.space, k.global_size, k.local_size, k.longest_reduction, k.site,
                  at(k.outputs), at(k.loads), at(k.needs), [(p.kind, p.name, *at([p.node])) for p in k.params],
                  at(node for node in k.loads if id(node) in k.misaligned), at(k.summed_apart), kernel_flops(k))
                 for k in kernels]
    return described


def _residual_weight_gradients():
    """The weight gradients of RESIDUAL_LAYERS residual GELU layers over 4096 rows, and GPU traits under which each
    is a product split along k (4 blocks of outputs for 132 compute units)."""
    traits = DeviceTraits(gpu=True, vector_width=4, max_group_size=1024, local_memory=48 * 1024, compute_units=132)
    rng, F, dev = np.random.default_rng(0), zyx.nn.functional, zyx.CPU()
    weights = [dev.tensor(rng.standard_normal((256, 256)).astype(np.float32) * 0.1) for _ in range(RESIDUAL_LAYERS)]
    h = dev.tensor(rng.standard_normal((4096, 256)).astype(np.float32))
    for w in weights:
        h = h + F.linear(F.gelu(h), w)
    return [g.node for g in (h * h).sum().backward(weights)], traits


@pytest.mark.parametrize("traits", TRAITS, ids=["cpu-kernels", "gpu-kernels"])
def test_a_memoized_gpt_schedule_is_the_fresh_one(small_gpt, traits):
    """Sources, launch order, and every node a kernel reads or stores equal with the memo on and off; the
    repeated layers' kernels come from the memo."""
    targets = [t.node for t in small_gpt(zyx.CPU(), layers=LAYERS)]
    fresh, none = _described(targets, traits, memoize=False)
    memoized, hits = _described(targets, traits, memoize=True)
    assert none == 0 and hits >= LAYERS - 1
    assert memoized == fresh


@pytest.mark.parametrize("traits, autocast", [(TRAITS[0], None), (TRAITS[1], None), (TRAITS[1], "bfloat16")],
                         ids=["cpu-kernels", "gpu-kernels", "gpu-kernels-bfloat16"])
def test_a_schedule_without_extra_outputs_takes_the_kernels_that_stored_none(small_gpt, traits, autocast, request):
    """After a schedule with extra outputs, the one without any (what `schedule` falls back to) gets the kernels
    that stored nothing but their roots from the memo, and is the schedule built fresh without extra outputs. A
    bf16 step meets a cycle as it is; there the memo gave attention's forward as row kernels (schedule._build_kernel
    builds attention products afresh)."""
    if autocast is None:
        request.getfixturevalue("cycling")
    with zyx.autocast(getattr(zyx, autocast)) if autocast else contextlib.nullcontext():
        step = small_gpt(zyx.CPU(), layers=LAYERS)
    targets = rewrite_graph([t.node for t in step], traits.gpu)
    def without_extra_outputs(memo):
        before = zyx.stats()["kernel_memo_hits"]
        kernels = _schedule(targets, traits, NO_TUNING, False, memo, set())
        return _description(kernels, targets), zyx.stats()["kernel_memo_hits"] - before

    memo = KernelMemo()
    with pytest.raises(KernelCycle):
        _schedule(targets, traits, NO_TUNING, True, memo, set())
    reused, hits = without_extra_outputs(memo)
    alone, own_hits = without_extra_outputs(KernelMemo())  # (its repeated layers alone)
    assert hits > own_hits + LAYERS
    assert reused == alone == without_extra_outputs(None)[0]


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


@pytest.mark.parametrize("traits", TRAITS, ids=["cpu-kernels", "gpu-kernels"])
def test_kernels_closing_a_cycle_alone_lose_their_extra_outputs(small_gpt, traits, cycling):
    """A GPT step's kernels wait for each other through extra outputs (KernelCycle, naming kernels that store
    some); only those are built again without them: the schedule keeps extra outputs elsewhere."""
    targets = rewrite_graph([t.node for t in small_gpt(zyx.CPU(), layers=LAYERS)], traits.gpu)
    with pytest.raises(KernelCycle) as cycle:
        _schedule(targets, traits, NO_TUNING, True, None, set())
    kernels, _ = schedule(targets, traits)
    stores = {id(root) for root in cycle.value.roots}
    assert stores and len(stores) < len(kernels)
    assert any(len(kernel.outputs) > 1 for kernel in kernels)


@pytest.mark.parametrize("traits", TRAITS, ids=["cpu-kernels", "gpu-kernels"])
def test_the_values_closing_a_cycle_are_stored_apart_and_the_next_attempt_has_fewer(small_gpt, traits, monkeypatch,
                                                                                    cycling):
    """The extra outputs that closed a cycle get kernels of their own in the next attempt (no other kernel takes
    them up and closes the next cycle: a GPT step took 6-7 attempts so), and the cycles end within three."""
    from zyx.jit import schedule as scheduling
    targets = [t.node for t in small_gpt(zyx.CPU(), layers=LAYERS)]
    cycles: list[KernelCycle] = []
    attempt = scheduling._schedule

    def noted(*arguments):
        try:
            return attempt(*arguments)
        except KernelCycle as cycle:
            cycles.append(cycle)
            raise
    monkeypatch.setattr(scheduling, "_schedule", noted)
    kernels, _ = schedule(targets, traits)
    assert 1 <= len(cycles) <= 2
    closing = {id(value) for cycle in cycles for value in cycle.values}
    assert closing & {id(kernel.outputs[0]) for kernel in kernels}  # (stored by kernels of their own)


@pytest.mark.parametrize("traits", TRAITS, ids=["cpu-kernels", "gpu-kernels"])
def test_a_gpt_step_schedules_in_one_attempt(small_gpt, traits, monkeypatch):
    """With the operands products and column sums share stored from the start, a float32 GPT step's kernels wait
    for no other's extra outputs: one attempt schedules it (two did, the first ending in a cycle)."""
    from zyx.jit import schedule as scheduling
    attempts = []
    attempt = scheduling._schedule
    monkeypatch.setattr(scheduling, "_schedule", lambda *arguments: attempts.append(1) or attempt(*arguments))
    schedule([t.node for t in small_gpt(zyx.CPU(), layers=LAYERS)], traits)
    assert len(attempts) == 1


def test_a_gpt_step_keeping_extra_outputs_computes_the_reference_gradients(shaped, small_gpt):
    """The schedule left after its cycles are broken computes what the CPU reference does: the loss and every
    gradient realized together, one schedule (realized one by one, each would schedule a part of the step again)."""
    step = small_gpt(shaped, layers=LAYERS)
    zyx.realize(*step)
    for got, expected in zip(step, small_gpt(zyx.CPU(), layers=LAYERS)):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-3, atol=1e-5)


def test_the_partials_of_split_products_come_from_the_memo(monkeypatch):
    """A split product's partials (a node the scheduler made, shaped with the choice planned for it) are memoized
    as any region is, by that choice too: residual layers alike build them once, and the schedule is the fresh
    one (W7 built its 48 weight gradients' partials 96 times)."""
    from zyx.jit import schedule as scheduling
    targets, traits = _residual_weight_gradients()
    fresh, _ = _described(targets, traits, memoize=False)
    partials = sum(1 for kernel in schedule(targets, traits, memoize=False)[0] if kernel.summed_apart)
    partials_built = []
    build = scheduling._build_shaped

    def noted(site, traits, tuned, planned):
        partials_built.append(scheduling._planned_choice(site.root, planned) is not None)
        return build(site, traits, tuned, planned)
    monkeypatch.setattr(scheduling, "_build_shaped", noted)
    memoized, _ = _described(targets, traits, memoize=True)
    assert memoized == fresh
    assert partials == RESIDUAL_LAYERS and 0 < sum(partials_built) < partials


def test_the_sums_of_split_products_partials_come_from_the_memo_with_the_partials_made_anew(monkeypatch):
    """The kernel summing a split product's partials makes the partials' node (the scheduler's, with the choice
    planned for its kernel): memoized, a layer alike gets the kernel with that node made again from its own nodes
    and the same choice planned, so the sums are built once and the schedule is the fresh one, FLOPs included (W7
    built its attention-projection weight gradient's sum in each of 12 layers, twice: 0.06 s each)."""
    from zyx.jit import schedule as scheduling
    targets, traits = _residual_weight_gradients()
    fresh, _ = _described(targets, traits, memoize=False)
    sums = sum(1 for kernel in schedule(targets, traits, memoize=False)[0] if kernel.summed_apart)
    sums_built = []
    built = scheduling._built

    def noted(*arguments):
        kernel, conflicted = built(*arguments)
        sums_built.append(bool(kernel.summed_apart))
        return kernel, conflicted
    monkeypatch.setattr(scheduling, "_built", noted)
    memoized, _ = _described(targets, traits, memoize=True)
    assert memoized == fresh
    assert sums == RESIDUAL_LAYERS and 0 < sum(sums_built) <= sums // 2  # (the first and last layers differ)


def test_a_region_reaching_past_one_met_before_is_built_anew():
    """A cosine embedding loss written by hand: (x1 * x1).sum(1) is built first, then (x1 * x2).sum(1), whose region
    has the same root, decisions and sources' keys (one memo index) but meets a new node where the first read x1
    again, one node past the first walk's end: the memo tells them apart (it looked up where the first walk stopped
    past its end: an IndexError while scheduling)."""
    dev = zyx.OpenCL()
    a, b = (np.random.default_rng(k).standard_normal((4, 5)).astype(np.float32) for k in range(2))
    x1, x2, t = dev.tensor(a), dev.tensor(b), dev.tensor(np.array([1, -1, 1, -1], np.float32))
    cosine = (x1 * x2).sum(1) / (((x1 * x1).sum(1) + 1e-12) * ((x2 * x2).sum(1) + 1e-12)).sqrt()
    loss = ((t == 1).where(1 - cosine, 0.0) + (t == -1).where(cosine.clamp(min=0), 0.0)).mean()
    expected = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
    expected = np.where([True, False, True, False], 1 - expected, np.maximum(expected, 0)).mean()
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


def test_a_kernel_whose_build_stores_a_value_below_what_it_loads_is_memoized(monkeypatch, w7_decoder,
                                                                              hopper_traits):
    """W7's attention gradient on Hopper: its build stores the projection weight's bf16 cast apart (an operand
    the tensor cores copy) below dY·Wᵀ, a product the kernel loads. The region goes on through the product to the
    cast, so the kernel is kept and each later layer takes it from the memo (W7 built it in every layer: 0.3 s
    each on a 2-core host), and the schedule is the fresh one."""
    targets = [t.node for t in w7_decoder(zyx.CPU(), layers=2, batch=4, length=128, dim=128, vocab=256)]
    fresh, _ = _described(targets, hopper_traits, memoize=False)
    kept = []
    remember = KernelMemo.remember

    def noted(memo, roots, *arguments):
        entries = sum(map(len, memo._entries.values()))
        remember(memo, roots, *arguments)
        if len(roots) > 1:  # (the attention gradient's kernels: dK with dV, and dQ with its siblings)
            kept.append(sum(map(len, memo._entries.values())) > entries)
    monkeypatch.setattr(KernelMemo, "remember", noted)
    memoized, _ = _described(targets, hopper_traits, memoize=True)
    assert kept and all(kept)
    assert memoized == fresh
