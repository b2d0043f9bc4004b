"""CPU matrix products (zyx/jit/cpu_matmul.py): which products get the vector kernel, and their results."""
import math
import re

import numpy as np
import pytest

import zyx
from zyx.jit import cpu_matmul
from zyx.jit.choices import TunedChoices
from zyx.jit.device_traits import DeviceTraits
from zyx.jit.schedule import SMALL_WORK, schedule
from zyx.trace.ops import Op

RNG = np.random.default_rng(11)


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def cpu_kernels(*tensors):
    """Names of the kernels a CPU device would run for the tensors (m_...: the vector product kernel)."""
    kernels, _ = schedule([t.node for t in tensors], DeviceTraits(gpu=False))
    return [k.name for k in kernels]


def vector_products(*tensors):
    return sum(name.startswith("m_") for name in cpu_kernels(*tensors))


def close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.sqrt(want.size ** 0.5))


@pytest.mark.parametrize("n,k,m", [(64, 64, 64), (96, 80, 64), (97, 101, 48), (30, 1000, 32), (257, 13, 160),
                                   (512, 96, 10)])
def test_square_and_odd_sizes(dev, n, k, m):
    a, b = data(n, k), data(k, m)
    out = dev.tensor(a) @ dev.tensor(b)
    assert vector_products(out) == 1
    close(out.numpy(), a @ b)


@pytest.mark.parametrize("n,k,m", [(97, 100, 1000), (130, 70, 100), (111, 67, 41), (1021, 64, 50)])
def test_tiles_hanging_over_the_edges(dev, n, k, m):
    a, b, bias = data(n, k), data(k, m), data(m)
    out = (dev.tensor(a) @ dev.tensor(b) + dev.tensor(bias)).relu()
    assert vector_products(out) == 1
    close(out.numpy(), np.maximum(a @ b + bias, 0))


@pytest.mark.parametrize("n,k,m", [(8, 8, 16), (33, 70, 17)])
def test_other_products_take_the_plain_path(dev, n, k, m):
    a, b = data(n, k), data(k, m)
    out = dev.tensor(a) @ dev.tensor(b)
    assert vector_products(out) == 0
    close(out.numpy(), a @ b)


@pytest.mark.parametrize("dtype,ulp,n,k,m,epilogue", [
    ("float16", 2.0**-11, 64, 80, 48, False), ("float16", 2.0**-11, 33, 70, 17, True),  # (under MIN_MACS)
    ("bfloat16", 2.0**-8, 64, 80, 64, False), ("bfloat16", 2.0**-8, 97, 70, 41, True)])
def test_half_precision_products_read_float32_copies_and_round_once(dev, dtype, ulp, n, k, m, epilogue):
    """A float16 product of any size, a bfloat16 one from MIN_MACS, takes the vector kernel: both operands
    converted once, into float32 panels, then the float32 kernel, its results rounded to the dtype (stored
    whole, or through the epilogue). On the plain path PoCL took 14 s to compile the 64 x 80 x 48 float16 one."""
    a, b, bias = data(n, k), data(k, m), data(m)
    out = dev.tensor(a).to(dtype) @ dev.tensor(b).to(dtype)
    if epilogue:
        out = (out + dev.tensor(bias).to(dtype)).relu()
    kernels, _ = schedule([out.node], DeviceTraits(gpu=False))
    assert [kernel.name[0] for kernel in kernels] == ["e", "e", "m"]
    product = kernels[-1].source.split("__kernel", 1)[1]  # (the helpers above it round through half's bits)
    assert "(__global const float* restrict in0, __global const float* restrict in1," in product
    assert "vload_half(" not in product, product
    reference = zyx.CPU()  # the same ops on the reference device, rounded where it rounds them
    want = reference.tensor(a).to(dtype) @ reference.tensor(b).to(dtype)
    if epilogue:
        want = (want + reference.tensor(bias).to(dtype)).relu()
    got, want = (t.float().numpy().astype(np.float64) for t in (out, want))
    # a sum order of its own may land the float32 sum on the other side of a rounding boundary: one unit apart
    assert np.all(np.abs(got - want) <= 2 * ulp * np.abs(want)), np.abs(got - want).max()


