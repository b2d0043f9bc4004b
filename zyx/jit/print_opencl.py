"""The OpenCL C printer: kernel IR in, kernel source out. The only module that writes C.

Each IR statement is printed by the function its type is keyed to (STATEMENTS); an ALU op by the template its
op is keyed to (UNARY, BINARY, VECTOR_BINARY). A printer for another language (WGSL) is these tables, types and
literals written for it. Kernels are named by their IR's fingerprint and this printer's VERSION, so a kernel
computing the same thing is compiled once, whatever shape or trace it came from.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

from ..dtypes import DType, float32, float64, uint32
from ..trace.ops import Op
from .kernel_ir import (ERF_GIVEN_EXP, FAST_DIV, FAST_EXP, LESS_EQUAL, ROUND_TF32, Accumulate, Alu, AsyncCommit,
                        AsyncCopy, AsyncProxyFence, AsyncWait, Barrier, Break, Broadcast, BulkCommit, BulkStore,
                        BulkWait, Const, Define, Extract, Gather, If, Kernel, Lane, LaneSelect, Load, LocalArray,
                        LocalLoad, LocalRoundTF32, LocalStore, Loop, MatrixLoad, MatrixMultiply, MultiplyAdd,
                        NamedBarrier, Operand, Pack, PackHalves, Position, Rand, Reg, RegisterBudget, Role, Select,
                        Store, UnpackHalves, WarpgroupCommit, WarpgroupFence, WarpgroupMma, WarpgroupWait, WarpShuffle,
                        walk)
from .cache_key import hash_hex
from .ptx_patch import HIDDEN
from .wgmma import ADDRESS_MASK, K_STEPS, SWIZZLE_PERIOD, descriptor
from .launch_groups import launch_groups_of
from .opencl_prelude import GROUP_SIZE_STATED, prelude, word_type
from .print_common import (TANH_SATURATED, BodyPrinter, Syntax, aligned, body_lines, branch_condition, condition,
                           dtypes_used, kernel_name, negatable, pick)
from .symbolic import Expr

VERSION = "8"  # bump when the same IR prints differently


# ---- types and literals ----------------------------------------------------------------------------------
def register_type(dtype: DType, width: int = 1) -> str:
    """The type a value lives in while computed: float16 and bfloat16 in float, bool as bool (as an int mask
    in vectors)."""
    if width > 1:
        return ("int" if dtype.is_bool else register_type(dtype)) + str(width)
    return {"bool": "bool", "uint8": "uchar", "int8": "char", "int16": "short", "int32": "int", "uint32": "uint",
            "int64": "long", "float16": "float", "bfloat16": "float", "float32": "float",
            "float64": "double"}[dtype.name]


def literal(value: object, dtype: DType) -> str:
    if dtype.is_bool:
        return "true" if value else "false"
    if dtype.is_int:
        suffix = "L" if dtype.itemsize == 8 else "u" if dtype.is_unsigned else ""
        return f"{int(value)}{suffix}"  # type: ignore[call-overload]
    number = float(value)  # type: ignore[arg-type]
    suffix = "" if dtype.name == "float64" else "f"
    if math.isnan(number):
        return "NAN" if suffix else "(double)NAN"
    if math.isinf(number):
        sign = "-" if number < 0 else ""
        return f"{sign}INFINITY" if suffix else f"{sign}(double)INFINITY"
    return f"{number!r}{suffix}" if "e" in repr(number) or "." in repr(number) else f"{number!r}.0{suffix}"


def operand(value: Operand) -> str:
    if isinstance(value, Reg):
        return value.name
    if isinstance(value, Lane):
        return part(value.src, value.part)
    if value.width == 1:
        return literal(value.value, value.dtype)
    lanes = value.value if isinstance(value.value, tuple) else (value.value,)  # a value per lane, or one for all
    text = ",".join(("-1" if v else "0") if value.dtype.is_bool else literal(v, value.dtype) for v in lanes)
    return f"(({register_type(value.dtype, value.width)})({text}))"


def part(vector: Reg, name: str) -> str:
    """A vector's half ("lo", "hi") or lane ("sN")."""
    return f"{vector.name}.{name}"


# ---- ALU ops -----------------------------------------------------------------------------------------------
UNARY = {
    Op.NEG: "(-{0})", Op.RECIP: "({one}/{0})", Op.SQRT: "sqrt({0})", Op.EXP: "exp({0})", Op.LOG: "log({0})",
    Op.SIN: "sin({0})", Op.COS: "cos({0})", Op.SIGMOID: "({one}/({one}+exp(-{0})))",
    Op.ERF: "zyx_erf({0})",  # (opencl_prelude: polynomials on CPUs, the builtin on GPUs)
    # PoCL's tanh never reaches ±1 (tanh(20) = 0.99999994, tanh(inf) too); past `saturated` the correctly
    # rounded value is ±1 (sign keeps nan; scalars and vectors alike)
    Op.TANH: "((fabs({0})>{saturated})?sign({0}):tanh({0}))",
    Op.FLOOR: "floor({0})", Op.CEIL: "ceil({0})", Op.RINT: "rint({0})", Op.NOT: "(!{0})", Op.DETACH: "{0}",
    ROUND_TF32: "zyx_round_tf32({0})", FAST_EXP: "zyx_fast_exp({0})",
}
INTEGER_UNARY = {Op.NOT: "(~{0})"}  # where integers differ from the table above
DOUBLE_UNARY = {Op.ERF: "erf({0})"}  # where float64 differs

