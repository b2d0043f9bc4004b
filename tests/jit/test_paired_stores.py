"""Neighbouring outputs stored as one vector, neighbouring bfloat16 inputs read as one (transforms/paired_stores.py):
which Stores and Loads pair, where the vector is stored or read, and how it prints."""
from __future__ import annotations

from zyx.dtypes import bfloat16, float16, float32
from zyx.jit.kernel_ir import Alu, Axis, Extract, If, Kernel, Load, Loop, Pack, Reg, Role, Store
from zyx.jit.print_opencl import STATEMENTS, VALUES
from zyx.jit.symbolic import Expr
from zyx.jit.transforms.paired_stores import paired_loads, paired_stores
from zyx.trace.ops import Op

I = Expr.var("gid", 64) * 2  # an even index
A, B, C = (Reg(name, float32) for name in ("a", "b", "c"))


def paired(*body):
    kernel = Kernel("m", (), (Axis("gid", 64, Role.GLOBAL),), tuple(body))
    return paired_stores(kernel).body


def test_a_store_and_the_next_elements_become_one_vector_store_where_the_second_value_is_defined():
    relu = Alu(B, Op.MAX, (C, C))
    body = paired(Store("out", I, A, bfloat16), relu, Store("out", I + 1, B, bfloat16))
    pair = Reg("pair0", float32, 2)
    assert body == (relu, Pack(pair, (A, B)), Store("out", I, pair, bfloat16, "vector"))
    inside = paired(If(((I, "lt", 100),), (Store("out", I, A, float32), Store("out", I + 1, B, float32))))
    assert isinstance(inside[0].body[0], Pack)


def test_stores_to_two_buffers_in_turn_pair_each_buffers_neighbours():
    """Attention's forward stores its output to two buffers, element by element in turn: each buffer's neighbours
    pair (buffers are distinct: their params are restrict)."""
    D = Reg("d", float32)
    body = paired(Store("out", I, A, bfloat16), Store("copy", I, C, bfloat16), Store("out", I + 1, B, bfloat16),
                  Store("copy", I + 1, D, bfloat16))
    pairs = [s for s in body if isinstance(s, Store)]
    assert [(s.buffer, s.index, s.mode) for s in pairs] == [("out", I, "vector"), ("copy", I, "vector")]


def test_stores_stay_apart_where_a_vector_would_be_misplaced_or_reordered():
    apart = [
        (Store("out", I + 1, A, bfloat16), Store("out", I + 2, B, bfloat16)),  # an odd first index
        (Store("out", I, A, bfloat16), Store("other", I + 1, B, bfloat16)),  # another buffer
        (Store("out", I, A, bfloat16), Store("out", I + 1, B, float16)),  # another dtype
        (Store("out", I, A, bfloat16), Load(C, "out", I), Store("out", I + 1, B, bfloat16)),  # read between
        (Store("out", I, A, bfloat16), Store("out", I + 3, C, bfloat16), Store("out", I + 1, B, bfloat16)),
    ]
    for body in apart:
        assert paired(*body) == body


def test_pairs_print_as_one_store_of_two_elements():
    """A pair of 16-bit elements at an even index is one 32-bit word (vstore2 promised NVIDIA's compiler 2-byte
    alignment only: two stores); float32 pairs and pairs at an odd index stay vstore2."""
    pair = Reg("p", float32, 2)
    assert VALUES[Pack](Pack(pair, (A, B))) == "((float2)(a,b))"
    assert STATEMENTS[Store](Store("out", I, pair, bfloat16, "vector")) == \
        "((__global uint*)out)[gid] = (uint)(zyx_pack_bf16(p.s0,p.s1));"
    assert STATEMENTS[Store](Store("out", I, pair, float16, "vector")) == \
        "((__global uint*)out)[gid] = (uint)(zyx_pack_half(p.s0,p.s1));"
    assert STATEMENTS[Store](Store("out", I + 1, pair, bfloat16, "vector")) == \
        "vstore2((ushort2)(zyx_float_to_bf16(p.s0),zyx_float_to_bf16(p.s1)),0,out+(gid*2+1));"
    assert STATEMENTS[Store](Store("out", I, pair, float32, "vector")) == "vstore2(p,gid,out);"


