"""The WGSL printer: kernel IR in, a WebGPU compute shader out. The only module that writes WGSL.

The same shape as print_opencl.py (statements by the function their type is keyed to, ALU ops by templates
keyed by op and operand kind), written for what WGSL has and lacks:
- no float64: refused (`WgslUnsupported`); no 64-bit integers: int64 is computed in i32 and stored as two words
  (the high one the sign), its constants must fit 32 bits;
- no 8- or 16-bit buffers: bool, uint8, int8, int16, float16 and bfloat16 live packed in u32 words, read by
  shifts and written with atomicAnd/atomicOr on the word (neighbouring items write the other lanes of a word),
  or whole words where every store writes four bool lanes at once;
- no isnan or infinity literals, and a driver that may assume no nan (Vulkan lets it: naga declares no
  SignedZeroInfNanPreserve): `x != x` may fold to false, a comparison of a nan to anything may hold, and `x <= 0 ?
  0 : x` may become a max that drops the nan (relu(nan) gives 0 on NVIDIA's Vulkan driver). So nan is tested on
  the bits, float comparisons are false where either side's bits are nan, a max takes a nan from either side and
  where() selects the values' bits; no pow of negative bases, no mul_hi (Philox), tanh that may not saturate:
  helpers and composed templates;
- no unroll hint: a loop the IR marks for unrolling (OpenCL's #pragma unroll) is printed a block per trip (naga
  bounds every loop with a counter, which also hides the trip count from the driver);
- vectors of at most four lanes; a float buffer every access of which is a whole aligned vector is declared as
  vec4 (one 16-byte load per item, as OpenCL's vload4);
- the work group size is part of the shader: the IR's, else WORKGROUP items; a launch larger than the device's
  65535 groups per dimension folds into two dimensions, the shader flattening them back (`gid` past the end
  returns at once, uniformly per group).
Storage buffers are bound in parameter order at group 0; random streams' seeds and offsets follow as one uniform
array of (low, high, 0, 0) u32 words, one per parameter (`SCALAR_SLOT_BYTES`).
"""
from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import Callable, Optional

import numpy as np

from ..dtypes import DType, float32, int_range, int32, uint32
from ..trace.ops import Op
from ..trace.philox import WGSL_SOURCE as PHILOX_SOURCE
from .kernel_ir import (LESS_EQUAL, Accumulate, Alu, Barrier, Break, Broadcast, Cond, Const, Define, Extract, Gather,
                        If, Kernel, Lane, LaneSelect, Load, LocalArray, LocalLoad, LocalStore, Loop, MultiplyAdd,
                        NVIDIA_ONLY, Operand, Pack, Rand, Reg, Role, Select, Statement, Store, walk)
from .print_common import (TANH_SATURATED, BodyPrinter, Syntax, aligned, body_lines, branch_condition, condition,
                           dtypes_used, kernel_name, negatable, pick)
from .symbolic import Expr

VERSION = "wgsl-4"  # bump when the same IR prints differently
WORKGROUP = 64      # items per group of a kernel whose IR leaves the group free
SCALAR_SLOT_BYTES = 16  # one vec4<u32> per seed or offset parameter in the uniform buffer


class WgslUnsupported(TypeError):
    """The kernel needs what WGSL cannot express (float64, a 64-bit constant, a vector of more than four lanes,
    NVIDIA's tensor-core and asynchronous-copy instructions)."""


# ---- types and literals ----------------------------------------------------------------------------------
SCALAR = {"bool": "bool", "uint8": "u32", "int8": "i32", "int16": "i32", "int32": "i32", "uint32": "u32",
          "int64": "i32", "float16": "f32", "bfloat16": "f32", "float32": "f32"}
NARROW = {"uint8": "({0}&255u)", "int8": "extractBits({0},0u,8u)", "int16": "extractBits({0},0u,16u)"}
"""Integers narrower than their register: each result wrapped as the dtype wraps (int8 sign-extended)."""


def register_type(dtype: DType, width: int = 1) -> str:
    if dtype.name not in SCALAR:
        raise WgslUnsupported(f"WGSL has no {dtype.name}")
    if width > 4:
        raise WgslUnsupported(f"WGSL vectors have at most 4 lanes, not {width}")
    return f"vec{width}<{SCALAR[dtype.name]}>" if width > 1 else SCALAR[dtype.name]


def tag(dtype: DType, width: int = 1) -> str:
    """A register type as part of a helper's name: f32, v4f32, u32..."""
    scalar = register_type(dtype)
    return f"v{width}{scalar}" if width > 1 else scalar


