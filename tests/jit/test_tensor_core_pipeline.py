"""cp.async pipelines of tensor-core products (jit/tensor_cores.py, transforms/async_pipeline.py): which products get
them, how many stages fit, and (emulated here, element by element, on any machine) that every ldmatrix of every
step reads the operand elements its mma fragment needs from swizzled tiles, without bank conflicts, while the
asynchronous copies fill the other stages. On an NVIDIA GPU, tests/jit/test_tensor_cores.py checks results."""
from __future__ import annotations

import dataclasses

import functools
import random
import shutil
import subprocess

import pytest

import zyx
from zyx.jit.kernel_ir import (AsyncCommit, AsyncCopy, AsyncWait, Barrier, Define, If, Load, LocalArray, LocalStore,
                               Loop, MatrixLoad, Select, walk)
from zyx.jit.choices import Choice, TunedChoices
from zyx.jit.print_opencl import swizzle_bits, swizzled
from zyx.jit.print_wgsl import WgslUnsupported, print_kernel
from zyx.jit.device_traits import DeviceTraits
from zyx.jit.schedule import schedule
from zyx.jit.symbolic import Expr
from zyx.jit.device_traits import tensor_core_local_memory
from zyx.jit.tune import candidates

TRAITS = DeviceTraits(gpu=True, vector_width=4, local_memory=49152, tensor_cores=("bf16", "f16"))
GROUP, WARP = 256, 32


def product_kernel(out, traits=TRAITS):
    kernel, = [k for k in schedule([out.node], traits)[0] if "mma.sync" in k.source]
    return kernel


def operands(*shapes, dtype="bfloat16"):
    dev = zyx.CPU()
    return [dev.randn(*shape).to(dtype).realize() for shape in shapes]


def test_stored_operands_are_copied_by_cp_async_in_as_many_swizzled_stages_as_local_memory_holds():
    x, y = operands((256, 128), (128, 256))
    kernel = product_kernel(x @ y)
    # 48 KiB: 3 stages of 128 x 32 (left) and 32 x 128 (right) halves, unpadded; 2 + 2 copies per item per slice,
    # written twice: in the loop filling the 2 slices staged ahead, and in the steps' loop; one barrier per step
    assert "__local ushort tile_a1[12288]" in kernel.source and "__local ushort tile_b2[12288]" in kernel.source
    assert kernel.source.count("cp.async.cg.shared.global") == 4 * 2
    assert kernel.source.count("for (int ") == 3  # the fill, the steps, each step's mma steps
    assert kernel.source.count("cp.async.wait_group 1;") == 2 and kernel.source.count("barrier(") == 2
    assert kernel.source.count("zyx_swizzle(") == 4 * 2 + 6 + 1  # copies, ldmatrix, the helper
    roomy = DeviceTraits(gpu=True, vector_width=4, local_memory=65536, tensor_cores=("bf16", "f16"))
    kernel = product_kernel(x @ y, roomy)
    assert "__local ushort tile_a1[16384]" in kernel.source and "cp.async.wait_group 2;" in kernel.source


def test_operands_that_are_not_plain_aligned_buffers_are_staged_through_registers(monkeypatch):
    x, y, w = operands((256, 128), (128, 256), (256, 128))
    mixed = product_kernel((x * 2) @ y).source  # the left operand computed: through registers, into 3 stages too
    assert mixed.count("cp.async.cg.shared.global") == 2 * 2 and "tile_a1)[(zyx_swizzle(lid,6,3)+k" in mixed
    for out in ((x * 2) @ (y * 2), x[:, 1:] @ w[:, 1:].T):  # both computed; both unaligned: double-buffered
        source = product_kernel(out).source
        assert "cp.async" not in source and "tile_a1[10240]" in source  # 2 x 128 rows of 40 halves (padded)
    shifted = product_kernel(x[:, 4:] @ w[:, 4:].T).source  # rows aligned to 8 bytes: copies of 8 (k = 124: guarded)
    assert "cp.async.cg" not in shifted and shifted.count("cp.async.ca.shared.global [%0], [%1], 8") == 8 * 2
    monkeypatch.setenv("ZYX_TC_PIPELINE", "0")
    assert "cp.async" not in product_kernel(x @ y).source
    tf32 = DeviceTraits(gpu=True, vector_width=4, local_memory=49152, tensor_cores=("bf16", "f16", "tf32"))
    monkeypatch.delenv("ZYX_TC_PIPELINE")
    a, b = operands((128, 128), (128, 128), dtype="float32")
    assert "cp.async" not in product_kernel(a @ b, tf32).source