def test_a_small_bfloat16_product_takes_the_plain_path(dev):
    """Under MIN_MACS a bfloat16 product stays in one kernel (its conversions are shifts: cheap to compile)."""
    a, b = data(37, 32), data(32, 37)
    out = dev.tensor(a).to("bfloat16") @ dev.tensor(b).to("bfloat16")
    assert vector_products(out) == 0
    want = zyx.CPU().tensor(a).to("bfloat16") @ zyx.CPU().tensor(b).to("bfloat16")
    got, want = (t.float().numpy().astype(np.float64) for t in (out, want))
    assert np.all(np.abs(got - want) <= 2.0**-7 * np.abs(want)), np.abs(got - want).max()


def test_int_products_take_the_plain_path(dev):
    a, b = RNG.integers(-5, 5, (64, 64)).astype(np.int32), RNG.integers(-5, 5, (64, 64)).astype(np.int32)
    out = dev.tensor(a) @ dev.tensor(b)
    assert vector_products(out) == 0
    np.testing.assert_array_equal(out.numpy(), a @ b)


def test_transposed_operands(dev):
    a, b, c, d = data(80, 96), data(128, 80), data(80, 48), data(32, 128)
    x, y = dev.tensor(a), dev.tensor(b)
    for out, want in [(x.T @ y.T, a.T @ b.T), (x.T @ dev.tensor(c), a.T @ c), (dev.tensor(d) @ y, d @ b)]:
        assert vector_products(out) == 1
        close(out.numpy(), want)


def test_batched_and_broadcast_batch(dev):
    a, b, c = data(3, 40, 72), data(3, 72, 48), data(72, 48)
    d = data(2, 1, 40, 72)
    for out, want in [(dev.tensor(a) @ dev.tensor(b), a @ b), (dev.tensor(a) @ dev.tensor(c), a @ c),
                      (dev.tensor(d) @ dev.tensor(b), d @ b)]:
        assert vector_products(out) == 1
        close(out.numpy(), want)


def test_linear_bias_relu_fuse_into_the_product(dev):
    x, w, b = data(64, 100), data(96, 100), data(96)
    out = (dev.tensor(x) @ dev.tensor(w).T + dev.tensor(b)).relu()
    assert len(cpu_kernels(out)) == 2 and vector_products(out) == 1  # the weight's copy, then everything else
    close(out.numpy(), np.maximum(x @ w.T + b, 0))


def test_elementwise_operands_are_computed_once_in_their_copies(dev):
    x, w = data(64, 100), data(96, 100)
    out = (dev.tensor(x).exp() * 0.5) @ (dev.tensor(w).T * 2 + 1).tanh()
    assert len(cpu_kernels(out)) == 3 and vector_products(out) == 1
    close(out.numpy(), (np.exp(x) * 0.5) @ np.tanh(w.T * 2 + 1))


def test_gradients_through_products(dev):
    x, w, b = data(128, 96), data(64, 96), data(64)
    tx, tw, tb = dev.tensor(x), dev.tensor(w), dev.tensor(b)
    loss = ((tx @ tw.T + tb).relu() * dev.tensor(np.linspace(-1, 1, 64, dtype=np.float32))).sum()
    gx, gw, gb = loss.backward([tx, tw, tb])
    assert vector_products(gx, gw, gb) >= 2  # dx = dy @ w and dw = dy.T @ x
    dy = (x @ w.T + b > 0) * np.linspace(-1, 1, 64, dtype=np.float32)
    close(gx.numpy(), dy @ w)
    close(gw.numpy(), dy.T @ x)
    close(gb.numpy(), dy.sum(0))


def test_chosen_on_the_cpu_device(dev):
    if dev.traits.gpu:
        pytest.skip("the vector product kernel is for CPUs")
    a, b = data(64, 64), data(64, 64)
    zyx.reset_stats()
    out = (dev.tensor(a) @ dev.tensor(b)).realize()
    assert zyx.stats()["kernels_launched"] == 1  # small contiguous operands are read in place
    program = next(p for p in dev.programs.values() if any(l.name.startswith("m_") for l in p.launches))
    assert "vload16" in next(l.source for l in program.launches if l.name.startswith("m_"))
    close(out.numpy(), a @ b)


