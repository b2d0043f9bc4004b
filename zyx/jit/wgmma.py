"""Hopper's warpgroup products (wgmma, sm_90a): how their operands lie in local memory and how the 128 items of a
warpgroup hold the outputs. Measured on the H200 (bench/wgmma_probe, GPU-RUN-1): every layout below read exactly.

Operand tiles lie in rows of ROW_BYTES (64 elements of 16 bits, 32 of TF32), row r's 16-byte chunk c at chunk
c ^ (r % 8) (CUTLASS's 128-byte swizzle; print_opencl.swizzled with rows of 64 elements), tiles starting at a
multiple of 1024 bytes (the hardware swizzles absolute addresses). K-major (a tile of rows along k, 64 of k per row): one k16
step starts 32 bytes into the rows, 8-row groups lie SWIZZLE_PERIOD bytes apart. MN-major (b stored along its
columns, `x @ w` with w row-major; a along its rows, `x.T @ y`, read with imm-trans-a 1 where b is read with
imm-trans-b 1): atoms of 8 rows of k x 64 columns, a k16 step two such atoms on (the stride byte offset), atoms of
successive 64 columns `leading` bytes apart (the descriptor's leading byte offset; a's 64 rows are one atom). The
PTX ISA (9.7.15.5.1.2, Shared Memory Matrix Layout) takes the transpose for 16-bit operands read through
descriptors only, and describes a transposed a exactly as a transposed b (M-major as N-major); the H200 measured b's.

TF32 (m64nNk8) reads both operands K-major from local memory, or a from registers (`fragment_position`); a k8
step is 32 bytes too.
"""
from __future__ import annotations

ROW_BYTES = 128
ROW = 64                 # 16-bit elements in a row
SWIZZLE_PERIOD = 1024    # bytes: 8 rows, one repeat of the swizzle (the stride between 8-row groups)
SWIZZLE_128B = 1         # the descriptor's layout type of the 128-byte swizzle
ADDRESS_MASK = 0x3FFFF   # the shared-window address bits a descriptor holds (>> 4)
K_STEP = 16              # reduced elements one wgmma takes (16-bit operands)
K_STEPS = {"bf16": 16, "f16": 16, "tf32": 8}  # reduced elements one wgmma takes, by operand kind
ROWS = 64                # rows of a per warpgroup
WARPGROUP = 128          # items


def descriptor(start: int, leading: int, stride: int, layout: int = SWIZZLE_128B) -> int:
    """The 64-bit matrix descriptor: start address (bytes, 16-aligned) in bits 0-13 (>> 4), leading byte offset in
    16-29, stride byte offset in 32-45, base offset 0 (tiles start on a swizzle period), layout type in 62-63."""
    return (((start & ADDRESS_MASK) >> 4) | ((leading >> 4) & 0x3FFF) << 16 | ((stride >> 4) & 0x3FFF) << 32
            | (layout & 3) << 62)


def accumulator_position(item, register: int) -> tuple:
    """(row, column) of float32 accumulator `register` of warpgroup item `item` (an int or an Expr) in an m64nN
    product: register 4j + i of item t (warp w = t / 32, lane l) holds row 16w + l / 4 + 8 (i / 2), column
    8j + 2 (l % 4) + i % 2 (mma.sync's fragment, 16 rows per warp)."""
    j, i = divmod(register, 4)
    return (item // 32) * 16 + (item % 32) // 4 + 8 * (i // 2), (item % 4) * 2 + 8 * j + i % 2


def fragment_position(item, register: int) -> tuple:
    """(row, k) of register `register` (0-3) of warpgroup item `item` in a TF32 m64nNk8 product's a read from
    registers (CUTLASS's ALayout_64x8): item t (warp w = t / 32, lane l) holds rows 16w + l / 4 and 8 more, k l % 4
    and 4 more, in the order (row, k), (row + 8, k), (row, k + 4), (row + 8, k + 4) (mma.sync m16n8k8's a per warp)."""
    return (item // 32) * 16 + (item % 32) // 4 + 8 * (register % 2), item % 4 + 4 * (register // 2)
