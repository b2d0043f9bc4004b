"""The kernel IR itself: each transform, applied to small lowered kernels, computes what the untransformed
kernel computes; the printer's output compiles and runs on the OpenCL device."""
import math
import re

import numpy as np
import pyopencl as cl
import pytest

import zyx
from zyx.dtypes import float32
from zyx.jit.choices import Choice
from zyx.jit.kernel_ir import (FAST_DIV, FAST_EXP, Alu, Barrier, Kernel, Load, Loop, Reg, simplify_cond, substitute,
                               walk)
from zyx.jit.lower import lower
from zyx.jit.matmul import LocalTileLowering, plan_local_tiles
from zyx.jit.print_opencl import print_kernel
from zyx.jit.rows import lower_rows
from zyx.jit.schedule import schedule
from zyx.jit.symbolic import Expr
from zyx.jit.tiling import hosted_matmul
from zyx.jit.transforms.approximate_math import approximate_math
from zyx.jit.transforms.double_buffer import double_buffer
from zyx.jit.transforms import group
from zyx.jit.transforms.group import COLUMNS, column_outputs, group_reductions
from zyx.jit.transforms.unroll import UNROLLED_STATEMENTS, unroll_reductions
from zyx.jit.transforms.upcast import upcast
from zyx.jit.transforms.vector import vectorize
from zyx.trace.ops import Op

RNG = np.random.default_rng(5)


@pytest.fixture(autouse=True)
def column_groups_of_small_kernels(monkeypatch):
    """The small column sums here get groups of adjacent columns too (the device needs COLUMN_MIN_GROUPS)."""
    monkeypatch.setattr(group, "COLUMN_MIN_GROUPS", 1)

CASES = {  # (build, input shapes): each kernel fuses everything into the one output
    "elementwise": (lambda x, y: ((x * 1.5 + y).relu() * x - y / 3).exp().tanh(), ((8, 32), (8, 32))),
    "broadcast and pad": (lambda x, y: x.pad(((0, 0), (3, 5)), value=-2.0) * y[0] + y[:, :1], ((8, 24), (8, 32))),
    "row sum": (lambda x, y: (x * y).sum(-1) + 1, ((8, 64), (8, 64))),
    "column max": (lambda x, y: (x.exp() - y).max(0), ((40, 32), (40, 32))),
    "column sum": (lambda x, y: (x * y[:, :1]).sum(0) * 2 + x[0], ((37, 24), (37, 24))),  # 37 rows: slices past the end
    "masks": (lambda x, y: ((x > y) & (y < 0.5)).where(x, y * 2), ((8, 16), (8, 16))),
}
TRANSFORMS = {
    "unroll by 8": lambda k, space: unroll_reductions(k, lambda trips: 8 if trips >= 16 else 1),
    "unroll by 3": lambda k, space: unroll_reductions(k, lambda trips: 3),
    "vector lanes": lambda k, space: vectorize(k, 16),
    "vector lanes along reductions": lambda k, space: vectorize(k, 16, uniform=True),
    "float4 lanes (GPUs)": lambda k, space: vectorize(k, 4),
    "work groups": lambda k, space: group_reductions(k, 16),
    "work groups past the end": lambda k, space: group_reductions(k, 64),
    "register tiles": lambda k, space: upcast(k, space, {0: 2}),
}

ROW_CASES = {  # (build, input shapes): row kernels (rows.py), their reductions a pass each, then the outputs
    "softmax rows": (lambda x, y: (x + y).softmax(-1), ((6, 40), (1, 40))),
    "normalized rows": (lambda x, y: (x - x.mean(-1, keepdim=True)) / ((x * x).sum(-1, keepdim=True) + 1).sqrt() * y,
                        ((5, 37), (1, 37))),
}
ROW_TRANSFORMS = {
    "vector lanes along the row, scalar tails": lambda k: vectorize(k, 16, uniform=True, tails=True),
    "a work group per row": lambda k: group_reductions(k, 16),
    "a work group per row, float4 lanes": lambda k: float4_groups(k),
    "unroll by 3": lambda k: unroll_reductions(k, lambda trips: 3),
}



def float4_groups(kernel):
    """float4 lanes along the row, then a work group of 8 items per row (GPUs' row kernels); None where the
    row is not whole float4s."""
    vector = vectorize(kernel, 4, uniform=True)
    return vector and group_reductions(vector, 8)