def _kind(dtype: DType) -> str:
    return "bool" if dtype.is_bool else "float" if dtype.is_float else "uint" if register_type(dtype) == "u32" else "int"


def _float_bits(value: float) -> Optional[str]:
    """NaN and infinities, which WGSL has no literal for, by their bits."""
    if math.isnan(value):
        return "bitcast<f32>(0x7fc00000u)"
    if math.isinf(value):
        return "bitcast<f32>(0xff800000u)" if value < 0 else "bitcast<f32>(0x7f800000u)"
    return None


def literal(value: object, dtype: DType) -> str:
    if dtype.is_bool:
        return "true" if value else "false"
    if dtype.is_int:
        number = int(value)  # type: ignore[call-overload]
        if dtype.name == "int64" and number in int_range(dtype):  # the type's bounds: the 32-bit bounds (reductions)
            number = int_range(int32)[int_range(dtype).index(number)]
        if register_type(dtype) == "u32":
            return f"{number}u"
        low, high = int_range(int32)
        if not low <= number <= high:
            raise WgslUnsupported(f"the {dtype.name} constant {number} does not fit the 32 bits WGSL computes it in")
        return f"i32({number + 1}-1)" if number == low else f"{number}i"
    number = float(np.float32(value))  # type: ignore[arg-type]
    bits = _float_bits(number)
    if bits is not None:
        return bits
    text = repr(number)
    return f"{text}f" if "e" in text or "." in text else f"{text}.0f"


def operand(value: Operand) -> str:
    if isinstance(value, Reg):
        return value.name
    if isinstance(value, Lane):
        return _swizzle(value.src, value.part)
    if value.width == 1:
        return literal(value.value, value.dtype)
    lanes = value.value if isinstance(value.value, tuple) else (value.value,)  # a value per lane, or one for all
    return f"{register_type(value.dtype, value.width)}({','.join(literal(v, value.dtype) for v in lanes)})"


# ---- ALU ops -----------------------------------------------------------------------------------------------
# keyed by op, then by the operands' kind ("bool", "int", "uint", "float", "*" for any); {r}: the register tag
ERF_T = "({one}/({one}+0.3275911*abs({0})))"  # WGSL has no erf: Abramowitz-Stegun 7.1.26 (error below 1.5e-7)
ERF_WGSL = (f"(sign({{0}})*({{one}}-{ERF_T}*(0.254829592+{ERF_T}*(-0.284496736+{ERF_T}*(1.421413741+{ERF_T}*"
            f"(-1.453152027+{ERF_T}*1.061405429))))*exp(-{{0}}*{{0}})))")
UNARY: dict[object, dict[str, str]] = {
    Op.NEG: {"uint": "(0u-{0})", "*": "(-{0})"}, Op.RECIP: {"*": "({one}/{0})"}, Op.SQRT: {"*": "sqrt({0})"},
    Op.EXP: {"*": "exp({0})"}, Op.LOG: {"*": "log({0})"}, Op.SIN: {"*": "sin({0})"}, Op.COS: {"*": "cos({0})"},
    Op.SIGMOID: {"*": "({one}/({one}+exp(-{0})))"},
    Op.ERF: {"*": ERF_WGSL},
    # tanh past `saturated` is ±1 (an implementation through exp may give nan there), and x itself below TANH_LINEAR
    # (where x³/3 is under half an ulp of x: implementations through exp lose tiny values, lavapipe's gives 0)
    Op.TANH: {"*": "select(select(tanh({0}),{0},zyx_lt_{r}(abs({0}),{linear})),sign({0}),"
                   "zyx_lt_{r}({saturated},abs({0})))"},
    Op.FLOOR: {"*": "floor({0})"}, Op.CEIL: {"*": "ceil({0})"}, Op.RINT: {"*": "round({0})"},  # (half to even)
    Op.NOT: {"bool": "(!{0})", "*": "(~{0})"}, Op.DETACH: {"*": "{0}"},
}
TANH_LINEAR = 4e-4  # sqrt(3) 2^-12: below it tanh(x) rounds to x in float32

