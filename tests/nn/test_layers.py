"""Each layer's forward and gradients equal PyTorch's for the same weights and inputs."""
import numpy as np
import pytest
import torch

import zyx
from zyx import nn
from nn_reference import assert_close, compare_layer, rng, run_both


def normal(*shape: int) -> np.ndarray:
    return rng().standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("bias", [True, False])
def test_linear(nn_device, bias):
    compare_layer(nn.Linear(5, 3, bias=bias, device=nn_device), torch.nn.Linear(5, 3, bias=bias),
                  [normal(4, 5)], nn_device)


@pytest.mark.parametrize("options", [
    dict(),
    dict(stride=2, padding=1),
    dict(padding=(1, 0), dilation=2),
    dict(groups=2, bias=False),
])
def test_conv2d(nn_device, options):
    compare_layer(nn.Conv2d(4, 6, 3, device=nn_device, **options), torch.nn.Conv2d(4, 6, 3, **options),
                  [normal(2, 4, 7, 6)], nn_device)


@pytest.mark.parametrize("layer, reference", [
    (nn.MaxPool2d(2), torch.nn.MaxPool2d(2)),
    (nn.MaxPool2d(3, stride=2, padding=1), torch.nn.MaxPool2d(3, stride=2, padding=1)),
    (nn.AvgPool2d(2), torch.nn.AvgPool2d(2)),
    (nn.AvgPool2d(3, stride=1, padding=1), torch.nn.AvgPool2d(3, stride=1, padding=1)),
])
def test_pooling(nn_device, layer, reference):
    compare_layer(layer, reference, [normal(2, 3, 6, 6)], nn_device)


@pytest.mark.parametrize("layer, shape", [("1d", (6, 3)), ("1d", (4, 3, 5)), ("2d", (3, 3, 4, 4))])
def test_batch_norm_training_matches_and_tracks_running_statistics(nn_device, layer, shape):
    classes = {"1d": (nn.BatchNorm1d, torch.nn.BatchNorm1d), "2d": (nn.BatchNorm2d, torch.nn.BatchNorm2d)}
    zyx_cls, torch_cls = classes[layer]
    module, reference = zyx_cls(3, momentum=0.3, device=nn_device), torch_cls(3, momentum=0.3)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-0.5, 0.5)
    compare_layer(module, reference, [normal(*shape)], nn_device)
    x = normal(*shape) * 2 + 1   # a second batch moves the running statistics again
    module(zyx.tensor(x, device=nn_device))
    reference(torch.tensor(x))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert_close(getattr(module, name), getattr(reference, name), what=name)
    module.eval(), reference.eval()
    compare_layer(module, reference, [x], nn_device)


def test_batch_norm_cumulative_average_and_no_tracking(nn_device):
    module, reference = nn.BatchNorm1d(3, momentum=None, device=nn_device), torch.nn.BatchNorm1d(3, momentum=None)
    for scale in (1.0, 3.0, 0.5):
        x = normal(5, 3) * scale
        module(zyx.tensor(x, device=nn_device)), reference(torch.tensor(x))
    assert_close(module.running_var, reference.running_var)
    assert_close(module.running_mean, reference.running_mean)
    untracked = nn.BatchNorm1d(3, track_running_stats=False, device=nn_device).eval()
    assert [name for name, _ in untracked.named_buffers()] == []
    compare_layer(untracked, torch.nn.BatchNorm1d(3, track_running_stats=False).eval(), [normal(5, 3)], nn_device)


def test_batch_norm_rejects_wrong_shapes(nn_device):
    with pytest.raises(zyx.ShapeError, match="channels"):
        nn.BatchNorm2d(3, device=nn_device)(zyx.zeros(2, 4, 3, 3, device=nn_device))
    with pytest.raises(ValueError, match="more than one value"):
        nn.BatchNorm1d(3, device=nn_device)(zyx.zeros(1, 3, device=nn_device))


