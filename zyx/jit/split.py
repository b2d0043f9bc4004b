"""A GPU product split along its reduced axis across work groups: the `split` of a tuned local_tiles or
tensor_cores choice, or of tensor_cores._filling_split.

A product with few blocks of outputs (1021³ in 128 x 128 blocks: 64 groups on a 132-SM GPU) leaves much of the
GPU idle however its groups are shaped. Split into `split` chunks of k (rewrite.split_along_k), it takes two
kernels: the partial products, a batch of products over the chunks (a local-tile kernel shaped by the choice's
other parameters), then the kernel of the product's own root, in which the product is the sum of its partials (a
loop of `split` loads per output) and the rest of the root (bias, activation) fuses after that sum. A half-precision
product's partials are float32 (each operand's broadcast cast to float32: tensor_cores.multiplied), their sum
rounded once.
"""
from __future__ import annotations

import dataclasses

from ..trace.node import Node
from ..trace.ops import Op
from .choices import FAMILIES
from .lower import PARAM_LIMIT, Lowering, LoweredKernel, _Value
from .matmul import MIN_GROUPS, TilePlan
from .rewrite import split_along_k
from .tiling import matmul_axes

MIN_CHUNK = 128  # elements of k each group reduces at least (8 slices of 16): shorter chunks cost more to sum
FEW_BLOCKS = 2 * MIN_GROUPS  # products with fewer 128 x 128 blocks of outputs than this may be split


def split_options(product: Node, family: str = "local_tiles") -> tuple[int, ...]:
    """The splits a search may try for a `product` of the choice `family` (local tiles, tensor cores): 1 (none),
    and where it has FEW_BLOCKS (else its groups fill the GPU already) and both operands are broadcasts spanning all
    of k (what split_along_k cuts), those leaving chunks of at least MIN_CHUNK."""
    k, multiplied = product.arg[0], product.src[0]
    count = multiplied.shape[k]
    n_axis, m_axis = matmul_axes(product)  # type: ignore[misc]
    rows, cols = product.shape[n_axis], product.shape[m_axis]
    blocks = product.numel // (rows * cols) * -(-rows // 128) * -(-cols // 128)
    whole = all(side.op is Op.EXPAND and side.src[0].shape[k] == count for side in multiplied.src)
    splits = whole and blocks < FEW_BLOCKS
    return tuple(s for s in FAMILIES[family]["split"] if s == 1 or (splits and count >= s * MIN_CHUNK))


class SplitSumLowering(Lowering):
    """The kernel of a root hosting a split product: one output per item, the product's value the sum of its
    partials, read from memory (another kernel stores them)."""

    def __init__(self, root: Node, materialized: dict[int, Node], produced: set[int], product: Node, summed: Node,
                 stored_apart: frozenset = frozenset(), param_limit: int = PARAM_LIMIT):
        super().__init__(root, materialized, produced, False, stored_apart, param_limit)
        self.product, self.summed = product, summed

    def _reduce(self, node: Node) -> list[_Value]:
        if node is not self.product:
            return super()._reduce(node)
        values = super()._reduce(self.summed)
        if self.summed.dtype == node.dtype:
            return values
        return [self._rounded(value, node.dtype) for value in values]  # (float32 partials of a half product)

    def lower(self) -> LoweredKernel:
        return dataclasses.replace(super().lower(), summed_apart=(self.product,))


def lower_split(root: Node, materialized: dict[int, Node], produced: set[int], plan: TilePlan,
                stored_apart: frozenset = frozenset(), param_limit: int = PARAM_LIMIT) -> tuple[LoweredKernel, Node]:
    """The kernel storing `root`, whose product `plan` splits into plan.split chunks of k (ValueError where
    `split_options` does not allow it); and the node of the partial products, which it needs stored."""
    product = plan.product
    widen = product.dtype.accumulated if product.dtype.is_narrow_float else None  # (float32 partials: exact sums)
    split = (split_along_k(product, plan.split, plan.bk, first=True, widen=widen)
             if plan.split in split_options(product, plan.choice.family) else None)
    if split is None:
        raise ValueError(f"this product's reduced axis cannot be split in {plan.split}")
    partial, total = split
    lowering = SplitSumLowering(root, {**materialized, id(partial): partial}, produced, product, total.src[0],
                                stored_apart | {id(partial)}, param_limit)
    return lowering.lower(), partial
