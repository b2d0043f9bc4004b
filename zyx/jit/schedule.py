"""Cutting a trace into kernels.

Start from the nodes to realize; lower each to a kernel (lower.py fuses every elementwise op, view and
reduction it can host), shape it for the device with transforms (transforms/) and print it (print_opencl.py, or
print_wgsl.py: `DeviceTraits.language`);
whatever a kernel must read from memory instead (a reduction used at another shape, say) becomes a node to
materialize, lowered later as its own kernel. Nodes are lowered latest first, so a kernel computing one
reduction can also store another that others need (a softmax over rows too long for a row kernel: one kernel
stores the row max and the row sum, the next divides). An elementwise value needing reductions over its own
rows (softmax, norms) is a row kernel instead (rows.py): a work item, or on GPUs a work group, per row. Only this
module decides what is stored: lowering reports what it needs and stores.
"""
from __future__ import annotations

import heapq
import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

from ..trace.node import Node, toposort
from ..trace.ops import Op, REDUCE_OPS
from .collective import collective_kernel
from .rewrite import rewrite_graph
from .cpu_matmul import CpuMatmulLowering, copy_tile, plan_cpu_matmul
from .matmul import LocalTileLowering, plan_local_tiles
from .tiling import choose_tile, hosted_matmul, matmul_axes, space_axes
from .kernel_ir import Kernel, RenderedKernel, Role
from .lower import PARAM_LIMIT, KernelTooLarge, LoweredKernel, ScheduleConflict, lower
from . import print_opencl, print_wgsl
from .rows import lower_rows, row_length
from .transforms.group import group_reductions
from .transforms.unroll import unroll_reductions
from .transforms.upcast import upcast
from .transforms.vector import vectorize


@dataclass(frozen=True)
class DeviceTraits:
    """What the scheduler needs to know of a device to shape its kernels."""

    gpu: bool = False
    group_size: int = 256
    vector_width: int = 0  # >1: float32 kernels compute this many outputs per item as one vector (on GPUs
                           # elementwise kernels only: reductions there get work groups)
    language: str = "opencl"        # the printer: "opencl" (OpenCL C) or "wgsl" (WebGPU)
    max_params: int = PARAM_LIMIT   # buffers and scalars one kernel may take
    local_memory: int = 1 << 16     # bytes of local memory one work group may use

    @staticmethod
    def of(runtime: object) -> "DeviceTraits":
        """From an OpenCLBackend; ZYX_GPU_KERNELS=1 forces GPU-shaped kernels (to test them on a CPU), and
        ZYX_VECTOR_WIDTH=N sets the vector width (1: none), to measure another. CPUs get 16 lanes (their OpenCL
        compilers call math functions lane by lane otherwise); GPUs 4, so every item loads and stores whole
        float4 vectors, as a hand-written elementwise kernel does."""
        gpu = bool(getattr(runtime, "is_gpu", False)) or os.environ.get("ZYX_GPU_KERNELS") == "1"
        group = 1 << (min(256, int(getattr(runtime, "max_work_group_size", 256))).bit_length() - 1)
        width = int(os.environ.get("ZYX_VECTOR_WIDTH", GPU_VECTOR_WIDTH if gpu else CPU_VECTOR_WIDTH))
        return DeviceTraits(gpu, group, width if width > 1 else 0,
                            local_memory=int(getattr(runtime, "local_mem_bytes", 1 << 16)))


UNROLL = 8                    # accumulators per reduction loop of a scalar kernel
CPU_VECTOR_WIDTH = 16         # one AVX-512 register of float32; as fast as 8 on AVX2 machines
GPU_VECTOR_WIDTH = 4          # float4: one 16-byte load and store per item
FUSION_DEPTH_LIMIT = 256      # ops on the longest chain one kernel fuses: a 100 000-op chain stores every 256th
GROUP_MIN_REDUCE = 256        # reductions shorter than this are fine on one work item
GROUP_MAX_OUTPUTS = 1 << 16   # with more outputs than this the device is busy enough without groups


