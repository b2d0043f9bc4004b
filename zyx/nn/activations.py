"""Activation functions as modules, so they can sit in a Sequential; each forwards to the Tensor method."""
from __future__ import annotations

from typing import Any

from ..tensor import Tensor
from .module import Module


class _Activation(Module):
    """Calls `x.<method>(**options)`; subclasses name the method and turn their arguments into options."""

    method = ""

    def __init__(self, **options: Any):
        self.options = options

    def forward(self, x: Tensor) -> Tensor:
        return getattr(x, self.method)(**self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class ReLU(_Activation):
    """max(x, 0)."""

    method = "relu"


class Tanh(_Activation):
    """The hyperbolic tangent."""

    method = "tanh"


class Sigmoid(_Activation):
    """1 / (1 + exp(-x))."""

    method = "sigmoid"


class SiLU(_Activation):
    """x * sigmoid(x) (also called swish)."""

    method = "silu"


class GELU(_Activation):
    """x * Phi(x): exact (erf) by default, `approximate='tanh'` for the tanh form."""

    method = "gelu"

    def __init__(self, approximate: str = "none"):
        super().__init__(approximate=approximate)


class LeakyReLU(_Activation):
    """x where positive, else negative_slope * x."""

    method = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01):
        super().__init__(negative_slope=negative_slope)


class ELU(_Activation):
    """x where positive, else alpha * (exp(x) - 1)."""

    method = "elu"

    def __init__(self, alpha: float = 1.0):
        super().__init__(alpha=alpha)


class Softplus(_Activation):
    """log(1 + exp(beta x)) / beta, without overflow."""

    method = "softplus"

    def __init__(self, beta: float = 1.0):
        super().__init__(beta=beta)


class Softmax(_Activation):
    """exp(x) / sum(exp(x)) along `dim`."""

    method = "softmax"

    def __init__(self, dim: int = -1):
        super().__init__(dim=dim)


class LogSoftmax(_Activation):
    """log(softmax(x)) along `dim`, computed stably."""

    method = "log_softmax"

    def __init__(self, dim: int = -1):
        super().__init__(dim=dim)
