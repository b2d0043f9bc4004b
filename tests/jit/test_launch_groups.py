"""Launch groups (jit/launch_groups.py): tiny kernels share a launch with a kernel they are independent of, and
compute exactly what they compute alone; a kernel reading a value another overwrites in place never shares it."""
import dataclasses

import numpy as np
import pytest

import zyx

def adam_mlp(dev, sizes=(12, 8, 8, 3), batch=6, optimizer="Adam"):
    """A jitted Adam (or SGD) step of a small MLP (ReLU, cross-entropy), its data, and its parameters."""
    layers = [zyx.nn.Linear(a, b, device=dev) for a, b in zip(sizes, sizes[1:])]
    for layer, seed in zip(layers, range(len(layers))):
        rng = np.random.default_rng(seed)
        layer.weight.assign(dev.tensor(rng.uniform(-0.3, 0.3, layer.weight.shape).astype(np.float32)))
        layer.bias.assign(dev.tensor(rng.uniform(-0.3, 0.3, layer.bias.shape).astype(np.float32)))
    params = [p for layer in layers for p in (layer.weight, layer.bias)]
    zyx.realize(*params)
    opt = zyx.nn.Adam(lr=0.01) if optimizer == "Adam" else zyx.nn.SGD(lr=0.01)

    @zyx.jit
    def step(x, y):
        h = x
        for i, layer in enumerate(layers):
            h = layer(h)
            h = h.relu() if i < len(layers) - 1 else h
        loss = zyx.nn.cross_entropy(h, y)
        opt.update(params, loss.backward(params), realize_with=[loss])
        return loss
    rng = np.random.default_rng(16)
    x = dev.tensor(rng.standard_normal((batch, sizes[0])).astype(np.float32))
    y = dev.tensor(rng.integers(0, sizes[-1], batch).astype(np.int32))
    return step, x, y, params


def run(dev, steps=4, sizes=(12, 8, 8, 3), batch=6):
    step, x, y, params = adam_mlp(dev, sizes, batch)
    losses = [step(x, y).item() for _ in range(steps)]
    launches = step.captured[0]["launches"] if step.captured else None
    return losses, [p.numpy() for p in params], launches


def without_groups(device, monkeypatch):
    """`device` with one kernel per launch while the test runs (its programs are keyed apart by their traits)."""
    monkeypatch.setattr(device, "traits", dataclasses.replace(device.traits, group_launches=False))
    device.forget_programs()
    yield device
    device.forget_programs()


@pytest.fixture
def ungrouped(dev, monkeypatch):
    """The OpenCL device, one kernel per launch."""
    yield from without_groups(dev, monkeypatch)


@pytest.fixture
def ungrouped_gpu(gpu, monkeypatch):
    """GPU-shaped kernels (products and reductions in work groups), one kernel per launch."""
    yield from without_groups(gpu, monkeypatch)


def test_an_adam_step_in_fewer_launches_computes_what_one_kernel_per_launch_does(dev, ungrouped):
    check_grouped_step(ungrouped, (12, 8, 8, 3), 6)


def test_gpu_kernels_with_work_groups_share_launches_and_compute_what_they_compute_alone(ungrouped_gpu):
    """GPU-shaped: products with local tiles, work-group reductions with barriers and elementwise kernels whose
    items are no whole number of groups, in launches of any size: 20 kernels in 9 launches, the labels' index
    check in one of its own (the same at W4's full size)."""
    assert check_grouped_step(ungrouped_gpu, (128, 64, 64, 10), 64) == 9


def check_grouped_step(ungrouped, sizes, batch):
    """The jitted Adam step on `ungrouped`'s device, then with launch groups: at most 10 launches, fewer than
    kernels alone, the same results bit for bit, and the reference device's within rounding. Returns the
    launches."""
    plain_losses, plain_params, plain_launches = run(ungrouped, sizes=sizes, batch=batch)
    ungrouped.traits = dataclasses.replace(ungrouped.traits, group_launches=True)
    ungrouped.forget_programs()
    losses, params, launches = run(ungrouped, sizes=sizes, batch=batch)
    assert launches <= 10 < plain_launches
    assert losses == plain_losses
    for value, plain in zip(params, plain_params):
        np.testing.assert_array_equal(value, plain)
    cpu_losses, cpu_params, _ = run(zyx.CPU(), sizes=sizes, batch=batch)
    np.testing.assert_allclose(losses, cpu_losses, rtol=1e-4)  # (four Adam steps apart on NVIDIA: 1.5e-5)
    for value, reference in zip(params, cpu_params):
        # Adam moves a weight by about lr (0.01) a step whatever its gradient's size, so a gradient near zero
        # rounded otherwise moves it otherwise (on the H200: 8.8e-6 apart after four steps, one weight of 8192)
        np.testing.assert_allclose(value, reference, rtol=1e-4, atol=5e-5)
    return launches


