"""Vector-typed elementwise kernels (CPUs): which kernels get them, and that they compute what the scalar
reference computes, lane for lane, through broadcasts, views, padding, masks and extra outputs."""
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import zyx
from zyx.jit.device_traits import DeviceTraits
from zyx.jit.schedule import NARROW_GROUP_ROW, schedule

RNG = np.random.default_rng(11)
CPU_TRAITS = DeviceTraits(vector_width=16)


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def kernels_of(*tensors):
    kernels, _ = schedule([t.node for t in tensors], CPU_TRAITS)
    return kernels


def is_vector(kernel):
    return re.search(r"\b(float|int)16 ", kernel.source) is not None


def w1b(x, y):
    return ((((x * 1.5 + y).relu() * x - y / 3).exp().tanh() * 2 + x).sigmoid() - y * 0.5)


def test_contiguous_chain_is_one_vector_kernel_with_vector_loads_and_store():
    host = zyx.CPU()
    kernel, = kernels_of(w1b(host.tensor(data(64, 48)), host.tensor(data(64, 48))))
    assert "vload16(gid,in" in kernel.source and "vstore16(" in kernel.source and "float16 " in kernel.source
    assert kernel.global_size == 64 * 48 // 16 and not kernel.misaligned
    assert "<=" in kernel.source and "|" not in kernel.source.split("__kernel")[1]  # relu: one comparison


def test_greater_or_equal_is_one_comparison_too():
    host = zyx.CPU()
    kernel, = kernels_of((host.tensor(data(4, 16)) >= 0.5).where(1.0, 2.0))
    assert "|" not in kernel.source.split("__kernel")[1]


def test_broadcasts_read_one_vector_or_one_element():
    host = zyx.CPU()
    x, row, column = host.tensor(data(8, 32)), host.tensor(data(32)), host.tensor(data(8, 1))
    kernel, = kernels_of(x * row + column)
    assert "vload16((gid%2),in" in kernel.source  # the row: consecutive within each vector, two per row
    # the column: one element, broadcast into all lanes
    assert re.search(r"float (\w+) = in\d\[.*\n.*\(\(float16\)\(\1\)\)", kernel.source)


@pytest.mark.parametrize("build", [
    lambda x: x[:, :31].sum(-1) + 1,            # a row of 31: not a whole number of vectors
    lambda x: x.cast(zyx.int32) * 2,            # integers: scalar kernel
    lambda x: x[:, :15].exp(),                  # 8*15 outputs: not a multiple of the width
])
def test_kernels_outside_the_vector_builder_stay_scalar(build):
    host = zyx.CPU()
    kernels = kernels_of(build(host.tensor(data(8, 32))))
    assert not any(is_vector(k) for k in kernels)


def test_float16_and_float64_stay_scalar():
    host = zyx.CPU()
    for dtype in (zyx.float16, zyx.float64):
        kernel, = kernels_of(host.tensor(data(4, 32)).cast(dtype).exp())
        assert not is_vector(kernel)