def product_source(*tensors):
    """The source of the vector product kernel a CPU device would run for the tensors."""
    kernels, _ = schedule([t.node for t in tensors], DeviceTraits(gpu=False))
    return next(k.source for k in kernels if k.name.startswith("m_"))


@pytest.mark.parametrize("n,k,m", [(64, 64, 64), (512, 96, 16), (8, 400, 96)])
def test_a_product_stored_as_it_is_stores_each_accumulator_whole(dev, n, k, m):
    a, b = data(n, k), data(k, m)
    out = dev.tensor(a) @ dev.tensor(b)
    source = product_source(out)
    accumulators = source.count("float16 acc")
    assert source.count("vstore16(acc") == accumulators and ".s0;" not in source  # no lane stored alone
    close(out.numpy(), a @ b)


@pytest.mark.parametrize("make", [
    lambda a, b, bias: a @ b + bias,  # an epilogue: computed on whole accumulators
    lambda a, b, bias: (a @ b + bias).gelu() * a[:, :1],  # erf and a broadcast row value, as vectors
    lambda a, b, bias: a[:97] @ b + bias,  # 97 rows: the last tile's rows are guarded, a vector at a time
])
def test_epilogues_run_on_whole_accumulators(dev, make):
    """The epilogue is lowered once per accumulator for one lane and vectorized (`lower_cpu_matmul`): one vector
    statement per 16 outputs, where lane by lane PoCL called erf and exp once per output (W7's GELU backward)."""
    a, b, bias = data(104, 64), data(64, 64), data(64)
    out = make(dev.tensor(a), dev.tensor(b), dev.tensor(bias))
    source = product_source(out)
    assert "vstore16(" in source and ".s0;" not in source and "] = v" not in source  # no lane stored alone
    if "gelu" in str(make.__code__.co_names):
        assert "float16 v" in source and "zyx_erf(v" in source
    want = make(a, b, bias) if "gelu" not in str(make.__code__.co_names) else None
    if want is None:
        h = a @ b + bias
        want = 0.5 * h * (1 + np.vectorize(math.erf)(h / np.sqrt(2))) * a[:, :1]
    close(out.numpy(), want)


@pytest.mark.parametrize("later", [True, False])
def test_a_causal_mask_in_an_epilogue_with_guarded_rows_runs_on_whole_accumulators(dev, later):
    """A causal mask (`keys > query` of two aranges) in a product's epilogue, in tiles whose last rows are past the
    end (97 queries: guarded): the keys' arange is read under the row's guard, 0 in every lane where it fails, and
    the mask is still one vector compare (W7's causal softmax gradient, 3.3 ms a layer lane by lane on PoCL)."""
    q, k = data(2, 97, 64), data(2, 112, 64)

    def masked(device):
        rows = zyx.arange(97, device=device).reshape(-1, 1)
        keys = zyx.arange(112, device=device).reshape(1, -1)
        blocked = keys > rows if later else keys < rows
        return blocked.where(float("-inf"), device.tensor(q) @ device.tensor(k).transpose(-1, -2)).exp()

    out = masked(dev)
    for traits in (DeviceTraits(gpu=False, native_width=8, multiply_add_latency=5, vector_width=16), AVX2):
        kernels, _ = product_site(masked(zyx.CPU()), traits)
        product = next(kernel.source for kernel in kernels if kernel.name.startswith("m_"))
        assert "long16" not in product and ".s1;" not in product and "exp(v" in product
    positions = np.arange(112)
    blocked = positions[None, :] > np.arange(97)[:, None] if later else positions[None, :] < np.arange(97)[:, None]
    close(out.numpy(), np.where(blocked, 0.0, np.exp(q @ k.transpose(0, 2, 1))))


def test_an_epilogue_whose_lanes_are_guarded_apart_stores_lane_by_lane(dev):
    """Where an accumulator's lanes are not all outputs (40 columns: those past the end of a row are guarded),
    the epilogue is computed lane by lane, as before (each lane extracted where its output is stored)."""
    a, b = data(104, 64), data(64, 64)
    make = lambda a, b: a @ b[:, :40] * 2  # noqa: E731
    out = make(dev.tensor(a), dev.tensor(b))
    kernels, _ = schedule([out.node], DeviceTraits(gpu=False))
    products = [k.source for k in kernels if k.name.startswith("m_")]
    assert products and ".s0;" in products[-1]
    close(out.numpy(), make(a, b))