BINARY: dict[object, dict[str, str]] = {
    Op.ADD: {"bool": "({0}|{1})", "*": "({0}+{1})"},
    Op.MUL: {"bool": "({0}&{1})", "*": "({0}*{1})"},
    Op.DIV: {"float": "({0}/{1})", "*": "zyx_floordiv_{r}({0},{1})"},
    Op.POW: {"*": "zyx_pow_{r}({0},{1})"},
    Op.MAX: {"float": "zyx_max_{r}({0},{1})", "bool": "({0}|{1})", "*": "max({0},{1})"},
    # float comparisons false where a side is nan, whatever the driver assumes (`_float_helpers`)
    Op.CMPLT: {"bool": "((!{0})&{1})", "float": "zyx_lt_{r}({0},{1})", "*": "({0}<{1})"},
    Op.CMPEQ: {"float": "zyx_eq_{r}({0},{1})", "*": "({0}=={1})"},
    LESS_EQUAL: {"bool": "((!{0})|{1})", "float": "zyx_le_{r}({0},{1})", "*": "({0}<={1})"},
    Op.AND: {"*": "({0}&{1})"}, Op.OR: {"*": "({0}|{1})"}, Op.XOR: {"bool": "({0}!={1})", "*": "({0}^{1})"},
    # a count outside [0, bits) shifts every bit out (PyTorch's), for the dtype's own width
    Op.SHL: {"*": "zyx_shl_{t}({0},{1})"}, Op.SHR: {"*": "zyx_shr_{t}({0},{1})"},
}


def wrapped(text: str, dtype: DType) -> str:
    """`text` wrapped to `dtype`'s width, where its register is wider."""
    return NARROW[dtype.name].format(text) if dtype.name in NARROW else text


def unary(op: Op, x: str, dtype: DType, width: int) -> str:
    x = negatable(op, x)
    bounds = {"saturated": operand(Const(TANH_SATURATED[dtype.name], dtype, width)),
              "linear": operand(Const(TANH_LINEAR, dtype, width))} if op is Op.TANH else {}
    return pick([UNARY[op]], _kind(dtype)).format(x, one=literal(1, dtype), r=tag(dtype, width), **bounds)


def binary(op: object, a: str, b: str, dtype: DType, width: int = 1) -> str:
    """`dtype` is the operands' dtype."""
    return pick([BINARY[op]], _kind(dtype)).format(a, b, r=tag(dtype, width), t=_shift_tag(dtype))


def alu(statement: Alu) -> str:
    op, out, args = statement.op, statement.out, statement.args
    texts = [operand(a) for a in args]
    if op is Op.CAST:
        return _cast(texts[0], args[0].dtype, out.dtype, out.width)
    if op is Op.WHERE and out.dtype.is_float:  # the bits selected: no select of floats a driver may make a max of
        bits = register_type(uint32, out.width)
        chosen = f"select(bitcast<{bits}>({texts[2]}),bitcast<{bits}>({texts[1]}),{texts[0]})"
        return f"bitcast<{register_type(out.dtype, out.width)}>({chosen})"
    if op is Op.WHERE:
        return f"select({texts[2]},{texts[1]},{texts[0]})"
    if op is Op.CMPEQ and args[0] == args[1] and args[0].dtype.is_float:  # x == x: not nan, from its bits
        return f"(!zyx_isnan_{tag(args[0].dtype, out.width)}({texts[0]}))"
    if len(args) == 1:
        return wrapped(unary(op, texts[0], out.dtype, out.width), out.dtype)  # type: ignore[arg-type]
    return wrapped(binary(op, texts[0], texts[1], args[0].dtype, out.width), out.dtype)


HALF_ROUNDINGS = {"bfloat16": "zyx_round_bf16({})", "float16": "zyx_f16_value(zyx_f16_bits({}))"}


def _cast(x: str, source: DType, target: DType, width: int) -> str:
    if target.is_bool:
        return x if source.is_bool else f"({x}!={operand(Const(0, source, width))})"
    if target.name in HALF_ROUNDINGS:  # rounded where cast, as stored: lane by lane (the helpers take an f32)
        rounded = HALF_ROUNDINGS[target.name]
        if width == 1:
            return rounded.format(f"f32({x})")
        return f"{register_type(target, width)}({','.join(rounded.format(f'f32(({x})[{i}])') for i in range(width))})"
    if source.is_float and target.name == "uint8":
        x = f"i32({x})"  # through int, as numpy: -1.0 -> 255
    return wrapped(f"{register_type(target, width)}({x})", target)


# ---- buffers -----------------------------------------------------------------------------------------------
# dtypes packed in u32 words: (elements per word, the value from its bits {b}, the bits of a value {v})
PACKED = {
    "bool": (4, "({b}!=0u)", "select(0u,1u,{v})"),
    "uint8": (4, "{b}", "({v}&255u)"),
    "int8": (4, "extractBits(i32({b}),0u,8u)", "(u32({v})&255u)"),
    "int16": (2, "extractBits(i32({b}),0u,16u)", "(u32({v})&65535u)"),
    "float16": (2, "zyx_f16_value({b})", "zyx_f16_bits({v})"),
    "bfloat16": (2, "bitcast<f32>({b}<<16u)", "zyx_bf16_bits({v})"),
}
WORDS = {"int64": 2}  # elements stored in this many 32-bit words (the low one holds the value)