CASES = {
    "w1b": (lambda x, y: w1b(x, y), ((16, 64), (16, 64))),
    "bias row and column": (lambda x, y: x * y[0] + y[:, :1], ((12, 32), (12, 32))),
    "transpose gathers": (lambda x, y: (x.T * 2).exp() + y, ((32, 16), (16, 32))),
    "flip and shrink": (lambda x, y: x.flip(1)[:, 4:36] - y[2:4].reshape(2, 32).sum(0), ((16, 48), (6, 32))),
    "pad inside vectors": (lambda x, y: x.pad(((0, 0), (3, 5)), value=-2.0) * 3 + y, ((4, 24), (4, 32))),
    "pad whole rows": (lambda x, y: x.pad(((1, 1), (0, 0)), value=0.5) - y, ((6, 16), (8, 16))),
    "masks": (lambda x, y: (x > y).where(x, y * 2) + ((x < 0) & (y >= 0)).float() - (x == x).float(),
              ((8, 16), (8, 16))),
    "max with nan": (lambda x, y: x.maximum(y / 0 * 0) + x.maximum(y), ((4, 16), (4, 16))),
    "math": (lambda x, y: x.abs().sqrt() + y.sin() * y.cos() + (x * x + 1).log() - x.floor() + y.ceil()
             + (x * 3).round() + x.abs() ** y - 1 / (y + 4), ((5, 16), (5, 16))),
    "softmax reads the reductions as broadcasts": (lambda x, y: x.softmax(-1) * y, ((8, 64), (8, 64))),
    "row sums walk vectors": (lambda x, y: (x * y).sum(-1) * 2 + 1, ((5, 96), (5, 96))),
    "column sums accumulate lanes": (lambda x, y: (x.exp() + y).sum(0), ((37, 48), (37, 48))),
    "max with nan rows": (lambda x, y: (x / (y > 1).where(0.0, 1.0) * 0).max(-1) + x.max(-1), ((6, 32), (6, 32))),
    "layer norm": (lambda x, y: (x - x.mean(-1, keepdim=True)) / ((x - x.mean(-1, keepdim=True)).square()
                                                                  .mean(-1, keepdim=True) + 1e-5).sqrt() * y,
                   ((10, 64), (10, 64))),
    "middle axis of a batch": (lambda x, y: x.reshape(4, 8, 32).sum(1) - y[:4], ((32, 32), (32, 32))),
    "whole tensor": (lambda x, y: (x * y).sum() + x.max(), ((64, 256), (64, 256))),
    "any over masks": (lambda x, y: (x > 1).max(-1).where(y[:, 0], 0.0), ((16, 32), (16, 32))),
}


@pytest.mark.parametrize("name", CASES)
def test_vector_kernels_match_the_cpu_backend(dev, name):
    build, shapes = CASES[name]
    arrays = [data(*shape) for shape in shapes]
    reference = build(*(zyx.CPU().tensor(a) for a in arrays))
    assert is_vector(kernels_of(reference)[-1])  # the case exercises the vector builder
    expected = reference.numpy()
    got = build(*(dev.tensor(a) for a in arrays)).numpy()
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)


def test_comparisons_stored_as_bool_and_read_back(dev):
    a, b = data(4, 32), data(4, 32)
    mask = (dev.tensor(a) > dev.tensor(b)).realize()
    flipped = (~mask | (dev.tensor(a) > 1)).realize()
    np.testing.assert_array_equal(mask.numpy(), a > b)
    np.testing.assert_array_equal(flipped.numpy(), ~(a > b) | (a > 1))
    np.testing.assert_allclose(mask.where(dev.tensor(a), 0.0).numpy(), np.where(a > b, a, 0.0))


def test_two_outputs_share_one_vector_kernel(dev):
    a, b = data(16, 16), data(16, 16)
    x, y = dev.tensor(a), dev.tensor(b)
    shared = (x * y).exp()
    first, second = shared + 1, shared * x
    zyx.reset_stats()
    zyx.realize(first, second)
    assert zyx.stats()["kernels_launched"] <= 2
    np.testing.assert_allclose(first.numpy(), np.exp(a * b) + 1, rtol=1e-5)
    np.testing.assert_allclose(second.numpy(), np.exp(a * b) * a, rtol=1e-5)


def test_gradients_through_vector_kernels(dev):
    a = data(8, 32)
    x = dev.tensor(a)
    loss = (x.tanh() * x.sigmoid()).sum()
    grad, = loss.backward([x])
    t, s = np.tanh(a), 1 / (1 + np.exp(-a))
    np.testing.assert_allclose(grad.numpy(), (1 - t * t) * s + t * s * (1 - s), rtol=1e-4, atol=1e-6)


def test_empty_reductions_fall_back_to_the_scalar_builder(dev):
    x = dev.tensor(np.zeros((0, 32), np.float32))
    np.testing.assert_array_equal(x.sum(0).numpy(), np.zeros(32))
    np.testing.assert_array_equal(dev.tensor(np.zeros((16, 0), np.float32)).sum(1).numpy(), np.zeros(16))


