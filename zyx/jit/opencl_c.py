"""OpenCL C spellings: types, literals, the ops' expressions and the helper prelude."""
from __future__ import annotations

import math

from ..dtypes import DType, int_range
from ..trace.ops import Op
from ..trace.philox import OPENCL_SOURCE as PHILOX_SOURCE


def register_type(dtype: DType) -> str:
    """The type a value lives in while computed: float16 and bfloat16 are computed in float, bool as bool."""
    return {"bool": "bool", "uint8": "uchar", "int8": "char", "int16": "short", "int32": "int", "uint32": "uint",
            "int64": "long", "float16": "float", "bfloat16": "float", "float32": "float",
            "float64": "double"}[dtype.name]


def storage_type(dtype: DType) -> str:
    return dtype.cl_name


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


def lowest_value(dtype: DType) -> object:
    """The identity of max for `dtype`, as a Python value."""
    if dtype.is_float:
        return -math.inf
    if dtype.is_bool:
        return False
    return int_range(dtype)[0]


def lowest(dtype: DType) -> str:
    """The identity of max for `dtype`."""
    if dtype.is_float:
        return literal(-math.inf, dtype)
    if dtype.is_bool:
        return "false"
    if dtype.is_unsigned or dtype.itemsize < 4:
        return literal(lowest_value(dtype), dtype)
    return "(-2147483647-1)" if dtype.itemsize == 4 else "(-9223372036854775807L-1L)"


UNARY_EXPRESSIONS = {
    Op.NEG: "(-{0})", Op.RECIP: "({one}/{0})", Op.SQRT: "sqrt({0})", Op.EXP: "exp({0})", Op.LOG: "log({0})",
    Op.SIN: "sin({0})", Op.COS: "cos({0})", Op.SIGMOID: "({one}/({one}+exp(-{0})))",
    # PoCL's tanh never reaches ±1 (tanh(20) = 0.99999994, tanh(inf) too); past `saturated` the correctly
    # rounded value is ±1 (sign keeps nan; scalars and vectors alike)
    Op.TANH: "((fabs({0})>{saturated})?sign({0}):tanh({0}))",
    Op.FLOOR: "floor({0})", Op.CEIL: "ceil({0})", Op.RINT: "rint({0})", Op.NOT: "(!{0})", Op.DETACH: "{0}",
}
INTEGER_UNARY_EXPRESSIONS = {Op.NOT: "(~{0})"}  # where integers differ from the table above

# |x| past which tanh(x) rounds to ±1: 1 - tanh(x) ~ 2 exp(-2x) is below half an ulp of 1 (13 ln 2, 27.5 ln 2)
TANH_SATURATED = {"float16": 9.02, "bfloat16": 9.02, "float32": 9.02, "float64": 19.1}


def unary(op: Op, x: str, dtype: DType) -> str:
    table = INTEGER_UNARY_EXPRESSIONS if dtype.is_int and op in INTEGER_UNARY_EXPRESSIONS else UNARY_EXPRESSIONS
    saturated = literal(TANH_SATURATED[dtype.name], dtype) if op is Op.TANH else ""
    return table[op].format(x, one=literal(1, dtype) if dtype.is_float else "1", saturated=saturated)


def binary(op: Op, a: str, b: str, dtype: DType) -> str:
    """`dtype` is the operands' dtype."""
    if op is Op.ADD:
        return f"({a}+{b})" if not dtype.is_bool else f"({a}|{b})"
    if op is Op.MUL:
        return f"({a}*{b})" if not dtype.is_bool else f"({a}&{b})"
    if op is Op.DIV:
        return f"({a}/{b})" if dtype.is_float else f"zyx_floordiv_{register_type(dtype)}({a},{b})"
    if op is Op.POW:
        return f"pow({a},{b})"
    if op is Op.MAX:
        if dtype.is_float:
            return f"zyx_max_{register_type(dtype)}({a},{b})"
        return f"max({a},{b})" if not dtype.is_bool else f"({a}|{b})"
    if op is Op.CMPLT:
        return f"({a}<{b})"
    if op is Op.CMPEQ:
        return f"({a}=={b})"
    if op is Op.AND:  # bitwise on bools too: no short-circuit branches, so kernels stay vectorizable
        return f"({a}&{b})"
    if op is Op.OR:
        return f"({a}|{b})"
    if op is Op.XOR:
        return f"({a}^{b})"
    if op in (Op.SHL, Op.SHR):  # OpenCL takes the count modulo the width; PyTorch shifts every bit out
        return f"zyx_{op.name.lower()}_{register_type(dtype)}({a},{b})"
    raise NotImplementedError(op)


def cast(x: str, source: DType, target: DType) -> str:
    if target.is_bool:
        return f"({x}!=0)"
    if target.name == "bfloat16":  # rounded where cast, as stored
        return f"zyx_round_bf16((float)({x}))"
    return f"(({register_type(target)})({x}))"


# How each dtype is read from and written to a buffer (p: the pointer, i: the position, v: the value); half
# precision is rounded to nearest even where stored
MEMORY_ACCESS = {
    "float16": ("vload_half({i},{p})", "vstore_half({v},{i},{p});"),
    "bfloat16": ("zyx_bf16_to_float({p}[{i}])", "{p}[{i}] = zyx_float_to_bf16({v});"),
    "bool": ("({p}[{i}]!=0)", "{p}[{i}] = (uchar)({v});"),
}
PLAIN_ACCESS = ("{p}[{i}]", "{p}[{i}] = {v};")