def test_a_reader_of_an_old_value_never_shares_a_launch_with_its_in_place_writer(device):
    """`total` reads the counter before the step overwrites it in place: both are one-item kernels, independent
    but for that order, so only the third (independent) update may join one of them."""
    w, counter, other = device.tensor([1.0, 2.0, 3.0]), device.tensor([1.0]), device.tensor([3.0])

    @zyx.jit
    def step():
        total = (w * counter).sum()
        counter.assign(counter + 1)
        other.assign(other * 2)
        return total
    totals = [step().item() for _ in range(3)]
    assert totals == [6.0, 12.0, 18.0]
    assert counter.numpy().tolist() == [4.0] and other.numpy().tolist() == [24.0]
    if device.kind == "opencl":
        assert (step.captured[0]["kernels"], step.captured[0]["launches"]) == (3, 2)


def test_on_cpus_a_tiny_kernels_work_group_size_is_not_imposed_on_a_larger_kernel_without_one():
    """A product of 64 items in groups of one and a copy of 52 736 items (PoCL's own group size): together, the
    copy would run as 52 736 groups of one (three times its time alone on PoCL); a tiny kernel without a size of
    its own still joins a product's launch, and on GPUs kernels of any size share launches as before."""
    from types import SimpleNamespace

    from zyx.jit.launch_groups import Grouping, _may_join

    def kernel(items, local_size):
        return SimpleNamespace(global_size=items, local_size=local_size, params=[], ir=SimpleNamespace(body=()))
    cpu = Grouping(printer=None, max_params=64, local_memory=0)  # type: ignore[arg-type]
    product, copy = kernel(64, 1), kernel(52736, None)
    assert not _may_join(product, [copy], cpu) and not _may_join(copy, [product], cpu)
    assert _may_join(kernel(10, None), [kernel(3296, 1)], cpu) and _may_join(kernel(3296, 1), [kernel(10, None)], cpu)
    assert _may_join(product, [kernel(48, None)], cpu)  # (both tiny)
    assert _may_join(product, [copy], dataclasses.replace(cpu, any_size=True))


