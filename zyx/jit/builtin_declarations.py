"""PoCL programs built with the declarations of only the OpenCL builtins their source names.

PoCL (the CPU driver) puts clang's `opencl-c.h` in front of every program it compiles: 895 KB declaring 14 500
overloads of 1 210 builtins, whose parsing was 0.26 s of a 0.29 s build of a one-line kernel (2-vCPU AMD EPYC,
PoCL 3.1), whatever the program; a cold test suite makes two thousand builds. The header's include guard can be
defined with `-D`, an option PoCL accepts, and the program then carries the header's own declarations of the
builtins its source names, copied line for line from the file PoCL would have read, inside every preprocessor
directive of that file: clang sees the same declarations of everything the program calls, so the code is the
same (that build: 0.03 s). The file is found beside the PoCL library that serves the device (`dladdr` of a
function the platform hands out); where it is not found, or a build so made fails where the whole header
builds, programs are built as before (the latter with one warning: a bug to report).
"""
from __future__ import annotations

import ctypes
import functools
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import pyopencl as cl

from ..runtime.platforms import is_pocl
from .icd_loader import icd_loader

__all__ = ["DeclarationsFallbackWarning", "HeaderDeclarations", "declarations_for", "give_up", "header_of",
           "options_naming_no_builtin", "with_declarations"]

GUARD = "_OPENCL_H_"
HEADER = "opencl-c.h"
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
# what names no builtin in a program's source: string literals (the prelude's inline PTX "max.NaN.f32" would declare
# max's 121 overloads in every program PoCL builds) and comments, in the order C reads them
_NOT_CODE = re.compile(r'"(?:\\.|[^"\\\n])*"|' + _COMMENT.pattern, re.S)
# where a PoCL library keeps its data (its `share/pocl`), from the library's folder: a system install (also one
# whose /lib is not /usr/lib), and the pip wheel's (pyopencl/.libs/libpocl-*.so, pocl_binary_distribution/.libs/share)
_DATA_FOLDERS = ("../share/pocl", "../../share/pocl", "../../usr/share/pocl",
                 "../../pocl_binary_distribution/.libs/share/pocl")


class DeclarationsFallbackWarning(UserWarning):
    """A program PoCL rejected with only its builtins declared built with the whole header: a bug in Zyx."""


@dataclass(frozen=True)
class HeaderDeclarations:
    """opencl-c.h split into its preprocessor directives (kept whole, in order) and its declarations, each kept
    where the source names its builtin; the include guard and the #include of opencl-c-base.h (which PoCL has
    read before) are left out."""

    parts: tuple[str, ...]  # the header's directives and declarations, in order
    builtin_of: tuple[Optional[str], ...]  # for each part: the builtin it declares, None for a directive
    builtins: frozenset[str]  # every builtin the header declares

    @classmethod
    def parse(cls, text: str) -> Optional["HeaderDeclarations"]:
        """The header `text` as parts; None where it is not shaped as expected (a guard around directives and
        declarations ending in ';')."""
        # lines spliced first, as C does (a // comment may end in a backslash), then comments out
        lines = _COMMENT.sub("", text.replace("\\\n", " ")).split("\n")
        parts: list[str] = []
        builtin_of: list[Optional[str]] = []
        statement: list[str] = []
        for line in lines:  # (str methods, not a regex a declaration: 25 ms for the 14 500, not 120)
            stripped = line.strip()
            if not stripped:
                continue
            if stripped[0] == "#":
                if statement:
                    return None
                parts.append(stripped)
                builtin_of.append(None)
                continue
            statement.append(stripped)
            if stripped[-1] == ";":
                declaration = stripped if len(statement) == 1 else " ".join(statement)
                statement = []
                head, called, _ = declaration.partition("(")
                words = head.split()
                if not called or not words:
                    return None
                parts.append(declaration)
                # an attribute before the name (a deprecation) leaves the name unknown: always declared
                builtin_of.append(None if words[-1] == "__attribute__" else words[-1].lstrip("*"))
        if (statement or len(parts) < 3 or parts[0].split() != ["#ifndef", GUARD]
                or parts[1].split() != ["#define", GUARD] or not parts[-1].lstrip().startswith("#endif")):
            return None
        keep = [k for k in range(2, len(parts) - 1) if not parts[k].lstrip().startswith("#include")]
        return cls(tuple(parts[k] for k in keep), tuple(builtin_of[k] for k in keep),
                   frozenset(b for b in builtin_of if b is not None))

    def for_source(self, source: str) -> str:
        """`source` after the declarations of the builtins it names (and after every directive), line 1 again."""
        named = self.builtins.intersection(_IDENTIFIER.findall(_NOT_CODE.sub(" ", source)))
        kept = [part for part, builtin in zip(self.parts, self.builtin_of) if builtin is None or builtin in named]
        return "\n".join(kept) + "\n#line 1\n" + source


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _library_of(platform: cl.Platform) -> Optional[Path]:
    """The shared library implementing `platform`: where a function it hands out (its ICD entry) lies."""
    loader = icd_loader()
    if loader is None:
        return None
    address = loader.clGetExtensionFunctionAddressForPlatform(platform.int_ptr, b"clIcdGetPlatformIDsKHR")
    info = _DlInfo()
    if not address or not ctypes.CDLL(None).dladdr(ctypes.c_void_p(address), ctypes.byref(info)) or not info.dli_fname:
        return None
    return Path(info.dli_fname.decode()).resolve()