def load(dtype: DType, pointer: str, position: str) -> str:
    """The value at `pointer[position]`, in its register type."""
    return MEMORY_ACCESS.get(dtype.name, PLAIN_ACCESS)[0].format(p=pointer, i=position)


def store(dtype: DType, pointer: str, position: str, value: str) -> str:
    """The statement writing `value` to `pointer[position]`."""
    return MEMORY_ACCESS.get(dtype.name, PLAIN_ACCESS)[1].format(p=pointer, i=position, v=value)


def _shift_helpers(name: str, bits: int, unsigned: bool) -> list[str]:
    """zyx_shl_T and zyx_shr_T: a count outside [0, bits) shifts every bit out. Left shifts go through the
    unsigned type: signed overflow is undefined in C."""
    outside = "0" if unsigned else "(a < 0 ? -1 : 0)"
    return [f"static inline {name} zyx_shl_{name}({name} a, {name} b) {{ return (b < 0 || b >= {bits}) ? 0 : "
            f"({name})(({name if unsigned else 'u' + name})a << b); }}",
            f"static inline {name} zyx_shr_{name}({name} a, {name} b) {{ return (b < 0 || b >= {bits}) ? "
            f"{outside} : a >> b; }}"]


SHIFT_HELPERS = [line for name, bits in (("int", 32), ("long", 64)) for line in _shift_helpers(name, bits, False)]


def _floordiv_helper(name: str) -> str:
    """Floor division (Python's) for integer type `name`; division by zero gives a // 1."""
    if name[0] == "u":
        return f"static inline {name} zyx_floordiv_{name}({name} a, {name} b) {{ if (b == 0) b = 1; return a / b; }}"
    return (f"static inline {name} zyx_floordiv_{name}({name} a, {name} b) {{ if (b == 0) b = 1; {name} q = a / b;"
            " return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q; }")


# Helpers a kernel gets only when it calls one of their functions: kernels that call none keep their source,
# and so their cached binaries. (functions, the lines defining them)
CALLED_HELPERS: list[tuple[tuple[str, ...], list[str]]] = [
    *(((f"zyx_shl_{name}", f"zyx_shr_{name}"), _shift_helpers(name, bits, name[0] == "u"))
      for name, bits in (("uchar", 8), ("char", 8), ("short", 16), ("uint", 32))),
    *(((f"zyx_floordiv_{name}",), [_floordiv_helper(name)]) for name in ("uchar", "char", "short", "uint")),
    (("zyx_bf16_to_float", "zyx_float_to_bf16", "zyx_round_bf16"), [  # the upper 16 bits of a float32
        "static inline float zyx_bf16_to_float(ushort h) { return as_float((uint)h << 16); }",
        # round to nearest even; a nan stays a (quiet) nan
        "static inline ushort zyx_float_to_bf16(float f) { uint u = as_uint(f); if (isnan(f)) return "
        "(ushort)((u >> 16) | 0x40u); return (ushort)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16); }",
        "static inline float zyx_round_bf16(float f) { return zyx_bf16_to_float(zyx_float_to_bf16(f)); }"]),
]


def calls_shift_helpers(source: str) -> bool:
    """Whether a kernel calls the shift helpers (only then are they emitted: other kernels keep their source,
    and so their cached binaries)."""
    return "zyx_shl_" in source or "zyx_shr_" in source


def called_helpers(source: str) -> list[str]:
    """The lines of CALLED_HELPERS whose functions `source` calls."""
    return [line for functions, lines in CALLED_HELPERS if any(f"{f}(" in source for f in functions)
            for line in lines]


def prelude(uses_double: bool, uses_rand: bool, uses_shifts: bool = False, body: str = "") -> str:
    """Helpers every kernel may call; only what the kernel uses is emitted (`body`: the kernels' text)."""
    lines = []
    if uses_double:
        lines.append("#pragma OPENCL EXTENSION cl_khr_fp64 : enable")
    lines += [
        "static inline float zyx_max_float(float a, float b) { return isnan(a) ? a : (a > b ? a : b); }",
        "static inline int zyx_floordiv_int(int a, int b) { if (b == 0) b = 1; int q = a / b;"
        " return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q; }",
        "static inline long zyx_floordiv_long(long a, long b) { if (b == 0) b = 1; long q = a / b;"
        " return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q; }",
    ]
    if uses_shifts:
        lines += SHIFT_HELPERS
    if uses_double:
        lines.append("static inline double zyx_max_double(double a, double b) { return isnan(a) ? a : (a > b ? a : b); }")
    if uses_rand:
        lines.append(PHILOX_SOURCE)
    lines += called_helpers(body)
    return "\n".join(lines) + "\n"


def combine_sources(sources: list[str]) -> str:
    """One program holding several kernels (each named by its content), with the helpers they need once."""
    kernels = ["__kernel void " + source.split("__kernel void ", 1)[1] for source in sources]
    uses_double = any("cl_khr_fp64" in source for source in sources)
    uses_rand = any("zyx_philox_uniform(" in kernel for kernel in kernels)
    body = "\n".join(kernels)
    return prelude(uses_double, uses_rand, any(map(calls_shift_helpers, kernels)), body) + body
