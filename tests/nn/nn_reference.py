"""Run a zyx layer and the matching PyTorch layer on the same weights and inputs, and compare everything."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

import zyx

RNG_SEED = 1234


def rng() -> np.random.Generator:
    return np.random.default_rng(RNG_SEED)


def copy_weights(module: zyx.nn.Module, reference: torch.nn.Module) -> None:
    """Load the torch layer's state into the zyx layer (exercising load_state_dict on the way)."""
    module.load_state_dict({k: v.detach().numpy() for k, v in reference.state_dict().items()})


def _outputs(value: Any) -> list[Any]:
    """Tensors in a layer's result, flattened (tuples of outputs, None skipped)."""
    if isinstance(value, (tuple, list)):
        return [v for item in value for v in _outputs(item)]
    return [] if value is None else [value]


def assert_close(actual: Any, expected: Any, atol: float = 1e-5, rtol: float = 1e-4, what: str = "") -> None:
    actual = actual.numpy() if isinstance(actual, zyx.Tensor) else np.asarray(actual)
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol, err_msg=what)


def compare_layer(module: zyx.nn.Module, reference: torch.nn.Module, inputs: Sequence[np.ndarray],
                  device: zyx.Device, call: Optional[Callable[..., Any]] = None,
                  torch_call: Optional[Callable[..., Any]] = None, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Forward outputs and gradients (w.r.t. every parameter and every float input) must match PyTorch's.

    The loss is sum(output * random weights) over every output, so each output element gets its own seed.
    """
    copy_weights(module, reference)
    call = call or (lambda m, *xs: m(*xs))
    torch_call = torch_call or call
    z_inputs = [zyx.tensor(a, device=device) for a in inputs]
    t_inputs = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in inputs]
    z_out, t_out = _outputs(call(module, *z_inputs)), _outputs(torch_call(reference, *t_inputs))
    assert len(z_out) == len(t_out)
    seeds = [rng().standard_normal(t.shape).astype(np.float32) for t in t_out]
    zyx.realize(*z_out)  # (one program for all: each realized alone would schedule and build the shared part again)
    for i, (z, t) in enumerate(zip(z_out, t_out)):
        assert_close(z, t, atol, rtol, f"output {i}")
    z_loss = sum((z * zyx.tensor(s, device=device)).sum() for z, s in zip(z_out, seeds))
    t_loss = sum((t * torch.tensor(s)).sum() for t, s in zip(t_out, seeds))
    reference.zero_grad()
    t_loss.backward()
    names = [name for name, _ in module.named_parameters()]
    float_inputs = [(i, z) for i, z in enumerate(z_inputs) if z.dtype.is_float]
    grads = z_loss.backward([p for _, p in module.named_parameters()] + [z for _, z in float_inputs])
    zyx.realize(*[grad for grad in grads if grad is not None])
    t_params = dict(reference.named_parameters())
    assert sorted(names) == sorted(t_params), f"parameter names {names} != {list(t_params)}"
    for name, grad in zip(names, grads):
        expected = t_params[name].grad
        assert_close(grad if grad is not None else np.zeros(expected.shape, np.float32), expected, atol, rtol,
                     f"gradient of {name}")
    for (i, _), grad in zip(float_inputs, grads[len(names):]):
        assert_close(grad, t_inputs[i].grad, atol, rtol, f"gradient of input {i}")


def run_both(zyx_loss: Callable[..., Any], torch_loss: Callable[..., Any], device: zyx.Device,
             inputs: Sequence[np.ndarray], constants: Sequence[Any] = (), atol: float = 1e-5, rtol: float = 1e-4,
             **options: Any) -> zyx.Tensor:
    """Compare a function (a loss, a functional op) in value and in its gradients w.r.t. `inputs` (float arrays);
    `constants` get no gradient."""
    z_in = [zyx.tensor(a, device=device) for a in inputs]
    t_in = [torch.tensor(a, requires_grad=True) for a in inputs]
    z_const = [None if c is None else zyx.tensor(c, device=device) for c in constants]
    t_const = [None if c is None else torch.tensor(c) for c in constants]
    z_value = zyx_loss(*z_in, *z_const, **options)
    t_value = torch_loss(*t_in, *t_const, **options)
    assert_close(z_value, t_value, atol, rtol, "value")
    seed = rng().standard_normal(t_value.shape).astype(np.float32)
    (t_value * torch.tensor(seed)).sum().backward()
    grads = (z_value * zyx.tensor(seed, device=device)).sum().backward(z_in)
    for i, (g, t) in enumerate(zip(grads, t_in)):
        assert_close(g, t.grad, atol, rtol, f"gradient of input {i}")
    return z_value
