"""The registers, spills and local memory NVIDIA's compiler gives the fused attention kernels of a training step.

    python bench/attention_registers.py [--batch 16] [--heads 12] [--context 1024] [--head-dim 64] [--full]

Schedules scaled_dot_product_attention's forward and backward (causal unless --full) for the OpenCL device, as a
step would (the ZYX_ATTENTION_* settings apply), builds each fused kernel's source again with -cl-nv-verbose and
prints the compiler's ptxas lines under the kernel's name, group size and outputs: register pressure and local
memory decide the tiles' speed on NVIDIA (attention_tiled.py, attention_grad_tiled.py). Needs an NVIDIA device.
"""
from __future__ import annotations

import argparse


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--full", action="store_true", help="attention over every key (default: causal)")
    args = p.parse_args()
    import numpy as np
    import pyopencl as cl
    import zyx
    from zyx.jit.schedule import schedule
    dev = zyx.OpenCL()
    shape = (args.batch, args.heads, args.context, args.head_dim)
    q, k, v, grad_out = (dev.tensor(np.zeros(shape, np.float32)) for _ in range(4))
    out = zyx.nn.scaled_dot_product_attention(q, k, v, is_causal=not args.full)
    grads = (out * grad_out).sum().backward([q, k, v])
    kernels, _ = schedule([out.node] + [g.node for g in grads], dev.traits)
    runtime = dev.runtime
    for kernel in (k for k in kernels if k.ir.kind == "a"):
        program = cl.Program(runtime.context, kernel.source).build(options=["-cl-nv-verbose"])
        log = program.get_build_info(runtime.device, cl.program_build_info.LOG)
        print(kernel.name, f"group {kernel.local_size}", [node.shape for node in kernel.outputs])
        print("\n".join(f"    {line.strip()}" for line in log.splitlines() if "ptxas" in line), flush=True)


if __name__ == "__main__":
    main()
