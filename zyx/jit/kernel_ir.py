"""The kernel IR: what one kernel computes, between lowering (trace nodes -> IR) and printing (IR -> text).

A kernel is a set of axes, each with a role, and a body of statements. Values live in registers, each
defined once (an accumulator is the one register a later statement updates). Indices and guards are
`symbolic.Expr`s over the axes' variables, never text, so a transform can substitute a variable (a work
item's output becomes sixteen lanes' outputs, a reduced index a lane's stride) and the simplifier decides
again what each load reads: one vector, one element for all lanes, or a gather. Only a printer turns the
IR into a language; transforms (transforms/) rewrite it; lowering (lower.py) builds it.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Union

import xxhash

from ..dtypes import DType, int_range
from ..trace.ops import Op
from .symbolic import Expr

if TYPE_CHECKING:
    from .choices import TuneSite


class Role(enum.Enum):
    """What an axis of a kernel is: where its variable comes from, and what the printer does with it."""

    GLOBAL = "global"    # one work item (or work group, when the kernel has a LOCAL axis) per value
    LOCAL = "local"      # items of one work group, cooperating on a reduction or on staged tiles
    REDUCE = "reduce"    # a loop's counter
    VECTOR = "vector"    # lanes of one vector register (never a variable at run time)
    UPCAST = "upcast"    # outputs one work item computes, unrolled (never a variable at run time)


@dataclass(frozen=True)
class Axis:
    name: str
    size: int
    role: Role


@dataclass(frozen=True)
class Reg:
    """A register: `width` lanes of `dtype` (bool lanes are masks)."""

    name: str
    dtype: DType
    width: int = 1


@dataclass(frozen=True)
class Const:
    """A literal; with `width` lanes, `value` is every lane's, or a tuple of one value per lane."""

    value: Any
    dtype: DType
    width: int = 1


@dataclass(frozen=True)
class Lane:
    """Lane `part` ("sN") of the vector register `src`, read where it is used instead of copied into a register
    of its own (the GPU product's fragments: NVIDIA's compiler runs that form faster, matmul.py)."""

    src: Reg
    part: str

    @property
    def dtype(self) -> DType:
        return self.src.dtype

    @property
    def width(self) -> int:
        return 1


Operand = Union[Reg, Const, Lane]
Bound = tuple[Expr, str, int]  # (expr, "ge" or "lt", limit): expr >= limit, expr < limit
Cond = tuple[Bound, ...]       # a conjunction; () always holds

LESS_EQUAL = "CMPLE"  # an ALU op beyond the trace's: `a <= b` on floats, what `(a < b) | (a == b)` lowers to
ROUND_TF32 = "TF32"   # another: a float32 rounded to TF32's 10 bits of mantissa (to nearest), as cuBLAS feeds them
ERF_GIVEN_EXP = "ERFEXP"  # another: erf(a) given b = exp(-a·a), which erf's polynomials compute (print_opencl)
FAST_EXP = "EXPA"   # exp(a) by the hardware's approximation where the device has one (transforms/approximate_math)
FAST_DIV = "DIVA"   # a / b likewise: a times b's approximate reciprocal


@dataclass(frozen=True)
class Param:
    """One kernel argument: a buffer (read or written) or a random stream's seed/offset."""

    kind: str          # "load", "store", "seed", "offset"
    node: Any          # the trace node it reads, stores or draws
    name: str
    dtype: DType


# ---- statements ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Load:
    """`mode` "element": one value; "vector": out.width consecutive values from index; "broadcast": the one
    value at index in every lane; "bits": a half-precision element's 16 bits as stored (out: int16), to be copied
    as they are, or 8 of them as 4 uint32 words (out: uint32 x 4, at a multiple of 8). Under a guard that fails
    the value is 0. `indirect` makes the address data-dependent (see `address`)."""

    out: Reg
    buffer: str
    index: Expr
    guard: Cond = ()
    mode: str = "element"
    indirect: Optional[tuple[Reg, int, int]] = None  # (register, size, stride): an address read from data

    @property
    def address(self) -> Expr:
        """The element read: `index`, plus for an indirect load (indexing by a tensor, indirect.py) its register's
        value (an integer already clamped into [0, size)) times `stride`."""
        if self.indirect is None:
            return self.index
        reg, size, stride = self.indirect
        return self.index + Expr.var(reg.name, size) * stride