@pytest.mark.parametrize("options", [dict(), dict(elementwise_affine=False), dict(bias=False)])
def test_layer_norm(nn_device, options):
    reference = torch.nn.LayerNorm((4, 5), **options)
    if reference.weight is not None:
        with torch.no_grad():
            reference.weight.uniform_(0.5, 1.5)
    compare_layer(nn.LayerNorm((4, 5), device=nn_device, **options), reference, [normal(3, 4, 5)], nn_device)


@pytest.mark.parametrize("eps", [None, 1e-3])
def test_rms_norm(nn_device, eps):
    reference = torch.nn.RMSNorm(6, eps=eps)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
    compare_layer(nn.RMSNorm(6, eps=eps, device=nn_device), reference, [normal(2, 3, 6)], nn_device)


def test_group_norm(nn_device):
    reference = torch.nn.GroupNorm(2, 4)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-0.5, 0.5)
    compare_layer(nn.GroupNorm(2, 4, device=nn_device), reference, [normal(3, 4, 3, 2)], nn_device)


@pytest.mark.parametrize("padding_idx", [None, 1])
def test_embedding(nn_device, padding_idx):
    indices = np.array([[0, 1, 4], [1, 3, 3]], dtype=np.int64)
    module = nn.Embedding(5, 3, padding_idx=padding_idx, device=nn_device)
    if padding_idx is not None:
        assert np.all(module.weight.numpy()[padding_idx] == 0)
    compare_layer(module, torch.nn.Embedding(5, 3, padding_idx=padding_idx), [indices], nn_device)


def test_embedding_refuses_indices_torch_refuses(nn_device):
    module = nn.Embedding(5, 3, device=nn_device)
    reference = torch.nn.Embedding(5, 3)
    for bad in ([0, -1], [5, 1]):
        with pytest.raises(IndexError):
            reference(torch.tensor(bad))
        with pytest.raises(IndexError, match=f"index {min(bad) if min(bad) < 0 else max(bad)} is out of"):
            module(zyx.tensor(bad, device=nn_device)).numpy()
    with pytest.raises(TypeError, match="integer indices"):
        module(zyx.tensor([0.0], device=nn_device))


def test_dropout(nn_device):
    layer = nn.Dropout(0.25)
    x = zyx.ones(200, 100, device=nn_device)
    kept = layer(x).numpy()
    assert set(np.unique(kept).tolist()) <= {0.0, np.float32(1 / 0.75).item()}
    assert abs((kept == 0).mean() - 0.25) < 0.02
    assert not np.array_equal(kept, layer(x).numpy()), "each call draws a new mask"
    assert np.array_equal(layer.eval()(x).numpy(), x.numpy())


@pytest.mark.parametrize("layer, reference", [
    (nn.ReLU(), torch.nn.ReLU()), (nn.GELU(), torch.nn.GELU()), (nn.GELU("tanh"), torch.nn.GELU("tanh")),
    (nn.SiLU(), torch.nn.SiLU()), (nn.Tanh(), torch.nn.Tanh()), (nn.Sigmoid(), torch.nn.Sigmoid()),
    (nn.LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)), (nn.ELU(0.5), torch.nn.ELU(0.5)),
    (nn.Softplus(2.0), torch.nn.Softplus(2.0)), (nn.Softmax(1), torch.nn.Softmax(1)),
    (nn.LogSoftmax(-1), torch.nn.LogSoftmax(-1)), (nn.Flatten(), torch.nn.Flatten()),
    (nn.Identity(), torch.nn.Identity()),
])
def test_activations(nn_device, layer, reference):
    compare_layer(layer, reference, [normal(3, 4, 2) * 3], nn_device)


def test_more_activation_modules(nn_device):
    """The activations added for PyTorch parity, as modules with their options (values: test_ops_torch_parity)."""
    layers = [(nn.Hardtanh(-2.5, 2.5), torch.nn.Hardtanh(-2.5, 2.5)), (nn.Mish(), torch.nn.Mish()),
              (nn.CELU(0.5), torch.nn.CELU(0.5)), (nn.SELU(), torch.nn.SELU()), (nn.Hardswish(), torch.nn.Hardswish()),
              (nn.Hardsigmoid(), torch.nn.Hardsigmoid()), (nn.Softsign(), torch.nn.Softsign()),
              (nn.LogSigmoid(), torch.nn.LogSigmoid()), (nn.Softmin(1), torch.nn.Softmin(1)), (nn.ReLU6(), torch.nn.ReLU6())]
    compare_layer(nn.Sequential(*(z for z, _ in layers)), torch.nn.Sequential(*(t for _, t in layers)),
                  [normal(3, 4, 2) * 3], nn_device)