# keyed by op, then by the operands' kind ("bool", "int", "float"); {t} is the operands' register type
BINARY: dict[object, dict[str, str]] = {
    Op.ADD: {"bool": "({0}|{1})", "*": "({0}+{1})"},
    Op.MUL: {"bool": "({0}&{1})", "*": "({0}*{1})"},
    Op.DIV: {"float": "({0}/{1})", "*": "zyx_floordiv_{t}({0},{1})"},
    Op.POW: {"*": "pow({0},{1})"},
    Op.MAX: {"float": "zyx_max_{t}({0},{1})", "bool": "({0}|{1})", "*": "max({0},{1})"},
    Op.CMPLT: {"*": "({0}<{1})"}, Op.CMPEQ: {"*": "({0}=={1})"}, LESS_EQUAL: {"*": "({0}<={1})"},
    ERF_GIVEN_EXP: {"float": "zyx_erf_exp({0},{1})"},  # (_erf_given_exp)
    FAST_DIV: {"float": "zyx_fast_div({0},{1})"}, FAST_EXP: {"float": "zyx_fast_exp_sum({0},{1})"},  # exp(a + b)
    # bitwise on bools too: no short-circuit branches, so kernels stay vectorizable
    Op.AND: {"*": "({0}&{1})"}, Op.OR: {"*": "({0}|{1})"}, Op.XOR: {"*": "({0}^{1})"},
    # OpenCL takes the count modulo the width; PyTorch shifts every bit out
    Op.SHL: {"*": "zyx_shl_{t}({0},{1})"}, Op.SHR: {"*": "zyx_shr_{t}({0},{1})"},
}
VECTOR_BINARY = {Op.MAX: {"float": "select({1},{0},({0}>{1})|isnan({0}))"}}  # where vectors differ (NaN wins)


def _kind(dtype: DType) -> str:
    return "bool" if dtype.is_bool else "int" if dtype.is_int else "float"


def unary(op: Op, x: str, dtype: DType) -> str:
    x = negatable(op, x)
    table = (INTEGER_UNARY if dtype.is_int and op in INTEGER_UNARY else
             DOUBLE_UNARY if dtype.name == "float64" and op in DOUBLE_UNARY else UNARY)
    saturated = literal(TANH_SATURATED[dtype.name], dtype) if op is Op.TANH else ""
    return table[op].format(x, one=literal(1, dtype) if dtype.is_float else "1", saturated=saturated)


def binary(op: object, a: str, b: str, dtype: DType, width: int = 1) -> str:
    """`dtype` is the operands' dtype."""
    tables = ([VECTOR_BINARY.get(op, {})] if width > 1 else []) + [BINARY[op]]
    return pick(tables, _kind(dtype)).format(a, b, t=register_type(dtype))


def alu(statement: Alu) -> str:
    op, out, args = statement.op, statement.out, statement.args
    texts = [operand(a) for a in args]
    if op is Op.CAST:
        return _cast(texts[0], args[0].dtype, out.dtype, out.width)
    if op is Op.WHERE:
        return f"select({texts[2]},{texts[1]},{texts[0]})" if out.width > 1 else f"({texts[0]}?{texts[1]}:{texts[2]})"
    if len(args) == 1:
        return unary(op, texts[0], out.dtype)  # type: ignore[arg-type]
    return binary(op, texts[0], texts[1], args[0].dtype, out.width)


def _cast(x: str, source: DType, target: DType, width: int) -> str:
    if width == 1:
        if target.name == "bfloat16":  # rounded where cast, as stored
            return f"zyx_round_bf16((float)({x}))"
        if target.name == "float16":
            return f"zyx_round_half((float)({x}))"
        return f"({x}!=0)" if target.is_bool else f"(({register_type(target)})({x}))"
    if target.is_narrow_float:  # lanes rounded like a single value
        return f"zyx_round_{'bf16' if target.name == 'bfloat16' else 'half'}_{width}({x})"
    if source.is_bool == target.is_bool:
        return x
    if target.is_bool:
        return f"({x}!={operand(Const(0.0, source, width))})"
    return f"select({operand(Const(0.0, target, width))},{operand(Const(1.0, target, width))},{x})"


# ---- memory ------------------------------------------------------------------------------------------------
def _vector_offset(index: Expr, width: int, buffer: str) -> str:
    """vloadN/vstoreN's (offset, pointer) for `width` elements from `index`."""
    if aligned(index, width):
        return f"{(index // width).render()},{buffer}"
    return f"0,{buffer}+{index.render()}"


# How each dtype is read from and written to a buffer (p: the pointer, i: the position, v: the value); half
# precision is rounded to nearest even where stored
MEMORY_ACCESS = {
    "float16": ("vload_half({i},{p})", "vstore_half({v},{i},{p});"),
    "bfloat16": ("zyx_bf16_to_float({p}[{i}])", "{p}[{i}] = zyx_float_to_bf16({v});"),
    "bool": ("({p}[{i}]!=0)", "{p}[{i}] = (uchar)({v});"),
}
PLAIN_ACCESS = ("{p}[{i}]", "{p}[{i}] = {v};")