STEPS = [
    lambda v, y: v + y, lambda v, y: v * y - 1, lambda v, y: (v > y).where(v, y * 2), lambda v, y: v.maximum(y),
    lambda v, y: v.tanh(), lambda v, y: v.sigmoid() - y.relu(), lambda v, y: v / (y.abs() + 1),
    lambda v, y: v.abs().sqrt(), lambda v, y: v.flip(-1), lambda v, y: v.flip(0) + y,
    lambda v, y: v.pad(((0, 0), (1, 0)), value=0.5)[:, :-1], lambda v, y: v + y[:1], lambda v, y: v * y[:, :1],
    lambda v, y: v - v.max(-1, keepdim=True), lambda v, y: v * v.sum(0, keepdim=True),
    lambda v, y: (v <= 0).where(0.0, v) + (y >= v).float(),
]


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 4), vectors=st.integers(1, 3), steps=st.lists(st.integers(0, len(STEPS) - 1), min_size=1,
                                                                        max_size=4))
def test_random_chains_match_the_cpu_backend(rows, vectors, steps):
    """Whole-vector shapes (a multiple of 16 per row), random elementwise ops, views, broadcasts and reductions."""
    a, b = data(rows, 16 * vectors), data(rows, 16 * vectors)

    def build(device):
        value, other = device.tensor(a), device.tensor(b)
        for step in steps:
            value = STEPS[step](value, other)
        return value

    np.testing.assert_allclose(build(zyx.OpenCL()).numpy(), build(zyx.CPU()).numpy(), rtol=1e-4, atol=1e-5)


def test_lanes_wholly_in_the_padding_read_no_guarded_constant(dev):
    """Such a lane reads element 0 unguarded and is masked out (a constant guard made compilers warn)."""
    a = data(1, 4)
    build = lambda t: (t.pad(((0, 0), (6, 22)), value=3.0)[:, 1:].pad(((0, 0), (0, 1)), value=-1.0) * 0.5).exp()
    kernel, = kernels_of(build(zyx.CPU().tensor(a)))
    assert is_vector(kernel) and "&&0" not in kernel.source and "((0)?" not in kernel.source
    expected = np.exp(np.pad(np.pad(a, ((0, 0), (6, 22)), constant_values=3.0)[:, 1:], ((0, 0), (0, 1)),
                             constant_values=-1.0) * 0.5)
    np.testing.assert_allclose(build(dev.tensor(a)).numpy(), expected, rtol=1e-6)


def test_a_kernel_that_only_gathers_stays_scalar(dev):
    """Lanes pay for math PoCL calls lane by lane, or for whole-vector loads; a kernel whose every load is a
    gather (lanes at elements apart: a strided view, a pad's guarded reads) and that computes only arithmetic is
    left to PoCL's own vectorizer, as scalar code (16 lanes' guarded indices written out took PoCL 2-3x longer)."""
    a = data(8, 64)
    strided = lambda t: t[:, ::2].pad(((0, 0), (3, 1)), value=1.0) * 2 + 1
    kernel, = kernels_of(strided(zyx.CPU().tensor(a)))
    assert not is_vector(kernel), kernel.source
    kernel, = kernels_of(strided(zyx.CPU().tensor(a)).exp())
    assert is_vector(kernel), kernel.source
    np.testing.assert_allclose(strided(dev.tensor(a)).numpy(), np.pad(a[:, ::2], ((0, 0), (3, 1)),
                                                                      constant_values=1.0) * 2 + 1, rtol=1e-6)