@dataclass(frozen=True)
class Gather:
    """One element per lane; a lane whose guard is None reads nothing (its value is 0)."""

    out: Reg
    buffer: str
    lanes: tuple[tuple[Expr, Optional[Cond]], ...]


@dataclass(frozen=True)
class Alu:
    out: Reg
    op: Union[Op, str]
    args: tuple[Operand, ...]


@dataclass(frozen=True)
class Select:
    """`value` where `cond` holds, else `fill` (a PAD's inside)."""

    out: Reg
    cond: Cond
    value: Operand
    fill: Operand


@dataclass(frozen=True)
class LaneSelect:
    """Per lane: `value` where its condition holds (True always, False never), else `fill`."""

    out: Reg
    lanes: tuple[Union[Cond, bool], ...]
    value: Operand
    fill: Operand


@dataclass(frozen=True)
class Position:
    """The arange leaf's value at `index` (trace.node.ARANGE holds 0, 1, ..., n-1: its value is its index), computed
    instead of read, 0 where `guard` fails (as a Load would read): a causal mask's positions in the tensor-core
    attention kernels, which compared values read from memory at every score and waited on one to end a walk."""

    out: Reg
    index: Expr
    guard: Cond = ()


@dataclass(frozen=True)
class Rand:
    """A uniform draw in [0, 1) of the stream (seed, offset) at `index`."""

    out: Reg
    seed: str
    offset: str
    index: Expr


@dataclass(frozen=True)
class Extract:
    """Part of a vector: "lo" or "hi" half, or lane "sN"."""

    out: Reg
    src: Reg
    part: str


@dataclass(frozen=True)
class Broadcast:
    out: Reg
    src: Operand


@dataclass(frozen=True)
class Pack:
    """A vector register holding `lanes` (scalars of its dtype) in order: values stored side by side by one vector
    Store (transforms/paired_stores.py)."""

    out: Reg
    lanes: tuple[Operand, ...]


@dataclass(frozen=True)
class Define:
    """An accumulator, declared with its start value; only Accumulate and MultiplyAdd update it."""

    out: Reg
    start: Operand


@dataclass(frozen=True)
class Accumulate:
    acc: Reg
    op: Op
    value: Operand


@dataclass(frozen=True)
class MultiplyAdd:
    """acc += a * b (fused where the device has it)."""

    acc: Reg
    a: Operand
    b: Operand


@dataclass(frozen=True)
class Loop:
    var: str
    trips: int
    body: tuple
    unroll: bool = False  # ask the compiler to unroll it whole


@dataclass(frozen=True)
class If:
    """`body` where `cond` holds and, if given, the bool register `when` (a value known only at run time; where
    the body has barriers it must be the same in every item of a group)."""

    cond: Cond
    body: tuple
    when: Optional[Reg] = None


@dataclass(frozen=True)
class Break:
    pass


@dataclass(frozen=True)
class Store:
    """`mode` "element", "vector" (value.width consecutive elements from index) or "bits" (8 16-bit elements as
    they lie, a "bits" value of int16 lanes, at a multiple of 8)."""

    buffer: str
    index: Expr
    value: Operand
    dtype: DType
    mode: str = "element"


@dataclass(frozen=True)
class LocalArray:
    """`size` vectors of `width` lanes of `dtype` in local memory (half precision stored as such: a float32
    value stored into it is rounded), `aligned` at a 16-byte boundary where MatrixLoad reads it."""

    name: str
    dtype: DType
    size: int
    width: int = 1
    aligned: bool = False
    alignment: int = 16  # bytes its start is aligned to: 1024 where WarpgroupMma reads it (the swizzle's period)


@dataclass(frozen=True)
class LocalStore:
    """With `element`, index counts single elements of a vector array. `dtype`: the array's, where it differs from
    the value's (float32 values stored as float16/bfloat16, rounded to nearest even). `swizzle`: the array's rows
    of that many elements are swizzled (AsyncCopy says how)."""

    array: str
    index: Expr
    value: Operand
    element: bool = False
    dtype: Optional[DType] = None
    swizzle: int = 0


@dataclass(frozen=True)
class LocalLoad:
    """`swizzle`: the array's rows of that many elements are swizzled (AsyncCopy says how), 0 where they are not; a
    vector `out` then reads its width elements from `index` (within one 16-byte chunk)."""

    out: Reg
    array: str
    index: Expr
    swizzle: int = 0


