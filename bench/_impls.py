"""The implementations compared: numpy, torch, tinygrad (CL backend), a hand-written OpenCL kernel, and zyx.

Each `*_case(expression)` returns a factory that turns a Workload into a timed Case. The tensor expression is
one Python function shared by torch, tinygrad and zyx (their tensors have the same method names), so all
three are asked for exactly the same computation. Optional libraries raise Skip with the reason.
"""
from __future__ import annotations

import itertools
import statistics
import time
from typing import Any, Callable, Optional

import numpy as np

from _harness import Case, DeviceInfo, Skip, Workload


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


# ---- numpy and torch: eager, run on the host CPU -----------------------------------------------------------
def numpy_case(function: Callable[..., np.ndarray]):
    def make(workload: Workload) -> Case:
        out: list[np.ndarray] = []

        def run() -> None:
            out[:] = [function(**workload.inputs)]
        return Case(run=run, result=lambda: out[0])
    return make


def torch_case(expression: Callable[..., Any]):
    def make(workload: Workload) -> Case:
        try:
            import torch
        except Exception as error:
            raise Skip(f"torch not importable ({error})")
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in workload.inputs.items()}
        out: list[Any] = []

        def run() -> None:
            with torch.no_grad():
                out[:] = [expression(**tensors)]
        return Case(run=run, result=lambda: out[0].numpy(), note=f"torch {torch.__version__}, "
                                                                  f"{torch.get_num_threads()} threads")
    return make


# ---- tinygrad on its CL backend ----------------------------------------------------------------------------
def tinygrad_cl_device(device: DeviceInfo) -> Any:
    """tinygrad's CL device, if it is the benchmarked one (it opens the first platform of the system ICD loader)."""
    try:
        from tinygrad import Device
    except Exception as error:
        raise Skip(f"tinygrad not importable ({error}); pip install -e '.[bench]'")
    cl_device = Device["CL"]
    if (cl_device.device_name.strip(), cl_device.driver_version.strip()) != (device.name, device.driver):
        raise Skip(f"tinygrad's CL backend opened {cl_device.device_name!r} ({cl_device.driver_version}), "
                   f"not the benchmarked device")
    return cl_device


def tinygrad_case(expression: Callable[..., Any], device: Optional[DeviceInfo]):
    def make(workload: Workload) -> Case:
        if device is None:
            raise Skip("no OpenCL device")
        cl_device = tinygrad_cl_device(device)
        from tinygrad import Tensor
        tensors = {k: Tensor(np.ascontiguousarray(v), device="CL").realize() for k, v in workload.inputs.items()}
        cl_device.synchronize()
        built: list[Any] = []

        def prepare() -> None:
            built[:] = [expression(**tensors)]

        def run() -> None:
            built[0].realize()
            cl_device.synchronize()
        return Case(run=run, prepare=prepare, result=lambda: built[0].numpy(),
                    note=f"tinygrad {_version('tinygrad')}")
    return make


# ---- zyx on the same OpenCL device -------------------------------------------------------------------------
def zyx_case(expression: Callable[..., Any], device: Optional[DeviceInfo]):
    def make(workload: Workload) -> Case:
        if device is None:
            raise Skip("no OpenCL device")
        import zyx
        dev = zyx.OpenCL(platform=device.platform_index, device=device.device_index)
        tensors = {k: dev.tensor(np.ascontiguousarray(v)).realize() for k, v in workload.inputs.items()}
        synchronize = getattr(dev, "synchronize", None)
        built: list[Any] = []

        def sync() -> None:
            if synchronize is not None:
                synchronize()
            else:  # no explicit barrier: reading one element waits for the queue
                built[0].reshape(-1)[0].item()
        if synchronize is not None:
            synchronize()  # the uploads are done before anything is timed

        def prepare() -> None:
            built[:] = [expression(**tensors)]

        def run() -> None:
            built[0].realize()
            sync()
        return Case(run=run, prepare=prepare, result=lambda: built[0].numpy())
    return make


