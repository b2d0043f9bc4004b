"""torch as the interpreter's array library: what zyx.Torch() computes each primitive op with.

Values are computed in the dtypes the numpy reference uses: float16 and bfloat16 in float32 (each op's result
rounded), and uint32, which torch stores but barely computes with, in int64 wrapped to 32 bits after every op.
A sum of a product (matrix products and their gradients) is one `torch.matmul` or `torch.einsum` on the operands
without their broadcast axes (`torch_products.py`), so the product is never stored and cuBLAS (or MKL, MPS...)
does the work. `step_function` gives a replayed program (`program_code.py`) each common step as one bound torch
call, with no dtype check where the dtypes say none is needed.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, ContextManager, Optional, Sequence

import numpy as np
import torch

from ..dtypes import ALL_DTYPES, DType, bfloat16
from ..precision import tf32_allowed
from ..trace.ops import Op
from ..trace.philox import CUDA_SOURCE, FLOAT_MANTISSA_BITS, philox_bits_int64
from .arrays import ArrayLibrary, Shape
from .steps import Fused, Step
from .torch_foreach import group_function, groupable
from .torch_products import bound_contract, contract

TORCH_DTYPES: dict[str, torch.dtype] = {dtype.name: getattr(torch, dtype.name) for dtype in ALL_DTYPES}
_COMPUTED = {"float16": torch.float32, "bfloat16": torch.float32, "uint32": torch.int64}
_WORD = 0xFFFFFFFF
_UNIFORM_SCALE = 2.0 ** -FLOAT_MANTISSA_BITS
_THRESHOLD_BACKWARD = torch.ops.aten.threshold_backward
_LOG_SOFTMAX_BACKWARD = torch.ops.aten._log_softmax_backward_data.default


def _relu(x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    return torch.clamp_min(x, 0.0, out=out)


def _relu_grad(g: torch.Tensor, r: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """g where r > 0, else 0: PyTorch's own relu backward (one pass, where `torch.where` is slow on CPUs)."""
    if out is None:
        return _THRESHOLD_BACKWARD.default(g, r, 0.0)
    return _THRESHOLD_BACKWARD.grad_input(g, r, 0.0, grad_input=out)


