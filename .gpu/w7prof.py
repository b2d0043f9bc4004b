"""W7 (GPT-2 small) zyx step on the GPU: timed phases, then one profiled step's top kernels."""
import sys, time, os
sys.path.insert(0, "bench")
import numpy as np
import zyx
import gpt_step as g

cfg = g.SIZES[os.environ.get("W7SIZE", "gpu")]
if len(sys.argv) > 1: cfg = g.Config(**{**cfg.__dict__, "batch": int(sys.argv[1])})
ac = sys.argv[2] if len(sys.argv) > 2 else None
params = g.initial_parameters(cfg); data = g.batch_of_tokens(cfg)
dev = zyx.OpenCL()
print("device", dev, cfg, ac, flush=True)
step = g.zyx_step(dev, cfg, params, data, ac)
t = time.perf_counter(); l = step().item(); print(f"first step {time.perf_counter()-t:.1f} s loss {l:.4f}", flush=True)
print("captured", step.captured()[0].get("kernels"), flush=True)
for i in range(3):
    t = time.perf_counter(); l = step().item(); print(f"step {time.perf_counter()-t:.4f} s loss {l:.4f}", flush=True)
import gc; gc.collect(); zyx.reset_peak_memory(dev); step().item()
print("memory", {k: v / 2**20 for k, v in zyx.memory_stats(dev).items() if "bytes" in k},
      "planned MiB", step.captured()[0]["planned_peak_bytes"] / 2**20, flush=True)
with zyx.profile() as p:
    step().item()
tot = sum(r.seconds for r in p.summaries())
print(f"kernel time {tot*1e3:.1f} ms in {sum(r.launches for r in p.summaries())} launches", flush=True)
p.table(limit=45)
