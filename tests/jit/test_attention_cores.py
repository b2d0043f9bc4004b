"""The tensor-core attention forward (jit/attention_cores.py): where the scheduler takes it and where it keeps the
other fused kernels, and what it computes: on PoCL with mma.sync, ldmatrix and shfl.sync emulated in OpenCL C (each
statement's lanes hand their fragments over through local memory between barriers, then each lane computes its
share as the PTX ISA lays fragments out), against torch's CPU autocast; on an NVIDIA GPU of compute capability 8.0
or newer, the real kernel against torch on that GPU."""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zyx
from zyx.dtypes import float32, uint32
from zyx.jit import opencl_prelude, print_opencl, program_store, schedule as schedule_module
from zyx.jit.device_traits import GPU_VECTOR_WIDTH, DeviceTraits
from zyx.jit.kernel_ir import (FAST_DIV, FAST_EXP, Alu, AsyncCommit, AsyncCopy, AsyncWait, Barrier, If, LocalArray,
                               LocalStore, Loop, MatrixLoad, MatrixMultiply, PackHalves, Position, Reg, Role,
                               WarpShuffle, walk)
from zyx.jit.schedule import schedule
from zyx.trace.node import ARANGE
from zyx.trace.ops import Op

from test_attention_autocast import (DTYPES, as_float, assert_close, attention_arrays,  # noqa: F401 (fuse_any_size:
                                     fuse_any_size)                                    # an autouse fixture)
from test_attention_grad import spans
from test_attention_tiled import is_tiled
from test_attention_tiles import stops_walk

CORES = DeviceTraits(gpu=True, vector_width=GPU_VECTOR_WIDTH, local_memory=49152, tensor_cores=("bf16", "f16"),
                     group_launches=False)
KINDS = {"bfloat16": "bf16", "float16": "f16"}  # PTX's name of each, and the name of its packing helper
PACKED = {"bfloat16": "bf16", "float16": "half"}
CASES = {  # name: (batch, heads, queries, keys, head size, keyword arguments)
    "causal, the last block short, d=64": (1, 2, 100, 100, 64, {"is_causal": True}),
    "not causal, scaled, fewer queries than keys, d=32": (2, 1, 37, 130, 32, {"scale": 0.3}),
    "causal, several query blocks, d=16": (1, 1, 150, 150, 16, {"is_causal": True}),
}


@functools.lru_cache(maxsize=None)
def arrays_of(name):
    """attention_arrays of CASES[name]."""
    return attention_arrays(CASES[name], 7)


def zyx_step(device, name, dtype, stored_half=False, doubled_v=False):
    """The output (in the autocast dtype) and the gradients of sum(out * dO) for q, k, v (unrealized); q, k and v
    float32, or (`stored_half`) stored in the autocast dtype, as a product under autocast stores them; v doubled
    in the attention's trace where `doubled_v` (the torch reference then too)."""
    q, k, v, grad_out = (device.tensor(a) for a in arrays_of(name))
    if stored_half:
        q, k, v = (t.cast(DTYPES[dtype][0]).realize() for t in (q, k, v))
    with zyx.autocast(DTYPES[dtype][0]):
        out = zyx.nn.scaled_dot_product_attention(q, k, v * 2 if doubled_v else v, **CASES[name][-1])
    return out, (out * grad_out).sum().backward([q, k, v])


def torch_step(name, dtype, device="cpu", doubled_v=False):
    """torch's output and gradients under its autocast on `device`, as float32 arrays."""
    q, k, v = (torch.tensor(a, requires_grad=True, device=device) for a in arrays_of(name)[:3])
    with torch.autocast(device, dtype=DTYPES[dtype][1]):
        out = F.scaled_dot_product_attention(q, k, v * 2 if doubled_v else v, **CASES[name][-1])
    grads = torch.autograd.grad((out.float() * torch.tensor(arrays_of(name)[3], device=device)).sum(), [q, k, v])
    return out.detach().float().cpu().numpy(), [g.cpu().numpy() for g in grads]