def header_of(platform: cl.Platform) -> Optional[Path]:
    """The opencl-c.h a PoCL `platform` compiles with, where it can be found beside its library; else None."""
    if not is_pocl(platform):
        return None
    library = _library_of(platform)
    if library is None:
        return None
    for folder in _DATA_FOLDERS:
        header = (library.parent / folder / "include" / HEADER).resolve()
        if header.is_file():
            return header
    return None


@functools.lru_cache(maxsize=None)
def _parsed(header: Path) -> Optional[HeaderDeclarations]:
    try:
        return HeaderDeclarations.parse(header.read_text(errors="replace"))
    except OSError:
        return None


_platform_declarations: dict[int, Optional[HeaderDeclarations]] = {}
_parsing = threading.Lock()  # the driver's warm-up thread and a first build may both ask: one parse


def declarations_for(device: cl.Device) -> Optional[HeaderDeclarations]:
    """The declarations programs for `device` carry (None: built with the whole header)."""
    key = device.platform.int_ptr
    if key not in _platform_declarations:
        with _parsing:
            if key not in _platform_declarations:
                header = header_of(device.platform)
                _platform_declarations[key] = _parsed(header) if header is not None else None
    return _platform_declarations[key]


def options_naming_no_builtin(device: cl.Device, options: Sequence[str]) -> list[str]:
    """`options` for a source that names no builtin (a one-line check): with the header's guard alone where
    `device`'s programs carry their own declarations, known without parsing the header."""
    key = device.platform.int_ptr
    parsed = _platform_declarations.get(key) if key in _platform_declarations else header_of(device.platform)
    return [*options, f"-D{GUARD}"] if parsed is not None else list(options)


def with_declarations(device: cl.Device, source: str, options: Sequence[str]) -> Optional[tuple[str, list[str]]]:
    """`source` and `options` as built with only the builtins it names declared; None where not (see module)."""
    declarations = declarations_for(device)
    if declarations is None:
        return None
    return declarations.for_source(source), [*options, f"-D{GUARD}"]


def give_up(device: cl.Device, log: str) -> None:
    """A build with the declarations failed where the whole header built: build `device`'s programs with the
    whole header from now on, and say so once."""
    _platform_declarations[device.platform.int_ptr] = None
    first = next((line for line in log.splitlines() if "error" in line), log.strip()[:200])
    warnings.warn(f"zyx: PoCL rejected a program carrying only the builtins it names; building with the whole "
                  f"{HEADER} from now on (slower; please report): {first}", DeclarationsFallbackWarning, stacklevel=3)
