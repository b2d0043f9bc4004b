"""What an OpenCL program carries besides its kernels: the helper functions they call (each defined only where a
kernel calls it, so a kernel's source, and its cached binary, stays the same) and a program of several kernels.
Apart from the printer: a warm process combines the kernels it loads into the programs it looks up without it."""
from __future__ import annotations

from typing import Sequence

from ..trace.philox import OPENCL_SOURCE as PHILOX_SOURCE
from .compiler import NATIVE_MATH, PTX_CONVERSIONS

__all__ = ["CALLED_HELPERS", "GROUP_SIZE_STATED", "MAX_FLOAT", "combine_sources", "prelude"]

# the attribute by which a kernel states its work group's size (print_opencl writes it, the runtime reads it)
GROUP_SIZE_STATED = "reqd_work_group_size"


def _shift_helpers(name: str, bits: int, unsigned: bool) -> list[str]:
    """zyx_shl_T and zyx_shr_T: a count outside [0, bits) shifts every bit out. Left shifts go through the
    unsigned type: signed overflow is undefined in C."""
    outside = "0" if unsigned else "(a < 0 ? -1 : 0)"
    return [f"static inline {name} zyx_shl_{name}({name} a, {name} b) {{ return (b < 0 || b >= {bits}) ? 0 : "
            f"({name})(({name if unsigned else 'u' + name})a << b); }}",
            f"static inline {name} zyx_shr_{name}({name} a, {name} b) {{ return (b < 0 || b >= {bits}) ? "
            f"{outside} : a >> b; }}"]


def _floordiv_helper(name: str) -> str:
    """Floor division (Python's) for integer type `name`; division by zero gives a // 1."""
    if name[0] == "u":
        return f"static inline {name} zyx_floordiv_{name}({name} a, {name} b) {{ if (b == 0) b = 1; return a / b; }}"
    return (f"static inline {name} zyx_floordiv_{name}({name} a, {name} b) {{ if (b == 0) b = 1; {name} q = a / b;"
            " return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q; }")


def _half_rounding_helper(width: int) -> list[str]:
    """zyx_round_half (width 1) or zyx_round_half_N: float lanes rounded to float16's values, nearest even (no
    cl_khr_fp16 needed). Through half's 16 bits in private memory where NVIDIA's conversions are one instruction
    each (PTX_CONVERSIONS); elsewhere in registers: PoCL gives each work item's private value a slot in memory,
    which its work-item loop vectorizer turned into seconds of compiling (a float16 softmax over rows of 80:
    4.9 s, 1.5 s without its roundings; PoCL 3.1). The register form: 11 significant bits (nearest even, in
    the float's bits), multiples of 2**-24 below 2**-14 (half's subnormals: added to 0.5, whose float spacing that
    is), infinity past 65504, a nan kept; bit for bit numpy's float16 cast (every tie, 17 million values)."""
    name, suffix = ("float", "") if width == 1 else (f"float{width}", f"_{width}")
    n = "" if width == 1 else str(width)
    through_memory = (f"static inline {name} zyx_round_half{suffix}({name} f) {{ ushort{n} h; "
                      f"vstore_half{n}(f, 0, (__private half*)&h); "
                      f"return vload_half{n}(0, (__private const half*)&h); }}")
    in_registers = (f"static inline {name} zyx_round_half{suffix}({name} f) {{ {name} a = fabs(f); "
                    f"uint{n} u = as_uint{n}(a); "
                    f"{name} n = as_{name}((u + 0xFFFu + ((u >> 13) & 1u)) & 0xFFFFE000u); "
                    f"n = select(n, ({name})(INFINITY), n > 65504.0f); "
                    f"{name} r = select(n, (a + 0.5f) - 0.5f, a < 0x1p-14f); "
                    "return select(copysign(r, f), f, isnan(f)); }")  # (select: c ? b : a, lane by lane)
    return [f"#ifdef {PTX_CONVERSIONS}", through_memory, "#else", in_registers, "#endif"]


