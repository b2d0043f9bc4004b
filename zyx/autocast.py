"""`zyx.autocast`: automatic mixed precision, as PyTorch's `torch.autocast` with its CUDA op lists.

Inside the context, each op named in a policy table casts its floating operands before it runs (float64 is
never touched, and neither are integer tensors):
- LOWER_PRECISION: matrix products and convolutions take float16/bfloat16 operands and produce that dtype. Their
  sums accumulate in float32 (half types are computed in float32 and rounded once, when stored).
- FLOAT32: reductions, softmax, norms, losses, exp/log/pow and the other ops PyTorch keeps in float32 take
  float32 operands and produce float32.
Every other op runs on whatever dtypes reach it, with the usual promotion. The op runs with autocast suspended
(as PyTorch excludes its dispatch key), so what it is composed of is not cast again.

The casts are ordinary trace nodes, so gradients flow back through them to float32 parameters in float32, and
`@zyx.jit` captures them like any other op: the autocast state a step is traced under is one of its guards.
"""
from __future__ import annotations

import contextvars
import functools
from typing import Any, Callable, Optional, TypeVar, Union

from .dtypes import DType, bfloat16, float16, float32, to_dtype
from .tensor_base import TensorBase

F = TypeVar("F", bound=Callable[..., Any])

_ACTIVE: contextvars.ContextVar[Optional[DType]] = contextvars.ContextVar("zyx_autocast", default=None)

# Tensor methods by policy (functions elsewhere carry the decorators below: nn losses and norms, einsum, attention)
LOWER_PRECISION = ("matmul", "__matmul__", "__rmatmul__", "dot", "linear", "addmm",
                   "_conv", "_conv_transpose")  # every convolution, method or module, goes through these two
FLOAT32 = ("sum", "prod", "cumsum", "cumprod", "logsumexp", "norm", "normalize", "softmax", "softmin",
           "log_softmax", "softplus", "exp", "expm1", "log", "log2", "log10", "log1p", "pow", "__pow__",
           "__rpow__", "__rtruediv__", "reciprocal", "rsqrt", "tan", "sinh", "cosh", "asin", "acos")


def autocast_dtype() -> Optional[DType]:
    """The dtype products run in here (float16 or bfloat16), or None outside `zyx.autocast` (or in a disabled one)."""
    return _ACTIVE.get()


class autocast:  # noqa: N801 (PyTorch's name)
    """Mixed precision for the ops traced inside: `with zyx.autocast(zyx.bfloat16): loss = f(model(x), y)`.

    Matrix products and convolutions run in `dtype` (their float32 operands are cast, their results are
    `dtype`); reductions, softmax, norms, losses and exp/log/pow run in float32. Parameters stay float32 and
    their gradients come back float32. `enabled=False` turns autocast off inside (for a region that needs
    float32); contexts nest, the innermost wins. Also a decorator: `@zyx.autocast()` on a function.
    Call `backward` outside the context, as with PyTorch (inside, its ops are not cast either way: gradients
    follow the forward's dtypes).
    """

    def __init__(self, dtype: Union[DType, str] = bfloat16, enabled: bool = True):
        resolved = to_dtype(dtype)
        if resolved not in (float16, bfloat16):
            raise TypeError(f"autocast: dtype must be zyx.float16 or zyx.bfloat16, got {resolved.name}")
        self.dtype: DType = resolved
        self.enabled = bool(enabled)
        self._tokens: list[contextvars.Token] = []

    def __enter__(self) -> "autocast":
        self._tokens.append(_ACTIVE.set(self.dtype if self.enabled else None))
        return self

    def __exit__(self, *exc: Any) -> None:
        _ACTIVE.reset(self._tokens.pop())

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def under_autocast(*args: Any, **kwargs: Any) -> Any:
            with autocast(self.dtype, self.enabled):
                return fn(*args, **kwargs)
        return under_autocast  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"zyx.autocast({self.dtype!r}, enabled={self.enabled})"


def _eligible(value: Any) -> bool:
    """A tensor autocast may cast: floating, not float64 (PyTorch's rule)."""
    return isinstance(value, TensorBase) and value.dtype.is_float and value.dtype.itemsize <= 4


def _cast(value: Any, dtype: DType) -> Any:
    if isinstance(value, (list, tuple)):  # einsum's operands may come as one list
        return type(value)(_cast(v, dtype) for v in value)
    return value.cast(dtype) if _eligible(value) else value


def _tensor_count(values: Any) -> int:
    return sum(_tensor_count(v) if isinstance(v, (list, tuple)) else _eligible(v) for v in values)


def _policy(target: Callable[[DType], DType], fn: F, least_operands: int = 1) -> F:
    @functools.wraps(fn)
    def cast_operands(*args: Any, **kwargs: Any) -> Any:
        active = _ACTIVE.get()
        if active is None or _tensor_count((*args, *kwargs.values())) < least_operands:
            return fn(*args, **kwargs)
        dtype = target(active)
        token = _ACTIVE.set(None)
        try:
            return fn(*(_cast(a, dtype) for a in args), **{k: _cast(v, dtype) for k, v in kwargs.items()})
        finally:
            _ACTIVE.reset(token)
    return cast_operands  # type: ignore[return-value]


def lower_precision(fn: F) -> F:
    """Under autocast, `fn` takes its floating operands in the autocast dtype (products, convolutions): when it
    has two or more of them, so a one-operand einsum (a trace, a transpose) is left alone."""
    return _policy(lambda active: active, fn, least_operands=2)


def in_float32(fn: F) -> F:
    """Under autocast, `fn` takes its floating operands in float32 (reductions, norms, losses)."""
    return _policy(lambda active: float32, fn)


def with_autocast_policies(cls: type) -> type:
    """Wrap the Tensor methods of the policy tables (a class decorator, applied once to Tensor)."""
    for names, policy in ((LOWER_PRECISION, lower_precision), (FLOAT32, in_float32)):
        for name in names:
            setattr(cls, name, policy(getattr(cls, name)))
    return cls
