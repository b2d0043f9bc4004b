"""Philox4x32-10, the counter-based random generator used everywhere in Zyx.

A random tensor is a pure function of (seed, offset, index): no generator state lives on a device, so a
kernel can draw element i without reading anything but its own counter. This module is the one place the
algorithm and its constants are written down; the numpy reference (`_rounds_in_place`), the int64 form torch runs
(torch has no uint64 arithmetic: `_rounds_int64`) and the OpenCL, CUDA and WGSL helpers are all built from the
constants and the key schedule below; the tests hold the numpy reference to Random123's known-answer vectors and the
other forms to it bit for bit.

Reference: Salmon et al., "Parallel random numbers: as easy as 1, 2, 3" (SC'11), and Random123's KAT vectors.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

ROUNDS = 10
MULTIPLIER_0 = 0xD2511F53
MULTIPLIER_1 = 0xCD9E8D57
KEY_BUMP_0 = 0x9E3779B9  # golden ratio
KEY_BUMP_1 = 0xBB67AE85  # sqrt(3) - 1
FLOAT_MANTISSA_BITS = 24  # a float32 holds 24 significant bits, so (bits >> 8) * 2**-24 is exact

_WORD_MASK = 0xFFFFFFFF
_WORD = np.uint64(_WORD_MASK)
_SHIFT_32 = np.uint64(32)


def _round_keys(key: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
    """The two key words of each of the ROUNDS rounds: the key, bumped by the Weyl constants before each next one."""
    k0, k1 = key
    for round_index in range(ROUNDS):
        if round_index > 0:
            k0 = (k0 + KEY_BUMP_0) & _WORD_MASK
            k1 = (k1 + KEY_BUMP_1) & _WORD_MASK
        yield k0, k1


def _rounds_in_place(words: list[np.ndarray], key: Sequence[int], low: np.ndarray, high: np.ndarray) -> None:
    """The ten rounds on uint64 arrays of 32-bit words, overwritten with the output; `low` and `high` take the
    products (each 32 x 32 bits: no uint64 overflow). Nothing is allocated per round: a fresh uint64 temporary of a
    large draw is fresh pages, and those page faults were three quarters of a new process's first draw."""
    c0, c1, c2, c3 = words
    for k0, k1 in _round_keys(key):
        np.multiply(c0, np.uint64(MULTIPLIER_0), out=low)
        np.multiply(c2, np.uint64(MULTIPLIER_1), out=high)
        np.right_shift(high, _SHIFT_32, out=c0)
        c0 ^= c1
        c0 ^= np.uint64(k0)
        np.bitwise_and(high, _WORD, out=c1)
        np.right_shift(low, _SHIFT_32, out=c2)
        c2 ^= c3
        c2 ^= np.uint64(k1)
        np.bitwise_and(low, _WORD, out=c3)