@dataclasses.dataclass(frozen=True)
class Binding:
    """How a buffer parameter is declared: `lanes` 4 for vec4 elements (every access a whole aligned vector),
    `atomic` for packed dtypes written a lane of a word at a time."""

    dtype: DType
    lanes: int = 1
    atomic: bool = False

    @property
    def element(self) -> str:
        scalar = "u32" if self.dtype.name in PACKED else SCALAR[self.dtype.name]
        if self.atomic:
            return "atomic<u32>"
        return f"vec4<{scalar}>" if self.lanes == 4 else scalar


def bindings(kernel: Kernel) -> dict[str, Binding]:
    """Each buffer parameter's declaration, from every access the kernel makes to it."""
    accesses: dict[str, list[Statement]] = defaultdict(list)
    for statement in walk(kernel.body):
        if isinstance(statement, (Load, Gather, Store)):
            accesses[statement.buffer].append(statement)
    found = {}
    for param in kernel.params:
        if param.kind not in ("load", "store"):
            continue
        used = accesses[param.name]
        if param.dtype.name in PACKED:
            found[param.name] = Binding(param.dtype, atomic=param.kind == "store" and not all(map(_whole_words, used)))
        else:
            whole = bool(used) and param.dtype.itemsize == 4 and all(_whole_vector(s, 4) for s in used)
            found[param.name] = Binding(param.dtype, lanes=4 if whole else 1)
    return found


def _whole_vector(statement: Statement, width: int) -> bool:
    lanes = statement.value.width if isinstance(statement, Store) else statement.out.width  # type: ignore[union-attr]
    return getattr(statement, "mode", "") == "vector" and lanes == width and aligned(getattr(statement, "address", statement.index), width)  # type: ignore[union-attr]


def _whole_words(statement: Statement) -> bool:
    return _whole_vector(statement, 4) and PACKED[statement.dtype.name][0] == 4  # type: ignore[union-attr]


def _read(binding: Binding, buffer: str, index: Expr) -> str:
    """One element at `index`, as its register holds it."""
    name = binding.dtype.name
    if name in PACKED:
        per, value, _ = PACKED[name]
        return value.format(b=f"zyx_lane{32 // per}({buffer}[{(index // per).render()}],{index.render()})")
    if binding.lanes == 4:
        return f"{buffer}[{(index // 4).render()}][{(index % 4).render()}]"
    return f"{buffer}[{(index * WORDS.get(name, 1)).render()}]"


def _write(binding: Binding, buffer: str, index: Expr, value: str) -> str:
    """The line storing one element at `index`."""
    name = binding.dtype.name
    if name in PACKED:
        per, _, bits = PACKED[name]
        word, shift = f"&{buffer}[{(index // per).render()}]", f"(u32({index.render()}%{per})*{32 // per}u)"
        return (f"atomicAnd({word},~({(1 << 32 // per) - 1}u<<{shift})); "
                f"atomicOr({word},{bits.format(v=value)}<<{shift});")
    if name in WORDS:
        first = index * WORDS[name]
        return f"{buffer}[{first.render()}] = {value}; {buffer}[{(first + 1).render()}] = ({value}>>31u);"
    return f"{buffer}[{index.render()}] = {value};"


def _guarded(text: str, guard: Optional[Cond], zero: str) -> str:
    """A read that is `zero` where its guard fails (wgpu bounds-checks the read itself, so it is harmless)."""
    return f"select({zero},{text},{condition(guard)})" if guard else text


