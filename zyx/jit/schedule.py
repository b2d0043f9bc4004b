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
from dataclasses import dataclass, replace
from itertools import islice
from typing import Callable, Optional, Sequence

from ..trace.node import Node, toposort
from ..trace.ops import ELEMENTWISE_OPS, MOVEMENT_OPS, Op, REDUCE_OPS
from .collective import collective_kernel
from .rematerialize import rematerialize
from .rewrite import rewrite_graph
from .device_traits import DeviceTraits
from .choices import FAMILIES, NO_TUNING, Choice, Options, TunedChoices, TuneSite, fits
from .cpu_matmul import (COPY_STATEMENTS, PackedCopyLowering, copy_tile, lower_cpu_matmul, panel_copy,
                         plan_cpu_matmul)
from .matmul import BLOCKS, LocalTileLowering, TilePlan, local_tile_options, plan_local_tiles
from .operand_layout import cheaper_stored
from .tensor_cores import KINDS, WGMMA, lower_tensor_cores, tensor_core_options
from .tiling import broadcast_axes, choose_tile, hosted_matmul, matmul_axes, space_axes, tile_axes
from .kernel_memo import Facts, KernelMemo
from .kernel_ir import Gather, Kernel, Load, RenderedKernel, Role, walk
from .lower import KernelTooLarge, LoweredKernel, ScheduleConflict, lower
from . import print_opencl, print_wgsl
from .print_common import kernel_name
from .attention import attention_form, gradient_form, lower_attention, match_attention
from .attention_grad import (GradientProduct, gradient_products, gradients_share_kernels,
                             lower_attention_gradient, match_attention_gradient)
from .attention_cores import lower_core_attention
from .attention_grad_cores import lower_core_attention_gradient, on_tensor_cores
from .attention_grad_tiled import lower_tiled_attention_gradient, may_tile
from .attention_grad_tiles import lower_staged_attention_gradient
from .attention_tiled import lower_tiled_attention
from .attention_tiles import lower_staged_attention
from .rows import (kernel_nodes, lower_rows, read_by_earlier_rows, row_length, statistics_read_elsewhere,
                   stored_statistics)
from .segments import lower_segments, plan_segments
from .split import lower_split, split_options
from .stored_reductions import read_stored_reductions
from .transforms.double_buffer import double_buffer
from .transforms.group import GROUP_MAX_OUTPUTS, UNROLLED_TRIPS, group_reductions
from .transforms.online_sums import online_sums
from .transforms.keep_in_output import keep_in_output
from .transforms.paired_stores import paired_stores
from .transforms.registers import rows_in_registers
from .transforms.unroll import unroll_reductions
from .transforms.upcast import upcast
from .transforms.vector import vectorize


UNROLL = 8                    # accumulators per reduction loop of a scalar kernel
VECTOR_UNROLL = 4             # vector accumulators per reduction loop (fewer where the trips do not divide)
LANE_BYTES = 16               # what a GPU item reducing bfloat16 values reads a load (`_bf16_lanes`)
# bfloat16 rows a work group reduces in vector lanes at least this long: on an H100 W7's logits (50 304 values a row,
# read two bytes a load) went 1.19 -> 1.06 ms, its rows of 768 (3 values an item) 4.98 -> 5.89 ms in all
NARROW_GROUP_ROW = 8192
# A CPU kernel of fewer multiply-adds (outputs x the longest reduction) than this is compiled for longer than it
# runs: one output per item, its reductions not unrolled. PoCL's optimizer spent 23 s on a 32 x 16 x 4 product in
# an 8 x 16 tile (2.8 s at 2 x 8, 0.1 s untiled), 9 s on a launch group of 8-way unrolled 32-element sums.
SMALL_WORK = 1 << 16
# A GPU row kernel's items take this many values (float4 vectors) of each pass, its groups at least
# ROW_MIN_GROUP items (a warp) where the row has as many: softmax 4096x1024 on the H200 ran at 1.9 TB/s with
# one vector per item (groups of 256), 2.8 with four (groups of 64), 1.7 with eight (groups of 32).
ROW_ITEM_VALUES = 4
ROW_MIN_GROUP = 32
FUSION_DEPTH_LIMIT = 256      # ops on the longest chain one kernel fuses: a 100 000-op chain stores every 256th
SCALAR_READ_WIDELY = 1024     # elements a CPU kernel computes from a costly scalar, at least, before it is stored
COSTLY_SCALAR_OPS = frozenset({Op.POW, Op.EXP, Op.LOG, Op.SIN, Op.COS, Op.TANH, Op.SIGMOID, Op.ERF})
READS_LIMIT = 4               # arrays of its size a value read by several ops is recomputed from, at most
READS_TRACKED = 64            # arrays counted per value before it counts as reading too many
GROUP_MIN_REDUCE = 256        # reductions shorter than this are fine on one work item


def schedule(targets: Sequence[Node], traits: DeviceTraits = DeviceTraits(),
             tuned: TunedChoices = NO_TUNING, memoize: bool = True) -> tuple[list[RenderedKernel], list[Node]]:
    """Kernels, in launch order, that compute every target; and the targets as the kernels know them
    (rewrites may have replaced them; they correspond by position). A kernel for which `tuned` holds a choice
    is shaped with it instead of the heuristics' (each kernel's `site` says how it was shaped). Kernels waiting
    for each other's extra outputs (a cycle) are built again without extra outputs, and the values that closed the
    cycle are stored apart (a kernel of their own each: no other kernel takes them up as extra outputs and closes
    the next cycle with them, as W7's gradient clipping did, 2 kernels an attempt until the attempts ran out); the
    others as before: a region met before gets the kernel built for it (kernel_memo.py; `memoize=False` builds
    every kernel); after CYCLE_RETRIES such attempts no kernel gets extra outputs."""
    targets = rewrite_graph(targets, traits.gpu, traits.compute_units)
    memo = KernelMemo() if memoize else None
    plan = _plan(targets, traits)
    targets, copies = rematerialize(targets, plan.materialized, plan.users, lambda value: _fused_ops(
        value, plan.materialized, BROADCAST_MIN_OPS) >= BROADCAST_MIN_OPS) if traits.gpu else (targets, [])
    if copies:
        plan = _plan(targets, traits)
        recomputed = frozenset(id(copy) for copy in copies)
        plan = replace(plan, materialized={**plan.materialized, **{id(copy): copy for copy in copies}},
                       stored_apart=plan.stored_apart | recomputed, recomputed=recomputed)
    plain: set[int] = set()  # roots whose kernels store nothing but their root
    for _ in range(CYCLE_RETRIES):
        try:
            return _schedule(targets, traits, tuned, True, memo, plain, plan), targets
        except KernelCycle as cycle:
            plain.update(id(root) for root in cycle.roots)
            plan = replace(plan, stored_apart=plan.stored_apart | {id(value) for value in cycle.values})
    return _schedule(targets, traits, tuned, False, memo, plain, plan), targets


CYCLE_RETRIES = 8  # schedules tried with extra outputs (each walk finds the cycles it meets; a small GPT needs 2-3)


class KernelCycle(Exception):
    """Kernels wait for each other (through values they store as extra outputs); `roots`: the roots of the kernels
    storing the extra outputs waited for; `values`: those extra outputs."""

    def __init__(self, roots: list[Node], values: list[Node]):
        super().__init__(f"kernels of {len(roots)} roots wait for each other's extra outputs")
        self.roots = roots
        self.values = values


def _build_kernel(root: Node, materialized: dict[int, Node], produced: set[int], traits: DeviceTraits,
                  allow_extra_outputs: bool, stored_apart: set[int], tuned: TunedChoices,
                  planned: dict[int, tuple[Node, Choice]], users: dict[int, list[Node]], position: dict[int, int],
                  early: set[int] = frozenset(), memo: Optional[KernelMemo] = None) -> RenderedKernel:
    """The kernel storing `root` (`_built`), or the kernel `memo` holds for a region like its own (re-bound to
    it); what the kernel reads from others becomes a node to store, what it stores is produced. An attention
    product is built afresh: whether it is one kernel with its softmax depends on values stored below the region a
    row kernel of it reads (match_attention), which the memo's key does not hold (a bf16 GPT's schedule without
    extra outputs took attention's forward as three row kernels from the attempt with them, where its scores'
    exponentials were stored)."""
    if memo is not None and match_attention(root, {}, traits.gpu) is not None:
        memo = None
    roots = [root, *(sibling.product for sibling in _gradient_siblings(root, materialized, produced, traits)[1])]
    left = _left_to_earlier_rows(root, materialized, produced | stored_apart, users, position, traits)
    facts = Facts(materialized, produced, stored_apart | left, early)
    choice = _planned_choice(root, planned)
    found = memo.find(roots, facts, allow_extra_outputs, choice) if memo is not None else None
    if found is not None:
        kernel, apart, made = found
        for node in apart:
            materialized[id(node)] = node
            stored_apart.add(id(node))
        planned.update((id(node), (node, made_choice)) for node, made_choice in made)
    else:
        before = Facts(set(materialized), set(produced), stored_apart | left, early)
        plans = dict(planned)
        kernel, conflicted = _built(root, materialized, produced, traits, allow_extra_outputs, stored_apart, tuned,
                                    planned, users, left, early)
        if memo is not None and not conflicted and all(plans.get(key, plan) == plan for key, plan in planned.items()):
            apart = [materialized[key] for key in materialized if key not in before.materialized]
            memo.remember(roots, before, allow_extra_outputs, kernel, [n for n in apart if id(n) in stored_apart],
                          choice, [plan for key, plan in planned.items() if key not in plans])
    for node in kernel.needs:
        materialized.setdefault(id(node), node)
    produced.update(id(node) for node in kernel.outputs)
    return kernel


def _planned_choice(root: Node, planned: dict[int, tuple[Node, Choice]]) -> Optional[Choice]:
    """The choice shaping the kernel of `root` where the scheduler made it for another kernel's (`_build_shaped`)."""
    made = planned.get(id(root))
    return made[1] if made is not None and made[0] is root else None