def on_cores(kernel) -> bool:
    return any(isinstance(s, MatrixMultiply) for s in walk(kernel.ir.body))


def forward_kernel(out, traits):
    kernels, _ = schedule([out.node], traits)
    assert len(kernels) == 1 and kernels[0].ir.kind == "a", [k.name for k in kernels]
    return kernels[0]


# ---- where it applies ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_attention_on_a_device_with_tensor_cores_takes_the_tensor_core_kernel(dtype):
    out, _ = zyx_step(zyx.CPU(), "causal, the last block short, d=64", dtype)
    kernel = forward_kernel(out, CORES)
    kind = KINDS[dtype]
    assert on_cores(kernel) and kernel.local_size == 128 and kernel.global_size == 2 * 2 * 128
    assert f"mma.sync.aligned.m16n8k16.row.col.f32.{kind}.{kind}.f32" in kernel.source
    assert "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" in kernel.source  # V's B fragments
    assert "shfl.sync.bfly.b32" in kernel.source and f"zyx_pack_{PACKED[dtype]}(" in kernel.source
    shuffles = [s for s in walk(kernel.ir.body) if isinstance(s, WarpShuffle)]
    assert sorted({s.mask for s in shuffles}) == [1, 2]


def test_half_attention_outside_autocast_takes_the_kernels_autocast_gives():
    """bf16 q, k, v without autocast: the softmax is computed in float32 and rounded once (as PyTorch's of a half
    tensor), the pattern autocast gives, so the forward and gradients take the same (tensor-core) kernels."""
    cpu = zyx.CPU()
    q, k, v = (cpu.tensor(a).cast(zyx.bfloat16).realize()
               for a in arrays_of("causal, the last block short, d=64")[:3])

    def kernel_names(enabled):
        with zyx.autocast(zyx.bfloat16, enabled=enabled):
            out = zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True)
        grads = (out.float() * 2).sum().backward([q, k, v])
        kernels, _ = schedule([out.node, *(g.node for g in grads)], CORES)
        return [kernel.name for kernel in kernels], sum(on_cores(kernel) for kernel in kernels)

    assert kernel_names(False) == kernel_names(True)
    assert kernel_names(False)[1] >= 3


@pytest.mark.parametrize("autocast", [True, False])
def test_half_causal_attention_kernels_stop_their_walks(autocast):
    """The causal mask is found through the cast up to float32 of a half softmax (outside autocast, and inside
    scaled_dot_product_attention under autocast): the forward's and the gradients' tensor-core kernels stop at the
    first block of keys the mask hides (W7's lost its stops when the softmax was first widened)."""
    cpu = zyx.CPU()
    q, k, v = (cpu.tensor(a).cast(zyx.bfloat16).realize()
               for a in arrays_of("causal, the last block short, d=64")[:3])
    with zyx.autocast(zyx.bfloat16, enabled=autocast):
        out = zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True)
    grads = (out.float() * 2).sum().backward([q, k, v])
    kernels, _ = schedule([out.node, *(g.node for g in grads)], CORES)
    walks = [kernel for kernel in kernels if kernel.ir.kind == "a"]
    assert len(walks) >= 3 and all(stops_walk(kernel) for kernel in walks), [k.name for k in walks]


@functools.lru_cache(maxsize=None)
def causal_walks():
    """The tensor-core kernels (forward, dK with dV, dQ) of a causal bf16 training step of several query blocks."""
    cpu = zyx.CPU()
    q, k, v = (cpu.tensor(a).cast(zyx.bfloat16).realize()
               for a in arrays_of("causal, several query blocks, d=16")[:3])
    with zyx.autocast(zyx.bfloat16):
        out = zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True)
    grads = (out.float() * 2).sum().backward([q, k, v])
    kernels, _ = schedule([out.node, *(g.node for g in grads)], CORES)
    walks = [kernel for kernel in kernels if kernel.ir.kind == "a"]
    assert len(walks) >= 3 and all(on_cores(kernel) for kernel in walks)
    return walks


