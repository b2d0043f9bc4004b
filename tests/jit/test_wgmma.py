"""Warpgroup products (wgmma, compute capability 9.x: jit/wgmma.py, tensor_cores.py, ptx_patch.py): the descriptor
and accumulator encodings the H200 measured (bench/wgmma_probe), the layout the lowering's cp.async copies make
against the one the descriptors describe, the printed PTX, the patch, and which products take warpgroups. Where
clang's NVPTX back end and ptxas are installed, the printed kernels are assembled for sm_90a."""
from __future__ import annotations

import dataclasses
import itertools
import re
import shutil
import subprocess

import numpy as np
import pytest

import zyx
from zyx.errors import KernelBuildError
from zyx.jit import wgmma
from zyx.jit.compiler import build_binary, build_source
from zyx.dtypes import float32
from zyx.jit.choices import Choice, TunedChoices
from zyx.jit.kernel_ir import (AsyncCommit, AsyncCopy, AsyncProxyFence, AsyncWait, BulkCommit, BulkStore, BulkWait, If,
                               LocalLoad, LocalRoundTF32, LocalStore, Loop, NamedBarrier, Reg, WarpgroupCommit,
                               WarpgroupFence, WarpgroupMma, WarpgroupWait, WarpShuffle, substitute, walk)
from zyx.jit.print_opencl import STATEMENTS, swizzle_bits
from zyx.jit.ptx_patch import HIDDEN, hides_ptx, patch
from zyx.jit.device_traits import DeviceTraits
from zyx.jit.schedule import schedule
from zyx.jit.symbolic import Expr
from zyx.jit.tune import candidates
from zyx.trace.ops import Op
from zyx.jit.tensor_cores import (WGMMA, feasible_on_tensor_cores, plan_tensor_cores, tensor_core_options,
                                  warpgroup_probe_source, warpgroups_build)

from test_attention_cores import _emulated_shuffle  # (shfl.sync through local memory)

HOPPER = DeviceTraits(gpu=True, vector_width=4, local_memory=49152, tensor_cores=("bf16", "f16", WGMMA),
                      tensor_core_memory=200 * 1024)
WARPS_ONLY = dataclasses.replace(HOPPER, tensor_cores=("bf16", "f16"))
TF32 = dataclasses.replace(HOPPER, tensor_cores=(*HOPPER.tensor_cores, "tf32"))  # TF32 allowed (the scheduler adds it)


def operands(*shapes, dtype="bfloat16"):
    dev, rng = zyx.CPU(), np.random.default_rng(0)
    return [dev.tensor(rng.standard_normal(shape, dtype=np.float32)).to(dtype).realize() for shape in shapes]


def product_kernel(out, traits=HOPPER):
    kernel, = [k for k in schedule([out.node], traits)[0] if "mma" in k.source]
    return kernel


def tile_accumulators(kernel) -> int:
    """The accumulators an item holds for one m64 tile of rows (its first wgmma's)."""
    return len(next(s for s in walk(kernel.ir.body) if isinstance(s, WarpgroupMma)).acc)


# ---- encodings -----------------------------------------------------------------------------------------------------
def test_the_descriptor_packs_start_leading_and_stride_offsets_and_the_128_byte_swizzle():
    # the probe's constant for K-major 128-byte swizzled tiles (LBO 16, SBO 1024), which read exactly on the H200
    assert wgmma.descriptor(0, 16, 1024) == 1 << 62 | (1024 >> 4) << 32 | 1 << 16
    assert wgmma.descriptor(0x12340, 8192, 1024) & 0x3FFF == 0x1234  # start >> 4, 14 bits
    assert (wgmma.descriptor(0, 8192, 1024) >> 16) & 0x3FFF == 512  # MN-major atoms 8 KiB apart
    assert wgmma.descriptor(1 << 18, 16, 1024) & 0x3FFF == 0  # beyond the shared window's 18 bits