@dataclass(frozen=True)
class Barrier:
    pass


@dataclass(frozen=True)
class MatrixLoad:
    """Four 8 x 8 matrices of 16-bit elements (or 8 x 4 of 32-bit ones) from local `array` into the 32 lanes of a
    warp, each lane's `out` holding its share of all four (NVIDIA's ldmatrix): `index` (elements of the array) is
    where this lane's row starts; lanes 8j..8j+7 name the rows of matrix j. `transposed` hands out columns."""

    out: Reg        # uint32, width 4
    array: str
    index: Expr
    transposed: bool = False
    swizzle: int = 0  # elements per row of a swizzled array (AsyncCopy says how), 0 where rows are padded


@dataclass(frozen=True)
class AsyncCopy:
    """`width` elements of `itemsize` bytes (16, 8 or 4 bytes in all) from global `buffer` at element `source` to local
    `array` at element `index`, not through registers (NVIDIA's cp.async): in flight until an AsyncWait that covers
    the group an AsyncCommit closed after it. Both indices are multiples of `width`. Where `guard` fails, zeros
    (nothing is read; `source` must still lie in the buffer). `swizzle`: the array's rows have that many elements and no padding, each row's
    16-byte chunks permuted by XOR with the row (print_opencl.py: `swizzled`), so the 8 rows an ldmatrix reads at
    one column lie in 8 distinct bank groups."""

    array: str
    index: Expr
    buffer: str
    source: Expr
    guard: Cond = ()
    swizzle: int = 0
    width: int = 8
    itemsize: int = 2  # 4: float32 (TF32 warpgroup products)


@dataclass(frozen=True)
class AsyncCommit:
    """Closes the group of AsyncCopies this item issued since the last commit (an empty group where none)."""


@dataclass(frozen=True)
class AsyncWait:
    """Waits until at most `pending` of this item's most recent groups are in flight (the rest have landed; a
    Barrier after it makes them visible to the whole group)."""

    pending: int


@dataclass(frozen=True)
class MatrixMultiply:
    """acc += a · b on a warp's tensor cores (NVIDIA's mma.sync `shape`, operands of `kind`: "bf16", "f16" or
    "tf32"): each lane holds 4 accumulators (float32), 4 words of a and 2 of b, in the instruction's fragment
    layout (tensor_cores.py says which elements those are)."""

    acc: tuple       # 4 float32 Regs
    a: tuple         # 4 uint32 operands
    b: tuple         # 2 uint32 operands
    shape: str       # "m16n8k16" or "m16n8k8"
    kind: str


@dataclass(frozen=True)
class WarpShuffle:
    """`out` = `value` as lane (this lane XOR `mask`) of the warp holds it (NVIDIA's shfl.sync.bfly): a row's
    accumulators spread over the 4 lanes of a quad are combined by two of them, no local memory."""

    out: Reg         # float32, or uint32 (quads.py: bits)
    value: Operand
    mask: int


@dataclass(frozen=True)
class PackHalves:
    """Two float values rounded to `dtype` (float16 or bfloat16, to nearest even) in one uint32 `out`, `low` in its
    low 16 bits: an mma.sync operand word made from accumulators (attention's P as the A fragment of P·V)."""

    out: Reg         # uint32
    low: Operand
    high: Operand
    dtype: DType


@dataclass(frozen=True)
class UnpackHalves:
    """The two bfloat16 values of uint32 `word` (its low 16 bits the first) as the lanes of float pair `out`: a pair
    an item read within a 16-byte word and handed over by shuffles (quads.py)."""

    out: Reg         # bfloat16 x 2
    word: Operand


