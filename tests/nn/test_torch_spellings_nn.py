"""zyx.nn as a PyTorch user writes it: `zyx.nn.functional`, loss classes, `print(model)` with layer sizes, numpy
inputs refused with the fix, modules pickled on every device; all against torch."""
from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import zyx
import zyx.nn.functional as F
from zyx import nn

RNG = np.random.default_rng(7)


def close(actual, expected, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(actual.numpy(), expected.detach().numpy(), rtol=rtol, atol=atol)


def test_repr_matches_torch(nn_device):
    pairs = [
        (nn.Linear(4, 3, device=nn_device), torch.nn.Linear(4, 3)),
        (nn.Linear(4, 3, bias=False, device=nn_device), torch.nn.Linear(4, 3, bias=False)),
        (nn.Conv2d(3, 8, 3, device=nn_device), torch.nn.Conv2d(3, 8, 3)),
        (nn.Conv2d(3, 8, (3, 5), stride=2, padding=1, dilation=2, bias=False, device=nn_device),
         torch.nn.Conv2d(3, 8, (3, 5), stride=2, padding=1, dilation=2, bias=False)),
        (nn.Conv2d(4, 8, 3, padding="same", groups=2, device=nn_device),
         torch.nn.Conv2d(4, 8, 3, padding="same", groups=2)),
        (nn.Embedding(10, 3, padding_idx=0, device=nn_device), torch.nn.Embedding(10, 3, padding_idx=0)),
        (nn.AvgPool2d(3, 2, 1), torch.nn.AvgPool2d(3, 2, 1)),
        (nn.LayerNorm((2, 8), elementwise_affine=False, device=nn_device),
         torch.nn.LayerNorm((2, 8), elementwise_affine=False)),
        (nn.RMSNorm(8, device=nn_device), torch.nn.RMSNorm(8)),
        (nn.LSTMCell(4, 8, bias=False, device=nn_device), torch.nn.LSTMCell(4, 8, bias=False)),
        (nn.Sequential(nn.Flatten(), nn.Linear(16, 4, device=nn_device), nn.GELU("tanh"), nn.LeakyReLU(0.2),
                       nn.Softmax(dim=1), nn.Identity()),
         torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4), torch.nn.GELU("tanh"),
                             torch.nn.LeakyReLU(0.2), torch.nn.Softmax(dim=1), torch.nn.Identity())),
        (nn.CrossEntropyLoss(label_smoothing=0.1), torch.nn.CrossEntropyLoss(label_smoothing=0.1)),
    ]
    for ours, theirs in pairs:
        expected = repr(theirs)
        if isinstance(theirs, torch.nn.LayerNorm) and "bias=" not in expected:  # torch before 2.12 left it out
            assert re.sub(r", bias=(True|False)", "", repr(ours)) == expected
        else:
            assert repr(ours) == expected
    assert repr(nn.MaxPool2d(2, ceil_mode=True)) == repr(torch.nn.MaxPool2d(2, ceil_mode=True))
    # options zyx does not have (inplace, threshold) are left out of the line
    assert repr(nn.Dropout(0.2)) == "Dropout(p=0.2)"
    assert repr(nn.BatchNorm2d(4, device=nn_device)) == \
        "BatchNorm2d(4, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"


def test_functional_forms_match_modules_and_torch(nn_device):
    x = RNG.standard_normal((2, 4, 5, 5)).astype(np.float32)
    t, tx = zyx.tensor(x, device=nn_device), torch.tensor(x)
    conv = nn.Conv2d(4, 6, 3, padding=1, device=nn_device)
    w, b = torch.tensor(conv.weight.numpy()), torch.tensor(conv.bias.numpy())
    close(F.conv2d(t, conv.weight, conv.bias, padding=1), TF.conv2d(tx, w, b, padding=1), rtol=1e-4)
    close(conv(t), TF.conv2d(tx, w, b, padding=1), rtol=1e-4)
    close(F.max_pool2d(t, 2), TF.max_pool2d(tx, 2))
    close(F.layer_norm(t, (5, 5)), TF.layer_norm(tx, (5, 5)), rtol=1e-4)
    close(F.group_norm(t, 2), TF.group_norm(tx, 2), rtol=1e-4)
    close(F.rms_norm(t, (5,)), TF.rms_norm(tx, (5,)), rtol=1e-4)
    close(F.softmax(t, dim=1), TF.softmax(tx, dim=1))
    close(F.gelu(t, approximate="tanh"), TF.gelu(tx, approximate="tanh"))
    weight = RNG.standard_normal((7, 3)).astype(np.float32)
    indices = np.array([[0, 6], [3, 0]])
    close(F.embedding(zyx.tensor(indices, device=nn_device), zyx.tensor(weight, device=nn_device), padding_idx=0),
          TF.embedding(torch.tensor(indices), torch.tensor(weight), padding_idx=0))


