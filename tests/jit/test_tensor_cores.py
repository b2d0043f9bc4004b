"""Tensor-core products (jit/tensor_cores.py): which products the scheduler puts on tensor cores (on any machine,
from traits), and what they compute (on an NVIDIA GPU of compute capability 8.0 or newer, the only devices that run
the PTX they print), against numpy on the same rounded operands."""
from __future__ import annotations

from typing import Optional

import ml_dtypes
import numpy as np
import pytest

import zyx
from zyx.jit.device_traits import WGMMA, DeviceTraits
from zyx.jit.schedule import schedule
from zyx.jit.device_traits import tensor_core_kinds

TENSOR_CORES = DeviceTraits(gpu=True, vector_width=4, local_memory=49152, tensor_cores=("bf16", "f16"))
NUMPY = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def kernels_of(out, traits=TENSOR_CORES):
    return schedule([out.node], traits)[0]


def on_tensor_cores(kernel) -> bool:
    """By warps (mma.sync), or on Hopper by warpgroups (wgmma: test_wgmma.py)."""
    return "mma.sync" in kernel.source or "wgmma.mma_async" in kernel.source


@pytest.mark.parametrize("dtype, kind", [("bfloat16", "bf16"), ("float16", "f16")])
def test_half_products_are_planned_on_tensor_cores_in_blocks_of_eight_warps(dtype, kind):
    dev = zyx.CPU()
    x, y = dev.randn(200, 100).to(dtype), dev.randn(100, 300).to(dtype)
    product, = [k for k in kernels_of(x @ y) if on_tensor_cores(k)]
    assert f"m16n8k16.row.col.f32.{kind}.{kind}.f32" in product.source
    # 48 KiB of local memory: warps of 64 x 32 outputs, 64-byte slices of each row, double-buffered; per mma step a
    # warp loads 4 left fragments and 4 right ones in 6 ldmatrix, in the pipelined loop and after it
    assert product.source.count("ldmatrix.sync.aligned.m8n8.x4.shared.b16") == 6 * 2
    assert product.local_size == 256 and product.global_size == 256 * 2 * 3  # 128 x 128 blocks over 200 x 300
    roomy = DeviceTraits(gpu=True, vector_width=4, local_memory=65536, tensor_cores=("bf16", "f16"))
    product, = [k for k in kernels_of(x @ y, roomy) if on_tensor_cores(k)]
    assert product.global_size == 256 * 2 * 3  # 128 x 256 blocks would be 4 groups on a GPU, these 6
    # (casts fused into the product: a randn drawn in it would be stored first, read by 16 blocks of columns)
    x, y = dev.randn(2048, 100).realize().to(dtype), dev.randn(100, 2048).realize().to(dtype)
    product, = [k for k in kernels_of(x @ y, roomy) if on_tensor_cores(k)]
    assert product.global_size == 256 * 16 * 8  # 128 x 256 blocks: warps of 64 x 64
    assert "__local ushort tile_a1[10240]" in product.source  # two buffers of 128 and 256 rows of 40 halves
    assert "__local ushort tile_b2[20480]" in product.source


def test_operands_in_buffers_are_staged_sixteen_bytes_at_a_time_in_the_layout_their_memory_has(monkeypatch):
    """Through registers (the cp.async pipeline off: tests/jit/test_tensor_core_pipeline.py has it on), a stored
    half-precision operand whose 8 neighbours along k (or along the right operand's columns) lie one after another
    is copied as one 16-byte vector: the left operand along k, a right one along k when transposed (`x @ w.T`), else
    along its columns into a [k][column] tile read by ldmatrix.trans; other operands (strided, edges clamped, fused
    prologues) element by element."""
    monkeypatch.setenv("ZYX_TC_PIPELINE", "0")
    dev = zyx.CPU()
    x, y, w = (dev.randn(*shape).to("bfloat16").realize() for shape in ((256, 128), (128, 256), (256, 128)))

    def staged(out):
        source, = [k.source for k in kernels_of(out) if on_tensor_cores(k)]
        return source.count("as_short8("), ".trans" in source

    assert staged(x @ y) == (8, True)  # 2 + 2 vectors per item, in the pipelined loop and before it
    assert staged(x @ w.T) == (8, False)
    assert staged(y.T @ w.T) == (4, False)  # the left operand strided along k: element by element
    # k = 100: the left operand's last 8 along k would straddle its end (element by element), the right operand's
    # rows of k past it are zeros (guarded copies)
    assert staged(x[:, :100] @ y[:100]) == (4, True)
    # elements 2-6 of each 8 reordered by a view (0, 1 and 7 in place): not one vector (found in review)
    shuffled = x.reshape(256, 16, 2, 2, 2).permute(0, 1, 3, 2, 4).reshape(256, 128)
    assert staged(shuffled @ y) == (4, True)


