import importlib
import pathlib
import sys

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


def w7_decoder_gradients(device, layers, batch, length, dim, vocab):
    """The loss and gradients of W7's step (bench/gpt_step.py's decoder and initialisation: biases, attention's
    output projection, GELU MLP, the head tied to the embedding) at a small size, its forward under bf16 autocast."""
    gpt_step = _bench_module("gpt_step")
    cfg = gpt_step.Config(layers=layers, dim=dim, heads=dim // 64, context=length, batch=batch, vocab=vocab)
    p = {name: device.tensor(value) for name, value in gpt_step.initial_parameters(cfg).items()}
    tokens = gpt_step.batch_of_tokens(cfg)
    ids, targets, positions = (device.tensor(tokens[name]) for name in ("ids", "targets", "positions"))
    with zyx.autocast(zyx.bfloat16):
        loss = gpt_step.gpt_loss(zyx.nn.functional, p, ids, targets, positions, cfg)
    return [loss, *loss.backward(list(p.values()))]


def _bench_module(name: str):
    """A module of bench/ (its scripts import each other by name)."""
    bench = str(pathlib.Path(__file__).resolve().parents[2] / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module(name)


@pytest.fixture
def w7_decoder():
    """`w7_decoder_gradients`, for the tests that schedule W7's step."""
    return w7_decoder_gradients


@pytest.fixture
def hopper_traits():
    """The traits zyx reads from an H200's OpenCL (bench/w7_schedule.py's): tensor cores with warpgroups, 132 SMs."""
    return _bench_module("w7_schedule").h200_traits()