@dataclass(frozen=True)
class WarpgroupMma:
    """acc += a · b on a warpgroup's tensor cores (sm_90a wgmma.mma_async m64n`n`k16, operands of `kind`: "bf16" or
    "f16"; m64n`n`k8 of "tf32"), issued asynchronously: WarpgroupFence before a batch, WarpgroupCommit closing it,
    WarpgroupWait for it. a (64 rows x k) and b (`n` columns x k) are read from local memory through matrix
    descriptors (wgmma.py): from element `a_index` of `a_array` and `b_index` of `b_array`, laid out in 128-byte
    swizzled rows along k, or with `a_mn_major` / `b_mn_major` along its rows / columns in atoms `a_leading` /
    `b_leading` bytes apart (wgmma's imm-trans-a / imm-trans-b: 16-bit operands only). With `a_registers` (4 float32
    Regs holding TF32 values, wgmma.fragment_position) a is read from them instead (`a_array` unused), and they must
    keep their values until the batch is waited for. The 128 items of the warpgroup hold n / 2 float32
    accumulators each (wgmma.accumulator_position)."""

    acc: tuple       # n / 2 float32 Regs
    a_array: str
    a_index: Expr
    b_array: str
    b_index: Expr
    n: int
    kind: str
    b_mn_major: bool = False
    b_leading: int = 16
    a_registers: tuple = ()
    a_mn_major: bool = False
    a_leading: int = 16


@dataclass(frozen=True)
class WarpgroupFence:
    """Orders this item's register accesses to accumulators before the WarpgroupMmas after it (wgmma.fence);
    `registers`: those an a read from registers lies in, computed before it (none moved past it by the compiler:
    ptxas would then fence them again itself, and on a branch only some items take it serializes the wgmmas)."""

    registers: tuple = ()


@dataclass(frozen=True)
class WarpgroupCommit:
    """Closes the batch of WarpgroupMmas this warpgroup issued since the last commit (wgmma.commit_group)."""


@dataclass(frozen=True)
class WarpgroupWait:
    """Waits until at most `pending` of the warpgroup's most recent batches are in flight (wgmma.wait_group): the
    accumulators of the others are final and their local memory may be overwritten after a Barrier."""

    pending: int


@dataclass(frozen=True)
class NamedBarrier:
    """Barrier `ident` (1-15; Barrier is 0) of `count` items, a multiple of 32 (NVIDIA's bar.sync / bar.arrive):
    with `wait` the item waits until `count` items have reached it, else it only counts itself in and goes on. Items
    of different roles hand local memory over by it (transforms/warp_roles.py: a producer arrives, consumers wait)."""

    ident: Expr
    count: int
    wait: bool


@dataclass(frozen=True)
class RegisterBudget:
    """The registers each item of this warpgroup may hold from here on (sm_90a setmaxnreg, a multiple of 8 in
    24-256): a producer gives registers back (`grow` False), consumers holding many accumulators take them."""

    count: int
    grow: bool


@dataclass(frozen=True)
class LocalRoundTF32:
    """Rounds `width` float32 elements of local `array` from element `index` (a multiple of `width`; `swizzle` as
    AsyncCopy's) to TF32 in place, to nearest (cvt.rna, as cuBLAS rounds its operands): an AsyncCopy's elements once
    landed, in a tile a TF32 WarpgroupMma reads through a descriptor (the tensor cores would drop their 13 low bits)."""

    array: str
    index: Expr
    width: int = 4
    swizzle: int = 0


@dataclass(frozen=True)
class AsyncProxyFence:
    """Makes this item's writes to local memory (cp.async copies landed, stores) visible to the asynchronous
    proxy that WarpgroupMma reads through (fence.proxy.async); a Barrier after it covers the whole group."""


@dataclass(frozen=True)
class BulkStore:
    """`size` bytes (a multiple of 16) from local `array` at element `index` to global `buffer` at element `target`
    (both 16-byte aligned), copied by the asynchronous proxy without registers (cp.async.bulk, sm_90): in flight
    until a BulkWait covering the group a BulkCommit closed after it; an AsyncProxyFence and a barrier must
    make the local writes it reads visible first. Where `guard` fails, nothing is copied."""

    buffer: str
    target: Expr
    array: str
    index: Expr
    size: Expr
    guard: Cond = ()


@dataclass(frozen=True)
class BulkCommit:
    """Closes the group of BulkStores this item issued since the last commit."""


@dataclass(frozen=True)
class BulkWait:
    """Waits until at most `pending` of this item's bulk groups still read local memory (cp.async.bulk.wait_group
    .read: their sources may then be written again; their writes to memory complete on their own)."""

    pending: int