def test_values_the_same_in_every_lane_are_computed_once_per_item(dev):
    """Adam's bias corrections (a power of the step count, a one-element tensor) are scalar math broadcast into
    the lanes, not one `pow` per lane."""
    x, step = data(8, 32), np.array(3.0, np.float32)

    def build(x, step):
        return (x * 2 + 1) / (1 - 0.999 ** step).sqrt()

    kernel, = kernels_of(build(zyx.CPU().tensor(x), zyx.CPU().tensor(step)))
    assert is_vector(kernel) and re.search(r"float \w+ = pow\(", kernel.source), kernel.source
    assert not re.search(r"float16 v\d+ = (pow|sqrt)\(", kernel.source), kernel.source
    got = build(dev.tensor(x), dev.tensor(step)).numpy()
    np.testing.assert_allclose(got, (x * 2 + 1) / np.sqrt(1 - 0.999 ** step), rtol=2e-5)


def test_masks_the_same_in_every_lane_stay_masks(dev):
    x, flag, step = data(4, 32), np.array([True]), np.array(3.0, np.float32)

    def build(x, flag, step):
        return flag.where(x, -x) * (step > 2).where(1.0, 0.5)

    kernel, = kernels_of(build(zyx.CPU().tensor(x), zyx.CPU().tensor(flag), zyx.CPU().tensor(step)))
    assert is_vector(kernel)
    got = build(dev.tensor(x), dev.tensor(flag), dev.tensor(step)).numpy()
    np.testing.assert_allclose(got, np.where(flag, x, -x) * np.where(step > 2, 1.0, 0.5), rtol=1e-6)


