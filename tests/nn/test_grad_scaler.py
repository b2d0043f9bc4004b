"""zyx.nn.GradScaler follows torch.amp.GradScaler step by step (skips, backoff, growth), eagerly and jitted,
without reading the device."""
import numpy as np
import pytest
import torch

import zyx
from zyx import nn
from zyx.devices import CAPTURING_KINDS

W0 = np.array([1.0, -0.5, 2.0], np.float32)
COEFFICIENTS = np.array([1.0, 2.0, 3.0], np.float32)
BAD_STEPS = {2: np.inf, 5: np.nan, 6: -np.inf}  # step -> what one coefficient (so one gradient) becomes
STEPS = 9


def coefficients(step):
    c = COEFFICIENTS.copy()
    c[1] = BAD_STEPS.get(step, c[1])
    return c


def torch_run(init_scale=4.0, growth_interval=2):
    w = torch.tensor(W0, requires_grad=True)
    opt, scaler = torch.optim.Adam([w], lr=0.1), torch.amp.GradScaler("cpu", init_scale=init_scale,
                                                                       growth_interval=growth_interval)
    scales, weights = [], []
    for step in range(STEPS):
        opt.zero_grad()
        scaler.scale((w * torch.tensor(coefficients(step))).sum()).backward()
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
        weights.append(w.detach().numpy().copy())
    return scales, weights


def zyx_run(device, jit=False, init_scale=4.0, growth_interval=2):
    w = device.tensor(W0)
    opt, scaler = nn.Adam(lr=0.1), nn.GradScaler(init_scale=init_scale, growth_interval=growth_interval)

    def step(c):
        loss = (w * c).sum()
        scaler.update_step(opt, [w], scaler.scale(loss).backward([w]))

    run = zyx.jit(step) if jit else step
    scales, weights = [], []
    for index in range(STEPS):
        run(device.tensor(coefficients(index)))
        scales.append(scaler.get_scale())
        weights.append(w.numpy())
    return scales, weights, run


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_skips_backoff_and_growth_follow_torch(device, jit):
    scales, weights, run = zyx_run(device, jit)
    torch_scales, torch_weights = torch_run()
    assert scales == torch_scales == [4.0, 8.0, 4.0, 4.0, 8.0, 4.0, 2.0, 2.0, 4.0]
    np.testing.assert_allclose(weights, torch_weights, rtol=1e-4, atol=1e-5)  # WGSL divides less exactly
    if jit and device.kind in CAPTURING_KINDS:
        assert len(run.captured) == 1


def test_a_scale_that_would_overflow_does_not_grow(device):
    scales, _, _ = zyx_run(device, init_scale=2.0 ** 127, growth_interval=1)
    assert scales == torch_run(init_scale=2.0 ** 127, growth_interval=1)[0]


def test_a_step_reads_nothing_from_the_device(device, monkeypatch):
    w = device.tensor(W0)
    opt, scaler = nn.SGD(lr=0.1), nn.GradScaler()
    reads = []
    download = type(device).download
    monkeypatch.setattr(type(device), "download", lambda *args: reads.append(1) or download(*args))
    for index in range(3):
        loss = (w * device.tensor(coefficients(index + 1))).sum()
        scaler.update_step(opt, [w], scaler.scale(loss).backward([w]))
    assert reads == []
    assert scaler.get_scale() == 2.0 ** 15 and reads == [1]  # step 2 (here index 1) had an inf


def test_float16_training_with_the_scaler_reaches_the_float32_loss(device):
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal((8, 1)).astype(np.float32)

    def train(half):
        zyx.manual_seed(1)
        model = nn.Sequential(nn.Linear(4, 8, device=device), nn.Tanh(), nn.Linear(8, 1, device=device))
        opt, scaler = nn.SGD(lr=0.05), nn.GradScaler(init_scale=2.0 ** 10, enabled=half)  # no step skipped
        losses = []
        for _ in range(20):
            with zyx.autocast(zyx.float16, enabled=half):
                loss = nn.functional.mse_loss(model(device.tensor(x)), device.tensor(y))
            grads = scaler.scale(loss).backward(model.parameters())
            scaler.update_step(opt, model.parameters(), grads, realize_with=[loss])
            losses.append(loss.item())
        assert scaler.get_scale() == (2.0 ** 10 if half else 1.0)
        return losses, grads

    full_losses, _ = train(False)
    half_losses, grads = train(True)
    assert full_losses[-1] < 0.5 * full_losses[0]
    assert half_losses[-1] == pytest.approx(full_losses[-1], rel=0.02)
    assert all(g.dtype == zyx.float32 for g in grads)


def test_a_checkpoint_resumes_the_scale_and_its_count(device, tmp_path):
    w = device.tensor(W0)
    opt, scaler = nn.SGD(lr=0.1), nn.GradScaler(init_scale=8.0, growth_interval=2)
    assert scaler.state_dict() == {}
    scaler.update_step(opt, [w], scaler.scale((w * device.tensor(COEFFICIENTS)).sum()).backward([w]))
    zyx.save(scaler.state_dict(), tmp_path / "scaler.safetensors")
    resumed = nn.GradScaler(init_scale=8.0, growth_interval=2)
    resumed.load_state_dict(zyx.load(tmp_path / "scaler.safetensors", device=device))
    assert resumed.get_scale() == 8.0
    resumed.update_step(opt, [w], resumed.scale((w * device.tensor(COEFFICIENTS)).sum()).backward([w]))
    assert resumed.get_scale() == 16.0  # the count of clean steps came along: the second one grows the scale
    with pytest.raises(KeyError, match="expected 'scale' and 'growth_tracker'"):
        resumed.load_state_dict({"scale": w})


def test_disabled_passes_everything_through(device):
    scaler, loss = nn.GradScaler(enabled=False), device.tensor(np.float32(3.0))
    grads = [device.tensor(W0), None]
    assert scaler.scale(loss) is loss and scaler.unscale(grads) == grads and scaler.get_scale() == 1.0
    assert not scaler.is_enabled()


@pytest.mark.parametrize("options, message", [
    (dict(init_scale=0.0), "init_scale must be positive"),
    (dict(growth_factor=1.0), "growth_factor must be above 1"),
    (dict(backoff_factor=1.0), r"backoff_factor must be in \(0, 1\)"),
    (dict(growth_interval=0), "growth_interval must be a positive int"),
])
def test_bad_settings_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        nn.GradScaler(**options)