class _Runtime:
    """What DeviceTraits.of reads of an NVIDIA GPU's OpenCL runtime."""

    is_gpu, max_work_group_size, local_mem_bytes = True, 1024, 49152

    def __init__(self, compute_capability):
        self.compute_capability = compute_capability


def test_products_on_tensor_cores_stage_into_the_local_memory_measured_per_compute_capability():
    assert tensor_core_local_memory((9, 0), 49152) == 200 * 1024  # measured on the H200
    assert tensor_core_local_memory((8, 0), 49152) == 49152 == tensor_core_local_memory(None, 49152)  # as reported
    h200 = DeviceTraits.of(_Runtime((9, 0)))
    assert h200.local_memory == 49152 and h200.tensor_core_local_memory == 200 * 1024  # other kernels: 48 KiB
    assert DeviceTraits.of(_Runtime((8, 6))).tensor_core_local_memory == 49152
    h200 = dataclasses.replace(h200, tensor_cores=("bf16", "f16"))  # warps' products (test_wgmma.py: warpgroups')
    x, y, z = operands((2048, 256), (256, 2048), (256, 128))
    # 3 stages of 128 x 256 blocks, 128-byte slices (144 KiB): 4 + 8 copies per item per slice, 2 slices ahead (a
    # loop fills them: the copies are written twice)
    kernel = product_kernel(x @ y, h200)
    assert kernel.site.heuristic == Choice.of("tensor_cores", columns=64, row_bytes=128, buffers=3, pipelined=1,
                                              warpgroup=0, split=1)
    assert "__local ushort tile_a1[24576]" in kernel.source and "__local ushort tile_b2[49152]" in kernel.source
    assert kernel.source.count("cp.async.cg.shared.global") == 12 * 2 and kernel.global_size == 256 * 16 * 8
    # blocks of 128 x 128 where the product has 128 columns, or where 128 x 256 blocks would be fewer than 128
    for narrow in (x @ z, x[:1024] @ y[:, :1024]):
        assert product_kernel(narrow, h200).site.heuristic == Choice.of("tensor_cores", columns=32, row_bytes=128,
                                                                         buffers=3, pipelined=1, warpgroup=0, split=1)
    for reported in (TRAITS, DeviceTraits.of(_Runtime((8, 0)))):  # 48 KiB
        assert product_kernel(x @ y, reported).site.heuristic == Choice.of("tensor_cores", columns=32, row_bytes=64,
                                                                             buffers=3, pipelined=1, warpgroup=0, split=1)
    tried = {c.describe().replace(" split=1 warpgroup=0", "") for c in candidates(kernel.site, h200, 2)}  # 4 stages of 128 x 256 blocks fit 200 KiB
    assert "buffers=4 columns=64 pipelined=1 row_bytes=128" in tried
    assert "buffers=2 columns=64 pipelined=0 row_bytes=128" in tried


@functools.cache
def _nvptx_clang():
    """A clang that compiles OpenCL C to NVIDIA's PTX, if this machine has one."""
    clang = shutil.which("clang-15") or shutil.which("clang")
    targets = subprocess.run([clang, "-print-targets"], capture_output=True, text=True).stdout if clang else ""
    return clang if "nvptx64" in targets else None