def test_float32_products_use_tensor_cores_only_where_tf32_is_allowed():
    dev = zyx.CPU()
    x, y = dev.randn(64, 64), dev.randn(64, 64)
    assert not any(on_tensor_cores(k) for k in kernels_of(x @ y))
    tf32 = DeviceTraits(gpu=True, vector_width=4, local_memory=49152, tensor_cores=("bf16", "f16", "tf32"))
    product, = [k for k in kernels_of(x @ y, tf32) if on_tensor_cores(k)]
    assert "m16n8k8.row.col.f32.tf32.tf32.f32" in product.source


def test_products_of_mixed_dtypes_vectors_or_without_tensor_cores_keep_the_float_kernels():
    dev = zyx.CPU()
    half, brain = dev.randn(64, 64).to("float16"), dev.randn(64, 64).to("bfloat16")
    assert not any(on_tensor_cores(k) for k in kernels_of(half @ brain))  # promoted to float32
    assert not any(on_tensor_cores(k) for k in kernels_of(brain[:1] @ brain))  # one row: a vector
    no_cores = DeviceTraits(gpu=True, vector_width=4, local_memory=49152)
    assert not any(on_tensor_cores(k) for k in kernels_of(brain @ brain, no_cores))


def test_kernels_reading_a_product_another_kernel_stores_are_elementwise_not_shaped_as_products():
    """A product read by two ops is stored by its kernel; the readers compute none of it, so each is an elementwise
    kernel, a float4 of bf16 outputs an item (shaped as the product, each item would write out its 128 outputs one
    by one: W7's bfloat16 step had 10 MB of such OpenCL C)."""
    dev = zyx.CPU()
    x, y = dev.randn(256, 128).to("bfloat16"), dev.randn(128, 256).to("bfloat16")
    product = x @ y
    kernels = schedule([(product * 2 + 1).node, product.exp().node], TENSOR_CORES)[0]
    assert sum(on_tensor_cores(k) for k in kernels) == 1
    readers = [k for k in kernels if not on_tensor_cores(k) and k.global_size == 256 * 256 // 4]  # 4 outputs an item
    assert len(readers) == 2 and all(k.site.applied.family == "plain" and k.local_size is None for k in readers)


def test_tensor_core_kinds_follow_the_compute_capability(monkeypatch):
    assert tensor_core_kinds((9, 0)) == ("bf16", "f16", "wgmma")  # Hopper: warpgroup products too
    assert tensor_core_kinds((8, 0)) == ("bf16", "f16") == tensor_core_kinds((12, 0))
    assert tensor_core_kinds((7, 5)) == () == tensor_core_kinds(None)
    monkeypatch.setenv("ZYX_WGMMA", "0")
    assert tensor_core_kinds((9, 0)) == ("bf16", "f16")
    monkeypatch.setenv("ZYX_TENSOR_CORES", "0")
    assert tensor_core_kinds((9, 0)) == ()


# ---- on a GPU with tensor cores (conftest's `cores`) -------------------------------------------------------------
def rounded(rng, shape, dtype):
    return rng.standard_normal(shape, dtype=np.float32).astype(NUMPY[dtype])


def check(result, expected, dtype, k):
    """Products of rounded operands accumulated in float32, then rounded to `dtype` (8 or 11 significant bits)."""
    got = result.astype(np.float32)
    eps = 2.0 ** (-8 if dtype == "bfloat16" else -11)
    scale = np.sqrt(k)
    np.testing.assert_allclose(got, expected, rtol=2 * eps, atol=2 * eps * scale)


SHAPES = [(128, 128, 128), (200, 100, 300), (1021, 333, 515), (16, 24, 130), (3000, 700, 500), (256, 512, 384)]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("n, k, m", SHAPES)
def test_products_on_tensor_cores_match_numpy(cores, dtype, n, k, m):
    rng = np.random.default_rng(n + k + m)
    a, b = rounded(rng, (n, k), dtype), rounded(rng, (k, m), dtype)
    out = cores.tensor(a) @ cores.tensor(b)
    assert any(on_tensor_cores(kernel) for kernel in kernels_of(out, cores.traits))
    check(out.numpy(), a.astype(np.float64) @ b.astype(np.float64), dtype, k)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_batched_transposed_and_fused_products_on_tensor_cores(cores, dtype):
    rng = np.random.default_rng(7)
    a, b = rounded(rng, (3, 70, 90), dtype), rounded(rng, (3, 130, 90), dtype)
    bias = rng.standard_normal(130, dtype=np.float32)
    x, y = cores.tensor(a), cores.tensor(b)
    out = ((x @ y.transpose(-1, -2)).float() + cores.tensor(bias)).relu()
    expected = np.maximum(a.astype(np.float64) @ b.astype(np.float64).transpose(0, 2, 1) + bias, 0)
    check(out.numpy(), expected, dtype, 90)
    left = cores.tensor(rounded(rng, (90, 70), dtype))  # a transposed left operand
    out = left.T @ cores.tensor(b[0].T.copy())
    check(out.numpy(), left.numpy().astype(np.float64).T @ b[0].T.astype(np.float64), dtype, 90)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_products_staged_sixteen_bytes_at_a_time_on_tensor_cores_match_numpy(cores, dtype):
    rng = np.random.default_rng(11)
    a, b, w = rounded(rng, (2, 256, 128), dtype), rounded(rng, (2, 128, 384), dtype), rounded(rng, (384, 128), dtype)
    x, y, t = cores.tensor(a), cores.tensor(b), cores.tensor(w)
    a64, b64, w64 = (v.astype(np.float64) for v in (a, b, w))
    check((x @ y).numpy(), a64 @ b64, dtype, 128)  # left along k, right across
    check((x @ t.T).numpy(), a64 @ w64.T, dtype, 128)  # both along k
    check((y.transpose(-1, -2) @ t.T[None]).numpy(), b64.transpose(0, 2, 1) @ w64.T, dtype, 128)  # left strided


@pytest.mark.parametrize("pipeline", ["1", "0"])
def test_products_with_edges_staged_sixteen_bytes_at_a_time_on_tensor_cores_match_numpy(cores, monkeypatch, pipeline):
    """Rows, columns and k multiples of 8 but not of the blocks: stored operands are still copied 16 bytes at a time
    (by cp.async, or through registers with ZYX_TC_PIPELINE=0), the slice past the end of k as zeros; a computed
    operand goes through registers, in the pipeline's stages where the other is copied by cp.async."""
    monkeypatch.setenv("ZYX_TC_PIPELINE", pipeline)
    cores.forget_programs()  # (programs held in memory were scheduled under the other setting)
    rng = np.random.default_rng(13)
    a, b, w = (rounded(rng, shape, "bfloat16") for shape in ((200, 136), (136, 264), (264, 136)))
    x, y, t = cores.tensor(a), cores.tensor(b), cores.tensor(w)
    a64, b64, w64 = (v.astype(np.float64) for v in (a, b, w))
    for out, expected in ((x @ y, a64 @ b64), (x @ t.T, a64 @ w64.T), ((x * 2) @ y, (a64 * 2) @ b64)):
        source, = [k.source for k in kernels_of(out, cores.traits) if on_tensor_cores(k)]
        copied_by = "cp.async.cg" if pipeline == "1" else "as_short8("
        assert copied_by in source and ("cp.async" in source) == (pipeline == "1")
        check(out.numpy(), expected, "bfloat16", 136)
    cores.forget_programs()


def test_an_autocast_training_step_on_tensor_cores_matches_the_reference_device(cores):
    rng = np.random.default_rng(3)
    values = {name: rng.standard_normal(shape, dtype=np.float32) * 0.1
              for name, shape in (("x", (256, 192)), ("w1", (192, 160)), ("w2", (160, 10)))}

    def grads(dev):
        x, w1, w2 = (dev.tensor(values[name]) for name in ("x", "w1", "w2"))
        with zyx.autocast(zyx.bfloat16):
            loss = ((x @ w1).relu() @ w2).float().square().mean()
        return [g.numpy() for g in loss.backward([w1, w2])]

    for got, expected in zip(grads(cores), grads(zyx.CPU())):
        np.testing.assert_allclose(got, expected, rtol=2e-2, atol=2e-2 * np.abs(expected).max())


def test_a_work_group_keeps_the_partial_sums_of_a_half_precision_product_in_float32(gpu):
    """A product with one output row is a work group's reduction: its items' partial sums go through local memory,
    declared float32 (half-precision storage rounded them; ushort storage lost them: the gradient of a 10-wide
    layer under autocast came out zero)."""
    rng = np.random.default_rng(5)
    a, b = rounded(rng, (1, 256), "bfloat16"), rounded(rng, (256, 160), "bfloat16")
    out = gpu.tensor(a) @ gpu.tensor(b)
    assert any("__local float" in k.source for k in kernels_of(out, gpu.traits))
    check(out.numpy(), a.astype(np.float64) @ b.astype(np.float64), "bfloat16", 256)


@pytest.fixture
def tf32_allowed():
    zyx.set_float32_matmul_precision("high")
    yield
    zyx.set_float32_matmul_precision("highest")


def test_the_float32_product_precision_takes_pytorchs_names_and_refuses_others():
    assert zyx.get_float32_matmul_precision() == "highest"
    with pytest.raises(ValueError, match="highest, high, medium.*'fast'"):
        zyx.set_float32_matmul_precision("fast")


def test_a_device_with_tensor_cores_schedules_float32_products_in_tf32_only_while_allowed(dev, monkeypatch):
    monkeypatch.setattr(dev, "traits", TENSOR_CORES)
    assert "tf32" not in dev._shaping_traits().tensor_cores
    zyx.set_float32_matmul_precision("medium")
    try:
        assert "tf32" in dev._shaping_traits().tensor_cores
    finally:
        zyx.set_float32_matmul_precision("highest")


def test_a_jitted_step_traces_again_when_the_precision_changes(dev, tf32_allowed):
    x = dev.tensor(np.ones((4, 4), np.float32))
    traced = []

    @zyx.jit
    def step(a):
        traced.append(1)
        return a @ a

    step(x)
    zyx.set_float32_matmul_precision("highest")
    np.testing.assert_allclose(step(x).numpy(), np.full((4, 4), 4.0))
    assert len(traced) == 2


@pytest.mark.parametrize("n, k, m", [(256, 256, 256), (1021, 333, 515)])
def test_tf32_products_on_tensor_cores_match_numpy_to_tf32_precision(cores, tf32_allowed, n, k, m):
    rng = np.random.default_rng(n)
    a, b = rng.standard_normal((n, k), dtype=np.float32), rng.standard_normal((k, m), dtype=np.float32)
    out = cores.tensor(a) @ cores.tensor(b)
    assert any("tf32" in kernel.source for kernel in kernels_of(out, cores._shaping_traits()))
    expected = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(out.numpy(), expected, atol=2.0 ** -8 * np.sqrt(k))  # 10 bits kept, rounded


FORMS = {"a@b": lambda x, y: x @ y, "a@b.T": lambda x, y: x @ y.T, "a.T@b": lambda x, y: x.T @ y,
         "a.T@b.T": lambda x, y: x.T @ y.T}


def _operands(rng, n: int, k: int, m: int, form: str, dtype: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
    """a, b as `form` stores them (a.T: a stored (k, n); b.T: b stored (m, k)), float32 or rounded to `dtype`."""
    a_shape, b_shape = (k, n) if form.startswith("a.T") else (n, k), (m, k) if form.endswith("b.T") else (k, m)
    if dtype is None:
        return rng.standard_normal(a_shape, dtype=np.float32), rng.standard_normal(b_shape, dtype=np.float32)
    return rounded(rng, a_shape, dtype), rounded(rng, b_shape, dtype)


@pytest.mark.parametrize("form", list(FORMS))
def test_tf32_products_of_every_form_with_rows_off_16_byte_boundaries_match_numpy(cores, tf32_allowed, form):
    """Rows of 777 floats, copied 4 bytes at a time, edges in every direction, 256 blocks of 128 x 256: on an H100 the
    persistent form of a @ b.T and a.T @ b.T came out wrong at this shape (bench/GPU.md, session 47; TF32 now takes
    a group a block): the form it has now, against numpy."""
    rng = np.random.default_rng(47)
    a, b = _operands(rng, 2000, 777, 4000, form)
    out = FORMS[form](cores.tensor(a), cores.tensor(b))
    expected = FORMS[form](a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(out.numpy(), expected, atol=2.0 ** -8 * np.sqrt(777))


@pytest.mark.parametrize("form", list(FORMS))
def test_16_bit_products_with_more_blocks_than_sms_match_numpy(cores, form):
    """2000 x 768 x 4000 in bf16: 256 blocks of 128 x 256, rows on 16-byte boundaries, edges in both directions of
    the outputs: on Hopper persistent groups (a divisor of the blocks up to the SMs, each taking its blocks in turn)."""
    rng = np.random.default_rng(48)
    a, b = _operands(rng, 2000, 768, 4000, form, "bfloat16")
    out = FORMS[form](cores.tensor(a), cores.tensor(b))
    check(out.numpy(), FORMS[form](a.astype(np.float64), b.astype(np.float64)), "bfloat16", 768)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("form", list(FORMS))
def test_blocks_fitted_to_the_sms_match_numpy(cores, form, dtype):
    """768 x 3072 outputs (a GPT-2 MLP's weight gradient, k tokens): on Hopper's 132 SMs 96 blocks of 128 x 192
    (m64n192) in one wave, where 128 x 256 left SMs idle and 128 x 128 took two waves; every form."""
    rng = np.random.default_rng(49)
    a, b = _operands(rng, 768, 2048, 3072, form, dtype)
    out = FORMS[form](cores.tensor(a), cores.tensor(b))
    if WGMMA in cores.traits.tensor_cores and cores.traits.compute_units >= 96:
        kernel, = [k for k in schedule([out.node], cores._shaping_traits())[0] if "mma" in k.source]
        assert "m64n192k16" in kernel.source
    check(out.numpy(), FORMS[form](a.astype(np.float64), b.astype(np.float64)), dtype, 2048)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("form", list(FORMS))
def test_products_of_few_blocks_split_along_k_match_numpy(cores, form, dtype, monkeypatch):
    """768 x 768 outputs over 8192 (GPT-2's attention-projection weight gradient at half its tokens): 36 blocks of
    128 x 128 on Hopper's 132 SMs, so k is split into float32 partials (split.py) summed by a second kernel, then
    rounded once; every form, against numpy on the rounded operands."""
    rng = np.random.default_rng(50)
    a, b = _operands(rng, 768, 8192, 768, form, dtype)
    out = FORMS[form](cores.tensor(a), cores.tensor(b))
    if WGMMA in cores.traits.tensor_cores and cores.traits.compute_units >= 72:
        kernels = schedule([out.node], cores._shaping_traits())[0]
        assert len(kernels) == 2 and kernels[0].outputs[0].dtype.name == "float32"
    check(out.numpy(), FORMS[form](a.astype(np.float64), b.astype(np.float64)), dtype, 8192)


def test_a_nan_stays_nan_through_tf32_rounding(cores, tf32_allowed):
    """Rounding to TF32 adds to the bits: NVIDIA's nan (0x7fffffff) carried into -0.0 before isnan was asked."""
    a = np.ones((64, 64), np.float32)
    a[3, 5] = np.nan
    x = cores.tensor(a)
    out = ((x * 0 + x) @ cores.tensor(np.ones((64, 64), np.float32))).numpy()  # a nan the device computed too
    assert np.isnan(out[3]).all() and not np.isnan(np.delete(out, 3, axis=0)).any()


def test_a_cross_entropy_over_half_logits_computes_their_product_once_and_stores_no_float32_copy():
    """GPT-2's head under bf16 autocast: cross_entropy(logits.float()) with the logits' gradient wanted. The product
    is stored once, in bf16; the row statistics and the picked target logits read it and cast it as they go, and
    the gradient's kernel reads it too (it computed the 16384 x 768 x 50304 product a second time while a float32
    copy of the logits, 3.3 GB, was stored for the row max and the pick)."""
    dev = zyx.CPU()
    n, d, v = 256, 128, 20000  # rows longer than a row kernel takes (rows.ROW_LIMIT), as GPT-2's 50 304 are
    x, w = dev.randn(n, d).to("bfloat16"), dev.randn(v, d).to("bfloat16")
    logits = x @ w.T
    loss = zyx.nn.functional.cross_entropy(logits.float(), dev.tensor(np.arange(n) * 71 % v))
    gradient, = loss.backward([logits])
    kernels = schedule([loss.node, gradient.node], TENSOR_CORES)[0]
    assert sum(on_tensor_cores(k) for k in kernels) == 1
    stored = [node for k in kernels for node in k.outputs if node.numel == n * v]
    assert sorted(node.dtype.name for node in stored) == ["bfloat16", "bfloat16"]  # the logits and their gradient