# ---- statements --------------------------------------------------------------------------------------------
def _syntax(layout: dict[str, Binding], lanes: dict[str, int]) -> Syntax:
    """The statement printers for a kernel whose buffers are declared as `layout` says and whose local arrays
    hold vectors of `lanes`."""
    def load(s: Load) -> str:
        out, binding = s.out, layout[s.buffer]
        vector = register_type(out.dtype, out.width)
        if s.mode == "broadcast":
            text = f"{vector}({_read(binding, s.buffer, s.address)})"
        elif s.mode == "vector" and binding.lanes == 4:
            text = f"{s.buffer}[{(s.address // 4).render()}]"
        elif s.mode == "vector" and out.dtype.is_bool and out.width == 4 and aligned(s.address, 4):
            text = f"zyx_bools({s.buffer}[{(s.address // 4).render()}])"
        elif s.mode == "vector":
            text = f"{vector}({','.join(_read(binding, s.buffer, s.address + lane) for lane in range(out.width))})"
        else:
            text = _read(binding, s.buffer, s.address)
        return _guarded(text, s.guard, operand(Const(0, out.dtype, out.width)))

    def gather(s: Gather) -> str:
        zero = literal(0, s.out.dtype)
        lanes = [zero if guard is None else _guarded(_read(layout[s.buffer], s.buffer, index), guard, zero)
                 for index, guard in s.lanes]
        return f"{register_type(s.out.dtype, s.out.width)}({','.join(lanes)})"

    def store(s: Store) -> str:
        binding, value = layout[s.buffer], operand(s.value)
        if s.mode != "vector":
            return _write(binding, s.buffer, s.index, value)
        if binding.lanes == 4:
            return f"{s.buffer}[{(s.index // 4).render()}] = {value};"
        if s.dtype.is_bool and not binding.atomic:
            return f"{s.buffer}[{(s.index // 4).render()}] = zyx_bools_word({value});"
        return " ".join(_write(binding, s.buffer, s.index + lane, f"{value}[{lane}]")
                        for lane in range(s.value.width))

    def accumulate(s: Accumulate) -> str:
        text = binary(s.op, s.acc.name, operand(s.value), s.acc.dtype, s.acc.width)
        return f"{s.acc.name} = {wrapped(text, s.acc.dtype)};"

    values: dict[type, Callable] = {
        Load: load, Gather: gather, Alu: alu,
        LaneSelect: lambda s: (f"select({operand(s.fill)},{operand(s.value)},vec{len(s.lanes)}<bool>("
                               + ",".join(str(lane).lower() if isinstance(lane, bool) else f"({condition(lane)})"
                                          for lane in s.lanes) + "))"),
        Select: lambda s: f"select({operand(s.fill)},{operand(s.value)},{condition(s.cond)})",
        Rand: lambda s: f"zyx_philox_uniform({s.seed},{s.offset},u32({s.index.render()}))",
        Extract: lambda s: _swizzle(s.src, s.part),
        Broadcast: lambda s: f"{register_type(s.out.dtype, s.out.width)}({operand(s.src)})",
        Pack: lambda s: f"{register_type(s.out.dtype, s.out.width)}({','.join(operand(lane) for lane in s.lanes)})",
        Define: lambda s: operand(s.start),
        LocalLoad: lambda s: f"{s.array}[{s.index.render()}]",
    }
    statements: dict[type, Callable] = {
        Accumulate: accumulate, Store: store, Break: lambda s: "break;", Barrier: lambda s: "workgroupBarrier();",
        MultiplyAdd: lambda s: f"{s.acc.name} = fma({operand(s.a)},{operand(s.b)},{s.acc.name});",
        LocalArray: lambda s: "",  # declared at module scope (`_module_scope`)
        LocalStore: lambda s: (f"{s.array}[{(s.index // lanes[s.array]).render()}][{(s.index % lanes[s.array]).render()}]"
                               if s.element and lanes[s.array] > 1 else f"{s.array}[{s.index.render()}]")
                              + f" = {operand(s.value)};",
    }
    return Syntax(values, statements, _define, _loop, _branch)


def _swizzle(vector: Reg, part: str) -> str:
    """A vector's half ("lo", "hi") or lane ("sN") as a swizzle."""
    lanes = "xyzw"[:vector.width]
    if part == "lo":
        return f"{vector.name}.{lanes[:vector.width // 2]}"
    if part == "hi":
        return f"{vector.name}.{lanes[vector.width // 2:]}"
    return f"{vector.name}.{lanes[int(part[1:])]}"


def _define(statement: Statement, text: str) -> str:
    out: Reg = statement.out  # type: ignore[attr-defined]
    keyword = "var" if isinstance(statement, Define) else "let"  # an accumulator is updated; registers are not
    return f"{keyword} {out.name}: {register_type(out.dtype, out.width)} = {text};"


def _loop(statement: Loop, lines: BodyPrinter, indent: str) -> list[str]:
    if statement.trips >= 2**31:
        raise WgslUnsupported(f"a loop of {statement.trips} trips does not fit WGSL's i32 counter")
    var = statement.var
    if statement.unroll:  # WGSL has no unroll hint (OpenCL's #pragma unroll): a block per trip, the counter a constant
        body = lines(statement.body, indent + "  ")
        return [line for trip in range(statement.trips) for line in (f"{indent}{{ let {var}: i32 = {trip};", *body,
                                                                     indent + "}")]
    return [f"{indent}for (var {var}: i32 = 0; {var} < {statement.trips}; {var}++) {{",
            *lines(statement.body, indent + "  "), indent + "}"]


