"""Sequential: layers applied in order, named "0", "1", ... so state dicts match PyTorch's."""
from __future__ import annotations

from typing import Any, Iterator

from .module import Module


class Sequential(Module):
    """Calls its layers in order, each on the previous one's output."""

    def __init__(self, *layers: Module):
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)

    def _layers(self) -> list[Module]:
        return [layer for layer in vars(self).values() if isinstance(layer, Module)]

    def forward(self, x: Any) -> Any:
        for layer in self._layers():
            x = layer(x)
        return x

    def __getitem__(self, index: int) -> Module:
        return self._layers()[index]

    def __len__(self) -> int:
        return len(self._layers())

    def __iter__(self) -> Iterator[Module]:
        return iter(self._layers())