@pytest.mark.parametrize("layers, shape", [
    (lambda dev: [(nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2, device=dev),
                   torch.nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2)),
                  (nn.MaxPool1d(2, ceil_mode=True), torch.nn.MaxPool1d(2, ceil_mode=True)),
                  (nn.AvgPool1d(2, padding=1, count_include_pad=False),
                   torch.nn.AvgPool1d(2, padding=1, count_include_pad=False))], (2, 4, 9)),
    (lambda dev: [(nn.ConvTranspose2d(4, 6, 3, 2, 1, 1, 2, device=dev),  # stride, padding, output_padding, groups
                   torch.nn.ConvTranspose2d(4, 6, 3, 2, 1, 1, 2)),
                  (nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
                   torch.nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)),
                  (nn.Upsample(scale_factor=2, mode="bilinear"), torch.nn.Upsample(scale_factor=2, mode="bilinear"))],
     (2, 4, 5, 6)),
    (lambda dev: [(nn.Conv3d(2, 3, 2, padding=1, device=dev), torch.nn.Conv3d(2, 3, 2, padding=1)),
                  (nn.ConvTranspose3d(3, 2, (1, 2, 1), device=dev), torch.nn.ConvTranspose3d(3, 2, (1, 2, 1))),
                  (nn.MaxPool3d(2, return_indices=True), torch.nn.MaxPool3d(2, return_indices=True))],
     (1, 2, 4, 5, 3)),
])
def test_more_conv_and_pool_modules(nn_device, layers, shape):
    pairs = layers(nn_device)
    compare_layer(nn.Sequential(*(z for z, _ in pairs)), torch.nn.Sequential(*(t for _, t in pairs)),
                  [normal(*shape)], nn_device)


def test_sequential(nn_device):
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                    torch.nn.Flatten(), torch.nn.Linear(12, 4), torch.nn.Tanh())
    module = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, device=nn_device), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Flatten(), nn.Linear(12, 4, device=nn_device), nn.Tanh())
    assert len(module) == 6 and isinstance(module[4], nn.Linear)
    compare_layer(module, reference, [normal(2, 2, 4, 4)], nn_device)


def test_default_initialisation_ranges(nn_device):
    """PyTorch's defaults: weights and biases in ±1/sqrt(fan_in), embeddings N(0, 1), norms ones and zeros."""
    zyx.manual_seed(0)  # 40 biases miss the top tenth of the range 1.5% of the time: not left to the stream's state
    linear = nn.Linear(50, 40, device=nn_device)
    bound = 1 / np.sqrt(50)
    for t in (linear.weight, linear.bias):
        values = t.numpy()
        assert np.abs(values).max() <= bound and np.abs(values).max() > 0.9 * bound
    conv = nn.Conv2d(4, 8, 3, device=nn_device).weight.numpy()
    assert np.abs(conv).max() <= 1 / 6 and conv.std() == pytest.approx(1 / 6 / np.sqrt(3), rel=0.15)
    embedding = nn.Embedding(100, 50, device=nn_device).weight.numpy()
    assert abs(embedding.mean()) < 0.05 and embedding.std() == pytest.approx(1, rel=0.05)
    norm = nn.LayerNorm(3, device=nn_device)
    assert norm.weight.tolist() == [1, 1, 1] and norm.bias.tolist() == [0, 0, 0]


def test_initialisation_follows_manual_seed(nn_device):
    zyx.manual_seed(7)
    first = nn.Linear(3, 2, device=nn_device).weight.numpy()
    zyx.manual_seed(7)
    assert np.array_equal(first, nn.Linear(3, 2, device=nn_device).weight.numpy())