def _branch(statement: If, lines: BodyPrinter, indent: str) -> list[str]:
    return [f"{indent}if ({branch_condition(statement)}) {{", *lines(statement.body, indent + "  "), indent + "}"]


# ---- the shader --------------------------------------------------------------------------------------------
def workgroup_size(kernel: Kernel) -> int:
    """Items per work group: the IR's, else WORKGROUP."""
    return kernel.launch[1] or WORKGROUP


def launch(kernel: Kernel) -> tuple[int, int]:
    """Global and local size of the kernel's launch (the global size is rounded up to whole groups later)."""
    return kernel.launch[0], workgroup_size(kernel)


def print_kernel(kernel: Kernel) -> tuple[str, str]:
    """(name, WGSL source with the helpers it calls)."""
    unsupported = sorted(d.name for d in dtypes_used(kernel) if d.name not in SCALAR)
    if unsupported:
        raise WgslUnsupported(f"WGSL has no {', '.join(unsupported)}")
    if kernel.work_items >= 2**31:
        raise WgslUnsupported(f"{kernel.work_items} work items do not fit WGSL's i32 index")
    nvidia = sorted({type(s).__name__ for s in walk(kernel.body) if isinstance(s, NVIDIA_ONLY)})
    if nvidia:
        raise WgslUnsupported(f"{', '.join(nvidia)}: NVIDIA's inline PTX, which WGSL cannot express")
    name, group = kernel_name(kernel, VERSION), workgroup_size(kernel)
    layout = bindings(kernel)
    lanes = {s.name: s.width for s in walk(kernel.body) if isinstance(s, LocalArray)}
    declarations, header = _module_scope(kernel, layout), []
    if kernel.axis(Role.LOCAL) is not None:
        header += ["let gid = zyx_flat;", "let lid = i32(zyx_item);"]
    else:
        header += [f"let gid = zyx_flat * {group} + i32(zyx_item);"]
    header.append(f"if (gid >= {kernel.work_items}) {{ return; }}")
    scalars = [p for p in kernel.params if p.kind in ("seed", "offset")]
    header += [f"let {p.name} = zyx_scalars[{k}].xy;" for k, p in enumerate(scalars)]
    body = "\n".join("  " + line for line in header) + "\n" + "\n".join(
        line for line in body_lines(kernel.body, "  ", _syntax(layout, lanes)) if line.strip())
    text = (f"@compute @workgroup_size({group})\n"
            f"fn {name}(@builtin(workgroup_id) zyx_group: vec3<u32>, @builtin(num_workgroups) zyx_groups: vec3<u32>,"
            f" @builtin(local_invocation_index) zyx_item: u32) {{\n"
            f"  let zyx_flat = i32(zyx_group.x + zyx_group.y * zyx_groups.x);\n{body}\n}}\n")
    return name, "\n".join(declarations) + "\n" + helpers(text) + text


def _module_scope(kernel: Kernel, layout: dict[str, Binding]) -> list[str]:
    """Bindings (buffers in parameter order, then the scalars' uniform array) and work group arrays."""
    lines, binding = [], 0
    for param in kernel.params:
        if param.name in layout:
            access = "read" if param.kind == "load" else "read_write"
            lines.append(f"@group(0) @binding({binding}) var<storage, {access}> {param.name}: "
                         f"array<{layout[param.name].element}>;")
            binding += 1
    scalars = sum(p.kind in ("seed", "offset") for p in kernel.params)
    if scalars:
        lines.append(f"@group(0) @binding({binding}) var<uniform> zyx_scalars: array<vec4<u32>, {scalars}>;")
    lines += [f"var<workgroup> {s.name}: array<{register_type(s.dtype, s.width)}, {s.size}>;"
              for s in walk(kernel.body) if isinstance(s, LocalArray)]
    return lines


def writable(source: str, bindings: list[int]) -> str:
    """`source` with the read-only buffers at `bindings` declared read_write: WebGPU refuses a buffer bound
    read-only and writable in one dispatch, which an in-place update (an input overwritten by the output) does."""
    for binding in bindings:
        source = source.replace(f"@binding({binding}) var<storage, read> ", f"@binding({binding}) var<storage, read_write> ")
    return source


# ---- helpers -----------------------------------------------------------------------------------------------
FLOAT_TYPES = ("f32", "vec2<f32>", "vec3<f32>", "vec4<f32>")
COMPARISONS = ("lt", "le", "eq")  # zyx_lt_T, zyx_le_T, zyx_eq_T