def test_the_accumulators_of_a_warpgroup_cover_its_64_rows_once_in_the_measured_map():
    for n in (8, 128, 256):
        places = [wgmma.accumulator_position(t, r) for t in range(128) for r in range(n // 2)]
        assert sorted(places) == [(m, c) for m in range(64) for c in range(n)]
    # the probe's ACCMAP (H200): thread 0 registers 0-3 at (0,0) (0,1) (8,0) (8,1); thread 33 (warp 1, lane 1)
    # register 5 (j=1, i=1) at row 16 + 0, column 8 + 2 + 1
    assert [wgmma.accumulator_position(0, r) for r in range(4)] == [(0, 0), (0, 1), (8, 0), (8, 1)]
    assert wgmma.accumulator_position(33, 5) == (16, 11)


def _k_major_byte(row: int, k: int) -> int:
    """Where wgmma reads element (row, k) of a K-major 128-byte swizzled tile: byte address bits 4-6 XORed with
    bits 7-9 (CUTLASS's Swizzle<3,4,3>), rows of 128 bytes."""
    address = row * 128 + 2 * k
    return address ^ (((address >> 7) & 7) << 4)


def test_the_printed_swizzle_of_64_element_rows_is_wgmmas_128_byte_swizzle():
    shift, mask = swizzle_bits(wgmma.ROW)
    for row, k in itertools.product(range(16), range(64)):
        index = row * 64 + k
        assert 2 * (index ^ (((index >> shift) & mask) << 3)) == _k_major_byte(row, k)


# ---- the lowering --------------------------------------------------------------------------------------------------
def _copied_bytes(kernel, array: str, gid: int = 0) -> dict[int, int]:
    """Byte offset in slice 0 of `array` -> element of the source buffer, of the copies of slice 0: the producer
    warpgroup's (items 256-383, its loop at step 0)."""
    placed = {}
    loop = next(s for s in walk(kernel.ir.body) if isinstance(s, Loop) and any(isinstance(c, AsyncCopy) for c in s.body))
    values = {"lid": np.arange(256, 384), "gid": gid, loop.var: 0}
    for copy in (s for s in loop.body if isinstance(s, AsyncCopy) and s.array == array):
        index, source = (np.broadcast_to(_evaluated(e, values), (128,)) for e in (copy.index, copy.source))
        shift, mask = swizzle_bits(copy.swizzle)
        for e in range(copy.width):
            at = index + e
            placed.update(zip((2 * (at ^ (((at >> shift) & mask) << 3))).tolist(), (source + e).tolist()))
    return placed


def _evaluated(expr: Expr, values: dict) -> np.ndarray:
    """`expr` at the points `values` gives its variables (integers or arrays of them): its printed text evaluated
    with numpy, where C's `/` and `%` are `//` and `%` (indices are never negative)."""
    return eval(expr.render().replace("/", "//"), {"min": np.minimum}, values)


def test_a_left_operand_across_k_is_copied_by_warps_reading_whole_sectors_and_writing_distinct_banks():
    """x.T @ y in TF32: the left operand's floats along k lie a row of x apart, so they are copied 4 bytes at a time
    (cp.async takes no gather): each warp's copy takes 8 neighbouring rows at 4 k, reading 4 whole 32-byte sectors
    (not 32 sectors for 32 k of one row) and writing 32 distinct banks of the swizzled tile; an item's k stays the
    same from copy to copy (its swizzled place computed once: the producer's registers are few)."""
    t, y = operands((1024, 512), (1024, 512), dtype="float32")
    kernel = product_kernel(t.T @ y, TF32)
    left = next(s for s in walk(kernel.ir.body) if isinstance(s, WarpgroupMma)).b_array
    loop = next(s for s in walk(kernel.ir.body) if isinstance(s, Loop) and any(isinstance(c, AsyncCopy)
                                                                                 for c in s.body))
    copies = [s for s in loop.body if isinstance(s, AsyncCopy) and s.array == left]
    assert copies and all(c.width == 1 and c.itemsize == 4 for c in copies)
    values = {"gid": 0, loop.var: 0}
    shift, mask = swizzle_bits(2 * copies[0].swizzle)  # (the pattern in 16-bit elements: 64 of them to a row)
    for warp in range(4):
        values["lid"] = np.arange(256 + 32 * warp, 256 + 32 * (warp + 1))  # a producer warp
        for copy in copies:
            source, index = (np.broadcast_to(_evaluated(e, values), (32,)) for e in (copy.source, copy.index))
            assert len(set((source * 4 // 32).tolist())) == 4 and len(set(source.tolist())) == 32
            halves = 2 * index
            assert len(set((halves ^ (((halves >> shift) & mask) << 3)) // 2 % 32)) == 32  # banks
        # k (rows of 32 floats) per copy: one per consumer item the producer item copies for (2: 256 consumers)
        assert len({tuple(_evaluated(copy.index, values) % 32) for copy in copies}) == 2


def _tile_byte(line: int, k: int, across: bool, leading: int) -> int:
    """Where a descriptor reads element (line, k) of a tile (line: a row of the left tile, a column of the right):
    K-major, or across k (MN-major) in atoms of 64 lines x 64 k ([k][64 lines]) `leading` bytes apart."""
    return line // 64 * leading + _k_major_byte(k, line % 64) if across else _k_major_byte(line, k)


@pytest.mark.parametrize("form", ["x @ y", "x @ y.T", "x.T @ y", "x.T @ y.T"])
def test_the_copies_lay_both_operands_out_as_the_descriptors_read_them(form):
    """Each tile as its wgmmas' descriptors and transpose immediates read it: along k where its operand's rows run
    along k (x, y.T), across k (MN-major) where they run along its rows or columns (x.T, y)."""
    size = 512
    left_across, right_across = form.startswith("x.T"), not form.endswith("y.T")
    x, y = operands((size, size), (size, size))
    kernel = product_kernel((x.T if left_across else x) @ (y if right_across else y.T))
    products = [s for s in walk(kernel.ir.body) if isinstance(s, WarpgroupMma)]
    first = products[0]
    assert first.n == 128 and len(first.acc) == 64  # 128 x 128 blocks
    assert (first.a_mn_major, first.b_mn_major) == (left_across, right_across)
    assert (first.a_leading, first.b_leading) == tuple(64 * 128 if across else 16
                                                      for across in (left_across, right_across))
    left, right = _copied_bytes(kernel, first.a_array), _copied_bytes(kernel, first.b_array)
    # group 0 takes rows 0-127 and columns 0-127, the slice k 0-63 (x.T's element (row, k) is x's (k, row))
    for line, k in itertools.product(range(128), range(64)):
        assert left[_tile_byte(line, k, left_across, first.a_leading)] == (k * size + line if left_across
                                                                           else line * size + k)
        assert right[_tile_byte(line, k, right_across, first.b_leading)] == (k * size + line if right_across
                                                                             else line * size + k)
    # slice 0's 4 k16 steps: warpgroup 1 from row 64 (64 rows of 128 bytes on, or one atom across k), each step 32
    # bytes on along k, or 16 rows of 128 bytes across it
    loop = next(s for s in walk(kernel.ir.body) if isinstance(s, Loop) and first in s.body)
    for step, product in enumerate(products):
        values = {"lid": Expr(128), loop.var: Expr(0)}
        assert substitute(product.a_index, values).const == 64 * 64 + step * 16 * (64 if left_across else 1)
        assert substitute(product.b_index, values).const == step * 16 * (64 if right_across else 1)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_weight_gradients_operands_are_both_copied_by_cp_async_and_its_a_read_transposed(dtype):
    """x.T @ y (x, y stored [tokens, features]: the left operand runs along its rows, not along k) on Hopper: both
    operands copied 16 bytes at a time by the producer warpgroup, nothing staged through registers, every wgmma's a
    MN-major (imm-trans-a 1); x.T @ y.T likewise with b K-major; the mirrored x @ w.T (b along k) was already so,
    both K-major. TF32 cannot transpose (the PTX ISA allows imm-trans for .f16/.bf16 only): its x.T @ y keeps the
    left tile along k, copied a float at a time, as its b."""
    x, y, w, z = operands((1024, 256), (1024, 512), (512, 1024), (512, 1024), dtype=dtype)
    for out, transposes in ((x.T @ y, "1, 1"), (y.T @ x, "1, 1"), (x.T @ w.T, "1, 0"), (w @ z.T, "0, 0")):
        kernel = product_kernel(out)
        assert kernel.local_size == 384 and "bar.arrive" in kernel.source  # a producer warpgroup
        assert not any(isinstance(s, LocalStore) for s in walk(kernel.ir.body))
        products = [s for s in walk(kernel.ir.body) if isinstance(s, WarpgroupMma)]
        copies = [s for s in walk(kernel.ir.body) if isinstance(s, AsyncCopy)]
        assert {c.array for c in copies} == {products[0].a_array, products[0].b_array}
        assert {(c.width, c.itemsize) for c in copies} == {(8, 2)}
        assert all(p.a_mn_major == (transposes[0] == "1") for p in products)
        kind = {"bfloat16": "bf16", "float16": "f16"}[dtype]
        assert f"m64n128k16.f32.{kind}.{kind} " in kernel.source and f"p, 1, 1, {transposes};" in kernel.source
    f, g = operands((1024, 256), (1024, 512), dtype="float32")
    products = [s for s in walk(product_kernel(f.T @ g, TF32).ir.body) if isinstance(s, WarpgroupMma)]
    assert all(p.a_registers and not p.a_mn_major and not p.b_mn_major for p in products)


def test_a_slice_is_handed_over_landed_and_fenced_and_its_batch_kept_in_flight_one_step(monkeypatch):
    """The refill-first order (ZYX_WGMMA_EARLY_HAND_OVER=0): the producer's step ends with the hand-over."""
    monkeypatch.setenv("ZYX_WGMMA_EARLY_HAND_OVER", "0")
    x, y = operands((2048, 256), (256, 2048))
    kernel = product_kernel(x @ y)  # 128 x 256 blocks, 4 stages: the producer hands slice s over at step s + 2
    assert kernel.site.heuristic == Choice.of("tensor_cores", columns=64, row_bytes=128, buffers=4, pipelined=1,
                                              warpgroup=1, split=1)
    producer, consumer = [s for s in walk(kernel.ir.body) if isinstance(s, Loop)]
    hand_over = producer.body[-1]
    assert [type(s) for s in hand_over.body] == [AsyncWait, AsyncProxyFence, NamedBarrier]
    assert hand_over.body[0] == AsyncWait(2) and not hand_over.body[2].wait
    assert isinstance(consumer.body[0], NamedBarrier) and consumer.body[0].wait
    assert [type(s) for s in consumer.body[1:-1]] == [WarpgroupFence, *[WarpgroupMma] * 4, WarpgroupCommit,
                                                      WarpgroupWait]
    assert consumer.body[-2] == WarpgroupWait(1) and [s.n for s in walk(consumer.body) if isinstance(s, WarpgroupMma)] \
        == [256] * 4
    assert "__local ushort tile_a1_raw[33280]" in kernel.source  # 4 x 128 x 64 and 1024 bytes to align
    assert "__local ushort tile_b2_raw[66048]" in kernel.source


def test_by_default_the_producer_hands_a_slice_over_before_it_refills_a_buffer():
    """The default order: each step first waits for its slice to land (one batch of copies still in flight), fences
    and hands it over, then issues the next copies; the consumers as in the other order."""
    x, y = operands((2048, 256), (256, 2048))
    producer, consumer = [s for s in walk(product_kernel(x @ y).ir.body) if isinstance(s, Loop)]
    hand_over = producer.body[0]
    assert [type(s) for s in hand_over.body] == [AsyncWait, AsyncProxyFence, NamedBarrier]
    assert hand_over.body[0] == AsyncWait(1) and not hand_over.body[2].wait
    assert isinstance(producer.body[-1], AsyncCommit)
    assert isinstance(consumer.body[0], NamedBarrier) and consumer.body[0].wait


def test_which_products_take_warpgroups():
    x, y, w = operands((512, 256), (256, 512), (512, 256))
    h, g = operands((512, 256), (256, 512), dtype="float16")
    for out in (x @ y, x @ w.T, h @ g, (x * 2) @ y, (x @ y).relu() + 1):  # a fused prologue or epilogue too
        assert "wgmma.mma_async" in product_kernel(out).source
    assert "mma.sync" in product_kernel(x @ y, WARPS_ONLY).source  # before Hopper
    narrow_x, narrow_y = operands((256, 256), (256, 256))  # (wider: computed operands are stored first)
    assert "mma.sync" in product_kernel((narrow_x * 2) @ (narrow_y + 1)).source  # neither copied by cp.async: warps
    assert "mma.sync" not in product_kernel((x * 2) @ (y + 1)).source


def test_autocast_casts_are_stored_first_so_both_operands_reach_the_producer():
    """Under autocast a float32 weight and activation are cast inside the product: on Hopper each cast is stored
    first (bf16), and the product copies both by cp.async, handed over by a producer warpgroup; a narrow product
    (under 512 outputs along each operand's broadcast) keeps its casts in its staging."""
    dev, rng = zyx.CPU(), np.random.default_rng(0)
    x, w = (dev.tensor(rng.standard_normal(shape, dtype=np.float32)).realize() for shape in ((1024, 256), (768, 256)))
    with zyx.autocast("bfloat16"):
        out = zyx.nn.functional.linear(x, w)
    kernels = schedule([out.node], HOPPER)[0]
    product, = [k for k in kernels if "mma" in k.source]
    assert product.local_size == 384 and "bar.arrive" in product.source and "cp.async" in product.source
    assert len(kernels) == 3 and all("ushort" in k.source for k in kernels)  # two casts stored, then the product
    with zyx.autocast("bfloat16"):
        narrow = zyx.nn.functional.linear(x[:256], w[:256])
    kernels = schedule([narrow.node], HOPPER)[0]
    assert len(kernels) == 1 and "float* restrict in0" in kernels[0].source.replace("const ", "")


def test_an_autocast_linears_weight_gradient_reaches_the_producer_with_a_transposed_a():
    """The backward of a bfloat16-autocast linear layer: its weight gradient (dyᵀ·x, both stored [tokens, features]:
    the left operand runs along its rows) copies both operands by cp.async, handed over by a producer warpgroup,
    its a read transposed; nothing is staged through registers (it was, element by element, in 256 items)."""
    dev, rng = zyx.CPU(), np.random.default_rng(0)
    x, w = (dev.tensor(rng.standard_normal(shape, dtype=np.float32)).realize() for shape in ((2048, 768), (3072, 768)))
    with zyx.autocast("bfloat16"):
        loss = (zyx.nn.functional.linear(x, w).cast("float32") ** 2).mean()
    weight_gradient, = loss.backward([w])
    *forward, kernel = [k for k in schedule([weight_gradient.node], HOPPER)[0] if "mma" in k.source]  # (dy's, then)
    products = [s for s in walk(kernel.ir.body) if isinstance(s, WarpgroupMma)]
    assert kernel.local_size == 384 and all(p.a_mn_major for p in products)
    assert not any(isinstance(s, LocalStore) for s in walk(kernel.ir.body))


def test_which_float32_products_take_tf32_warpgroups():
    """Where TF32 is allowed (the scheduler then adds "tf32" to the device's kinds) every float32 product with an
    operand copied by cp.async takes warpgroups, computed transposed (the right operand from registers); the rest
    take warps (m16n8k8); without TF32, no tensor cores; before Hopper, warps."""
    x, y, w = operands((512, 256), (256, 512), (512, 256), dtype="float32")
    b, c = operands((4, 256, 128), (4, 128, 256), dtype="float32")
    for out in (x @ y, x @ w.T, (x @ y).relu() + 1, x.T.T @ y, (x * 2) @ y, x @ (y + 1), w.T @ y.T, b @ c):
        source = product_kernel(out, TF32).source
        assert "wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32" in source and "mma.sync" not in source
    assert "mma.sync.aligned.m16n8k8" in product_kernel((x * 2) @ (y + 1), TF32).source  # nothing copied
    assert not any("mma" in k.source for k in schedule([(x @ y).node], HOPPER)[0])  # TF32 not allowed: float32
    warps = dataclasses.replace(WARPS_ONLY, tensor_cores=("bf16", "f16", "tf32"))
    assert "mma.sync.aligned.m16n8k8" in product_kernel(x @ y, warps).source


def test_tf32_takes_128_by_256_blocks_its_consumers_taking_the_producers_registers():
    x, y = operands((2048, 256), (256, 2048), dtype="float32")
    kernel = product_kernel(x @ y, TF32)
    assert kernel.site.heuristic["columns"] == 64 and "setmaxnreg.inc.sync.aligned.u32 232" in kernel.source
    assert kernel.source.count("wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32") == 8  # 2 pieces x 4 k8 steps
    assert "wgmma.wait_group.sync.aligned 1;" in kernel.source  # a batch in flight


def _producer_and_consumers(kernel) -> tuple[tuple, tuple]:
    """The bodies of a warp-role kernel's producer (items 256-383) and consumers."""
    producer, consumers = [s for s in kernel.ir.body if isinstance(s, If)]
    assert producer.cond[0][1] == "ge" and consumers.cond[0][1] == "lt"
    return producer.body, consumers.body


@pytest.mark.parametrize("form", ["x @ y", "x @ w.T", "x.T @ y"])
def test_the_producer_rounds_each_landed_slice_of_the_left_tile_in_place_before_its_fence(form):
    """cuBLAS rounds both TF32 operands to nearest; wgmma would truncate the left tile it reads through its
    descriptor: once a slice has landed (cp.async.wait_group) the producer rounds each of its copies into that tile
    (the same elements, one vector access each way where the copy is 16 bytes), then fences (fence.proxy.async)
    and hands the slice over; the right tile (read into registers, rounded there) is left as it is."""
    x, y, w, t = operands((512, 256), (256, 512), (512, 256), (256, 512), dtype="float32")
    out = {"x @ y": lambda: x @ y, "x @ w.T": lambda: x @ w.T, "x.T @ y": lambda: t.T @ y}[form]()
    kernel = product_kernel(out, TF32)
    producer, consumers = _producer_and_consumers(kernel)
    product = next(s for s in walk(consumers) if isinstance(s, WarpgroupMma))
    loop = next(s for s in producer if isinstance(s, Loop))
    copies = [s for s in walk(loop.body) if isinstance(s, AsyncCopy) and s.array == product.b_array]
    landed = next(s for s in loop.body if isinstance(s, If) and isinstance(s.body[0], AsyncWait)).body
    rounds = [s for s in landed if isinstance(s, LocalRoundTF32)]
    assert isinstance(landed[-2], AsyncProxyFence) and isinstance(landed[-1], NamedBarrier)
    assert landed[1:-2] == tuple(rounds) and len(rounds) == len(copies)
    assert all(r.array == product.b_array and r.width == c.width and r.swizzle == c.swizzle
               for r, c in zip(rounds, copies))
    assert {r.width for r in rounds} == ({1} if form == "x.T @ y" else {4})
    after = producer[producer.index(loop) + 1:]
    assert isinstance(after[0], AsyncWait) and after[0].pending == 0
    assert sum(isinstance(s, LocalRoundTF32) for s in after) == len(rounds) * 2  # the last 2 slices (4 stages)
    source = kernel.source[kernel.source.index("__kernel"):]  # (after the helpers)
    if form != "x.T @ y":
        assert "float4 v = *p; *p = (float4)(zyx_round_tf32(v.s0),zyx_round_tf32(v.s1)" in source
    landed_wait = source.index("cp.async.wait_group 1;")  # (the slice handed over before the refill: 1 in flight)
    assert landed_wait < source.index("zyx_round_tf32(") < source.index("fence.proxy.async.shared::cta;")


def test_a_tf32_fragment_is_cutlass_register_layout_for_32_bit_a():
    """wgmma.fragment_position against CuTe's ALayout_64x8 (SM90 GMMA, 32-bit a from registers): thread (4, 8, 4)
    with strides (64, 1, 16), value (2, 2) with strides (8, 256), into a column-major 64 x 8 (row + 64 k)."""
    for t, v in itertools.product(range(128), range(4)):
        flat = (t % 4) * 64 + (t // 4 % 8) + (t // 32) * 16 + (v % 2) * 8 + (v // 2) * 256
        assert wgmma.fragment_position(t, v) == (flat % 64, flat // 64)
    assert sorted(wgmma.fragment_position(t, v) for t in range(128) for v in range(4)) == \
        [(r, k) for r in range(64) for k in range(8)]


def test_warpgroup_choices_are_pipelined_in_128_byte_rows_and_offered_only_where_the_device_has_them():
    memory = 200 * 1024
    assert feasible_on_tensor_cores(Choice.of("tensor_cores", columns=64, row_bytes=128, buffers=4, pipelined=1,
                                              warpgroup=1, split=1), memory)
    for bad in (dict(row_bytes=64), dict(pipelined=0, buffers=2), dict(buffers=5)):
        choice = Choice.of("tensor_cores", **{**dict(columns=64, row_bytes=128, buffers=4, pipelined=1), **bad},
                           warpgroup=1)
        assert not feasible_on_tensor_cores(choice, memory)
    assert dict(tensor_core_options(memory, True, True))["warpgroup"] == (0, 1)
    assert dict(tensor_core_options(memory, True, False))["warpgroup"] == (0,)


# ---- printing and the patch ----------------------------------------------------------------------------------------
def test_warpgroup_statements_print_as_hidden_ptx_with_their_descriptors():
    acc = tuple(Reg(f"acc{i}", float32) for i in range(128))
    mma = WarpgroupMma(acc, "tile_a", Expr.var("lid", 256) // 128 * 4096 + 16, "tile_b", Expr(1024), 256, "bf16",
                       True, 8192)
    text = STATEMENTS[WarpgroupMma](mma)
    registers = ",".join(f"%{i}" for i in range(128))
    assert (f"{HIDDEN}wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {{{registers}}}, %128, %129, p, 1, 1, 0, 1;"
            in text)
    assert f"{HIDDEN}setp.ne.b32 p, %130, 0;" in text and '"r"(1) : "memory");' in text
    assert text.count('"+f"(acc') == 128 and '"+f"(acc127)' in text
    size = "*(uint)sizeof(tile_{}[0]))&262143u)>>4)"  # bytes, the shared window's 18 bits, in 16-byte units
    a = f"{wgmma.descriptor(0, 16, 1024)}ul|(ulong)((((uint)(ulong)tile_a + (uint)(((lid/128)*4096+16)){size.format('a')}"
    b = f"{wgmma.descriptor(0, 8192, 1024)}ul|(ulong)((((uint)(ulong)tile_b + (uint)(1024){size.format('b')}"
    assert f'"l"(({a})), "l"(({b})), "r"(1)' in text
    assert STATEMENTS[WarpgroupFence](WarpgroupFence()) == f'asm volatile("{HIDDEN}wgmma.fence.sync.aligned;" ::: "memory");'
    assert STATEMENTS[WarpgroupCommit](WarpgroupCommit()).count("wgmma.commit_group.sync.aligned;") == 1
    assert f"{HIDDEN}wgmma.wait_group.sync.aligned 1;" in STATEMENTS[WarpgroupWait](WarpgroupWait(1))
    assert STATEMENTS[AsyncProxyFence](AsyncProxyFence()) == 'asm volatile("fence.proxy.async.shared::cta;" ::: "memory");'


def test_a_tf32_warpgroup_product_prints_its_a_registers_and_no_transpose_immediates():
    acc = tuple(Reg(f"acc{i}", float32) for i in range(64))
    a = tuple(Reg(f"tf{i}", float32) for i in range(4))
    mma = WarpgroupMma(acc, "", Expr(0), "tile_a", Expr(8), 128, "tf32", a_registers=a)
    text = STATEMENTS[WarpgroupMma](mma)
    registers = ",".join(f"%{i}" for i in range(64))
    assert f"{HIDDEN}wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 {{{registers}}}, {{%64,%65,%66,%67}}, %68, p, 1, " \
        "1;" in text and f"{HIDDEN}setp.ne.b32 p, %69, 0;" in text
    assert ': "r"(as_uint(tf0)), "r"(as_uint(tf1)), "r"(as_uint(tf2)), "r"(as_uint(tf3)), "l"((' in text
    assert f"{wgmma.descriptor(0, 16, 1024)}ul" in text and "tile_a + (uint)(8)*(uint)sizeof(tile_a[0])" in text
    assert STATEMENTS[WarpgroupFence](WarpgroupFence(a[:2])) == \
        f'asm volatile("{HIDDEN}wgmma.fence.sync.aligned;" : "+f"(tf0), "+f"(tf1) : : "memory");'


PTX = (b"//\n// Generated by NVIDIA NVVM Compiler\n.version 8.0\n.target sm_90, texmode_independent\n"
       b".address_size 64\n\t// begin inline asm\n\t" + HIDDEN.encode() + b"wgmma.fence.sync.aligned;\n"
       b"\t// end inline asm\n\tcp.async.commit_group;\n")


def test_the_patch_targets_sm_90a_and_restores_the_hidden_lines_and_nothing_else():
    patched = patch(PTX)
    assert b".target sm_90a, texmode_independent\n" in patched and HIDDEN.encode() not in patched
    assert patched == PTX.replace(b"sm_90,", b"sm_90a,").replace(HIDDEN.encode(), b"")
    assert patch(patched.replace(b"sm_90a", b"sm_90")) == patched  # patched PTX read back patches the same
    with pytest.raises(ValueError, match="no '.target sm_90' line"):
        patch(PTX.replace(b"sm_90", b"sm_80"))
    x, y = operands((256, 128), (128, 256))
    assert hides_ptx(product_kernel(x @ y).source) and not hides_ptx(product_kernel(x @ y, WARPS_ONLY).source)


def test_a_source_without_hidden_ptx_builds_as_it_is_and_one_with_it_is_patched(monkeypatch):
    """On NVIDIA the patched program's binary, which the cache stores, is the sm_90a PTX and loads as a binary again
    (what a cache hit does); elsewhere (PoCL) a hidden-PTX source fails with the reason, and the device's traits
    name no warpgroup products."""
    from zyx.jit import compiler
    from zyx.jit.program_binary import program_binary
    dev = zyx.OpenCL()
    context, device = dev.runtime.context, dev.runtime.device
    kernel = "__kernel void k(__global float* x) { x[get_global_id(0)] += 1.0f; }\n"
    patched = []
    monkeypatch.setattr(compiler, "patch", lambda ptx: patched.append(ptx) or ptx)
    build_source(context, device, kernel)
    assert patched == []  # untouched
    monkeypatch.setattr(compiler, "patch", patch)
    hidden = f"// {HIDDEN}\n" + kernel
    if "NVIDIA" not in device.platform.name:
        with pytest.raises(KernelBuildError, match="no '.target sm_90' line"):
            build_source(context, device, hidden)
        assert not warpgroups_build(dev.runtime) and WGMMA not in dev.traits.tensor_cores
        return
    binary = program_binary(build_source(context, device, hidden), device)
    assert b".target sm_90a" in binary and HIDDEN.encode() not in binary
    assert program_binary(build_binary(context, device, binary), device) == binary
    assert warpgroups_build(dev.runtime) == (dev.runtime.compute_capability[0] == 9)


# ---- assembled for sm_90a ------------------------------------------------------------------------------------------
CLANG = "/usr/lib/llvm-15/bin/clang" if shutil.which("/usr/lib/llvm-15/bin/clang") else shutil.which("clang")
BUILTINS = ("#define get_group_id(d) __nvvm_read_ptx_sreg_ctaid_x()\n#define get_local_id(d) __nvvm_read_ptx_sreg_tid_x()\n"
            "#define barrier(f) __nvvm_bar_sync(0)\n#define isnan(x) __builtin_isnan(x)\n"
            "#define vstore2(v, i, p) (((__global float2*)(p))[(i)] = (v))\n")  # (float pairs: NVIDIA's library has it)


def _nvptx() -> bool:
    if CLANG is None or shutil.which("ptxas") is None:
        return False
    return "nvptx64" in subprocess.run([CLANG, "-print-targets"], capture_output=True, text=True).stdout


@pytest.mark.skipif(not _nvptx(), reason="no clang with the NVPTX back end, or no ptxas")
@pytest.mark.parametrize("shape", [(2048, 256, 2048), (512, 256, 512)])
def test_the_printed_kernels_assemble_for_sm_90a_without_spills(tmp_path, monkeypatch, shape):
    """clang (sm_86: clang 15 knows no sm_90) prints the PTX, its target set to sm_90 as NVIDIA's would be, then
    patched and assembled by ptxas for sm_90a within the registers of the kernel's group (NVIDIA's compiler takes
    the group size from reqd_work_group_size, which a kernel with a producer warpgroup prints: 384 items, 170
    registers each; 255 in 256 items; clang's PTX does not carry it): the wgmma PTX is accepted (TF32's too, a from
    registers; a transposed a of x.T @ y; persistent groups; 128 x 192 blocks; float32 partials of a split k), 128
    accumulators need no spills,
    and ptxas keeps the wgmmas asynchronous."""
    n, k, m = shape
    x, y, w, t = operands((n, k), (k, m), (m, k), (k, n))
    f, g, h = operands((n, k), (k, m), (m, k), dtype="float32")
    kernels = [product_kernel(out) for out in (x @ y, x @ w.T, t.T @ y, t.T @ w.T)]
    # TF32 in 128 x 256 blocks where the shape gives enough, a batch in flight (two slices' a in registers), the
    # left tile rounded by the producer (or, without one, by every item)
    kernels += [product_kernel(out, TF32) for out in (f @ g, f @ h.T, g.T @ h.T)]
    monkeypatch.setenv("ZYX_TF32_VECTOR_A", "1")  # (its a read a vector at a time)
    kernels += [product_kernel(f @ g, TF32)]
    monkeypatch.delenv("ZYX_TF32_VECTOR_A")
    # persistent groups (2 groups: the slice loop inside a loop over blocks)
    kernels += [product_kernel(x @ y, dataclasses.replace(HOPPER, compute_units=2))]
    # blocks as 132 SMs take them: 768 x 3072 outputs in 128 x 192 (96 blocks, m64n192: 96 accumulators)
    wide_x, wide_y, wide_w, wide_t = operands((768, k), (k, 3072), (3072, k), (k, 768))
    kernels += [product_kernel(out, dataclasses.replace(HOPPER, compute_units=132))
                for out in (wide_x @ wide_y, wide_t.T @ wide_w.T)]
    assert all("m64n192k16" in kernel.source for kernel in kernels[-2:])
    # float32 partials of a product of few blocks split along k (their bf16 operands as the product's)
    tokens, features = operands((8192, 256), (8192, 256))
    kernels += [schedule([(tokens.T @ features).node], dataclasses.replace(HOPPER, compute_units=132))[0][0]]
    assert kernels[-1].outputs[0].dtype.name == "float32" and "m64n128k16.f32.bf16" in kernels[-1].source
    monkeypatch.setenv("ZYX_WGMMA_PRODUCER", "0")
    kernels += [product_kernel(f @ g, TF32)]
    sources = [(kernel.source, kernel.local_size) for kernel in kernels] + [(warpgroup_probe_source(), 384)]
    for number, (text, items) in enumerate(sources):
        source = tmp_path / f"kernel{number}.cl"
        source.write_text(BUILTINS + text)
        ptx = tmp_path / f"kernel{number}.ptx"
        built = subprocess.run([CLANG, "-x", "cl", "-cl-std=CL1.2", "-target", "nvptx64-nvidia-nvcl", "-Xclang",
                                "-finclude-default-header", "-Xclang", "-fgnu-keywords", "-O3", "-S", "-Xclang",
                                "-target-cpu", "-Xclang", "sm_86", "-o", str(ptx), str(source)],
                               capture_output=True, text=True)
        assert built.returncode == 0, built.stderr[-2000:]
        text = ptx.read_bytes().replace(b".target sm_86", b".target sm_90").replace(b".version 7.5", b".version 8.0")
        ptx.write_bytes(patch(text))
        assembled = subprocess.run(["ptxas", "-arch=sm_90a", "-v", f"--maxrregcount={min(255, 65536 // items)}",
                                    str(ptx), "-o",
                                    str(tmp_path / "k.cubin")], capture_output=True, text=True)
        assert assembled.returncode == 0, assembled.stderr[-2000:]
        assert "0 bytes spill stores" in assembled.stderr, assembled.stderr
        assert "Performance Loss" not in assembled.stderr, assembled.stderr  # (e.g. C7520: wgmmas serialized)


def test_the_warpgroup_probe_is_kept_on_disk_for_the_next_process(monkeypatch, tmp_path):
    """The probe is built through the kernel cache and stored at once (it is never launched, and the cache stores
    a binary after its program's first launch): a warm start loads it instead of compiling (a stand-in source here,
    as PoCL cannot build wgmma; a cache of its own, as the test process's stores nothing)."""
    from zyx.jit import cache, tensor_cores
    source = "__kernel void zyx_wgmma_probe(__global float* out) { out[get_global_id(0)] = 2.0f; }\n"
    own = cache.KernelCache(tmp_path)
    monkeypatch.setattr(cache, "default_cache", lambda: own)
    monkeypatch.setattr(tensor_cores, "warpgroup_probe_source", lambda: source)
    monkeypatch.setattr(tensor_cores, "_WARPGROUPS_BUILD", {})
    runtime = zyx.OpenCL().runtime
    assert warpgroups_build(runtime)
    assert cache.KernelCache(tmp_path).holds(runtime.device, source)  # a new cache, as a new process: from disk


def test_groups_take_the_blocks_in_bands_of_eight_rows_each_once():
    x, y = operands((2048, 256), (256, 2048))  # 16 x 8 blocks of 128 x 256
    kernel = product_kernel(x @ y)
    product = next(s for s in walk(kernel.ir.body) if isinstance(s, WarpgroupMma))
    blocks = []
    for gid in range(16 * 8):
        first_row = _copied_bytes(kernel, product.a_array, gid)[0] // 256  # element (0, 0) of the left tile
        first_column = _copied_bytes(kernel, product.b_array, gid)[0]  # element (k 0, column 0) of the right tile
        blocks.append((first_row // 128, first_column // 256))
    assert blocks[:9] == [(r, 0) for r in range(8)] + [(0, 1)] and blocks[64] == (8, 0)
    assert sorted(blocks) == [(r, c) for r in range(16) for c in range(8)]


def test_a_batched_products_rows_of_blocks_are_banded_as_one_column_batch_after_batch():
    """x [4, 256, 256] @ y: 2 rows of blocks a batch, 8 in all; bands of 4 of them cross from one batch into the
    next (within each batch alone no band would form), so the groups running at once share y's slices."""
    x, y = operands((4, 256, 256), (256, 512))  # 4 x 2 x 4 blocks of 128 x 128
    kernel = product_kernel(x @ y)
    product = next(s for s in walk(kernel.ir.body) if isinstance(s, WarpgroupMma))
    blocks = []
    for gid in range(32):
        first_row = _copied_bytes(kernel, product.a_array, gid)[0] // 256  # the left tile's (0, 0): batch * 256 + row
        blocks.append((first_row // 128, _copied_bytes(kernel, product.b_array, gid)[0] // 128))
    assert blocks[:8] == [(r, 0) for r in range(4)] + [(r, 1) for r in range(4)] and blocks[16] == (4, 0)
    assert sorted(blocks) == [(r, c) for r in range(8) for c in range(4)]


def test_a_band_set_by_the_environment_is_taken_where_it_divides_and_an_empty_setting_is_the_default(monkeypatch):
    from zyx.jit.tensor_cores import _band
    for setting, rows, band in (("", 128, 8), ("16", 128, 16), ("16", 24, 8), ("4", 128, 4), ("", 8, 4)):
        monkeypatch.setenv("ZYX_TC_BAND", setting)
        assert _band(rows) == band, (setting, rows)
    monkeypatch.delenv("ZYX_TC_BAND")
    assert _band(128) == 8 and _band(3) == 1


def test_a_search_may_try_warps_or_warpgroups_and_the_scheduler_takes_its_winner():
    x, y = operands((2048, 256), (256, 2048))
    kernel = product_kernel(x @ y)
    tried = {c.describe() for c in candidates(kernel.site, HOPPER, 2)}
    assert {"buffers=4 columns=64 pipelined=1 row_bytes=128 split=1 warpgroup=1",
            "buffers=2 columns=32 pipelined=1 row_bytes=128 split=1 warpgroup=1",
            "buffers=3 columns=64 pipelined=1 row_bytes=128 split=1 warpgroup=0",
            "buffers=6 columns=32 pipelined=1 row_bytes=128 split=1 warpgroup=2"} <= tried
    assert not any("warpgroup=1" in c and "row_bytes=64" in c for c in tried)
    assert not any("buffers=6" in c and "warpgroup=2" not in c for c in tried)  # (ping-pong's shape, its alone)
    for choice, marker in ((Choice.of("tensor_cores", columns=32, row_bytes=128, buffers=3, pipelined=1, warpgroup=1,
                                      split=1), "m64n128k16"),
                           (Choice.of("tensor_cores", columns=32, row_bytes=128, buffers=6, pipelined=1, warpgroup=2,
                                      split=1), "m64n128k16"),
                           (Choice.of("tensor_cores", columns=64, row_bytes=128, buffers=3, pipelined=1, warpgroup=0,
                                      split=1), "mma.sync")):
        tuned, = [k for k in schedule([(x @ y).node], HOPPER, TunedChoices({kernel.site.key: choice}))[0]
                  if "mma" in k.source]
        assert tuned.site.heuristic == kernel.site.heuristic and marker in tuned.source
        assert tuned.site.applied == choice  # (what the tuner checks before timing a candidate)
    narrow_x, narrow_y = operands((256, 256), (256, 256))
    narrow = product_kernel((narrow_x * 2) @ (narrow_y + 1))  # on warps: a search keeps to warps
    assert all(c["warpgroup"] == 0 for c in candidates(narrow.site, HOPPER, 2))
    f, g = operands((2048, 256), (256, 2048), dtype="float32")  # TF32 (its a in registers): no ping-pong
    assert 2 not in dict(product_kernel(f @ g, TF32).site.options)["warpgroup"]


# ---- the whole kernel on PoCL, wgmma emulated ----------------------------------------------------------------------
EMULATED_DOT = """
static float zyx_emu_element(__local const uchar* tile, uint offset, int kind) {
  uint at = offset ^ (((offset >> 7) & 7u) << 4);  /* the 128-byte swizzle, from the 1024-aligned tile */
  ushort bits = *(__local const ushort*)(tile + at);
  if (kind == 2) return as_float(*(__local const uint*)(tile + at) & 0xffffe000u);  /* TF32: its top 19 bits */
  return kind ? vload_half(0, (__local const half*)(tile + at)) : as_float((uint)bits << 16);
}
/* Byte offset of element (line, k) of an operand tile from its descriptor's start (line: a's row, b's column).
   K-major (imm-trans 0): 128-byte rows of k. MN-major (imm-trans 1: "M-major for matrix A", "N-major for matrix B",
   PTX ISA 9.7.15.5.1.2 "Shared Memory Matrix Layout", docs.nvidia.com/cuda/parallel-thread-execution, read at
   ptx.poole.ai/docs/09-instruction-set/15-wgmma/mma-async/shared-memory-layout): 128-byte swizzle atoms of 8 x 8
   16-byte elements, 64 16-bit lines by 8 k, one 128-byte row per k; the leading byte offset from one atom to the
   next along M/N, the stride byte offset (1024 here) from one 8 k to the next (the ISA's MN-major leading offset,
   "swizzled layouts: stride from the first (swizzle-byte-size/16) rows to the next", stated in tcgen05's 9.7.16.3.1.1
   for the same swizzle atoms, and CUTLASS's make_gmma_desc<Major::MN> B128 canonical layout ((8,m),(8,k)):
   ((1,LBO),(8,SBO)) in 16-byte units, for a as for b, agree). A transposed a lies as a transposed b, which the H200
   measured (wgmma.py); m64 reads one atom along M. */
static uint zyx_emu_offset(uint start, int line, int k, int mn_major, uint leading) {
  return mn_major ? start + (line / 64) * leading + (k / 8) * 1024 + (k % 8) * 128 + (line % 64) * 2
                  : start + line * 128 + k * 2;
}
static float zyx_emu_dot(__local const uchar* a, uint a0, int row, int a_mn_major, uint a_leading,
                         __local const uchar* b, uint b0, int column, int b_mn_major, uint b_leading, int kind) {
  float sum = 0.0f;
  for (int k = 0; k < 16; k++)
    sum += zyx_emu_element(a, zyx_emu_offset(a0, row, k, a_mn_major, a_leading), kind)
           * zyx_emu_element(b, zyx_emu_offset(b0, column, k, b_mn_major, b_leading), kind);
  return sum;
}
static float zyx_emu_tf32_dot(__local const float* a, int row, __local const uchar* b, uint b0, int column) {
  float sum = 0.0f;  /* a: the warpgroup's registers gathered as [64 rows][8 k]; b K-major, 8 k of 4 bytes */
  for (int k = 0; k < 8; k++) sum += a[row * 8 + k] * zyx_emu_element(b, b0 + column * 128 + k * 4, 2);
  return sum;
}
"""
KINDS = {"bf16": 0, "f16": 1, "tf32": 2}
# cvt.rna.tf32.f32 in C: the 13 low bits dropped, rounded (ties away), a nan kept (a carry would make 0x7fffffff -0.0)
C_ROUND_TF32 = ("static inline float zyx_round_tf32(float f) { return isnan(f) ? f : "
                "as_float((as_uint(f) + 0x1000u) & 0xffffe000u); }")
GATHERED = "emu_a"  # a local array of 2 x 64 x 8 floats where an emulated register-sourced wgmma gathers its a


def _emulated_mma(s: WarpgroupMma) -> str:
    """Each item computes its own accumulators from local memory as the descriptors describe it; a from registers
    (TF32) is first gathered into local memory by the whole group (every item multiplies: no producer warpgroup)."""
    if s.a_registers:
        return _emulated_register_mma(s)
    lines = [f"{{ uint a0 = (uint)({s.a_index.render()}) * 2, b0 = (uint)({s.b_index.render()}) * 2; int t = lid % 128;"]
    for register, acc in enumerate(s.acc):
        row, column = wgmma.accumulator_position(Expr.var("t", 128), register)
        lines.append(f"  {acc.name} += zyx_emu_dot((__local const uchar*){s.a_array}, a0, {row.render()}, "
                     f"{int(s.a_mn_major)}, {s.a_leading}u, (__local const uchar*){s.b_array}, b0, {column.render()}, "
                     f"{int(s.b_mn_major)}, {s.b_leading}u, {KINDS[s.kind]});")
    return "\n".join(lines) + " }"


def _emulated_register_mma(s: WarpgroupMma) -> str:
    t = Expr.var("t", 128)
    lines = [f"{{ uint b0 = (uint)({s.b_index.render()}) * 4; int t = lid % 128; "
             f"__local float* gathered = {GATHERED} + (lid / 128) * 512;"]
    for register, value in enumerate(s.a_registers):
        row, k = wgmma.fragment_position(t, register)
        lines.append(f"  gathered[({row.render()}) * 8 + {k.render()}] = {value.name};")
    lines.append("  barrier(CLK_LOCAL_MEM_FENCE);")
    for register, acc in enumerate(s.acc):
        row, column = wgmma.accumulator_position(t, register)
        lines.append(f"  {acc.name} += zyx_emu_tf32_dot(gathered, {row.render()}, (__local const uchar*){s.b_array}, "
                     f"b0, {column.render()});")
    return "\n".join(lines) + "\n  barrier(CLK_LOCAL_MEM_FENCE); }"


def _emulated_copy(s: AsyncCopy) -> str:
    from zyx.jit.print_common import condition
    from zyx.jit.print_opencl import swizzled
    guard = condition(s.guard) if s.guard else "1"
    element = "ushort" if s.itemsize == 2 else "uint"
    return (f"{{ __local {element}* d = ((__local {element}*){s.array}) + {swizzled(s.index, s.swizzle, s.itemsize)}; "
            f"__global const {element}* r = ((__global const {element}*){s.buffer}) + {s.source.render()}; "
            f"for (int e = 0; e < {s.width}; e++) d[e] = ({guard}) ? r[e] : 0; }}")


def _emulated_bulk_store(s: BulkStore) -> str:
    from zyx.jit.print_common import condition
    guard = condition(s.guard) if s.guard else "1"
    return (f"if ({guard}) {{ __local const uchar* r = (__local const uchar*)({s.array} + {s.index.render()}); "
            f"__global uchar* d = (__global uchar*)(((__global ushort*){s.buffer}) + {s.target.render()}); "
            f"for (int e = 0; e < (int)({s.size.render()}); e++) d[e] = r[e]; }}")


def _emulated_source(kernel, monkeypatch) -> tuple[str, str]:
    """(name, source) of `kernel` with its cp.async copies as plain copies, each wgmma emulated (the rest of the
    asynchronous machinery printed as nothing, a named barrier as the group's: staged outputs', and their bulk
    copies as plain ones; the quads' shuffles through local memory, every item taking part) and TF32's rounding in
    C."""
    from zyx.jit import opencl_prelude, print_opencl
    from zyx.jit.kernel_ir import AsyncCommit, AsyncWait, LocalArray
    nothing = lambda s: ";"
    whole_group = lambda s: "barrier(CLK_LOCAL_MEM_FENCE);"  # (every item copies and multiplies: all 256 wait)
    for statement, printer in ((WarpgroupMma, _emulated_mma), (AsyncCopy, _emulated_copy), (WarpgroupFence, nothing),
                               (NamedBarrier, whole_group), (BulkStore, _emulated_bulk_store), (BulkCommit, nothing),
                               (BulkWait, nothing), (WarpShuffle, _emulated_shuffle),
                               (WarpgroupCommit, nothing), (WarpgroupWait, nothing), (AsyncProxyFence, nothing),
                               (AsyncCommit, nothing), (AsyncWait, nothing)):
        monkeypatch.setitem(print_opencl.STATEMENTS, statement, printer)
    helpers = [(names, [C_ROUND_TF32] if names == ("zyx_round_tf32",) else lines)
               for names, lines in opencl_prelude.CALLED_HELPERS]
    monkeypatch.setattr(opencl_prelude, "CALLED_HELPERS", helpers)
    body = (LocalArray(GATHERED, float32, 2 * 64 * 8), LocalArray("emu_x", float32, kernel.local_size),
            *kernel.ir.body)
    name, source = print_opencl.print_kernel(dataclasses.replace(kernel.ir, body=body))
    return name, EMULATED_DOT + source


def _run_on_pocl(kernel, name: str, source: str, inputs: list, out_shape: tuple, out_dtype) -> np.ndarray:
    """The kernel built without optimizations on this machine's OpenCL, run on `inputs` (numpy arrays, as stored)."""
    import pyopencl as cl
    dev = zyx.OpenCL()
    context, device = dev.runtime.context, dev.runtime.device
    program = cl.Program(context, source).build(options=["-cl-opt-disable"])
    flags = cl.mem_flags
    buffers = [cl.Buffer(context, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=np.ascontiguousarray(v))
               for v in inputs]
    got = np.empty(out_shape, out_dtype)
    out = cl.Buffer(context, flags.WRITE_ONLY, got.nbytes)
    queue = cl.CommandQueue(context, device)
    getattr(program, name)(queue, (kernel.global_size,), (kernel.local_size,), *buffers, out)
    cl.enqueue_copy(queue, got, out)
    return got


def _tuned(out, choice: Choice, traits=HOPPER):
    """The product kernel of `out` under `choice` (the heuristics' where it is theirs)."""
    kernel = product_kernel(out, traits)
    if kernel.site.heuristic == choice:
        return kernel
    tuned, = [k for k in schedule([out.node], traits, TunedChoices({kernel.site.key: choice}))[0] if "mma" in k.source]
    return tuned


@pytest.mark.slow
@pytest.mark.parametrize("dtype, n, k, m, form, columns", [("bfloat16", 256, 192, 512, "x @ y", 32),
                                                            ("float16", 200, 136, 264, "x @ y.T", 64),
                                                            ("bfloat16", 136, 200, 264, "x.T @ y", 32),
                                                            ("float16", 200, 136, 264, "x.T @ y", 64),
                                                            ("bfloat16", 136, 200, 264, "x.T @ y.T", 64),
                                                            ("bfloat16", 129, 100, 136, "x.T @ y", 32)])
def test_the_kernel_computes_the_product_with_wgmma_emulated_on_pocl(monkeypatch, dtype, n, k, m, form, columns):
    """The printed kernel, its cp.async copies as plain copies and each wgmma as C reading local memory the way the
    descriptors and transpose immediates say (wgmma.py, as measured on the H200; a transposed a as the PTX ISA
    defines it: EMULATED_DOT), run on PoCL: the pipeline, the layouts, the accumulator map, the block order and the
    epilogue together, against numpy: 128 x 128 blocks with the right operand across k (MN-major), 128 x 256 blocks
    (a tuned choice) with both along k and edges in every direction, and a weight gradient's forms (x.T @ y, x.T @
    y.T: the left operand across k copied 16 bytes at a time into atoms of 64 rows, wgmma's a MN-major, with edges
    in every direction; with 129 rows, which no copy of 4 bytes or more divides, staged element by element,
    neighbouring items reading neighbouring rows, into rows along k). Every item copies and multiplies
    (ZYX_WGMMA_PRODUCER=0), outputs stored in pairs: PoCL has no named barriers for a producer warpgroup's hand-over
    (test_warp_roles.py runs it against a model). PoCL builds it without optimizations: optimizing 128 accumulators'
    emulation takes it two minutes, running the unoptimized kernel a second."""
    monkeypatch.setenv("ZYX_WGMMA_PRODUCER", "0")
    x, y, out = _form_product(form, n, k, m, dtype)
    kernel = _tuned(out, Choice.of("tensor_cores", columns=columns, row_bytes=128, buffers=4, pipelined=1, warpgroup=1,
                                   split=1))
    products = [s for s in walk(kernel.ir.body) if isinstance(s, WarpgroupMma)]
    assert products[0].n == 4 * columns
    left_across, right_along = form.startswith("x.T"), form.endswith("y.T")
    assert all(s.a_mn_major == (left_across and n % 2 == 0) and s.b_mn_major == (not right_along) for s in products)
    _check_emulated(kernel, x, y, form, dtype, monkeypatch)


def _form_product(form: str, n: int, k: int, m: int, dtype: str):
    """Operands x, y stored as `form` ("x @ y", "x.T @ y.T", ...) has them for an n x k by k x m product, and it."""
    left_across, right_along = form.startswith("x.T"), form.endswith("y.T")
    x, y = operands((k, n) if left_across else (n, k), (m, k) if right_along else (k, m), dtype=dtype)
    return x, y, (x.T if left_across else x) @ (y.T if right_along else y)


def _check_emulated(kernel, x, y, form: str, dtype: str, monkeypatch) -> None:
    """`kernel` (the product `form` of x and y) run on PoCL with wgmma emulated, against numpy's float64 product of
    the rounded operands, within twice the dtype's precision."""
    import ml_dtypes
    name, source = _emulated_source(kernel, monkeypatch)
    kind = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
    a, b = x.numpy().astype(kind), y.numpy().astype(kind)
    left, right = a.astype(np.float64), b.astype(np.float64)
    expected = (left.T if form.startswith("x.T") else left) @ (right.T if form.endswith("y.T") else right)
    got = _run_on_pocl(kernel, name, source, [a.view(np.uint16), b.view(np.uint16)], expected.shape, np.uint16)
    eps, k = 2.0 ** (-8 if dtype == "bfloat16" else -11), left.shape[0 if form.startswith("x.T") else 1]
    np.testing.assert_allclose(got.view(kind).astype(np.float64), expected, rtol=2 * eps, atol=2 * eps * np.sqrt(k))


@pytest.mark.slow
@pytest.mark.parametrize("dtype, n, k, m, form", [("bfloat16", 256, 192, 256, "x @ y.T"),
                                                   ("float16", 200, 136, 264, "x @ y"),
                                                   ("bfloat16", 136, 200, 264, "x.T @ y")])
def test_a_pingpong_warpgroup_computes_its_whole_block_with_wgmma_emulated_on_pocl(monkeypatch, dtype, n, k, m, form):
    """A ping-pong plan's group is one warpgroup multiplying both m64 tiles of a 128 x 128 block's rows (two
    m64n128 wgmmas a k16 step, 128 accumulators an item): its kernel with every item copying and multiplying
    (ZYX_WGMMA_PRODUCER=0; test_warp_roles.py runs the two consumers' hand-over against a model), wgmma emulated,
    run on PoCL against numpy, the left tile along k or across it (its second m64 tile the next atom), edges in
    every direction."""
    monkeypatch.setenv("ZYX_WGMMA_PRODUCER", "0")
    x, y, out = _form_product(form, n, k, m, dtype)
    kernel = _tuned(out, Choice.of("tensor_cores", columns=32, row_bytes=128, buffers=6, pipelined=1, warpgroup=2,
                                   split=1))
    products = [s for s in walk(kernel.ir.body) if isinstance(s, WarpgroupMma)]
    assert kernel.local_size == 128 and products[0].n == 128 and len(products) == 2 * 64 // 16
    assert products[0].a_index.render() != products[1].a_index.render()  # (both row tiles)
    _check_emulated(kernel, x, y, form, dtype, monkeypatch)


@pytest.mark.slow
def test_a_pingpong_group_computes_gelus_backward_epilogue_emulated_on_pocl(monkeypatch):
    """What ZYX_WGMMA_PINGPONG=erf runs: a ping-pong group's product whose epilogue reads a bfloat16 input at every
    output 16 bytes an item (quads.py) and computes an erf of it, GELU's backward's shape, through the emulated
    wgmma on PoCL (every item copying and multiplying) against numpy's float64, rounded as bfloat16 is."""
    import math
    import ml_dtypes
    monkeypatch.setenv("ZYX_WGMMA_PRODUCER", "0")
    x, y, z = operands((256, 128), (128, 256), (256, 256))
    out = (x @ y) * ((z * 0.7071).erf() * 0.5 + 0.5)
    kernel = _tuned(out, Choice.of("tensor_cores", columns=32, row_bytes=128, buffers=6, pipelined=1, warpgroup=2,
                                   split=1))
    assert kernel.local_size == 128 and "((__global const uint4*)in" in kernel.source
    name, source = _emulated_source(kernel, monkeypatch)
    stored = {id(t.node): t.numpy().astype(ml_dtypes.bfloat16) for t in (x, y, z)}
    inputs = [stored[id(node)].view(np.uint16) for node in kernel.loads]
    got = _run_on_pocl(kernel, name, source, inputs, (256, 256), np.uint16).view(ml_dtypes.bfloat16)
    a, b, c = (stored[id(t.node)].astype(np.float64) for t in (x, y, z))
    product = (a @ b).astype(ml_dtypes.bfloat16).astype(np.float64)
    expected = product * (np.vectorize(math.erf)(c * 0.7071) * 0.5 + 0.5)
    eps = 2.0 ** -8
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=8 * eps, atol=8 * eps * np.sqrt(128))


def test_erf_setting_plans_ping_pong_only_for_a_product_whose_epilogue_computes_an_erf(monkeypatch):
    """ZYX_WGMMA_PINGPONG=erf: GELU's backward (an erf of the pre-activation in the epilogue) in ping-pong, where its
    epilogue's arithmetic would leave the tensor cores idle; a product scaled by a stored value not, nor the GELU
    backward where the erf's value is read from a buffer (materialized: not this kernel's arithmetic)."""
    monkeypatch.setenv("ZYX_WGMMA_PINGPONG", "erf")
    x, y, h = operands((2048, 768), (768, 3072), (2048, 3072))
    gelu_backward = (x @ y) * ((h * 0.7071).erf() * 0.5 + 0.5)
    scaled = (x @ y) * h

    def pingpong(out, materialized=None):
        product = out.node.src[0].src[0]
        return plan_tensor_cores(out.node, product, HOPPER.tensor_cores, HOPPER.tensor_core_memory, True, None,
                                 True, 132, True, materialized).pingpong

    erf = gelu_backward.node.src[1].src[0].src[0]
    assert erf.op is Op.ERF
    assert pingpong(gelu_backward) and not pingpong(scaled)
    assert not pingpong(gelu_backward, {id(erf): erf})
    monkeypatch.setenv("ZYX_WGMMA_PINGPONG", "0")
    assert not pingpong(gelu_backward)


@pytest.mark.slow
@pytest.mark.parametrize("n, k, m", [(128, 128, 256), (136, 128, 264)])
def test_an_epilogue_reading_bfloat16_at_each_output_reads_and_stores_pairs_emulated_on_pocl(monkeypatch, n, k, m):
    """(x @ y) · z with z bfloat16 as the product is (GELU's backward reads its pre-activation so): where the blocks
    divide the output the epilogue reads z 16 bytes an item, each quad's chunks handed over as pairs by the quad
    transpose (quads.py; where they do not, rows and columns past its end read the last ones, clamped, and z is read
    at each pair of neighbouring outputs as one 32-bit word: paired_loads), and stores its outputs by quads; run
    through the emulated wgmma on PoCL against numpy, rounded as bfloat16 is."""
    import ml_dtypes
    monkeypatch.setenv("ZYX_WGMMA_PRODUCER", "0")
    x, y, z = operands((n, k), (k, m), (n, m))
    out = (x @ y) * z
    kernel = product_kernel(out)
    body = kernel.source.split("__kernel")[1]
    if m % 256 == 0:
        reads = tile_accumulators(kernel) // 8
        assert body.count("((__global const uint4*)in") == reads and "zyx_bf16_lanes_2(quad_word" in body
        assert "zyx_float_to_bf16(" not in body and "zyx_bf16_to_float(in" not in body and "zyx_pack_bf16(" in body
    else:
        assert "zyx_bf16_lanes_2(((__global const uint*)in" in body and "quad_pair" not in body
    name, source = _emulated_source(kernel, monkeypatch)
    stored = {id(t.node): t.numpy().astype(ml_dtypes.bfloat16) for t in (x, y, z)}
    inputs = [stored[id(node)].view(np.uint16) for node in kernel.loads]
    got = _run_on_pocl(kernel, name, source, inputs, (n, m), np.uint16).view(ml_dtypes.bfloat16)
    a, b, c = (stored[id(t.node)].astype(np.float64) for t in (x, y, z))
    product = (a @ b).astype(ml_dtypes.bfloat16).astype(np.float64)
    expected = (product * c).astype(ml_dtypes.bfloat16).astype(np.float64)
    eps = 2.0 ** -8
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=4 * eps, atol=4 * eps * np.sqrt(k))


def test_16_bit_outputs_are_stored_16_bytes_an_item_transposed_across_quads(monkeypatch):
    """A warpgroup product's bfloat16 outputs whose rows lie whole along the buffer's last axis (a multiple of 8
    elements): each 4 chunks' pairs go through two butterfly stages of shuffles (xor 2, then xor 1) and every item
    stores one 16-byte chunk of 8 columns, a store for each 8 of its outputs, none as pairs; where the rows are not
    a multiple of 8 elements, with ZYX_WGMMA_QUAD_STORES=0, or for float32 outputs, no quads."""
    x, y = operands((256, 192), (192, 512))
    kernel = product_kernel(x @ y)
    body = kernel.source.split("__kernel")[1]
    accumulators = tile_accumulators(kernel)
    masks = [s.mask for s in walk(kernel.ir.body) if isinstance(s, WarpShuffle)]
    assert body.count("as_uint4(quad_chunk") == accumulators // 8 and "((__global uint*)out" not in body
    assert masks == [2, 2, 1, 1] * (accumulators // 8)
    ragged_x, ragged_y = operands((200, 136), (136, 260))
    assert "quad_chunk" not in product_kernel(ragged_x @ ragged_y).source
    f, g = operands((256, 192), (192, 512), dtype="float32")
    assert "quad_chunk" not in product_kernel(f @ g, TF32).source
    monkeypatch.setenv("ZYX_WGMMA_QUAD_STORES", "0")
    paired = product_kernel(x @ y).source
    assert "quad_chunk" not in paired and paired.count("((__global uint*)out") == accumulators // 2


def test_an_epilogues_bfloat16_input_is_read_16_bytes_an_item_where_the_blocks_divide_the_output(monkeypatch):
    """(x @ y) · z, z bfloat16 at every output: one 16-byte read of z per 8 outputs, transposed across the quad (the
    same shuffles as the stores' again), no 4-byte pair read; ZYX_WGMMA_QUAD_LOADS=0 reads pairs, stores still by
    quads."""
    x, y, z = operands((256, 128), (128, 512), (256, 512))
    kernel = product_kernel((x @ y) * z)
    accumulators = tile_accumulators(kernel)
    masks = [s.mask for s in walk(kernel.ir.body) if isinstance(s, WarpShuffle)]
    assert kernel.source.count("((__global const uint4*)in") == accumulators // 8 and masks == [2, 2, 1, 1] * (
        accumulators // 4)
    assert "zyx_bf16_lanes_2(((__global const uint*)in" not in kernel.source
    monkeypatch.setenv("ZYX_WGMMA_QUAD_LOADS", "0")
    paired = product_kernel((x @ y) * z).source
    assert "((__global const uint4*)in" not in paired and "as_uint4(quad_chunk" in paired
    assert paired.count("zyx_bf16_lanes_2(((__global const uint*)in") == accumulators // 2


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["1", "2"])
@pytest.mark.parametrize("dtype, n, k, m, form, columns", [("bfloat16", 200, 136, 264, "x @ y.T", 64),
                                                            ("float16", 136, 72, 136, "x @ y", 32)])
def test_staged_outputs_go_through_local_memory_and_out_in_rows_emulated_on_pocl(monkeypatch, mode, dtype, n, k, m,
                                                                                 form, columns):
    """ZYX_WGMMA_STAGED=1: each pass stores 128 of the block's columns into a swizzled stage as pairs, waits, and
    stores the rows 16 bytes an item (`as_uint4`), guarded past the ends; =2: into rows padded by 16 bytes, which
    the first 128 items hand to the asynchronous proxy a row each (`cp.async.bulk`, as many bytes as the buffer's
    row has left). The stage fits beside 3 buffers of 128 x 256 blocks, not 4. Run through the emulated wgmma on
    PoCL (a bulk copy as a plain one) against numpy, with edges in both directions."""
    import ml_dtypes
    monkeypatch.setenv("ZYX_WGMMA_PRODUCER", "0")
    monkeypatch.setenv("ZYX_WGMMA_STAGED", mode)
    x, y = operands((n, k), (m, k) if form.endswith("y.T") else (k, m), dtype=dtype)
    out = x @ (y.T if form.endswith("y.T") else y)
    kernel = _tuned(out, Choice.of("tensor_cores", columns=columns, row_bytes=128, buffers=3, pipelined=1, warpgroup=1,
                                   split=1))
    body, passes = kernel.source.split("__kernel")[1], 4 * columns // 128
    if mode == "1":
        assert body.count("as_uint4(staged_bits") == 8 * passes and "= zyx_pack_" in body
    else:
        assert body.count("cp.async.bulk.global.shared::cta") == passes and "cp.async.bulk.wait_group.read 0" in body
    assert "((__global uint*)out" not in body  # (no output stored but from the stage)
    assert not plan_tensor_cores(out.node, out.node.src[0], HOPPER.tensor_cores, HOPPER.tensor_core_memory,
                                 True, Choice.of("tensor_cores", columns=64, row_bytes=128, buffers=4, pipelined=1,
                                                 warpgroup=1, split=1), True).staged
    name, source = _emulated_source(kernel, monkeypatch)
    kind = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
    a, b = x.numpy().astype(kind), y.numpy().astype(kind)
    got = _run_on_pocl(kernel, name, source, [a.view(np.uint16), b.view(np.uint16)], (n, m), np.uint16)
    expected = a.astype(np.float64) @ (b.astype(np.float64).T if form.endswith("y.T") else b.astype(np.float64))
    eps = 2.0 ** (-8 if dtype == "bfloat16" else -11)
    np.testing.assert_allclose(got.view(kind).astype(np.float64), expected, rtol=2 * eps, atol=2 * eps * np.sqrt(k))


def test_an_output_stored_with_its_columns_across_its_rows_is_not_staged_and_keeps_four_buffers(monkeypatch):
    """(x @ y).T: the product's columns lie down the stored buffer's columns, not along its rows, so no row of the
    stage would be a run of the buffer: the plan stores directly and keeps the 4 buffers of its 128 x 256 blocks,
    where x @ y is staged beside 3."""
    monkeypatch.setenv("ZYX_WGMMA_STAGED", "2")
    x, y = operands((4096, 128), (128, 4096))
    across, along = product_kernel((x @ y).T), product_kernel(x @ y)
    assert "cp.async.bulk.global" not in across.source and "cp.async.bulk.global" in along.source
    assert all("m64n256k16" in k.source for k in (across, along))
    tile_a = [re.search(r"tile_a\d+_raw\[(\d+)\]", k.source).group(1) for k in (across, along)]
    assert tile_a == [str(4 * 128 * 64 + 512), str(3 * 128 * 64 + 512)]  # (4 or 3 slices of 128 x 64, the slack)


def tf32_rounded(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to TF32 as the kernels round them (to nearest, ties away: cvt.rna)."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def tf32_truncated(values: np.ndarray) -> np.ndarray:
    """float32 values as wgmma reads them from local memory as TF32: their top 19 bits."""
    return (np.ascontiguousarray(values, np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("n, k, m, form, columns, settings", [
    (256, 192, 512, "relu(x @ y)", 32, {}), (200, 136, 264, "x @ y.T", 64, {}), (136, 100, 160, "x.T @ y", 32, {}),
    (128, 64, 128, "(2x) @ y", 32, {}), (136, 100, 160, "x.T @ y", 32, {"ZYX_TF32_ROUND_TILES": "0"}),
    (256, 192, 512, "relu(x @ y)", 32, {"ZYX_TF32_VECTOR_A": "1"}),
    (200, 136, 264, "x @ y", 64, {"ZYX_TF32_VECTOR_A": "1"}), (200, 136, 264, "x @ y.T", 64, {"ZYX_TF32_VECTOR_A": "1"})])
def test_tf32_products_computed_transposed_with_wgmma_emulated_on_pocl(monkeypatch, n, k, m, form, columns, settings):
    """A float32 product in TF32 on warpgroups, as printed, on PoCL (as above): the left tile read by descriptor as
    wgmma's b, rounded in place to nearest once each slice has landed (the emulation then truncates it to TF32 as
    the tensor cores read it: with ZYX_TF32_ROUND_TILES=0 that truncation is what counts), the right tile read
    into registers as its a, rounded to nearest, each warpgroup's columns in 64-column pieces (one, or two in
    128 x 256 blocks), the accumulators stored transposed: a right operand across k ([k][column] atoms of 32
    columns) with a fused relu; along k ([column][k]) with edges in every direction; a left operand lying across k
    (x.T: copied a float at a time into rows along k); a computed one (2x: staged through registers, rounded, into
    rows along k). With ZYX_TF32_VECTOR_A=1 the wgmma rows permuted, a right tile across k read a vector at a time.
    Exact up to float32 accumulation against numpy on the same rounded operands, so a misread element or rounding
    shows."""
    monkeypatch.setenv("ZYX_WGMMA_PRODUCER", "0")
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    rounding = "truncated" if settings.get("ZYX_TF32_ROUND_TILES") == "0" else "nearest"
    x, y = operands((k, n) if form == "x.T @ y" else (n, k), (m, k) if form == "x @ y.T" else (k, m), dtype="float32")
    out = {"relu(x @ y)": lambda: (x @ y).relu(), "x @ y.T": lambda: x @ y.T, "x.T @ y": lambda: x.T @ y,
           "(2x) @ y": lambda: (x * 2) @ y, "x @ y": lambda: x @ y}[form]()
    kernel = _tuned(out, Choice.of("tensor_cores", columns=columns, row_bytes=128, buffers=4, pipelined=1,
                                   warpgroup=1, split=1), TF32)
    products = [s for s in walk(kernel.ir.body) if isinstance(s, WarpgroupMma)]
    assert all(s.kind == "tf32" and s.n == 128 and len(s.a_registers) == 4 for s in products)
    assert len(products) == 4 * (columns // 32)  # 4 k8 steps a slice, a wgmma per 64 columns of the warpgroup's
    assert all(s.itemsize == 4 for s in walk(kernel.ir.body) if isinstance(s, AsyncCopy))
    widths = {s.out.width for s in walk(kernel.ir.body) if isinstance(s, LocalLoad)}
    vector = "ZYX_TF32_VECTOR_A" in settings and form != "x @ y.T"  # (a tile along k: its columns lie apart)
    assert widths == ({columns // 16} if vector else {1})  # a float per piece and row r, r + 8 at one k
    name, source = _emulated_source(kernel, monkeypatch)
    a, b = x.numpy(), y.numpy()
    got = _run_on_pocl(kernel, name, source, [a, b], (n, m), np.float32)
    left = tf32_rounded(2 * a) if form == "(2x) @ y" else (tf32_rounded if rounding == "nearest" else tf32_truncated)(
        a.T if form == "x.T @ y" else a)
    right = tf32_rounded(b.T if form == "x @ y.T" else b)
    expected = left.astype(np.float64) @ right.astype(np.float64)
    np.testing.assert_allclose(got, np.maximum(expected, 0) if form.startswith("relu") else expected, rtol=1e-5,
                               atol=1e-4)


def test_a_product_of_few_blocks_splits_k_into_float32_partials_on_warpgroups(monkeypatch):
    """768 x 768 outputs over 16384 tokens (GPT-2's attention-projection weight gradient): 36 blocks of 128 x 128 on
    132 SMs. k is cut in 8 chunks: a warpgroup kernel of float32 partials (288 blocks), its bf16 operands copied 16
    bytes at a time as the unsplit product's are (the cast to float32 under each product stays the half value's),
    then the root's kernel summing them (rounded to bf16 once, cast to float32 for the weight). With ZYX_TC_SPLIT=0,
    a TF32 product, or enough blocks: one kernel."""
    x, dy = operands((16384, 768), (16384, 768))
    units = dataclasses.replace(HOPPER, compute_units=132)
    kernels = schedule([(x.T @ dy).float().node], units)[0]
    assert len(kernels) == 2
    partial, total = kernels
    assert [(node.shape, node.dtype.name) for node in partial.outputs] == [((8, 768, 768, 1), "float32")]
    assert "m64n128k16.f32.bf16.bf16" in partial.source and partial.global_size // partial.local_size == 288
    copies = [s for s in walk(partial.ir.body) if isinstance(s, AsyncCopy)]
    assert copies and {(c.width, c.itemsize) for c in copies} == {(8, 2)}
    assert not any(isinstance(s, LocalStore) for s in walk(partial.ir.body))
    assert "mma" not in total.source and [node.dtype.name for node in total.outputs] == ["float32"]
    f, g = operands((16384, 768), (16384, 768), dtype="float32")
    assert len(schedule([(f.T @ g).node], dataclasses.replace(TF32, compute_units=132))[0]) == 1
    wide, _ = operands((16384, 3072), (1, 1))
    assert len(schedule([(x.T @ wide).node], units)[0]) == 1  # (96 blocks of 128 x 192)
    monkeypatch.setenv("ZYX_TC_SPLIT", "fill")  # (those too, where the waves say so: 4 chunks, 384 blocks in 3 waves)
    partial, _ = schedule([(x.T @ wide).node], units)[0]
    assert [node.shape for node in partial.outputs] == [(4, 768, 3072, 1)]
    monkeypatch.setenv("ZYX_TC_SPLIT", "0")
    assert len(schedule([(x.T @ dy).float().node], units)[0]) == 1