def test_a_causal_masks_positions_are_computed_not_read():
    """The causal mask compares the arange leaf's values (positions) at each score and at each block's stop test:
    the tensor-core kernels compute them from where they are read (Position) instead of reading the leaf."""
    walks = causal_walks()
    for kernel in walks:
        assert not any(p.node.op is Op.BUFFER and p.node.arg == ARANGE for p in kernel.ir.params), kernel.name
        assert any(isinstance(s, Position) for s in walk(kernel.ir.body)), kernel.name


def test_exponentials_and_divisions_are_approximate_and_packed_weights_rounded_once():
    """The tensor-core kernels' values are half precision: their exponentials (the online softmax's, P's in the
    backward: exp(x - m) of both terms, in either copy of a block) and divisions (P = exp(X - m) / l) are the
    hardware's approximations (FAST_EXP, FAST_DIV); a weight rounded to the staged dtype is packed from its float
    value (PackHalves rounds it the same) and the causal mask's select of a rounded score is not rounded again."""
    walks = causal_walks()
    for kernel in walks:
        statements = list(walk(kernel.ir.body))
        ops = [s.op for s in statements if isinstance(s, Alu)]
        assert FAST_EXP in ops and Op.EXP not in ops and Op.DIV not in ops, kernel.name
        assert all(len(s.args) == 2 for s in statements if isinstance(s, Alu) and s.op == FAST_EXP)  # exp(x - m)
        rounded = {s.out.name for s in statements if isinstance(s, Alu) and s.op is Op.CAST}
        packed = [a for s in statements if isinstance(s, PackHalves) for a in (s.low, s.high)]
        assert packed and not any(isinstance(a, Reg) and a.name in rounded for a in packed), kernel.name
        selected = {s.out.name for s in statements if isinstance(s, Alu) and s.op is Op.WHERE}
        assert selected and not any(isinstance(s, Alu) and s.op is Op.CAST and s.out.dtype.is_narrow_float
                                    and s.args[0].name in selected for s in statements), kernel.name
    assert any(FAST_DIV in [s.op for s in walk(kernel.ir.body) if isinstance(s, Alu)] for kernel in walks[1:])


def test_blocks_the_causal_mask_hides_nothing_of_are_computed_without_its_selects():
    """A block of keys no score of which the causal mask hides from any row of the group (below the diagonal: most
    blocks of a walk) takes a copy of the block's statements without the mask's selects, the others the masked copy;
    forward and gradients match torch either way (the tests above, several query blocks)."""
    walks = causal_walks()
    for kernel in walks:
        branches = [s for s in walk(kernel.ir.body) if isinstance(s, If) and s.when is not None
                    and any(isinstance(t, MatrixMultiply) for t in s.body)]
        selects = [sum(isinstance(t, Alu) and t.op is Op.WHERE for t in walk(b.body)) for b in branches]
        assert len(branches) == 2 and selects[0] == 0 and selects[1] > 0, (kernel.name, selects)


def test_outputs_of_whole_blocks_are_stored_two_a_word():
    """Where queries and keys fill whole blocks (W7's), the forward's and the gradients' tensor-core kernels store
    neighbouring outputs of the mma layout as one 32-bit word (paired_stores: 2-byte stores were a third of W7's
    short products' time on an H100), the forward's output too, which it stores to two buffers in turn; q, k, v
    stored in bf16, as autocast's products store them."""
    cpu = zyx.CPU()
    q, k, v, grad_out = (cpu.tensor(a) for a in attention_arrays((1, 2, 128, 128, 64, {"is_causal": True}), 7))
    q, k, v = (t.cast(zyx.bfloat16).realize() for t in (q, k, v))
    with zyx.autocast(zyx.bfloat16):
        out = zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True)
    grads = (out.float() * grad_out).sum().backward([q, k, v])
    kernels, _ = schedule([out.node, *(g.node for g in grads)], CORES)
    cores = [kernel for kernel in kernels if on_cores(kernel)]
    assert len(cores) >= 2
    for kernel in cores:  # (a row's statistics are one value; dV's transpose has no neighbours in the mma layout)
        body = kernel.source.split("__kernel")[1]
        assert body.count("((__global uint*)out") >= 16, kernel.name