def test_integers_the_same_in_every_lane_stay_scalars(dev):
    """An embedding and its weight gradient: each index (an integer, the same in every lane) is scalar math, the
    row it picks a whole vector (the scalar gradient kernel of W7's embedding took 5 s a step on PoCL; the
    gradient is now a product: tests/jit/test_indirect.py)."""
    ids, w, g = RNG.integers(0, 40, (6, 8)).astype(np.int32), data(40, 32), data(6, 8, 32)

    def build(device):
        weight = device.tensor(w)
        rows = zyx.nn.functional.embedding(device.tensor(ids), weight)
        return rows, (rows * device.tensor(g)).sum().backward([weight])[0]

    rows, _ = build(zyx.CPU())
    picked, = [k for k in kernels_of(rows) if rows.node in k.outputs]
    assert is_vector(picked) and re.search(r"\blong \w+ = ", picked.source) and "long16" not in picked.source
    rows, grad = build(dev)
    expected = np.zeros_like(w)
    np.add.at(expected, ids.reshape(-1), g.reshape(-1, 32))
    np.testing.assert_array_equal(rows.numpy(), w[ids])
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("classes", [300, 1024])
def test_one_hot_classes_are_a_mask_from_one_scalar_load(dev, classes):
    """A cross-entropy's gradient compares each row's target with the arange of classes: consecutive classes are
    the lanes `float(target - first) == (0, 1, ...)`, from one scalar load (with the int64 arange in the lanes
    the kernel stayed scalar: 15 ms for 1024x1024 on PoCL, 4 ms as vectors; 300 classes leave a scalar tail)."""
    logits, target = data(6, classes), np.array([0, 5, classes - 1, -100, 17, 3])

    def gradient(device):
        x = device.tensor(logits)
        return zyx.nn.functional.cross_entropy(x, device.tensor(target)).backward([x])[0]

    grad = gradient(zyx.CPU())
    for traits, width in ((CPU_TRAITS, 16), (DeviceTraits(gpu=True, vector_width=4), 4)):
        kernels, (target_node,) = schedule([grad.node], traits)
        kernel, = [k for k in kernels if target_node in k.outputs]
        assert f"float{width} " in kernel.source and f"long{width}" not in kernel.source
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    kept = target != -100
    expected = (probabilities - np.eye(classes, dtype=np.float32)[np.where(kept, target, 0)]) * kept[:, None]
    np.testing.assert_allclose(gradient(dev).numpy(), expected / kept.sum(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("later", [True, False])
def test_a_causal_mask_of_aranges_is_a_mask_from_one_scalar_load(dev, later):
    """A causal mask compares each query's position with the arange of keys (`keys > query`, or `keys < query`):
    the lanes are `float(query - first)` against (0, 1, ...), so the masked softmax stays a vector kernel (with
    the int64 arange in the lanes it stayed scalar: 7 ms a layer of W7's step at the CPU size on PoCL)."""
    scores = data(2, 48, 48)

    def masked(device):
        rows = zyx.arange(48, device=device).reshape(-1, 1)
        keys = zyx.arange(48, device=device).reshape(1, -1)
        blocked = keys > rows if later else keys < rows
        return blocked.where(float("-inf"), device.tensor(scores)).exp()

    out = masked(dev)
    kernel, = [k for k in kernels_of(out) if out.node in k.outputs]
    assert "float16 " in kernel.source and "long16" not in kernel.source
    positions = np.arange(48)
    blocked = positions[None, :] > positions[:, None] if later else positions[None, :] < positions[:, None]
    np.testing.assert_allclose(out.numpy(), np.where(blocked, 0.0, np.exp(scores)), rtol=1e-6)


@pytest.mark.parametrize("pieces", [(256, 256, 256), (64, 32, 160)])
def test_pieces_side_by_side_whole_vectors_wide_are_read_as_vectors(dev, pieces):
    """A concatenation along the last axis of pieces whose widths are whole vectors (attention's q, k and v
    gradients, heads merged: W7's input gradient of its q, k, v product): each lane's guard holds where the first
    lane's does, and each piece's lanes are consecutive once the guard's clamp is looked through, so every piece is
    read as vectors (before: guarded lane by lane, all gathered, the kernel stayed scalar)."""
    heads = [data(2, width // 16, 8, 16) for width in pieces]
    scales = (0.5, 1, 2)
    out = zyx.cat([dev.tensor(h).permute(0, 2, 1, 3).reshape(2, 8, w) * s
                   for h, w, s in zip(heads, pieces, scales)], -1)
    kernel, = kernels_of(out)
    assert is_vector(kernel) and kernel.source.count("vload16(") == 3 and "in0[" not in kernel.source
    want = np.concatenate([h.transpose(0, 2, 1, 3).reshape(2, 8, w) * s for h, w, s in zip(heads, pieces, scales)], -1)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_values_are_the_lanes_of_gpu_kernels(gpu, dtype):
    """A GPU's half-precision elementwise kernel takes float4 lanes (vectorize's `narrow`): values read as vectors
    of 16-bit words, computed in float, rounded as a single value is, a column's value broadcast into the lanes
    (W7's bf16 kernels moved one 2-byte element an item: the logits' gradient 2.80 -> 1.35 ms on an H100). A
    CPU's stay scalar. Results as the CPU reference's, bit for bit."""
    a, row, column = data(64, 96), data(96), data(64, 1)
    half = getattr(zyx, dtype)

    def compute(device):
        x, r, c = (device.tensor(v).cast(half).realize() for v in (a, row, column))
        return ((x * 1.5 + r).exp() - c * x).cast(half)

    kernel, = schedule([compute(zyx.CPU()).node], gpu.traits)[0]
    assert "float4 " in kernel.source
    if dtype == "float16":
        assert "vload_half4(" in kernel.source
    else:  # four elements as two 32-bit words: vload4 would promise NVIDIA 2-byte alignment only
        assert "zyx_bf16_lanes_4(((__global const uint2*)" in kernel.source
        assert "(__global uint2*)out" in kernel.source and "zyx_pack_bf16(" in kernel.source
    cpu_kernel, = schedule([compute(zyx.CPU()).node], CPU_TRAITS)[0]
    assert "float16 " not in cpu_kernel.source
    got, want = (compute(device).numpy().astype(np.float32) for device in (gpu, zyx.CPU()))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_gpu_items_reducing_their_own_rows_read_16_bytes_a_load(gpu, dtype):
    """A GPU item summing its own bfloat16 row (attention's backward row sums of dO·O, the output's rows read
    through a permuted view) walks it in vector lanes of 16 bytes, read as 32-bit words and combined at the end
    (two bytes a load ran at 470 GB/s on an H100); a column sum, whose items read neighbouring elements, keeps one
    element a load, as float16 and float32 rows do (NVIDIA splits their vector loads). Values as the CPU
    reference's."""
    o, do = data(2, 16, 3, 64), data(2, 3, 16, 64)
    kind = getattr(zyx, dtype)

    def stored(device, values):
        return device.tensor(values).cast(kind).realize()

    def row_sums(device):
        return (stored(device, o).permute(0, 2, 1, 3) * stored(device, do)).sum(-1)

    def column_sums(device):
        return stored(device, o).reshape(-1, 64).sum(0)

    kernel, = schedule([row_sums(zyx.CPU()).node], gpu.traits)[0]
    assert kernel.global_size == 2 * 3 * 16
    if dtype == "bfloat16":
        assert "float8 acc" in kernel.source and "zyx_bf16_lanes_8(((__global const uint4*)in" in kernel.source
    else:
        assert re.search(r"float\d+ acc", kernel.source) is None
    column, = schedule([column_sums(zyx.CPU()).node], gpu.traits)[0]
    assert re.search(r"float\d+ acc", column.source) is None
    tolerance = 1e-5 if dtype == "float32" else 1e-2
    for compute in (row_sums, column_sums):
        got, want = (compute(device).numpy().astype(np.float32) for device in (gpu, zyx.CPU()))
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance * 8)


@pytest.mark.parametrize("reduce", ["max", "sum_exp", "log_softmax"])
def test_gpu_work_groups_reducing_bfloat16_rows_read_words(gpu, reduce):
    """A work group reducing a long bfloat16 row (W7's logits: their row statistics, the cross-entropy's
    log-softmax) walks it in vector lanes read as 32-bit words (two bytes a load ran at 1.4 TB/s on an H100): 16
    bytes a load as a plain reduction, the device's float4 lanes as a row kernel. Rows shorter than
    NARROW_GROUP_ROW (a layer norm's 768: three values an item) stay element by element. Values as the CPU
    reference's."""
    logits = data(8, NARROW_GROUP_ROW + 808)
    forms = {"max": lambda t: t.float().max(-1), "sum_exp": lambda t: t.float().exp().sum(-1),
             "log_softmax": lambda t: t.float().log_softmax(-1)}

    def compute(device):
        return forms[reduce](device.tensor(logits).cast(zyx.bfloat16).realize())

    kernel, = schedule([compute(zyx.CPU()).node], gpu.traits)[0]
    assert kernel.local_size and re.search(r"zyx_bf16_lanes_[48]\(\(\(__global const uint[24]\*\)in", kernel.source)
    short = forms[reduce](zyx.CPU().tensor(data(8, 768)).cast(zyx.bfloat16).realize())
    assert "zyx_bf16_lanes" not in schedule([short.node], gpu.traits)[0][0].source
    got, want = (compute(device).numpy() for device in (gpu, zyx.CPU()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_guard_every_lane_passes_selects_the_value(dev):
    """fold(unfold(x)) with padding, GPU-shaped (float4 lanes): a select whose guard every lane of a vector passes
    is its value, not a select on an empty condition (`(()?v:0)`, which no compiler builds)."""
    import torch
    options = dict(kernel_size=4, padding=(0, 1), stride=(3, 1))
    a = data(2, 1, 4, 4)
    build = lambda lib, t: lib.nn.functional.fold(lib.nn.functional.unfold(t, **options), (4, 4), **options)
    kernels, _ = schedule([build(zyx, zyx.CPU().tensor(a)).node], DeviceTraits(True, 256, 4))
    assert all("(()?" not in kernel.source for kernel in kernels)
    assert any(re.search(r"\bfloat4 ", kernel.source) for kernel in kernels)
    expected = build(torch, torch.tensor(a)).numpy()
    np.testing.assert_allclose(build(zyx, dev.tensor(a)).numpy(), expected, rtol=1e-6, atol=1e-6)