def word_type(width: int) -> str:
    """The OpenCL type holding `width` 16-bit elements as 32-bit words (uint for a pair, uintN/2 else)."""
    return "uint" if width == 2 else f"uint{width // 2}"


def _bf16_lanes_helper(width: int) -> str:
    """zyx_bf16_lanes_N: N bfloat16 elements read as N/2 32-bit words (print_opencl._words) as float lanes, the
    low half of each word first."""
    if width == 2:
        return ("static inline float2 zyx_bf16_lanes_2(uint w) "
                "{ return (float2)(as_float(w << 16), as_float(w & 0xFFFF0000u)); }")
    half = width // 2
    return (f"static inline float{width} zyx_bf16_lanes_{width}({word_type(width)} w) {{ float{width} f; "
            f"f.even = as_float{half}(w << 16); f.odd = as_float{half}(w & 0xFFFF0000u); return f; }}")


def _bf16_rounding_helper(width: int) -> list[str]:
    """zyx_round_bf16_N: floatN rounded lane by lane to bfloat16 (nearest even, a nan kept). Where PTX_CONVERSIONS
    are defined, two lanes at a time by one cvt, unpacked by zyx_bf16_lanes_N: integer rounding took about six
    instructions a lane (W7's GELU, four roundings an element, ran at 1.37 TB/s on an H100)."""
    f, u = f"float{width}", f"uint{width}"
    words = ",".join(f"zyx_bf16x2(f.s{lane + 1:x},f.s{lane:x})" for lane in range(0, width, 2))
    return [f"#ifdef {PTX_CONVERSIONS}",
            f"static inline {f} zyx_round_bf16_{width}({f} f) {{ "
            f"return zyx_bf16_lanes_{width}(({word_type(width)})({words})); }}",
            "#else",
            f"static inline {f} zyx_round_bf16_{width}({f} f) {{ {u} u = as_{u}(f); "
            f"return select(as_{f}((u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u), f, isnan(f)); }}",
            "#endif"]


ERF_SMALL = (7.933493907330558e-05, -0.0008034846396185458, 0.005191218573600054, -0.02685539983212948,
             0.11283625662326813, -0.3761262893676758, 1.128379225730896)
"""erf(x) / x as a polynomial in x² for |x| < 1 (least squares at Chebyshev nodes: 1.6e-9 relative)."""
ERF_LARGE = (0.028223218396306038, -0.16586221754550934, 0.40480199456214905, -0.4910222887992859,
             0.1988486647605896, 0.25239911675453186, -0.3838005065917969, 0.02232113480567932, 0.561540961265564,
             0.00013351182860787958)
"""erfc(x) exp(x²) as a polynomial in 1 / x for 1 <= x < 4 (3e-8 relative); past 4 erf is ±1 in float32."""


def _horner(coefficients: Sequence[float], x: str) -> str:
    text = f"{coefficients[0]!r}f"
    for c in coefficients[1:]:
        text = f"({text}*{x}+{c!r}f)"
    return text


def _erf_helpers() -> list[str]:
    """zyx_erf for float and floatN: PoCL's `erf` is a scalar call per lane, 19.8 ms for 2M floats where its
    `exp` took 1.45 ms (PoCL 3.1, Zen 2): W7's GELU at the CPU size spent tens of milliseconds a step in it. Both
    branches are computed and selected, lane by lane, so vectors stay vectors; within 2.5 ulp of erf (float64)
    over [-6, 6] and 30 decades below 1, nan kept, ±1 at ±inf. zyx_erf_exp(x, e) is erf(x) given e = exp(-x·x), which
    the polynomials need (a kernel that computes it anyway passes it: print_opencl._erf_given_exp). GPUs take them
    too, 1/|x| by the hardware's reciprocal (compiler.NATIVE_MATH): NVIDIA's builtin erf cost as much as the
    polynomials with an IEEE division, about a third more than with the reciprocal."""
    lines = [f"#ifdef {NATIVE_MATH}", "#define zyx_erf_recip(a) native_recip(a)", "#else",
             "#define zyx_erf_recip(a) (1.0f / (a))", "#endif"]
    for width in ("", "2", "4", "8", "16"):
        f = f"float{width}"
        lines.append(
            f"static inline __attribute__((overloadable)) {f} zyx_erf_exp({f} x, {f} e) {{ {f} a = fabs(x), s = a * a; "
            f"{f} small = x * {_horner(ERF_SMALL, 's')}; {f} t = zyx_erf_recip(a); "
            f"{f} large = copysign(1.0f - e * {_horner(ERF_LARGE, 't')}, x); "
            f"large = select(large, copysign(({f})(1.0f), x), a >= 4.0f); "
            "return select(large, small, a < 1.0f); }")
        lines.append(f"static inline __attribute__((overloadable)) {f} zyx_erf({f} x) "
                     "{ return zyx_erf_exp(x, exp(-(x * x))); }")
    return lines