def test_where_the_tensor_core_kernel_does_not_apply_the_kernel_is_the_one_without_tensor_cores(monkeypatch):
    """float32 attention, a head size no multiple of 16 (the staged kernel then), a device without 16-bit tensor
    cores, or the tiled form asked for: the same kernel as on a device without tensor cores."""
    cpu = zyx.CPU()
    q, k, v = (cpu.tensor(a) for a in arrays_of("causal, the last block short, d=64")[:3])
    cases = [(zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True), CORES)]
    narrow = cpu.tensor(np.ones((1, 2, 100, 24), np.float32))
    with zyx.autocast(zyx.bfloat16):
        cases.append((zyx.nn.scaled_dot_product_attention(narrow, narrow, narrow, is_causal=True), CORES))
        bf16 = zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True)
    cases.append((bf16, dataclasses.replace(CORES, tensor_cores=("tf32",))))
    without = dataclasses.replace(CORES, tensor_cores=())
    for out, traits in cases:
        kernel = forward_kernel(out, traits)
        assert not on_cores(kernel) and kernel.name == forward_kernel(out, without).name
    assert [is_tiled(forward_kernel(out, traits)) for out, traits in cases] == [True, False, True]
    monkeypatch.setenv("ZYX_ATTENTION_FORM", "tiled")
    assert is_tiled(forward_kernel(bf16, CORES))


def test_a_training_step_the_tensor_core_kernels_do_not_take_keeps_the_kernels_without_tensor_cores():
    """float32 attention and a 16-bit one with a head size no multiple of 16: the same kernels (dK and dV apart,
    the staged backward) as on a device without tensor cores."""
    cpu = zyx.CPU()
    q, k, v, grad_out = (cpu.tensor(a) for a in arrays_of("causal, the last block short, d=64"))
    out = zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True)
    narrow = cpu.tensor(arrays_of("causal, the last block short, d=64")[0][..., :24])
    with zyx.autocast(zyx.bfloat16):
        half = zyx.nn.scaled_dot_product_attention(narrow, narrow, narrow, is_causal=True)
    without = dataclasses.replace(CORES, tensor_cores=())
    for result, inputs in ((out, [q, k, v]), (half, [narrow])):
        nodes = [result.node] + [g.node for g in (result.float() * 2).sum().backward(inputs)]
        kernels = schedule(nodes, CORES)[0]
        assert not any(map(on_cores, kernels))
        assert [k.name for k in kernels] == [k.name for k in schedule(nodes, without)[0]]


# ---- on PoCL, the warp's instructions emulated ---------------------------------------------------------------------
EMULATION = """static float zyx_emu_half(uint bits, int kind) {
  ushort h = (ushort)bits;
  return kind ? vload_half(0, (__private const half*)&h) : as_float(bits << 16);
}
/* Element (row, column) of a warp's m16n8k16 product, from its lanes' A words (4 a lane) and B words (2 a lane) as
   the PTX ISA lays them out: A[r][k] in lane (r % 8) * 4 + (k % 8) / 2, word r / 8 + 2 (k / 8), half k % 2; B[k][n]
   in lane n * 4 + (k % 8) / 2, word k / 8, half k % 2. */
static float zyx_emu_mma(__local const uint* a, __local const uint* b, int warp, int row, int column, int kind) {
  float sum = 0.0f;
  for (int k = 0; k < 16; k++) {
    uint left = a[(warp + (row % 8) * 4 + (k % 8) / 2) * 4 + row / 8 + 2 * (k / 8)] >> (16 * (k % 2));
    uint right = b[(warp + column * 4 + (k % 8) / 2) * 2 + k / 8] >> (16 * (k % 2));
    sum += zyx_emu_half(left & 0xffffu, kind) * zyx_emu_half(right & 0xffffu, kind);
  }
  return sum;
}
"""
ITEMS = 8 * 32  # (the most a group has: ZYX_ATTENTION_WARPS=8)
SCRATCH = (LocalArray("emu_a", uint32, ITEMS * 4), LocalArray("emu_b", uint32, ITEMS * 2),
           LocalArray("emu_x", float32, ITEMS))