@pytest.mark.parametrize("value", [0.0, -0.0, 1.0, -2.5])
def test_filled_buffers_hold_exactly_their_value_on_each_device(value):
    """nn.init.filled (biases, norms, optimizer state) uploads an array made for it: the value bit for bit (a
    negative zero stays negative), the dtype asked for, a buffer of its own per call."""
    from zyx.nn.init import filled
    expected = np.full((3, 5), value, np.float32)
    for device in (zyx.CPU(), zyx.OpenCL()):
        first, second = filled((3, 5), value, device), filled((3, 5), value, device)
        got = first.numpy()
        assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), expected.view(np.uint32))
        second.assign(second + 1.0)
        assert np.array_equal(first.numpy(), expected) and np.array_equal(second.numpy(), expected + 1.0)
    assert filled((4,), 3, zyx.CPU(), dtype=zyx.int32).numpy().tolist() == [3, 3, 3, 3]


@pytest.mark.parametrize("name, options", [
    ("threshold", {"threshold": 0.5, "value": -2.0}), ("hardshrink", {}), ("hardshrink", {"lambd": 1.5}),
    ("softshrink", {}), ("softshrink", {"lambd": 0.0}), ("tanhshrink", {}), ("glu", {}), ("glu", {"dim": 0}),
    ("prelu", {"weight": [0.25]}), ("prelu", {"weight": [0.1, -0.5, 2.0]}),
])
def test_more_functional_activations(nn_device, name, options):
    """Values and gradients of F.<name> (kinks included: the input holds ±lambd, the threshold and 0)."""
    x = normal(4, 3, 6) * 2
    x[0, 0, :5] = [0.5, -0.5, 1.5, -1.5, 0.0]
    options = dict(options)
    weight = options.pop("weight", None)
    inputs = [x] if weight is None else [x, np.array(weight, np.float32)]
    run_both(getattr(zyx.nn.functional, name), getattr(torch.nn.functional, name), nn_device, inputs, **options)


def test_shrink_threshold_glu_modules(nn_device):
    layers = [(nn.Threshold(0.1, 20.0), torch.nn.Threshold(0.1, 20.0)), (nn.Hardshrink(0.3), torch.nn.Hardshrink(0.3)),
              (nn.Softshrink(0.2), torch.nn.Softshrink(0.2)), (nn.Tanhshrink(), torch.nn.Tanhshrink()),
              (nn.GLU(1), torch.nn.GLU(1))]
    for ours, theirs in layers:
        assert repr(ours) == repr(theirs)
    compare_layer(nn.Sequential(*(z for z, _ in layers)), torch.nn.Sequential(*(t for _, t in layers)),
                  [normal(3, 4, 5) * 2], nn_device)


@pytest.mark.parametrize("num_parameters, shape", [(1, (3, 4, 5)), (4, (3, 4, 5)), (4, (2, 4)), (1, (7,))])
def test_prelu_module_learns_its_weight(nn_device, num_parameters, shape):
    reference = torch.nn.PReLU(num_parameters, init=0.1)
    with torch.no_grad():
        reference.weight.copy_(torch.linspace(-0.5, 0.5, num_parameters))
    layer = nn.PReLU(num_parameters, init=0.1, device=nn_device)
    assert repr(layer) == repr(reference) and np.all(nn.PReLU(3, device=nn_device).weight.numpy() == 0.25)
    compare_layer(layer, reference, [normal(*shape)], nn_device)


def test_activation_errors_name_the_shapes(nn_device):
    with pytest.raises(zyx.ShapeError, match=r"\(2, 5\).*even.*5"):
        zyx.nn.functional.glu(zyx.ones(2, 5, device=nn_device), 1)
    with pytest.raises(zyx.ShapeError, match=r"\(3,\).*1 or 4.*\(2, 4, 3\)"):
        zyx.nn.functional.prelu(zyx.ones(2, 4, 3, device=nn_device), zyx.ones(3, device=nn_device))


