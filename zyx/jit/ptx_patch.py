"""Kernels with sm_90a instructions (wgmma, tensor_cores.py's warpgroup products) built through NVIDIA's OpenCL.

NVIDIA's OpenCL compiles for the plain target (`.target sm_90`), whose ptxas rejects Hopper's architecture-specific
instructions (wgmma.*: sm_90a only); measured on the H200, the source build fails. So such PTX is printed behind
HIDDEN, a PTX comment (its operands are still substituted by the compiler, so the registers are bound), the program
is built from source, and its PTX (the program binary NVIDIA returns) is patched: the marker deleted and the target
made `sm_90a`; that PTX is then built as a binary. The cache stores the built program's binary, which is that
patched PTX, under the key of the source (which contains the marker): loading it needs no patch again.
"""
from __future__ import annotations

import re

HIDDEN = "//@@"  # a PTX comment; deleted by `patch`
_TARGET = re.compile(rb"^(\s*\.target\s+sm_90)(?=[\s,])", re.MULTILINE)


def hides_ptx(source: str) -> bool:
    """Whether an OpenCL C source has PTX printed behind HIDDEN (its program must be patched)."""
    return HIDDEN in source


def patch(ptx: bytes) -> bytes:
    """NVIDIA's PTX of such a program made sm_90a with its hidden lines restored (the rest is left as it is)."""
    patched, count = _TARGET.subn(rb"\1a", ptx)
    if count != 1:
        head = ptx[:200].decode(errors="replace")
        raise ValueError(f"no '.target sm_90' line to patch in the PTX (found {count}); it begins {head!r}")
    return patched.replace(HIDDEN.encode(), b"")