def _built(root: Node, materialized: dict[int, Node], produced: set[int], traits: DeviceTraits,
           allow_extra_outputs: bool, stored_apart: set[int], tuned: TunedChoices,
           planned: dict[int, tuple[Node, Choice]], users: dict[int, list[Node]], left: set[int],
           early: set[int]) -> tuple[RenderedKernel, bool]:
    """A kernel that grows too large stores its most recomputed value in a kernel of its own and tries again; one
    that would read back a reduction it stores as an extra output is built again without extra outputs (the
    flag returned says so). `planned`: the choices of kernels for nodes the scheduler made (read, and added to
    by the kernels made here). A kernel waiting for values other kernels make leaves the `early` reductions to
    kernels of their own; `left`: the row statistics it loads, which a kernel launched before it stores
    (`_left_to_earlier_rows`)."""
    waits = early and not _reads_inputs_only(root, materialized, early)
    product = _product_stored_apart(root, materialized, produced | stored_apart, users, traits.gpu)
    while product is not None:
        materialized[id(product)] = product
        stored_apart.add(id(product))
        product = _product_stored_apart(root, materialized, produced | stored_apart, users, traits.gpu)
        if traits.gpu and product is not None and id(product) not in materialized:
            product = None  # (after the first, a GPU kernel hosts a product it would compute, not one stored anyway)
    beside = _products_beside(root, materialized, users, BESIDE_MIN_K if traits.gpu else CPU_BESIDE_MIN_K)
    for value in [*beside, *_broadcast_into_reductions(root, materialized, traits)]:
        materialized[id(value)] = value
        stored_apart.add(id(value))
    extra_outputs, cuts = allow_extra_outputs, 0
    while True:
        try:
            apart = frozenset(stored_apart | left | early if waits else stored_apart | left)
            kernel = _build_shaped(_Site(root, materialized, produced, extra_outputs, apart), traits, tuned,
                                   planned)
            break
        except KernelTooLarge as too_large:
            cuts += 1
            for node in (too_large.node, *(too_large.frontier if cuts > CUTS_ONE_AT_A_TIME else ())):
                materialized[id(node)] = node
                stored_apart.add(id(node))
        except ScheduleConflict:
            if not extra_outputs:
                raise
            extra_outputs = False  # (only this kernel stores no value but its root; the others keep theirs)
    return kernel, extra_outputs != allow_extra_outputs


def _product_stored_apart(root: Node, materialized: dict[int, Node], loaded: set[int],
                          users: dict[int, list[Node]], gpu: bool) -> Optional[Node]:
    """The product the kernel of `root` would host where a kernel of its own should store it, this one reading it.
    On a CPU, one stored in another shape than the root's, or one that another kernel stores (a CPU kernel stores
    nothing beside its root; the one storing a product is tiled): hosted, W7's GELU backward walked the stored
    pre-activation's product in its loop and then read it from memory (6.5 ms at the CPU size), or as a plain
    kernel tiled its outputs as that product's, scalar (28 ms). On a GPU, one of a block
    of outputs or more that is stored anyway, or will be (`_feeds_a_reduction`): a tiled lowering stores nothing
    beside its root, so hosting it would lay this kernel's reads of the stored product out as a product's
    accumulators, 128 values an item (W7's GELU backward, dY·W_outᵀ read by the bias gradient's column sums too:
    0.96 ms a layer under bf16 autocast on the H200, where an elementwise kernel moves those bytes in about a tenth
    of that), or compute the product a second time."""
    product = hosted_matmul(root, materialized, loaded)
    if product is None or product is root:
        return None
    if not gpu:
        return product if space_axes(root, product) is None or id(product) in materialized else None
    if product.numel < PRODUCT_BLOCK ** 2:  # (fewer outputs than a block: computed in place and stored beside)
        return None
    stored = id(product) in materialized or (product.src[0].shape[product.arg[0]] >= BESIDE_MIN_K
                                             and _feeds_a_reduction(product, root, users))
    return product if stored else None


def _feeds_a_reduction(product: Node, root: Node, users: dict[int, list[Node]]) -> bool:
    """Whether a reduction reads `product` other than through `root`, directly or through elementwise and movement
    ops: that reduction's kernel needs the product's values stored. (Under bf16 autocast a cross-entropy's row max
    reads GPT-2's logits cast to float32, which were stored, 3.3 GB, while the gradient's kernel computed the
    16384 x 768 x 50304 product again: 4.5 + 6.2 ms on the H200.)"""
    def passes(node: Node) -> bool:
        return node is not root and (node.op in ELEMENTWISE_OPS or node.op in MOVEMENT_OPS)
    return any(node.op in REDUCE_OPS for node in _reached(product, users, passes) if node is not root)


CUTS_ONE_AT_A_TIME = 4  # a kernel outgrowing its statements this often stores every value computed whole where it
# outgrew them, not only the last (KernelTooLarge.frontier): each attempt lowers the kernel again from its root, so
# cutting one value at a time took time quadratic in a large graph (a 3 600-node float64 second derivative of erfinv,
# 6 elements: 741 lowerings for 159 kernels, 37 s on PoCL's host); a kernel cut fewer times is built as before
BESIDE_MIN_K = 128  # a product a GPU kernel would compute beside the one it hosts, reducing this many elements and
# more, is stored by a (tiled) kernel of its own: fused, each output walks its k reading both operands from memory
# (GELU's backward, dY·W_out, beside the pre-activation x̂·W_fcᵀ it recomputed: 8.4 ms on the H200, where such a
# product alone took 1.7); a shorter one costs less than its store: attention's scores beside dP (k = 64, a head)
# would be stored as a T x T array
CPU_BESIDE_MIN_K = 16  # the same on CPUs, where a product computed beside is a scalar loop per output, its operand
# read lane by lane across rows: W7's dS kernel at the CPU size (8 x 4 x 256 x 256, PoCL 3.1, Zen 2), computing
# attention's scores (k = 64) so beside dP, took 10.5 ms a layer; with the scores stored by a tiled kernel, 4.9


def _products_beside(root: Node, materialized: dict[int, Node], users: dict[int, list[Node]],
                     min_k: int) -> list[Node]:
    """The products the kernel storing `root` would compute besides the one it hosts (tiling.hosted_matmul), at
    least `min_k` long: each to store. The one hosted is one at the root's positions that only this kernel
    reads, where there is one (GELU's backward keeps dY·W_out and stores the pre-activation, which its forward
    reads too); else the first found."""
    region, found, stack = set(), [], [root]
    while stack:
        node = stack.pop()
        if id(node) in region:
            continue
        region.add(id(node))
        if node is not root and id(node) in materialized:
            continue
        if matmul_axes(node) is not None and node.src[0].numel:
            found.append(node)
        elif node is root or node.op in ELEMENTWISE_OPS or node.op in MOVEMENT_OPS:
            stack.extend(node.src)
    if len(found) < 2:
        return []
    hosted = [product for product in found if product.numel == root.numel] or found
    kept = next((product for product in hosted if not _read_elsewhere(product, root, region, users)), hosted[0])
    return [product for product in found
            if product is not kept and product.src[0].shape[product.arg[0]] >= min_k]


def _read_elsewhere(value: Node, root: Node, region: set[int], users: dict[int, list[Node]]) -> bool:
    """Whether a node outside the kernel's `region` (ids) reads `value` or a value the region computes from it
    (below the root: a linear layer's product through its bias)."""
    stack, seen = [value], set()
    while stack:
        node = stack.pop()
        if node is root or id(node) in seen:
            continue
        seen.add(id(node))
        for user in users.get(id(node), ()):
            if id(user) not in region:
                return True
            stack.append(user)
    return False


BROADCAST_MIN_FACTOR = 16  # a value a reduction reads broadcast this many times over ...
BROADCAST_MIN_OPS = 8      # ... and computed by this many fused ops is stored rather than recomputed
OP_WEIGHT = {Op.ERF: 8}    # ops counted as several: erf is a polynomial of that many (20 ops before it was an op)
PRODUCT_BROADCAST_MIN = 1024  # a product's operand, computed once per block of outputs (a tile, up to 256 wide)
# along the axis it is broadcast to: stored where that is 4 blocks and more (a one-hot embedding gradient's 50 304
# vocabulary rows took 175 ms on the H200 for one GPT-2 step, recomputing a layer norm's backward in its prologue)
GPU_PRODUCT_BROADCAST_MIN = 512  # on GPUs where it is 4 blocks of 128 and more: GPT-2's GELU and GELU backward,
# recomputed in the staging of the 768-wide products reading them, ran those at 18-27 TFLOP/s on the H200, where
# plain ones ran at 45 (storing the operand costs a write and a read at 4 TB/s)
PRODUCT_BLOCK = BLOCKS[0][0]  # outputs of a GPU product's block along each axis: its operands are staged once per block


def _broadcast_into_reductions(root: Node, materialized: dict[int, Node], traits: DeviceTraits) -> list[Node]:
    """Values that a reduction of this kernel would recompute for every output it broadcasts them to (along an
    axis it does not reduce: a value broadcast along the reduced axis is computed once per output, outside the
    loop), computed by at least BROADCAST_MIN_OPS ops and broadcast at least BROADCAST_MIN_FACTOR times (a product's
    operand PRODUCT_BROADCAST_MIN times, on a GPU GPU_PRODUCT_BROADCAST_MIN times), and on GPUs the operands of
    products that cost less stored (`_staging_dearer`, `_copied_by_tensor_cores`). An
    embedding's gradient (a masked sum over the tokens for every vocabulary row) fused its incoming gradient, the
    first block's layer-norm backward, and so computed it 512 times: 373 of a 1-layer GPT step's 678 ms on PoCL."""
    gpu = traits.gpu
    found: dict[int, Node] = {}
    stack: list[tuple[Node, Optional[Node]]] = [(root, None)]  # (node, the reduction reading it elementwise)
    seen = set()
    while stack:
        node, reduction = stack.pop()
        if (id(node), id(reduction)) in seen or node.op is Op.BUFFER or (node is not root and id(node) in materialized):
            continue
        seen.add((id(node), id(reduction)))
        if reduction is not None and node.op is Op.EXPAND and node.shape == reduction.src[0].shape:
            value = node.src[0]
            while value.op in MOVEMENT_OPS and id(value) not in materialized:
                value = value.src[0]
            spread = math.prod(size for axis, (size, inner) in enumerate(zip(node.shape, node.src[0].shape))
                               if size != inner and axis not in reduction.arg)
            product = matmul_axes(reduction) is not None
            least = ((GPU_PRODUCT_BROADCAST_MIN if gpu else PRODUCT_BROADCAST_MIN) if product
                     else BROADCAST_MIN_FACTOR)
            if value.op in ELEMENTWISE_OPS and id(value) not in materialized and (
                    (spread >= least and _fused_ops(value, materialized, BROADCAST_MIN_OPS) >= BROADCAST_MIN_OPS)
                    or (gpu and product and (_copied_by_tensor_cores(value, spread, traits)
                                             or _staging_dearer(node, value, reduction, spread, materialized)))):
                found[id(value)] = value
                continue
        inside = node if node.op in REDUCE_OPS else reduction if node.op in ELEMENTWISE_OPS else None
        stack.extend((source, inside) for source in node.src)
    return list(found.values())