def _words(buffer: str, index: Expr, width: int, const: str = "const ") -> str:
    """`width` aligned 16-bit elements from `index` as one load or store of 32-bit words: vloadN and vstoreN promise
    NVIDIA's compiler 2-byte alignment only, and it moves each element apart (W7's row sums of 64 bf16 values an
    item: 470 GB/s, 1520 as 16-byte words on an H100). Buffers start at least 16-byte aligned."""
    return f"((__global {const}{word_type(width)}*){buffer})[{(index // width).render()}]"


def load(statement: Load) -> str:
    out = statement.out
    if statement.mode == "vector" and out.dtype.name == "bfloat16" and aligned(statement.address, out.width):
        text = f"zyx_bf16_lanes_{out.width}({_words(statement.buffer, statement.address, out.width)})"
    elif statement.mode == "vector":
        offset = _vector_offset(statement.address, out.width, statement.buffer)
        text = f"vload{out.width}({offset})"
        if out.dtype.is_bool:
            text = f"(convert_int{out.width}({text})!=(int{out.width})(0))"
        elif out.dtype.name == "bfloat16":  # (the upper 16 bits of each float)
            text = f"as_float{out.width}(convert_uint{out.width}({text})<<16)"
        elif out.dtype.name == "float16":
            text = f"vload_half{out.width}({offset})"
    elif statement.mode == "bits":
        text = _bits_load(statement)
    elif statement.mode == "broadcast":
        element = _element(statement.buffer, statement.address, out.dtype)
        text = f"(({register_type(out.dtype, out.width)})({f'-({element}!=0)' if out.dtype.is_bool else element}))"
    else:
        text = MEMORY_ACCESS.get(out.dtype.name, PLAIN_ACCESS)[0].format(p=statement.buffer, i=statement.address.render())
    if statement.guard:
        text = f"(({condition(statement.guard)})?{text}:{operand(Const(0, out.dtype, out.width))})"
    return text


def _element(buffer: str, index: Expr, dtype: DType) -> str:
    """One element read as a value of `dtype` (half precision converted to float; masks as stored)."""
    if dtype.is_narrow_float:
        return MEMORY_ACCESS[dtype.name][0].format(p=buffer, i=index.render())
    return f"{buffer}[{index.render()}]"


def _bits_load(statement: Load) -> str:
    """16-bit elements as stored: 8 of them, at an index that is a multiple of 8, as one 16-byte word (vload8 of
    ushort may be 8 loads: it promises the compiler no more than 2-byte alignment)."""
    out, index = statement.out, statement.address
    if out.dtype == uint32 and out.width == 4 and aligned(index, 8):
        return f"((__global const uint4*){statement.buffer})[{(index // 8).render()}]"
    if out.width == 8 and aligned(index, 8):
        return f"as_short8(((__global const uint4*){statement.buffer})[{(index // 8).render()}])"
    pointer = f"((__global const ushort*){statement.buffer})"
    if out.width > 1:
        return f"as_short{out.width}(vload{out.width}({_vector_offset(index, out.width, pointer)}))"
    return f"{pointer}[{index.render()}]"


def gather(statement: Gather) -> str:
    elements = []
    for index, guard in statement.lanes:
        element = _element(statement.buffer, index, statement.out.dtype)
        element = f"-({element}!=0)" if statement.out.dtype.is_bool else element
        elements.append("0" if guard is None else f"(({condition(guard)})?{element}:0)" if guard else element)
    return f"({register_type(statement.out.dtype, statement.out.width)})({','.join(elements)})"


def store(statement: Store) -> str:
    value, dtype, buffer, index = operand(statement.value), statement.dtype, statement.buffer, statement.index
    if statement.mode == "bits":  # 8 16-bit elements as they lie (a "bits" value), at a multiple of 8: one word
        return f"((__global uint4*){buffer})[{(index // 8).render()}] = as_uint4({value});"
    if statement.mode == "vector":
        width = statement.value.width
        if dtype.name in ("bfloat16", "float16") and aligned(index, width):  # (float16: as vstore_half rounds)
            return f"{_words(buffer, index, width, '')} = ({word_type(width)})({_packed_pairs(value, dtype, width)});"
        if dtype.name == "float16":  # rounded to nearest even, as vstore_half does
            return f"vstore_half{width}({value},{_vector_offset(index, width, buffer)});"
        if dtype.name == "bfloat16":
            lanes = ",".join(f"zyx_float_to_bf16({value}.s{lane:x})" for lane in range(width))
            return f"vstore{width}((ushort{width})({lanes}),{_vector_offset(index, width, buffer)});"
        text = f"convert_uchar{width}(-{value})" if dtype.is_bool else value
        return f"vstore{width}({text},{_vector_offset(index, width, buffer)});"
    return MEMORY_ACCESS.get(dtype.name, PLAIN_ACCESS)[1].format(p=buffer, i=index.render(), v=value)


def _packed_pairs(value: str, dtype: DType, width: int) -> str:
    """The `width` lanes of a float vector as 32-bit words of two half values each (rounded to nearest even),
    comma-separated."""
    kind = "bf16" if dtype.name == "bfloat16" else "half"
    return ",".join(f"zyx_pack_{kind}({value}.s{lane:x},{value}.s{lane + 1:x})" for lane in range(0, width, 2))