# Helpers a kernel gets only when it calls one of their functions: kernels that call none keep their source,
# and so their cached binaries. (functions, the lines defining them)
WIDTHS = (2, 4, 8, 16)  # vector lanes the helpers are defined for
CALLED_HELPERS: list[tuple[tuple[str, ...], list[str]]] = [
    *(((f"zyx_shl_{name}", f"zyx_shr_{name}"), _shift_helpers(name, bits, name[0] == "u"))
      for name, bits in (("int", 32), ("long", 64), ("uchar", 8), ("char", 8), ("short", 16), ("uint", 32))),
    *(((f"zyx_floordiv_{name}",), [_floordiv_helper(name)]) for name in ("uchar", "char", "short", "uint")),
    # Rounding to bfloat16 (nearest even; a nan stays a quiet nan) is one instruction on NVIDIA's sm_80 and later,
    # where the device builds with PTX_CONVERSIONS defined (compiler.kernel_options): W7's bf16 kernels ran 1.5-2.1x
    # faster on the H200 than with the integer arithmetic below, bit for bit the same. The source is the same
    # on every device.
    (("zyx_float_to_bf16", "zyx_round_bf16", "zyx_pack_bf16", *(f"zyx_round_bf16_{width}" for width in WIDTHS)), [
        f"#ifdef {PTX_CONVERSIONS}",  # (cvt packs `hi` in the upper half)
        "static inline uint zyx_bf16x2(float hi, float lo) { uint r; "
        "asm(\"cvt.rn.bf16x2.f32 %0, %1, %2;\" : \"=r\"(r) : \"f\"(hi), \"f\"(lo)); return r; }",
        "#else",
        "static inline uint zyx_bf16_word(float f) { uint u = as_uint(f); return isnan(f) ? ((u >> 16) | 0x40u) "
        ": ((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16); }",
        "static inline uint zyx_bf16x2(float hi, float lo) { return zyx_bf16_word(lo) | (zyx_bf16_word(hi) << 16); }",
        "#endif"]),
    (("zyx_bf16_to_float",), [  # the upper 16 bits of a float32
        "static inline float zyx_bf16_to_float(ushort h) { return as_float((uint)h << 16); }"]),
    (("zyx_float_to_bf16",), [
        "static inline ushort zyx_float_to_bf16(float f) { return (ushort)zyx_bf16x2(0.0f, f); }"]),
    (("zyx_round_bf16",), ["static inline float zyx_round_bf16(float f) { return as_float(zyx_bf16x2(f, 0.0f)); }"]),
    (("zyx_pack_bf16",), [  # two floats as bfloat16 words, the first in the low half
        "static inline uint zyx_pack_bf16(float lo, float hi) { return zyx_bf16x2(hi, lo); }"]),
    (("zyx_pack_half",), [  # likewise as float16 (vstore_half rounds to nearest even)
        "static inline uint zyx_pack_half(float lo, float hi) { ushort2 h; vstore_half2((float2)(lo, hi), 0, "
        "(__private half*)&h); return as_uint(h); }"]),
    (("zyx_round_tf32",), [  # TF32 operands of NVIDIA's tensor cores (only there): the 13 low bits dropped,
        # rounded to nearest (ties away), a nan kept; one instruction (sm_80), where the same in C took five
        "static inline float zyx_round_tf32(float f) { uint r; "
        "asm(\"cvt.rna.tf32.f32 %0, %1;\" : \"=r\"(r) : \"f\"(f)); return as_float(r); }"]),
    (("zyx_swizzle",), [  # (swizzle_bits)
        "static inline int zyx_swizzle(int i, int shift, int mask) { return i ^ (((i >> shift) & mask) << 3); }"]),
    (("zyx_round_half",), _half_rounding_helper(1)),
    (("zyx_erf", "zyx_erf_exp"), _erf_helpers()),
    (("zyx_fast_exp", "zyx_fast_exp_sum", "zyx_fast_div"), [  # (transforms/approximate_math)
        f"#ifdef {NATIVE_MATH}",
        "static inline float zyx_fast_exp(float x) { return native_exp(x); }",
        "static inline float zyx_fast_exp_sum(float a, float b) "
        "{ return native_exp2(fma(a, 1.44269504f, b * 1.44269504f)); }",
        "static inline float zyx_fast_div(float a, float b) { return a * native_recip(b); }",
        "#else",
        "static inline float zyx_fast_exp(float x) { return exp(x); }",
        "static inline float zyx_fast_exp_sum(float a, float b) { return exp(a + b); }",
        "static inline float zyx_fast_div(float a, float b) { return a / b; }",
        "#endif"]),
    *(((f"zyx_bf16_lanes_{width}", f"zyx_round_bf16_{width}"), [_bf16_lanes_helper(width)]) for width in WIDTHS),
    *(((f"zyx_round_bf16_{width}",), _bf16_rounding_helper(width)) for width in WIDTHS),
    *(((f"zyx_round_half_{width}",), _half_rounding_helper(width)) for width in WIDTHS),
]


