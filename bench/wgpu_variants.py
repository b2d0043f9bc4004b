"""What an elementwise kernel's shape costs on this WebGPU adapter, and whether NaN survives its compiler.

Part 1 times W1a (exp(x + y) - x over `--size`² float32) as hand-written WGSL in each variant: scalar or vec4
lanes, work groups of 64 or 256 items, 1 or 4 elements per item (grid-strided), the dispatch past 65535 groups
folded as zyx did before (65535 columns, the last row mostly spare groups that return at once) or balanced
(`webgpu.dispatch_shape`), i32 or u32 index math, the storage buffers' usage flags (WebGPU allows no MAP_* usage
on a storage buffer, so they are device memory either way); then zyx's own W1a and W1b kernels through zyx.WGPU(),
with the dispatch folded the old way and as now, and zyx.OpenCL() beside them with --opencl. Each figure is
`repeat` dispatches in one compute pass, one submit and one wait (the best of three rounds); GB/s counts x, y and
the output once.

Part 2 runs relu written several ways on NaN, ±inf and ±0 (the driver may assume no NaN: Vulkan SPIR-V without
SignedZeroInfNanPreserve), then zyx's own ops on those values against numpy, and prints which keep NaN.

    python bench/wgpu_variants.py [--size 4096] [--repeat 200] [--adapter N] [--opencl] [--only timing|nan]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import zyx  # noqa: E402
from zyx.runtime import webgpu  # noqa: E402

ROUNDS = 3


def old_fold(groups: int, max_groups: int) -> tuple[int, int]:
    """The dispatch shape before `webgpu.dispatch_shape`: whole rows of max_groups columns."""
    return (groups, 1) if groups <= max_groups else (max_groups, -(-groups // max_groups))


FOLDS = {"old": old_fold, "balanced": webgpu.dispatch_shape, "two rows": lambda groups, _: (-(-groups // 2), 2)}


# ---- part 1: timing ----------------------------------------------------------------------------------------
def w1a_shader(lanes: int, group: int, per: int, items: int, index: str) -> str:
    """W1a over `items` elements of `lanes` floats, `per` of them a work item (strided by items / per)."""
    element = "vec4<f32>" if lanes == 4 else "f32"
    cast = "i32" if index == "i32" else "u32"
    stride = items // per
    body = "\n".join(f"  {{ let i = first + {cast}({k * stride}); if (i >= {cast}({items})) {{ return; }} "
                     f"out[i] = exp(x[i] + y[i]) - x[i]; }}" for k in range(per))
    return f"""