def test_large_or_strided_right_operands_are_packed(dev):
    a, b = data(64, 1024), data(1024, 640)
    x, y = dev.tensor(a), dev.tensor(b)
    assert len(cpu_kernels(x @ y)) == 2  # larger than IN_PLACE_BYTES: copied into panels first
    assert len(cpu_kernels(x[:, :96] @ y[:96, ::2])) == 2  # strided along the columns
    assert len(cpu_kernels(x[:, :96] @ y[:96, :])) == 1
    close((x @ y).numpy(), a @ b)


AVX2, AVX512 = DeviceTraits(gpu=False, native_width=8), DeviceTraits(gpu=False, native_width=16)


def test_a_right_operands_panel_copy_moves_whole_vectors_along_the_source_rows(dev):
    """A right operand copied into 16-column panels: each item takes COPY_STEPS steps of k of a panel as vector
    loads and stores, consecutive items consecutive panels (the source's rows read in order; walking down a panel
    a step an item read a line per row a page apart: 1.27 against 0.69 ms for [2048, 1024] on PoCL). A transposed
    source, whose panel's values lie apart, is copied as before, one value at a time (no gathers)."""
    a, b = data(64, 1024), data(1024, 640)
    x, y = dev.tensor(a), dev.tensor(b)
    traits = DeviceTraits(gpu=False, native_width=8, vector_width=16)
    for product, vectors in ((x @ y, True), (x @ dev.tensor(b.T.copy()).T, False)):
        kernels, _ = schedule([product.node], traits)
        copy, = [k.source for k in kernels if not k.name.startswith("m_")]
        assert copy.count("vload16(") == (cpu_matmul.COPY_STEPS if vectors else 0)
        if vectors:  # (640 columns: 40 panels, the fastest index)
            assert "(gid%40)" in copy and copy.count("vstore16(") == cpu_matmul.COPY_STEPS
        close(product.numpy(), a @ b)


def product_site(out, traits):
    kernels, _ = schedule([out.node], traits)
    (site,) = [k.site for k in kernels if k.site is not None and k.site.heuristic.family == "cpu_matmul"]
    return kernels, site


def test_the_right_operand_is_read_in_place_below_the_devices_limit_and_a_search_may_choose(dev):
    """A 96 x 640 right operand (240 KiB) is read in place where the registers are AVX-512's, copied into panels
    where they are AVX2's (a cache line and a page per row: slower there); a search tries both."""
    a, b = data(64, 96), data(96, 640)
    x, y = dev.tensor(a), dev.tensor(b)
    for traits, packed in ((AVX512, 0), (AVX2, 1)):
        kernels, site = product_site(x @ y, traits)
        assert len(kernels) == 1 + packed and site.heuristic["packed"] == packed
        assert dict(site.options)["packed"] == (0, 1)
        other = site.heuristic.replaced(packed=1 - packed)
        forced, _ = schedule([(x @ y).node], traits, TunedChoices({site.key: other}))
        assert len(forced) == 2 - packed
    _, strided = product_site(x @ y[:, ::2], AVX512)
    assert dict(strided.options)["packed"] == (1,)  # strided along the columns: it cannot be read in place
    close((x @ y).numpy(), a @ b)


def test_work_items_sweep_the_columns_over_a_band_of_rows_that_stays_in_cache(dev, monkeypatch):
    """A left operand larger than ROW_BAND_BYTES is taken a band of rows at a time: the items walk down the band's
    rows, then along the columns, then to the next band (its rows are read again from cache, not memory)."""
    a, b = data(96, 80), data(80, 48)
    x, y = dev.tensor(a), dev.tensor(b)
    product = lambda: [k for k in schedule([(x @ y * 3).node], AVX2)[0] if k.name.startswith("m_")][0]
    assert "(gid%24)" in product().source  # 24 row tiles of 4, in one band
    monkeypatch.setattr(cpu_matmul, "ROW_BAND_BYTES", 8 * 4 * 80 * 4)  # bands of 8 row tiles
    assert "(gid%8)" in product().source and "(gid/24)" in product().source
    dev.forget_programs()
    close((x @ y * 3).numpy(), a @ b * 3)


