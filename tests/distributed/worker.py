"""One rank of the distributed tests, started by `mpirun -n N python worker.py CASE` (test_distributed.py).

    collectives DEVICES   all_reduce (every op, every dtype), broadcast and buckets on each device (cpu,opencl),
                          checked against values computed here from every rank's formula, and the arguments they
                          refuse; prints one JSON line
    train                 a jitted two-layer MLP trained on OpenCL on this rank's share of each batch with averaged
                          gradients, and (on rank 0) the same model trained by one process on the whole batches on
                          zyx.CPU() (the numpy reference: nothing more to compile); prints one JSON line per rank:
                          the largest difference, the spread between ranks, the step's launches, the counters
    fail MODE             rank 1 crashes (os._exit), leaves early (sys.exit(0)) or raises, while rank 0 waits in an
                          all_reduce

A failed check raises, which (zyx.distributed.init's hook) aborts the job: the test sees a non-zero exit.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

import zyx
import zyx.distributed as dist
from zyx.dtypes import ALL_DTYPES

nn = zyx.nn


def rank_values(rank: int, dtype: "zyx.DType", shape: tuple[int, ...]) -> np.ndarray:
    """What `rank` contributes: small integers (exact in every dtype, sums included), a different mix per rank."""
    numbers = (np.arange(int(np.prod(shape))).reshape(shape) * (rank + 1) + 3 * rank) % 7
    return (numbers % 2 == 1) if dtype.is_bool else numbers.astype(dtype.np)


def expected(dtype: "zyx.DType", shape: tuple[int, ...], op: str, ranks: int) -> np.ndarray:
    values = np.stack([rank_values(r, dtype, shape).astype(np.float64) for r in range(ranks)])
    if op in ("sum", "mean"):
        total = values.sum(0)
        return (total > 0) if dtype.is_bool else total / ranks if op == "mean" else total
    return values.max(0) if op == "max" else values.min(0)


def check_collectives(devices: list[str]) -> None:
    rank, ranks = dist.rank(), dist.world_size()
    for name in devices:
        device = zyx.CPU() if name == "cpu" else zyx.OpenCL()
        dtypes = ALL_DTYPES if name == "cpu" else [zyx.float32]  # OpenCL: each dtype compiles kernels; the host
        # staging is the same for every dtype (the CPU device covers them all)
        for dtype in dtypes:
            for op in ("sum", "mean", "max", "min") if name == "cpu" else ("sum",):
                if op == "mean" and not dtype.is_float:
                    continue
                shape = (2, 3)
                got = dist.all_reduce(device.tensor(rank_values(rank, dtype, shape)), op).numpy()
                want = expected(dtype, shape, op, ranks)
                assert got.dtype == dtype.np and got.shape == shape, (name, dtype, op, got.dtype, got.shape)
                assert np.array_equal(got.astype(np.float64), want.astype(np.float64)), (name, dtype, op, got, want)
            source = ranks - 1
            got = dist.broadcast(device.tensor(rank_values(rank, dtype, (5,))), src=source).numpy()
            assert np.array_equal(got, rank_values(source, dtype, (5,))), (name, dtype, "broadcast", got)
        # one bucket of several shapes: each piece comes back in its shape
        shapes = [(3,), (2, 2), (), (1, 4)]
        tensors = [device.tensor(rank_values(rank, zyx.float32, shape)) for shape in shapes]
        summed = dist.average_gradients(tensors)
        for shape, value in zip(shapes, summed):
            want = expected(zyx.float32, shape, "mean", ranks)
            assert value.shape == shape and np.allclose(value.numpy(), want, rtol=0, atol=1e-6), (name, shape)
    refusals = {"unknown op 'prod'": lambda: dist.all_reduce(zyx.CPU().tensor([1.0]), "prod"),
                "the mean of a int32 tensor": lambda: dist.all_reduce(zyx.CPU().tensor([1], dtype=zyx.int32), "mean"),
                f"src must be a rank from 0 to {ranks - 1}, got {ranks}":
                    lambda: dist.broadcast(zyx.CPU().tensor([1.0]), src=ranks)}
    for message, call in refusals.items():
        try:
            call()
        except (TypeError, ValueError) as error:
            assert message in str(error), (message, error)
        else:
            raise AssertionError(f"accepted: {message}")
    dist.barrier()
    print(json.dumps({"rank": rank, "checked": devices}), flush=True)


def train(steps: int = 3) -> None:
    rank, ranks = dist.rank(), dist.world_size()
    batch = 8 * ranks
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((steps, batch, 5)).astype(np.float32)
    ys = rng.integers(0, 3, (steps, batch)).astype(np.int32)

    def model_and_step(device: zyx.Device, distributed: bool):
        zyx.manual_seed(1 + (rank if distributed else 0))  # unequal ranks: broadcast_parameters makes them equal
        model = nn.Sequential(nn.Linear(5, 6, device=device), nn.Tanh(), nn.Linear(6, 3, device=device))
        params = model.parameters()
        opt = nn.Adam(lr=0.05)

        @zyx.jit
        def step(x: zyx.Tensor, y: zyx.Tensor) -> zyx.Tensor:
            loss = nn.functional.cross_entropy(model(x), y)
            grads = loss.backward(params)
            opt.update(params, dist.average_gradients(grads) if distributed else grads)
            return loss
        return params, step

    params, step = model_and_step(zyx.OpenCL(), distributed=True)
    dist.broadcast_parameters(params)
    share = batch // ranks
    for s in range(steps):
        part = slice(rank * share, (rank + 1) * share)
        step(zyx.OpenCL().tensor(xs[s, part]), zyx.OpenCL().tensor(ys[s, part]))
    trained = np.concatenate([p.numpy().ravel() for p in params])
    stats = zyx.stats()
    rank0_trained = dist.broadcast(zyx.CPU().tensor(trained)).numpy()
    program = next(iter(step.steps.values()))[0].program
    report = {"rank": rank, "spread": float(np.abs(trained - rank0_trained).max()),
              "launches": [launch.name for launch in program.launches],
              "kernels_compiled": stats["kernels_compiled"], "graphs_scheduled": stats["graphs_scheduled"],
              "programs_loaded": stats["programs_loaded"]}
    if rank == 0:
        reference, reference_step = model_and_step(zyx.CPU(), distributed=False)
        for s in range(steps):
            reference_step(zyx.CPU().tensor(xs[s]), zyx.CPU().tensor(ys[s]))
        expected_params = np.concatenate([p.numpy().ravel() for p in reference])
        report["max_difference"] = float(np.abs(trained - expected_params).max())
        report["largest_parameter"] = float(np.abs(expected_params).max())
    print(json.dumps(report), flush=True)


def fail(mode: str) -> None:
    x = zyx.CPU().tensor([1.0, 2.0])
    dist.all_reduce(x)  # every rank is up
    if dist.rank() == 1:
        if mode == "crash":
            os._exit(3)
        if mode == "leave":
            sys.exit(0)
        raise ValueError("rank 1 fails on purpose")
    dist.all_reduce(x).numpy()  # rank 0 waits here for a rank that will never come
    print("rank 0 passed an all_reduce that rank 1 never joined", flush=True)


if __name__ == "__main__":
    dist.init()
    case = sys.argv[1]
    if case == "collectives":
        check_collectives(sys.argv[2].split(","))
    elif case == "train":
        train()
    else:
        fail(sys.argv[2])