Statement = Union[Load, Gather, Alu, Select, LaneSelect, Rand, Position, Extract, Broadcast, Pack, Define, Accumulate,
                  MultiplyAdd, Loop, If, Break, Store, LocalArray, LocalStore, LocalLoad, Barrier, MatrixLoad,
                  MatrixMultiply, WarpShuffle, PackHalves, UnpackHalves, AsyncCopy, AsyncCommit, AsyncWait,
                  WarpgroupMma, WarpgroupFence, WarpgroupCommit, WarpgroupWait, AsyncProxyFence, NamedBarrier,
                  RegisterBudget, LocalRoundTF32, BulkStore, BulkCommit, BulkWait]
NVIDIA_ONLY = (MatrixLoad, MatrixMultiply, WarpShuffle, AsyncCopy, AsyncCommit, AsyncWait, WarpgroupMma,
               WarpgroupFence, WarpgroupCommit, WarpgroupWait, AsyncProxyFence, NamedBarrier, RegisterBudget,
               LocalRoundTF32, BulkStore, BulkCommit, BulkWait)  # printed as inline PTX
PURE = (Load, Gather, Alu, Select, LaneSelect, Rand, Position, Extract, Broadcast, Pack,
        PackHalves, UnpackHalves)  # statements a copy may share


@dataclass(frozen=True)
class Kernel:
    """One kernel: its kind (the name's prefix: e elementwise, r reducing, g work-group reducing, m product,
    a attention), parameters, axes and statements."""

    kind: str
    params: tuple[Param, ...]
    axes: tuple[Axis, ...]
    body: tuple
    local_size: Optional[int] = None  # a launch's work group, when the kernel asks for one without a LOCAL axis
    _fingerprint: list = dataclasses.field(default_factory=list, init=False, repr=False, compare=False)

    def axis(self, role: Role) -> Optional[Axis]:
        return next((a for a in self.axes if a.role is role), None)

    @property
    def work_items(self) -> int:
        """Work items (or groups) along the GLOBAL axis."""
        axis = self.axis(Role.GLOBAL)
        return axis.size if axis else 0

    @property
    def launch(self) -> tuple[int, Optional[int]]:
        """Global and local size of the kernel's launch."""
        local = self.axis(Role.LOCAL)
        if local is not None:
            return self.work_items * local.size, local.size
        return self.work_items, self.local_size

    def fingerprint(self) -> str:
        """A hash of everything the kernel computes (what names it and keys its binary, with the printer's
        version): parameters by kind and dtype, axes, statements."""
        if not self._fingerprint:
            params = [(p.kind, p.name, p.dtype.name) for p in self.params]
            text = repr((self.kind, params, self.axes, self.body, self.local_size))
            self._fingerprint.append(xxhash.xxh3_128_hexdigest(text.encode()))
        return self._fingerprint[0]


@dataclass
class RenderedKernel:
    """A printed kernel with what the scheduler and the program need to know of it."""

    name: str
    source: str
    space: tuple[int, ...]
    params: list[Param]
    outputs: list[Any]         # nodes it stores
    loads: list[Any]           # nodes it reads from memory
    needs: list[Any]           # nodes it reads that must be stored by other kernels
    misaligned: set[int]       # ids of loaded nodes read somewhere other than the position being stored
    global_size: int
    local_size: Optional[int]
    longest_reduction: int = 0  # elements the longest reduction in this kernel walks
    collective: str = ""  # not a kernel: a value combined across processes, "all_reduce sum float32" (collective.py)
    site: Optional["TuneSite"] = None  # how it was shaped and what a search may try (None: nothing to choose)
    ir: Optional[Kernel] = None  # what was printed (None for a collective step): launch groups print it again
    kernels: int = 1  # the kernels it runs side by side (a launch group: launch_groups.py)
    summed_apart: tuple = ()  # products it reads as partial sums another kernel stores (their FLOPs are that one's)
    late: bool = False  # a copy of a value for its late readers (rematerialize.py): launched as late as it may be


# ---- walking and rewriting -------------------------------------------------------------------------------
def walk(body: tuple) -> Iterator[Statement]:
    """Every statement, loop and branch bodies included (depth first, in order)."""
    for statement in body:
        yield statement
        if isinstance(statement, (Loop, If)):
            yield from walk(statement.body)


