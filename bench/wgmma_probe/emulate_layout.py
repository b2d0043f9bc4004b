"""Checks wgmma_probe.run_layout's host side (images, descriptors, accumulator map, diagnostics) on a CPU OpenCL
device: the probe kernel is replaced by a Python wgmma that reads the image by the K-major descriptor model
(swizzled: rows at the swizzle width, 8-row groups at SBO; interleave: core matrices at LBO along K, SBO along M/N).
Expected: every K-major variant PASSes; with 'alt' the swapped interleave encodings FAIL (MN-major variants are
left out: the model covers K-major only). Usage: python3 emulate_layout.py [N,..] [alt] (next to wgmma_probe.py)."""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.argv = [sys.argv[0], 'layout', '/tmp/wgmma-emulate-layout'] + sys.argv[1:3]
import numpy as np, pyopencl as cl, wgmma_probe as w
ctx = cl.create_some_context(interactive=False); dev = ctx.devices[0]; q = cl.CommandQueue(ctx)
w.nvidia = lambda: (ctx, dev, q)
MODE_W = {1: 128, 2: 64, 3: 32}
def read(img, d, rows, k16):
    st, lbo, sbo, mode = (d & 0x3FFF) << 4, ((d >> 16) & 0x3FFF) << 4, ((d >> 32) & 0x3FFF) << 4, d >> 62
    out = np.zeros((rows, 16), np.uint16)
    for r in range(rows):
        for e in range(16):
            if mode:
                W = MODE_W[mode]; a = w.swizzle(st + (r // 8) * sbo + (r % 8) * W + e * 2, W)
            else:
                a = st + (r // 8) * sbo + (e // 8) * lbo + (r % 8) * 16 + (e % 8) * 2
            out[r, e] = img[a // 2]
    return (out.astype(np.uint32) << 16).view(np.float32)
class Prog:
    def probe(self, q, gs, ls, bi, nvec, boff, bd, bo):
        img = np.empty(int(nvec) * 8, np.uint16); cl.enqueue_copy(q, img, bi)
        descs = np.empty(bd.size // 8, np.uint64); cl.enqueue_copy(q, descs, bd)
        n = bo.size // 4 // 64
        acc = np.zeros((64, n), np.float32)
        for s in range(len(descs) // 2):
            da, db = int(descs[2 * s]), int(descs[2 * s + 1]) + (int(boff) >> 4)
            acc += read(img, da, 64, 1) @ read(img, db, n, 1).T
        r, c = w.accumulator_coords(n)
        cl.enqueue_copy(q, bo, np.ascontiguousarray(acc[r, c])); q.finish()
w.build = lambda *a: Prog()
k_major_only = w.variants
w.variants = lambda n, k: [v for v in k_major_only(n, k) if v[3] == 0]
w.run_layout()