NOT_APPLICABLE = {  # (case, transform) pairs where a transform says it does not apply, and why
    ("row sum", "vector lanes"),                              # 8 outputs: not a whole vector of 16
    ("row sum", "float4 lanes (GPUs)"),                       # lanes a row apart in the loop: gathers
    ("column max", "vector lanes along reductions"),          # 40 rows: not whole vectors of 16
    ("column sum", "vector lanes"),                           # 24 outputs: not whole vectors of 16
    ("column sum", "vector lanes along reductions"),          # 37 rows: not whole vectors of 16
    *((case, "vector lanes along reductions") for case in ("elementwise", "broadcast and pad", "masks")),  # no loop
    ("normalized rows", "a work group per row, float4 lanes"),  # rows of 37: not whole float4s (no tails there)
}


def lowered(name):
    build, shapes = {**CASES, **ROW_CASES}[name]
    arrays = [RNG.standard_normal(shape).astype(np.float32) for shape in shapes]
    tensors = [zyx.CPU().tensor(a) for a in arrays]
    root = build(*tensors).node
    data = {id(t.node): a for t, a in zip(tensors, arrays)}
    if name in ROW_CASES:
        return lower_rows(root, {id(root): root}, set(), root.shape[-1]), data, build(*tensors).numpy()
    return lower(root, {id(root): root}, set()), data, build(*tensors).numpy()


def run(kernel, data, output_shape):
    """Launch the printed kernel on the OpenCL device; what it stores."""
    runtime = zyx.OpenCL().runtime
    name, source = print_kernel(kernel)
    program = cl.Program(runtime.context, source).build()
    args, result = [], None
    for param in kernel.params:
        if param.kind == "load":
            args.append(cl.Buffer(runtime.context, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR,
                                  hostbuf=data[id(param.node)]))
        else:
            result = np.zeros(output_shape, param.dtype.np)
            out = cl.Buffer(runtime.context, cl.mem_flags.WRITE_ONLY, size=result.nbytes)
            args.append(out)
    global_size, local_size = kernel.launch
    getattr(program, name)(runtime.queue, (global_size,), (local_size,) if local_size else None, *args)
    cl.enqueue_copy(runtime.queue, result, out)
    return result