def schedule(targets: Sequence[Node], traits: DeviceTraits = DeviceTraits()) -> tuple[list[RenderedKernel], list[Node]]:
    """Kernels, in launch order, that compute every target; and the targets as the kernels know them
    (rewrites may have replaced them; they correspond by position)."""
    targets = rewrite_graph(targets, traits.gpu)
    try:
        return _schedule(targets, traits, allow_extra_outputs=True), targets
    except ScheduleConflict:
        return _schedule(targets, traits, allow_extra_outputs=False), targets


def _build_kernel(root: Node, materialized: dict[int, Node], produced: set[int], traits: DeviceTraits,
                  allow_extra_outputs: bool, stored_apart: set[int]) -> RenderedKernel:
    """A kernel that grows too large stores its most recomputed value in a kernel of its own and tries again.
    What the kernel reads from others becomes a node to store, what it stores is produced."""
    product = None if traits.gpu else hosted_matmul(root, materialized)
    if product is not None and product is not root and space_axes(root, product) is None:
        materialized[id(product)] = product  # (on a CPU a product stored in another shape gets its own tiled
        stored_apart.add(id(product))        # kernel, and this one reads it)
    while True:
        try:
            kernel = _build_shaped(root, materialized, produced, traits, allow_extra_outputs, frozenset(stored_apart))
            break
        except KernelTooLarge as too_large:
            materialized[id(too_large.node)] = too_large.node
            stored_apart.add(id(too_large.node))
    for node in kernel.needs:
        materialized.setdefault(id(node), node)
    produced.update(id(node) for node in kernel.outputs)
    return kernel


def _build_shaped(root: Node, materialized: dict[int, Node], produced: set[int], traits: DeviceTraits,
                  allow_extra_outputs: bool, apart: frozenset) -> RenderedKernel:
    """Lower the kernel storing `root`, then shape it for the device: register tiles for products, vector lanes
    on CPUs, a work group per output for GPU kernels whose few outputs each need a long reduction, else
    unrolled reductions."""
    cpu_plan = None if traits.gpu else plan_cpu_matmul(root, materialized)
    if cpu_plan is not None:
        lowered = CpuMatmulLowering(root, materialized, produced, cpu_plan, apart).lower()
        return rendered(lowered, lowered.ir, traits)
    tile = choose_tile(root, materialized, traits.gpu) or (None if traits.gpu else copy_tile(root))
    plan = plan_local_tiles(root, hosted_matmul(root, materialized), traits.local_memory) if traits.gpu else None
    if plan is not None:
        lowered = LocalTileLowering(root, materialized, produced, plan, apart, traits.max_params).lower()
        return rendered(lowered, lowered.ir, traits)
    if traits.gpu and tile and root.numel // math.prod(tile.values()) < GROUP_MAX_OUTPUTS // 4:
        tile = None  # a small product: a work group per output keeps the GPU busier than register tiles
    tile = tile if root.numel else None
    length = None if tile else row_length(root, materialized, produced | apart)
    if length is not None and _fuses_rows(length, traits):
        rows = lower_rows(root, materialized, produced, length, allow_extra_outputs, apart,
                          traits.max_params)
        if rows is not None:
            return rendered(rows, _shape_rows(rows.ir, length, traits), traits)
    lowered = lower(root, materialized, produced, allow_extra_outputs and not tile, apart, traits.max_params)
    kernel = lowered.ir
    vector = None
    if traits.vector_width and tile is None and not (traits.gpu and kernel.axis(Role.REDUCE)):
        vector = _vector_kernel(kernel, traits.vector_width)
    if tile:
        kernel = upcast(kernel, lowered.space, tile)
    elif vector is not None:
        kernel = vector
    elif traits.gpu and kernel.work_items < GROUP_MAX_OUTPUTS and lowered.longest_reduction >= GROUP_MIN_REDUCE:
        kernel = group_reductions(kernel, traits.group_size)  # (elementwise kernels as they are reach ~2.5 TB/s
    else:                                                     # on an H100: bench/README.md)
        kernel = _unrolled(kernel)
    return rendered(lowered, kernel, traits)


