"""Sliding windows (zyx/tensor_conv.py `windows`), which convolutions and pooling read: every kernel position as
index arithmetic on one view, on every test device."""
import itertools

import numpy as np
import pytest

import zyx
from zyx.jit.device_traits import DeviceTraits
from zyx.jit.schedule import schedule
from zyx.tensor_conv import windows

RNG = np.random.default_rng(5)


def reference_windows(a: np.ndarray, kernel, stride, dilation) -> np.ndarray:
    """(..., *out, prod(kernel)): element [..., o, w] is a[..., o * stride + w * dilation] (row-major w)."""
    spatial = a.shape[a.ndim - len(kernel):]
    counts = [(n - d * (k - 1) - 1) // s + 1 for n, k, s, d in zip(spatial, kernel, stride, dilation)]
    out = np.empty(a.shape[:a.ndim - len(kernel)] + tuple(counts) + (int(np.prod(kernel)),), a.dtype)
    for o in itertools.product(*(range(c) for c in counts)):
        for position, w in enumerate(itertools.product(*(range(k) for k in kernel))):
            at = tuple(oo * s + ww * d for oo, ww, s, d in zip(o, w, stride, dilation))
            out[(...,) + o + (position,)] = a[(...,) + at]
    return out


@pytest.mark.parametrize("shape, kernel, stride, dilation", [
    ((2, 3, 9, 11), (3, 3), (2, 2), (1, 2)),     # dilated along one axis, strided along both
    ((1, 2, 30, 40), (11, 28), (1, 1), (1, 1)),  # a window of 308 elements
    ((4, 13), (4,), (3,), (2,)),                 # one axis, windows overlapping through the dilation
    ((2, 8, 8), (2, 2), (2, 2), (1, 1)),         # windows side by side (a reshape)
    ((2, 7, 5), (3, 2), (5, 7), (1, 1)),         # strides past the windows: elements skipped
    ((5,), (2,), (1,), (3,)),                    # no leading axes
    ((2, 4, 5, 6, 7), (2, 3, 2), (1, 2, 3), (2, 1, 1)),  # three axes
])
def test_windows_match_numpy(device, shape, kernel, stride, dilation):
    a = RNG.standard_normal(shape).astype(np.float32)
    found = windows(device.tensor(a), kernel, stride, dilation).numpy()
    np.testing.assert_array_equal(found, reference_windows(a, kernel, stride, dilation))


@pytest.mark.parametrize("traits", [DeviceTraits(), DeviceTraits(gpu=True, vector_width=4)], ids=["cpu", "gpu"])
def test_a_large_window_is_read_by_index_not_chosen_among_views(traits):
    """avg_pool2d over 11 x 28 elements is one small kernel: each element's position computed, where a stack of
    308 strided views made a choice among them (890 KB of source, 16 s to compile on PoCL)."""
    out = zyx.CPU().tensor(RNG.standard_normal((2, 3, 30, 40)).astype(np.float32)).avg_pool2d((11, 28), stride=1)
    kernels, _ = schedule([out.node], traits)
    assert len(kernels) == 1 and len(kernels[0].source) < 4000, [(k.name, len(k.source)) for k in kernels]