def _copied_by_tensor_cores(value: Node, spread: int, traits: DeviceTraits) -> bool:
    """Whether a 16-bit product operand computed under the product (autocast's cast of a float32 weight or
    activation, a gradient's elementwise backward) is stored first on a device multiplying it by warpgroups
    (Hopper), at GPU_PRODUCT_BROADCAST_MIN outputs and more: a stored operand is copied by cp.async and the product
    handed slices by a producer warpgroup, a computed one staged through registers by every item. Under bf16
    autocast W7's products ran at 26-41 TFLOP/s on the H200 so, bf16 8192³ from stored operands at 665. (Before
    Hopper, and TF32, unmeasured: left fused.)"""
    kind = KINDS.get(value.dtype.name)
    return (spread >= GPU_PRODUCT_BROADCAST_MIN and WGMMA in traits.tensor_cores and kind != "tf32"
            and kind in traits.tensor_cores)


def _staging_dearer(operand: Node, value: Node, product: Node, spread: int, materialized: dict[int, Node]) -> bool:
    """Whether a GPU product staging `operand` (an EXPAND of the product's input, `value` computed under it) once
    per block of outputs along the `spread` it is broadcast to reads more memory than `value` stored first
    (operand_layout.cheaper_stored): attention's dQ, dKᵀ and dV concatenated into the (tokens, 3d) gradient of
    the QKV projection, read a float per 32-byte sector in two of three parts, ran its weight and input gradients
    at 21 and 27 TFLOP/s on the H200 (42 and 47 from a stored gradient)."""
    n_axis, m_axis = matmul_axes(product)  # type: ignore[misc]
    row = n_axis if m_axis in broadcast_axes(operand) else m_axis
    return cheaper_stored(operand.src[0], value, (product.arg[0], row), max(1, spread // PRODUCT_BLOCK), materialized)


def _fused_ops(value: Node, materialized: dict[int, Node], enough: int) -> int:
    """Elementwise ops a kernel computes for `value` (counted up to `enough`; an OP_WEIGHT op as several)."""
    count, stack, seen = 0, [value], set()
    while stack and count < enough:
        node = stack.pop()
        if id(node) in seen or node.op is Op.BUFFER or (node is not value and id(node) in materialized):
            continue
        seen.add(id(node))
        count += OP_WEIGHT.get(node.op, 1) if node.op in ELEMENTWISE_OPS else 0
        if node.op not in REDUCE_OPS:
            stack.extend(node.src)
    return count


@dataclass(frozen=True)
class _Site:
    """Where a kernel is lowered: its root and what the scheduler has decided so far (read only here)."""

    root: Node
    materialized: dict[int, Node]
    produced: set[int]
    allow_extra_outputs: bool
    apart: frozenset

    @property
    def loaded(self) -> frozenset:
        """Ids of the stored values the kernel reads whatever it stores: those earlier kernels store and those
        stored apart (tiling.hosted_matmul)."""
        return self.apart | self.produced


@dataclass
class _Shaped:
    """A lowered kernel shaped for the device, with the choice it was shaped with (None: nothing to choose,
    as for a packed operand's copy or a row kernel) and the values each of the choice's parameters may take."""

    lowered: LoweredKernel
    kernel: Kernel
    choice: Optional[Choice] = None
    options: Options = ()
    planned: tuple[tuple[Node, Choice], ...] = ()  # nodes it needs that the scheduler made, and their kernels' choices


def _build_shaped(site: _Site, traits: DeviceTraits, tuned: TunedChoices,
                  planned: dict[int, tuple[Node, Choice]]) -> RenderedKernel:
    """Lower the kernel storing the site's root and shape it as the heuristics choose (`_shape`); where `tuned`
    holds a choice for that kernel (by its fingerprint) that fits it, shape it again with that choice. A node the
    scheduler made for another kernel's choice (a split product's partials) is shaped with the choice `planned`
    holds for it, and not searched on its own."""
    made = _planned_choice(site.root, planned)
    if made is not None:
        shaped = _shape(site, traits, made)
        return rendered(shaped.lowered, shaped.kernel, traits)
    shaped = _shape(site, traits, None)
    heuristic, options = shaped.choice, shaped.options
    if shaped.choice is None or not fits(heuristic, heuristic.family, options):
        return rendered(shaped.lowered, shaped.kernel, traits)  # (ZYX_TILE asked for a tile no search would try)
    key, name = shaped.kernel.fingerprint(), kernel_name(shaped.kernel, PRINTERS[traits.language][2])
    choice = tuned.get(key)
    if choice is not None and choice != heuristic and fits(choice, heuristic.family, options):
        try:
            shaped = _shape(site, traits, choice)
        except KernelTooLarge:  # (a bigger tile outgrew the statement limit here: the heuristics' kernel then)
            pass
    planned.update((id(node), (node, choice)) for node, choice in shaped.planned)
    return rendered(shaped.lowered, shaped.kernel, traits, TuneSite(key, name, heuristic, shaped.choice, options))


def _shape(site: _Site, traits: DeviceTraits, choice: Optional[Choice]) -> _Shaped:
    """Shape the kernel storing `site.root` with `choice` (None: as the heuristics choose): register tiles for
    products, vector lanes on CPUs, a work group per output for GPU kernels whose few outputs each need a long
    reduction, else unrolled reductions."""
    root, materialized = site.root, site.materialized
    family = choice.family if choice is not None else None
    attention = _fused_attention(site, traits) or _attention_gradient(site, traits)
    if attention is not None:  # softmax(X) V whose P no other kernel stores: one kernel, nothing to choose
        return _Shaped(attention, attention.ir)
    product = hosted_matmul(root, materialized, site.loaded)
    segments = plan_segments(root, product, materialized, traits.gpu, traits.max_group_size) if family is None else None
    if segments is not None:  # a one-hot product (an embedding's gradient): a scan of the tokens, nothing to choose
        lowered = lower_segments(root, materialized, site.produced, segments, site.apart, traits.max_params)
        return _Shaped(lowered, lowered.ir)
    if not traits.gpu and family in (None, "cpu_matmul"):
        cpu_plan = plan_cpu_matmul(root, product, materialized, traits.native_width, choice,
                                   traits.multiply_add_latency)
        if cpu_plan is not None:
            lowered = lower_cpu_matmul(root, materialized, site.produced, cpu_plan, site.apart)
            return _Shaped(lowered, lowered.ir, cpu_plan.choice, cpu_plan.options)
    if traits.tensor_cores and family in (None, "tensor_cores"):
        cores = lower_tensor_cores(root, materialized, site.produced, product,
                                   traits.tensor_cores, traits.tensor_core_local_memory, site.apart, traits.max_params,
                                   choice, traits.compute_units)
        if cores is not None:
            lowered, kernel, plan = cores
            options = tensor_core_options(traits.tensor_core_local_memory, plan.pipelined, plan.warpgroup,
                                          split_options(plan.product, "tensor_cores"), plan.kind != "tf32")
            return _split(site, traits, plan, options) if plan.split > 1 else _Shaped(lowered, kernel, plan.choice,
                                                                                      options)
    if traits.gpu and family in (None, "local_tiles"):
        splits = (1,) if product is None else split_options(product)
        plan = plan_local_tiles(root, product, traits.local_memory, choice, splits, traits.compute_units)
        if plan is not None:
            options = local_tile_options(splits, traits.search_local_memory, traits.max_group_size)
            if plan.split > 1:
                return _split(site, traits, plan, options)
            lowered = LocalTileLowering(root, materialized, site.produced, plan, site.apart, traits.max_params).lower()
            kernel = (double_buffer(lowered.ir) if plan.buffers == 2 else None) or lowered.ir
            return _Shaped(lowered, kernel, plan.choice, options)
    return _shape_plain(site, traits, choice)


def _split(site: _Site, traits: DeviceTraits, plan: TilePlan, options: Options) -> _Shaped:
    """The kernel of a root whose product `plan` splits along k (split.py): the partial products in a kernel of
    their own, shaped with the plan's choice unsplit, summed in this one."""
    lowered, partial = lower_split(site.root, site.materialized, site.produced, plan, site.apart, traits.max_params)
    kernel = vectorize(lowered.ir, traits.vector_width) if traits.vector_width > 1 else None
    return _Shaped(lowered, kernel or _unrolled(lowered.ir), plan.choice, options,
                   ((partial, plan.choice.replaced(split=1)),))


def _fused_attention(site: _Site, traits: DeviceTraits) -> Optional[LoweredKernel]:
    """The fused attention kernel storing the site's root (attention.py decides where, and in which form), or
    None. Where the staged form does not apply (the scores' product stored, as in a training step) a CPU gets the
    per-row form, reading the stored scores; a GPU keeps the products (its items would read them a row each,
    uncoalesced)."""
    pattern = match_attention(site.root, site.materialized, traits.gpu)
    if pattern is None:
        return None
    if _cores_form(traits):
        cores = lower_core_attention(site.root, pattern, site.materialized, site.produced, traits.local_memory,
                                     traits.max_group_size, traits.tensor_cores, site.apart, traits.max_params)
        if cores is not None:
            return replace(cores, ir=paired_stores(cores.ir))
    form = attention_form(traits.gpu)
    if form in ("tiled", "cores") and traits.language == "opencl":
        tiled = lower_tiled_attention(site.root, pattern, site.materialized, site.produced, traits.local_memory,
                                      traits.max_group_size, True, site.apart, traits.max_params)
        if tiled is not None:
            return tiled
    if form != "rows":
        staged = lower_staged_attention(site.root, pattern, site.materialized, site.produced, traits.local_memory,
                                        traits.max_group_size, traits.language == "opencl", site.apart,
                                        traits.max_params)
        if staged is not None or traits.gpu:
            return staged
    return lower_attention(site.root, pattern, site.materialized, site.produced, site.apart, traits.max_params)


def _cores_form(traits: DeviceTraits) -> bool:
    """Whether attention takes the tensor-core form (attention_cores.py, attention_grad_cores.py) where it applies:
    ZYX_ATTENTION_FORM, by default where the device multiplies bfloat16 or float16 on tensor cores (OpenCL only).
    Its kernels store neighbouring outputs of the mma layout as one word (transforms/paired_stores.py)."""
    cores = bool({"bf16", "f16"} & set(traits.tensor_cores))
    return attention_form(traits.gpu, cores) == "cores" and traits.language == "opencl"


def _attention_gradient(site: _Site, traits: DeviceTraits) -> Optional[LoweredKernel]:
    """The kernel storing a product of attention's backward that recomputes P (attention_grad.py), with the other
    such products still to store that walk alike; None where the root is no such product."""
    plan, siblings = _gradient_siblings(site.root, site.materialized, site.produced, traits)
    if plan is None:
        return None
    if _cores_form(traits):
        cores = lower_core_attention_gradient(plan, siblings, site.materialized, site.produced, traits.local_memory,
                                              traits.max_group_size, traits.tensor_cores, site.apart,
                                              traits.max_params)
        if cores is not None:
            return replace(cores, ir=paired_stores(cores.ir))
    form = gradient_form(traits.gpu)
    if _tiles_gradients(traits):
        tiled = lower_tiled_attention_gradient(plan, siblings, site.materialized, site.produced,
                                               traits.search_local_memory, traits.max_group_size, True, site.apart,
                                               traits.max_params)
        if tiled is not None:
            return tiled
    if form != "rows":
        staged = lower_staged_attention_gradient(plan, siblings, site.materialized, site.produced, traits.local_memory,
                                                 traits.max_group_size, traits.language == "opencl", site.apart,
                                                 traits.max_params)
        if staged is not None:
            return staged
    return lower_attention_gradient(plan, siblings, site.materialized, site.produced, site.apart, traits.max_params)


def _tiles_gradients(traits: DeviceTraits) -> bool:
    """Whether attention's backward takes the register-tiled form (attention_grad_tiled.py: OpenCL only)."""
    return gradient_form(traits.gpu) == "tiled" and traits.language == "opencl"


def _gradient_siblings(root: Node, materialized: dict[int, Node], produced: set[int], traits: DeviceTraits
                       ) -> tuple[Optional[GradientProduct], list[GradientProduct]]:
    """`root` as a product of attention's backward recomputing P, and the products still to store that recompute
    the same P (those that may share its kernel: where products share kernels; always in the tensor-core form,
    where dK and dV share P's recomputation as FlashAttention-2's do; and in the tiled form where it may apply,
    whose dK and dV share one); (None, []) where `root` is no such product."""
    plan = match_attention_gradient(root, materialized, traits.gpu)
    cores = plan is not None and _cores_form(traits) and on_tensor_cores(plan, traits.tensor_cores)
    if plan is None or not (gradients_share_kernels(traits.gpu) or cores
                            or (_tiles_gradients(traits) and may_tile(plan))):
        return plan, []
    others = (match_attention_gradient(node, materialized, traits.gpu) for key, node in materialized.items()
              if key not in produced and node is not root)
    return plan, [other for other in others if other is not None and other.probabilities is plan.probabilities]


def _shape_plain(site: _Site, traits: DeviceTraits, choice: Optional[Choice]) -> _Shaped:
    """One output per item, then a register tile of a product, vector lanes, a work group per output or
    unrolled reductions, as `choice` says (None: as the heuristics choose); a row kernel (rows.py, nothing to
    choose) where the root needs reductions over its own rows."""
    root, materialized, produced = site.root, site.materialized, site.produced
    axes = tile_axes(root, materialized, site.loaded) if root.numel else None
    tile = _product_tile(root, axes, traits, choice)
    if not tile and not traits.gpu and root.numel and copy_tile(root, True):  # a packed operand's copy
        lowered = PackedCopyLowering(root, materialized, produced, False, site.apart, traits.max_params).lower()
        panels = None if root.numel < SMALL_WORK else panel_copy(lowered.ir, root, traits.vector_width)
        if panels is not None:
            return _Shaped(lowered, panels)
        statements = list(walk(lowered.ir.body))
        small = (root.numel < SMALL_WORK or len(statements) > COPY_STATEMENTS
                 or any(isinstance(s, Load) and s.guard for s in statements))
        return _Shaped(lowered, upcast(lowered.ir, lowered.space, copy_tile(root, small)))
    length = None if tile else row_length(root, materialized, produced | site.apart, _long_rows(traits))
    if length is not None and _fuses_rows(length, traits):
        rows = lower_rows(root, materialized, produced, length, site.allow_extra_outputs, site.apart,
                          traits.max_params)
        if rows is not None:
            kept = None if traits.gpu else keep_in_output(rows.ir)
            if kept is not None:  # (its output is read before it is complete: no input may share its buffer)
                rows = replace(rows, ir=kept, misaligned=rows.misaligned | {id(p.node) for p in kept.params
                                                                            if p.kind == "load"})
            return _Shaped(rows, _shape_rows(rows.ir, length, traits))
    lowered = lower(root, materialized, produced, site.allow_extra_outputs and not tile, site.apart,
                    traits.max_params)
    kernel = lowered.ir
    reduces = kernel.axis(Role.REDUCE) is not None
    options = _plain_options(root, axes, traits, reduces)
    if not options:
        return _Shaped(lowered, kernel)
    vector = None
    if choice is None:
        small = not traits.gpu and root.numel * max(lowered.longest_reduction, 1) < SMALL_WORK
        tile = None if small else tile
        width = traits.vector_width if traits.vector_width and not tile and not (traits.gpu and reduces) else 1
        vector = (_vector_kernel(kernel, width, 1 if small else VECTOR_UNROLL, gpu=traits.gpu)
                  if width > 1 else None)
        grouped = (not tile and vector is None and traits.gpu and kernel.work_items < GROUP_MAX_OUTPUTS
                   and lowered.longest_reduction >= GROUP_MIN_REDUCE)
        tile_n, tile_m = ((tile or {}).get(axis, 1) for axis in axes) if axes else (1, 1)
        heuristic = {"tile_n": tile_n, "tile_m": tile_m, "width": width if vector is not None else 1,
                     "unroll": 1 if small else VECTOR_UNROLL if vector is not None else UNROLL,
                     "group": _reduction_group(kernel.work_items, lowered.longest_reduction, traits) if grouped else 0}
        choice = Choice.of("plain", **{name: heuristic[name] for name, _ in options})
    return _Shaped(lowered, _apply_plain(kernel, lowered.space, tile, choice, vector, traits), choice, options)


def _reduction_group(outputs: int, length: int, traits: DeviceTraits) -> int:
    """Items of a GPU reduction's work group: the device's usual group, or its largest where the reduction's
    groups are too few to fill a quarter of its compute units and each reduces LONE_REDUCE values or more (a
    loss's sum over 16 384 rows: one group on one SM, its items' loads one after another, 64 an item in groups of
    256, 16 in groups of 1024). ZYX_LONE_GROUPS=0 keeps the usual group."""
    units = traits.compute_units or UNKNOWN_COMPUTE_UNITS
    if outputs * 4 < units and length >= LONE_REDUCE and os.environ.get("ZYX_LONE_GROUPS") != "0":
        return traits.max_group_size
    return traits.group_size


LONE_REDUCE = 4096


def _product_tile(root: Node, axes: Optional[tuple[int, int]], traits: DeviceTraits,
                  choice: Optional[Choice]) -> Optional[dict[int, int]]:
    """Outputs per item along the product's axes (None: one output per item): `choice`'s, else the device's
    default, except on a GPU for a small product (a work group per output keeps the GPU busier)."""
    if axes is None:
        return None
    if choice is not None:
        tile = {axes[0]: choice.get("tile_n", 1), axes[1]: choice.get("tile_m", 1)}
    else:
        tile = choose_tile(root, axes, traits.gpu)
        if traits.gpu and root.numel // math.prod(tile.values()) < GROUP_MAX_OUTPUTS // 4:
            return None
    tile = {axis: factor for axis, factor in tile.items() if factor > 1}
    return tile or None


def _plain_options(root: Node, axes: Optional[tuple[int, int]], traits: DeviceTraits, reduces: bool) -> Options:
    """What a search may try for a kernel of one output per item: tiles that divide the product's axes, vector
    widths (not for GPU reductions, which get work groups), unrolling and work groups of reductions."""
    family = FAMILIES["plain"]
    options: dict[str, tuple[int, ...]] = {}
    if axes is not None:
        for name, axis in zip(("tile_n", "tile_m"), axes):
            options[name] = tuple(f for f in family[name] if root.shape[axis] % f == 0)
    if traits.vector_width and not (traits.gpu and reduces):
        options["width"] = family["width"]
    if reduces:
        options["unroll"] = family["unroll"]
    if reduces and traits.gpu:
        options["group"] = tuple(g for g in family["group"] if g <= traits.max_group_size)
    return tuple((name, values) for name, values in sorted(options.items()) if len(values) > 1)


def _apply_plain(kernel: Kernel, space: tuple[int, ...], tile: Optional[dict[int, int]], choice: Choice,
                 vector: Optional[Kernel], traits: DeviceTraits) -> Kernel:
    """`kernel` (one output per item) shaped as `choice` says for a device of `traits`; `vector`: its vector kernel,
    if made already. GPU reductions reading bfloat16 in OpenCL C take `_bf16_lanes` (WGSL has no 8-lane vectors)."""
    if tile:
        return upcast(kernel, space, tile)
    words = traits.gpu and traits.language == "opencl" and kernel.axis(Role.REDUCE) is not None
    if choice.get("group", 0):
        long = words and kernel.axis(Role.REDUCE).size >= NARROW_GROUP_ROW  # type: ignore[union-attr]
        return group_reductions((_bf16_lanes(kernel) if long else None) or kernel, choice["group"],
                                traits.warp_shuffles)
    unroll, width = choice.get("unroll", UNROLL), choice.get("width", 1)
    if words and vector is None:
        lanes = _bf16_lanes(kernel)
        vector = lanes and _dividing_unroll(lanes, min(unroll, 8))
    vector = vector or (_vector_kernel(kernel, width, unroll, gpu=traits.gpu) if width > 1 else None)
    return vector or _unrolled(kernel, unroll)


def _bf16_lanes(kernel: Kernel) -> Optional[Kernel]:
    """A GPU reduction reading bfloat16 elements along its loop walking them LANE_BYTES at a time as vector lanes
    (read as 32-bit words: print_opencl._words), combined at the loop's end: an item's own row (attention's
    backward row sums of dO·O, 64 values an item: 470 GB/s read two bytes a load on an H100, 1 520 as 16-byte
    words, .gpu/vload.py), or a work group's (the logits' row statistics, 50 304 values a row). None where some
    load along the loop is not a whole vector (a column sum's items read neighbouring elements: one element each
    is the best load there). Other dtypes keep one element a load: float32 lanes would be read by vloadN, which
    NVIDIA splits into single elements (no gain, .gpu/vload.py), float16 ones by vload_halfN (not measured)."""
    if not any(p.kind == "load" and p.dtype.name == "bfloat16" for p in kernel.params):
        return None
    vector = vectorize(kernel, LANE_BYTES // 2, uniform=True, narrow=True)
    statements = list(walk(vector.body)) if vector is not None else []
    if not any(isinstance(s, Load) and s.mode == "vector" for s in statements) \
            or any(isinstance(s, Gather) for s in statements):
        return None
    return vector


def plain_effect(choice: Choice) -> tuple[tuple[str, int], ...]:
    """The parameters of a "plain" choice that shape the kernel (see `_apply_plain`): a tile overrides the
    rest, work groups ignore vector width and unrolling."""
    values = dict(choice.values)
    if values.get("tile_n", 1) * values.get("tile_m", 1) > 1:
        keep = {"tile_n", "tile_m"}
    elif values.get("group", 0):
        keep = {"group"}
    else:
        keep = set(values)
    return tuple((name, value) for name, value in choice.values if name in keep)


def _unrolled(kernel: Kernel, unroll: int = UNROLL) -> Kernel:
    return unroll_reductions(kernel, lambda trips: unroll if trips >= 2 * unroll else 1)


def _long_rows(traits: DeviceTraits) -> int:
    """Rows past rows.ROW_LIMIT long are one kernel on a GPU where there are at least this many (0: never): a
    work group per row for LONG_ROW_GROUPS groups a compute unit, ZYX_GPU_LONG_ROWS=0 turns it off."""
    if not traits.gpu or os.environ.get("ZYX_GPU_LONG_ROWS") == "0":
        return 0
    return LONG_ROW_GROUPS * (traits.compute_units or UNKNOWN_COMPUTE_UNITS)


LONG_ROW_GROUPS = 4  # a compute unit (a work group per row): fewer rows leave a GPU idle in the last pass
UNKNOWN_COMPUTE_UNITS = 128


def _fuses_rows(length: int, traits: DeviceTraits) -> bool:
    """Whether rows of `length` are one kernel (rows.py) on this device: on GPUs always (rows.ROW_LIMIT aside);
    on CPUs where the scalar tail the vector lanes leave is at most a quarter of the row (rows of 31 on PoCL run
    20% slower in one kernel than as the reductions' kernel and an elementwise one of whole vectors)."""
    return traits.gpu or not traits.vector_width or length % traits.vector_width * 4 <= length


def _group_lanes(kernel: Kernel, length: int, traits: DeviceTraits) -> Kernel:
    """A row kernel walking its passes in vector lanes, for a work group per row, where every read along them is
    a whole vector (lanes gathered one by one would not pay); else `kernel` itself. bfloat16 rows of NARROW_GROUP_ROW
    values or more are lanes on GPUs too, read as 32-bit words (NARROW_GROUP_ROW's comment).
    (Plain reductions keep scalar groups: W2a's row sums measured 3.17-3.21 TB/s in float4 lanes against
    3.33-3.41 as floats.)"""
    narrow = traits.gpu and traits.language == "opencl" and length >= NARROW_GROUP_ROW
    vector = (vectorize(kernel, traits.vector_width, uniform=True, narrow=narrow)
              if traits.vector_width > 1 else None)
    if vector is None or any(isinstance(statement, Gather) for statement in walk(vector.body)):
        return kernel
    return vector


def _group_size(length: int, in_lanes: bool, traits: DeviceTraits) -> int:
    """Items in the work group of an output reducing `length` values: each item takes ROW_ITEM_VALUES of them
    (vectors, `in_lanes`: where `_group_lanes` gave lanes), at least ROW_MIN_GROUP items where there are as many
    values."""
    lanes = traits.vector_width if in_lanes else 1
    group = min(traits.group_size, _power_above(-(-length // (lanes * ROW_ITEM_VALUES))))
    return min(traits.group_size, max(group, min(ROW_MIN_GROUP, _power_above(-(-length // lanes)))))


def _power_above(count: int) -> int:
    """The least power of two at least `count`."""
    return 1 << (count - 1).bit_length()


def _shape_rows(kernel: Kernel, length: int, traits: DeviceTraits) -> Kernel:
    """A row kernel shaped for the device: on GPUs a work group per row (float4 lanes where the row divides) if
    the row is as long as a reduction that gets a work group, each item taking ROW_ITEM_VALUES values (vectors)
    of every pass; elsewhere a row per item, in vector lanes along the row."""
    if traits.gpu and length >= GROUP_MIN_REDUCE:
        if traits.language == "opencl" and length // (max(traits.vector_width, 1) * traits.group_size) > UNROLLED_TRIPS:
            kernel = online_sums(kernel)  # (passes not unrolled, so not held in registers: each reads the row again)
        lanes = _group_lanes(kernel, length, traits)
        return rows_in_registers(group_reductions(lanes, _group_size(length, lanes is not kernel, traits),
                                                  traits.warp_shuffles))
    vector = (_vector_kernel(kernel, traits.vector_width, tails=True, gpu=traits.gpu)
              if traits.vector_width else None)
    return vector or _unrolled(kernel)


PRINTERS = {  # language: (kernel -> (name, source), kernel -> (global size, local size), the printer's version)
    "opencl": (print_opencl.print_kernel, lambda kernel: kernel.launch, print_opencl.VERSION),
    "wgsl": (print_wgsl.print_kernel, print_wgsl.launch, print_wgsl.VERSION),
}


def rendered(lowered: LoweredKernel, kernel: Kernel, traits: DeviceTraits = DeviceTraits(),
             site: Optional[TuneSite] = None) -> RenderedKernel:
    """The kernel printed for the device, with what the scheduler and the program need to know of it (`site`:
    how it was shaped and what a search may try)."""
    printer, launch, _ = PRINTERS[traits.language]
    name, source = printer(kernel)
    loads = [p.node for p in kernel.params if p.kind == "load"]
    global_size, local_size = launch(kernel)
    return RenderedKernel(name, source, lowered.space, list(kernel.params), lowered.outputs, loads, lowered.needs,
                          lowered.misaligned, global_size, local_size, lowered.longest_reduction, site=site,
                          ir=kernel, summed_apart=lowered.summed_apart)


def _vector_kernel(kernel: Kernel, width: int, unroll: int = VECTOR_UNROLL, tails: bool = False,
                   gpu: bool = False) -> Optional[Kernel]:
    """W outputs per item, else (for reductions along contiguous elements) one output per item walked W
    elements at a time (`tails`: the last steps of a loop W does not divide as a loop of their own); each loop
    with up to `unroll` vector accumulators. None when neither applies. On CPU drivers (not `gpu`) outputs whose
    every load is a gather, with no math the driver calls lane by lane, stay scalar; on GPUs half-precision values
    are lanes too (`vectorize`'s `scalar_gathers` and `narrow`)."""
    vector = (vectorize(kernel, width, scalar_gathers=not gpu, narrow=gpu)
              or vectorize(kernel, width, uniform=True, tails=tails, narrow=gpu))
    return None if vector is None else _dividing_unroll(vector, unroll)


def _dividing_unroll(kernel: Kernel, unroll: int) -> Kernel:
    """`kernel`'s loops each with up to `unroll` accumulators, as many as divide its trips (a power of two)."""
    return unroll_reductions(kernel, lambda trips: next(u for u in (16, 8, 4, 2, 1) if u <= unroll and trips % u == 0))


@dataclass(frozen=True)
class _Plan:
    """What every schedule attempt of the same targets starts from (`_plan`): the same for each attempt, so
    computed once (W7's step is scheduled up to nine times, and finding its shared products took 0.3 s each)."""

    position: dict[int, int]
    materialized: dict[int, Node]
    stored_apart: frozenset[int]
    users: dict[int, list[Node]]
    recomputed: frozenset[int] = frozenset()  # copies of values for their late readers (rematerialize.py)


def _plan(targets: Sequence[Node], traits: DeviceTraits) -> _Plan:
    """The targets' nodes in order, and the values stored before any kernel is built: the targets, values
    combined across processes, shared products, attention's backward, products' epilogues, operands read
    apart, costly scalars (CPUs), cuts of long chains, values read widely."""
    order = toposort(targets)
    users: dict[int, list[Node]] = {id(node): [] for node in order}
    for node in order:
        for source in node.src:
            users[id(source)].append(node)
    materialized: dict[int, Node] = {id(t): t for t in targets}
    across = _collectives(order)  # values combined across processes, and their sources: stored, never fused
    materialized.update(across)
    shared = _shared_products([*targets, *across.values()])
    materialized.update(shared)
    backward = gradient_products(order, traits.gpu)  # attention's backward: kernels of their own
    materialized.update(backward)
    epilogues = _stored_epilogues(order, materialized, users)
    materialized.update(epilogues)
    shared_operands = _stored_shared_operands(order, materialized, users)
    materialized.update(shared_operands)
    scalars = {} if traits.gpu else _costly_scalars(order, materialized, users)
    materialized.update(scalars)
    chain_cuts = _chain_cuts(order, materialized)
    materialized.update(chain_cuts)
    shared_sums = _shared_wide_values(order, materialized, users)
    materialized.update(shared_sums)
    return _Plan({id(node): i for i, node in enumerate(order)}, materialized,
                 frozenset(shared) | frozenset(backward) | frozenset(chain_cuts) | frozenset(across)
                 | frozenset(epilogues) | frozenset(shared_operands) | frozenset(scalars) | frozenset(shared_sums),
                 users)


def _schedule(targets: Sequence[Node], traits: DeviceTraits, tuned: TunedChoices,
              allow_extra_outputs: bool, memo: Optional[KernelMemo], plain: set[int],
              plan: Optional[_Plan] = None) -> list[RenderedKernel]:
    """The kernels storing `targets`, latest first, in launch order; the kernels of roots in `plain` (ids) and,
    without `allow_extra_outputs`, all kernels store nothing but their root. `plan`: `_plan(targets, traits)`,
    if computed already."""
    plan = plan or _plan(targets, traits)
    position, users = plan.position, plan.users
    materialized: dict[int, Node] = dict(plan.materialized)
    produced: set[int] = set()
    stored_apart: set[int] = set(plan.stored_apart)
    kernels: list[RenderedKernel] = []
    roots: list[Node] = []
    queue: list[tuple[int, int]] = []
    queued: set[int] = set()
    planned: dict[int, tuple[Node, Choice]] = {}  # nodes the scheduler made, by id: the choice shaping their kernel
    early: set[int] = set()  # reductions others read that the program's inputs alone give (_reads_inputs_only)
    scanned = 0  # entries of `materialized` (which only grows) enqueue_pending has seen: once is enough

    def enqueue_pending() -> None:
        nonlocal scanned
        fresh, scanned = islice(materialized.items(), scanned, None), len(materialized)
        for key, node in fresh:
            if key not in produced and key not in queued:
                queued.add(key)
                if node.op in REDUCE_OPS and _reads_inputs_only(node, materialized, early):
                    early.add(key)
                # nodes the scheduler made (a product's packed operand) come first: they read only the trace's
                heapq.heappush(queue, (-position.get(key, len(position)), key))

    enqueue_pending()
    while queue:
        _, key = heapq.heappop(queue)
        if key in produced:
            continue
        node = materialized[key]
        _store_row_statistics(node, materialized, produced | stored_apart, users, position, traits)
        roots.append(node)
        kernels.append(collective_kernel(node, produced) if node.op is Op.COLLECTIVE else
                       _build_kernel(node, materialized, produced, traits, allow_extra_outputs and key not in plain,
                                     stored_apart, tuned, planned, users, position, early, memo))
        enqueue_pending()

    def rebuild(k: int) -> Optional[RenderedKernel]:
        """Kernel k built again now that every other kernel's stores are known (stored_reductions.py); None where
        it would store other values than it does or need values stored that were not."""
        root, own = roots[k], {id(node) for node in kernels[k].outputs}
        tried = (dict(materialized), set(stored_apart), dict(planned))
        kernel = _build_kernel(root, tried[0], produced - own, traits, allow_extra_outputs and id(root) not in plain,
                               tried[1], tuned, tried[2], users, position, early, memo)
        unchanged = (tried[0].keys() == materialized.keys() and tried[1] == stored_apart
                     and tried[2].keys() == planned.keys())
        return kernel if unchanged and {id(node) for node in kernel.outputs} == own else None

    kernels = _marked_late(kernels, roots, plan.recomputed)
    ordered = _launch_order(kernels, roots)  # (an attempt whose kernels wait for each other ends here, unrebuilt)
    reading, reading_roots = read_stored_reductions(kernels, roots, produced, targets, rebuild)
    if reading is not kernels:
        try:
            return _launch_order(_marked_late(reading, reading_roots, plan.recomputed), reading_roots)
        except KernelCycle:  # (kernels reading each other's extra outputs now: those built first serve)
            pass
    return ordered


def _marked_late(kernels: list[RenderedKernel], roots: list[Node], recomputed: frozenset[int]
                 ) -> list[RenderedKernel]:
    """The kernels, those storing copies for late readers (rematerialize.py) marked `late`."""
    if not recomputed:
        return kernels
    return [replace(kernel, late=True) if id(root) in recomputed else kernel for kernel, root in zip(kernels, roots)]


def _store_row_statistics(root: Node, materialized: dict[int, Node], settled: set[int],
                          users: dict[int, list[Node]], position: dict[int, int], traits: DeviceTraits) -> None:
    """Where `root` is a row kernel, the row statistics it computes that other kernels read are marked to store,
    so that it stores them (rows.statistics_read_elsewhere); but not those a row kernel launched before it reads
    (`_left_to_earlier_rows`)."""
    length = row_length(root, materialized, settled, _long_rows(traits))
    if length is not None and _fuses_rows(length, traits):
        statistics = statistics_read_elsewhere(root, length, materialized, users)
        inside = kernel_nodes(root, materialized, statistics) if statistics else {}
        for statistic in statistics:
            if not read_by_earlier_rows(statistic, root, root.numel, inside, users, position):
                materialized.setdefault(id(statistic), statistic)


def _left_to_earlier_rows(root: Node, materialized: dict[int, Node], settled: set[int],
                          users: dict[int, list[Node]], position: dict[int, int], traits: DeviceTraits) -> set[int]:
    """The row statistics marked to store that `root`'s kernel (a row kernel, or a reduction over rows) would
    compute and store, but that a value over the same rows computed before `root` reads (rows.read_by_earlier_rows):
    the kernel computing that value, a row kernel built later and launched earlier, stores them and this one reads
    them. Stored by the later kernel (the scheduler builds the latest first), a layer norm's mean and variance,
    which its gradient's kernels recompute and its weight's gradient reads, made the forward's kernels wait for the
    backward's; the retry after that cycle gave each statistic a kernel of its own, passing over the rows again
    (W7: the forward's norms three kernels each in place of one)."""
    if root.op in REDUCE_OPS:
        rows, elements = root.numel, root.src[0].numel
        if not 1 < rows < elements:
            return set()
    else:
        length = row_length(root, materialized, settled, _long_rows(traits))
        if length is None or not _fuses_rows(length, traits):
            return set()
        rows, elements = root.numel // length, root.numel
    statistics = stored_statistics(root, rows, elements, materialized, settled)
    inside: dict[int, Node] = {}
    for computed in (root, *statistics) if statistics else ():  # (a variance's centred values read its mean)
        inside.update(kernel_nodes(computed, materialized, [s for s in statistics if s is not computed]))
    return {id(statistic) for statistic in statistics
            if read_by_earlier_rows(statistic, root, elements, inside, users, position)}


INPUTS_ONLY_NODES = 64  # nodes `_reads_inputs_only` looks at before it answers no


def _reads_inputs_only(node: Node, materialized: dict[int, Node], early: set[int]) -> bool:
    """Whether `node` is computed from the program's inputs alone: no value below it that a kernel stores and no
    reduction, but `early` ones (within INPUTS_ONLY_NODES nodes). A reduction others read that is such a value is
    `early`: it is stored by a kernel of its own rather than as an extra output of a kernel that waits for other
    kernels, so that it and its readers wait for nothing (a cross-entropy's count of valid labels, stored beside the
    loss, made the loss's gradient wait for the forward pass: two launches more per W4 step on GPUs). A kernel that
    itself reads inputs only still stores it beside its own output (a long row's max beside its sum)."""
    stack, seen = list(node.src), set()
    while stack:
        source = stack.pop()
        if id(source) in seen or source.op is Op.BUFFER or id(source) in early:
            continue
        if id(source) in materialized or source.op in REDUCE_OPS or len(seen) >= INPUTS_ONLY_NODES:
            return False  # (a reduction below: another kernel may have to store it, if none does yet)
        seen.add(id(source))
        stack.extend(source.src)
    return True


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
    their own; fused into each target's kernel they would be computed once per target, untiled. In the order each
    is first met, target after target."""
    fused_into: dict[int, int] = {}
    products: dict[int, Node] = {}
    below: dict[int, tuple[Node, ...]] = {}
    for target in targets:
        for product in _fused_products(target, below):
            fused_into[id(product)] = fused_into.get(id(product), 0) + 1
            products[id(product)] = product
    return {key: products[key] for key, count in fused_into.items() if count > 1}


def _fused_products(root: Node, below: dict[int, tuple[Node, ...]]) -> tuple[Node, ...]:
    """The matrix products a kernel storing `root` would fuse (met walking down to reductions, buffers and
    collectives, each once, last source first), as that walk first meets them. `below` keeps each node's
    products for the next root: W7's 451 targets each walked the ~500 nodes of the gradient norm's sum again
    (0.3 s a schedule)."""
    stack = [(root, False)]
    while stack:
        node, sources_done = stack.pop()
        if id(node) in below:
            continue
        if node.op in (Op.BUFFER, Op.COLLECTIVE):
            below[id(node)] = ()
        elif node.op is Op.SUM and matmul_axes(node) is not None:
            below[id(node)] = (node,)
        elif node.op in REDUCE_OPS or not node.src:
            below[id(node)] = ()
        elif not sources_done:
            stack.append((node, True))
            stack.extend((source, False) for source in node.src if id(source) not in below)
        else:
            found: dict[int, Node] = {}
            for source in reversed(node.src):
                found.update((id(product), product) for product in below[id(source)])
            below[id(node)] = tuple(found.values())
    return below[id(root)]


def _stored_epilogues(order: Sequence[Node], materialized: dict[int, Node],
                      users: dict[int, list[Node]]) -> dict[int, Node]:
    """For each product that several kernels read, the value to store in its place: its epilogue, the
    elementwise ops (and reshapes) that alone read it, one after the other, at its positions (a linear layer's
    bias; a ReLU's backward mask). The kernel storing the epilogue computes the product. Stored raw, each kernel
    reading it computed the epilogue again, and one that stores it first as a product's operand
    (`_staging_dearer`) took a kernel and a launch more (W4's masked gradients, before their weight gradients);
    the bias each reader added made its in-place update wait for them all (a launch more again). GELU's backward
    is computed once in its product's epilogue (`_meeting_point`), not again in its bias gradient's column sums,
    nor stored by a kernel apart: W7 at the CPU size took 526 ms a step so against 570 (the sum of each kernel's
    best time over six steps; PoCL 3.1, Zen 2), under bf16 autocast on an H100 79.3-80.2 ms against 83.0 (the
    column sums 2.30 -> 0.60 ms, the product with its epilogue 5.38 ms where it and the kernel storing GELU's
    backward took 6.12), float32 365.3 against 369.0 ms and a peak of 11 797 MiB against 12 574."""
    found: dict[int, Node] = {}
    for node in order:
        if id(node) in materialized or matmul_axes(node) is None or not node.src[0].numel:
            continue
        value = _meeting_point(node, materialized, users) or _epilogue(node, materialized, users)
        if value.op in ELEMENTWISE_OPS and id(value) not in materialized and _read_apart(value, materialized, users):
            found[id(value)] = value
    return found


def _epilogue(product: Node, materialized: dict[int, Node], users: dict[int, list[Node]]) -> Node:
    """The last node no wider than `product` of the chain above it whose nodes each have one user, an elementwise
    op or a reshape at the product's positions, ending at a stored node if it meets one."""
    value = last = product
    while id(value) not in materialized and len({id(user) for user in users[id(value)]}) == 1:
        user = users[id(value)][0]
        if not _at_its_positions(user, product):
            break
        value = user
        last = value if _no_wider(value, product) else last
    return last


def _at_its_positions(user: Node, product: Node) -> bool:
    """Whether `user` (of the product or of an op above it) computes at the product's positions, an elementwise op
    or a reshape: part of an epilogue its kernel can compute (wider values within it too: a half activation's
    gradient computed in float32, `Tensor._in_float32`, stored rounded)."""
    return user.numel == product.numel and (user.op in ELEMENTWISE_OPS or user.op is Op.RESHAPE)


def _no_wider(value: Node, product: Node) -> bool:
    """Whether `value` takes no more bytes an element than `product` (what an epilogue may store in its place)."""
    return value.dtype.itemsize <= product.dtype.itemsize


MEETING_MAX_NODES = 32  # elementwise ops `_meeting_point` follows from a product before it answers none


def _meeting_point(product: Node, materialized: dict[int, Node], users: dict[int, list[Node]]) -> Optional[Node]:
    """The one node, no wider than `product`, through which the elementwise ops (and reshapes) reading it at its
    positions are all read elsewhere, if there is one (within MEETING_MAX_NODES ops): GELU's backward reads dY·W_outᵀ
    twice, in its derivative's two terms, then sums them. Its bias gradient's column sums computed that derivative
    again, erf and exp per element, from the product stored raw: 7.7 ms of a layer's step on PoCL 3.1 (Zen 2)."""
    region, exits, stack = {id(product)}, [], [product]
    while stack:
        node = stack.pop()
        if node is not product and id(node) in materialized:
            exits.append(node)
            continue
        read_elsewhere = not users[id(node)]
        for user in users[id(node)]:
            if not _at_its_positions(user, product):
                read_elsewhere = True
            elif id(user) not in region:
                region.add(id(user))
                stack.append(user)
        if read_elsewhere:
            exits.append(node)
        if len(region) > MEETING_MAX_NODES:
            return None
    met = set()
    for node in exits:  # (a reshape read elsewhere is its source's value: the gradient read as a product's operand;
        # so is a widening cast: a half gradient summed in float32 by its bias's column sums)
        while (node.op is Op.RESHAPE or node.op is Op.CAST and not _no_wider(node, product)) \
                and id(node.src[0]) in region and node is not product:
            node = node.src[0]
        met.add(node)
    meeting = met.pop() if len(met) == 1 and product not in met else None
    return meeting if meeting is not None and _no_wider(meeting, product) else None


def _read_apart(value: Node, materialized: dict[int, Node], users: dict[int, list[Node]]) -> bool:
    """Whether kernels that cannot compute `value` where they read it do: a reduction over it, or two or more stored
    values, reductions or views reached from it through elementwise ops (each another kernel's). A row maximum over
    it (a softmax's: attention's scores, which its fused kernels recompute) answers no."""
    reached = _reached(value, users, lambda node: id(node) not in materialized and node.op in ELEMENTWISE_OPS)
    kinds = {node.op for node in reached}
    return Op.RMAX not in kinds and (len(reached) > 1 or Op.SUM in kinds)


def _reached(value: Node, users: dict[int, list[Node]], passes: Callable[[Node], bool]) -> list[Node]:
    """The nodes reading `value` through nodes that `passes`, where a walk over their users stops (each once)."""
    reached: dict[int, Node] = {}
    stack, seen = list(users.get(id(value), ())), set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if passes(node):
            stack.extend(users.get(id(node), ()))
        else:
            reached[id(node)] = node
    return list(reached.values())


def _stored_shared_operands(order: Sequence[Node], materialized: dict[int, Node],
                            users: dict[int, list[Node]]) -> dict[int, Node]:
    """Values that two or more reductions read, one of them no product, stored once so that each reader loads it:
    concatenations (sums of padded pieces, as a split's gradient is; where products alone read one,
    `_staging_dearer` decides whether they stage it from its pieces), and operands of products that a kernel would
    compute again from arrays taking more bytes (`_dearer_recomputed`). Products store such a value as their operand
    anyway; a plain reduction built before them computed it again. W7's q, k, v gradients side by side, read by the
    weight's and the input's gradients and by the bias gradient's column sums, were computed again from their
    pieces, one of them lying across (dV's transpose: 4-byte reads 1 KiB apart on PoCL, 2-byte reads 2 KiB apart on
    NVIDIA); a layer norm's input gradient, rounded to bfloat16 for the products, was summed over the tokens for
    the bias gradient from the four float32 and bfloat16 arrays it is computed from (W7, 12 layers, bf16, H200
    traits: 66.7 -> 64.8 GB moved a step, 821 -> 816 kernels; the CPU size in float32: 289 -> 271 launches)."""
    found: dict[int, Node] = {}
    for node in order:
        if id(node) in materialized:
            continue
        concatenation = (_padded_pieces(node)
                         and not any(_padded_pieces(user) for user in users[id(node)]))  # (the whole sum, not a part)
        operand = (not concatenation and node.op in ELEMENTWISE_OPS and len({id(user) for user in users[id(node)]}) > 1
                   and _product_operand(node, materialized, users)
                   and _dearer_recomputed(node, lambda value: id(value) in materialized or id(value) in found))
        if (concatenation or operand) and _read_by_products_and_a_plain_reduction(node, materialized, users):
            found[id(node)] = node
    return found


def _product_operand(value: Node, materialized: dict[int, Node], users: dict[int, list[Node]]) -> bool:
    """Whether a product reads `value` itself as an operand, through views (not a value computed from it)."""
    views = _reached(value, users, lambda node: id(node) not in materialized and node.op in MOVEMENT_OPS)
    return any(node.op is Op.MUL and any(matmul_axes(user) is not None for user in users[id(node)])
               for node in views)


RECOMPUTE_WALK = 64  # nodes `_dearer_recomputed` follows below a value before it answers yes


def _dearer_recomputed(value: Node, stored: Callable[[Node], bool]) -> bool:
    """Whether computing `value` again reads more bytes an element than loading it: the arrays below it, through
    elementwise ops and views, that a kernel loads (buffers, reductions, values `stored`), counted where they have
    at least a quarter of its elements."""
    read, stack, seen = 0, [value], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if len(seen) > RECOMPUTE_WALK:
            return True
        if node is not value and (node.op is Op.BUFFER or node.op in REDUCE_OPS or stored(node)):
            read += node.dtype.itemsize if 4 * node.numel >= value.numel else 0
        elif node.op in ELEMENTWISE_OPS or node.op in MOVEMENT_OPS:
            stack.extend(node.src)
    return read > value.dtype.itemsize


def _read_by_products_and_a_plain_reduction(value: Node, materialized: dict[int, Node],
                                            users: dict[int, list[Node]]) -> bool:
    """Whether two or more reductions read `value` through views and elementwise ops (casts included) that no
    kernel stores, one of them no product."""
    reached = _reached(value, users, lambda node: id(node) not in materialized and (
        node.op in ELEMENTWISE_OPS or node.op in MOVEMENT_OPS))
    reductions = [node for node in reached if node.op in REDUCE_OPS]
    return len(reductions) > 1 and any(matmul_axes(node) is None for node in reductions)


def _costly_scalars(order: Sequence[Node], materialized: dict[int, Node],
                    users: dict[int, list[Node]]) -> dict[int, Node]:
    """On CPUs, scalars computed by a transcendental op that values of SCALAR_READ_WIDELY elements or more read:
    stored by a kernel of their own. An elementwise kernel computes such a scalar once per work-item (each item
    its own vector of outputs; nothing hoists it out of PoCL's loop over items): Adam's bias corrections, 1 − βᵗ,
    were a `pow` per item of every parameter's update, 2.7 ms of a 0.16 ms update of a 1024 × 256 weight (PoCL 3.1,
    Zen 2). Scalars with the same computation are one kernel's source: a step's corrections compile once."""
    found: dict[int, Node] = {}
    for node in order:
        if (node.numel == 1 and node.op in COSTLY_SCALAR_OPS and id(node) not in materialized
                and any(reader.numel >= SCALAR_READ_WIDELY for reader in _reached(
                    node, users, lambda user: user.numel == 1 and id(user) not in materialized))):
            found[id(node)] = node
    return found


CONCATENATION_MAX_SUMS = 64  # sums `_padded_pieces` follows before it answers no (a long chain of additions)


def _padded_pieces(node: Node) -> bool:
    """Whether `node` sums padded pieces (PADs, or sums of them): a concatenation."""
    if node.op is not Op.ADD:
        return False
    sums, followed = [node], 0
    while sums:
        followed += 1
        if followed > CONCATENATION_MAX_SUMS:
            return False
        for source in sums.pop().src:
            if source.op is Op.ADD:
                sums.append(source)
            elif source.op is not Op.PAD:
                return False
    return True


def _chain_cuts(order: Sequence[Node], materialized: dict[int, Node]) -> dict[int, Node]:
    """Nodes to store so that no kernel fuses a chain of more than FUSION_DEPTH_LIMIT ops.

    Fused whole, a chain of 100 000 ops (an unrealized loop of updates, Python's `sum` over a list) would be one
    kernel of 100 000 statements: minutes to compile, and as long to render. Cut every FUSION_DEPTH_LIMIT ops,
    it is a few hundred kernels of one shape, which compile once. One pass, sources first: a node's depth is
    the longest chain of ops from a leaf or a stored node; a node that would pass the limit stores its deepest
    sources instead (so the users of a value at the limit share one cut, rather than each being cut). A deep
    source that broadcasts a smaller value is cut below the broadcast (`_cut_point`): stored, a GPT's input
    gradient before its product with a weight, (batch, time, d, d), took 512 MiB of a 4-layer step's 677."""
    depth: dict[int, int] = {}
    cuts: dict[int, Node] = {}

    def above(source: Node) -> int:
        return 0 if id(source) in materialized or id(source) in cuts else depth[id(source)]

    def deepest_source(node: Node) -> int:
        return max(map(above, node.src), default=-1)

    for node in order:
        deepest = deepest_source(node)
        if deepest + 1 > FUSION_DEPTH_LIMIT:
            for source in node.src:
                if above(source) > FUSION_DEPTH_LIMIT // 2:
                    path = _cut_point(source, above)
                    reduction, between = _reduction_below(path[-1], materialized)
                    cut = reduction or path[-1]
                    cuts[id(cut)] = cut
                    for passed in [*between, *reversed(path[:-1])]:  # (the nodes above the cut are shallower now)
                        depth[id(passed)] = deepest_source(passed) + 1
            if deepest_source(node) + 1 > FUSION_DEPTH_LIMIT:  # (a second deep source beside the broadcast)
                cuts.update((id(s), s) for s in node.src if above(s) > FUSION_DEPTH_LIMIT // 2)
            deepest = deepest_source(node)
        depth[id(node)] = deepest + 1
    return cuts


def _shared_wide_values(order: Sequence[Node], materialized: dict[int, Node],
                        users: dict[int, list[Node]]) -> dict[int, Node]:
    """Elementwise values read by several ops that a kernel would recompute from more than READS_LIMIT stored
    arrays of (about) their size: stored instead, so each reader loads one array.

    A transformer's residual stream is the sum of the embedding and every block's output before it; fused, each
    reader of layer l's (its layer norms forward and backward, a product's packed operand) summed 2l arrays
    again, as did the residual's gradient on the way back: 206 of W7's kernels read 12 to 37 arrays each, 6.7 of
    its 10 MB of OpenCL C (the NVIDIA compiler takes ~95 s of CPU per MB). One pass, sources first: a value's
    reads are the arrays at least a quarter of its size below it that a kernel loads or reduces (buffers, values
    stored by then, reductions: a product's output is one)."""
    reads: dict[int, Optional[frozenset[int]]] = {}  # None: more than READS_TRACKED
    size: dict[int, int] = {}
    cuts: dict[int, Node] = {}

    def below(source: Node) -> Optional[frozenset[int]]:
        stored = (source.op is Op.BUFFER or source.op in REDUCE_OPS or id(source) in materialized
                  or id(source) in cuts)
        return frozenset((id(source),)) if stored else reads[id(source)]

    for node in order:
        size[id(node)] = node.numel
        found: Optional[set[int]] = set()
        for source in node.src:
            from_source = below(source)
            if from_source is None:
                found = None
                break
            found.update(key for key in from_source if 4 * size[key] >= node.numel)
        if found is not None and len(found) > READS_TRACKED:
            found = None
        if (node.op in ELEMENTWISE_OPS and len(users[id(node)]) > 1 and id(node) not in materialized
                and (found is None or len(found) > READS_LIMIT)):
            cuts[id(node)] = node
        reads[id(node)] = None if found is None else frozenset(found)
    return cuts


CUT_FUNCTION_NODES = 8  # nodes of an elementwise function of one reduction `_reduction_below` looks through


def _reduction_below(node: Node, materialized: dict[int, Node]) -> tuple[Optional[Node], list[Node]]:
    """Where `node` is an elementwise function of one reduction (through views, constants aside; up to
    CUT_FUNCTION_NODES nodes), that reduction and the function's nodes, sources first: a chain cut there stores
    the value other kernels read too (W7's gradient norm was cut at |g|², |g| or a view of g for 10 of its 98 bias
    and layer-norm gradients, whose AdamW updates then summed g over the tokens again, each). Else (None, [])."""
    leaves: dict[int, Node] = {}
    walked: dict[int, Node] = {}
    stack = [node]
    while stack:
        value = stack.pop()
        if id(value) in walked or id(value) in leaves or value.op is Op.CONST:
            continue
        if value.op in REDUCE_OPS or value.op is Op.BUFFER or (value is not node and id(value) in materialized):
            leaves[id(value)] = value
        elif value.op in ELEMENTWISE_OPS or value.op in MOVEMENT_OPS:
            walked[id(value)] = value
            stack.extend(value.src)
        else:
            return None, []  # (a random value, a gather: no function of the reduction alone)
        if len(walked) > CUT_FUNCTION_NODES or len(leaves) > 1:
            return None, []
    reduction = next(iter(leaves.values()), None)
    if reduction is None or reduction.op not in REDUCE_OPS or id(reduction) in materialized:
        return None, []
    return reduction, _sources_first(list(walked.values()))


def _sources_first(nodes: list[Node]) -> list[Node]:
    """`nodes` (a few) ordered so that each comes after those of them it reads."""
    inside, ordered, placed = {id(n) for n in nodes}, [], set()
    while len(ordered) < len(nodes):
        for value in nodes:
            if id(value) not in placed and all(id(s) in placed or id(s) not in inside for s in value.src):
                ordered.append(value)
                placed.add(id(value))
    return ordered


def _cut_point(source: Node, above: Callable[[Node], int]) -> list[Node]:
    """The path from `source` down its deepest sources, to the node to store in its place: `source` itself, or
    where a broadcast is on the way (among the nodes deeper than half the limit, or at their end) the value it
    broadcasts."""
    path = [source]
    while path[-1].src:
        below = max(path[-1].src, key=above)
        if above(below) <= FUSION_DEPTH_LIMIT // 2 and not (above(below) and below.numel < path[-1].numel):
            break
        path.append(below)
    smaller = next((k for k, node in enumerate(path) if node.numel < source.numel), 0)
    return path[:smaller + 1]


def _launch_order(kernels: list[RenderedKernel], roots: list[Node]) -> list[RenderedKernel]:
    """Producers before consumers (`roots`: each kernel's); cycles (only possible through extra outputs) raise
    KernelCycle with the roots of the kernels whose extra outputs close them (of every cycle the walk meets).
    `late` kernels (copies: rematerialize.py) come right before their first reader."""
    producer = {id(node): k for k, kernel in enumerate(kernels) for node in kernel.outputs}
    ordered: list[RenderedKernel] = []
    state: dict[int, int] = {}  # 1 visiting, 2 done
    path: list[int] = []  # the kernels visiting, each waiting for the next
    cycles: dict[int, Node] = {}  # the roots of kernels whose extra outputs make cycles
    values: dict[int, Node] = {}  # those extra outputs

    def _waits_for_extra_only(a: int, b: int) -> bool:
        """Whether kernel `a` waits for kernel `b` only for values `b` stores beside its root."""
        return all(node is not roots[b] for node in kernels[a].loads if producer.get(id(node)) == b)
    for first in range(len(kernels)):
        stack = [first]  # depth first, iteratively: a chain of kernels can be thousands long
        while stack:
            k = stack[-1]
            if state.get(k) == 2:
                stack.pop()
                continue
            if state.get(k) != 1:
                state[k] = 1
                path.append(k)
            waiting = [producer[id(node)] for node in kernels[k].loads if node.op is not Op.BUFFER
                       and state.get(producer[id(node)]) != 2]
            for p in waiting:
                if state.get(p) == 1:  # (the cycle is noted and the walk goes on, to find the others too)
                    cycle = path[path.index(p):]
                    extra = [(a, b) for a, b in zip(cycle, cycle[1:] + cycle[:1]) if _waits_for_extra_only(a, b)]
                    if not extra:
                        raise RuntimeError("zyx scheduler produced a cyclic schedule")
                    for a, b in extra:
                        cycles[id(roots[b])] = roots[b]
                        values.update((id(node), node) for node in kernels[a].loads if producer.get(id(node)) == b)
            waiting = sorted((p for p in waiting if state.get(p) != 1), key=lambda p: not kernels[p].late)
            if waiting:  # (the last is walked first: copies after the rest)
                stack.extend(waiting)
                continue
            state[k] = 2
            path.pop()
            ordered.append(kernels[k])
            stack.pop()
    if cycles:
        raise KernelCycle(list(cycles.values()), list(values.values()))
    return ordered