def test_an_epilogue_reads_after_the_loop_and_stores_each_accumulator_where_it_is_computed(dev):
    """With an epilogue (SGD's update of the weights by the product), nothing is loaded before the product's loop
    and each accumulator's outputs are stored where they are computed: no value stays live across the loop, nor
    every output at once after it (a 6 x 16 AVX2 tile, 12 of 16 registers in accumulators, then spilled one)."""
    a, b, w = data(96, 64), data(64, 64), data(96, 64)
    out = dev.tensor(w) - 0.01 * (dev.tensor(a) @ dev.tensor(b))
    _, site = product_site(out, AVX2)
    six = site.heuristic.replaced(rows=6, width=16)
    forced, _ = schedule([out.node], AVX2, TunedChoices({site.key: six}))
    source = next(k.source for k in forced if k.name.startswith("m_"))
    assert "vload16" in source and "acc" in source
    loop = source.index("for (")
    assert re.search(r"= (in\d+\[|vload16)", source[:loop]) is None  # nothing loaded before the loop
    after = source[source.index("}", loop):]
    assert after.count("vstore16(") == 6 and after.index("vstore16(") < after.rindex("vload16(")  # one by one
    close(out.numpy(), w - 0.01 * (a @ b))


@pytest.mark.parametrize("n,k", [(256, 256), (97, 131)])
def test_a_computed_left_operand_is_stored_as_it_is_and_read_in_place(dev, n, k):
    """A float32 left operand that computes (exp(S) of attention's P @ V, a GELU's gradient) is stored as it is by
    a kernel of its own, whose items PoCL vectorizes, and the product reads its rows in place: copied into panels
    of rows, each item's outputs interleaved, a GELU gradient took 29 ms a call in W7 at the CPU size (2M values,
    PoCL 3.1, Zen 2), a tenth of torch's whole step. Ragged rows (97) read the last one again."""
    a, b = data(n, k), data(k, 640)
    out = dev.tensor(a).exp() @ dev.tensor(b)
    for traits in (AVX2, AVX512):
        kernels, site = product_site(out, traits)
        stored = kernels[0].outputs[0]
        assert stored.op is not Op.PERMUTE and stored.numel == n * k  # (not panels)
    close(out.numpy(), np.exp(a) @ b)


@pytest.mark.parametrize("n,k", [(256, 256), (64, 96)])
def test_a_half_precision_left_operands_copy_takes_several_steps_of_k_per_item_unless_it_is_small(dev, n, k):
    """A half-precision left operand is copied into float32 panels of its rows (4 on AVX2, 8 on AVX-512), each
    work item copying its block of rows over several steps of k: COPY_OUTPUTS values an item, not one step's few
    rows. A copy of fewer than SMALL_WORK values takes one step's block an item: PoCL spent 2.2 s optimizing 64
    copies of W5's softmax gradient (a 10 x 512 operand), which a step computes in microseconds."""
    a, b = data(n, k), data(k, 640)
    out = (dev.tensor(a).to("float16") * 2) @ dev.tensor(b).to("float16")
    for traits, rows in ((AVX2, 4), (AVX512, 8)):
        kernels, site = product_site(out, traits)
        left_copy = kernels[0]  # (the left operand's copy comes first, then the right one's)
        per_item = rows if n * k < SMALL_WORK else cpu_matmul.COPY_OUTPUTS
        assert left_copy.global_size * per_item == n * k
    want = (zyx.CPU().tensor(a).to("float16") * 2) @ zyx.CPU().tensor(b).to("float16")
    np.testing.assert_allclose(out.float().numpy(), want.float().numpy(), rtol=2e-2, atol=5e-2)


def assert_left_copied_a_block_an_item(out):
    """The left operand's copy of a 256-row product takes one block of rows (AVX2: 4, AVX-512: 8) an item."""
    for traits, rows in ((AVX2, 4), (AVX512, 8)):
        kernels, _ = product_site(out, traits)
        assert kernels[0].global_size * rows == 256 * 256