@pytest.mark.parametrize("case", CASES)
def test_printed_kernel_compiles_and_computes_the_trace(case):
    kernel, data, reference = lowered(case)
    np.testing.assert_allclose(run(kernel.ir, data, reference.shape), reference, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("case", CASES)
def test_transform_computes_what_the_untransformed_kernel_computes(case, transform):
    kernel, data, reference = lowered(case)
    shaped = TRANSFORMS[transform](kernel.ir, kernel.space)
    if shaped is None:
        assert (case, transform) in NOT_APPLICABLE
        return
    plain = run(kernel.ir, data, reference.shape)
    np.testing.assert_allclose(run(shaped, data, reference.shape), plain, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("transform", ROW_TRANSFORMS)
@pytest.mark.parametrize("case", ROW_CASES)
def test_row_kernel_transforms_compute_what_the_untransformed_row_kernel_computes(case, transform):
    kernel, data, reference = lowered(case)
    plain = run(kernel.ir, data, reference.shape)
    np.testing.assert_allclose(plain, reference, rtol=2e-5, atol=2e-6)
    shaped = ROW_TRANSFORMS[transform](kernel.ir)
    if shaped is None:
        assert (case, transform) in NOT_APPLICABLE
        return
    np.testing.assert_allclose(run(shaped, data, reference.shape), plain, rtol=2e-5, atol=2e-6)


PRODUCTS = {"slices, the last past k's end": (70, 37, 45), "one slice": (40, 5, 33)}  # n, k, m


@pytest.mark.parametrize("n,k,m", PRODUCTS.values(), ids=PRODUCTS)
def test_double_buffered_tiles_compute_what_the_single_buffered_product_computes(n, k, m):
    """The GPU product lowered with one local buffer per tile (two barriers per slice), then double-buffered."""
    a, b = RNG.standard_normal((n, k)).astype(np.float32), RNG.standard_normal((k, m)).astype(np.float32)
    x, y = zyx.CPU().tensor(a), zyx.CPU().tensor(b)
    root = (x @ y).node
    choice = Choice.of("local_tiles", block=32, per_item=2, bk=8, buffers=1, split=1, wide=1)
    plan = plan_local_tiles(root, hosted_matmul(root, {id(root): root}), choice=choice)
    kernel = LocalTileLowering(root, {id(root): root}, set(), plan).lower().ir
    data = {id(x.node): a, id(y.node): b}
    single = run(kernel, data, (n, m))
    np.testing.assert_allclose(single, a @ b, rtol=1e-4, atol=1e-5)
    doubled = double_buffer(kernel)
    slices = -(-k // 8)
    assert sum(isinstance(s, Barrier) for s in walk(doubled.body)) == 1 + (slices > 1)  # one per slice, not two
    np.testing.assert_allclose(run(doubled, data, (n, m)), single, rtol=1e-6, atol=1e-6)
    assert double_buffer(lowered("row sum")[0].ir) is None  # no staging loop


def test_row_kernels_are_refused_where_the_reductions_are_not_over_the_rows():
    x = zyx.CPU().tensor(RNG.standard_normal((8, 8)).astype(np.float32))
    root = x.softmax(0).node  # columns: the max of column j read at element (i, j)
    assert lower_rows(root, {id(root): root}, set(), 8) is None


def test_vector_lanes_read_consecutive_elements_as_one_vector_and_one_element_as_a_broadcast():
    kernel, _, _ = lowered("broadcast and pad")
    _, source = print_kernel(vectorize(kernel.ir, 16))
    assert "vload16((gid%2)," in source  # y[0]: a row, whole vectors
    # y[:, :1]: one element per row, read once and broadcast into every lane
    assert re.search(r"float (\w+) = in\d\[.*\n.*\(\(float16\)\(\1\)\)", source)


def test_transforms_say_where_they_do_not_apply():
    kernel, _, _ = lowered("row sum")
    assert vectorize(kernel.ir, 48) is None  # 8 outputs: not a whole vector
    assert vectorize(kernel.ir, 16, uniform=True) is not None


def test_a_long_loop_body_gets_fewer_accumulators_and_computes_the_same():
    """Eight copies of a long fused body compile for long and run no faster: the copies stop at the budget."""
    x, y = (zyx.CPU().tensor(RNG.standard_normal((4, 64)).astype(np.float32)) for _ in range(2))
    value = x
    for i in range(30):  # one long chain inside the reduction's loop
        value = (value * 0.9 + y).tanh() if i % 2 else value.exp() * 0.1 - y
    root = value.sum(-1).node
    data = {id(x.node): x.numpy(), id(y.node): y.numpy()}
    kernel = lower(root, {id(root): root}, set())
    loop, = [s for s in kernel.ir.body if hasattr(s, "trips")]
    statements = sum(1 for _ in walk(loop.body))
    assert 2 * statements <= UNROLLED_STATEMENTS < 4 * statements
    unrolled = unroll_reductions(kernel.ir, lambda trips: 8)
    big_loop, = [s for s in unrolled.body if hasattr(s, "trips") and s.var == loop.var]
    assert big_loop.trips == loop.trips // 2  # two accumulators, not eight
    reference = run(kernel.ir, data, root.shape)
    np.testing.assert_allclose(run(unrolled, data, root.shape), reference, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(reference, value.sum(-1).numpy(), rtol=2e-5, atol=2e-5)


def test_substitution_simplifies_again():
    gid = Expr.var("gid", 64)
    row = (gid // 8) % 8
    lane = substitute(row, {"gid": Expr.var("gid", 4) * 16 + 3})
    assert lane == (Expr.var("gid", 4) * 2) % 8
    assert simplify_cond(((Expr.var("i", 4), "lt", 4),)) == () and simplify_cond(((gid, "lt", 0),)) is None


def test_kernel_names_follow_what_the_kernel_computes():
    first, _, _ = lowered("elementwise")
    again, _, _ = lowered("elementwise")
    other, _, _ = lowered("masks")
    assert print_kernel(first.ir)[0] == print_kernel(again.ir)[0] != print_kernel(other.ir)[0]


def test_gpu_elementwise_kernels_load_and_store_float4_and_reductions_get_work_groups():
    from zyx.jit.device_traits import DeviceTraits
    from zyx.jit.schedule import schedule
    x = zyx.CPU().tensor(RNG.standard_normal((64, 256)).astype(np.float32))
    elementwise, = schedule([(x * 2).exp().node], DeviceTraits(gpu=True, vector_width=4))[0]
    assert "vload4(gid," in elementwise.source and "vstore4(" in elementwise.source
    assert elementwise.global_size == 64 * 256 // 4
    reduction, = schedule([x.sum(-1).node], DeviceTraits(gpu=True, vector_width=4))[0]
    assert reduction.name.startswith("g_") and reduction.local_size == 256 and "float4" not in reduction.source


def test_a_reduction_of_too_few_groups_to_fill_the_gpu_takes_its_largest_groups(dev, monkeypatch):
    """A loss's sum over 16 384 rows is one work group on one compute unit, each item's loads one after another:
    groups of the most items the device allows (16 loads an item, not 64), where the groups are too few for a
    quarter of the compute units and long; others keep the usual group. Computed on PoCL as numpy does."""
    from zyx.jit.device_traits import DeviceTraits
    from zyx.jit.schedule import schedule
    traits = DeviceTraits(gpu=True, vector_width=4, max_group_size=1024, compute_units=132)
    a = RNG.standard_normal((16384,)).astype(np.float32)
    x = zyx.CPU().tensor(a)
    lone, = schedule([(x * 2).sum().node], traits)[0]
    # (its size stated: NVIDIA's compiler then fits an item's registers to 1024 of them, print_opencl.STATED_ABOVE)
    assert lone.local_size == 1024 and "r2 < 16;" in lone.source and "reqd_work_group_size(1024, 1, 1)" in lone.source
    many, = schedule([(x * 2).reshape(64, 256).sum(-1).node], traits)[0]  # 64 groups: half the GPU's units
    assert many.local_size == 256 and "reqd_work_group_size" not in many.source
    monkeypatch.setenv("ZYX_LONE_GROUPS", "0")
    assert schedule([(x * 2).sum().node], traits)[0][0].local_size == 256
    monkeypatch.delenv("ZYX_LONE_GROUPS")
    if dev.runtime.max_work_group_size < 1024:
        pytest.skip("the OpenCL device runs no groups of 1024 items")
    monkeypatch.setattr(dev, "traits", traits)
    dev.forget_programs()
    try:
        got = (dev.tensor(a) * 2).sum()
        with zyx.profile() as prof:
            got.realize()
        assert [record.local_size for record in prof.records] == [(1024,)]
        np.testing.assert_allclose(got.numpy(), (a.astype(np.float64) * 2).sum(), rtol=1e-5, atol=1e-3)
    finally:
        dev.forget_programs()


@pytest.mark.parametrize("axis", [-1, 0], ids=["rows: gid*4096+r", "columns: gid+r*4096"])
def test_indices_past_int_range_count_in_long(axis):
    """A sum over 2^32 stored elements: 2^20 items (or 4096 trips) count in int, yet gid*4096 (or r*4096) does
    not fit; the counters that compute such an index are long. Small buffers keep int."""
    ones = zyx.CPU().tensor(np.ones((1, 1), np.float32))
    for rows, counter in ((2**20, "long"), (2**10, "int")):
        stored = ones.expand(rows, 4096) * 2
        root = stored.sum(axis).node
        _, source = print_kernel(lower(root, {id(root): root, id(stored.node): stored.node}, set()).ir)
        assert f"{counter} gid = get_global_id(0);" in source and f"for ({counter} r2 = 0;" in source


def test_a_column_sum_groups_adjacent_outputs_so_that_neighbouring_items_read_neighbouring_values():
    """A column sum read by items striding down the column would give each item a 32-byte sector of its own (a
    bias's gradient over 16 384 tokens ran at a tenth of the H200's bandwidth); grouped by COLUMNS adjacent
    outputs, item lid + 1 reads the value next to item lid's. A row sum keeps its items along the row."""
    column, _, _ = lowered("column sum")
    assert column_outputs(column.ir, 64) == COLUMNS
    loop = next(s for s in group_reductions(column.ir, 64).body if isinstance(s, Loop))
    read = next(s for s in walk(loop.body) if isinstance(s, Load) and "lid" in s.index.variables())
    at = {name: Expr(0) for name in read.index.variables()}
    assert substitute(read.index, {**at, "lid": Expr(1)}).const - substitute(read.index, at).const == 1
    row, _, _ = lowered("row sum")
    assert column_outputs(row.ir, 64) == 1


@pytest.mark.parametrize("columns, grouped", [(768, False), (3072, True)])
def test_columns_are_grouped_only_where_that_leaves_the_gpu_enough_groups(monkeypatch, columns, grouped):
    monkeypatch.undo()
    x = zyx.CPU().tensor(np.zeros((4096, columns), np.float32))
    root = (x * 2).sum(0).node
    assert column_outputs(lower(root, {id(root): root}, set()).ir, 256) == (COLUMNS if grouped else 1)


@pytest.mark.parametrize("order", ["exp first", "erf first"])
def test_an_erf_takes_the_exponential_of_the_same_value_its_kernel_computes(order):
    """erf(r) and exp(-r·r) in one kernel (GELU's backward: Φ and φ of x/√2): the erf is printed as zyx_erf_exp
    taking that exponential (opencl_prelude: what its polynomials compute), the statements computing it moved ahead
    of an erf the trace put first; each exponential computed once; the values are the device's erf and exp."""
    dev = zyx.OpenCL()
    values = np.linspace(-5, 5, 4096, dtype=np.float32).reshape(64, 64)
    x = dev.tensor(values) * 0.7
    erf, gauss = x.erf(), (-(x * x)).exp()
    out = erf * 3 + gauss if order == "erf first" else gauss * 3 + erf
    kernel, = schedule([out.node], dev.traits)[0]
    body = kernel.source.split("__kernel")[-1]
    assert "zyx_erf_exp(" in body and "zyx_erf(" not in body and body.replace("zyx_erf_exp(", "").count("exp(") == 1
    r = values.astype(np.float64) * 0.7
    want = (np.vectorize(math.erf)(r) * 3 + np.exp(-r * r)) if order == "erf first" else \
        (np.exp(-r * r) * 3 + np.vectorize(math.erf)(r))
    np.testing.assert_allclose(out.numpy(), want, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("select, rounds", [
    (lambda p, x, y: (x < y).where(float("-inf"), p), 1),  # a causal mask's select: -inf is a bfloat16
    (lambda p, x, y: p.maximum(0.0), 1),                   # ReLU after a product
    (lambda p, x, y: -p, 1),
    (lambda p, x, y: (x < y).where(0.1, p), 2),            # 0.1 is no bfloat16: the select is rounded
    (lambda p, x, y: p.maximum(1e39), 2),                   # past bfloat16's largest value: rounded (to infinity)
])
def test_a_half_precision_select_of_rounded_values_is_not_rounded_again(select, rounds):
    """Of operands rounded to bfloat16 where computed (x·y), read (exact) or literals bfloat16 holds, a select, a
    maximum or a negation is one of them: rounded again only where a literal is not a bfloat16."""
    x, y = (zyx.CPU().tensor(RNG.standard_normal((8, 16)).astype(np.float32)).to("bfloat16").realize()
            for _ in range(2))
    root = select(x * y, x, y).node
    kernel = lower(root, {id(root): root}, set()).ir
    assert sum(isinstance(s, Alu) and s.op is Op.CAST for s in walk(kernel.body)) == rounds


@pytest.mark.parametrize("sum_read_again", [False, True])
def test_approximate_math_folds_an_exponential_of_a_sum_read_there_alone(sum_read_again):
    """approximate_math: float32 exp and division become FAST_EXP and FAST_DIV; exp(a + b) right after the sum,
    which nothing else reads, is FAST_EXP of both terms (one fused multiply-add on GPUs); a sum read again stays."""
    a, b, t, e, q = (Reg(name, float32) for name in ("a", "b", "t", "e", "q"))
    body = (Alu(t, Op.ADD, (a, b)), Alu(e, Op.EXP, (t,)), Alu(q, Op.DIV, (e, t if sum_read_again else b)))
    kernel = Kernel("a", (), (), (Loop("j", 4, body),))
    loop, = approximate_math(kernel).body
    ops = [(s.op, tuple(arg.name for arg in s.args)) for s in loop.body]
    if sum_read_again:
        assert ops == [(Op.ADD, ("a", "b")), (FAST_EXP, ("t",)), (FAST_DIV, ("e", "t"))]
    else:
        assert ops == [(FAST_EXP, ("a", "b")), (FAST_DIV, ("e", "b"))]
