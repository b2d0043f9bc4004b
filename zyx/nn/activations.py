"""Activation functions as modules, so they can sit in a Sequential; each forwards to the Tensor method."""
from __future__ import annotations

from typing import Any, Optional

from ..devices import Device, default_device
from ..tensor import Tensor
from .init import filled
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


class Hardtanh(_Activation):
    """x clipped to [min_val, max_val]."""

    method = "hardtanh"

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0):
        super().__init__(min_val=min_val, max_val=max_val)


class ReLU6(_Activation):
    """min(max(x, 0), 6)."""

    method = "relu6"


class Hardsigmoid(_Activation):
    """relu6(x + 3) / 6."""

    method = "hardsigmoid"


class Hardswish(_Activation):
    """x * relu6(x + 3) / 6."""

    method = "hardswish"


class SELU(_Activation):
    """Self-normalising ELU."""

    method = "selu"


class CELU(_Activation):
    """Continuously differentiable ELU."""

    method = "celu"

    def __init__(self, alpha: float = 1.0):
        super().__init__(alpha=alpha)


class Mish(_Activation):
    """x * tanh(softplus(x))."""

    method = "mish"


class LogSigmoid(_Activation):
    """log(sigmoid(x))."""

    method = "logsigmoid"


class Softsign(_Activation):
    """x / (1 + |x|)."""

    method = "softsign"


class _AlongDim(_Activation):
    """An activation over one axis, `dim` (the last by default)."""

    def __init__(self, dim: int = -1):
        super().__init__(dim=dim)


class Softmin(_AlongDim):
    """softmax(-x) along dim."""

    method = "softmin"


class Threshold(_Activation):
    """x where x > threshold, else value."""

    method = "threshold"

    def __init__(self, threshold: float, value: float):
        super().__init__(threshold=threshold, value=value)


class _Shrink(_Activation):
    """A shrink by lambd, shown as PyTorch shows it: `Softshrink(0.5)`."""

    def __init__(self, lambd: float = 0.5):
        super().__init__(lambd=lambd)

    def extra_repr(self) -> str:
        return str(self.options["lambd"])


class Hardshrink(_Shrink):
    """x where |x| > lambd, else 0."""

    method = "hardshrink"


class Softshrink(_Shrink):
    """x moved towards 0 by lambd, 0 within [-lambd, lambd]."""

    method = "softshrink"


class Tanhshrink(_Activation):
    """x - tanh(x)."""

    method = "tanhshrink"


class GLU(_AlongDim):
    """Gated linear unit: first half of `dim` times sigmoid of the second."""

    method = "glu"


class PReLU(Module):
    """LeakyReLU with a learned negative slope: one (num_parameters=1) or one per channel, starting at `init`."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25, device: Optional[Device] = None):
        self.num_parameters = num_parameters
        self.weight = filled((num_parameters,), init, device or default_device())

    def forward(self, x: Tensor) -> Tensor:
        return x.prelu(self.weight)

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}"