def test_a_copy_of_a_costly_expression_takes_one_block_an_item(dev):
    """A left operand computed in float16 (each load converted, each result rounded: over COPY_STATEMENTS
    statements an output) is copied one block of rows an item, however large: 64 outputs an item of such an
    expression took PoCL 18 s to compile in char_gpt's float16 step."""
    a, b = data(256, 256) / 4, data(256, 640)
    x = dev.tensor(a).to("float16")
    out = ((x * x + x).exp() * x - x).tanh() @ dev.tensor(b).to("float16")
    assert_left_copied_a_block_an_item(out)
    reference = zyx.CPU().tensor(a).to("float16")
    want = ((reference * reference + reference).exp() * reference - reference).tanh() @ zyx.CPU().tensor(b).to(
        "float16")
    np.testing.assert_allclose(out.float().numpy(), want.float().numpy(), rtol=2e-2, atol=5e-2)


def test_a_left_operand_reading_through_a_guard_is_stored_as_it_is(dev):
    """A left operand read from a padded input (a convolution's windows) computes its guards: it is stored as it
    is, one element an item, and read in place (copied into panels, 64 outputs an item of a 3 x 3 convolution's
    windows took PoCL 0.7-1.2 s to compile)."""
    a, b = data(256, 254), data(256, 640)
    out = dev.tensor(a).pad(((0, 0), (1, 1))) @ dev.tensor(b)
    for traits in (AVX2, AVX512):
        kernels, _ = product_site(out, traits)
        assert kernels[0].outputs[0].op is not Op.PERMUTE and kernels[0].outputs[0].numel == 256 * 256
    close(out.numpy(), np.pad(a, ((0, 0), (1, 1))) @ b)


@pytest.mark.parametrize("n,k,m,tiled", [(32, 4, 16, False), (64, 32, 16, False), (64, 64, 64, True),
                                         (256, 64, 128, True)])
def test_a_kernel_of_little_work_is_untiled_and_not_unrolled(dev, n, k, m, tiled):
    """Under SMALL_WORK multiply-adds a CPU kernel is one output per item, its reduction not unrolled (PoCL spent
    23 s optimizing a 32 x 16 x 4 half product in an 8 x 16 tile); larger products keep the register tile (whose
    values other tests check: compiling it here would cost that time again)."""
    a, b = data(n, k), data(k, m)
    out = dev.tensor(a).cast(zyx.float64) @ dev.tensor(b).cast(zyx.float64)  # (float64: the plain path's; half
    # products take the vector kernel now)
    kernels, _ = schedule([out.node], DeviceTraits(vector_width=16))
    applied = dict(kernels[-1].site.applied.values)
    assert (n * k * m < SMALL_WORK) != tiled
    assert (applied["tile_n"] * applied["tile_m"] > 1, applied["unroll"] > 1) == (tiled, tiled), applied
    if not tiled:
        np.testing.assert_allclose(out.numpy(), a.astype(np.float64) @ b, rtol=1e-12)


def test_where_multiply_adds_take_five_cycles_avx2_tiles_take_five_rows(dev, monkeypatch):
    """Zen 2 (cpu_target.SLOW_MULTIPLY_ADD): ten accumulators keep its two 5-cycle pipes busy, so AVX2 tiles are
    5 x 16 once a product has 16 tiles of rows or more, the left operand read in place where it views memory (97
    rows: 20 tiles, the last reading row 96 again for its four rows past the end, whose outputs are guarded); fewer
    rows keep a tile that divides them. The 5-row kernel, forced on this device whatever its CPU, computes the
    product."""
    zen2 = DeviceTraits(gpu=False, native_width=8, multiply_add_latency=5)
    assert cpu_matmul.default_tile(1024, 1024, 8, 5) == (5, 16) and cpu_matmul.default_tile(1024, 1024, 8) == (4, 16)
    assert cpu_matmul.default_tile(48, 64, 8, 5) == (4, 16) and cpu_matmul.default_tile(1024, 1024, 16, 5) == (8, 32)
    a, b = data(97, 131), data(131, 80)
    out = dev.tensor(a) @ dev.tensor(b) + 1
    kernels, site = product_site(out, zen2)
    assert (site.heuristic["rows"], site.heuristic["width"]) == (5, 16)
    assert [k.global_size for k in kernels] == [20 * 5]  # no copy of the left operand
    assert "select(96," in kernels[0].source  # (its row index clamped to the last row)
    _, own = product_site(out, dev.traits)
    monkeypatch.setattr(dev, "_tuned", TunedChoices({own.key: own.heuristic.replaced(rows=5, width=16)}))
    dev.forget_programs()
    close((dev.tensor(a) @ dev.tensor(b) + 1).numpy(), a @ b + 1)
    dev.forget_programs()