@group(0) @binding(0) var<storage, read> x: array<{element}>;
@group(0) @binding(1) var<storage, read> y: array<{element}>;
@group(0) @binding(2) var<storage, read_write> out: array<{element}>;
@compute @workgroup_size({group})
fn main(@builtin(workgroup_id) g: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
        @builtin(local_invocation_index) l: u32) {{
  let first = {cast}(g.x + g.y * n.x) * {cast}({group}) + {cast}(l);
{body}
}}
"""


def dispatch_seconds(runtime: Any, pipeline: Any, bind_group: Any, shape: tuple[int, int], repeat: int) -> float:
    """Seconds per dispatch: `repeat` dispatches in one pass, submitted and waited for (the best of ROUNDS)."""
    gpu, fence = runtime.wgpu_device, runtime.allocate(4)

    def run(count: int) -> float:
        encoder = gpu.create_command_encoder()
        compute = encoder.begin_compute_pass()
        compute.set_pipeline(pipeline)
        compute.set_bind_group(0, bind_group)
        for _ in range(count):
            compute.dispatch_workgroups(shape[0], shape[1], 1)
        compute.end()
        commands = encoder.finish()
        start = time.perf_counter()
        runtime.queue.submit([commands])
        runtime.queue.read_buffer(fence.raw, 0, 4)
        return time.perf_counter() - start

    run(4)
    return min(run(repeat) for _ in range(ROUNDS)) / repeat


def hand_variants(runtime: Any, size: int, repeat: int) -> None:
    wgpu = webgpu._wgpu()
    usage = wgpu.BufferUsage
    n = size * size
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    want = np.exp(x + y) - x
    moved = 3 * n * 4
    usages = {"storage|copy_src|copy_dst (zyx)": runtime._usage, "storage|copy_dst": usage.STORAGE | usage.COPY_DST}
    variants = [(lanes, group, per, fold, "i32", "storage|copy_src|copy_dst (zyx)")
                for lanes in (4, 1) for group in (64, 256) for per in (1, 4) for fold in ("old", "balanced")]
    variants += [(4, 256, 1, "two rows", "i32", "storage|copy_src|copy_dst (zyx)"),  # 2-D where 1-D would do
                 (4, 64, 1, "balanced", "u32", "storage|copy_src|copy_dst (zyx)"),
                 (4, 64, 1, "balanced", "i32", "storage|copy_dst")]
    print(f"\n[1] W1a exp(x + y) - x, {size}² float32, hand-written WGSL ({repeat} dispatches, one wait)")
    print(f"{'lanes':>5} {'group':>5} {'per':>3} {'dispatch as':>11} {'index':>5} {'dispatch':>13} {'groups':>8} "
          f"{'us':>8} {'GB/s':>7}  usage")
    seen = set()
    for lanes, group, per, fold, index, usage_name in variants:
        items = n // lanes
        groups = -(-(items // per) // group)
        shape = FOLDS[fold](groups, runtime.max_groups)
        key = (lanes, group, per, shape, index, usage_name)
        if key in seen:  # the old fold is the balanced one where one row holds every group
            continue
        fold = fold if shape[1] > 1 else "1-D"
        seen.add(key)
        buffers = []
        for data, read_back in ((x, 0), (y, 0), (np.zeros(n, np.float32), usage.COPY_SRC)):
            raw = runtime.wgpu_device.create_buffer(size=data.nbytes, usage=usages[usage_name] | read_back)
            runtime.queue.write_buffer(raw, 0, data)
            buffers.append(raw)
        module = runtime.wgpu_device.create_shader_module(code=w1a_shader(lanes, group, per, items, index))
        pipeline = runtime.wgpu_device.create_compute_pipeline(layout="auto", compute={"module": module,
                                                                                       "entry_point": "main"})
        bind_group = runtime.wgpu_device.create_bind_group(
            layout=pipeline.get_bind_group_layout(0),
            entries=[{"binding": k, "resource": {"buffer": raw, "offset": 0, "size": raw.size}}
                     for k, raw in enumerate(buffers)])
        seconds = dispatch_seconds(runtime, pipeline, bind_group, shape, repeat)
        got = np.frombuffer(runtime.queue.read_buffer(buffers[2], 0, 4 * n), np.float32)
        ok = "" if np.allclose(got, want, rtol=1e-4, atol=1e-5) else "  WRONG VALUES"
        print(f"{lanes:>5} {group:>5} {per:>3} {fold:>11} {index:>5} {f'{shape[0]}x{shape[1]}':>13} "
              f"{shape[0] * shape[1]:>8} {seconds * 1e6:8.1f} {moved / seconds / 1e9:7.0f}  {usage_name}{ok}",
              flush=True)
        for raw in buffers:
            raw.destroy()


def zyx_rows(devices: dict[str, Any], size: int, repeat: int) -> None:
    import elementwise
    from kernel_time import zyx_seconds
    print(f"\n[1b] zyx's kernels ({repeat} replays, one wait; 'old fold' is zyx.WGPU() with the dispatch of before)")
    for workload in elementwise.workloads(size):
        for name, dev in devices.items():
            folds = {"old fold": old_fold, "now": webgpu.dispatch_shape} if name == "wgpu" else {"": None}
            for fold_name, fold in folds.items():
                saved = webgpu.dispatch_shape
                if fold is not None:
                    webgpu.dispatch_shape = fold
                try:
                    seconds, host, kernels = zyx_seconds(dev, workload, repeat)
                finally:
                    webgpu.dispatch_shape = saved
                print(f"{workload.name:4} zyx {name:6} {fold_name:8} {seconds * 1e6:8.1f} us "
                      f"{workload.amount / seconds / 1e9:7.0f} GB/s  [{kernels}]", flush=True)
    wgpu_dev = devices["wgpu"]
    x, y = (wgpu_dev.tensor(np.ones((size, size), np.float32)) for _ in range(2))
    elementwise.w1b(x, y).realize()
    source = list(wgpu_dev.programs.values())[-1].launches[0].source
    print("zyx's W1b WGSL (entry point):\n" + source[source.index("@compute"):])


# ---- part 2: NaN -------------------------------------------------------------------------------------------
SPECIAL = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, -1.5, 1e30, -1e30, 1e-30, np.nan, 2, -2, 3, -3],
                   np.float32)
ISNAN = "(bitcast<{u}>(x) & {u}(0x7fffffffu)) > {u}(0x7f800000u)"
RELU_FORMS = {  # the forms marked "(loses NaN by definition)" are references: NaN -> 0 is their right answer
    "select(x, 0, x <= 0) (zyx's WGSL before)": "select(x, {z}, x <= {z})",
    "max(x, 0) (loses NaN by definition: WGSL's max)": "max(x, {z})",
    "select(0, x, x > 0) (loses NaN by definition: IEEE)": "select({z}, x, x > {z})",
    "compare with NaN bit tests": "select(x, {z}, (x <= {z}) & !(" + ISNAN + "))",
    "select on the bits": "bitcast<{t}>(select(bitcast<{u}>(x), bitcast<{u}>({z}), x <= {z}))",
    "both (zyx's WGSL now)": "bitcast<{t}>(select(bitcast<{u}>(x), bitcast<{u}>({z}), (x <= {z}) & !(" + ISNAN + ")))",
    "max by comparison, NaN bits picked (zyx's max)": "select(select(x, {z}, {z} > x), x, " + ISNAN + ")",
}


def relu_forms(runtime: Any) -> None:
    print("\n[2] relu on NaN, ±inf, ±0 written several ways: does NaN stay NaN?")
    want = np.where(np.isnan(SPECIAL), SPECIAL, np.maximum(SPECIAL, 0))
    for lanes in (4, 1):
        t = "vec4<f32>" if lanes == 4 else "f32"
        u = "vec4<u32>" if lanes == 4 else "u32"
        z = f"{t}(0.0)"
        for name, form in RELU_FORMS.items():
            source = f"""
