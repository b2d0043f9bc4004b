"""Parameters drawn on the host (nn/host_draws.py) where OpenCL's kernels run on this CPU: the kernel's numbers bit
for bit, the same stream positions, and no kernel compiled for them."""
import math

import numpy as np
import pytest

import zyx
from zyx import nn
from zyx.creation import uniform as lazy_uniform
from zyx.nn import host_draws


@pytest.fixture
def opencl():
    device = zyx.OpenCL()
    if not device.kernels_on_host_cpu:
        pytest.skip("the OpenCL device is a GPU: its parameters are drawn by kernels")
    return device


def bits(tensor) -> np.ndarray:
    return tensor.numpy().view(np.uint32)


@pytest.mark.parametrize("fan_in", [1, 3, 5, 50, 512, 784, 3072])
@pytest.mark.parametrize("shape", [(1,), (7, 13), (40000,)])
def test_host_uniform_is_the_kernels_bit_for_bit(opencl, fan_in, shape):
    bound = 1 / math.sqrt(fan_in)
    for low, high in ((-bound, bound), (0.0, bound), (-2 * bound, 0.5)):
        assert host_draws.draws_here(opencl, low, high)
        zyx.manual_seed(fan_in)
        host = host_draws.uniform(shape, low, high, opencl)
        zyx.manual_seed(fan_in)
        kernel = lazy_uniform(shape, low=low, high=high, device=opencl)
        assert np.array_equal(bits(host), bits(kernel))


def test_linear_layers_are_the_kernels_and_leave_the_stream_where_it_was(opencl):
    """A Linear layer drawn on the host equals the kernel's draw of the same bound, and the draws after it too."""
    zyx.manual_seed(11)
    layer, after = nn.Linear(300, 20, device=opencl), zyx.rand(5, device=opencl)
    zyx.manual_seed(11)
    bound = 1 / math.sqrt(300)
    weight, bias = (lazy_uniform(shape, low=-bound, high=bound, device=opencl) for shape in ((20, 300), (20,)))
    again = zyx.rand(5, device=opencl)
    for host, kernel in ((layer.weight, weight), (layer.bias, bias), (after, again)):
        assert np.array_equal(bits(host), bits(kernel))


def test_initialising_layers_compiles_and_schedules_nothing(opencl):
    before = zyx.stats()
    nn.Linear(17, 9, device=opencl), nn.Conv2d(3, 5, 3, device=opencl), nn.GRUCell(6, 4, device=opencl)
    after = zyx.stats()
    for counter in ("kernels_compiled", "graphs_scheduled", "cache_disk_hits", "cache_memory_hits"):
        assert after[counter] == before[counter], counter


def test_the_cpu_reference_device_draws_as_before():
    assert not zyx.CPU().kernels_on_host_cpu


@pytest.mark.parametrize("value, exact", [(0.5, True), (1 / 3, True), (-0.1, True), (1e39, False),
                                          (1 + 2.0 ** -24, False), (1 + 3 * 2.0 ** -24, False),
                                          (1 + 2.0 ** -23, True)])
def test_constants_are_those_the_kernel_literal_rounds_to(value, exact):
    """Doubles halfway between two float32s (the kernel's decimal literal may round either way) and ones past
    float32's range are left to the kernel; the others are numpy's rounding."""
    constant = host_draws._float32_constant(value)
    assert (constant is not None) == exact
    if exact:
        assert constant == np.float32(value)