def loads_paired(*body):
    return paired_loads(Kernel("m", (), (Axis("gid", 64, Role.GLOBAL),), tuple(body))).body


def test_a_bfloat16_load_and_the_next_elements_become_one_vector_load_read_first():
    """An epilogue reading a bf16 value at each of a pair of outputs (GELU's backward reads the pre-activation)
    reads both as one 32-bit word where the first is read; each value is a lane of it."""
    h0, h1 = Reg("h0", bfloat16), Reg("h1", bfloat16)
    scale = Alu(A, Op.MUL, (h0, h0))
    body = loads_paired(Load(h0, "pre", I), scale, Load(h1, "pre", I + 1))
    pair = Reg("duo0", bfloat16, 2)
    assert body == (Load(pair, "pre", I, mode="vector"), Extract(h0, pair, "s0"), scale, Extract(h1, pair, "s1"))
    assert VALUES[Load](body[0]) == "zyx_bf16_lanes_2(((__global const uint*)pre)[gid])"
    guard = ((I, "lt", 100),)
    guarded = loads_paired(Load(h0, "pre", I, guard), Load(h1, "pre", I + 1, guard))
    assert guarded[0] == Load(pair, "pre", I, guard, "vector")


def test_loads_stay_apart_where_a_vector_would_be_misplaced_or_read_stale():
    h0, h1 = Reg("h0", bfloat16), Reg("h1", bfloat16)
    apart = [
        (Load(h0, "pre", I + 1), Load(h1, "pre", I + 2)),  # an odd first index
        (Load(h0, "pre", I), Load(h1, "other", I + 1)),  # another buffer
        (Load(h0, "pre", I, ((I, "lt", 100),)), Load(h1, "pre", I + 1)),  # another guard
        (Load(h0, "pre", I), Store("pre", I + 1, A, bfloat16), Load(h1, "pre", I + 1)),  # written between
        (Load(Reg("f0", float32), "pre", I), Load(Reg("f1", float32), "pre", I + 1)),  # not bfloat16
    ]
    for body in apart:
        assert loads_paired(*body) == body


def test_a_value_rounded_where_cast_is_stored_from_its_float_source():
    """Storing rounds to nearest even, which leaves a rounded value as it is: a pair or an element stored from a
    cast to its dtype takes the cast's source (the epilogue converted each output twice, three times a pair), here
    and inside a branch after the cast; a half value computed in float (a bf16 register) counts as a source too."""
    RA, RB, H = Reg("ra", bfloat16), Reg("rb", bfloat16), Reg("h", bfloat16)
    casts = (Alu(RA, Op.CAST, (A,)), Alu(H, Op.ADD, (A, B)), Alu(RB, Op.CAST, (H,)))
    body = paired(*casts, Store("out", I, RA, bfloat16), Store("out", I + 1, RB, bfloat16),
                  If(((I, "lt", 100),), (Store("edge", I, RB, bfloat16),)))
    pair = Reg("pair0", float32, 2)
    assert body[3:] == (Pack(pair, (A, H)), Store("out", I, pair, bfloat16, "vector"),
                        If(((I, "lt", 100),), (Store("edge", I, H, bfloat16),)))
    assert STATEMENTS[Store](body[4]) == "((__global uint*)out)[gid] = (uint)(zyx_pack_bf16(pair0.s0,pair0.s1));"


def test_a_cast_whose_source_may_have_changed_or_whose_dtype_differs_is_stored_as_rounded():
    RA = Reg("ra", bfloat16)
    cast = Alu(RA, Op.CAST, (A,))
    kept = [
        (cast, Alu(A, Op.ADD, (B, C)), Store("out", I, RA, bfloat16)),  # its source defined again
        (cast, If(((I, "lt", 100),), (Alu(A, Op.ADD, (B, C)),)), Store("out", I, RA, bfloat16)),  # ... in a branch
        (cast, Store("out", I, RA, float16)),  # stored as another dtype
        (cast, Loop("k", 4, (Store("out", I, RA, bfloat16),))),  # a loop's body: nothing known from before
    ]
    for body in kept:
        assert paired(*body) == body