@pytest.mark.parametrize("name, shape, output_size", [
    ("adaptive_avg_pool1d", (2, 3, 7), 3), ("adaptive_avg_pool1d", (3, 5), 8), ("adaptive_avg_pool1d", (2, 3, 6), 6),
    ("adaptive_avg_pool2d", (2, 3, 7, 5), (3, 2)), ("adaptive_avg_pool2d", (3, 5, 9), 4),
    ("adaptive_avg_pool2d", (2, 2, 5, 7), (None, 3)), ("adaptive_avg_pool2d", (1, 2, 3, 4), (5, 1)),
    ("pixel_shuffle", (2, 8, 3, 5), 2), ("pixel_shuffle", (9, 2, 1), 3), ("pixel_unshuffle", (2, 3, 4, 6), 2),
    ("pixel_unshuffle", (1, 2, 3, 9, 6), 3),
])
def test_adaptive_pooling_and_pixel_shuffle(nn_device, name, shape, output_size):
    """Any input and output sizes (windows overlap where they do not divide), unbatched inputs too."""
    ours, theirs = getattr(zyx.nn.functional, name), getattr(torch.nn.functional, name)
    run_both(lambda x: ours(x, output_size), lambda x: theirs(x, output_size), nn_device, [normal(*shape)])


def test_adaptive_pooling_keeps_float32_under_autocast(nn_device):
    """Its averaging products are written out, not `@`: under autocast a float32 input stays float32, as PyTorch's
    adaptive pooling (in no autocast list) keeps it."""
    x = normal(2, 3, 7, 9)
    with zyx.autocast(zyx.bfloat16):
        out = zyx.nn.functional.adaptive_avg_pool2d(nn_device.tensor(x), (3, 4))
    assert out.dtype == zyx.float32
    np.testing.assert_allclose(out.numpy(), torch.nn.functional.adaptive_avg_pool2d(torch.tensor(x), (3, 4)).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_adaptive_pooling_and_pixel_shuffle_modules(nn_device):
    layers = [(nn.PixelUnshuffle(2), torch.nn.PixelUnshuffle(2)), (nn.AdaptiveAvgPool2d((3, None)),
               torch.nn.AdaptiveAvgPool2d((3, None))), (nn.PixelShuffle(2), torch.nn.PixelShuffle(2)),
              (nn.AdaptiveAvgPool2d(5), torch.nn.AdaptiveAvgPool2d(5)), (nn.Flatten(2), torch.nn.Flatten(2)),
              (nn.AdaptiveAvgPool1d(4), torch.nn.AdaptiveAvgPool1d(4))]
    for ours, theirs in layers:
        assert repr(ours) == repr(theirs)
    compare_layer(nn.Sequential(*(z for z, _ in layers)), torch.nn.Sequential(*(t for _, t in layers)),
                  [normal(2, 3, 6, 10)], nn_device)


def test_pooling_and_shuffle_errors_name_the_shapes(nn_device):
    F = zyx.nn.functional
    with pytest.raises(zyx.ShapeError, match=r"\(2, 3\)"):
        F.adaptive_avg_pool2d(zyx.ones(2, 3, device=nn_device), 2)
    with pytest.raises(zyx.ShapeError, match=r"\(1, 6, 2, 2\).*4"):
        F.pixel_shuffle(zyx.ones(1, 6, 2, 2, device=nn_device), 2)
    with pytest.raises(zyx.ShapeError, match=r"\(1, 1, 3, 4\).*2"):
        F.pixel_unshuffle(zyx.ones(1, 1, 3, 4, device=nn_device), 2)


@pytest.mark.parametrize("shapes, dim", [(((4, 5), (4, 5)), 1), (((2, 3, 1), (1, 3, 4)), 1), (((3, 6), (6,)), -1),
                                         (((5,), (5,)), 0)])
def test_cosine_similarity(nn_device, shapes, dim):
    a, b = (normal(*shape) for shape in shapes)
    run_both(zyx.nn.functional.cosine_similarity, torch.nn.functional.cosine_similarity, nn_device, [a, b], dim=dim)


def test_cosine_similarity_of_zero_and_tiny_vectors(nn_device):
    """Each norm is clamped at eps on its own; a zero vector gives 0; the gradients are torch's (the norms' own)."""
    a = np.array([[0, 0, 0], [1, 2, 3], [1e-9, 0, 0], [1e-5, 0, 0], [0, 0, 0]], np.float32)
    b = np.array([[1, 2, 3], [0, 0, 0], [2e-9, 1e-9, 0], [1e-5, 1e-5, 0], [0, 0, 0]], np.float32)
    value = run_both(zyx.nn.functional.cosine_similarity, torch.nn.functional.cosine_similarity, nn_device,
                     [a, b], rtol=1e-4, atol=1e-5 * 1e8)  # (gradients near eps are ~1e7)
    np.testing.assert_allclose(value.numpy(), [0, 0, 0.02, np.sqrt(0.5), 0], rtol=1e-4, atol=1e-7)
    run_both(zyx.nn.functional.cosine_similarity, torch.nn.functional.cosine_similarity, nn_device, [a, b],
             eps=1e-3, atol=1e-3)


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, 0.5, float("inf")])
@pytest.mark.parametrize("keepdim", [False, True])
def test_pairwise_distance(nn_device, p, keepdim):
    a, b = normal(4, 5), normal(5) * 2
    a[0] = b - 1e-6  # equal rows, but for eps
    run_both(zyx.nn.functional.pairwise_distance, torch.nn.functional.pairwise_distance, nn_device, [a, b], p=p,
             keepdim=keepdim, atol=1e-4)


