import numpy as np
import pytest

import zyx
from zyx.jit import rewrite
from zyx.jit.device_traits import GPU_VECTOR_WIDTH, DeviceTraits, tensor_core_kinds, tensor_core_local_memory

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
    """The loss and gradients of W7's decoder (bench/gpt_step.py: biases, attention's output projection, GELU MLP,
    the head tied to the embedding) at a small size, its forward under bf16 autocast."""
    rng, F = np.random.default_rng(5), zyx.nn.functional
    shapes = {"wte": (vocab, dim), "wpe": (length, dim)}
    for i in range(layers):
        shapes.update({f"{i}.ln1.w": (dim,), f"{i}.ln1.b": (dim,), f"{i}.qkv.w": (3 * dim, dim),
                       f"{i}.qkv.b": (3 * dim,), f"{i}.proj.w": (dim, dim), f"{i}.proj.b": (dim,),
                       f"{i}.ln2.w": (dim,), f"{i}.ln2.b": (dim,), f"{i}.fc.w": (4 * dim, dim),
                       f"{i}.fc.b": (4 * dim,), f"{i}.out.w": (dim, 4 * dim), f"{i}.out.b": (dim,)})
    p = {name: device.tensor(rng.standard_normal(shape).astype(np.float32) * 0.05) for name, shape in shapes.items()}
    ids = device.tensor(rng.integers(0, vocab, (batch, length + 1)).astype(np.int32))
    heads = lambda x: x.reshape(batch, length, dim // 64, 64).transpose(1, 2)  # noqa: E731
    with zyx.autocast(zyx.bfloat16):
        x = F.embedding(ids[:, :-1], p["wte"]) + F.embedding(zyx.arange(length, device=device), p["wpe"])
        for i in range(layers):
            qkv = F.linear(F.layer_norm(x, (dim,), p[f"{i}.ln1.w"], p[f"{i}.ln1.b"]), p[f"{i}.qkv.w"], p[f"{i}.qkv.b"])
            q, k, v = (heads(qkv[..., j * dim:(j + 1) * dim]) for j in range(3))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, length, dim)
            x = x + F.linear(a, p[f"{i}.proj.w"], p[f"{i}.proj.b"])
            h = F.layer_norm(x, (dim,), p[f"{i}.ln2.w"], p[f"{i}.ln2.b"])
            x = x + F.linear(F.gelu(F.linear(h, p[f"{i}.fc.w"], p[f"{i}.fc.b"])), p[f"{i}.out.w"], p[f"{i}.out.b"])
        logits = F.linear(x, p["wte"])
        loss = F.cross_entropy(logits.reshape(batch * length, vocab), ids[:, 1:].reshape(-1))
    return [loss, *loss.backward(list(p.values()))]


@pytest.fixture
def w7_decoder():
    """`w7_decoder_gradients`, for the tests that schedule W7's step."""
    return w7_decoder_gradients


@pytest.fixture
def hopper_traits():
    """The traits zyx reads from an H200's OpenCL (bench/w7_schedule.py's): tensor cores with warpgroups, 132 SMs."""
    return DeviceTraits(True, 256, 4, 1, 1024, local_memory=48 * 1024, tensor_cores=tensor_core_kinds((9, 0)),
                        tensor_core_memory=tensor_core_local_memory((9, 0), 48 * 1024), compute_units=132)