def lane_select(statement: LaneSelect) -> str:
    mask = ",".join("-1" if lane is True else "0" if lane is False else f"-(int)({condition(lane)})"
                    for lane in statement.lanes)
    return f"select({operand(statement.fill)},{operand(statement.value)},(int{len(statement.lanes)})({mask}))"


# ---- statements --------------------------------------------------------------------------------------------
def _lane(value: Operand) -> str:
    """A scalar as a vector lane: a bool as a mask lane (-1 true)."""
    return f"-(int)({operand(value)})" if value.dtype.is_bool and isinstance(value, Reg) else operand(value)


def _start(value: Operand) -> str:
    """An accumulator's start: the smallest int or long spelled so that the literal itself fits."""
    if isinstance(value, Const) and value.width == 1 and value.dtype.is_int and not value.dtype.is_unsigned \
            and value.dtype.itemsize >= 4 and value.value == -(2 ** (8 * value.dtype.itemsize - 1)):
        return "(-2147483647-1)" if value.dtype.itemsize == 4 else "(-9223372036854775807L-1L)"
    return operand(value)


def _local_array(s: LocalArray) -> str:
    """Elements of `s.dtype`: half precision as its 16 bits, the way buffers keep it. An `alignment` beyond 16 bytes
    is made at run time (a pointer into an array that much longer): NVIDIA's OpenCL aligns local arrays to 16."""
    kind = f"ushort{s.width if s.width > 1 else ''}" if s.dtype.is_narrow_float else register_type(s.dtype, s.width)
    if s.alignment <= 16:
        return f"__local {kind} {s.name}[{s.size}]" + (" __attribute__((aligned(16)));" if s.aligned else ";")
    raw, mask = f"{s.name}_raw", s.alignment - 1
    padded = s.size + s.alignment // s.dtype.itemsize // s.width
    return (f"__local {kind} {raw}[{padded}] __attribute__((aligned(16))); __local {kind} *{s.name} = "
            f"{raw} + ((({s.alignment}u - ((uint)(ulong){raw} & {mask}u)) & {mask}u) / sizeof({raw}[0]));")


def _local_store(s: LocalStore) -> str:
    stored = s.dtype or s.value.dtype
    index = swizzled(s.index, s.swizzle, stored.itemsize) if s.swizzle else s.index.render()
    if s.dtype is not None and s.dtype.is_narrow_float and s.value.dtype.is_int:  # its bits ("bits" Load)
        if s.value.width == 8:  # 16 bytes at a multiple of 8 elements of an aligned array: one word
            return f"*((__local uint4*)(((__local ushort*){s.array})+{index})) = as_uint4({operand(s.value)});"
        return f"((__local ushort*){s.array})[{index}] = (ushort)({operand(s.value)});"
    if s.dtype is not None and s.dtype.is_narrow_float and s.value.width == 2:  # a pair, at an even index: one word
        return f"((__local uint*){s.array})[({index})>>1] = {_packed_pairs(operand(s.value), s.dtype, 2)};"
    if s.dtype is not None and s.dtype.is_narrow_float:  # a value (computed in float) into a half-precision array
        pointer = f"((__local {s.dtype.cl_name}*){s.array})"
        return MEMORY_ACCESS[s.dtype.name][1].format(p=pointer, i=index, v=operand(s.value))
    array = f"((__local {register_type(s.value.dtype)}*){s.array})" if s.element else s.array
    return f"{array}[{index}] = {operand(s.value)};"