def _unrolled(kernel: Kernel) -> Kernel:
    return unroll_reductions(kernel, lambda trips: UNROLL if trips >= 2 * UNROLL else 1)


def _fuses_rows(length: int, traits: DeviceTraits) -> bool:
    """Whether rows of `length` are one kernel (rows.py) on this device: on GPUs always (rows.ROW_LIMIT aside);
    on CPUs where the scalar tail the vector lanes leave is at most a quarter of the row (rows of 31 on PoCL run
    20% slower in one kernel than as the reductions' kernel and an elementwise one of whole vectors)."""
    return traits.gpu or not traits.vector_width or length % traits.vector_width * 4 <= length


def _shape_rows(kernel: Kernel, length: int, traits: DeviceTraits) -> Kernel:
    """A row kernel shaped for the device: on GPUs a work group per row (float4 lanes where the row divides) if
    the row is as long as a reduction that gets a work group; elsewhere a row per item, in vector lanes along the
    row."""
    if traits.gpu and length >= GROUP_MIN_REDUCE:
        vector = vectorize(kernel, traits.vector_width, uniform=True) if traits.vector_width else None
        lanes = traits.vector_width if vector is not None else 1
        group = min(traits.group_size, 1 << (-(-length // lanes) - 1).bit_length())
        return group_reductions(vector or kernel, group)
    vector = _vector_kernel(kernel, traits.vector_width, tails=True) if traits.vector_width else None
    return vector or _unrolled(kernel)


PRINTERS = {  # language: (kernel -> (name, source), kernel -> (global size, local size))
    "opencl": (print_opencl.print_kernel, lambda kernel: kernel.launch),
    "wgsl": (print_wgsl.print_kernel, print_wgsl.launch),
}


def rendered(lowered: LoweredKernel, kernel: Kernel, traits: DeviceTraits = DeviceTraits()) -> RenderedKernel:
    """The kernel printed for the device, with what the scheduler and the program need to know of it."""
    printer, launch = PRINTERS[traits.language]
    name, source = printer(kernel)
    loads = [p.node for p in kernel.params if p.kind == "load"]
    global_size, local_size = launch(kernel)
    return RenderedKernel(name, source, lowered.space, list(kernel.params), lowered.outputs, loads, lowered.needs,
                          lowered.misaligned, global_size, local_size, lowered.longest_reduction)


def _vector_kernel(kernel: Kernel, width: int, tails: bool = False) -> Optional[Kernel]:
    """W outputs per item, else (for reductions along contiguous elements) one output per item walked W
    elements at a time (`tails`: the last steps of a loop W does not divide as a loop of their own); each loop
    with up to four vector accumulators. None when neither applies."""
    vector = vectorize(kernel, width) or vectorize(kernel, width, uniform=True, tails=tails)
    if vector is None:
        return None
    return unroll_reductions(vector, lambda trips: next(u for u in (4, 2, 1) if trips % u == 0))


def _schedule(targets: Sequence[Node], traits: DeviceTraits, allow_extra_outputs: bool) -> list[RenderedKernel]:
    order = toposort(targets)
    position = {id(node): i for i, node in enumerate(order)}
    materialized: dict[int, Node] = {id(t): t for t in targets}
    across = _collectives(order)  # values combined across processes, and their sources: stored, never fused
    materialized.update(across)
    shared = _shared_products([*targets, *across.values()])
    materialized.update(shared)
    chain_cuts = _chain_cuts(order, materialized)
    materialized.update(chain_cuts)
    produced: set[int] = set()
    # shared products, cuts of long chains, and values a kernel would recompute too often
    stored_apart: set[int] = set(shared) | set(chain_cuts) | set(across)
    kernels: list[RenderedKernel] = []
    queue: list[tuple[int, int]] = []
    queued: set[int] = set()

    def enqueue_pending() -> None:
        for key, node in materialized.items():
            if key not in produced and key not in queued:
                queued.add(key)
                # nodes the scheduler made (a product's packed operand) come first: they read only the trace's
                heapq.heappush(queue, (-position.get(key, len(position)), key))

    enqueue_pending()
    while queue:
        _, key = heapq.heappop(queue)
        if key in produced:
            continue
        node = materialized[key]
        kernels.append(collective_kernel(node, produced) if node.op is Op.COLLECTIVE else
                       _build_kernel(node, materialized, produced, traits, allow_extra_outputs, stored_apart))
        enqueue_pending()
    return _launch_order(kernels, allow_extra_outputs)


def _collectives(order: Sequence[Node]) -> dict[int, Node]:
    """COLLECTIVE nodes and their sources (but buffers): the runtime combines stored values, not expressions."""
    found: dict[int, Node] = {}
    for node in order:
        if node.op is Op.COLLECTIVE:
            found[id(node)] = node
            found.update((id(source), source) for source in node.src if not source.realized)
    return found


def _shared_products(targets: Sequence[Node]) -> dict[int, Node]:
    """Matrix products that several targets fuse (a gradient feeding Adam's three updates) get a tiled kernel of
    their own; fused into each target's kernel they would be computed once per target, untiled."""
    fused_into: dict[int, int] = {}
    products: dict[int, Node] = {}
    for target in targets:
        stack, seen = [target], set()
        while stack:
            node = stack.pop()
            if id(node) in seen or node.op in (Op.BUFFER, Op.COLLECTIVE):
                continue
            seen.add(id(node))
            if node.op is Op.SUM and matmul_axes(node) is not None:
                fused_into[id(node)] = fused_into.get(id(node), 0) + 1
                products[id(node)] = node
            elif node.op not in REDUCE_OPS:
                stack.extend(node.src)
    return {key: products[key] for key, count in fused_into.items() if count > 1}


def _chain_cuts(order: Sequence[Node], materialized: dict[int, Node]) -> dict[int, Node]:
    """Nodes to store so that no kernel fuses a chain of more than FUSION_DEPTH_LIMIT ops.

    Fused whole, a chain of 100 000 ops (an unrealized loop of updates, Python's `sum` over a list) would be one
    kernel of 100 000 statements: minutes to compile, and as long to render. Cut every FUSION_DEPTH_LIMIT ops,
    it is a few hundred kernels of one shape, which compile once. One pass, sources first: a node's depth is
    the longest chain of ops from a leaf or a stored node; a node that would pass the limit stores its deepest
    sources instead (so the users of a value at the limit share one cut, rather than each being cut)."""
    depth: dict[int, int] = {}
    cuts: dict[int, Node] = {}

    def above(source: Node) -> int:
        return 0 if id(source) in materialized or id(source) in cuts else depth[id(source)]

    for node in order:
        deepest = max(map(above, node.src), default=-1)
        if deepest + 1 > FUSION_DEPTH_LIMIT:
            cuts.update((id(s), s) for s in node.src if above(s) > FUSION_DEPTH_LIMIT // 2)
            deepest = max(map(above, node.src))
        depth[id(node)] = deepest + 1
    return cuts


def _launch_order(kernels: list[RenderedKernel], allow_extra_outputs: bool) -> list[RenderedKernel]:
    """Producers before consumers; a cycle (only possible through extra outputs) asks for a plainer schedule."""
    producer = {id(node): k for k, kernel in enumerate(kernels) for node in kernel.outputs}
    ordered: list[RenderedKernel] = []
    state: dict[int, int] = {}  # 1 visiting, 2 done
    for first in range(len(kernels)):
        stack = [first]  # depth first, iteratively: a chain of kernels can be thousands long
        while stack:
            k = stack[-1]
            if state.get(k) == 2:
                stack.pop()
                continue
            state[k] = 1
            waiting = [producer[id(node)] for node in kernels[k].loads if node.op is not Op.BUFFER
                       and state.get(producer[id(node)]) != 2]
            if any(state.get(p) == 1 for p in waiting):
                if allow_extra_outputs:
                    raise ScheduleConflict(kernels[k].outputs[0])
                raise RuntimeError("zyx scheduler produced a cyclic schedule")
            if waiting:
                stack.extend(waiting)
                continue
            state[k] = 2
            ordered.append(kernels[k])
            stack.pop()
    return ordered