def test_distance_modules_and_errors(nn_device):
    a, b = normal(3, 4, 2), normal(3, 4, 2)
    for ours, theirs in ((nn.CosineSimilarity(dim=2, eps=1e-6), torch.nn.CosineSimilarity(dim=2, eps=1e-6)),
                         (nn.PairwiseDistance(p=1.0, keepdim=True), torch.nn.PairwiseDistance(p=1.0, keepdim=True))):
        assert repr(ours) == repr(theirs) and ours.parameters() == []
        run_both(ours, theirs, nn_device, [a, b])
    with pytest.raises(zyx.ShapeError, match=r"\(3, 4\).*\(5,\)|\(5,\).*\(3, 4\)"):
        zyx.nn.functional.cosine_similarity(zyx.ones(3, 4, device=nn_device), zyx.ones(5, device=nn_device))


@pytest.mark.parametrize("shape, options", [
    ((2, 3, 7, 6), dict(kernel_size=3)),
    ((2, 3, 7, 6), dict(kernel_size=(2, 3), dilation=(2, 1), padding=(1, 2), stride=(2, 3))),
    ((1, 2, 5, 8), dict(kernel_size=(3, 1), dilation=2, padding=1, stride=2)),
    ((3, 6, 5), dict(kernel_size=(1, 4), stride=(1, 2))),  # unbatched
    ((2, 1, 4, 4), dict(kernel_size=4, padding=(0, 1), stride=(3, 1))),
])
def test_unfold_and_fold(nn_device, shape, options):
    """unfold (im2col) and fold (col2im, overlapping blocks summed) in PyTorch's element order, gradients too (each
    the other's adjoint), and fold(unfold(x))."""
    ours, theirs = zyx.nn.functional, torch.nn.functional
    run_both(lambda x: ours.unfold(x, **options), lambda x: theirs.unfold(x, **options), nn_device, [normal(*shape)])
    output_size = shape[-2:]
    cols = theirs.unfold(torch.tensor(normal(*shape)), **options).numpy()
    run_both(lambda c: ours.fold(c, output_size, **options), lambda c: theirs.fold(c, output_size, **options),
             nn_device, [cols])
    run_both(lambda x: ours.fold(ours.unfold(x, **options), output_size, **options),
             lambda x: theirs.fold(theirs.unfold(x, **options), output_size, **options), nn_device, [normal(*shape)])


def test_unfold_and_fold_modules(nn_device):
    unfold, fold = nn.Unfold((2, 3), dilation=(1, 2), padding=1, stride=2), nn.Fold((5, 7), (2, 3), (1, 2), 1, 2)
    t_unfold, t_fold = torch.nn.Unfold((2, 3), dilation=(1, 2), padding=1, stride=2), torch.nn.Fold((5, 7), (2, 3),
                                                                                                    (1, 2), 1, 2)
    assert (repr(unfold), repr(fold)) == (repr(t_unfold), repr(t_fold))
    compare_layer(nn.Sequential(unfold, fold), torch.nn.Sequential(t_unfold, t_fold), [normal(2, 3, 5, 7)], nn_device)