def _rounds_int64(counter: Sequence[Any], key: Sequence[Any]) -> tuple:
    """The ten rounds on 32-bit words held in int64 arrays (torch's) or Python ints."""
    c0, c1, c2, c3 = counter
    for k0, k1 in _round_keys(key):
        hi0, lo0 = _mulhilo_int64(MULTIPLIER_0, c0)
        hi1, lo1 = _mulhilo_int64(MULTIPLIER_1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def _mulhilo_int64(multiplier: int, word: Any) -> tuple[Any, Any]:
    """(high, low) 32-bit halves of multiplier * word in int64 arithmetic: the product of two 32-bit values
    overflows int64, so the word is split in 16-bit halves whose partial products (< 2**48) cannot."""
    low = multiplier * (word & 0xFFFF)
    high = multiplier * (word >> 16)
    low_sum = low + ((high & 0xFFFF) << 16)
    return (high >> 16) + (low_sum >> 32), low_sum & _WORD_MASK


def philox4x32_words(counter: Sequence[int], key: Sequence[int]) -> tuple[int, int, int, int]:
    """All four output words for one block, as Python ints: what the published known-answer tests list."""
    words = [np.array([word], dtype=np.uint64) for word in counter]
    _rounds_in_place(words, key, np.empty(1, np.uint64), np.empty(1, np.uint64))
    return tuple(int(word[0]) for word in words)  # type: ignore[return-value]


UNIFORM_BLOCK = 1 << 14  # counters drawn at once: the rounds' uint64 words (~0.8 MB) stay in the CPU's cache


def philox_uniform(seed: int, offset: int, count: int) -> np.ndarray:
    """float32 uniforms in [0, 1): element i comes from 64-bit counter offset + i (wrapping) under key seed. Drawn
    UNIFORM_BLOCK counters at a time into the same words: whole, a 400k draw's words outgrow the cache and it takes
    2-3 times as long (60 ms against 25 on a 2-core EPYC), slower than PoCL's kernel."""
    values = np.empty(count, dtype=np.float32)
    block = max(1, min(count, UNIFORM_BLOCK))
    buffers = [np.empty(block, np.uint64) for _ in range(6)]
    index = np.arange(block, dtype=np.uint64)
    key = philox_words(seed, offset)[:2]
    for start in range(0, count, block):
        size = min(block, count - start)
        words = [buffer[:size] for buffer in buffers[:4]]
        low, high = (buffer[:size] for buffer in buffers[4:])
        np.add(index[:size], np.uint64((offset + start) % 2**64), out=low)  # wraps like the device's ulong
        np.bitwise_and(low, _WORD, out=words[0])
        np.right_shift(low, _SHIFT_32, out=words[1])
        words[2].fill(0)
        words[3].fill(0)
        _rounds_in_place(words, key, low, high)
        np.right_shift(words[0], np.uint64(32 - FLOAT_MANTISSA_BITS), out=low)
        np.multiply(low, np.float32(2.0**-FLOAT_MANTISSA_BITS), out=values[start:start + size], casting="unsafe")
    return values


def philox_bits_int64(index: Any, words: Sequence[Any]) -> Any:
    """The FLOAT_MANTISSA_BITS top bits of word 0 for counters offset + index, in int64 arithmetic, for array
    libraries without uint64 (torch): `index` an int64 array, `words` (seed low, seed high, offset low, offset
    high) 32-bit Python ints or 0-d int64 arrays. Bit-identical to `philox_uniform`'s (times 2**24)."""
    seed_lo, seed_hi, offset_lo, offset_hi = words
    counter_lo = index + offset_lo  # index < 2**62: no int64 overflow; the carry goes to the high word
    counter_hi = ((counter_lo >> 32) + offset_hi) & _WORD_MASK
    counter_lo = counter_lo & _WORD_MASK
    zero = counter_lo * 0
    bits = _rounds_int64((counter_lo, counter_hi, zero, zero), (seed_lo, seed_hi))[0]
    return bits >> (32 - FLOAT_MANTISSA_BITS)


def philox_words(seed: int, offset: int) -> tuple[int, int, int, int]:
    """(seed low, seed high, offset low, offset high) 32-bit words, as `philox_bits_int64` takes them."""
    seed, offset = seed % 2**64, offset % 2**64
    return seed & _WORD_MASK, seed >> 32, offset & _WORD_MASK, offset >> 32


def _c_rounds(word: str, mul_hi: str) -> str:
    """The ten rounds in C on 32-bit words c0..c3 and k0, k1 of type `word`, `mul_hi` naming the high half of a
    32-bit product (OpenCL's mul_hi, CUDA's __umulhi)."""
    return f"""for (int round_index = 0; round_index < {ROUNDS}; round_index++) {{
        if (round_index > 0) {{ k0 += {KEY_BUMP_0:#010x}u; k1 += {KEY_BUMP_1:#010x}u; }}
        {word} hi0 = {mul_hi}({MULTIPLIER_0:#010x}u, c0), lo0 = {MULTIPLIER_0:#010x}u * c0;
        {word} hi1 = {mul_hi}({MULTIPLIER_1:#010x}u, c2), lo1 = {MULTIPLIER_1:#010x}u * c2;
        c0 = hi1 ^ c1 ^ k0; c1 = lo1; c2 = hi0 ^ c3 ^ k1; c3 = lo0;
    }}"""


def _opencl_source() -> str:
    scale = f"{(2.0 ** -FLOAT_MANTISSA_BITS).hex()}f"  # hex float: exact, no decimal rounding
    return f"""
static inline float zyx_philox_uniform(ulong seed, ulong counter) {{
    uint c0 = (uint)counter, c1 = (uint)(counter >> 32), c2 = 0u, c3 = 0u;
    uint k0 = (uint)seed, k1 = (uint)(seed >> 32);
    {_c_rounds("uint", "mul_hi")}
    return (float)(c0 >> {32 - FLOAT_MANTISSA_BITS}) * {scale};
}}
"""


def _cuda_source() -> str:
    """One elementwise function for torch's jiterator: int64 index -> `philox_bits_int64`'s bits, the words as
    arguments (each < 2**32), so that zyx.Torch('cuda') draws a random tensor in one kernel, not ~270."""
    return f"""template <typename T> T zyx_philox_bits(T index, T seed_lo, T seed_hi, T offset_lo, T offset_hi) {{
    unsigned long long counter = (unsigned long long)index +
        (((unsigned long long)offset_hi << 32) | (unsigned long long)offset_lo);
    unsigned int c0 = (unsigned int)counter, c1 = (unsigned int)(counter >> 32), c2 = 0u, c3 = 0u;
    unsigned int k0 = (unsigned int)seed_lo, k1 = (unsigned int)seed_hi;
    {_c_rounds("unsigned int", "__umulhi")}
    return (T)(c0 >> {32 - FLOAT_MANTISSA_BITS});
}}"""


OPENCL_SOURCE: str = _opencl_source()
"""OpenCL C defining `zyx_philox_uniform(seed, counter)`, bit-identical to `philox_uniform`; paste into a program."""
CUDA_SOURCE: str = _cuda_source()
"""CUDA C++ for `torch.cuda.jiterator`: `zyx_philox_bits(index, seed_lo, seed_hi, offset_lo, offset_hi)`, the
bits `philox_bits_int64` gives (int64 in, int64 out)."""


def _wgsl_source() -> str:
    """WGSL has no 64-bit integers and no mul_hi: the counter is a pair of u32 (carry added by hand) and the high
    half of each product is put together from 16-bit halves."""
    scale = f"{(2.0 ** -FLOAT_MANTISSA_BITS).hex()}f"
    return f"""
fn zyx_mul_hi(a: u32, b: u32) -> u32 {{
    let a0 = a & 0xffffu; let a1 = a >> 16u; let b0 = b & 0xffffu; let b1 = b >> 16u;
    let low = a0 * b0; let cross0 = a1 * b0; let cross1 = a0 * b1;
    let middle = (low >> 16u) + (cross0 & 0xffffu) + (cross1 & 0xffffu);
    return a1 * b1 + (cross0 >> 16u) + (cross1 >> 16u) + (middle >> 16u);
}}
fn zyx_philox_uniform(seed: vec2<u32>, offset: vec2<u32>, index: u32) -> f32 {{
    let low = offset.x + index;
    var c0 = low; var c1 = offset.y + select(0u, 1u, low < index); var c2 = 0u; var c3 = 0u;
    var k0 = seed.x; var k1 = seed.y;
    for (var round_index = 0; round_index < {ROUNDS}; round_index++) {{
        if (round_index > 0) {{ k0 += {KEY_BUMP_0:#010x}u; k1 += {KEY_BUMP_1:#010x}u; }}
        let hi0 = zyx_mul_hi({MULTIPLIER_0:#010x}u, c0); let lo0 = {MULTIPLIER_0:#010x}u * c0;
        let hi1 = zyx_mul_hi({MULTIPLIER_1:#010x}u, c2); let lo1 = {MULTIPLIER_1:#010x}u * c2;
        c0 = hi1 ^ c1 ^ k0; c1 = lo1; c2 = hi0 ^ c3 ^ k1; c3 = lo0;
    }}
    return f32(c0 >> {32 - FLOAT_MANTISSA_BITS}u) * {scale};
}}
"""


WGSL_SOURCE: str = _wgsl_source()
"""WGSL defining `zyx_philox_uniform(seed, offset, index)` (seed and offset as (low, high) u32 pairs), bit-identical
to `philox_uniform`."""