def swizzle_bits(row: int) -> tuple[int, int]:
    """(shift, mask) of `zyx_swizzle(i, shift, mask) = i ^ (((i >> shift) & mask) << 3)` for an array with rows of
    `row` 16-bit elements (a power of two, 16 or more): element i's 16-byte chunk (8 elements) XORed with the index
    of its row's line (a line: 128 bytes, the 32 banks; rows of 64 bytes share one) modulo the chunks per row, at
    most 8. The 8 rows from a multiple of 8 then hold a given chunk in 8 distinct bank groups, and each row keeps
    its own chunks (a copy of whole rows stays conflict-free)."""
    chunks = row // 8
    per_line = max(1, 8 // chunks)
    return (row * per_line).bit_length() - 1, min(chunks, 8) - 1


def swizzled(index: Expr, row: int, itemsize: int = 2) -> str:
    """Where element `index` of a swizzled array with rows of `row` elements of `itemsize` bytes (2 or 4) lies
    (`swizzle_bits`; a 32-bit element where its first 16-bit half lies, halved: the pattern moves whole 16-byte
    chunks). The terms of `index` that move it by whole periods of the pattern (a buffer, a block of 16 rows)
    commute with it: they are added outside, so that the compiler computes the pattern once per item, not once
    per step."""
    halves = itemsize // 2
    shift, mask = swizzle_bits(row * halves)
    period = (1 << (shift + mask.bit_length())) // halves
    outside = Expr(index.const - index.const % period, {a: c for a, c in index.terms.items() if c % period == 0})
    inside = (index - outside) * halves
    text = f"zyx_swizzle({inside.render()},{shift},{mask})" + (f"/{halves}" if halves > 1 else "")
    return text if outside == Expr(0) else f"({text}+{outside.render()})"


def _local_address(array: str, index: Expr, swizzle: int, itemsize: int = 2) -> str:
    """The shared-memory address (32 bits) of element `index` of local `array` (`swizzle`: of `itemsize`-byte
    elements), computed in 32 bits (pointer arithmetic would take 64)."""
    position = swizzled(index, swizzle, itemsize) if swizzle else index.render()
    return f"((uint)(ulong){array} + (uint)({position})*(uint)sizeof({array}[0]))"


def _local_round_tf32(s: LocalRoundTF32) -> str:
    """The elements read, rounded and written back by one access each way (a vector of the copy's 4, 8 or 16 bytes:
    a swizzle moves whole 16-byte chunks)."""
    position = swizzled(s.index, s.swizzle, 4) if s.swizzle else s.index.render()
    if s.width == 1:
        return f"{s.array}[{position}] = zyx_round_tf32({s.array}[{position}]);"
    vector = register_type(float32, s.width)
    lanes = ",".join(f"zyx_round_tf32(v.s{lane})" for lane in range(s.width))
    return (f"{{ __local {vector}* p = (__local {vector}*)({s.array} + {position}); {vector} v = *p; "
            f"*p = ({vector})({lanes}); }}")


def _matrix_load(s: MatrixLoad) -> str:
    """ldmatrix (asm volatile: it reads local memory, and must stay between the barriers around it)."""
    trans = ".trans" if s.transposed else ""
    return (f"uint4 {s.out.name}; {{ uint t0, t1, t2, t3; asm volatile(\"ldmatrix.sync.aligned.m8n8.x4{trans}.shared.b16 "
            f"{{%0,%1,%2,%3}}, [%4];\" : \"=r\"(t0), \"=r\"(t1), \"=r\"(t2), \"=r\"(t3) : "
            f"\"r\"({_local_address(s.array, s.index, s.swizzle)})); {s.out.name} = (uint4)(t0, t1, t2, t3); }}")


def _async_copy(s: AsyncCopy) -> str:
    """cp.async global -> local: 16 bytes cached in L2 only (.cg: each is read once per group), 8 or 4 bytes in L1
    too (.ca: .cg takes 16 only); under a guard, the form with a source size (all, or 0: zeros, nothing read)."""
    size = s.itemsize * s.width
    element = "ushort" if s.itemsize == 2 else "uint"
    source = f"(ulong)(((__global const {element}*){s.buffer}) + {s.source.render()})"
    read, operands = ("", "") if not s.guard else (", %2", f", \"r\"(({condition(s.guard)})?{size}:0)")
    return (f"asm volatile(\"cp.async.{'cg' if size == 16 else 'ca'}.shared.global [%0], [%1], {size}{read};\" :: "
            f"\"r\"({_local_address(s.array, s.index, s.swizzle, s.itemsize)}), \"l\"({source}){operands} : "
            f"\"memory\");")


def _matrix_multiply(s: MatrixMultiply) -> str:
    """mma.sync, accumulating in float32 in place."""
    operands = ", ".join([f'"+f"({acc.name})' for acc in s.acc]) + " : " + ", ".join(
        f'"r"({operand(word)})' for word in (*s.a, *s.b))
    return (f"asm(\"mma.sync.aligned.{s.shape}.row.col.f32.{s.kind}.{s.kind}.f32 {{%0,%1,%2,%3}}, {{%4,%5,%6,%7}}, "
            f"{{%8,%9}}, {{%0,%1,%2,%3}};\" : {operands});")


def _warp_shuffle(s: WarpShuffle) -> str:
    """shfl.sync.bfly over the whole warp (every lane takes part: the clamp 31 keeps the partner in the warp)."""
    kind = register_type(s.out.dtype, 1)
    return (f"{kind} {s.out.name}; {{ uint t; asm volatile(\"shfl.sync.bfly.b32 %0, %1, {s.mask}, 31, -1;\" : "
            f"\"=r\"(t) : \"r\"(as_uint({operand(s.value)}))); {s.out.name} = as_{kind}(t); }}")


def _pack_halves(s: PackHalves) -> str:
    return f"zyx_pack_{'bf16' if s.dtype.name == 'bfloat16' else 'half'}({operand(s.low)},{operand(s.high)})"


def _descriptor(array: str, index: Expr, layout: int) -> str:
    """A wgmma matrix descriptor of `array` from element `index` (`layout`: its constant fields)."""
    return f"({layout}ul|(ulong)(({_local_address(array, index, 0)}&{ADDRESS_MASK}u)>>4))"


def _warpgroup_mma(s: WarpgroupMma) -> str:
    """wgmma.mma_async accumulating in place (scale-d 1), its PTX behind ptx_patch.HIDDEN (sm_90a only); the
    descriptors start unswizzled: the hardware swizzles the addresses it reads. TF32 takes no transpose
    immediates (both operands K-major), and its a from registers where it has them; 16-bit ones take imm-trans-a and
    imm-trans-b, 1 where that operand's tile lies MN-major (across k)."""
    count = len(s.acc)
    if s.a_registers:
        a_operand = "{" + ",".join(f"%{count + i}" for i in range(len(s.a_registers))) + "}"
        a_inputs = [f'"r"(as_uint({operand(r)}))' for r in s.a_registers]
    else:
        a_descriptor = _descriptor(s.a_array, s.a_index, descriptor(0, s.a_leading, SWIZZLE_PERIOD))
        a_operand, a_inputs = f"%{count}", [f'"l"({a_descriptor})']
    b, p = count + len(a_inputs), count + len(a_inputs) + 1
    b_descriptor = _descriptor(s.b_array, s.b_index, descriptor(0, s.b_leading, SWIZZLE_PERIOD))
    registers = ",".join(f"%{i}" for i in range(count))
    transposes = "" if s.kind == "tf32" else f", {int(s.a_mn_major)}, {int(s.b_mn_major)}"
    text = (f"{{\\n{HIDDEN}.reg .pred p;\\n{HIDDEN}setp.ne.b32 p, %{p}, 0;\\n{HIDDEN}wgmma.mma_async.sync.aligned."
            f"m64n{s.n}k{K_STEPS[s.kind]}.f32.{s.kind}.{s.kind} {{{registers}}}, {a_operand}, %{b}, p, 1, 1"
            f"{transposes};\\n}}\\n")
    outputs = ", ".join(f'"+f"({acc.name})' for acc in s.acc)
    return f'asm volatile("{text}" : {outputs} : {", ".join(a_inputs)}, "l"({b_descriptor}), "r"(1) : "memory");'


def _warpgroup_fence(s: WarpgroupFence) -> str:
    """wgmma.fence; the registers of a read from registers as its operands, "+f" (CUTLASS's
    warpgroup_fence_operand): the compiler computes them before it and keeps them unchanged through it."""
    if not s.registers:
        return _hidden("wgmma.fence.sync.aligned")
    operands = ", ".join(f'"+f"({r.name})' for r in s.registers)
    return f'asm volatile("{HIDDEN}wgmma.fence.sync.aligned;" : {operands} : : "memory");'


def _hidden(instruction: str) -> str:
    return f'asm volatile("{HIDDEN}{instruction};" ::: "memory");'


def _bulk_store(s: BulkStore) -> str:
    """cp.async.bulk local -> global (sm_90), `size` bytes; under a guard, none where it fails."""
    copy = (f"asm volatile(\"cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\" :: "
            f"\"l\"((ulong)(((__global ushort*){s.buffer}) + {s.target.render()})), "
            f"\"r\"({_local_address(s.array, s.index, 0)}), \"r\"((uint)({s.size.render()})) : \"memory\");")
    return f"if ({condition(s.guard)}) {copy}" if s.guard else copy


def _named_barrier(s: NamedBarrier) -> str:
    """bar.sync (waits) or bar.arrive (counts in) on barrier `ident` of `count` items (sm_70 and newer)."""
    return (f'asm volatile("bar.{"sync" if s.wait else "arrive"} %0, {s.count};" :: "r"((uint)({s.ident.render()})) '
            f': "memory");')


def _define(out: Reg, text: str) -> str:
    return f"{register_type(out.dtype, out.width)} {out.name} = {text};"


VALUES: dict[type, Callable] = {  # statements defining a register: the expression it is defined as
    Load: load, Gather: gather, Alu: alu, LaneSelect: lane_select,
    Select: lambda s: f"(({condition(s.cond)})?{operand(s.value)}:{operand(s.fill)})",
    Rand: lambda s: f"zyx_philox_uniform({s.seed},{s.offset}+(ulong)({s.index.render()}))",
    Position: lambda s: (f"(({condition(s.guard)})?({register_type(s.out.dtype)})({s.index.render()}):0)" if s.guard
                         else f"(({register_type(s.out.dtype)})({s.index.render()}))"),
    Extract: lambda s: part(s.src, s.part),
    Broadcast: lambda s: f"(({register_type(s.out.dtype, s.out.width)})({_lane(s.src)}))",
    Pack: lambda s: f"(({register_type(s.out.dtype, s.out.width)})({','.join(operand(lane) for lane in s.lanes)}))",
    Define: lambda s: _start(s.start), PackHalves: _pack_halves,
    UnpackHalves: lambda s: f"zyx_bf16_lanes_2({operand(s.word)})",
    LocalLoad: lambda s: (f"{s.array}[{s.index.render_grouped()}]" if not s.swizzle
                          else f"{s.array}[{swizzled(s.index, s.swizzle, s.out.dtype.itemsize)}]" if s.out.width == 1
                          else f"*(__local {register_type(s.out.dtype, s.out.width)}*)({s.array} + "
                               f"{swizzled(s.index, s.swizzle, s.out.dtype.itemsize)})"),
}
STATEMENTS: dict[type, Callable] = {  # the others: their line
    Accumulate: lambda s: f"{s.acc.name} = {binary(s.op, s.acc.name, operand(s.value), s.acc.dtype, s.acc.width)};",
    Store: store, Break: lambda s: "break;", Barrier: lambda s: "barrier(CLK_LOCAL_MEM_FENCE);",
    MultiplyAdd: lambda s: (f"{s.acc.name} = fma({operand(s.a)},{operand(s.b)},{s.acc.name});" if s.acc.width > 1
                            else f"{s.acc.name} += {operand(s.a)}*{operand(s.b)};"),
    LocalArray: _local_array, LocalStore: _local_store, MatrixLoad: _matrix_load, MatrixMultiply: _matrix_multiply,
    WarpShuffle: _warp_shuffle,
    AsyncCopy: _async_copy, AsyncCommit: lambda s: 'asm volatile("cp.async.commit_group;" ::: "memory");',
    AsyncWait: lambda s: f'asm volatile("cp.async.wait_group {s.pending};" ::: "memory");',
    WarpgroupMma: _warpgroup_mma, WarpgroupFence: _warpgroup_fence,
    WarpgroupCommit: lambda s: _hidden("wgmma.commit_group.sync.aligned"),
    WarpgroupWait: lambda s: _hidden(f"wgmma.wait_group.sync.aligned {s.pending}"),
    AsyncProxyFence: lambda s: 'asm volatile("fence.proxy.async.shared::cta;" ::: "memory");',
    LocalRoundTF32: _local_round_tf32,
    NamedBarrier: _named_barrier, BulkStore: _bulk_store,
    BulkCommit: lambda s: 'asm volatile("cp.async.bulk.commit_group;" ::: "memory");',
    BulkWait: lambda s: f'asm volatile("cp.async.bulk.wait_group.read {s.pending};" ::: "memory");',
    RegisterBudget: lambda s: _hidden(f"setmaxnreg.{'inc' if s.grow else 'dec'}.sync.aligned.u32 {s.count}"),
}


INT_RANGE = 2**31


def _wide(count: int, body: tuple) -> bool:
    """Whether counters need "long": `count` (loop trips or work items) or an index computed in `body` reaches past
    int (a product of int counters and strides wraps before it is added to anything wider)."""
    indices = (s.address if isinstance(s, Load) else getattr(s, "index", None) for s in walk(body))
    return count >= INT_RANGE or any(isinstance(index, Expr) and index.hi >= INT_RANGE for index in indices)


def _loop(statement: Loop, lines: BodyPrinter, indent: str) -> list[str]:
    counter = "long" if _wide(statement.trips, statement.body) else "int"
    return ([indent + "#pragma unroll"] if statement.unroll else []) + [
        f"{indent}for ({counter} {statement.var} = 0; {statement.var} < {statement.trips}; {statement.var}++) {{",
        *lines(statement.body, indent + "  "), indent + "}"]


def _branch(statement: If, lines: BodyPrinter, indent: str) -> list[str]:
    inner = lines(statement.body, "")
    if len(inner) == 1:
        return [f"{indent}if ({branch_condition(statement)}) {inner[0]}"]
    return [f"{indent}if ({branch_condition(statement)}) {{", *(indent + "  " + line for line in inner), indent + "}"]


SYNTAX = Syntax(VALUES, STATEMENTS, lambda s, text: _define(s.out, text), _loop, _branch)


def _signature(kernel: Kernel) -> str:
    params = []
    for p in kernel.params:
        if p.kind in ("seed", "offset"):
            params.append(f"ulong {p.name}")
        else:
            const = "const " if p.kind == "load" else ""
            params.append(f"__global {const}{p.dtype.cl_name}* restrict {p.name}")
    return ", ".join(params)


def print_kernel(kernel: Kernel) -> tuple[str, str]:
    """(name, OpenCL C source with the helpers it calls)."""
    name = kernel_name(kernel, VERSION)
    index_type = "long" if _wide(kernel.work_items, kernel.body) else "int"
    if kernel.axis(Role.LOCAL) is not None:
        header = [f"  {index_type} gid = get_group_id(0);", f"  {index_type} lid = get_local_id(0);"]
    else:
        header = [f"  {index_type} gid = get_global_id(0);"]
    body = "\n".join(header + body_lines(_erf_given_exp(kernel.body), "  ", SYNTAX))
    uses_double = float64 in dtypes_used(kernel)
    uses_rand = any(isinstance(s, Rand) for s in walk(kernel.body))
    text = f"__kernel{_group_size([kernel], kernel.launch[1])} void {name}({_signature(kernel)}) {{\n{body}\n}}\n"
    return name, prelude(uses_double, uses_rand, text) + text


def _erf_given_exp(body: tuple, known: Optional[dict[str, Reg]] = None) -> tuple:
    """`body` with each float32 erf of a register whose exp(-r·r) an earlier statement in scope computes (`known`:
    those of enclosing scopes) as ERF_GIVEN_EXP of both: the prelude's erf polynomials take that exponential
    (zyx_erf_exp) instead of computing it again. GELU's backward has both of x/√2 (Φ and φ): on PoCL 3.1 (Zen 2)
    W7's GELU-backward product took 9.8 ms a call, 8.8 with the exponential once, its outputs the same bits (erf's
    own is exp(-a·a) of a = |r|)."""
    known = dict(known or {})
    chains = _gaussians(body)
    exps = {body[chain[-1]].out.name: name for name, chain in chains.items()}  # an exponential's register -> its r
    out = []
    for s in _exps_ahead_of_erfs(body, chains):
        erf = _erf_of(s)
        if isinstance(s, (Loop, If)):
            s = dataclasses.replace(s, body=_erf_given_exp(s.body, known))
        elif isinstance(s, Alu) and s.out.name in exps:
            known.setdefault(exps[s.out.name], s.out)
        elif erf in known and known[erf].width == s.out.width:
            s = Alu(s.out, ERF_GIVEN_EXP, (s.args[0], known[erf]))
        out.append(s)
    return tuple(out)


def _erf_of(statement: object) -> Optional[str]:
    """The float32 register `statement` takes the erf of, if it is such an erf."""
    if isinstance(statement, Alu) and statement.op is Op.ERF and isinstance(statement.args[0], Reg) \
            and statement.out.dtype == float32:
        return statement.args[0].name
    return None


def _gaussians(body: tuple) -> dict[str, list[int]]:
    """Per float32 register r, the positions in `body` of the first statements computing exp(-r·r): r·r, its
    negation, the exponential."""
    squares: dict[str, tuple[str, list[int]]] = {}
    negations: dict[str, tuple[str, list[int]]] = {}
    chains: dict[str, list[int]] = {}
    for position, s in enumerate(body):
        if not isinstance(s, Alu) or s.out.dtype != float32 or not all(isinstance(a, Reg) for a in s.args):
            continue
        if s.op is Op.MUL and s.args[0] == s.args[1]:
            squares[s.out.name] = (s.args[0].name, [position])
        elif s.op is Op.NEG and s.args[0].name in squares:
            name, positions = squares[s.args[0].name]
            negations[s.out.name] = (name, [*positions, position])
        elif s.op is Op.EXP and s.args[0].name in negations:
            name, positions = negations[s.args[0].name]
            chains.setdefault(name, [*positions, position])
    return chains


def _exps_ahead_of_erfs(body: tuple, chains: dict[str, list[int]]) -> tuple:
    """`body` with each exp(-r·r) that an erf of r comes before (the statements computing it, at the positions
    `chains` (_gaussians) holds: r·r, its negation, the exponential, which read r alone) moved just ahead of that
    erf, so that the erf can take it."""
    chains = dict(chains)
    ahead = {}  # an erf's position -> the chain moved ahead of it
    for position, s in enumerate(body):
        chain = chains.pop(_erf_of(s) or "", None)
        if chain is not None and chain[0] > position:
            ahead[position] = chain
    if not ahead:
        return body
    moved = {p for chain in ahead.values() for p in chain}
    return tuple(t for position, s in enumerate(body) if position not in moved
                 for t in (*(body[p] for p in ahead.get(position, ())), s))


def _group_size(kernels: Sequence[Kernel], local_size: Optional[int]) -> str:
    """Where items hand work over by named barriers, or its groups are larger than STATED_ABOVE items, the kernel
    states its work group's size: NVIDIA's compiler then fits each item's registers to the group (a group of 384
    items may hold 168 each; without it a kernel may take more, and fail to launch: a lone reduction's groups of
    1024 on an H100, which allowed 256)."""
    if (local_size or 0) <= STATED_ABOVE and not any(isinstance(s, NamedBarrier) for kernel in kernels
                                                     for s in walk(kernel.body)):
        return ""
    return f" __attribute__(({GROUP_SIZE_STATED}({local_size}, 1, 1)))"


STATED_ABOVE = 256  # items of a work group, past which its kernel states the group's size


def print_group(kernels: Sequence[Kernel], local_size: Optional[int] = None) -> tuple[str, str]:
    """(name, source) of one kernel running `kernels` side by side (launch_groups.py says which kernels may). Without
    a `local_size` work items are numbered through them in order, each running its kernel's body with `gid` counted
    from that kernel's first item. With one, each kernel takes whole work groups (`launch_groups_of`) and `gid`
    counts its groups (a kernel with work groups) or its items (one without, items past its own skipped); the
    branch taken is the same for a whole group, so its barriers are reached by all its items. Parameters and
    local arrays must have distinct names; the local arrays are declared at the kernel's top."""
    counts = [launch_groups_of(kernel, local_size) for kernel in kernels]
    scale = local_size or 1
    index_type = "long" if any(_wide(sum(counts) * scale, kernel.body) for kernel in kernels) else "int"
    params = ", ".join(_signature(kernel) for kernel in kernels)
    arrays = [statement for kernel in kernels for statement in kernel.body if isinstance(statement, LocalArray)]
    position = "get_group_id(0)" if local_size else "get_global_id(0)"
    lines, start = [f"  {index_type} position = {position};", *("  " + _local_array(a) for a in arrays)], 0
    for k, (kernel, count) in enumerate(zip(kernels, counts)):
        end = start + count
        lines.append(f"  {'} else ' if k else ''}if (position < {end}) {{")
        statements = tuple(s for s in kernel.body if not isinstance(s, LocalArray))
        body = body_lines(_erf_given_exp(statements), "    ", SYNTAX)
        if local_size is None:
            lines.append(f"    {index_type} gid = position - {start};")
        elif kernel.axis(Role.LOCAL) is not None:
            lines += [f"    {index_type} gid = position - {start};", f"    {index_type} lid = get_local_id(0);"]
        else:
            lines.append(f"    {index_type} gid = get_global_id(0) - {start * local_size};")
            items = kernel.launch[0]
            if items % local_size and kernel.local_size is None:  # launched alone, it had exactly its items
                body = [f"    if (gid < {items}) {{", *("  " + line for line in body), "    }"]
        lines += body
        start = end
    text = "\n".join(lines) + "\n  }"
    name = f"h_{hash_hex(params + text + VERSION)[:12]}"
    text = f"__kernel{_group_size(kernels, local_size)} void {name}({params}) {{\n{text}\n}}\n"
    uses_double = any(float64 in dtypes_used(kernel) for kernel in kernels)
    uses_rand = any(isinstance(s, Rand) for kernel in kernels for s in walk(kernel.body))
    return name, prelude(uses_double, uses_rand, text) + text