def test_unfold_and_fold_errors_name_the_shapes(nn_device):
    F = zyx.nn.functional
    with pytest.raises(zyx.ShapeError, match=r"\(5, 5\).*\(2, 3, 4\)"):  # unbatched: the kernel is bigger
        F.unfold(zyx.ones(2, 3, 4, device=nn_device), 5)
    with pytest.raises(zyx.ShapeError, match=r"\(6, 5\)"):
        F.unfold(zyx.ones(6, 5, device=nn_device), 2)
    with pytest.raises(zyx.ShapeError, match=r"\(1, 10, 12\).*10.*4"):  # C*kh*kw not a multiple of kh*kw
        F.fold(zyx.ones(1, 10, 12, device=nn_device), (4, 5), 2)
    with pytest.raises(zyx.ShapeError, match=r"\(1, 8, 11\).*L = 11.*\(4, 5\).*3 x 4"):  # L: 12 blocks there
        F.fold(zyx.ones(1, 8, 11, device=nn_device), (4, 5), 2)
    with pytest.raises(ValueError, match="stride"):
        F.unfold(zyx.ones(1, 1, 4, 4, device=nn_device), 2, stride=0)


@pytest.mark.parametrize("name, shape, channels", [
    ("dropout1d", (40, 50, 3), 2), ("dropout1d", (2000, 5), 1), ("dropout2d", (50, 40, 3, 2), 2),
    ("dropout2d", (50, 40, 6), 2),  # 3-D: taken as (N, C, L), as PyTorch
    ("dropout3d", (40, 50, 2, 2, 3), 2), ("dropout3d", (2000, 2, 1, 3), 1),
])
def test_channel_dropout(nn_device, name, shape, channels):
    """Whole channels zeroed, about a fraction p of them, survivors scaled by exactly 1/(1-p); the gradient is the
    mask times the scale. (PyTorch's random stream differs, so the checks are statistical: 2000 channels, a
    fraction within 5 standard deviations of p.)"""
    p = 0.3
    dropout, layer = getattr(zyx.nn.functional, name), getattr(nn, name.capitalize())(p)
    x = normal(*shape)
    z = zyx.tensor(x, device=nn_device)
    out = dropout(z, p)
    grad, = (out * 1.0).sum().backward([z])
    y, g = out.numpy(), grad.numpy()
    per_channel = (y == 0).reshape(int(np.prod(shape[:channels])), -1)
    assert (per_channel.all(1) | ~per_channel.any(1)).all(), "a channel is zeroed whole or not at all"
    dropped = per_channel.all(1)
    assert abs(dropped.mean() - p) < 0.05
    keep = np.where((y == 0).reshape(shape[:channels] + (-1,)).all(-1), 0.0, 1.0)
    keep = keep.reshape(shape[:channels] + (1,) * (len(shape) - channels))
    np.testing.assert_array_equal(y, (x * np.float32(1 / (1 - p))) * keep)
    np.testing.assert_array_equal(g, np.broadcast_to(keep * np.float32(1 / (1 - p)), shape))
    assert not np.array_equal(y, dropout(z, p).numpy()), "each call draws a new mask"
    assert dropout(z, 0.0) is z and dropout(z, p, training=False) is z and layer.eval()(z) is z
    assert not dropout(z, 1.0).numpy().any()
    assert np.isin(layer.train()(z).numpy() == 0, [True, False]).all()


def test_channel_dropout_errors(nn_device):
    with pytest.raises(zyx.ShapeError, match=r"dropout1d.*\(2, 3, 4, 5\)"):
        zyx.nn.functional.dropout1d(zyx.ones(2, 3, 4, 5, device=nn_device))
    with pytest.raises(zyx.ShapeError, match=r"dropout3d.*\(2, 3\)"):
        zyx.nn.functional.dropout3d(zyx.ones(2, 3, device=nn_device))
    with pytest.raises(ValueError, match="probability"):
        nn.Dropout2d(1.5)
    assert repr(nn.Dropout3d(0.2)) == "Dropout3d(p=0.2)"
