"""Losses equal PyTorch's in value and gradient, stay finite for huge logits, and honour their options."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zyx
from zyx import nn
from nn_reference import rng, run_both


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


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name, knee, values", [
    ("smooth_l1_loss", "beta", [1.0, 0.5, 0.0]), ("huber_loss", "delta", [1.0, 0.5, 2.5])])
def test_smooth_l1_and_huber_losses(nn_device, name, knee, values, reduction):
    """Both sides of the knee and exactly on it (d = ±knee, d = 0) in value and gradient, for input and target."""
    for value in values:
        x, target = normal(3, 5) * 2, normal(3, 5)
        x[0, :3] = target[0, :3] + np.array([value, -value, 0.0], np.float32)
        run_both(getattr(nn, name), getattr(F, name), nn_device, [x, target], reduction=reduction, **{knee: value})


@pytest.mark.filterwarnings("ignore:Using a target size")
@pytest.mark.parametrize("name", ["smooth_l1_loss", "huber_loss"])
def test_smooth_losses_broadcast_the_target(nn_device, name):
    run_both(getattr(nn, name), getattr(F, name), nn_device, [normal(2, 3, 4), normal(3, 1)])


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "batchmean"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div(nn_device, reduction, log_target):
    log_probs = torch.log_softmax(torch.tensor(normal(4, 5)), -1).numpy()
    target = torch.softmax(torch.tensor(normal(4, 5) * 2), -1).numpy()
    if log_target:
        target = np.log(target)
    run_both(nn.kl_div, F.kl_div, nn_device, [log_probs, target], reduction=reduction, log_target=log_target)


def test_kl_div_zero_targets_add_nothing_and_no_nan(nn_device):
    """A target of 0 contributes 0 (torch's xlogy); the gradients stay finite, the target's too (torch's is nan)."""
    log_probs = torch.log_softmax(torch.tensor(normal(3, 4)), -1).numpy()
    target = np.array([[0.0, 0.5, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]], np.float32)
    value = run_both(nn.kl_div, F.kl_div, nn_device, [log_probs], [target], reduction="none")
    assert np.all(np.isfinite(value.numpy())) and np.all(value.numpy()[target == 0] == 0)
    x, t = zyx.tensor(log_probs, device=nn_device), zyx.tensor(target, device=nn_device)
    grads = nn.kl_div(x, t, reduction="batchmean").backward([x, t])
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)


@pytest.mark.parametrize("loss, options", [
    ("SmoothL1Loss", {"beta": 0.5}), ("HuberLoss", {"delta": 2.0, "reduction": "sum"}),
    ("KLDivLoss", {"reduction": "batchmean"}), ("KLDivLoss", {"log_target": True, "reduction": "none"})])
def test_new_loss_modules(nn_device, loss, options):
    a, b = normal(4, 3), torch.log_softmax(torch.tensor(normal(4, 3)), -1).numpy()
    if loss == "KLDivLoss" and not options.get("log_target"):
        b = np.exp(b)
    ours, theirs = getattr(nn, loss)(**options), getattr(torch.nn, loss)(**options)
    assert repr(ours) == repr(theirs) and ours.parameters() == []
    run_both(ours, theirs, nn_device, [a, b])


def test_smooth_losses_refuse_bad_options(nn_device):
    x = zyx.ones(2, 3, device=nn_device)
    with pytest.raises(ValueError, match="beta"):
        nn.smooth_l1_loss(x, x, beta=-1.0)
    with pytest.raises(ValueError, match="delta"):
        nn.huber_loss(x, x, delta=0.0)
    with pytest.raises(ValueError, match="reduction"):
        nn.kl_div(x, x, reduction="average")
    with pytest.raises(zyx.ShapeError, match=r"\(2, 3\).*\(4,\)|\(4,\).*\(2, 3\)"):
        nn.huber_loss(x, zyx.ones(4, device=nn_device))


def signs(*shape):
    return np.where(rng().random(shape) > 0.5, 1.0, -1.0).astype(np.float32)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_margin_losses(nn_device, reduction):
    """Targets of ±1 on odd shapes; input, second input and target all get gradients where torch gives them."""
    x1, x2 = normal(3, 5), normal(3, 5)[::-1].copy()
    run_both(nn.margin_ranking_loss, F.margin_ranking_loss, nn_device, [x1, x2, signs(3, 5)], margin=0.3,
             reduction=reduction)
    run_both(nn.hinge_embedding_loss, F.hinge_embedding_loss, nn_device, [np.abs(normal(7)) * 1.5], [signs(7)],
             margin=1.2, reduction=reduction)
    run_both(nn.soft_margin_loss, F.soft_margin_loss, nn_device, [normal(2, 3, 5)], [signs(2, 3, 5)],
             reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cosine_embedding_loss(nn_device, reduction):
    """Pairs of rows with ±1 targets (and a 0 target, which adds nothing), a zero row (cosine 0, no nan), one pair
    of vectors with a 0-d target; the module too."""
    x1, x2 = normal(5, 7), normal(5, 7)
    x2[2] = 0
    target = np.array([1, -1, 1, -1, 0], np.float32)
    run_both(nn.cosine_embedding_loss, F.cosine_embedding_loss, nn_device, [x1, x2], [target], margin=-0.2,
             reduction=reduction)
    run_both(nn.cosine_embedding_loss, F.cosine_embedding_loss, nn_device, [normal(6), normal(6)],
             [np.array(-1, np.float32)], reduction=reduction)
    run_both(nn.CosineEmbeddingLoss(0.1, reduction), torch.nn.CosineEmbeddingLoss(0.1, reduction=reduction), nn_device,
             [x1, x2], [target])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_multilabel_soft_margin_loss(nn_device, reduction):
    target = (rng().random((4, 5)) > 0.5).astype(np.float32)
    weight = np.array([0.5, 1.0, 2.0, 1.5, 0.25], np.float32)
    run_both(nn.multilabel_soft_margin_loss, F.multilabel_soft_margin_loss, nn_device, [normal(4, 5) * 3],
             [target, weight], reduction=reduction)
    run_both(nn.multilabel_soft_margin_loss, F.multilabel_soft_margin_loss, nn_device, [normal(4, 5), target],
             reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("p, swap", [(2, False), (1, True), (3, False)])
def test_triplet_margin_loss(nn_device, reduction, p, swap):
    a, b, c = (normal(4, 6, 5)[i] for i in range(3))
    run_both(nn.triplet_margin_loss, F.triplet_margin_loss, nn_device, [a, b * 0.5 + a, c * 2], margin=0.7, p=p,
             swap=swap, reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("log_input", [True, False])
@pytest.mark.parametrize("full", [False, True])
def test_poisson_nll_loss(nn_device, reduction, log_input, full):
    """Counts 0, 1 and above (Stirling's term only above 1); the rate's gradient, and the count's where positive."""
    counts = rng().integers(0, 6, size=(3, 5)).astype(np.float32)
    x = normal(3, 5) if log_input else np.abs(normal(3, 5)) + 0.1
    run_both(nn.poisson_nll_loss, F.poisson_nll_loss, nn_device, [x], [counts], log_input=log_input, full=full,
             reduction=reduction)
    run_both(nn.poisson_nll_loss, F.poisson_nll_loss, nn_device, [x, counts + 0.5], log_input=log_input, full=full,
             reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("var_shape", [(4, 3), (4,), (4, 1)])
def test_gaussian_nll_loss(nn_device, reduction, var_shape):
    """var of the input's shape, less its last axis, or with a 1 there; values below eps are clamped (the gradient
    passes the clamp as torch's), full adds the constant."""
    var = np.abs(normal(*var_shape)) + 0.05
    var.reshape(-1)[0] = 1e-8
    for full in (False, True):
        run_both(nn.gaussian_nll_loss, F.gaussian_nll_loss, nn_device, [normal(4, 3), normal(4, 3) + 0.2, var],
                 full=full, reduction=reduction, rtol=2e-4)


@pytest.mark.parametrize("loss, options, shapes", [
    ("MarginRankingLoss", {"margin": 0.2}, [(5,), (5,), (5,)]),
    ("HingeEmbeddingLoss", {"margin": 0.5, "reduction": "sum"}, [(3, 4), (3, 4)]),
    ("SoftMarginLoss", {}, [(3, 4), (3, 4)]),
    ("MultiLabelSoftMarginLoss", {"reduction": "none"}, [(3, 4), (3, 4)]),
    ("TripletMarginLoss", {"margin": 2.0, "p": 1.0, "swap": True}, [(3, 4), (3, 4), (3, 4)]),
    ("PoissonNLLLoss", {"full": True}, [(3, 4), (3, 4)]),
    ("GaussianNLLLoss", {"reduction": "sum"}, [(3, 4), (3, 4), (3,)])])
def test_margin_and_likelihood_loss_modules(nn_device, loss, options, shapes):
    arrays = [normal(*shape) for shape in shapes]
    if loss in ("MarginRankingLoss", "HingeEmbeddingLoss", "SoftMarginLoss"):
        arrays[-1] = np.sign(arrays[-1]) + (arrays[-1] == 0)
    if loss in ("MultiLabelSoftMarginLoss", "PoissonNLLLoss"):
        arrays[-1] = (arrays[-1] > 0).astype(np.float32) * 3
    if loss == "GaussianNLLLoss":
        arrays[-1] = np.abs(arrays[-1]) + 0.1
    ours, theirs = getattr(nn, loss)(**options), getattr(torch.nn, loss)(**options)
    assert ours.parameters() == []
    run_both(ours, theirs, nn_device, arrays[:1], arrays[1:])


def test_margin_and_likelihood_losses_refuse_bad_input(nn_device):
    x = zyx.ones(2, 3, device=nn_device)
    with pytest.raises(zyx.ShapeError, match=r"\(2, 3\).*\(2,\)"):
        nn.margin_ranking_loss(x, x, zyx.ones(2, device=nn_device))
    with pytest.raises(ValueError, match="margin"):
        nn.triplet_margin_loss(x, x, x, margin=0.0)
    with pytest.raises(zyx.ShapeError, match=r"var of shape \(3,\).*\(2, 3\)"):
        nn.gaussian_nll_loss(x, x, zyx.ones(3, device=nn_device))
    with pytest.raises(ValueError, match="reduction"):
        nn.gaussian_nll_loss(x, x, x, reduction="avg")