def test_functional_batch_norm_updates_running_statistics_as_torch(nn_device):
    x = RNG.standard_normal((6, 3, 2)).astype(np.float32)
    ours = [zyx.tensor(np.zeros(3, np.float32), device=nn_device), zyx.tensor(np.ones(3, np.float32), device=nn_device)]
    theirs = [torch.zeros(3), torch.ones(3)]
    out = F.batch_norm(zyx.tensor(x, device=nn_device), *ours, training=True, momentum=0.3)
    expected = TF.batch_norm(torch.tensor(x), *theirs, training=True, momentum=0.3)
    close(out, expected, rtol=1e-4)
    for running, reference in zip(ours, theirs):
        close(running, reference, rtol=1e-5)
    close(F.batch_norm(zyx.tensor(x, device=nn_device), *ours), TF.batch_norm(torch.tensor(x), *theirs), rtol=1e-4)


@pytest.mark.parametrize("loss, options", [
    ("CrossEntropyLoss", {"label_smoothing": 0.1, "ignore_index": 1}), ("CrossEntropyLoss", {"weight": True}),
    ("NLLLoss", {"reduction": "sum"}), ("MSELoss", {}), ("L1Loss", {"reduction": "none"}), ("BCELoss", {}),
    ("BCEWithLogitsLoss", {"pos_weight": True})])
def test_loss_classes_match_torch(nn_device, loss, options):
    logits = RNG.standard_normal((5, 4)).astype(np.float32)
    if loss in ("CrossEntropyLoss", "NLLLoss"):
        target = np.array([0, 3, 1, 2, 1])
    else:
        target = RNG.random((5, 4)).astype(np.float32)
    if loss == "BCELoss":
        logits = 1 / (1 + np.exp(-logits))
    class_weights = RNG.random(4).astype(np.float32) + 0.5
    ours_options = {k: zyx.tensor(class_weights, device=nn_device) if v is True else v for k, v in options.items()}
    theirs_options = {k: torch.tensor(class_weights) if v is True else v for k, v in options.items()}
    ours, theirs = getattr(nn, loss)(**ours_options), getattr(torch.nn, loss)(**theirs_options)
    assert len(ours.buffers()) == len([v for v in options.values() if v is True]) and ours.parameters() == []
    t, x = zyx.tensor(logits, device=nn_device), torch.tensor(logits, requires_grad=True)
    got, expected = ours(t, zyx.tensor(target, device=nn_device)), theirs(x, torch.tensor(target))
    close(got, expected, rtol=1e-4)
    expected.sum().backward()
    close(got.backward([t])[0], x.grad, rtol=1e-4)


def test_class_index_out_of_range_raises(nn_device):
    logits, target = zyx.randn(2, 3, device=nn_device), zyx.tensor([0, 3], device=nn_device)
    for loss in (nn.CrossEntropyLoss(), lambda a, b: F.cross_entropy(a, b, reduction="none")):
        with pytest.raises(IndexError, match="target 3 is out of range for 3 classes"):
            loss(logits, target).numpy()


def test_numpy_input_is_refused_with_the_fix(nn_device):
    model = nn.Sequential(nn.Linear(3, 2, device=nn_device))
    with pytest.raises(TypeError, match=r"zyx.tensor\(array, device=zyx\.(CPU|OpenCL|WGPU|Torch).*dtype=zyx.float32\)"):
        model(np.zeros((4, 3)))
    assert model(zyx.zeros(4, 3, device=nn_device)).shape == (4, 2)


def test_modules_pickle_through_the_host(nn_device):
    model = nn.Sequential(nn.Linear(3, 4, device=nn_device), nn.BatchNorm1d(4, device=nn_device), nn.ReLU())
    model(zyx.randn(5, 3, device=nn_device)).numpy()
    zyx.realize(*model.buffers())  # the running statistics moved
    model.eval()
    copy = pickle.loads(pickle.dumps(model))
    assert repr(copy) == repr(model) and not copy.training
    assert all(a.device is nn_device for a in copy.parameters() + copy.buffers())
    x = zyx.randn(2, 3, device=nn_device)
    np.testing.assert_array_equal(copy(x).numpy(), model(x).numpy())


@pytest.mark.parametrize("name, args, options", [
    ("pad", ((1, 2, 0, 1),), {"mode": "reflect"}), ("pad", ((2, 1),), {"value": 3.0}),
    ("hardswish", (), {}), ("mish", (), {}), ("softmin", (), {"dim": 1}), ("normalize", (), {"dim": 2}),
    ("max_pool1d", (2,), {}), ("interpolate", (), {"scale_factor": 2.0, "mode": "nearest"}),
])
def test_functional_forms_of_the_ops_match_torch(name, args, options):
    """F.<name> exists for the ops zyx.nn has modules or Tensor methods for, with PyTorch's arguments."""
    x = np.random.default_rng(3).normal(size=(2, 3, 5)).astype(np.float32)
    ours = getattr(F, name)(zyx.CPU().tensor(x), *args, **options).numpy()
    theirs = getattr(torch.nn.functional, name)(torch.tensor(x), *args, **options).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
