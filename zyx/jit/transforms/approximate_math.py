"""Exponentials and divisions by the hardware's approximations, in kernels whose results are half precision (the
tensor-core attention kernels): their scores, weights and gradients are rounded to 8 (bfloat16) or 11 (float16)
significant bits, where NVIDIA's ex2.approx and rcp.approx err by about 2 ulp of float32's 24. Each exponential of
the online softmax is otherwise exp's range reduction and fix-ups around the same ex2 (about 8 instructions a score
where the score's own share of its products is a few), and P = exp(X - m) / l of the backward an IEEE division a
score (l is the row's: its reciprocal is computed once a row and the division a multiplication).
An exponential of a sum (exp(x - m): x + (-m)) computed for it alone is FAST_EXP of both terms, which the GPUs take as
2 ** (x log2 e + (-m) log2 e) by one fused multiply-add (the second product the same for a row's scores).
The prelude (opencl_prelude) prints FAST_EXP and FAST_DIV as the native functions on GPUs (compiler.NATIVE_MATH),
as exp and the division elsewhere, so kernels checked on PoCL compute as before."""
from __future__ import annotations

import dataclasses
from collections import Counter

from ...dtypes import float32
from ...trace.ops import Op
from ..kernel_ir import FAST_DIV, FAST_EXP, Alu, If, Kernel, Loop, register_names, walk

APPROXIMATED = {Op.EXP: FAST_EXP, Op.DIV: FAST_DIV}


def approximate_math(kernel: Kernel) -> Kernel:
    """`kernel` with each float32 exponential and division its approximation (see the module)."""
    return dataclasses.replace(kernel, body=_approximated(kernel.body))


def _approximated(body: tuple) -> tuple:
    """`body` approximated; a register defined in it is read only there (its nested bodies included)."""
    uses = Counter(name for s in walk(body) for name in register_names(s))  # (a register: defined once, then read)
    out: list = []
    for s in body:
        if isinstance(s, (Loop, If)):
            s = dataclasses.replace(s, body=_approximated(s.body))
        elif isinstance(s, Alu) and s.op in APPROXIMATED and s.out.dtype == float32 and s.out.width == 1:
            s = Alu(s.out, APPROXIMATED[s.op], s.args)
            summed = out[-1] if out else None
            if (s.op == FAST_EXP and isinstance(summed, Alu) and summed.op is Op.ADD and summed.out == s.args[0]
                    and uses[summed.out.name] == 2):
                out[-1] = Alu(s.out, FAST_EXP, summed.args)  # exp(a + b), the sum read there alone
                continue
        out.append(s)
    return tuple(out)
