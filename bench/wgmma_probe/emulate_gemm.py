"""Checks gemm_source's index math on a CPU OpenCL device (PoCL): cp.async becomes a plain 16-byte copy and each
wgmma a C routine that reads shared memory by the SW128 K-major descriptor model and fills the registers of the
assumed accumulator map. Catches block-order, stage, descriptor-offset and store bugs; not async/ordering ones.
Usage: python3 emulate_gemm.py (next to wgmma_probe.py)."""
import os, re, sys, numpy as np, pyopencl as cl
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.argv = [sys.argv[0], 'emulate', '/tmp/wgmma-emulate-gemm']
import wgmma_probe as w
EMU = r'''
#define cp16(dst, src) (*(__local uint4 *)(SM + (dst)) = *(__global const uint4 *)(src))
float bf(__local uchar *SM, ulong d, int row, int e) {
  uint start = (uint)(d & 0x3FFF) << 4, sbo = (uint)((d >> 32) & 0x3FFF) << 4;
  uint a = start + (row / 8) * sbo + (row % 8) * 128 + e * 2;
  a ^= ((a >> 7) & 7) << 4;
  return as_float((uint)(*(__local ushort *)(SM + a)) << 16);
}
void emu_mma(float *acc, __local uchar *SM, ulong da, ulong db, int t, int n) {
  for (int j = 0; j < n / 8; j++) for (int i = 0; i < 4; i++) {
    int row = 16 * (t / 32) + (t % 32) / 4 + 8 * (i / 2), col = 8 * j + 2 * (t % 4) + i % 2;
    float s = 0; for (int e = 0; e < 16; e++) s += bf(SM, da, row, e) * bf(SM, db, col, e);
    acc[4 * j + i] += s; }
}
'''
def emu_source(bm, bn, stages, wait1):
    s = w.gemm_source(bm, bn, stages, wait1, hide=False)
    s = re.sub(r'inline void cp16\(.*?\n\}\}?\n', '', s, flags=re.S)
    s = s.replace('inline void load_slice(uint sbase,', 'inline void load_slice(__local uchar *SM, uint sbase,')
    s = s.replace('load_slice(sbase', 'load_slice((__local uchar *)smem, sbase')
    s = s.replace('uint raw = (uint)(ulong)smem', 'uint raw = 0u')
    s = re.sub(r'asm volatile\("\{\\n\.reg.*?: "memory"\);', f'emu_mma(acc, (__local uchar *)smem, da, db, t, {bn});', s)
    s = re.sub(r'asm volatile\(".*?" ::: "memory"\);', ';', s)
    assert 'asm' not in s, s[:3000]
    return EMU + s
ctx = cl.create_some_context(interactive=False); q = cl.CommandQueue(ctx)
rng = np.random.default_rng(0)
M, N, K = 256, 512, 512
a_bits, a = w.bf16_bits(rng.standard_normal((M, K)).astype(np.float32))
b_bits, b = w.bf16_bits(rng.standard_normal((N, K)).astype(np.float32))
ref = a @ b.T
for cfg in [(128, 256, 3, False), (128, 256, 4, True), (128, 128, 6, True), (256, 128, 4, False), (64, 256, 4, False)]:
    prg = cl.Program(ctx, emu_source(*cfg)).build()
    mf = cl.mem_flags
    A = cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=a_bits); B = cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=b_bits)
    C = cl.Buffer(ctx, mf.READ_WRITE, M * N * 4)
    bm, bn = cfg[:2]
    prg.gemm(q, ((M // bm) * (N // bn) * bm * 2,), (bm * 2,), A, B, C, np.int32(M), np.int32(N), np.int32(K))
    out = np.empty((M, N), np.float32); cl.enqueue_copy(q, out, C); q.finish()
    err = np.abs(out - ref).max() / np.abs(ref).max()
    print(f"{'PASS' if err < 1e-5 else 'FAIL'} emulated gemm {cfg} {M}x{N}x{K}: max rel err {err:.1e}", flush=True)