def rewrite(statement: Statement, expr: Callable[[Expr], Expr], reg: Callable[[Reg], Operand]) -> Statement:
    """`statement` with `expr` applied to every index and guard expression and `reg` to every register,
    defined or read (bodies are left as they are: callers recurse as they need). (Types compared with `is`, the
    fields named once per class: an upcast to sixteen lanes rewrites millions of statements.)"""
    def convert(value: Any) -> Any:
        kind = type(value)
        if kind is Expr:
            return expr(value)
        if kind is Reg:
            return reg(value)
        if kind is Lane:
            return Lane(reg(value.src), value.part)
        if kind is tuple:
            return tuple([convert(v) for v in value])
        return value
    cls = type(statement)
    return cls(*[getattr(statement, name) if name == "body" else convert(getattr(statement, name))
                 for name in field_names(cls)])


def register_names(statement: Statement) -> list[str]:
    """The name of every register `statement` defines or reads, once per mention (bodies aside, as `rewrite`)."""
    names: list[str] = []

    def mention(reg: Reg) -> Reg:
        names.append(reg.name)
        return reg
    rewrite(statement, lambda e: e, mention)
    return names


@functools.cache
def field_names(cls: type) -> tuple[str, ...]:
    """The fields of a statement class, in order (`dataclasses.fields` walks them again on every call)."""
    return tuple(f.name for f in dataclasses.fields(cls))


def substitute(expr: Expr, values: dict[str, Expr], memo: Optional[dict] = None) -> Expr:
    """`expr` with each variable named in `values` replaced (and the result simplified again)."""
    memo = {} if memo is None else memo
    key = expr.key
    if key in memo:
        return memo[key]
    total = Expr(expr.const)
    for atom, coefficient in expr.terms.items():
        if atom.kind == "var":
            replaced = values.get(atom.name)
            value = replaced if replaced is not None else Expr(0, {atom: 1})
        else:
            inner = substitute(atom.expr, values, memo)  # type: ignore[arg-type]
            value = {"div": lambda: _divided(inner, atom.k, False), "mod": lambda: _divided(inner, atom.k, True),
                     "min": lambda: Expr.minimum(inner, atom.k),
                     "clamped": lambda: Expr.clamped(inner, atom.lo, atom.hi)}[atom.kind]()
        total = total + value * coefficient
    memo[key] = total
    return total


def _divided(inner: Expr, k: int, modulo: bool) -> Expr:
    """`inner % k` (`modulo`) or `inner // k`; where `inner` is a clamped value (an index known to be in range
    where it is used, inside a guard), that of the value itself if it simplifies there, as it does once a vector's
    lane is substituted ((16 g + 1) % 64 == (g % 4) * 16 + 1 where the clamp keeps the mod as it is: W7's q, k, v
    gradients side by side, each piece's lanes read as one vector only so), clamped again to the range the clamp
    gave where its own is wider (later divisions of it must not see negative values the guard excludes)."""
    plain = inner % k if modulo else inner // k
    ((atom, coefficient),) = inner.terms.items() if len(inner.terms) == 1 else ((None, 0),)
    if atom is None or atom.kind != "clamped" or coefficient != 1 or inner.const:
        return plain
    try:
        value = atom.expr % k if modulo else atom.expr // k  # type: ignore[operator]
    except ValueError:  # (possibly negative outside the guard)
        return plain
    if any(a.kind in ("mod", "div") and a.expr == atom.expr for a in value.terms):
        return plain  # (nothing simplified)
    return value if plain.lo <= value.lo and value.hi <= plain.hi else Expr.clamped(value, plain.lo, plain.hi)


def simplify_cond(cond: Cond) -> Optional[Cond]:
    kept = []
    for expr, op, limit in cond:
        holds = expr.lo >= limit if op == "ge" else expr.hi < limit
        fails = expr.hi < limit if op == "ge" else expr.lo >= limit
        if fails:
            return None
        if not holds:
            kept.append((expr, op, limit))
    return tuple(kept)


def lowest_value(dtype: DType) -> object:
    """The identity of max for `dtype`, as a Python value."""
    if dtype.is_float:
        return -math.inf
    if dtype.is_bool:
        return False
    return int_range(dtype)[0]


def reduce_start(op: Op, dtype: DType, width: int = 1) -> Const:
    """The value a SUM (ADD) or MAX accumulator starts from."""
    return Const(0 if op in (Op.SUM, Op.ADD) else lowest_value(dtype), dtype, width)


@dataclass
class Names:
    """Fresh register and variable names (`v1`, `acc2`, `r3`...), one counter per kernel."""

    counter: int = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"
