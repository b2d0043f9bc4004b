"""Recurrent cells (one time step each): GRUCell and LSTMCell with PyTorch's gate order and parameter names."""
from __future__ import annotations

import math
from typing import Optional

from ..creation import zeros
from ..devices import Device, default_device
from ..tensor import Tensor
from . import init
from .module import Module


class _Cell(Module):
    """Holds the input-to-hidden and hidden-to-hidden weights for `gates` gates, all drawn U(-1/sqrt(H), 1/sqrt(H))."""

    gates = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device: Optional[Device] = None):
        device = device or default_device()
        bound = 1 / math.sqrt(hidden_size)
        rows = self.gates * hidden_size
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = init.uniform((rows, input_size), bound, device)
        self.weight_hh = init.uniform((rows, hidden_size), bound, device)
        self.bias_ih = init.uniform((rows,), bound, device) if bias else None
        self.bias_hh = init.uniform((rows,), bound, device) if bias else None

    def _projections(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return x.linear(self.weight_ih, self.bias_ih), h.linear(self.weight_hh, self.bias_hh)

    def _zero_state(self, x: Tensor) -> Tensor:
        return zeros(x.shape[:-1] + (self.hidden_size,), device=x.device)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias_ih is not None else ", bias=False")


class GRUCell(_Cell):
    """h' = (1 - z) * n + z * h, with reset gate r, update gate z and candidate n = tanh(x_n + r * h_n).

    x is (N, input_size) or (input_size,); h defaults to zeros.
    """

    gates = 3

    def forward(self, x: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        h = hx if hx is not None else self._zero_state(x)
        from_input, from_hidden = self._projections(x, h)
        input_r, input_z, input_n = from_input.chunk(3, -1)
        hidden_r, hidden_z, hidden_n = from_hidden.chunk(3, -1)
        r = (input_r + hidden_r).sigmoid()
        z = (input_z + hidden_z).sigmoid()
        n = (input_n + r * hidden_n).tanh()
        return (1 - z) * n + z * h


class LSTMCell(_Cell):
    """c' = f * c + i * g and h' = o * tanh(c'), gates in PyTorch's order (input, forget, cell, output).

    x is (N, input_size) or (input_size,); the state (h, c) defaults to zeros. Returns (h', c').
    """

    gates = 4

    def forward(self, x: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Tensor]:
        h, c = hx if hx is not None else (self._zero_state(x), self._zero_state(x))
        from_input, from_hidden = self._projections(x, h)
        i, f, g, o = (from_input + from_hidden).chunk(4, -1)
        c_next = f.sigmoid() * c + i.sigmoid() * g.tanh()
        return o.sigmoid() * c_next.tanh(), c_next