def test_where_multiply_adds_take_five_cycles_a_computed_left_operand_keeps_a_tile_dividing_its_rows(dev):
    """A left operand that must be copied into panels (half precision, converted to float32) is not padded to
    5-row panels where 4 rows divide it: exp(S) for attention's P @ V so took 3-7 times a 4-row copy's time on a
    Zen 2. Read in place, or with no divisor over half of five (97 rows), the tile keeps five rows."""
    assert cpu_matmul.default_tile(256, 64, 8, 5, overhang_cheap=False) == (4, 16)
    assert cpu_matmul.default_tile(256, 64, 8, 5) == (5, 16)
    assert cpu_matmul.default_tile(97, 64, 8, 5, overhang_cheap=False) == (5, 16)
    zen2 = DeviceTraits(gpu=False, native_width=8, multiply_add_latency=5)
    s, v = data(2, 256, 96), data(2, 96, 64)
    _, site = product_site(dev.tensor(s).to("float16").exp() @ dev.tensor(v).to("float16"), zen2)
    assert site.heuristic["rows"] == 4  # (half precision: copied into float32 panels)
    _, site = product_site(dev.tensor(s).exp() @ dev.tensor(v), zen2)
    assert site.heuristic["rows"] == 5  # (float32: stored as it is, read in place)


def test_a_packed_copys_padding_is_computed_from_the_last_row_then_zeroed(dev, monkeypatch):
    """The zero padding of a packed operand's panels (a half-precision left in float32 panels, a right one's
    columns) is only read by tiles hanging over its end, whose outputs are not stored: its values are computed at
    the last row (the index clamped) and zeroed by a select, so the copy's loads are unguarded (PoCL vectorizes
    a block's steps of k: exp(S) in 5-row panels for P @ V took 14 ms with guarded loads, 4-8 ms so). Forced
    5-row tiles on a 97-row half-precision operand: the product against the CPU reference."""
    a, b = data(97, 131) / 4, data(131, 80)
    x, y = dev.tensor(a).to("float16"), dev.tensor(b).to("float16")
    out = (x * 2) @ y
    zen2 = DeviceTraits(gpu=False, native_width=8, multiply_add_latency=5)
    kernels, site = product_site(out, zen2)
    assert site.heuristic["rows"] == 5
    copy = kernels[0].source
    assert "select(96," in copy and not re.search(r"\?in\d+\[", copy)  # (no load under a condition)
    _, own = product_site(out, dev.traits)
    monkeypatch.setattr(dev, "_tuned", TunedChoices({own.key: own.heuristic.replaced(rows=5, width=16)}))
    dev.forget_programs()
    want = (zyx.CPU().tensor(a).to("float16") * 2) @ zyx.CPU().tensor(b).to("float16")
    np.testing.assert_allclose(((x * 2) @ y).float().numpy(), want.float().numpy(), rtol=2e-2, atol=5e-2)
    dev.forget_programs()


def test_a_band_of_rows_is_a_wider_divisor_where_none_comes_within_half_of_the_budget():
    """410 tiles of 5 rows x 2048 (40 KiB each; 25 fit ROW_BAND_BYTES) have no divisor in 13..25: bands of 41, not
    all 410 at once (97 against 80 GFLOP per CPU-second on a Zen 2); past twice the budget, all of them."""
    tile = 5 * 2048 * 4
    assert cpu_matmul.row_band(410, tile) == 41
    assert cpu_matmul.row_band(106, tile) == 106  # 2 x 53: 53 is past 50
    assert cpu_matmul.row_band(512, 4 * 2048 * 4) == 32 and cpu_matmul.row_band(20, tile) == 20


def accumulators_read_after_the_loop(source: str) -> bool:
    """Whether a product kernel's epilogue (after its k-loop) reads its accumulators."""
    loop = source.index("for (int k")
    after = source[source.index("\n  }\n", loop):]
    return re.search(r"\bacc\d+\b", after) is not None