BARRIER = "barrier(CLK_LOCAL_MEM_FENCE);"


def _emulated_load(s: MatrixLoad) -> str:
    """ldmatrix x4: lane l takes, of matrix j (rows named by lanes 8j .. 8j + 7), row l / 4's elements 2 (l % 4) and
    2 (l % 4) + 1, or transposed column l / 4's rows 2 (l % 4) and 2 (l % 4) + 1."""
    if s.transposed:
        word = "a[emu_a[w + 8 * j + 2 * (l % 4)] + l / 4] | ((uint)a[emu_a[w + 8 * j + 2 * (l % 4) + 1] + l / 4] << 16)"
    else:
        word = "a[emu_a[w + 8 * j + l / 4] + 2 * (l % 4)] | ((uint)a[emu_a[w + 8 * j + l / 4] + 2 * (l % 4) + 1] << 16)"
    return (f"uint4 {s.out.name}; {{ uint t[4]; int w = lid & ~31, l = lid % 32; "
            f"__local const ushort* a = (__local const ushort*){s.array}; emu_a[lid] = (uint)({s.index.render()}); "
            f"{BARRIER} for (int j = 0; j < 4; j++) t[j] = {word}; {BARRIER} "
            f"{s.out.name} = (uint4)(t[0], t[1], t[2], t[3]); }}")


def _emulated_mma(s: MatrixMultiply) -> str:
    kind = int(s.kind == "f16")
    words = [f"emu_a[lid * 4 + {i}] = {print_opencl.operand(word)};" for i, word in enumerate(s.a)]
    words += [f"emu_b[lid * 2 + {i}] = {print_opencl.operand(word)};" for i, word in enumerate(s.b)]
    sums = [f"{acc.name} += zyx_emu_mma(emu_a, emu_b, w, l / 4 + {8 * (r // 2)}, 2 * (l % 4) + {r % 2}, {kind});"
            for r, acc in enumerate(s.acc)]
    return f"{{ int w = lid & ~31, l = lid % 32; {' '.join(words)} {BARRIER} {' '.join(sums)} {BARRIER} }}"


def _emulated_shuffle(s: WarpShuffle) -> str:
    """shfl.sync.bfly through local array emu_x (floats: a uint32 word's bits kept as they are)."""
    kind = print_opencl.register_type(s.out.dtype, 1)
    return (f"{kind} {s.out.name}; {{ emu_x[lid] = as_float({print_opencl.operand(s.value)}); {BARRIER} "
            f"{s.out.name} = as_{kind}(emu_x[(lid & ~31) | ((lid % 32) ^ {s.mask})]); {BARRIER} }}")


def _emulated_copy(s: AsyncCopy) -> str:
    """cp.async as a plain copy (the stages here are unswizzled and every copy unguarded)."""
    assert not s.swizzle and not s.guard
    return (f"{{ __local ushort* d = ((__local ushort*){s.array}) + {s.index.render()}; "
            f"__global const ushort* r = ((__global const ushort*){s.buffer}) + {s.source.render()}; "
            f"for (int e = 0; e < {s.width}; e++) d[e] = r[e]; }}")


