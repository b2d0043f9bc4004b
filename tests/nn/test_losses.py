"""Losses equal PyTorch's in value and gradient, stay finite for huge logits, and honour their options."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zyx
from zyx import nn
from nn_reference import assert_close, rng


def run_both(zyx_loss, torch_loss, device, inputs, constants=(), atol=1e-5, rtol=1e-4, **options):
    """Compare a loss and its gradients w.r.t. `inputs` (float arrays); `constants` get no gradient."""
    z_in = [zyx.tensor(a, device=device) for a in inputs]
    t_in = [torch.tensor(a, requires_grad=True) for a in inputs]
    z_const = [None if c is None else zyx.tensor(c, device=device) for c in constants]
    t_const = [None if c is None else torch.tensor(c) for c in constants]
    z_value = zyx_loss(*z_in, *z_const, **options)
    t_value = torch_loss(*t_in, *t_const, **options)
    assert_close(z_value, t_value, atol, rtol, "loss")
    seed = rng().standard_normal(t_value.shape).astype(np.float32)
    (t_value * torch.tensor(seed)).sum().backward()
    grads = (z_value * zyx.tensor(seed, device=device)).sum().backward(z_in)
    for i, (g, t) in enumerate(zip(grads, t_in)):
        assert_close(g, t.grad, atol, rtol, f"gradient of input {i}")
    return z_value


def normal(*shape):
    return rng().standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
def test_regression_losses(nn_device, name, reduction):
    target = rng().standard_normal((3, 4)).astype(np.float32) + 0.1
    run_both(getattr(nn, name), getattr(F, name), nn_device, [normal(3, 4)], [target], reduction=reduction)


LABELS = np.array([0, 3, 1, 3, 2], dtype=np.int64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_options(nn_device, reduction, label_smoothing, weighted):
    weight = np.array([0.5, 1.0, 2.0, 1.5], dtype=np.float32) if weighted else None
    labels = LABELS.copy()
    labels[1] = -100   # the default ignore_index
    run_both(nn.cross_entropy, F.cross_entropy, nn_device, [normal(5, 4)], [labels, weight],
             reduction=reduction, label_smoothing=label_smoothing)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_ignore_index_inside_the_class_range(nn_device, label_smoothing):
    run_both(nn.cross_entropy, F.cross_entropy, nn_device, [normal(5, 4)], [LABELS], ignore_index=3,
             label_smoothing=label_smoothing)


def test_cross_entropy_spatial_and_unbatched(nn_device):
    labels = rng().integers(0, 3, size=(2, 4, 5))
    run_both(nn.cross_entropy, F.cross_entropy, nn_device, [normal(2, 3, 4, 5)], [labels], label_smoothing=0.1)
    run_both(nn.cross_entropy, F.cross_entropy, nn_device, [normal(4)], [np.array(2)])


@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
def test_cross_entropy_probability_targets(nn_device, label_smoothing):
    target = torch.softmax(torch.tensor(normal(3, 4)), -1).numpy()
    weight = np.array([0.5, 1.0, 2.0, 1.5], dtype=np.float32)
    run_both(nn.cross_entropy, F.cross_entropy, nn_device, [normal(3, 4)], [target, weight],
             label_smoothing=label_smoothing)


def test_cross_entropy_is_stable_for_huge_logits(nn_device):
    logits = normal(5, 4) * 1e4
    logits[0] = [3e4, -3e4, 0, 1e4]
    value = run_both(nn.cross_entropy, F.cross_entropy, nn_device, [logits], [LABELS], rtol=1e-5, atol=1e-2,
                     label_smoothing=0.1)
    assert np.isfinite(value.numpy())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss(nn_device, reduction):
    log_probs = torch.log_softmax(torch.tensor(normal(5, 4)), -1).numpy()
    weight = np.array([0.5, 1.0, 2.0, 1.5], dtype=np.float32)
    run_both(nn.nll_loss, F.nll_loss, nn_device, [log_probs], [LABELS, weight], ignore_index=1, reduction=reduction)


def test_class_losses_check_their_targets(nn_device):
    logits = zyx.zeros(5, 4, device=nn_device)
    with pytest.raises(zyx.ShapeError, match="target"):
        nn.cross_entropy(logits, zyx.tensor([0, 1], device=nn_device))
    with pytest.raises(TypeError, match="integer"):
        nn.nll_loss(logits, zyx.zeros(5, device=nn_device))
    with pytest.raises(ValueError, match="reduction"):
        nn.mse_loss(logits, logits, reduction="avg")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy_with_logits(nn_device, reduction):
    target = (rng().random((4, 3)) > 0.5).astype(np.float32)
    weight, pos_weight = np.array([1.0, 0.5, 2.0], np.float32), np.array([3.0, 1.0, 0.5], np.float32)
    run_both(nn.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, nn_device, [normal(4, 3)],
             [target, weight], reduction=reduction)
    z_pos_weight = zyx.tensor(pos_weight, device=nn_device)
    run_both(lambda x, t, **o: nn.binary_cross_entropy_with_logits(x, t, pos_weight=z_pos_weight, **o),
             lambda x, t, **o: F.binary_cross_entropy_with_logits(x, t, pos_weight=torch.tensor(pos_weight), **o),
             nn_device, [normal(4, 3)], [target], reduction=reduction)


def test_binary_cross_entropy_with_logits_is_stable_for_huge_logits(nn_device):
    logits = np.array([[1e4, -1e4, 50.0, -50.0]], dtype=np.float32)
    target = np.array([[0.0, 1.0, 1.0, 0.0]], dtype=np.float32)
    value = run_both(nn.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, nn_device, [logits],
                     [target], reduction="none")
    assert np.all(np.isfinite(value.numpy()))


def test_binary_cross_entropy(nn_device):
    probabilities = rng().uniform(0.05, 0.95, size=(4, 3)).astype(np.float32)
    target = (rng().random((4, 3)) > 0.5).astype(np.float32)
    run_both(nn.binary_cross_entropy, F.binary_cross_entropy, nn_device, [probabilities], [target])
    saturated = nn.binary_cross_entropy(zyx.tensor([0.0, 1.0], device=nn_device),
                                        zyx.tensor([1.0, 0.0], device=nn_device))
    assert saturated.item() == pytest.approx(100.0)
