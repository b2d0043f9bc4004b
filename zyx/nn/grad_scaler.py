"""GradScaler: dynamic loss scaling for float16 training, with torch.amp.GradScaler's rules.

float16 gradients underflow to zero below 6e-8; scaling the loss by a large factor keeps them representable.
The scaler multiplies the loss by `scale`, divides the gradients by it again before the optimizer sees them,
and when any gradient is inf or nan (the scale was too large) it skips that step and halves the scale; after
`growth_interval` clean steps in a row it doubles it.

No host read: the scale and the count of clean steps are device tensors updated in place, and the skip is a
`where` on every update (`Optimizer.update(skip_if=...)`), so a step costs no synchronisation and `@zyx.jit`
captures it whole. Only `get_scale()` reads the device.
"""
from __future__ import annotations

import functools
from typing import Mapping, Optional, Sequence

from ..devices import Device
from ..dtypes import float32, int32
from ..tensor import Tensor
from .init import filled
from .optim import Optimizer


class GradScaler:
    """`loss = scaler.scale(loss)`, then `scaler.update_step(opt, params, loss.backward(params))`.

    PyTorch's `scaler.step(opt)` and `scaler.update()` are one call here, since Zyx returns gradients instead of
    storing them. To clip gradients, unscale them first and say so:
    `grads = scaler.unscale(grads); grads, _ = zyx.nn.clip_grad_norm(grads, 1.0);
    scaler.update_step(opt, params, grads, unscaled=True)`. With `enabled=False` every method passes its input
    through, so one training loop serves both precisions.
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True):
        if not init_scale > 0:
            raise ValueError(f"GradScaler: init_scale must be positive, got {init_scale}")
        if not growth_factor > 1:
            raise ValueError(f"GradScaler: growth_factor must be above 1, got {growth_factor}")
        if not 0 < backoff_factor < 1:
            raise ValueError(f"GradScaler: backoff_factor must be in (0, 1), got {backoff_factor}")
        if not isinstance(growth_interval, int) or growth_interval < 1:
            raise ValueError(f"GradScaler: growth_interval must be a positive int, got {growth_interval!r}")
        self.init_scale, self.growth_factor, self.backoff_factor = float(init_scale), growth_factor, backoff_factor
        self.growth_interval, self.enabled = growth_interval, bool(enabled)
        self._scale: Optional[Tensor] = None           # float32 scalar, on the device of the first loss
        self._growth_tracker: Optional[Tensor] = None  # int32 scalar: clean steps since the scale last changed

    def is_enabled(self) -> bool:
        """Whether the scaler scales (PyTorch's name)."""
        return self.enabled

    def _state_on(self, device: Device) -> tuple[Tensor, Tensor]:
        """The scale and growth tracker: real buffers (not lazy constants), so a jitted step binds them."""
        if self._scale is None or self._growth_tracker is None:
            self._scale = filled((), self.init_scale, device)
            self._growth_tracker = filled((), 0, device, int32)
        elif self._scale.device is not device:
            raise ValueError(f"GradScaler: its scale lives on {self._scale.device}, this tensor on {device}")
        return self._scale, self._growth_tracker

    def scale(self, loss: Tensor) -> Tensor:
        """`loss` times the current scale (float32, or wider if the loss is)."""
        if not self.enabled:
            return loss
        scale, _ = self._state_on(loss.device)
        return loss * scale

    def unscale(self, grads: Sequence[Optional[Tensor]]) -> list[Optional[Tensor]]:
        """The gradients divided by the current scale, each in its own dtype (None stays None)."""
        present = [g for g in grads if g is not None]
        if not self.enabled or not present:
            return list(grads)
        scale, _ = self._state_on(present[0].device)
        inverse = scale.reciprocal()
        return [None if g is None else (g * inverse).cast(g.dtype) for g in grads]

    def update_step(self, opt: Optimizer, params: Sequence[Tensor], grads: Sequence[Optional[Tensor]],
                    realize_with: Sequence[Tensor] = (), unscaled: bool = False) -> None:
        """Unscale `grads` (unless `unscaled`), update `params` with `opt` unless a gradient is inf or nan, and
        adjust the scale: backed off by `backoff_factor` after a skipped step, grown by `growth_factor` after
        `growth_interval` clean ones (if the grown scale is finite). `realize_with` as in `opt.update`."""
        if not self.enabled:
            opt.update(params, grads, realize_with)
            return
        present = [g for g in grads if g is not None]
        if not present:
            raise ValueError("GradScaler.update_step: every gradient is None")
        grads = list(grads) if unscaled else self.unscale(grads)
        # checked after unscaling, as torch does: a half-precision gradient can overflow when divided by a scale < 1
        found_inf = functools.reduce(Tensor.logical_or,
                                     [g.isfinite().logical_not().any() for g in grads if g is not None])
        scale, tracker = self._advance(found_inf, present[0].device)
        opt.update(params, grads, [*realize_with, scale, tracker], skip_if=found_inf)

    def _advance(self, found_inf: Tensor, device: Device) -> tuple[Tensor, Tensor]:
        """torch's `_amp_update_scale_`, as `where`s on the device."""
        scale, tracker = self._state_on(device)
        clean = tracker + 1
        grown = scale * self.growth_factor
        grow = (clean >= self.growth_interval).logical_and(found_inf.logical_not())
        kept_or_grown = grow.logical_and(grown.isfinite()).where(grown, scale)
        new_scale = found_inf.where(scale * self.backoff_factor, kept_or_grown)
        new_tracker = found_inf.logical_or(grow).where(0, clean)
        scale.assign(new_scale)
        tracker.assign(new_tracker)
        return scale, tracker

    def state_dict(self) -> dict[str, Tensor]:
        """The scale and the count of clean steps ("scale", "growth_tracker") for `zyx.save`; empty before first use."""
        if self._scale is None or self._growth_tracker is None:
            return {}
        return {"scale": Tensor(self._scale.node), "growth_tracker": Tensor(self._growth_tracker.node)}

    def load_state_dict(self, entries: Mapping[str, Tensor]) -> None:
        """Resume from `state_dict()` (the settings stay the ones given to the constructor)."""
        if set(entries) not in (set(), {"scale", "growth_tracker"}):
            raise KeyError(f"GradScaler.load_state_dict: expected 'scale' and 'growth_tracker', got {sorted(entries)}")
        if entries:
            scale, tracker = entries["scale"], entries["growth_tracker"]
            self._scale, self._growth_tracker = Tensor(scale.cast(float32).node), Tensor(tracker.cast(int32).node)

    def get_scale(self) -> float:
        """The current scale as a Python float (reads the device: not for every step); `init_scale` before the
        first use, 1.0 when disabled."""
        if not self.enabled:
            return 1.0
        return self.init_scale if self._scale is None else float(self._scale.item())