def _mulsub(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    return torch.addcmul(a, b, c, value=-1, out=out)


# the overwriting ops outside the two tables
_OUT_FUNCTIONS: dict[Any, Callable[..., Any]] = {
    Op.DIV: torch.div, Op.WHERE: torch.where, Fused.SUB: torch.sub, Fused.LE: torch.le, Fused.NE: torch.ne,
    Fused.RELU: _relu, Fused.RELU_GRAD: _relu_grad, Fused.MULADD: torch.addcmul, Fused.MULSUB: _mulsub,
    Fused.LERP: torch.lerp,
}
# row ops, as bound calls of (the step's axis, the computed dtype): PyTorch's own kernels for both
_ROWS: dict[Any, Callable[[int, torch.dtype], Callable[..., torch.Tensor]]] = {
    Fused.LOG_SOFTMAX: lambda axis, dtype: lambda x: torch.log_softmax(x, axis),
    Fused.LOG_SOFTMAX_GRAD: lambda axis, dtype: lambda g, y: _LOG_SOFTMAX_BACKWARD(g, y, axis, dtype),
    Fused.LOGSUMEXP: lambda axis, dtype: lambda x: torch.logsumexp(x, axis, keepdim=True),
    Fused.LOGSUMEXP_GRAD: lambda axis, dtype: lambda x, h: torch.softmax(x, axis).mul_(h),
    Fused.CROSS_ENTROPY: lambda axis, dtype: functools.partial(_cross_entropy, axis),
    Fused.CROSS_ENTROPY_GRAD: lambda axis, dtype: lambda x, h, index, c:
        torch.softmax(x, axis).mul_(h).scatter_add_(axis, _classes(index, x.shape[axis]), c),
}


def _classes(index: torch.Tensor, classes: int) -> torch.Tensor:
    """`index` clamped into [0, classes): an entry outside fails the realize's range check (IndexError naming it),
    and must never reach a gather or scatter, which assert on the device on CUDA."""
    return index.clamp(0, classes - 1)


def _cross_entropy(axis: int, x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(logsumexp(x) - x[index]) * weight along `axis` (Fused.CROSS_ENTROPY): torch's cross_entropy per row, the
    classes on axis 1 as it takes them (a batch of one for a single row)."""
    index = _classes(index, x.shape[axis])
    if x.ndim == 1:
        x = x.unsqueeze(0)
    else:
        x, index = x.movedim(axis, 1), index.squeeze(axis)
    return torch.nn.functional.cross_entropy(x, index, reduction="none").reshape(weight.shape).mul_(weight)
_COMPARISONS = {Op.CMPLT, Op.CMPEQ, Fused.LE, Fused.NE}  # bool results of operands of another dtype
# views, as bound calls of (the step's arg, its shape)
_VIEWS: dict[Op, Callable[[Any, Shape], Callable[[torch.Tensor], torch.Tensor]]] = {
    Op.RESHAPE: lambda arg, shape: lambda x: x.reshape(shape),
    Op.PERMUTE: lambda arg, shape: lambda x: x.permute(arg),
    Op.EXPAND: lambda arg, shape: lambda x: x.expand(shape),
    Op.SHRINK: lambda arg, shape: lambda x, index=tuple(slice(start, end) for start, end in arg): x[index],
    Op.FLIP: lambda arg, shape: lambda x: torch.flip(x, arg),
}


def _precision_api() -> tuple[Callable[[], Any], Callable[[Any], None], dict[bool, Any], Callable[[Any], Any]]:
    """(read, write, wanted, effective) for torch's float32 product precision: `wanted[tf32]` is the setting zyx
    runs under and `effective(setting)` what a setting means. torch ≥ 2.9 keeps it per backend
    (`torch.backends.cuda.matmul.fp32_precision`, and mkldnn's on CPUs), where its default "none" computes in
    full float32 as "ieee" does, and raises if the old global `get_float32_matmul_precision` is read after a
    user set the new one; older torch has only the global."""
    if hasattr(torch._C, "_get_fp32_precision_getter"):
        get, set_ = torch._C._get_fp32_precision_getter, torch._C._set_fp32_precision_setter

        def write(values: Any) -> None:
            set_("cuda", "matmul", values[0])
            set_("mkldnn", "matmul", values[1])
        return (lambda: (get("cuda", "matmul"), get("mkldnn", "matmul")), write,
                {False: ("ieee", "ieee"), True: ("tf32", "ieee")},
                lambda values: tuple(["ieee" if value == "none" else value for value in values]))
    return (torch._C._get_float32_matmul_precision, torch._C._set_float32_matmul_precision,
            {False: "highest", True: "high"}, lambda value: value)


_READ_PRECISION, _WRITE_PRECISION, _WANTED_PRECISION, _EFFECTIVE_PRECISION = _precision_api()
_UNKNOWN = object()
_PRECISION_TO_WRITE: dict[tuple[Any, bool], Any] = {}  # (torch's setting, tf32 allowed) -> _precision_to_write's


def _precision_to_write(precision: Any, tf32: bool) -> Any:
    """The setting a run writes over torch's `precision`, or None where that already means zyx's (kept per pair
    met: each run enters a `_RunState`)."""
    wanted = _WANTED_PRECISION[tf32]
    return None if precision == wanted or _EFFECTIVE_PRECISION(precision) == wanted else wanted


class _RunState:
    """The torch state a program runs in, set on entry and restored on exit: no autograd (torch.no_grad() at a
    third of its cost: no Python-level grad-mode objects; each run of a program enters it), and float32 matrix
    products at zyx's precision (`zyx.set_float32_matmul_precision`: TF32 on CUDA where it allows it, IEEE float32
    on CPUs), whatever torch's own setting is around the call. zyx's "medium" is TF32 as "high" is
    (zyx/precision.py), so torch is never told its bfloat16 "medium". A setting that means what zyx wants
    already (torch's default) is left as it is: no write on entry, none on exit."""

    __slots__ = ("enabled", "precision")

    def __enter__(self) -> None:
        self.enabled = _is_grad_enabled()
        _set_grad_enabled(False)
        precision = _READ_PRECISION()
        key = (precision, tf32_allowed())
        wanted = _PRECISION_TO_WRITE.get(key, _UNKNOWN)
        if wanted is _UNKNOWN:
            wanted = _PRECISION_TO_WRITE[key] = _precision_to_write(*key)
        if wanted is None:
            self.precision = None
        else:
            self.precision = precision
            _WRITE_PRECISION(wanted)

    def __exit__(self, *exc: Any) -> None:
        _set_grad_enabled(self.enabled)
        if self.precision is not None:
            _WRITE_PRECISION(self.precision)


_is_grad_enabled, _set_grad_enabled = torch.is_grad_enabled, torch._C._set_grad_enabled  # (read once: every run
# enters a _RunState)


@functools.cache
def cuda_philox(device: torch.device) -> Optional[Callable[..., torch.Tensor]]:
    """`philox.CUDA_SOURCE` as a torch function on `device`, built here once per process (torch's jiterator:
    NVRTC); None, with a warning saying why, where torch cannot build it (then draws take the int64 form)."""
    function = torch.cuda.jiterator._create_jit_fn(CUDA_SOURCE, seed_lo=0, seed_hi=0, offset_lo=0, offset_hi=0)
    try:
        function(torch.zeros(1, dtype=torch.int64, device=device))
    except (RuntimeError, AssertionError) as error:  # (a build without NVRTC; jiterator asserts there is CUDA)
        warnings.warn(f"zyx.Torch('{device}'): torch's jiterator cannot build the Philox kernel "
                      f"({str(error).strip().splitlines()[-1]}); each random tensor takes ~270 torch ops")
        return None
    return function


def _flat_padding(padding: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    """(before, after) per axis as torch.constant_pad_nd takes them: the last axis first, flattened."""
    return tuple(size for pair in reversed(padding) for size in pair)


def computed_dtype(dtype: DType) -> torch.dtype:
    """The torch dtype values of `dtype` are computed in."""
    return _COMPUTED.get(dtype.name) or TORCH_DTYPES[dtype.name]


def storage_key(tensor: torch.Tensor) -> int:
    """Which memory a tensor uses: its storage's address (views share it)."""
    return tensor.untyped_storage().data_ptr()


def from_numpy(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing `array`'s memory (bfloat16, which torch cannot import from numpy, through its bits;
    told by name: ml_dtypes, whose dtype it is, is loaded only where a bfloat16 value reaches the host)."""
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A host tensor's values as a numpy array (bfloat16 as ml_dtypes' bfloat16)."""
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.uint16).numpy().view(bfloat16.np)
    return tensor.numpy()


def _elementwise(step: Step, sources: Sequence[Step]) -> Optional[Callable[..., Any]]:
    """The torch function computing an elementwise step (taking `out=`) where its result is already in the
    computed dtype (no `conform` needed); None where it is not (uint32, mixed dtypes) or there is none."""
    op, dtype = step.op, step.dtype
    function = TorchArrays.unary.get(op) or TorchArrays.binary.get(op) or _OUT_FUNCTIONS.get(op)
    if function is None or op is Op.DETACH or dtype.name == "uint32" or (op is Op.DIV and not dtype.is_float):
        return None
    operands = {computed_dtype(source.dtype) for source in (sources[1:] if op is Op.WHERE else sources)}
    if len(operands) != 1 or (operands != {computed_dtype(dtype)} and not (op in _COMPARISONS and dtype.is_bool)):
        return None
    return function


class TorchArrays(ArrayLibrary):
    """torch tensors on one device; buffers are contiguous tensors of the node's shape and dtype."""

    contracts = True
    unary: dict[Op, Callable[[Any], Any]] = {
        Op.NEG: torch.neg, Op.RECIP: torch.reciprocal, Op.SQRT: torch.sqrt, Op.EXP: torch.exp, Op.LOG: torch.log,
        Op.SIN: torch.sin, Op.COS: torch.cos, Op.TANH: torch.tanh, Op.SIGMOID: torch.sigmoid,
        Op.ERF: torch.erf,
        Op.DETACH: lambda x: x, Op.FLOOR: torch.floor, Op.CEIL: torch.ceil, Op.RINT: torch.round,
        Op.NOT: torch.bitwise_not,
    }
    binary: dict[Op, Callable[[Any, Any], Any]] = {
        Op.ADD: torch.add, Op.MUL: torch.mul, Op.POW: torch.pow, Op.MAX: torch.maximum, Op.CMPLT: torch.lt,
        Op.CMPEQ: torch.eq, Op.AND: torch.bitwise_and, Op.OR: torch.bitwise_or, Op.XOR: torch.bitwise_xor,
    }

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._constants: dict[tuple[str, str], torch.Tensor] = {}

    # ---- representation -----------------------------------------------------------------------------------
    def load(self, buffer: torch.Tensor, dtype: DType) -> torch.Tensor:
        return buffer.to(computed_dtype(dtype))

    def conform(self, value: torch.Tensor, dtype: DType) -> torch.Tensor:
        computed = computed_dtype(dtype)
        if dtype.is_narrow_float:  # rounded where computed, as where stored (numpy_arrays.conform)
            value = value.to(TORCH_DTYPES[dtype.name])
        if value.dtype != computed:
            value = value.to(computed)
        return value & _WORD if dtype.name == "uint32" else value

    def outputs(self, values: Sequence[Any], steps: Sequence[Any], inputs: Sequence[Any]) -> list[torch.Tensor]:
        claimed = {storage_key(buffer) for buffer in inputs}
        stored = []
        for value, step in zip(values, steps):
            buffer = value.to(TORCH_DTYPES[step.dtype.name])
            buffer = (buffer if buffer.shape == step.shape else buffer.reshape(step.shape)).contiguous()  # (a
            # value that needs nothing stays the same object: torch_device.Replay then skips this check)
            key = storage_key(buffer)
            if key in claimed or buffer.untyped_storage().nbytes() > buffer.nbytes:
                buffer = buffer.clone()
                key = storage_key(buffer)
            claimed.add(key)
            stored.append(buffer)
        return stored

    def write(self, buffer: torch.Tensor, value: torch.Tensor, fresh: bool = False) -> None:
        if not fresh and not torch.compiler.is_compiling() and storage_key(value) == storage_key(buffer):
            value = value.clone()  # the new value is a view of the old one (w.assign(w.T)): copy_ cannot overlap
        buffer.copy_(value)

    def written(self, buffer: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return buffer if buffer.dtype == value.dtype and buffer.shape == value.shape else value

    def quiet(self) -> ContextManager[Any]:
        return _RunState()

    def loads_as_stored(self, dtype: DType) -> bool:
        return computed_dtype(dtype) == TORCH_DTYPES[dtype.name]

    def step_function(self, step: Step, sources: Sequence[Step]) -> Optional[Callable[..., Any]]:
        """One bound torch call for views, reductions, products, joins, casts, pads, the softmax family's rows,
        and the elementwise ops whose torch result is already in the computed dtype (`conform` would do nothing);
        None for the rest (uint32, half precision, compact steps, mixed dtypes), which take the generic path."""
        op, arg, shape, dtype = step.op, step.arg, step.shape, step.dtype
        view = _VIEWS.get(op)
        if view is not None:
            return view(arg, shape)
        if op is Fused.CAT:  # (its pieces are computed values already, uint32's wrapped, halves rounded)
            return lambda *pieces: torch.cat(pieces, arg)
        if step.compact is not None or dtype.name == "uint32" or (dtype.is_narrow_float and op is not Op.CAST):
            return None  # (half precision: rounded by `conform` on the generic path)
        computed = computed_dtype(dtype)
        if op is Fused.CONTRACT:
            return bound_contract(*arg, shape)
        if op in _ROWS:
            return _ROWS[op](arg, computed)
        if op is Op.SUM:
            keep = len(shape) == len(sources[0].shape)  # else a reshape dropping the summed axes was folded in
            return lambda x: torch.sum(x, dim=arg, keepdim=keep, dtype=computed)
        if op is Op.RMAX and all(sources[0].shape[axis] for axis in arg):
            return lambda x: torch.amax(x, dim=arg, keepdim=True)
        if op is Op.CAST:
            return lambda x: self.cast(x, dtype)
        if op is Op.PAD:
            flat = _flat_padding(arg[0])
            return lambda x: torch.constant_pad_nd(x, flat, arg[1])
        function = _elementwise(step, sources)
        if function is None or step.into is None:
            return function
        into = step.into
        return lambda *x: function(*x, out=x[into])

    def group_function(self, step: Step, sources: Sequence[Step], kinds: Sequence[Any],
                       in_place: bool) -> Optional[Callable[..., Any]]:
        return group_function(step.op, kinds, in_place, step.into) if groupable(step, sources) else None

    def out_function(self, step: Step, sources: Sequence[Step]) -> Optional[Callable[..., Any]]:
        if step.compact is not None or not step.dtype.is_float or not self.loads_as_stored(step.dtype):
            return None
        return _elementwise(step, sources)

    # ---- leaves --------------------------------------------------------------------------------------------
    def constant(self, value: Any, dtype: DType) -> torch.Tensor:
        """A 0-d tensor, made once per value (a fill on the device, never a copy that would wait for it)."""
        if torch.compiler.is_compiling():
            return torch.full((), value, dtype=computed_dtype(dtype), device=self.device)
        key = (value.hex() if isinstance(value, float) else repr(value), dtype.name)
        if key not in self._constants:
            self._constants[key] = torch.full((), value, dtype=computed_dtype(dtype), device=self.device)
        return self._constants[key]

    def full(self, shape: Shape, value: Any, like: torch.Tensor) -> torch.Tensor:
        return torch.full(shape, value, dtype=like.dtype, device=like.device)

    def rand(self, stream: Sequence[Any], shape: Shape, dtype: DType) -> torch.Tensor:
        """Philox; `stream` is its four 32-bit words (see `philox.philox_words`): on CUDA one jiterator kernel
        (`philox.CUDA_SOURCE`), elsewhere, and where torch.compile traces the program (it fuses them itself),
        ~270 torch ops in int64 arithmetic."""
        count = 1
        for size in shape:
            count *= size
        index = torch.arange(count, dtype=torch.int64, device=self.device)
        kernel = cuda_philox(self.device) if self.device.type == "cuda" and not torch.compiler.is_compiling() \
            else None
        if kernel is not None:
            seed_lo, seed_hi, offset_lo, offset_hi = stream
            bits = kernel(index, seed_lo=seed_lo, seed_hi=seed_hi, offset_lo=offset_lo, offset_hi=offset_hi)
        else:
            bits = philox_bits_int64(index, stream)
        return (bits * _UNIFORM_SCALE).reshape(shape).to(computed_dtype(dtype))

    # ---- elementwise ---------------------------------------------------------------------------------------
    def cast(self, x: torch.Tensor, dtype: DType) -> torch.Tensor:
        if dtype.is_narrow_float:  # rounded where cast, as on the other devices, then computed in float32
            return x.to(getattr(torch, dtype.name)).to(torch.float32)
        return x.to(computed_dtype(dtype))

    def where(self, condition: Any, a: Any, b: Any) -> torch.Tensor:
        return torch.where(condition, a, b)

    def shift_raw(self, a: torch.Tensor, b: torch.Tensor, left: bool) -> torch.Tensor:
        return torch.bitwise_left_shift(a, b) if left else torch.bitwise_right_shift(a, b)

    # ---- reductions ----------------------------------------------------------------------------------------
    def sum(self, x: torch.Tensor, axes: tuple[int, ...], dtype: DType) -> torch.Tensor:
        return torch.sum(x, dim=axes, keepdim=True, dtype=computed_dtype(dtype))

    def amax(self, x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
        return torch.amax(x, dim=axes, keepdim=True)

    def overwrite(self, op: Op, sources: Sequence[Any], into: int) -> torch.Tensor:
        function = self.unary.get(op) or self.binary.get(op) or _OUT_FUNCTIONS[op]  # float ops only
        return function(*sources, out=sources[into])

    def contract(self, a: torch.Tensor, b: torch.Tensor, axes: tuple[int, ...], size: Shape,
                 dims: tuple[tuple[int, ...], ...], shape: Shape, addend: Optional[torch.Tensor] = None) -> torch.Tensor:
        return contract(a, b, axes, size, dims, shape, addend)

    # ---- movement ------------------------------------------------------------------------------------------
    def pad(self, x: torch.Tensor, padding: tuple[tuple[int, int], ...], value: Any, shape: Shape) -> torch.Tensor:
        return torch.constant_pad_nd(x, _flat_padding(padding), value)

    def reshape(self, x: torch.Tensor, shape: Shape) -> torch.Tensor:
        return x.reshape(shape)

    def permute(self, x: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
        return x.permute(order)

    def expand(self, x: torch.Tensor, shape: Shape) -> torch.Tensor:
        return x.expand(shape)

    def flip(self, x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
        return torch.flip(x, axes)