def _float_helpers(vector: str) -> list[str]:
    """isnan, comparisons false where either side is nan, a max that nan wins and C's pow for one float register
    type. Comparisons are made on the bits: Vulkan lets a driver assume floats are never nan nor infinite (SPIR-V
    without SignedZeroInfNanPreserve, which naga does not declare), so `x != x` may fold to false, `a < b` hold
    for a nan, `x == inf` fold to false (NVIDIA's did: a GradScaler's overflowing scale grew to inf), and
    `select(b, a, a > b)` become a max that drops a nan. Ordered as integers, a float's bits with the magnitude of
    negatives flipped (`zyx_key`) compare as the floats do, but for -0 < +0 (`both zero` mends that)."""
    t, wide = _float_tag(vector), vector != "f32"
    u = f"vec{vector[3]}<u32>" if wide else "u32"
    i = f"vec{vector[3]}<i32>" if wide else "i32"
    truth = f"vec{vector[3]}<bool>" if wide else "bool"
    ordered = f"!zyx_isnan_{t}(a) & !zyx_isnan_{t}(b)"
    zeros = f"((bitcast<{u}>(a) | bitcast<{u}>(b)) & {u}(0x7fffffffu)) == {u}(0u)"
    lines = [f"fn zyx_isnan_{t}(x: {vector}) -> {truth} {{ return "
             f"(bitcast<{u}>(x) & {u}(0x7fffffffu)) > {u}(0x7f800000u); }}",
             f"fn zyx_key_{t}(x: {vector}) -> {i} {{ let b = bitcast<{i}>(x); "
             f"return select(b, b ^ {i}(0x7fffffff), b < {i}(0)); }}",
             f"fn zyx_lt_{t}(a: {vector}, b: {vector}) -> {truth} {{ return (zyx_key_{t}(a) < zyx_key_{t}(b)) & "
             f"!({zeros}) & {ordered}; }}",
             f"fn zyx_le_{t}(a: {vector}, b: {vector}) -> {truth} {{ return ((zyx_key_{t}(a) <= zyx_key_{t}(b)) | "
             f"{zeros}) & {ordered}; }}",
             f"fn zyx_eq_{t}(a: {vector}, b: {vector}) -> {truth} {{ return ((bitcast<{u}>(a) == bitcast<{u}>(b)) | "
             f"{zeros}) & {ordered}; }}",
             f"fn zyx_max_{t}(a: {vector}, b: {vector}) -> {vector} {{ return select(select(select(b, a, zyx_lt_{t}(b, a)), b, "
             f"zyx_isnan_{t}(b)), a, zyx_isnan_{t}(a)); }}"]
    if wide:
        lanes = ",".join(f"zyx_pow_f32(a.{c},b.{c})" for c in "xyzw"[:int(vector[3])])
        lines.append(f"fn zyx_pow_{t}(a: {vector}, b: {vector}) -> {vector} {{ return {vector}({lanes}); }}")
    else:  # WGSL's pow is undefined for negative bases and a zero base: C's answers
        lines.append(
            "fn zyx_pow_f32(a: f32, b: f32) -> f32 { if (b == 0.0f || a == 1.0f) { return 1.0f; } "
            "if (zyx_isnan_f32(a) || zyx_isnan_f32(b)) { return a + b; } let integral = floor(b) == b; "
            "if (a < 0.0f && !integral) { return bitcast<f32>(0x7fc00000u); } "
            "let odd = integral && abs(b) < 16777216.0f && (i32(abs(b)) & 1) == 1; "
            "var m = pow(abs(a), b); if (a == 0.0f) { m = select(bitcast<f32>(0x7f800000u), 0.0f, b > 0.0f); } "
            "return select(m, -m, odd && (bitcast<u32>(a) >> 31u) == 1u); }")
    return lines


def _float_tag(vector: str) -> str:
    return "f32" if vector == "f32" else tag(float32, int(vector[3]))


def _shift_tag(dtype: DType) -> str:
    return {"uint8": "u8", "int8": "i8", "int16": "i16"}.get(dtype.name, SCALAR.get(dtype.name, ""))


def _shift_helpers(name: str, register: str, bits: int) -> list[str]:
    """zyx_shl_T and zyx_shr_T: a count outside [0, bits) shifts every bit out."""
    outside, zero = ("0u", "0u") if register == "u32" else ("select(0, -1, a < 0)", "0")
    wrap = {"u8": "({0}&255u)", "i8": "extractBits({0},0u,8u)", "i16": "extractBits({0},0u,16u)"}.get(name, "{0}")
    return [f"fn zyx_shl_{name}(a: {register}, b: {register}) -> {register} {{ return select("
            f"{wrap.format('(a << u32(b))')}, {zero}, b < {zero} || b >= {bits}{zero[1:]}); }}",
            f"fn zyx_shr_{name}(a: {register}, b: {register}) -> {register} {{ return select("
            f"a >> u32(b), {outside}, b < {zero} || b >= {bits}{zero[1:]}); }}"]