# The float maximum, a nan in either operand the result (as torch's): one instruction where NVIDIA's max.NaN exists
# (sm_80 and later, where PTX_CONVERSIONS is defined), about four elsewhere (the online softmax takes one a score)
MAX_FLOAT = [f"#ifdef {PTX_CONVERSIONS}",
             "static inline float zyx_max_float(float a, float b) "
             "{ float r; asm(\"max.NaN.f32 %0, %1, %2;\" : \"=f\"(r) : \"f\"(a), \"f\"(b)); return r; }",
             "#else",
             "static inline float zyx_max_float(float a, float b) { return isnan(a) ? a : (a > b ? a : b); }",
             "#endif"]


def prelude(uses_double: bool, uses_rand: bool, body: str) -> str:
    """Helpers every kernel may call, and those `body` (the kernels' text) calls."""
    lines = []
    if uses_double:
        lines.append("#pragma OPENCL EXTENSION cl_khr_fp64 : enable")
    lines += [*MAX_FLOAT, _floordiv_helper("int"), _floordiv_helper("long")]
    if uses_double:
        lines.append("static inline double zyx_max_double(double a, double b) "
                     "{ return isnan(a) ? a : (a > b ? a : b); }")
    if uses_rand:
        lines.append(PHILOX_SOURCE)
    lines += [line for functions, defined in CALLED_HELPERS if any(f"{f}(" in body for f in functions)
              for line in defined]
    return "\n".join(lines) + "\n"


def combine_sources(sources: list[str]) -> str:
    """One program holding several kernels (each named by its content), with the helpers they need once. A kernel
    is its source from `__kernel` on, attributes included (a warpgroup product's `reqd_work_group_size`: a 16-bit
    product split along k shares a program with the kernel summing its partials)."""
    kernels = ["__kernel " + source.split("__kernel ", 1)[1] for source in sources]
    uses_double = any("cl_khr_fp64" in source for source in sources)
    uses_rand = any("zyx_philox_uniform(" in kernel for kernel in kernels)
    body = "\n".join(kernels)
    return prelude(uses_double, uses_rand, body) + body