def test_a_long_kernel_with_local_memory_that_fills_the_device_keeps_its_own_launch():
    """On GPUs kernels of any size share launches, but not one with local memory whose groups fill the device and
    that runs long: the launch's local memory is its members' sum, which only costs it occupancy. A short one (W4's
    weight gradients, a few microseconds) loses less to company than a launch of its own costs."""
    from types import SimpleNamespace

    from zyx.dtypes import float32
    from zyx.jit.kernel_ir import LocalArray
    from zyx.jit.launch_groups import SHORT_BYTES, _fills_device
    from zyx.trace.ops import Op

    def kernel(groups, local, read_bytes=4 * SHORT_BYTES):
        body = (LocalArray("tile", float32, 1024),) if local else ()
        read = SimpleNamespace(op=Op.BUFFER, numel=read_bytes // 4, dtype=float32, src=())
        stored = SimpleNamespace(op=Op.BUFFER, numel=groups, dtype=float32, src=())
        return SimpleNamespace(global_size=groups * 64, local_size=64, ir=SimpleNamespace(body=body), loads=[read],
                               outputs=[stored], summed_apart=())
    assert _fills_device(kernel(600, True), 512)
    assert not _fills_device(kernel(600, True), 0)  # (no limit known)
    assert not _fills_device(kernel(600, False), 512)
    assert not _fills_device(kernel(100, True), 512)
    assert not _fills_device(kernel(600, True, read_bytes=1 << 20), 512)


def test_a_gpu_launch_runs_its_longest_work_groups_first_but_not_on_pocl(gpu, monkeypatch, tmp_path):
    """On a GPU driver a launch's kernels run their longest work groups first (a GPU starts a launch's groups in
    order); on PoCL, which runs the tests' GPU-shaped kernels on a CPU, they keep the schedule's order: PoCL
    miscompiles a launch whose first groups run a kernel with a barrier ahead of one without (a GPT step's stores
    then fell outside their buffer and crashed the process)."""
    from zyx.jit import launch_groups, program_store
    from zyx.runtime import fusing_device

    monkeypatch.setenv("ZYX_CACHE_DIR", str(tmp_path))  # (a program store of the test's own: built here)
    store = program_store.ProgramStore()
    monkeypatch.setattr(fusing_device, "default_program_store", lambda: store)
    built = []
    build = fusing_device.build_program
    monkeypatch.setattr(fusing_device, "build_program", lambda *args, **kw: built.append(args) or build(*args, **kw))
    rng = np.random.default_rng(0)
    a, b = (gpu.tensor(rng.standard_normal((256, 256)).astype(np.float32)) for _ in range(2))
    c = gpu.tensor(rng.standard_normal((1000, 3)).astype(np.float32))
    product, sums = a @ b, c.sum(1)
    zyx.realize(sums, product)
    np.testing.assert_allclose(product.numpy(), a.numpy() @ b.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sums.numpy(), c.numpy().sum(1), rtol=1e-5, atol=1e-5)
    (kernels, *_, grouping), = [args[:6] for args in built]
    assert grouping.any_size and grouping.longest_first == gpu.runtime.is_gpu  # (PoCL: no GPU driver)

    product_kernel = next(k for k in kernels if k.outputs[0] is product.node)
    shortest_first = sorted(kernels, key=lambda k: k is product_kernel)  # (independent: any order is the schedule's)

    def members(longest_first: bool) -> list[str]:
        named: list[str] = []
        monkeypatch.setattr(launch_groups, "_grouped", lambda group, printer: named.extend(k.name for k in group))
        launch_groups.group_launches(shortest_first, [set() for _ in kernels],
                                     dataclasses.replace(grouping, longest_first=longest_first))
        return named
    assert members(False) == [k.name for k in shortest_first]
    assert members(True) == [k.name for k in shortest_first[::-1]]  # (256³ in 64-blocks: longer groups than sums')


@pytest.mark.parametrize("shapes", ["dev", "gpu"])
def test_the_launches_writing_inputs_in_place_come_after_all_others(shapes, request):
    """A replay waits for its index checks (the labels' range here) before its first launch writing an input in
    place: every other launch is queued ahead of it (Adam's step counter, updated in place, ran in the first), and
    the checks are computed in the step's first launch, alone, where their read is queued right behind it."""
    step, x, y, _ = adam_mlp(request.getfixturevalue(shapes), (24, 16, 16, 4), 8)
    for _ in range(2):
        step(x, y)
    (captured,) = step.steps[next(iter(step.steps))]
    program = captured.program
    writes = [any(kind == "slot" and index in program.aliases for kind, index in launch.args)
              for launch in program.launches if launch.is_kernel]
    assert captured.gated_checks and any(writes) and writes == sorted(writes), writes
    (check,) = program.checks
    assert program.outputs[check] in program.allocs[0] and program.launches[0].kernels == 1


@pytest.mark.parametrize("optimizer, kernels, launches", [("SGD", 16, 8), ("Adam", 19, 9)])
def test_w4s_step_shaped_for_the_h200_runs_in_its_pinned_kernels_and_launches(h200_sized, optimizer, kernels, launches):
    """W4 (bench/train_step.py: an MLP 784-512-512-10, batch 512), which the H200 runs launch-bound: 16 kernels in 8
    launches an SGD step, 19 in 9 an Adam step (issue 16: at most 10; 17 and 20 before the loss read its target
    logits itself, lower.INLINE_TAKES), the labels' index check alone in the first
    (h2, 0.32 ms an SGD step on the H200: 17 in 10 with the check's own program; main at 1c94bc4 19 in 11 and 22 in
    12: ReLU's backward stored apart from the product it masks, a bias added by every reader of its layer's
    product, the second layer's weight gradient alone). Its losses are the CPU reference's, and labels out of range
    raise before any parameter is overwritten."""
    step, x, y, params = adam_mlp(h200_sized, (784, 512, 512, 10), 512, optimizer)
    losses = [step(x, y).item() for _ in range(2)]
    (captured,) = step.steps[next(iter(step.steps))]
    program = captured.program
    assert (program.kernel_count, program.launch_count) == (kernels, launches)
    assert captured.gated_checks and program.launches[0].kernels == 1
    before = [p.numpy() for p in params]
    labels = np.array(y.numpy())
    labels[7] = 10
    with pytest.raises(IndexError, match=r"^cross_entropy: target 10 is out of range for 10 classes$"):
        step(x, h200_sized.tensor(labels))
    for value, kept in zip(params, before):  # (the check raised before any update was written)
        np.testing.assert_array_equal(value.numpy(), kept)
    reference, cpu_x, cpu_y, _ = adam_mlp(zyx.CPU(), (784, 512, 512, 10), 512, optimizer)
    np.testing.assert_allclose(losses, [reference(cpu_x, cpu_y).item() for _ in range(2)], rtol=1e-4)