@pytest.mark.skipif(_nvptx_clang() is None, reason="no clang with the NVPTX backend")
@pytest.mark.parametrize("pipeline", ["1", "0"])
def test_the_printed_kernels_compile_to_ptx(tmp_path, monkeypatch, pipeline):
    """clang's OpenCL front end and NVPTX back end (for sm_80) take the printed source, inline PTX included (NVIDIA's
    OpenCL compiler has asm without -fgnu-keywords); the instructions themselves are checked only on the GPU."""
    monkeypatch.setenv("ZYX_TC_PIPELINE", pipeline)
    x, y, w = operands((256, 128), (128, 256), (256, 128))
    for number, out in enumerate((x @ y, x @ w.T, (x * 2) @ y, x[:, :100] @ y[:100])):
        source = tmp_path / f"kernel{number}.cl"
        source.write_text(product_kernel(out).source)
        ptx = tmp_path / f"kernel{number}.ptx"
        built = subprocess.run([_nvptx_clang(), "-x", "cl", "-cl-std=CL1.2", "-target", "nvptx64-nvidia-nvcl",
                                "-Xclang", "-finclude-default-header", "-Xclang", "-fgnu-keywords", "-O1", "-S",
                                "-Xclang", "-target-cpu", "-Xclang", "sm_80", "-o", str(ptx), str(source)],
                               capture_output=True, text=True)
        assert built.returncode == 0, built.stderr[-2000:]
        assert ("cp.async.cg.shared.global" in ptx.read_text()) == (pipeline == "1")
        assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in ptx.read_text()


def test_a_search_may_try_every_staging_and_shape_that_fits_and_the_scheduler_takes_its_winner():
    x, y = operands((256, 128), (128, 256))
    kernel = product_kernel(x @ y)
    assert kernel.site.heuristic == Choice.of("tensor_cores", columns=32, row_bytes=64, buffers=3, pipelined=1,
                                              warpgroup=0, split=1)
    # 48 KiB: pipelined 32 x 64 bytes in 2 or 3 stages, 64 x 64 in 2; through registers (padded rows) 32 x 64 in 1
    # or 2 buffers, 64 x 64 and 32 x 128 in 1
    tried = {c.describe().replace(" split=1 warpgroup=0", "") for c in candidates(kernel.site, TRAITS, 2)}
    assert tried == {"buffers=2 columns=32 pipelined=1 row_bytes=64", "buffers=3 columns=32 pipelined=1 row_bytes=64",
                     "buffers=2 columns=64 pipelined=1 row_bytes=64", "buffers=1 columns=32 pipelined=0 row_bytes=64",
                     "buffers=2 columns=32 pipelined=0 row_bytes=64", "buffers=1 columns=64 pipelined=0 row_bytes=64",
                     "buffers=1 columns=32 pipelined=0 row_bytes=128"}
    # 128 x 256 blocks pipelined 2 deep: 2 + 4 copies per item per slice, one slice before the loop and one in it
    unsplit_warps = {"warpgroup": 0, "split": 1}
    for choice, cp_async in ((Choice.of("tensor_cores", columns=64, row_bytes=64, buffers=2, pipelined=1,
                                        **unsplit_warps), 12),
                             (Choice.of("tensor_cores", columns=32, row_bytes=64, buffers=2, pipelined=0,
                                        **unsplit_warps), 0)):
        tuned, = [k for k in schedule([(x @ y).node], TRAITS, TunedChoices({kernel.site.key: choice}))[0]
                  if "mma.sync" in k.source]
        assert tuned.site.applied == choice and tuned.source.count("cp.async.cg") == cp_async
        assert tuned.global_size == 256 * (2 if choice["columns"] == 64 else 4)  # 128 x 256 or 128 x 128 blocks
    a, b = operands((256, 128), (128, 256), dtype="float32")  # TF32: through registers only
    tf32 = DeviceTraits(gpu=True, vector_width=4, local_memory=49152, tensor_cores=("bf16", "f16", "tf32"))
    assert dict(product_kernel(a @ b, tf32).site.options)["pipelined"] == (0,)


def test_wgsl_refuses_nvidia_instructions():
    x, y = operands((128, 128), (128, 128))
    with pytest.raises(WgslUnsupported, match="AsyncCommit, AsyncCopy, AsyncWait, MatrixLoad, MatrixMultiply"):
        print_kernel(product_kernel(x @ y).ir)


