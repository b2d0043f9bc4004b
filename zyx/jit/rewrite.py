"""Graph rewrites the scheduler applies before cutting kernels.

Equal computations are computed once: a node with the op, argument, shape, dtype and (rewritten) sources of an
earlier one is replaced by it (a layer norm's variance takes the mean again, and its row kernel made one pass more
for it). Leaves and collectives keep their identity (the program binds them), and so do the targets.

A matrix product reducing over several adjacent axes (a weight gradient summed over batch and time) is rewritten to
reduce over one merged axis, so it is recognised as a product and tiled like any other. Long reductions into few
outputs would leave most of the device idle (one work item per output walks the whole input), so they are split in
two stages: partial results over chunks, then the reduction of the partials. On GPUs a product with few outputs and
a long reduced axis (a convolution's weight gradient) is likewise split along k into a batch of products, summed
afterwards, so that its tiled kernel has enough work groups; and so is a column sum (a bias's gradient over 16 384
tokens) whose groups of COLUMNS adjacent columns would be too few for the device's compute units: its rows in
chunks, the partial sums of each chunk's columns side by side, so that the first stage is a column sum again, of
more groups. On CPUs a column sum larger than the caches is split alike, so that neighbouring items find each
other's lines in cache. The rewrite builds new nodes above the split; leaves and random nodes keep their identity,
so the program still binds its inputs by the original trace's order.

An attention gradient's product (dV = sum_i P dO) that the trace lays out with its head dimension before its keys,
read through a permute that puts the head dimension last (the QKV gradient's concatenation), is laid out as that
permute reads it: its kernel then stores pairs of neighbouring columns and its reader reads rows of the head
dimension, where both went across the grain.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from typing import Optional, Sequence

from ..dtypes import DType
from ..trace import node as n
from ..trace.node import Node, arg_key, toposort
from ..trace.ops import LEAF_OPS, Op, REDUCE_OPS
from .attention_grad import match_attention_gradient
from .kernel_ir import lowest_value
from .matmul import BK, MIN_USED
from .tiling import matmul_axes
from .transforms.group import COLUMNS, GROUP_MAX_OUTPUTS

SPLIT_MIN_COUNT = 32768    # reductions shorter than this stay one loop
SPLIT_MAX_OUTPUTS = 1024   # with at least this many outputs the device is busy enough
PRODUCT_MIN_BLOCKS = 64    # GPU products with fewer 32 x 32 blocks of outputs than this are split along k ...
PRODUCT_BLOCKS = 256       # ... into about this many blocks in all (at least PRODUCT_MIN_BLOCKS) ...
PRODUCT_MIN_CHUNK = 1024   # ... each reducing at least this many elements (a launch costs ~10 us on an H100)
# A GPU column sum is split into chunks of a power of two rows: where chunks of COLUMN_ITEM_CHUNK rows or more
# leave GROUP_MAX_OUTPUTS partials, enough for one an item, read along the columns (on the H200 [16384, 3072] took
# 54 us in 32 chunks so, 63-72 us as groups of COLUMNS columns in 1-16 chunks; torch 62 us) ...
COLUMN_ITEM_CHUNK = 512
# ... else where its groups of COLUMNS columns are fewer than COLUMN_GROUPS_PER_UNIT a compute unit, into enough
# chunks for that many, of at least COLUMN_MIN_CHUNK rows (a work group's reduction): on the H200 [16384, 768]
# took 83 us in one kernel, 21.7 in 8 chunks, 24.4-26.8 in 16-64 (torch 32.6 us). ZYX_COLUMN_GROUPS=N sets
# another count, 0 splits none that way.
COLUMN_GROUPS_PER_UNIT = 4
COLUMN_MIN_CHUNK = 256
# A GPU sum over less than GPU_COLUMN_MIN_BYTES takes a few microseconds in one kernel, a second stage costs a launch
# as long: W4's bias gradients (512 rows of 512 columns) split in two took its step on the H200 from 17 kernels in
# 10 launches to 22 in 13 (0.32 -> 0.36 ms with the other changes of the day)
GPU_COLUMN_MIN_BYTES = 4 << 20
# On CPUs an item sums a vector of columns down the rows: where the input outgrows the caches, the lines fetched
# beside its reads are gone before the next item reads them. Chunks of CPU_COLUMN_CHUNK rows keep them: on PoCL
# (2 threads) [16384, 3072] took 113 ms in one kernel and 32 in 16 chunks, [65536, 256] 210 ms and 5.
CPU_COLUMN_CHUNK = 1024
CPU_COLUMN_MIN_BYTES = 8 << 20


def rewrite_graph(targets: Sequence[Node], gpu: bool = False, compute_units: int = 0) -> list[Node]:
    """Targets of an equivalent graph in which products reduce over one axis and long, narrow reductions run
    in two stages, and so do column sums too narrow for a GPU's `compute_units` or too large for a CPU's caches
    (on a GPU, narrow products with long reductions too)."""
    replaced: dict[int, Node] = {}
    computed: dict[tuple, Node] = {}
    kept = {id(t) for t in targets}
    order = toposort(targets)
    uses = Counter(id(s) for node in order for s in node.src)
    for node in order:
        sources = tuple(replaced.get(id(s), s) for s in node.src)
        new = node
        if any(a is not b for a, b in zip(sources, node.src)):
            new = n.Node(node.op, sources, node.arg, node.shape, node.dtype, node.device)
        key = _sharing_key(new)
        if key in computed and id(node) not in kept:
            replaced[id(node)] = computed[key]
            continue
        if new.op is Op.PERMUTE and all(uses[id(s)] == 1 and id(s) not in kept
                                        for s in (node.src[0], *node.src[0].src)):
            new = _width_last(new, gpu)  # (the view and the product it permutes read by it alone)
        if new.op is Op.SUM:
            new = _merge_product_axes(new, gpu) if len(new.arg) > 1 else _split_product(new) if gpu else new
        if new.op in REDUCE_OPS:
            rows = column_chunk(new, gpu, compute_units)
            if rows:
                new = _two_stage(new, rows, rows_first=True)
            elif _worth_splitting(new):
                new = _two_stage(new, 8 * math.ceil(math.sqrt(math.prod(new.src[0].shape[a] for a in new.arg)) / 8))
        if key is not None:
            computed.setdefault(key, new)
        if new is not node:
            replaced[id(node)] = new
    return [replaced.get(id(t), t) for t in targets]


def _sharing_key(node: Node) -> Optional[tuple]:
    """What makes `node` equal to another node over the same sources; None for nodes never shared (leaves,
    collectives, an argument that cannot be hashed)."""
    if node.op in LEAF_OPS or node.op is Op.COLLECTIVE:
        return None
    key = (node.op, tuple(map(id, node.src)), arg_key(node.arg), node.shape, node.dtype, node.device)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _width_last(node: Node, gpu: bool) -> Node:
    """PERMUTE(RESHAPE(an attention gradient's product, its reduced axis dropped)) that puts the product's width
    axis (the head dimension) last, where the product does not: the product computed with that axis last, the
    permute left of the rest; else the node itself (see the module)."""
    view = node.src[0]
    if view.op is not Op.RESHAPE or view.src[0].op is not Op.SUM:
        return node
    product = view.src[0]
    plan = match_attention_gradient(product, {}, gpu)
    if plan is None or view.shape != tuple(s for a, s in enumerate(product.shape) if a != plan.reduced):
        return node
    kept = [a for a in range(len(product.shape)) if a != plan.reduced]  # the view's axes, as the product's
    width = kept.index(plan.width)
    if node.arg[-1] != width or width == len(kept) - 1:
        return node
    stored = [a for a in range(len(kept)) if a != width] + [width]  # the view's axes as the product is stored
    full = [kept[a] for a in stored]
    full.insert(plan.reduced, plan.reduced)
    operands = [n.expand(n.permute(side.src[0], full), tuple(product.src[0].shape[a] for a in full))
                for side in product.src[0].src]
    laid = n.reduce(Op.SUM, n.binary(Op.MUL, *operands), [plan.reduced])
    return n.permute(n.reshape(laid, tuple(view.shape[a] for a in stored)), [stored.index(a) for a in node.arg])


def _merge_product_axes(node: Node, split: bool) -> Node:
    """SUM over adjacent axes (or axes with only size-1 axes between: a convolution's batch and pixels) of
    MUL(EXPAND(a), EXPAND(b)) as a SUM over one axis of the axes merged, when each operand either holds all of
    those axes or broadcasts along all of them; else the node itself. `split`: the merged product may then be
    split along k (`_split_product`)."""
    axes, product = sorted(node.arg), node.src[0]
    first, last = axes[0], axes[-1]
    between = (a for a in range(first, last + 1) if a not in axes)  # size-1 axes in between merge for free
    if any(product.shape[a] != 1 for a in between) or product.op is not Op.MUL:
        return node
    if any(side.op is not Op.EXPAND for side in product.src):
        return node
    merged_size = math.prod(product.shape[first:last + 1])

    def merged(shape: tuple[int, ...], size: int) -> tuple[int, ...]:
        return shape[:first] + (size,) + shape[last + 1:]

    operands = []
    for side in product.src:
        inner = side.src[0].shape[first:last + 1]
        if all(size == 1 for size in inner):
            size = 1
        elif inner == product.shape[first:last + 1]:
            size = merged_size
        else:
            return node
        source = n.reshape(side.src[0], merged(side.src[0].shape, size))
        operands.append(n.expand(source, merged(product.shape, merged_size)))
    total = n.reduce(Op.SUM, n.binary(Op.MUL, *operands), [first])
    return n.reshape(_split_product(total) if split else total, node.shape)


def _split_product(node: Node) -> Node:
    """A product with few blocks of outputs as a batch of products over chunks of k (k padded with zeros to
    whole chunks), summed over the batch; else the node itself."""
    axes = matmul_axes(node)
    product = node.src[0]
    if (axes is None or node.numel == 0 or product.op is not Op.MUL or node.dtype.is_narrow_float
            or any(side.op is not Op.EXPAND for side in product.src)):
        return node  # (a half product stays whole: its kernel accumulates in float32, stored partials would not)
    k, (n_axis, m_axis) = node.arg[0], axes
    count, rows, cols = product.shape[k], node.shape[n_axis], node.shape[m_axis]
    blocks = node.numel // (rows * cols) * -(-rows // 32) * -(-cols // 32)
    parts = min(-(-PRODUCT_BLOCKS // blocks), count // PRODUCT_MIN_CHUNK)
    if (blocks >= PRODUCT_MIN_BLOCKS or blocks * parts < PRODUCT_MIN_BLOCKS
            or node.numel < MIN_USED * blocks * 32 * 32):  # (too narrow for local tiles: no use splitting)
        return node
    split = split_along_k(node, parts, BK)
    return split[1] if split is not None else node


def split_along_k(node: Node, parts: int, multiple: int, first: bool = False,
                  widen: Optional[DType] = None) -> Optional[tuple[Node, Node]]:
    """(partials, total) for the product `node` (SUM over k of MUL of two EXPANDs) cut into about `parts` chunks
    of k, each a multiple of `multiple` long (k padded with zeros to whole chunks): the partials are a batch of
    products over the chunks, the chunk axis where k was (`first`: before every other axis, so each chunk's
    partials lie together), the total their sum in `node`'s shape. `widen`: each operand's broadcast cast to that
    dtype, so that the partials (and their sum) are in it: a half-precision product's partials in float32,
    its products of half values exact there (tensor_cores.py multiplies them as half values). None where an
    operand does not span all of k."""
    k, product = node.arg[0], node.src[0]
    count = product.shape[k]
    chunk = multiple * -(-count // (multiple * parts))
    parts = -(-count // chunk)
    axes = len(product.shape) + 1
    order = [k, *(a for a in range(axes) if a != k)] if first else list(range(axes))
    operands = []
    for side in product.src:
        source = side.src[0]
        if source.shape[k] != count:
            return None
        padded = n.pad(source, [(0, parts * chunk - count if a == k else 0) for a in range(len(source.shape))])
        split = n.permute(n.reshape(padded, source.shape[:k] + (parts, chunk) + source.shape[k + 1:]), order)
        shape = product.shape[:k] + (parts, chunk) + product.shape[k + 1:]
        spread = n.expand(split, tuple(shape[a] for a in order))
        operands.append(spread if widen is None else n.cast(spread, widen))
    partial = n.reduce(Op.SUM, n.binary(Op.MUL, *operands), [order.index(k + 1)])
    return partial, n.reshape(n.reduce(Op.SUM, partial, [order.index(k)]), node.shape)


def _worth_splitting(node: Node) -> bool:
    count = math.prod(node.src[0].shape[a] for a in node.arg)
    return count >= SPLIT_MIN_COUNT and node.numel < SPLIT_MAX_OUTPUTS


def column_chunk(node: Node, gpu: bool, compute_units: int) -> int:
    """Rows a chunk of the column sum `node` (a reduction over leading axes: its values a row of columns apart)
    takes in its first stage: on a `gpu`, so that there are GROUP_MAX_OUTPUTS partials (one an item) or else
    COLUMN_GROUPS_PER_UNIT groups of COLUMNS columns a compute unit, where the input has GPU_COLUMN_MIN_BYTES; on a
    CPU CPU_COLUMN_CHUNK where it has CPU_COLUMN_MIN_BYTES. 0 where it needs no split, is no column sum, or is a
    product (split along k instead)."""
    source = node.src[0]
    kept = [a for a, size in enumerate(source.shape) if a not in node.arg and size != 1]
    if not kept or node.numel == 0 or min(kept) < max(node.arg) or matmul_axes(node) is not None:
        return 0
    rows = math.prod(source.shape[a] for a in node.arg)
    size = source.numel * source.dtype.itemsize
    if not gpu:
        return CPU_COLUMN_CHUNK if size >= CPU_COLUMN_MIN_BYTES and rows >= 2 * CPU_COLUMN_CHUNK else 0
    if node.numel >= GROUP_MAX_OUTPUTS or size < GPU_COLUMN_MIN_BYTES:
        return 0  # (one output an item already, or too small to gain from a second stage)
    items = _power_below(rows // -(-GROUP_MAX_OUTPUTS // node.numel))
    if items >= COLUMN_ITEM_CHUNK:
        return items
    groups = int(os.environ.get("ZYX_COLUMN_GROUPS", COLUMN_GROUPS_PER_UNIT)) * compute_units
    parts = -(-groups * COLUMNS // node.numel)
    if parts < 2 or rows < 2 * COLUMN_MIN_CHUNK:
        return 0
    return max(COLUMN_MIN_CHUNK, _power_below(rows // parts))


def _power_below(count: int) -> int:
    """The greatest power of two at most `count` (0 for 0)."""
    return 1 << (count.bit_length() - 1) if count else 0


def _two_stage(node: Node, chunk: int, rows_first: bool = False) -> Node:
    """The reduction `node` as the reductions of chunks of `chunk` reduced values (the last padded with the op's
    identity), then the reduction of those partial results: laid out [kept axes, chunks], or `rows_first`
    [chunks, kept axes] (a column sum's partials, so that its first stage is a column sum too)."""
    source, axes = node.src[0], list(node.arg)
    kept = [a for a in range(len(source.shape)) if a not in axes]
    kept_shape = tuple(source.shape[a] for a in kept)
    count = math.prod(source.shape[a] for a in axes)
    parts = -(-count // chunk)
    at = 0 if rows_first else len(kept)  # where the reduced values lie in the flat view
    order, shape = (axes + kept, (count,) + kept_shape) if rows_first else (kept + axes, kept_shape + (count,))
    # the partials are stored: half precision adds in float32
    flat = n.cast(n.reshape(n.permute(source, order), shape), node.dtype.accumulated)
    fill = 0 if node.op is Op.SUM else lowest_value(node.dtype)
    padded = n.pad(flat, [(0, parts * chunk - count if a == at else 0) for a in range(len(shape))], fill)
    chunks = n.reshape(padded, shape[:at] + (parts, chunk) + shape[at + 1:])
    partial = n.reduce(node.op, chunks, [at + 1])
    total = n.reduce(node.op, partial, [at])
    return n.reshape(n.cast(total, node.dtype), node.shape)
