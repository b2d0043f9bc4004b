"""Philox4x32-10: the numpy reference against Random123's known answers, and the OpenCL and CUDA helpers against
numpy."""
import shutil
import subprocess

import numpy as np
import pyopencl as cl
import pytest

from zyx.trace import philox
from zyx.trace.philox import CUDA_SOURCE, OPENCL_SOURCE, philox4x32_words, philox_uniform

# Random123 kat_vectors: counter (4 words), key (2 words) -> output (4 words).
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_known_answer_vectors(counter, key, expected):
    assert philox4x32_words(counter, key) == expected


def test_uniform_uses_word_zero_of_counter_offset_plus_index():
    seed, offset = 0x0123456789ABCDEF, 2**32 - 2
    values = philox_uniform(seed, offset, 4)
    for i, value in enumerate(values):
        counter = offset + i
        word0 = philox4x32_words((counter & 0xFFFFFFFF, counter >> 32, 0, 0), (seed & 0xFFFFFFFF, seed >> 32))[0]
        assert value == np.float32((word0 >> 8) * 2.0**-24)


def test_uniform_is_float32_in_unit_interval_and_roughly_uniform():
    values = philox_uniform(seed=7, offset=0, count=100_000)
    assert values.dtype == np.float32 and values.shape == (100_000,)
    assert values.min() >= 0.0 and values.max() < 1.0
    assert abs(values.mean() - 0.5) < 0.01
    assert np.histogram(values, bins=10, range=(0, 1))[0].min() > 9_500


def test_uniform_streams_are_slices_of_one_sequence():
    whole = philox_uniform(seed=3, offset=10, count=100)
    assert np.array_equal(whole[40:], philox_uniform(seed=3, offset=50, count=60))
    assert not np.array_equal(whole, philox_uniform(seed=4, offset=10, count=100))


def test_uniform_counter_wraps_at_2_to_64():
    assert np.array_equal(philox_uniform(1, 2**64 - 1, 2), np.concatenate([philox_uniform(1, 2**64 - 1, 1), philox_uniform(1, 0, 1)]))


@pytest.mark.parametrize("seed, offset", [(0, 0), (0x0123456789ABCDEF, 2**32 - 3), (2**64 - 1, 2**64 - 2)])
def test_int64_form_gives_the_same_bits(seed, offset):
    """The form torch runs (int64 arithmetic, 16-bit partial products), here on numpy int64, carries and wraps alike."""
    bits = philox.philox_bits_int64(np.arange(6, dtype=np.int64), philox.philox_words(seed, offset))
    assert bits.dtype == np.int64
    np.testing.assert_array_equal(bits.astype(np.float32) * np.float32(2.0**-24), philox_uniform(seed, offset, 6))


def test_a_draw_of_several_blocks_is_the_same_counters():
    """Drawn UNIFORM_BLOCK counters at a time, across block ends and the 2**64 wrap, the numbers are the unblocked
    ones (the int64 form draws all counters at once)."""
    count, offset = 2 * philox.UNIFORM_BLOCK + 7, 2**64 - philox.UNIFORM_BLOCK - 3
    bits = philox.philox_bits_int64(np.arange(count, dtype=np.int64), philox.philox_words(9, offset))
    np.testing.assert_array_equal(bits.astype(np.float32) * np.float32(2.0**-24), philox_uniform(9, offset, count))


def test_zero_count():
    assert philox_uniform(1, 0, 0).shape == (0,)


def test_opencl_source_is_generated_from_the_python_constants():
    for constant in (philox.MULTIPLIER_0, philox.MULTIPLIER_1, philox.KEY_BUMP_0, philox.KEY_BUMP_1):
        assert f"{constant:#010x}u" in OPENCL_SOURCE
    assert f"< {philox.ROUNDS};" in OPENCL_SOURCE


# CUDA_SOURCE compiled for the host, CUDA's __umulhi written out: the bits for indexes 0..5 of the words given
CUDA_ON_HOST = """#include <cstdio>
#include <cstdlib>
static unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
""" + CUDA_SOURCE + """
int main(int argc, char **argv) {
    long long w[4];
    for (int k = 0; k < 4; k++) w[k] = atoll(argv[k + 1]);
    for (long long i = 0; i < 6; i++) printf("%lld\\n", zyx_philox_bits<long long>(i, w[0], w[1], w[2], w[3]));
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler to build the CUDA helper for the host")
def test_cuda_source_gives_the_int64_forms_bits(tmp_path):
    """zyx.Torch('cuda') draws through CUDA_SOURCE (torch's jiterator); its arithmetic, run on the host, matches."""
    (tmp_path / "philox.cpp").write_text(CUDA_ON_HOST)
    subprocess.run(["g++", "-O1", "-o", str(tmp_path / "philox"), str(tmp_path / "philox.cpp")], check=True)
    for seed, offset in [(0, 0), (0x0123456789ABCDEF, 2**32 - 3), (2**64 - 1, 2**64 - 2)]:
        words = philox.philox_words(seed, offset)
        printed = subprocess.run([str(tmp_path / "philox"), *map(str, words)], check=True, capture_output=True,
                                 text=True).stdout.split()
        expected = philox.philox_bits_int64(np.arange(6, dtype=np.int64), words)
        assert [int(bits) for bits in printed] == expected.tolist()


KERNEL = OPENCL_SOURCE + """
__kernel void draw(__global float *out, ulong seed, ulong offset) {
    size_t i = get_global_id(0);
    out[i] = zyx_philox_uniform(seed, offset + i);
}
"""


def _device_ordinals():
    from zyx.runtime.platforms import describe_devices

    return list(range(len(describe_devices())))


@pytest.fixture(scope="module", params=_device_ordinals())
def draw_on_device(request):
    """A function (seed, offset, count) -> float32 array computed by OPENCL_SOURCE on one OpenCL device."""
    from zyx.runtime.platforms import select_device_by_ordinal

    context = cl.Context([select_device_by_ordinal(request.param)])
    queue = cl.CommandQueue(context)
    try:
        kernel = cl.Kernel(cl.Program(context, KERNEL).build(), "draw")
    except cl.RuntimeError as error:  # e.g. the pip wheel's PoCL 3.0-rc2 on a CPU its LLVM does not know
        reason = next((line for line in str(error).splitlines() if line.startswith("error:")), "build failed")
        pytest.skip(f"device opencl:{request.param} cannot build programs: {reason}")

    def draw(seed, offset, count):
        out = np.empty(count, dtype=np.float32)
        device_out = cl.Buffer(context, cl.mem_flags.WRITE_ONLY, out.nbytes)
        kernel(queue, (count,), None, device_out, np.uint64(seed), np.uint64(offset))
        cl.enqueue_copy(queue, out, device_out)
        return out

    return draw


@pytest.mark.parametrize(
    "seed, offset",
    [(0, 0), (0x0123456789ABCDEF, 2**32 - 1000), (2**64 - 1, 2**64 - 500), (42, 5 * 2**32 + 17)],
)
def test_opencl_matches_numpy_bit_for_bit(draw_on_device, seed, offset):
    count = 4096
    drawn = draw_on_device(seed, offset, count)
    expected = philox_uniform(seed, offset, count)
    assert np.array_equal(drawn.view(np.uint32), expected.view(np.uint32))