def _emulating_printer(kernel):
    """print_opencl's kernel, with the scratch arrays the emulations share where it multiplies on tensor cores, or
    the shuffles' alone where it only shuffles (a row's work group: as many items as the group has)."""
    if any(isinstance(s, MatrixMultiply) for s in walk(kernel.body)):
        return print_opencl.print_kernel(dataclasses.replace(kernel, body=(*SCRATCH, *kernel.body)))
    if any(isinstance(s, WarpShuffle) for s in walk(kernel.body)):
        scratch = LocalArray("emu_x", float32, kernel.axis(Role.LOCAL).size)
        return print_opencl.print_kernel(dataclasses.replace(kernel, body=(scratch, *kernel.body)))
    return print_opencl.print_kernel(kernel)


@pytest.fixture
def emulated(dev, monkeypatch, tmp_path):
    """The OpenCL device (PoCL) scheduling for CORES, warp instructions printed as emulations; its programs kept in
    a store of their own (they hold emulated sources)."""
    for statement, printer in ((MatrixLoad, _emulated_load), (MatrixMultiply, _emulated_mma),
                               (WarpShuffle, _emulated_shuffle), (AsyncCopy, _emulated_copy),
                               (AsyncCommit, lambda s: ";"), (AsyncWait, lambda s: ";")):
        monkeypatch.setitem(print_opencl.STATEMENTS, statement, printer)
    _, launch, version = schedule_module.PRINTERS["opencl"]
    monkeypatch.setitem(schedule_module.PRINTERS, "opencl", (_emulating_printer, launch, version))
    monkeypatch.setattr(opencl_prelude, "CALLED_HELPERS",
                        [*opencl_prelude.CALLED_HELPERS, (("zyx_emu_mma",), [EMULATION])])
    monkeypatch.setenv("ZYX_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(program_store, "_default", [])
    monkeypatch.setattr(dev, "traits", dataclasses.replace(CORES, group_size=dev.traits.group_size))
    dev.forget_programs()
    yield dev
    dev.forget_programs()


FORWARD_CASES = [("bfloat16", name) for name in CASES] + [("float16", next(iter(CASES)))]


def test_k_and_v_stored_in_16_bits_are_copied_by_cp_async_a_block_ahead(monkeypatch):
    """Each row's 8 elements from a multiple of 8 consecutive in the buffer: one 16-byte cp.async each, the first
    block's before the loop and each next one's in it, into the other half of stages twice as long (q, scaled by
    the trace, is staged element by element). ZYX_ATTENTION_CP_ASYNC=0: 16-byte loads and stores, as stored."""
    out, _ = zyx_step(zyx.CPU(), "causal, the last block short, d=64", "bfloat16", stored_half=True)
    kernel = forward_kernel(out, CORES)
    loop = next(s for s in kernel.ir.body if isinstance(s, Loop) and any(isinstance(c, AsyncCopy) for c in s.body))
    ahead = [s for s in loop.body if isinstance(s, AsyncCopy)]
    first = [s for s in kernel.ir.body if isinstance(s, AsyncCopy)]
    assert len(ahead) == len(first) == 2 * 64 * 64 // 8 // 128 and len({s.array for s in ahead}) == 2  # k and v
    assert loop.body[:2] == (AsyncWait(0), Barrier()) and not any(isinstance(s, Barrier) for s in loop.body[2:])
    monkeypatch.setenv("ZYX_ATTENTION_CP_ASYNC", "0")
    kernel = forward_kernel(out, CORES)
    wide = [s for s in walk(kernel.ir.body) if isinstance(s, LocalStore) and s.value.width == 8]
    assert len(wide) == len(first) and not any(isinstance(s, AsyncCopy) for s in walk(kernel.ir.body))


def test_packed_heads_gradient_kernels_stage_each_walked_row_once_a_block_ahead():
    """GPT-2's heads of one packed bf16 projection: dV's product, laid out head dimension last for the packed
    gradient (rewrite._width_last), reads dO through a permute of its own, and its stage is the dP nest's still:
    the dK-dV kernel stages q and dO once each, copied by cp.async a block ahead, and stores both head dimension
    last; the dQ kernel stages k (read by the scores' product and by dS k, through indices the simplifier brings to
    one form: 16 blocks of 12 heads in 2 batch entries, as W7's) and v once each, a block ahead too."""
    batch, time, heads, head = 2, 1024, 12, 64
    rng, cpu = np.random.default_rng(3), zyx.CPU()
    packed, projection = (cpu.tensor(rng.standard_normal(shape, dtype=np.float32)).cast(zyx.bfloat16).realize()
                          for shape in ((batch, time, 3 * heads * head), (heads * head, 16)))
    q, k, v = packed.reshape(batch, time, 3, heads, head).permute(2, 0, 3, 1, 4)
    with zyx.autocast(zyx.bfloat16):
        out = zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=True)
        loss = (out.transpose(1, 2).reshape(batch, time, heads * head) @ projection).float().sum()
    grad = loss.backward([packed])[0]  # (dO a product's bf16 output, as the projection's gradient stores it)
    kernels, _ = schedule([grad.node], CORES)
    keys = next(k for k in kernels if k.ir.kind == "a" and len(k.outputs) == 2)
    stages = [s for s in walk(keys.ir.body) if isinstance(s, LocalArray) and s.name.startswith("stage")]
    assert on_cores(keys) and len(stages) == 2 and any(isinstance(s, AsyncCopy) for s in walk(keys.ir.body))
    assert [node.shape[-1] for node in keys.outputs] == [head, head]
    queries = next(k for k in kernels if k.ir.kind == "a" and len(k.outputs) == 1 and k is not keys
                   and k.outputs[0].shape[-1] == head and on_cores(k))
    stages = [s for s in walk(queries.ir.body) if isinstance(s, LocalArray) and s.name.startswith("stage")]
    assert len(stages) == 2 and any(isinstance(s, AsyncCopy) for s in walk(queries.ir.body))