@group(0) @binding(0) var<storage, read> a: array<{t}>;
@group(0) @binding(1) var<storage, read_write> out: array<{t}>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) i: vec3<u32>) {{
  if (i.x < {SPECIAL.size // lanes}u) {{ let x = a[i.x]; out[i.x] = {form.format(t=t, u=u, z=z)}; }}
}}
"""
            kernel = runtime.compile(source, "main", 64)
            a, out = runtime.upload(SPECIAL), runtime.allocate(SPECIAL.nbytes)
            runtime.launch(kernel, (64,), (64,), [a, out])
            got = runtime.download(out, SPECIAL.shape, np.float32)
            kept = np.array_equal(got, want, equal_nan=True)
            print(f"  {'vec4' if lanes == 4 else 'f32 ':4} {'NaN kept' if kept else 'NaN LOST'}  {name}"
                  + ("" if kept else f": relu(nan) -> {got[0]}, {got[1]}"))


def zyx_nan_checks(dev: Any) -> None:
    print("\n[2b] zyx's ops on NaN, ±inf, ±0 against numpy (16 elements: float4 kernels; 7: scalar ones)")
    other = np.roll(SPECIAL, 5)
    checks: dict[str, tuple[Callable, Callable]] = {
        "relu": (lambda a, b: a.relu(), lambda a, b: np.maximum(a, 0)),
        "clamp(-1, 1)": (lambda a, b: a.clamp(-1, 1), lambda a, b: np.clip(a, -1, 1)),
        "maximum": (lambda a, b: a.maximum(b), np.maximum),
        "minimum": (lambda a, b: a.minimum(b), np.minimum),
        "where(a < 0, b, a)": (lambda a, b: (a < 0).where(b, a), lambda a, b: np.where(a < 0, b, a)),
        "a < b": (lambda a, b: a < b, np.less), "a <= b": (lambda a, b: a <= b, np.less_equal),
        "a > b": (lambda a, b: a > b, np.greater), "a >= b": (lambda a, b: a >= b, np.greater_equal),
        "a == b": (lambda a, b: a == b, np.equal), "a != b": (lambda a, b: a != b, np.not_equal),
        "isnan": (lambda a, b: a.isnan(), lambda a, b: np.isnan(a)),
        "isinf": (lambda a, b: a.isinf(), lambda a, b: np.isinf(a)),
        "abs": (lambda a, b: a.abs(), lambda a, b: np.abs(a)), "sign": (lambda a, b: a.sign(), lambda a, b: np.sign(a)),
        "tanh": (lambda a, b: a.tanh(), lambda a, b: np.tanh(a)),
        "sigmoid": (lambda a, b: a.sigmoid(), lambda a, b: 1 / (1 + np.exp(-a.astype(np.float64)))),
        "max over rows": (lambda a, b: a.reshape(4, -1).max(1), lambda a, b: a.reshape(4, -1).max(1)),
    }
    failed = []
    with np.errstate(all="ignore"):
        for size in (16, 7):
            a, b = SPECIAL[:size], other[:size]
            for name, (ours, numpy_form) in checks.items():
                if name == "max over rows" and size % 4:
                    continue
                got = ours(dev.tensor(a), dev.tensor(b)).numpy()
                want = np.asarray(numpy_form(a, b)).astype(got.dtype)
                if not np.allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True):
                    failed.append(f"{name} [{size}]: got {got.tolist()}, want {want.tolist()}")
    print("  all ok" if not failed else "\n".join(f"  FAIL {line}" for line in failed))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument("--adapter", default=None, help="an adapter index (default: zyx.WGPU()'s choice)")
    p.add_argument("--opencl", action="store_true", help="zyx.OpenCL()'s W1 beside WGPU's")
    p.add_argument("--only", choices=("timing", "nan"), default=None)
    args = p.parse_args()
    dev = zyx.WGPU(int(args.adapter) if args.adapter is not None else None)
    runtime = dev.runtime
    info = runtime.adapter.info
    print(f"{dev.name}: {info['adapter_type']}, {info['backend_type']}, driver {info['description']!r}; "
          f"max groups per dimension {runtime.max_groups}, wgpu-py {webgpu._wgpu().__version__}")
    if args.only != "nan":
        hand_variants(runtime, args.size, args.repeat)
        devices = {"wgpu": dev, **({"opencl": zyx.OpenCL()} if args.opencl else {})}
        zyx_rows(devices, args.size, args.repeat)
    if args.only != "timing":
        relu_forms(runtime)
        zyx_nan_checks(dev)


if __name__ == "__main__":
    main()
