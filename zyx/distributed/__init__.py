"""Data-parallel training over MPI: one process per device, gradients averaged across them.

Launch one process per device with MPI's launcher (`mpirun -n 2 python train.py`, or `srun` under Slurm);
each calls `init()`, starts from rank 0's parameters, trains on its own shard of the data and averages the
gradients before every update:

```python
import zyx
import zyx.distributed as dist

dist.init()                                  # joins the job; this rank's device becomes the default
model = zyx.nn.Linear(64, 10)
params = model.parameters()
dist.broadcast_parameters(params)            # every rank starts from rank 0's weights
opt = zyx.nn.SGD(lr=0.1)

@zyx.jit
def step(x, y):
    loss = zyx.nn.functional.cross_entropy(model(x), y)
    opt.update(params, dist.average_gradients(loss.backward(params)))  # all-reduced inside the program
    return loss
```

Under `@zyx.jit` the all-reduce is a step of the captured program (see jit/collective.py), so a replay
communicates without Python in between and the stored program makes a warm start compile nothing. Outside it,
`all_reduce` and `broadcast` run when called, as PyTorch's do. docs/DISTRIBUTED.md says how runs on several
GPUs and machines go, and what was measured.
"""
from __future__ import annotations

from .gradients import BUCKET_BYTES, average_gradients, broadcast_parameters
from .ops import all_reduce, barrier, broadcast
from .process import (CollectiveTimeout, device, init, is_initialized, local_rank, local_world_size, rank,
                      world_size)

__all__ = ["BUCKET_BYTES", "CollectiveTimeout", "all_reduce", "average_gradients", "barrier", "broadcast",
           "broadcast_parameters", "device", "init", "is_initialized", "local_rank", "local_world_size", "rank",
           "world_size"]