# Helpers a shader gets only when it calls one of their functions: (functions, the lines defining them)
CALLED_HELPERS: list[tuple[tuple[str, ...], list[str]]] = [
    *((tuple(f"zyx_{f}_{_float_tag(v)}" for f in ("isnan", *COMPARISONS, "max", "pow")), _float_helpers(v))
      for v in FLOAT_TYPES),
    *(((f"zyx_shl_{n}", f"zyx_shr_{n}"), _shift_helpers(n, r, bits))
      for n, r, bits in (("i32", "i32", 32), ("u32", "u32", 32), ("u8", "u32", 8), ("i8", "i32", 8), ("i16", "i32", 16))),
    (("zyx_floordiv_i32",), ["fn zyx_floordiv_i32(a: i32, d: i32) -> i32 { let b = select(d, 1, d == 0); "
                             "let q = a / b; return select(q, q - 1, q * b != a && ((a < 0) != (b < 0))); }"]),
    (("zyx_floordiv_u32",), ["fn zyx_floordiv_u32(a: u32, b: u32) -> u32 { return a / select(b, 1u, b == 0u); }"]),
    (("zyx_lane8", "zyx_lane16"), [  # one 8- or 16-bit lane of a word
        "fn zyx_lane8(word: u32, i: i32) -> u32 { return (word >> (u32(i % 4) * 8u)) & 255u; }",
        "fn zyx_lane16(word: u32, i: i32) -> u32 { return (word >> (u32(i % 2) * 16u)) & 65535u; }"]),
    (("zyx_bools", "zyx_bools_word"), [  # four bool lanes <-> one word of four bytes
        "fn zyx_bools(word: u32) -> vec4<bool> { return ((vec4<u32>(word) >> vec4<u32>(0u, 8u, 16u, 24u)) & "
        "vec4<u32>(255u)) != vec4<u32>(0u); }",
        "fn zyx_bools_word(m: vec4<bool>) -> u32 { let b = select(vec4<u32>(0u), vec4<u32>(1u), m) << "
        "vec4<u32>(0u, 8u, 16u, 24u); return b.x | b.y | b.z | b.w; }"]),
    (("zyx_bf16_bits", "zyx_round_bf16"), [  # the upper 16 bits of a float32, rounded to nearest even
        "fn zyx_bf16_bits(f: f32) -> u32 { let u = bitcast<u32>(f); if ((u & 0x7fffffffu) > 0x7f800000u) { "
        "return ((u >> 16u) | 0x40u) & 65535u; } return ((u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u) & 65535u; }",
        "fn zyx_round_bf16(f: f32) -> f32 { return bitcast<f32>(zyx_bf16_bits(f) << 16u); }"]),
    (("zyx_f16_bits", "zyx_f16_value"), [  # IEEE half precision by hand: rounded to nearest even, subnormals kept
        "fn zyx_f16_bits(f: f32) -> u32 { let u = bitcast<u32>(f); let sign = (u >> 16u) & 0x8000u; "
        "let a = u & 0x7fffffffu; if (a > 0x7f800000u) { return sign | 0x7e00u; } "
        "if (a >= 0x477ff000u) { return sign | 0x7c00u; } "
        "if (a >= 0x38800000u) { return sign | ((a - 0x38000000u + 0x0fffu + ((a >> 13u) & 1u)) >> 13u); } "
        "return sign | u32(round(bitcast<f32>(a) * 16777216.0f)); }",
        "fn zyx_f16_value(h: u32) -> f32 { let sign = (h & 0x8000u) << 16u; let e = (h >> 10u) & 31u; "
        "let m = h & 1023u; if (e == 0u) { return bitcast<f32>(sign | 0x3f800000u) * f32(m) * 0x1p-24f; } "
        "if (e == 31u) { return bitcast<f32>(sign | 0x7f800000u | (m << 13u)); } "
        "return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u)); }"]),
    (("zyx_philox_uniform",), [PHILOX_SOURCE]),
]


def helpers(body: str) -> str:
    """The helpers `body` calls (helpers calling others come after them in CALLED_HELPERS' order)."""
    lines: list[str] = []
    text = body
    for functions, defined in reversed(CALLED_HELPERS):  # a helper may call one listed earlier
        if any(f"{f}(" in text for f in functions):
            lines = defined + lines
            text += "\n".join(defined)
    return "\n".join(lines) + "\n" if lines else ""
