import pytest

import zyx
from zyx.jit.schedule import GPU_VECTOR_WIDTH, DeviceTraits


@pytest.fixture
def dev():
    """The OpenCL device (PoCL here, a GPU where there is one)."""
    return zyx.OpenCL()


@pytest.fixture
def gpu(dev, monkeypatch):
    """The OpenCL device, scheduling GPU-shaped kernels (as ZYX_GPU_KERNELS=1 does, float4 lanes included)."""
    monkeypatch.setattr(dev, "traits", DeviceTraits(True, dev.traits.group_size, GPU_VECTOR_WIDTH))
    dev.forget_programs()  # programs scheduled for the device's own shapes must not be found
    yield dev
    dev.forget_programs()  # nor these, once the device's own traits are back


@pytest.fixture(params=["own kernels", "GPU-shaped"])
def shaped(request, dev):
    """The OpenCL device scheduling its own kernels, then GPU-shaped ones."""
    return request.getfixturevalue("gpu") if request.param == "GPU-shaped" else dev