def test_a_product_computed_beside_the_hosted_one_gets_a_tiled_kernel_of_its_own(dev):
    """Two products at a kernel's outputs (attention's dS: dP = dO·Vᵀ times P, which recomputes the scores Q·Kᵀ):
    the kernel hosts one and reads the other, which a tiled kernel stores, rather than computing it as a scalar
    loop per output, its operand gathered lane by lane (W7's dS kernel at the CPU size: 10.8 ms a layer, 4.9
    so)."""
    q, k, o, v = data(256, 64) * 0.25, data(256, 64) * 0.25, data(256, 64), data(256, 64)
    out = (dev.tensor(o) @ dev.tensor(v).T) * (dev.tensor(q) @ dev.tensor(k).T).exp()
    kernels, _ = schedule([out.node], DeviceTraits(gpu=False))
    products = [kernel.source for kernel in kernels if kernel.name.startswith("m_")]
    assert len(products) == 2
    assert all(source.count("for (int") == 1 and accumulators_read_after_the_loop(source) for source in products)
    close(out.numpy(), (o @ v.T) * np.exp(q @ k.T))


def test_a_product_another_kernel_stores_is_read_not_computed_again(dev):
    """GELU's backward in an MLP's gradient reads the pre-activation x·W₁ᵀ, which its own kernel stores (the
    forward reads it too): no kernel walks that product in its loop and then reads it from memory, nor tiles its
    outputs as that product's (scalar, as a plain kernel); every product kernel uses what it computes, and no
    reduction computes GELU's derivative again."""
    x, w1, w2, b1 = data(512, 64), data(256, 64) * 0.1, data(64, 256) * 0.1, data(256) * 0.1
    tx, tw1, tw2, tb1 = dev.tensor(x), dev.tensor(w1), dev.tensor(w2), dev.tensor(b1)
    y = (tx @ tw1.T + tb1).gelu() @ tw2.T
    grads = (y * y).mean().backward([tw1, tw2, tx, tb1])
    kernels, _ = schedule([g.node for g in grads], DeviceTraits(gpu=False, native_width=8, multiply_add_latency=5))
    products = [kernel.source for kernel in kernels if kernel.name.startswith("m_")]
    assert products and all(accumulators_read_after_the_loop(source) for source in products)
    plain = [kernel.source for kernel in kernels if not kernel.name.startswith("m_")]
    assert not any("for (int k" in source for source in plain)  # (no product walked untiled)
    # GELU's backward, whose two terms both read dY·W₂ᵀ, is stored by that product's epilogue (`_meeting_point`):
    # the bias gradient's column sums read it, not its derivative's exp and erf computed again
    assert not any("exp(" in kernel.source for kernel in kernels if kernel.name.startswith("r_"))
    h = x @ w1.T + b1
    cdf = 0.5 * (1 + np.vectorize(math.erf)(h / np.sqrt(2)))
    dy = 2 * ((h * cdf) @ w2.T) / (512 * 64)
    dh = (dy @ w2) * (cdf + h * np.exp(-h * h / 2) / np.sqrt(2 * np.pi))
    close(grads[1].numpy(), dy.T @ (h * cdf))
    close(grads[0].numpy(), dh.T @ x)
    close(grads[3].numpy(), dh.sum(axis=0))


@pytest.mark.parametrize("width,swapped", [(1024, True), (256, False)])
def test_a_left_operand_a_page_apart_along_k_swaps_the_operands(dev, width, swapped):
    """A weight gradient dYᵀ·X whose dY is 1024 wide (each step of k a new page of it) takes X as its left
    operand and dY packed into column panels as its right (`_read_swapped`); its outputs are then stored lane by
    lane. A 256-wide dY keeps the order. Either way the left operand, which lies across k in memory, is read from
    its packed copy: a tile's rows side by side at each step of k."""
    a, x = data(512, width), data(512, 64)
    out = dev.tensor(a).T @ dev.tensor(x)
    kernels, _ = product_site(out, AVX2)
    source = next(kernel.source for kernel in kernels if kernel.name.startswith("m_"))
    rows = len(set(re.findall(r"float16 (acc\d+) =", source)))
    assert set(re.findall(r"k1\*(\d+)\)?\]", source)) == {str(rows)}
    assert (".s1;" in source) == swapped  # (an accumulator's lanes stored one by one)
    close(out.numpy(), a.T @ x)
