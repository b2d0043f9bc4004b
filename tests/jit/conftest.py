import pytest

import zyx
from zyx.jit import rewrite
from zyx.jit.device_traits import GPU_VECTOR_WIDTH, DeviceTraits

H200_UNITS = 132


@pytest.fixture
def dev():
    """The OpenCL device (PoCL here, a GPU where there is one)."""
    return zyx.OpenCL()


@pytest.fixture
def launched():
    """Kernels launched realizing the tensors given."""
    def count(*tensors) -> int:
        zyx.reset_stats()
        zyx.realize(*tensors)
        return zyx.stats()["kernels_launched"]
    return count


def shaped_as(dev, monkeypatch, compute_units: int = 0):
    """The OpenCL device scheduling GPU-shaped kernels, as for a GPU of `compute_units` (0: unknown)."""
    monkeypatch.setattr(dev, "traits", DeviceTraits(True, dev.traits.group_size, GPU_VECTOR_WIDTH,
                                                    compute_units=compute_units))
    dev.forget_programs()  # programs scheduled for the device's own shapes must not be found
    yield dev
    dev.forget_programs()  # nor these, once the device's own traits are back


@pytest.fixture
def gpu(dev, monkeypatch):
    """The OpenCL device, scheduling GPU-shaped kernels (as ZYX_GPU_KERNELS=1 does, float4 lanes included)."""
    yield from shaped_as(dev, monkeypatch)


@pytest.fixture
def h200(dev, monkeypatch):
    """The OpenCL device, scheduling GPU-shaped kernels as for the H200's 132 compute units (rewrite.py splits
    the column sums too narrow for them: here the small ones too, so that tests run W7's forms at small sizes)."""
    monkeypatch.setattr(rewrite, "GPU_COLUMN_MIN_BYTES", 0)
    yield from shaped_as(dev, monkeypatch, H200_UNITS)


@pytest.fixture
def h200_sized(dev, monkeypatch):
    """GPU-shaped kernels as for the H200 at full size: its compute units (what column sums are split for, and how
    many work groups fill it: launch groups), the column split from its own threshold (unlike `h200`)."""
    monkeypatch.setattr(dev.runtime, "compute_units", H200_UNITS)
    yield from shaped_as(dev, monkeypatch, H200_UNITS)


@pytest.fixture(params=["own kernels", "GPU-shaped"])
def shaped(request, dev):
    """The OpenCL device scheduling its own kernels, then GPU-shaped ones."""
    return request.getfixturevalue("gpu") if request.param == "GPU-shaped" else dev


@pytest.fixture(scope="module")
def cores():
    """The OpenCL device where it has tensor cores (an NVIDIA GPU of compute capability 8.0 or newer), else skip."""
    try:
        dev = zyx.OpenCL()
    except RuntimeError as error:
        pytest.skip(f"no OpenCL device: {error}")
    if not dev.traits.tensor_cores:
        pytest.skip("the OpenCL device has no tensor cores (an NVIDIA GPU of compute capability 8.0 or newer)")
    return dev
