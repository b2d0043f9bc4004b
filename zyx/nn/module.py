"""Module: the base of every layer. Parameters are found, not registered.

Every tensor reachable from a module's attributes (directly, or inside nested modules, lists, tuples and
dicts) is a parameter, unless the module named it a buffer with `register_buffer` (state such as BatchNorm's
running statistics, saved in `state_dict` but never handed to an optimizer). Attribute order is insertion
order, so `parameters()` is stable and names match PyTorch's (`layers.0.weight`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, NamedTuple, Union

import numpy as np

from ..creation import tensor
from ..devices import Device, device_from_spec
from ..errors import GRADIENTS_ARE_RETURNED
from ..trace.capture import record_mode
from ..realize import realize
from ..tensor import Tensor

StateValue = Union[Tensor, np.ndarray]


class StateDictError(ValueError):
    """`load_state_dict` found keys missing, unexpected or of the wrong shape; the message lists every one."""

    def __init__(self, missing: list[str], unexpected: list[str], mismatched: list[str]):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        problems = [f"{label}: {', '.join(keys)}" for label, keys in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched))
                    if keys]
        super().__init__("load_state_dict failed; " + "; ".join(problems))


class LoadResult(NamedTuple):
    """What a non-strict `load_state_dict` skipped."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """A layer or a model: call it to run `forward`; its parameters are the tensors it holds."""

    _buffer_names: frozenset[str] = frozenset()

    @property
    def training(self) -> bool:
        """Training mode (dropout drops, batch norm uses batch statistics). A step traced by `@zyx.jit` records
        the modes it read and is never replayed in another mode: it is traced again instead."""
        mode = self.__dict__.get("_training", True)
        record_mode(self, mode)
        return mode

    @training.setter
    def training(self, mode: bool) -> None:
        self.__dict__["_training"] = bool(mode)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The computation; subclasses define it and callers call the module itself."""
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for value in (*args, *kwargs.values()):
            if isinstance(value, np.ndarray):
                raise TypeError(self._numpy_argument_message(value))
        return self.forward(*args, **kwargs)

    def _numpy_argument_message(self, array: np.ndarray) -> str:
        params = self.parameters()
        device = params[0].device if params else "zyx.default_device()"
        dtype = params[0].dtype if params else "zyx.float32"
        return (f"{type(self).__name__} got a numpy array (shape {array.shape}, dtype {array.dtype}): modules take "
                f"zyx tensors, as PyTorch's take torch tensors. Convert it once, outside the loop: "
                f"zyx.tensor(array, device={device}, dtype={dtype})")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Not needed: zyx stores no gradients. Raises, saying where gradients come from."""
        raise RuntimeError(f"zero_grad: there are no stored gradients to zero. {GRADIENTS_ARE_RETURNED}")

    def register_buffer(self, name: str, value: Tensor) -> None:
        """Keep `value` as state that is saved and moved with the module but is not a parameter."""
        self._buffer_names = self._buffer_names | {name}
        setattr(self, name, value)

    # ---- discovery -----------------------------------------------------------------------------------------
    def _walk(self) -> Iterator[tuple[str, "Module", str, Union[Tensor, "Module"]]]:
        """(qualified name, owning module, attribute name, item) for every tensor and module inside, each once.

        Depth first in attribute order; this module itself comes first, with an empty name.
        """
        seen: set[int] = set()

        def visit(value: Any, prefix: str, owner: Module, attribute: str) -> Iterator[tuple[str, Module, str, Any]]:
            if isinstance(value, (Tensor, Module)):
                if id(value) in seen:
                    return
                seen.add(id(value))
                yield prefix, owner, attribute, value
            if isinstance(value, Module):
                for name, child in vars(value).items():
                    yield from visit(child, _join(prefix, name), value, name)
            elif isinstance(value, (list, tuple, dict)):
                items = value.items() if isinstance(value, dict) else enumerate(value)
                for key, child in items:
                    yield from visit(child, _join(prefix, str(key)), owner, attribute)

        yield from visit(self, "", self, "")

    def _named_tensors(self, buffers: bool) -> list[tuple[str, Tensor]]:
        return [(name, item) for name, owner, attribute, item in self._walk()
                if isinstance(item, Tensor) and (attribute in owner._buffer_names) == buffers]

    def named_parameters(self) -> list[tuple[str, Tensor]]:
        """(qualified name, tensor) for every parameter, in `parameters()` order."""
        return self._named_tensors(buffers=False)

    def parameters(self) -> list[Tensor]:
        """Every trainable tensor, in a stable order (attribute order, depth first), each once."""
        return [t for _, t in self.named_parameters()]

    def named_buffers(self) -> list[tuple[str, Tensor]]:
        """(qualified name, tensor) for every buffer (state that is saved but not trained)."""
        return self._named_tensors(buffers=True)

    def buffers(self) -> list[Tensor]:
        """Every buffer: state such as BatchNorm's running statistics."""
        return [t for _, t in self.named_buffers()]

    def modules(self) -> list["Module"]:
        """This module and every module inside it, each once."""
        return [item for _, _, _, item in self._walk() if isinstance(item, Module)]

    # ---- modes and placement -------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Training mode: dropout drops, batch norm uses and updates batch statistics."""
        for module in self.modules():
            module.training = mode
        return self

    def eval(self) -> "Module":
        """Evaluation mode (`train(False)`): dropout passes values through, batch norm uses running statistics."""
        return self.train(False)

    def to(self, device: Union[Device, str]) -> "Module":
        """Move every parameter and buffer to `device` (in place; returns self)."""
        target = device_from_spec(device) if isinstance(device, str) else device
        self._map_tensors(lambda t: t.to(target))
        return self

    def _map_tensors(self, fn: Callable[[Tensor], Tensor]) -> None:
        """Replace every tensor attribute (also inside lists, tuples and dicts) by fn(tensor)."""
        def remap(value: Any) -> Any:
            if isinstance(value, Tensor):
                return fn(value)
            if isinstance(value, list):
                value[:] = [remap(v) for v in value]
            elif isinstance(value, tuple):
                return tuple(remap(v) for v in value)
            elif isinstance(value, dict):
                for key in value:
                    value[key] = remap(value[key])
            return value

        for module in self.modules():
            for name, value in list(vars(module).items()):
                if not isinstance(value, Module):
                    setattr(module, name, remap(value))

    # ---- state ---------------------------------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, Tensor]:
        """Parameters and buffers by name, in discovery order."""
        return {name: item for name, _, _, item in self._walk() if isinstance(item, Tensor)}

    def state_dict(self) -> dict[str, Tensor]:
        """Parameters and buffers by name: a snapshot, later in-place updates do not change it."""
        return {name: Tensor(t.node) for name, t in self._state_tensors().items()}

    def load_state_dict(self, state: Mapping[str, StateValue], strict: bool = True) -> LoadResult:
        """Copy values into this module's tensors in place (each cast to its tensor's dtype and device).

        Shapes must always match; with `strict`, missing and unexpected keys are errors too.
        """
        own = self._state_tensors()
        missing = [name for name in own if name not in state]
        unexpected = [name for name in state if name not in own]
        mismatched = [f"{name} (checkpoint {tuple(state[name].shape)}, module {own[name].shape})"
                      for name in own if name in state and tuple(state[name].shape) != own[name].shape]
        if mismatched or (strict and (missing or unexpected)):
            raise StateDictError(missing if strict else [], unexpected if strict else [], mismatched)
        loaded = [target.assign(_as_tensor(state[name], target)) for name, target in own.items() if name in state]
        realize(*loaded)  # tensors given lazily (or cast) become buffers, as parameters should be
        return LoadResult(missing, unexpected)

    def extra_repr(self) -> str:
        """This module's own settings for `repr` (layer sizes and options), as PyTorch's `extra_repr`."""
        return ""

    def __repr__(self) -> str:
        """PyTorch's layout: settings, then each child module on its own indented line."""
        extra = [line for line in self.extra_repr().split("\n") if line]
        children = [f"({name}): {module!r}".replace("\n", "\n  ")
                    for name, module in vars(self).items() if isinstance(module, Module)]
        if len(extra) == 1 and not children:
            return f"{type(self).__name__}({extra[0]})"
        lines = extra + children
        return f"{type(self).__name__}(" + "".join("\n  " + line for line in lines) + ("\n" if lines else "") + ")"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _as_tensor(value: StateValue, like: Tensor) -> Tensor:
    """`value` as a tensor on `like`'s device with `like`'s dtype."""
    if isinstance(value, Tensor):
        value = value if value.device is like.device else value.to(like.device)
        return value.cast(like.dtype)
    return tensor(np.asarray(value), device=like.device, dtype=like.dtype)
