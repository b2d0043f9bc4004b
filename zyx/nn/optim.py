"""Optimizers with PyTorch's update rules, written as lazy tensor math and applied with `assign`.

An optimizer needs no parameters up front: `opt.update(params, grads)` creates each parameter's state the
first time it sees it, keyed by the parameter's position in `params` (parameters first updated together share
one step count, so a step moves it with one kernel, not one per parameter). Every parameter and state tensor is
updated in place, so `@zyx.jit` can capture a step; outside a capture, one `zyx.realize` computes all of them
together (and the buffers a forward pass updated), so no graph outlives the step.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from ..creation import full, tensor
from ..devices import Device
from ..dtypes import float64
from ..errors import GRADIENTS_ARE_RETURNED, ShapeError
from ..trace.capture import active_capture
from ..realize import realize
from ..tensor import Tensor
from .deferred import take_deferred
from .init import filled

State = dict[str, Tensor]


class Optimizer:
    """The shared machinery: state per parameter position, in-place updates, one realize per step.

    A subclass names its state tensors (besides "step", which every parameter has) and gives the rule.
    """

    state_names: tuple[str, ...] = ()

    def __init__(self, params: Optional[Iterable[Tensor]], lr: float):
        self.params = list(params) if params is not None else None
        self._lr_buffers: dict[int, Tensor] = {}
        self.lr = lr
        self.state: dict[int, State] = {}

    @property
    def lr(self) -> float:
        """The learning rate; setting it (as schedules do) reaches steps already traced by @zyx.jit."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        """Schedules set this; the rules read it from a buffer per device, so a `@zyx.jit` replay sees changes."""
        if value < 0:
            raise ValueError(f"learning rate must be non-negative, got {value}")
        self._lr = float(value)
        for buffer in self._lr_buffers.values():
            buffer.assign(filled((), self._lr, buffer.device))

    def _lr_on(self, device: Device) -> Tensor:
        if id(device) not in self._lr_buffers:
            self._lr_buffers[id(device)] = filled((), self._lr, device)
        return self._lr_buffers[id(device)]

    def rule(self, param: Tensor, grad: Tensor, state: State, lr: Tensor) -> tuple[Tensor, State]:
        """The new parameter value and new state values, from this step's gradient ("step" already counts it)."""
        raise NotImplementedError

    def update(self, params: Sequence[Tensor], grads: Sequence[Optional[Tensor]],
               realize_with: Sequence[Tensor] = (), skip_if: Optional[Tensor] = None) -> None:
        """One step: each parameter with a gradient (None: skipped) moves in place.

        `realize_with` (the loss, say) is computed in the same realize, so the forward pass runs once.
        `skip_if`, a bool scalar tensor, skips the whole step where it is true (parameters, state and step counts
        keep their values) without reading it on the host: `GradScaler` skips steps with inf/nan gradients so.
        """
        params, grads = list(params), list(grads)
        if len(params) != len(grads):
            raise ValueError(f"update: {len(params)} parameters but {len(grads)} gradients")
        self._unshare_skipped_steps({position for position, grad in enumerate(grads) if grad is not None})
        updated: list[Tensor] = []
        counted: set[int] = set()
        new_steps: dict[int, Tensor] = {}  # per device: one step count for the parameters first seen together
        for position, (param, grad) in enumerate(zip(params, grads)):
            if grad is None:
                continue
            if grad.shape != param.shape:
                raise ShapeError(f"update: gradient {position} has shape {grad.shape}, parameter {param.shape}")
            state = self._state_for(position, param, new_steps)
            if id(state["step"]) not in counted:  # a shared count moves once (one kernel, not one per parameter)
                counted.add(id(state["step"]))
                _move(state["step"], state["step"] + 1, skip_if)
                updated.append(state["step"])
            new_param, new_state = self.rule(param, grad, state, self._lr_on(param.device))
            _move(param, new_param, skip_if)
            for name, value in new_state.items():
                _move(state[name], value, skip_if)
            updated += [param, *(state[name] for name in self.state_names)]
        if active_capture() is None:
            realize(*updated, *take_deferred(), *realize_with)

    def _unshare_skipped_steps(self, stepping: set[int]) -> None:
        """A parameter skipped this time (no gradient) keeps its count: it gets its own if it shares one with a
        parameter that steps."""
        moving = {id(self.state[p]["step"]) for p in stepping if p in self.state}
        for position, state in self.state.items():
            if position not in stepping and id(state["step"]) in moving:
                state["step"] = Tensor(state["step"].node)

    def step(self, grads: Optional[Sequence[Optional[Tensor]]] = None, realize_with: Sequence[Tensor] = ()) -> None:
        """`update` for the parameters given at construction, with their gradients (in that order)."""
        if grads is None:
            raise TypeError(f"step() needs the gradients: opt.step(loss.backward(params)). {GRADIENTS_ARE_RETURNED}")
        if self.params is None:
            raise ValueError("step() needs the parameters given at construction; otherwise call update(params, grads)")
        self.update(self.params, grads, realize_with)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Not needed: zyx stores no gradients. Raises, saying where gradients come from."""
        raise RuntimeError(f"zero_grad: there are no stored gradients to zero. {GRADIENTS_ARE_RETURNED}")

    def _state_for(self, position: int, param: Tensor, new_steps: dict[int, Tensor]) -> State:
        """The parameter's state, created at its first update (the step count shared with the parameters first
        updated together on its device: `new_steps`)."""
        state = self.state.get(position)
        if state is None:
            # real buffers, not lazy zeros: a @zyx.jit capture must bind state as inputs, not bake in constants
            if id(param.device) not in new_steps:
                new_steps[id(param.device)] = filled((), 0.0, param.device)
            state = {"step": new_steps[id(param.device)]}
            state.update({name: filled(param.shape, 0.0, param.device, param.dtype) for name in self.state_names})
            self.state[position] = state
        elif any(state[name].shape != param.shape for name in self.state_names):
            raise ShapeError(f"update: parameter {position} has shape {param.shape}, but its optimizer state was "
                             "made for another shape; keep the parameter list in the same order")
        return state

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """Flat names ("lr", "<position>.<state>") to tensors, ready for `zyx.save`."""
        entries = {"lr": full((), self.lr, dtype=float64)}
        for position, state in self.state.items():
            entries.update({f"{position}.{name}": Tensor(t.node) for name, t in state.items()})
        return entries

    def load_state_dict(self, entries: Mapping[str, Union[Tensor, np.ndarray]]) -> None:
        """Resume from `state_dict()`: the learning rate and every parameter's state."""
        expected = {"step", *self.state_names}
        state: dict[int, State] = {}
        for key, value in entries.items():
            if key == "lr":
                continue
            position, _, name = key.partition(".")
            if not position.isdigit() or name not in expected:
                raise KeyError(f"load_state_dict: unexpected key {key!r} for {type(self).__name__}")
            state.setdefault(int(position), {})[name] = _fresh_handle(value)
        incomplete = [p for p, s in state.items() if set(s) != expected]
        if incomplete:
            raise KeyError(f"load_state_dict: parameters {incomplete} lack some of the state {sorted(expected)}")
        if "lr" in entries:
            self.lr = float(entries["lr"].item() if isinstance(entries["lr"], Tensor) else entries["lr"])
        self.state = state


