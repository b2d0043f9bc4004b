"""Work-group reductions combined by warp shuffles (zyx/jit/transforms/group.py, `_warp_tree`): on PoCL with the
shuffle emulated through local memory (every item takes part, as in a warp), then on an NVIDIA GPU with shfl.sync;
row sums and maxima of odd lengths, softmax, layer norm and their gradients, column sums, against numpy and torch."""
import dataclasses

import numpy as np
import pytest
import torch

import zyx
import zyx.nn.functional as F
from zyx.jit import print_opencl, program_store
from zyx.jit import schedule as schedule_module
from zyx.jit.device_traits import GPU_VECTOR_WIDTH, DeviceTraits
from zyx.jit.kernel_ir import Barrier, WarpShuffle, walk
from zyx.jit.schedule import schedule

from test_attention_cores import _emulated_shuffle, _emulating_printer  # (shfl.sync through local memory)

RNG = np.random.default_rng(23)


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.fixture
def shuffled(dev, monkeypatch, tmp_path):
    """The OpenCL device (PoCL) scheduling GPU-shaped kernels as for a device with warp shuffles, printed as
    emulations (each kernel launched alone: a launch group's printer declares no scratch); its programs kept in a
    store of their own."""
    monkeypatch.setattr(DeviceTraits, "warp_shuffles", property(lambda self: True))
    monkeypatch.setitem(print_opencl.STATEMENTS, WarpShuffle, _emulated_shuffle)
    _, launch, version = schedule_module.PRINTERS["opencl"]
    monkeypatch.setitem(schedule_module.PRINTERS, "opencl", (_emulating_printer, launch, version))
    monkeypatch.setenv("ZYX_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(program_store, "_default", [])
    monkeypatch.setattr(dev, "traits", DeviceTraits(True, dev.traits.group_size, GPU_VECTOR_WIDTH,
                                                    group_launches=False))
    dev.forget_programs()
    yield dev
    dev.forget_programs()


def grouped(kernels):
    return [k for k in kernels if k.ir.kind == "g"]


def shuffles_of(kernel) -> list[int]:
    return [s.mask for s in walk(kernel.ir.body) if isinstance(s, WarpShuffle)]


def check_rows(device, length, traits):
    """Row sums and maxima, softmax, layer norm and layer norm's gradients of rows of `length`, against torch; the
    work-group kernels `traits` schedule for them."""
    a, g = data(5, length), data(5, length)
    x = device.tensor(a)
    ours = [x.sum(-1), x.max(-1), x.softmax(-1), F.layer_norm(x, (length,))]
    ours += list((F.layer_norm(x, (length,)) * device.tensor(g)).sum().backward([x]))
    t = torch.tensor(a, requires_grad=True)
    theirs = [t.sum(-1), t.max(-1).values, t.softmax(-1), torch.nn.functional.layer_norm(t, (length,))]
    theirs += list(torch.autograd.grad((theirs[-1] * torch.tensor(g)).sum(), [t]))
    kernels = grouped(schedule([out.node for out in ours], traits)[0])
    zyx.realize(*ours)
    for out, expected in zip(ours, theirs):
        np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-4, atol=1e-4)
    return kernels


@pytest.mark.parametrize("length", [256, 768, 1000, 5003])
def test_rows_reduced_by_warp_shuffles_match_torch(shuffled, length):
    """Each tree of a row's work group: butterfly shuffles over 16, 8, 4, 2, 1 lanes, then one barrier before the
    items add the warps' totals (where the local-memory tree took a barrier a level)."""
    kernels = check_rows(shuffled, length, shuffled.traits)
    assert kernels
    for kernel in kernels:
        masks, barriers = shuffles_of(kernel), sum(isinstance(s, Barrier) for s in walk(kernel.ir.body))
        trees = len(masks) // 5
        assert trees and masks == [16, 8, 4, 2, 1] * trees and barriers == trees, (kernel.name, masks, barriers)


def test_column_sums_shuffle_only_across_their_slices(shuffled, monkeypatch):
    """A column sum's group takes 8 adjacent columns, its items in slices of 8 along them: shuffles over 16 and 8
    lanes only (lanes 8 apart hold the same column), each warp's 8 column totals through local memory."""
    monkeypatch.setenv("ZYX_COLUMN_GROUPS", "0")
    a = data(600, 3072)
    out = shuffled.tensor(a).sum(0)
    kernels = grouped(schedule([out.node], shuffled.traits)[0])  # (before it is realized)
    assert any(shuffles_of(kernel) == [16, 8] for kernel in kernels), [shuffles_of(k) for k in kernels]
    np.testing.assert_allclose(out.numpy(), a.sum(0), rtol=1e-4, atol=1e-4)


def test_without_warp_shuffles_the_tree_is_local_memory(gpu, monkeypatch):
    """Devices without shuffles (here: GPU-shaped traits without tensor cores, or ZYX_WARP_SHUFFLES=0 where there
    are) keep the local-memory tree."""
    x = gpu.tensor(data(5, 768))
    assert not gpu.traits.warp_shuffles
    kernels = grouped(schedule([x.sum(-1).node], gpu.traits)[0])
    assert kernels and not any(shuffles_of(kernel) for kernel in kernels)
    monkeypatch.setenv("ZYX_WARP_SHUFFLES", "0")
    assert not dataclasses.replace(gpu.traits, tensor_cores=("bf16",)).warp_shuffles


@pytest.mark.parametrize("length", [768, 5003])
def test_on_an_nvidia_gpu_the_shuffles_match_torch(cores, length):
    """The same rows with shfl.sync itself (a device with tensor cores)."""
    assert cores.traits.warp_shuffles
    assert any(shuffles_of(kernel) for kernel in check_rows(cores, length, cores._shaping_traits()))