def test_the_swizzle_permutes_chunks_within_rows():
    for row in (16, 32, 64, 128, 256):
        shift, mask = swizzle_bits(row)
        positions = [_swizzled(i, row) for i in range(0, 16 * row, 8)]
        assert sorted(positions) == list(range(0, 16 * row, 8))
        assert all(p // row == i * 8 // row for i, p in enumerate(positions))


def test_the_printed_swizzle_adds_whole_periods_outside_it():
    """`swizzled` prints zyx_swizzle of the index's terms within one period of the pattern plus the rest (the step's
    buffer: the pattern is computed once per item): the same address as the pattern of the whole index, at every
    value of the variables."""
    x, y = operands((256, 256), (256, 512))
    ir = product_kernel(x @ y).ir
    step = next(s for s in ir.body if isinstance(s, Loop)).var
    statements = [s for s in walk(ir.body) if isinstance(s, (AsyncCopy, MatrixLoad))]
    names = sorted({name for s in statements for name in s.index.variables()})
    sizes = {a.name: a.size for a in ir.axes} | {s.var: s.trips for s in walk(ir.body) if isinstance(s, Loop)}
    rng = random.Random(0)
    for statement in statements:
        text = swizzled(statement.index, statement.swizzle).replace("/", "//")
        shift, mask = swizzle_bits(statement.swizzle)
        assert step not in text[text.index("zyx_swizzle("):text.index(f",{shift},{mask})")]
        for _ in range(20):
            values = {name: rng.randrange(sizes[name]) for name in names}
            printed = eval(text, {"zyx_swizzle": lambda i, shift, mask: i ^ (((i >> shift) & mask) << 3), "min": min},
                           dict(values))
            assert printed == _swizzled(_value(statement.index, values), statement.swizzle)


ZERO = ("zero", 0)  # an element staged as zero (past the end of k)


@pytest.mark.parametrize("left, transposed, n, k, m, shape", [
    ("rows", False, 256, 256, 512, None), ("rows", True, 256, 256, 512, None), ("rows", False, 256, 64, 512, None),
    ("rows", True, 256, 64, 512, None),
    ("rows", False, 200, 136, 264, None), ("rows", True, 200, 136, 264, None),  # edges: k past its end is zeros
    ("rows", True, 128, 32, 128, None), ("rows", False, 256, 24, 256, None),  # one slice (outside its loop)
    ("columns", True, 256, 128, 256, None), ("columns", False, 200, 100, 264, None),  # left through registers
    ("rows", False, 200, 100, 300, None), ("rows", True, 136, 130, 136, None),  # copies of 8 and 4 bytes
    ("rows", False, 256, 256, 512, "64,64,2"), ("rows", True, 256, 512, 512, "64,128,4"),
    ("rows", False, 200, 136, 264, "64,128,3"), ("columns", True, 256, 256, 512, "64,128,3")])
def test_every_step_reads_the_fragments_its_mma_needs_without_bank_conflicts(monkeypatch, left, transposed, n, k, m,
                                                                              shape):
    """Emulates, per item, the pipelined kernel of x @ y (y row-major: a [k][column] tile read by ldmatrix.trans) or
    x @ w.T (along k) for three work groups: the copies and stores land in swizzled local memory in program order
    (slices staged ahead of the compute), and each lane of each ldmatrix must find the 8 operand elements that the
    mma.m16n8k16 fragment layout assigns it (zeros past the end of k; rows and columns past their ends, whose outputs
    are never stored, are not checked). A left operand stored by `columns` (x = t.T) is staged element by element
    through registers. `shape` (ZYX_TC_SHAPE): warp columns, bytes of each row a slice stages, stages; by default
    32, 64, 3 (what 48 KiB hold)."""
    if shape is not None:
        monkeypatch.setenv("ZYX_TC_SHAPE", shape)
    columns, row_bytes, stages = (int(v) for v in (shape or "32,64,3").split(","))
    bk, block_m = row_bytes // 2, 4 * columns
    x, y = operands((n, k) if left == "rows" else (k, n), (m, k) if transposed else (k, m))
    kernel = product_kernel((x if left == "rows" else x.T) @ (y.T if transposed else y))
    ir = kernel.ir
    a, b = [p.name for p in ir.params if p.kind == "load"]
    arrays = {s.name: [None] * s.size for s in ir.body if isinstance(s, LocalArray)}
    assert sum(len(array) for array in arrays.values()) == stages * bk * (128 + block_m)  # unpadded
    *_, staging = [s for s in ir.body if isinstance(s, Loop)]  # (after the loop filling the slices staged ahead)
    assert staging.trips == -(-k // bk)
    grid_m = -(-m // block_m)

    def expected(array: str, position: int, warp: int, lane: int, k0: int, corner_n: int, corner_m: int):
        """The 8 elements a lane's ldmatrix row holds by the fragment layout, as (buffer, index) or ZERO; None (for
        the row, or an element) where any value does."""
        first_column = corner_m + columns * (warp % 4) + 16 * position
        if array.startswith("tile_a"):
            row = corner_n + 64 * (warp // 4) + 16 * position + lane % 8 + 8 * (lane // 8 % 2)
            along = k0 + 8 * (lane // 16)
            at = [row * k + along + e if left == "rows" else (along + e) * n + row for e in range(8)]
            return None if row >= n else [ZERO if along + e >= k else (a, at[e]) for e in range(8)]
        if transposed:
            column, along = first_column + lane % 8 + 8 * (lane // 16), k0 + 8 * (lane // 8 % 2)
            return None if column >= m else [ZERO if along + e >= k else (b, column * k + along + e) for e in range(8)]
        row, column = k0 + lane % 8 + 8 * (lane // 8 % 2), first_column + 8 * (lane // 16)
        return [None if column + e >= m else ZERO if row >= k else (b, row * m + column + e) for e in range(8)]

    reads = 0
    for gid in (0, grid_m + 1, 2 * grid_m - 1):  # the first block, the one diagonally after it, the last column's
        corner_n, corner_m = 128 * (gid // grid_m), block_m * (gid % grid_m)
        registers: dict = {}
        for statement in ir.body[:ir.body.index(staging)]:
            _run(statement, {"gid": gid}, arrays, registers)
        for step in range(staging.trips):
            values = {"gid": gid, staging.var: step}
            for statement in staging.body:
                if not isinstance(statement, Loop):
                    _run(statement, values, arrays, registers)
                    continue
                for kk in range(statement.trips):
                    loads = [s for s in statement.body if isinstance(s, MatrixLoad)]
                    for load in loads:
                        position = [s for s in loads if s.array == load.array].index(load)
                        for warp in range(GROUP // WARP):
                            at = [{**values, statement.var: kk, "lid": warp * WARP + lane} for lane in range(WARP)]
                            for lane in range(WARP):
                                want = expected(load.array, position, warp, lane, step * bk + kk * 16, corner_n,
                                                corner_m)
                                held = _read(load, at[lane], arrays)
                                checked = [(h, w) for h, w in zip(held, want or []) if w is not None]
                                assert all(h == w for h, w in checked), (gid, step, kk, warp, lane, load.array, held)
                                reads += bool(checked)
                            _no_conflicts([_address(load.index, load.swizzle, values) for values in at])
    assert reads >= staging.trips * (bk // 16) * (4 + columns // 16) * GROUP  # (the first block's, all checked)


def _run(statement, values: dict[str, int], arrays: dict[str, list], registers: dict) -> None:
    """One statement outside the computation, in every item: copies and stores land in `arrays`, loads and selects
    note in `registers` (by name and item) which operand element they hold."""
    if isinstance(statement, Loop):  # the pipeline's fill: a slice staged ahead per trip
        for trip in range(statement.trips):
            for inner in statement.body:
                _run(inner, {**values, statement.var: trip}, arrays, registers)
    elif isinstance(statement, If):
        if _holds(statement.cond, values):
            for inner in statement.body:
                _run(inner, values, arrays, registers)
    elif isinstance(statement, AsyncCopy):
        _copy(statement, values, arrays)
    elif isinstance(statement, (Load, Select, LocalStore)):
        for lid in range(GROUP):
            at = {**values, "lid": lid}
            if isinstance(statement, Load):
                registers[statement.out.name, lid] = ((statement.buffer, _value(statement.index, at))
                                                      if _holds(statement.guard, at) else ZERO)
            elif isinstance(statement, Select):
                registers[statement.out.name, lid] = (registers[statement.value.name, lid]
                                                      if _holds(statement.cond, at) else ZERO)
            else:
                held, width = registers[statement.value.name, lid], statement.value.width
                position = _address(statement.index, statement.swizzle, at)
                arrays[statement.array][position:position + width] = [
                    ZERO if held == ZERO else (held[0], held[1] + e) for e in range(width)]
    else:
        assert isinstance(statement, (AsyncCommit, AsyncWait, Barrier, LocalArray, Define)), statement


def _swizzled(i: int, row: int) -> int:
    """zyx_swizzle, as print_opencl's helper computes it."""
    shift, mask = _swizzle_bits(row)
    return i ^ (((i >> shift) & mask) << 3)


_swizzle_bits = functools.lru_cache(maxsize=None)(swizzle_bits)


def _holds(cond, values: dict[str, int]) -> bool:
    return all((_value(e, values) >= limit) if op == "ge" else (_value(e, values) < limit) for e, op, limit in cond)


def _value(expr: Expr, values: dict[str, int]) -> int:
    """`expr` at `values` of its variables, as the printed C computes it."""
    return _compiled(expr)(values)


def _compiled(expr: Expr):
    """`expr` as a Python function of its variables' values (the emulation evaluates each index some 10^5 times),
    kept by the expression's identity (hashing one costs more than evaluating it)."""
    kept = _COMPILED.get(id(expr))
    if kept is None or kept[0] is not expr:
        kept = _COMPILED[id(expr)] = (expr, eval(f"lambda values: {_python(expr)}"))
    return kept[1]


_COMPILED: dict[int, tuple] = {}


def _python(expr: Expr) -> str:
    terms = [str(expr.const)]
    for atom, coefficient in expr.terms.items():
        if atom.kind == "var":
            value = f"values[{atom.name!r}]"
        else:
            inner = _python(atom.expr)
            value = {"div": f"({inner}) // {atom.k}", "mod": f"({inner}) % {atom.k}", "min": f"min({inner}, {atom.k})",
                     "clamped": inner}[atom.kind]
        terms.append(f"{coefficient} * ({value})")
    return " + ".join(terms)


def _address(index: Expr, swizzle: int, values: dict[str, int]) -> int:
    position = _value(index, values)
    return _swizzled(position, swizzle) if swizzle else position


def _copy(copy: AsyncCopy, values: dict[str, int], arrays: dict[str, list]) -> None:
    """Every item's copy of `width` elements, each destination aligned to its size; 16-byte ones of 8 neighbouring
    items in 8 bank groups."""
    destinations, width = [], copy.width
    for lid in range(GROUP):
        at = {**values, "lid": lid}
        destination, source = _address(copy.index, copy.swizzle, at), _value(copy.source, at)
        assert destination % width == 0 and source % width == 0
        copied = [(copy.buffer, source + e) for e in range(width)] if _holds(copy.guard, at) else [ZERO] * width
        arrays[copy.array][destination:destination + width] = copied
        destinations.append(destination)
    if width == 8:
        _no_conflicts(destinations)


def _read(load: MatrixLoad, values: dict[str, int], arrays: dict[str, list]) -> list:
    """The 8 elements a lane's ldmatrix row holds, as (buffer, index) or ZERO."""
    at = _address(load.index, load.swizzle, values)
    return arrays[load.array][at:at + 8]


def _no_conflicts(addresses: list[int]) -> None:
    """16-byte accesses by 8 lanes at a time (a warp's phases): 8 distinct groups of 4 banks each."""
    for start in range(0, len(addresses), 8):
        phase = addresses[start:start + 8]
        assert len({a * 2 // 16 % 8 for a in phase}) == 8, phase