# Emulated, a case takes PoCL minutes: the representative ones here (each dtype, case and staging once); every
# case of FORWARD_CASES runs on the GPU itself below.
EMULATED_FORWARD = [("bfloat16", list(CASES)[0], False), ("float16", list(CASES)[1], True),
                    ("bfloat16", list(CASES)[2], True)]


@pytest.mark.slow
@pytest.mark.parametrize("dtype, name, stored_half", EMULATED_FORWARD)
def test_the_forward_with_warp_instructions_emulated_matches_torch(emulated, dtype, name, stored_half):
    out, _ = zyx_step(emulated, name, dtype, stored_half)
    assert on_cores(forward_kernel(out, emulated.traits))
    out.realize()
    assert_close(as_float(out), torch_step(name, dtype)[0], dtype, "against torch")


@pytest.mark.slow
def test_a_computed_v_is_staged_in_the_block_while_k_comes_by_cp_async(emulated):
    """k stored in 16 bits, v doubled in the trace: k's blocks copied a block ahead, v's in the block between two
    barriers."""
    name = list(CASES)[2]
    out, _ = zyx_step(emulated, name, "bfloat16", stored_half=True, doubled_v=True)
    kernel = forward_kernel(out, emulated.traits)
    loop = next(s for s in kernel.ir.body if isinstance(s, Loop) and any(isinstance(c, AsyncCopy) for c in s.body))
    assert len({s.array for s in loop.body if isinstance(s, AsyncCopy)}) == 1
    assert sum(isinstance(s, Barrier) for s in loop.body) == 2
    out.realize()
    assert_close(as_float(out), torch_step(name, "bfloat16", doubled_v=True)[0], "bfloat16", "against torch")


@pytest.mark.slow
@pytest.mark.parametrize("dtype, name, stored_half", [("bfloat16", list(CASES)[2], True)])  # (the others on the GPU)
def test_gradients_from_the_statistics_it_stores_match_torch(emulated, dtype, name, stored_half):
    """A training step in three attention kernels on tensor cores: the forward storing the row statistics, dK with
    dV (one walk over the queries), and dQ, both recomputing P from the statistics; with q, k, v stored in 16 bits
    the forward and dQ copy k and v by cp.async (dQ's stages hold k and v as stored)."""
    out, grads = zyx_step(emulated, name, dtype, stored_half)
    assert_three_kernels_on_cores(out, grads, emulated.traits, name)
    assert_step_matches(out, grads, torch_step(name, dtype), dtype)