# ---- a hand-written OpenCL kernel: the ceiling for elementwise work ----------------------------------------
KERNEL_TEMPLATE = """
// One work-item handles PER vectors of VEC floats, strided by the global size: consecutive work-items touch
// consecutive vectors, which suits GPUs (coalescing) and PoCL (it vectorises across a work-group's items).
__kernel void elementwise(__global const floatVEC* restrict x, __global const floatVEC* restrict y,
                          __global floatVEC* restrict out)
{
    const size_t stride = get_global_size(0);
    size_t i = get_global_id(0);
    for (int k = 0; k < PER; ++k, i += stride) {
        const floatVEC a = x[i];
        const floatVEC b = y[i];
        out[i] = BODY;
    }
}
"""


def _kernel_source(body: str, vec: int, per: int) -> str:
    return (KERNEL_TEMPLATE.replace("floatVEC", f"float{vec}").replace("VEC", str(vec))
            .replace("PER", str(per)).replace("BODY", body))


def hand_kernel_configs(body: str, ctx: Any, buffers: tuple, n: int, vecs=(4, 8, 16), pers=(1, 4, 16),
                        locals_=(None, 64, 256)) -> list[tuple]:
    """(vector width, vectors per item, work-group size or None, kernel, global size) for every variant of the
    hand-written kernel over `buffers` (x, y, out) that divides `n` floats."""
    import pyopencl as cl
    max_local = ctx.devices[0].max_work_group_size
    configs = []
    for vec, per in itertools.product(vecs, pers):
        if n % (vec * per):
            continue
        kernel = cl.Program(ctx, _kernel_source(body, vec, per)).build().elementwise
        kernel.set_args(*buffers)
        global_size = n // (vec * per)
        for local in locals_:
            if local is None or (local <= max_local and global_size % local == 0):
                configs.append((vec, per, local, kernel, global_size))
    return configs


def opencl_case(body: str, cl_device: Any, *, vecs=(4, 8, 16), pers=(1, 4, 16), locals_=(None, 64, 256)):
    """A fused kernel computing `body` (an OpenCL C expression in `a` = x and `b` = y, vector-typed).

    At warm-up it tries each vector width × vectors per work-item × work-group size once, and keeps the
    fastest; the note says which won.
    """
    def make(workload: Workload) -> Case:
        if cl_device is None:
            raise Skip("no OpenCL device")
        import pyopencl as cl
        x, y = (np.ascontiguousarray(workload.inputs[k], dtype=np.float32) for k in ("x", "y"))
        n = x.size
        ctx = cl.Context([cl_device])
        queue = cl.CommandQueue(ctx)
        flags = cl.mem_flags
        x_buf = cl.Buffer(ctx, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=x)
        y_buf = cl.Buffer(ctx, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=y)
        out_buf = cl.Buffer(ctx, flags.WRITE_ONLY, size=x.nbytes)
        configs = hand_kernel_configs(body, ctx, (x_buf, y_buf, out_buf), n, vecs, pers, locals_)
        if not configs:
            raise Skip(f"no kernel variant divides n={n}")

        def launch(config) -> None:
            _, _, local, kernel, global_size = config
            cl.enqueue_nd_range_kernel(queue, kernel, (global_size,), None if local is None else (local,))
            queue.finish()

        def timed(config) -> float:
            launch(config)  # the first launch compiles PoCL's work-group function
            runs = []
            for _ in range(2):
                start = time.perf_counter()
                launch(config)
                runs.append(time.perf_counter() - start)
            return statistics.median(runs)

        best = min(configs, key=timed)
        vec, per, local, _, _ = best
        out = np.empty_like(x)
        keep_alive = (x_buf, y_buf, out_buf)  # the kernels refer to them; PoCL aborts if one is freed

        def result() -> np.ndarray:
            assert keep_alive
            cl.enqueue_copy(queue, out, out_buf)
            queue.finish()
            return out
        return Case(run=lambda: launch(best), result=result,
                    note=f"float{vec}, {per}/item, local {local or 'auto'} (best of {len(configs)})")
    return make
