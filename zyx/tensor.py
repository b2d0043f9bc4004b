"""Tensor: a handle on a trace node. Every op records a node; values are computed only when asked for.

Elementwise math lives here; reductions, movement and layers come from the mixins beside it.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np

from .autocast import with_autocast_policies
from .dim_alias import accept_dim_on_methods
from .devices import default_device
from .dtypes import DEFAULT_FLOAT, DType, bool_, float64, int64, promote, promote_with_scalar, wrap_int
from .errors import GRADIENTS_ARE_RETURNED, ShapeError
from .leaves import data_leaf
from .realize import realize_one
from .tensor_activations import ActivationMixin
from .tensor_base import TensorBase, computed_in_float32, rounded_once
from .tensor_conv import ConvMixin
from .tensor_convert import ConvertMixin
from .tensor_indexing import IndexingMixin
from .tensor_layers import LayerMixin
from .tensor_layout import LayoutMixin
from .tensor_math import MathMixin
from .tensor_movement import MovementMixin, broadcast_shape
from .tensor_reduce import ReduceMixin
from .tensor_scan import ScanMixin
from .tensor_scatter import ScatterMixin
from .tensor_sort import SortMixin
from .tensor_spellings import SpellingsMixin
from .tensor_stats import StatsMixin
from .trace import autodiff
from .trace import node as n
from .trace.capture import active_capture, record_assign
from .trace.hashing import structural_hash
from .trace.node import Node
from .trace.ops import Op

Operand = Union["Tensor", int, float, bool]


@with_autocast_policies
@accept_dim_on_methods
class Tensor(MovementMixin, IndexingMixin, ReduceMixin, LayerMixin, ConvertMixin, ConvMixin, MathMixin, ActivationMixin,
             StatsMixin, ScanMixin, SortMixin, LayoutMixin, ScatterMixin, SpellingsMixin, TensorBase):
    """An n-dimensional array on a device, computed lazily: every op records a trace node, and values are
    computed only when asked for (`numpy()`, `item()`, `print`, `zyx.realize`).

    `Tensor(data)` copies `data` (nested lists, numbers, numpy arrays) as PyTorch's `torch.Tensor(data)` does:
    float32 unless `dtype` is given, on `device` (default: `zyx.default_device()`). `zyx.tensor(data)` infers
    the dtype instead. Wherever a method takes `axis`, it also takes PyTorch's `dim`.
    """

    __slots__ = {"node": "The trace node this tensor is a handle on (its value once realized).", "__weakref__": None}
    __array_priority__ = 1000  # numpy defers to our reflected operators

    def __init__(self, data: Any, *, device: Any = None, dtype: Any = None):
        if isinstance(data, Node):
            self.node = data
        elif isinstance(data, Tensor):
            self.node = data.to(*(a for a in (device, dtype) if a is not None)).node
        else:
            self.node = data_leaf(data, device if device is not None else default_device(),
                                  dtype if dtype is not None else DEFAULT_FLOAT)

    # ---- properties ----------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """The size of each axis."""
        return self.node.shape

    @property
    def dtype(self) -> DType:
        """The element type (`zyx.float32`, ...)."""
        return self.node.dtype

    @property
    def device(self) -> Any:
        """The `zyx.Device` the tensor lives on."""
        return self.node.device

    @property
    def ndim(self) -> int:
        """The number of axes."""
        return len(self.node.shape)

    @property
    def grad(self) -> None:
        """Zyx keeps no gradients on tensors: this explains where they are."""
        raise AttributeError(GRADIENTS_ARE_RETURNED)

    def numel(self) -> int:
        """The number of elements."""
        return self.node.numel

    def structural_hash(self) -> str:
        """The hash of the trace that computes this tensor, by structure (data and seeds do not enter it)."""
        return structural_hash([self.node])

    # ---- realization ---------------------------------------------------------------------------------------
    def realize(self) -> "Tensor":
        """Compute the value now (and keep it: the trace above is released); returns self."""
        realize_one(self)
        return self

    def numpy(self) -> np.ndarray:
        """The values as a new numpy array (computed first if needed)."""
        self.realize()
        return self.device.download(self.node.buffer, self.shape, self.dtype)

    def item(self) -> Any:
        """The value of a one-element tensor as a Python number."""
        if self.numel() != 1:
            raise ValueError(f"item() needs a tensor with one element, this one has shape {self.shape}")
        return self.numpy().reshape(()).item()

    def tolist(self) -> Any:
        """The values as nested Python lists (a number for a 0-d tensor)."""
        return self.numpy().tolist()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def __repr__(self) -> str:
        """The values; inside a step traced by `@zyx.jit` (where they do not exist yet), a description."""
        if active_capture() is not None:
            return (f"Tensor(<lazy: computed when the step runs>, shape={self.shape}, dtype={self.dtype}, "
                    f"device={self.device})")
        return f"Tensor({np.array2string(self.numpy(), separator=', ')}, dtype={self.dtype}, device={self.device})"

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self) -> Iterator["Tensor"]:
        return (self[i] for i in range(len(self)))

    def __bool__(self) -> bool:
        return bool(self.item())

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __index__(self) -> int:
        if self.dtype.is_float:
            raise TypeError("only integer tensors can be used as an index")
        return int(self.item())

    __hash__ = object.__hash__

    def detach(self) -> "Tensor":
        """The same values, but gradients do not flow back through the result."""
        return Tensor(n.unary(Op.DETACH, self.node))

    def assign(self, value: Operand) -> "Tensor":
        """Replace this tensor's value in place (optimizers use it; `@zyx.jit` records it as an update).

        The tensor keeps its shape and dtype: a value broadcasts to the shape; a Python number takes the dtype,
        a tensor of another dtype is refused (cast it: silent casts hide precision bugs in updates)."""
        new = self._operand(value, "assign")
        if new.dtype != self.dtype and isinstance(value, Tensor):
            raise TypeError(f"assign: value of dtype {new.dtype.name} (shape {new.shape}) into a tensor of dtype "
                            f"{self.dtype.name} (shape {self.shape}); cast it with .cast({self.dtype.name}) first")
        if new.shape != self.shape:
            if broadcast_shape("assign", self.shape, new.shape) != self.shape:
                raise ShapeError(f"assign: value of shape {new.shape} does not fit tensor of shape {self.shape}")
            new = new.expand(self.shape)
        record_assign(self, new.cast(self.dtype))
        return self

    # ---- autodiff ------------------------------------------------------------------------------------------
    def backward(self, sources: Optional[Sequence["Tensor"]] = None,
                 grad_output: Optional["Tensor"] = None) -> list[Optional["Tensor"]]:
        """d(self)/d(source) for each source, lazily (nothing runs until a gradient's value is asked for).

        A non-scalar tensor is seeded with ones (so this is the gradient of self.sum()) unless `grad_output` is
        given. A source this tensor does not depend on, or an integer or bool source (no gradient), gets None;
        one it depends on only through flat ops (comparisons, floor, round, sign, detach) gets zeros.
        Conventions at kinks: tied maxima/minima (max, min, maximum, minimum, and so abs at 0) share the
        gradient equally; clamp passes it at its bounds and relu gives 0 at 0, as PyTorch. Gradients are
        tensors like any other, so they can be differentiated again, to any order. After `self` was realized
        (`loss.item()`), backward still works from its recorded origin, as long as the realized tensors whose
        values the gradient needs are still held somewhere (otherwise realizing the gradient raises).
        """
        if sources is None:
            raise TypeError(f"backward() needs the tensors to differentiate by. {GRADIENTS_ARE_RETURNED}")
        if isinstance(sources, Tensor):
            raise TypeError("backward takes a list of tensors: z.backward([x, y])")
        if not self.dtype.is_float:
            raise TypeError(f"backward needs a float tensor, this one is {self.dtype.name}")
        if grad_output is None:
            seed = n.const(1.0, self.shape, self.dtype, self.device)
        else:
            if grad_output.shape != self.shape:
                raise ShapeError(f"backward: grad_output shape {grad_output.shape} differs from tensor shape {self.shape}")
            seed = grad_output.cast(self.dtype).node
        grads = autodiff.gradients(self.node, [s.node for s in sources], seed)
        return [None if g is None else Tensor(g) for g in grads]

    # ---- operand plumbing ----------------------------------------------------------------------------------
    def _operand(self, value: Operand, op: str) -> "Tensor":
        if isinstance(value, Tensor):
            return value
        if isinstance(value, (int, float, bool, np.number, np.bool_)):
            value = value.item() if isinstance(value, np.generic) else value
            if type(value) is int and self.dtype.is_int:
                value = wrap_int(value, self.dtype)
            return self._full((), value, promote_with_scalar(self.dtype, value))  # joins self without widening it
        if isinstance(value, (list, tuple, np.ndarray)):
            return self._data(value)
        raise TypeError(f"{op}: unsupported operand of type {type(value).__name__}")

    def _pair(self, other: Operand, op: str, dtype: Optional[DType] = None) -> tuple[Node, Node]:
        """Both operands broadcast to one shape and cast to one dtype (PyTorch's promotion)."""
        if isinstance(other, Tensor):  # the usual case, two tensors alike, decided without a call
            mine, its = self.node, other.node
            if (mine.shape == its.shape and mine.dtype is its.dtype and mine.device is its.device
                    and (dtype is None or dtype is mine.dtype)):
                return mine, its
        b = self._operand(other, op)
        mine, its = self.node, b.node
        if its.device is not mine.device:
            raise ValueError(f"{op}: operands live on different devices ({mine.device} and {its.device})")
        shape = broadcast_shape(op, mine.shape, its.shape)
        common = dtype or promote(mine.dtype, its.dtype)
        return self._broadcast_to(shape, common), b._broadcast_to(shape, common)

    def _broadcast_to(self, shape: tuple[int, ...], dtype: DType) -> Node:
        node = n.cast(self.node, dtype)
        if node.shape != shape:
            node = n.reshape(node, (1,) * (len(shape) - len(node.shape)) + node.shape)
            node = n.expand(node, shape)
        return node

    def _binary(self, op: Op, other: Operand, name: str, dtype: Optional[DType] = None) -> "Tensor":
        a, b = self._pair(other, name, dtype)
        return Tensor(n.binary(op, a, b))

    def _unary(self, op: Op) -> "Tensor":
        return Tensor(n.unary(op, self.node))

    def _float(self) -> "Tensor":
        return self if self.dtype.is_float else self.cast(DEFAULT_FLOAT)

    def _in_float32(self, compute: Callable[..., "Tensor"], *others: "Tensor") -> "Tensor":
        """`compute` of this tensor (and `others`) as floats (integers in float32), `computed_in_float32`."""
        return computed_in_float32(compute, self._float(), *(other._float() for other in others))

    # ---- arithmetic ----------------------------------------------------------------------------------------
    def __add__(self, other: Operand) -> "Tensor":
        return self._binary(Op.ADD, other, "add")

    def __radd__(self, other: Operand) -> "Tensor":
        return self._operand(other, "add") + self

    def __sub__(self, other: Operand) -> "Tensor":
        a, b = self._pair(other, "sub")
        if a.dtype.is_bool:
            raise TypeError("sub: subtracting bool tensors is not supported; use logical_xor, or cast to an int "
                            "dtype first")
        return Tensor(n.binary(Op.ADD, a, n.unary(Op.NEG, b)))

    def __rsub__(self, other: Operand) -> "Tensor":
        return self._operand(other, "sub") - self

    def __mul__(self, other: Operand) -> "Tensor":
        return self._binary(Op.MUL, other, "mul")

    def __rmul__(self, other: Operand) -> "Tensor":
        return self._operand(other, "mul") * self

    def __truediv__(self, other: Operand) -> "Tensor":
        b = self._operand(other, "div")
        dtype = promote(self.dtype, b.dtype)
        return self._binary(Op.DIV, b, "div", dtype if dtype.is_float else DEFAULT_FLOAT)

    def __rtruediv__(self, other: Operand) -> "Tensor":
        return self._operand(other, "div") / self

    def __floordiv__(self, other: Operand) -> "Tensor":
        """Floor division, as Python for ints (integer division by zero gives a // 1 on the CPU; do not rely
        on it). For floats it is floor(a / b) of the rounded quotient, so at exact multiples it can differ from
        Python's fmod-based result by one (1.0 // 0.1 is 10 here, 9 in Python)."""
        b = self._operand(other, "floordiv")
        if promote(self.dtype, b.dtype).is_float:
            return (self / b).floor()
        return self._binary(Op.DIV, b, "floordiv")

    def __rfloordiv__(self, other: Operand) -> "Tensor":
        return self._operand(other, "floordiv") // self

    def __mod__(self, other: Operand) -> "Tensor":
        b = self._operand(other, "mod")
        return self - (self // b) * b

    def __pow__(self, exponent: Operand) -> "Tensor":
        if isinstance(exponent, np.generic):
            exponent = exponent.item()
        if isinstance(exponent, bool):
            exponent = int(exponent)
        if isinstance(exponent, int) and not self.dtype.is_float:
            return self._int_power(exponent)
        if isinstance(exponent, (int, float)):
            base = self._float()
            if exponent == 2:
                return base * base
            if exponent == 1:
                return base
            if exponent == 0.5:
                return base.sqrt()
            if exponent == -1:
                return base.reciprocal()
        other = self._operand(exponent, "pow")
        dtype = promote(self.dtype, other.dtype)
        if dtype.is_float:
            return self._binary(Op.POW, other, "pow", dtype)
        # integer ** integer tensor: exact in float64 up to 2**53, then rounded back
        return self._binary(Op.POW, other, "pow", float64).round().cast(dtype)

    def _int_power(self, exponent: int) -> "Tensor":
        """An integer tensor to a non-negative Python int power, by repeated squaring (exact, wraps on overflow)."""
        if exponent < 0:
            raise ValueError("pow: integers to negative integer powers are not allowed")
        source = self.cast(int64) if self.dtype.is_bool else self
        result: Optional[Tensor] = None
        square = source
        while exponent:
            if exponent & 1:
                result = square if result is None else result * square
            exponent >>= 1
            if exponent:
                square = square * square
        return result if result is not None else source * 0 + 1

    def __rpow__(self, base: Operand) -> "Tensor":
        return self._operand(base, "pow") ** self

    def pow(self, exponent: Operand) -> "Tensor":
        """self ** exponent (integers to non-negative Python int powers stay exact integers)."""
        return self ** exponent

    def __neg__(self) -> "Tensor":
        return self.logical_not() if self.dtype.is_bool else self._unary(Op.NEG)

    def __pos__(self) -> "Tensor":
        return self

    def __abs__(self) -> "Tensor":
        return self.abs()

    # ---- comparisons (bool results) ------------------------------------------------------------------------
    def __lt__(self, other: Operand) -> "Tensor":
        return self._binary(Op.CMPLT, other, "lt")

    def __gt__(self, other: Operand) -> "Tensor":
        return self._operand(other, "gt")._binary(Op.CMPLT, self, "gt")

    def __le__(self, other: Operand) -> "Tensor":
        return (self < other).logical_or(self == other)

    def __ge__(self, other: Operand) -> "Tensor":
        return (self > other).logical_or(self == other)

    def __eq__(self, other: Operand) -> "Tensor":  # type: ignore[override]
        return self._binary(Op.CMPEQ, other, "eq")

    def __ne__(self, other: Operand) -> "Tensor":  # type: ignore[override]
        return (self == other).logical_not()

    def eq(self, other: Operand) -> "Tensor":
        """Elementwise self == other (bool)."""
        return self == other

    # ---- logic ---------------------------------------------------------------------------------------------
    def _bool(self) -> "Tensor":
        return self if self.dtype.is_bool else self != 0

    def logical_not(self) -> "Tensor":
        """True where self is false (zero)."""
        return Tensor(n.unary(Op.NOT, self._bool().node))

    def logical_and(self, other: Operand) -> "Tensor":
        """True where both are true (non-zero)."""
        return self._bool()._binary(Op.AND, self._operand(other, "logical_and")._bool(), "logical_and")

    def logical_or(self, other: Operand) -> "Tensor":
        """True where either is true (non-zero)."""
        return self._bool()._binary(Op.OR, self._operand(other, "logical_or")._bool(), "logical_or")

    # ---- bits: logical on bool, bitwise on integers (as PyTorch); no gradient ------------------------------
    def _bitwise(self, op: Op, other: Operand, name: str) -> "Tensor":
        b = self._operand(other, name)
        dtype = promote(self.dtype, b.dtype)
        if dtype.is_float:
            raise TypeError(f"{name} needs bool or integer tensors, got {self.dtype.name} and {b.dtype.name}")
        return self._binary(op, b, name, dtype)

    def bitwise_and(self, other: Operand) -> "Tensor":
        """self & other: bitwise on integers, logical on bools (no gradient)."""
        return self._bitwise(Op.AND, other, "bitwise_and")

    def bitwise_or(self, other: Operand) -> "Tensor":
        """self | other: bitwise on integers, logical on bools (no gradient)."""
        return self._bitwise(Op.OR, other, "bitwise_or")

    def bitwise_xor(self, other: Operand) -> "Tensor":
        """self ^ other: bitwise on integers, logical on bools (no gradient)."""
        return self._bitwise(Op.XOR, other, "bitwise_xor")

    def bitwise_left_shift(self, other: Operand) -> "Tensor":
        """self << other; a count outside [0, bits) shifts every bit out (gives 0), as PyTorch."""
        return self._bitwise(Op.SHL, other, "bitwise_left_shift")

    def bitwise_right_shift(self, other: Operand) -> "Tensor":
        """Arithmetic self >> other; a count outside [0, bits) gives 0, or -1 for negative values, as PyTorch."""
        return self._bitwise(Op.SHR, other, "bitwise_right_shift")

    def bitwise_not(self) -> "Tensor":
        """~self: bitwise on integers, logical on bools."""
        if self.dtype.is_float:
            raise TypeError(f"bitwise_not needs a bool or integer tensor, got {self.dtype.name}")
        return self._unary(Op.NOT)

    __and__, __or__, __xor__, __invert__ = bitwise_and, bitwise_or, bitwise_xor, bitwise_not
    __lshift__, __rshift__ = bitwise_left_shift, bitwise_right_shift

    def __rand__(self, other: Operand) -> "Tensor":
        return self._operand(other, "bitwise_and") & self

    def __ror__(self, other: Operand) -> "Tensor":
        return self._operand(other, "bitwise_or") | self

    def __rxor__(self, other: Operand) -> "Tensor":
        return self._operand(other, "bitwise_xor") ^ self

    def __rlshift__(self, other: Operand) -> "Tensor":
        return self._operand(other, "bitwise_left_shift") << self

    def __rrshift__(self, other: Operand) -> "Tensor":
        return self._operand(other, "bitwise_right_shift") >> self

    def where(self, a: Operand, b: Operand) -> "Tensor":
        """Elements of `a` where self is true (nonzero), else of `b`, all broadcast together (zyx.where's order).
        Where self is not bool and `a` is a bool tensor, PyTorch's order `x.where(condition, y)`: x where
        `condition`, else y (not x's nonzero values choosing between a mask and y)."""
        if not self.dtype.is_bool and isinstance(a, Tensor) and a.dtype.is_bool:
            return where(a, self, b)
        return where(self, a, b)

    def masked_fill(self, mask: Operand, value: Operand) -> "Tensor":
        """`value` where `mask` is true, else self (PyTorch's; the mask broadcasts to self's shape)."""
        mask = self._operand(mask, "masked_fill")
        if not mask.dtype.is_bool:
            raise TypeError(f"masked_fill: the mask must be a bool tensor, got {mask.dtype.name}")
        if broadcast_shape("masked_fill", self.shape, mask.shape) != self.shape:
            raise ShapeError(f"masked_fill: mask of shape {mask.shape} does not broadcast to {self.shape}")
        return mask.where(self._operand(value, "masked_fill").cast(self.dtype), self)

    # ---- unary math ----------------------------------------------------------------------------------------
    def exp(self) -> "Tensor":
        """e ** x."""
        return self._float()._unary(Op.EXP)

    @rounded_once
    def exp2(self) -> "Tensor":
        """2 ** x."""
        return (self._float() * math.log(2)).exp()

    def log(self) -> "Tensor":
        """Natural logarithm (nan below 0, -inf at 0)."""
        return self._float()._unary(Op.LOG)

    ln = log

    @rounded_once
    def log2(self) -> "Tensor":
        """Base-2 logarithm."""
        return self.log() * (1 / math.log(2))

    @rounded_once
    def log1p(self) -> "Tensor":
        """log(1 + x), accurate for tiny x: log(u) * x / (u - 1) with u = 1 + x corrects u's rounding (Goldberg)."""
        x = self._float()
        u = x + 1
        tiny, huge = u == 1, u == math.inf  # there log(1 + x) is x (to rounding), or log(u)
        safe = (tiny | huge).where(2.0, u)
        return tiny.where(x, huge.where(u.log(), safe.log() * (x / (safe - 1))))

    @rounded_once
    def expm1(self) -> "Tensor":
        """exp(x) - 1, accurate for tiny x: (u - 1) * x / log(u) with u = exp(x) corrects u's rounding (Kahan)."""
        x = self._float()
        u = x.exp()
        tiny, saturated = u == 1, (u == 0) | (u == math.inf)  # there exp(x) - 1 is x (to rounding), -1 or inf
        safe = (tiny | saturated).where(2.0, u)
        return tiny.where(x, saturated.where(u - 1, (safe - 1) * (x / safe.log())))

    def sqrt(self) -> "Tensor":
        """Square root (nan below 0)."""
        return self._float()._unary(Op.SQRT)

    def rsqrt(self) -> "Tensor":
        """1 / sqrt(x)."""
        return self._in_float32(lambda x: x.sqrt().reciprocal())

    def reciprocal(self) -> "Tensor":
        """1 / x."""
        return self._float()._unary(Op.RECIP)

    def sin(self) -> "Tensor":
        """Sine (radians)."""
        return self._float()._unary(Op.SIN)

    def cos(self) -> "Tensor":
        """Cosine (radians)."""
        return self._float()._unary(Op.COS)

    def tan(self) -> "Tensor":
        """Tangent (radians), as sin / cos."""
        return self._in_float32(lambda x: x.sin() / x.cos())

    def tanh(self) -> "Tensor":
        """Hyperbolic tangent; exactly ±1 where it saturates."""
        return self._float()._unary(Op.TANH)

    def sigmoid(self) -> "Tensor":
        """1 / (1 + exp(-x))."""
        return self._float()._unary(Op.SIGMOID)

    def relu(self) -> "Tensor":
        """max(x, 0); nan stays nan, and the gradient at 0 is 0 (as PyTorch)."""
        zero = self._operand(0, "relu").expand(self.shape)  # one broadcast zero for its three uses: 7 nodes, not 13
        return (self < zero).logical_or(self == zero).where(zero, self)

    def leaky_relu(self, negative_slope: float = 0.01) -> "Tensor":
        """x where positive, else negative_slope * x."""
        return (self > 0).where(self, self * negative_slope)

    def elu(self, alpha: float = 1.0) -> "Tensor":
        """x where positive, else alpha * (exp(x) - 1)."""
        def elu(x: "Tensor") -> "Tensor":
            negative = (x > 0).where(0, x)  # not minimum(x, 0): its tie at 0 would halve the gradient there
            return (x > 0).where(x, (negative.exp() - 1) * alpha)
        return self._in_float32(elu)

    def softplus(self, beta: float = 1.0) -> "Tensor":
        """log(1 + exp(beta x)) / beta without overflow: max(x, 0) + log(1 + exp(-|x|)).

        `maximum` (ties share the gradient) rather than relu keeps the gradient at 0 right: 1/2.
        """
        def softplus(x: "Tensor") -> "Tensor":
            x = x * beta
            return (x.maximum(0) + ((-x.abs()).exp() + 1).log()) * (1 / beta)
        return self._in_float32(softplus)

    def silu(self) -> "Tensor":
        """x * sigmoid(x) (also called swish)."""
        return self._in_float32(lambda x: x * x.sigmoid())

    swish = silu

    def erf(self) -> "Tensor":
        """The error function, a primitive: its gradient is 2/sqrt(pi) exp(-x^2) in one expression (written as
        the Abramowitz-Stegun polynomial, GELU's backward differentiated the polynomial: 2800 statements for
        one GPT-2 bias gradient, the largest kernel NVIDIA compiled for W7)."""
        return self._float()._unary(Op.ERF)

    def gelu(self, approximate: str = "none") -> "Tensor":
        """PyTorch's GELU: exact (erf) by default, `approximate='tanh'` for the tanh form."""
        if approximate == "tanh":
            return self._in_float32(lambda x: x * 0.5 * ((x + x * x * x * 0.044715) * math.sqrt(2 / math.pi)).tanh()
                                    + x * 0.5)
        return self._in_float32(lambda x: x * 0.5 * ((x * (1 / math.sqrt(2))).erf() + 1))

    def abs(self) -> "Tensor":
        """|x|, +0 at either zero (as PyTorch: max(x, -x) alone gave max(+0, -0) = -0); the gradient at 0 is 0."""
        if self.dtype.is_bool or self.dtype.is_unsigned:
            return self
        magnitude = self.maximum(-self)
        return (self == 0).where(0, magnitude) if self.dtype.is_float else magnitude

    def sign(self) -> "Tensor":
        """-1, 0 or 1 (bool tensors stay as they are; nan stays nan, as numpy)."""
        if self.dtype.is_bool:
            return self
        result = (self > 0).cast(self.dtype) - (self < 0).cast(self.dtype)
        return self.isnan().where(self, result) if self.dtype.is_float else result

    def floor(self) -> "Tensor":
        """The largest integer value not above each element (integers stay as they are)."""
        return self._unary(Op.FLOOR) if self.dtype.is_float else self

    def ceil(self) -> "Tensor":
        """The smallest integer value not below each element (integers stay as they are)."""
        return self._unary(Op.CEIL) if self.dtype.is_float else self

    def round(self) -> "Tensor":
        """Half to even, as numpy and PyTorch."""
        return self._unary(Op.RINT) if self.dtype.is_float else self

    def trunc(self) -> "Tensor":
        """Rounded towards zero."""
        return (self < 0).where(self.ceil(), self.floor())

    def square(self) -> "Tensor":
        """x * x."""
        return self * self

    def maximum(self, other: Operand) -> "Tensor":
        """Elementwise max; where both are equal the gradient is shared equally."""
        return self._binary(Op.MAX, other, "maximum")

    def minimum(self, other: Operand) -> "Tensor":
        """Elementwise min; where both are equal the gradient is shared equally."""
        b = self._operand(other, "minimum")
        dtype = promote(self.dtype, b.dtype)
        a, b = self.cast(dtype), b.cast(dtype)
        if dtype.is_int:  # ~x reverses the order without overflow (-x alone breaks at the minimum)
            return ~((~a).maximum(~b))
        return -((-a).maximum(-b))

    def clamp(self, min: Optional[float] = None, max: Optional[float] = None) -> "Tensor":
        """Clip to [min, max]; the gradient passes at the bounds themselves, as PyTorch's."""
        if min is None and max is None:
            raise ValueError("clamp: at least one of min and max must be given")
        result = self
        if min is not None:
            result = (result < min).where(min, result)
        if max is not None:
            result = (result > max).where(max, result)
        return result

    clip = clamp

    def isnan(self) -> "Tensor":
        """True where an element is nan."""
        return self != self

    def logical_xor(self, other: Operand) -> "Tensor":
        """True where exactly one is true (non-zero)."""
        return self._bool() != self._operand(other, "logical_xor")._bool()

    def isinf(self) -> "Tensor":
        """True where an element is +inf or -inf."""
        return (self == math.inf) | (self == -math.inf) if self.dtype.is_float else self != self

    def isfinite(self) -> "Tensor":
        """True where an element is neither nan nor infinite."""
        return (self.isnan() | self.isinf()).logical_not()

    def lerp(self, end: Operand, weight: Operand) -> "Tensor":
        """self + (end - self) * weight: linear interpolation."""
        stop = self._operand(end, "lerp")
        if isinstance(weight, (int, float)):  # (a number weighs in float32, unrounded, as in PyTorch)
            return self._in_float32(lambda a, b: a + (b - a) * weight, stop)
        return self._in_float32(lambda a, b, share: a + (b - a) * share, stop, self._operand(weight, "lerp"))


def where(condition: Operand, a: Operand, b: Operand) -> Tensor:
    """Elements of `a` where `condition`, else of `b`; all three broadcast together.

    A Python number joins the other value's dtype without widening it (as in binary ops); when both values
    are numbers, they keep their own dtypes (int64, float32, bool) and promote together.
    """
    tensors = [t for t in (condition, a, b) if isinstance(t, Tensor)]
    if not tensors:
        raise TypeError("where needs at least one tensor")
    anchor = tensors[0]
    cond = anchor._operand(condition, "where")._bool()
    if isinstance(a, Tensor):
        ta, tb = a, a._operand(b, "where")
    elif isinstance(b, Tensor):
        ta, tb = b._operand(a, "where"), b
    else:
        ta, tb = anchor._data(a), anchor._data(b)
    for t in (ta, tb):
        if t.device is not cond.device:
            raise ValueError(f"where: operands live on different devices ({cond.device} and {t.device})")
    shape = broadcast_shape("where", cond.shape, ta.shape, tb.shape)
    dtype = promote(ta.dtype, tb.dtype)
    return Tensor(n.where(cond._broadcast_to(shape, bool_), ta._broadcast_to(shape, dtype),
                         tb._broadcast_to(shape, dtype)))