def test_eight_warps_own_128_rows_and_stage_them_where_the_walked_blocks_go(monkeypatch):
    """ZYX_ATTENTION_WARPS=8: the forward, dK-dV and dQ kernels of groups of 8 warps (256 items) owning 128 rows;
    the backward stages its 128 item rows in the walked blocks' arrays before the walk, so each holds 128 rows
    (two blocks of 64, double-buffered); any other setting is refused naming the choices."""
    monkeypatch.setenv("ZYX_ATTENTION_WARPS", "8")
    name = list(CASES)[2]
    out, grads = zyx_step(zyx.CPU(), name, "bfloat16", stored_half=True)
    kernels, _ = schedule([out.node] + [g.node for g in grads], CORES)
    fused = [k for k in kernels if k.ir.kind == "a"]
    assert len(fused) == 3 and all(on_cores(k) and k.local_size == 256 for k in fused)
    stages = [s for k in fused[1:] for s in k.ir.body if isinstance(s, LocalArray) and s.name.startswith("stage")]
    assert stages and all(s.size == 128 * (16 + 8) for s in stages)  # (128 rows of d = 16, padded by 8)
    monkeypatch.setenv("ZYX_ATTENTION_WARPS", "6")
    with pytest.raises(ValueError, match="ZYX_ATTENTION_WARPS='6': expected one of 4, 8"):
        schedule([out.node], CORES)


@pytest.mark.long  # (an opt-in setting's variant of the test above, 30 s on 2 cores)
def test_eight_warps_compute_the_step_with_warp_instructions_emulated(emulated, monkeypatch):
    """ZYX_ATTENTION_WARPS=8's three kernels run through the emulated warp instructions against torch: 150 rows
    in two groups of 128 (the last short), the causal diagonal crossing two blocks of 64 keys in each."""
    monkeypatch.setenv("ZYX_ATTENTION_WARPS", "8")
    name = list(CASES)[2]
    out, grads = zyx_step(emulated, name, "bfloat16", stored_half=True)
    assert_step_matches(out, grads, torch_step(name, "bfloat16"), "bfloat16")


def assert_three_kernels_on_cores(out, grads, traits, name):
    """The step's attention kernels: the forward storing the row statistics, dK with dV (one walk over the
    queries) and dQ, all on tensor cores, and no queries x keys buffer."""
    kernels, _ = schedule([out.node] + [g.node for g in grads], traits)
    fused = [k for k in kernels if k.ir.kind == "a"]
    assert len(fused) == 3 and all(map(on_cores, fused)) and sorted(len(k.outputs) for k in fused)[1:] == [2, 4]
    queries, keys = CASES[name][2:4]
    assert not [node for k in kernels for node in k.outputs if spans(node.shape, queries, keys)], "a T x T buffer"


def assert_step_matches(out, grads, expected, dtype):
    zyx.realize(out, *grads)
    assert_close(as_float(out), expected[0], dtype, "output")
    for found, wanted, what in zip(grads, expected[1], ("dq", "dk", "dv")):
        assert_close(found.numpy(), wanted, dtype, what)


# ---- on an NVIDIA GPU ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cores(cores):
    """conftest's device with tensor cores, where torch has a CUDA device to compare with."""
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device to compare with")
    return cores


@pytest.mark.parametrize("dtype, name", FORWARD_CASES)
def test_on_the_gpu_the_kernel_and_its_gradients_match_torchs_cuda_autocast(cores, dtype, name):
    out, grads = zyx_step(cores, name, dtype)
    assert on_cores(forward_kernel(out, cores.traits))
    assert_three_kernels_on_cores(out, grads, cores.traits, name)
    assert_step_matches(out, grads, torch_step(name, dtype, "cuda"), dtype)