def _move(target: Tensor, value: Tensor, skip_if: Optional[Tensor]) -> None:
    """`target.assign(value)`, or keep the old value where `skip_if` holds."""
    target.assign(value if skip_if is None else skip_if.where(target, value))


def _fresh_handle(value: Union[Tensor, np.ndarray]) -> Tensor:
    """A tensor of its own, so later in-place updates do not change the caller's dict."""
    if isinstance(value, Tensor):
        return Tensor(value.node)
    return tensor(value)


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum (heavy ball or Nesterov), dampening and L2 decay."""

    def __init__(self, params: Optional[Iterable[Tensor]] = None, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening = 0")
        super().__init__(params, lr)
        self.momentum, self.dampening, self.nesterov, self.weight_decay = momentum, dampening, nesterov, weight_decay
        self.state_names = ("momentum_buffer",) if momentum else ()

    def rule(self, param: Tensor, grad: Tensor, state: State, lr: Tensor) -> tuple[Tensor, State]:
        if self.weight_decay:
            grad = grad + param * self.weight_decay
        if not self.momentum:
            return param - grad * lr, {}
        # the first step starts the buffer at the gradient itself, without dampening
        moved = state["momentum_buffer"] * self.momentum + grad * (1 - self.dampening)
        buffer = (state["step"] == 1).where(grad, moved)
        direction = grad + buffer * self.momentum if self.nesterov else buffer
        return param - direction * lr, {"momentum_buffer": buffer}


class Adam(Optimizer):
    """Adam: steps by bias-corrected running means of the gradient and its square; `amsgrad` keeps the max."""

    decoupled = False

    def __init__(self, params: Optional[Iterable[Tensor]] = None, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 amsgrad: bool = False):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay, self.amsgrad = betas, eps, weight_decay, amsgrad
        self.state_names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())

    def rule(self, param: Tensor, grad: Tensor, state: State, lr: Tensor) -> tuple[Tensor, State]:
        beta1, beta2 = self.betas
        if self.weight_decay and self.decoupled:
            param = param * (1 - lr * self.weight_decay)
        elif self.weight_decay:
            grad = grad + param * self.weight_decay
        new: State = {"exp_avg": state["exp_avg"].lerp(grad, 1 - beta1),
                      "exp_avg_sq": state["exp_avg_sq"] * beta2 + grad * grad * (1 - beta2)}
        second = new["exp_avg_sq"]
        if self.amsgrad:
            second = new["max_exp_avg_sq"] = state["max_exp_avg_sq"].maximum(second)
        step = state["step"]
        correction1, correction2 = 1 - beta1 ** step, 1 - beta2 ** step
        denominator = (second / correction2).sqrt() + self.eps
        return param - new["exp_avg"] / denominator * (lr / correction1), new


class AdamW(Adam):
    """Adam with decoupled weight decay: parameters shrink by lr * weight_decay directly, not through the gradient."""

    decoupled = True

    def __init__(self, params: Optional[Iterable[Tensor]] = None, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


class RMSprop(Optimizer):
    """Divides the gradient by a running root mean square; `centered` subtracts the squared running mean."""

    def __init__(self, params: Optional[Iterable[Tensor]] = None, lr: float = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False):
        super().__init__(params, lr)
        self.alpha, self.eps, self.weight_decay = alpha, eps, weight_decay
        self.momentum, self.centered = momentum, centered
        self.state_names = ("square_avg",) + (("momentum_buffer",) if momentum else ()) + \
            (("grad_avg",) if centered else ())

    def rule(self, param: Tensor, grad: Tensor, state: State, lr: Tensor) -> tuple[Tensor, State]:
        if self.weight_decay:
            grad = grad + param * self.weight_decay
        new: State = {"square_avg": state["square_avg"] * self.alpha + grad * grad * (1 - self.alpha)}
        mean_square = new["square_avg"]
        if self.centered:
            new["grad_avg"] = state["grad_avg"].lerp(grad, 1 - self.alpha)
            mean_square = mean_square - new["grad_avg"] * new["grad_avg"]
        scaled = grad / (mean_square.sqrt() + self.eps)
        if self.momentum:
            scaled = new["momentum_buffer"] = state["momentum_buffer"] * self.momentum + scaled
        return param - scaled * lr, new


def clip_grad_norm(grads: Sequence[Optional[Tensor]], max_norm: float,
                   norm_type: float = 2.0) -> tuple[list[Optional[Tensor]], Tensor]:
    """Scale the gradients so their joint norm is at most `max_norm`; returns (clipped grads, total norm), lazily."""
    present = [g for g in grads if g is not None]
    if not present:
        raise ValueError("clip_grad_norm: every gradient is None")
    if norm_type == float("inf"):
        total = present[0].abs().max()
        for g in present[1:]:
            total = total.maximum(g.abs().max())
    else:
        total = sum((g.abs() ** norm_type).sum() for g in present) ** (1 / norm_type)  # type: ignore[operator]
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    return [None if g is None else g * scale for g in grads], total
