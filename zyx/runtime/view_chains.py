"""Views and adds an optimized program folds into the steps around them (`interpret.build(optimize=True)`).

Every view step is a library call at every run, and the trace is full of them: a linear layer reads its weight
as `w.T.T` reshaped, and its product is reshaped before the bias is added. `simplified` rewrites the steps so
that
- a permute of a permute is one permute, a reshape of a reshape one reshape, and a chain that ends where it
  began is no step at all, nor is a step computing what an earlier one did, nor `cast(mask) == 1`, nor
  `where(mask, cast(mask), 0)`; a cast of values cast before in another shape is a reshape of that cast;
- a product (CONTRACT) reads an operand that is a permute, or a reshape inserting axes of size 1, from the
  view's source (its arg names which of the product's axes each operand axis is: `dims`), returns the shape of
  a reshape that is its only reader, and adds the other source of an ADD that is its only reader (a linear
  layer's bias: one `torch.addmm`);
- a sum whose only reader is a reshape dropping the summed axes returns that shape (keepdim=False);
- an elementwise step reads a reshape's source where the reshape only adds leading axes of size 1 (broadcast);
- steps that nothing reads (views left behind) are dropped.
Slots keep their numbers until the dead steps go; outputs are never folded away.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

from ..trace.ops import Op
from .steps import ELEMENTWISE, Fused, Step

Shape = tuple[int, ...]


def contract_arg(axes: tuple[int, ...], size: Shape) -> tuple:
    """A CONTRACT step's arg for operands of the rank of `size`: (summed axes, size, (a's axes, b's axes))."""
    everything = tuple(range(len(size)))
    return axes, size, (everything, everything)


def simplified(steps: Sequence[Step], outputs: Sequence[int]) -> tuple[list[Step], list[int]]:
    """The steps with view chains composed, then folded into products (see the module docstring), the unread
    ones dropped after each pass; the outputs renumbered to match."""
    return _products_folded(*_views_composed(steps, outputs))


def _views_composed(steps: Sequence[Step], outputs: Sequence[int]) -> tuple[list[Step], list[int]]:
    """Permutes of permutes and reshapes of reshapes as one step; those that change nothing, and steps that
    compute what an earlier one did (each parameter's Adam update raises the same betas to the same power), as
    none."""
    kept = set(outputs)
    result: list[Step] = []
    same: dict[int, int] = {}  # slot -> the earlier slot with its value (a chain back to where it began)
    seen: dict[tuple, int] = {}  # what a step computes -> the first slot computing it
    casts: dict[tuple, int] = {}  # (the slot a cast reads through reshapes, its dtype) -> the first such cast
    for k, step in enumerate(steps):
        step = dataclasses.replace(step, sources=tuple(same.get(s, s) for s in step.sources))
        computed = (step.op, _hashable(step.arg), step.shape, step.dtype, step.sources, step.compact)
        if step.op not in (Op.BUFFER, Op.RAND) and k not in kept and computed in seen:
            same[k] = seen[computed]
        elif step.op in (Op.PERMUTE, Op.RESHAPE) and k not in kept:
            source = result[step.sources[0]]
            if step.op is source.op is Op.PERMUTE:
                step = dataclasses.replace(step, arg=tuple(source.arg[axis] for axis in step.arg),
                                           sources=source.sources)
            elif step.op is source.op is Op.RESHAPE:
                step = dataclasses.replace(step, sources=source.sources)
            if result[step.sources[0]].shape == step.shape and \
                    (step.op is Op.RESHAPE or step.arg == tuple(range(len(step.shape)))):
                same[k] = step.sources[0]
        elif step.op is Op.CAST and k not in kept and step.compact is None:
            first = casts.setdefault((_unreshaped(step.sources[0], result), step.dtype), k)
            if first != k:  # the same values cast before in another shape: a view of them
                step = dataclasses.replace(step, op=Op.RESHAPE, arg=step.shape, sources=(first,))
                if result[first].shape == step.shape:
                    same[k] = first
        elif step.op is Op.CMPEQ and k not in kept and step.compact is None:
            mask = _mask_compared_to_one(step, result)
            if mask is not None:
                same[k] = mask
        elif step.op is Op.WHERE and k not in kept and step.compact is None and _is_cast_of(result, *step.sources[:2]) \
                and result[step.sources[1]].shape == step.shape and _is_plus_zero(_constant(step.sources[2], result)):
            same[k] = step.sources[1]  # where(mask, cast(mask), 0): the cast is 0 wherever the mask is False
        seen.setdefault(computed, same.get(k, k))
        result.append(step)
    return _live(result, list(outputs))


def _mask_compared_to_one(step: Step, result: list[Step]) -> Optional[int]:
    """The bool slot b where `step` is `cast(b) == 1`, of b's shape: one-hot codes read as a mask again
    (cross-entropy's `one_hot(target) == 1`) are the mask one_hot cast."""
    for code, one in (step.sources, step.sources[::-1]):
        cast = result[code]
        if cast.op is Op.CAST and cast.compact is None:
            mask = result[cast.sources[0]]
            if mask.dtype.is_bool and mask.shape == step.shape and _constant(one, result) == 1:
                return cast.sources[0]
    return None


def _unreshaped(slot: int, result: list[Step]) -> int:
    """The slot `slot` is a reshape of (through chains of them), or itself."""
    while result[slot].op is Op.RESHAPE:
        slot = result[slot].sources[0]
    return slot


def _is_cast_of(result: list[Step], mask: int, slot: int) -> bool:
    """Whether `slot` is `mask` cast (a bool slot as 0 and 1)."""
    return result[slot].op is Op.CAST and result[slot].sources == (mask,) and result[mask].dtype.is_bool


def _is_plus_zero(value: object) -> bool:
    """Whether a constant is 0 (not -0.0, which a where would keep)."""
    return isinstance(value, (int, float)) and value == 0 and math.copysign(1.0, value) > 0


def _constant(slot: int, result: list[Step]) -> object:
    """The value of a CONST step that `slot` is (through reshapes and expands), else None."""
    step = result[slot]
    while step.op in (Op.RESHAPE, Op.EXPAND):
        step = result[step.sources[0]]
    return step.arg if step.op is Op.CONST else None


def _hashable(arg: object) -> object:
    """A step's arg as a key: a float constant by its bits (0.0 and -0.0 differ, nan equals itself)."""
    return (type(arg), arg.hex()) if isinstance(arg, float) else (type(arg), repr(arg))


def _products_folded(steps: list[Step], outputs: list[int]) -> tuple[list[Step], list[int]]:
    """Products reading unreshaped operands, taking the shape of their reshape and adding their ADD's addend."""
    readers = [0] * len(steps)
    for step in steps:
        for source in step.sources:
            readers[source] += 1
    kept = set(outputs)
    result: list[Step] = []
    for step in steps:
        folded = _product_read(step, result, readers, kept)
        if folded.op is Fused.CONTRACT:
            folded = _unviewed_operands(folded, result)
        result.append(_broadcast_unreshaped(folded, result))
    return _live(result, outputs)


def _broadcast_unreshaped(step: Step, result: list[Step]) -> Step:
    """An elementwise step (or a product's addend) reading the source of a reshape that only adds leading axes
    of size 1, which torch's broadcasting adds by itself, where another source has the step's shape: `x * lr`
    reads the 0-d lr as it is, `h + b` the 1-d bias."""
    first = 2 if step.op is Fused.CONTRACT else 0
    if (step.op not in ELEMENTWISE and first == 0) or step.compact is not None or \
            not (first or any(result[s].shape == step.shape for s in step.sources)):
        return step
    sources = list(step.sources)
    for position in range(first, len(sources)):
        reshape = result[sources[position]]
        if reshape.op is Op.RESHAPE and (first or reshape.shape != step.shape):  # one source keeps the shape
            inner = result[reshape.sources[0]].shape
            if len(inner) <= len(reshape.shape) and \
                    reshape.shape == (1,) * (len(reshape.shape) - len(inner)) + inner:
                sources[position] = reshape.sources[0]
    return dataclasses.replace(step, sources=tuple(sources))


def _product_read(step: Step, result: list[Step], readers: list[int], kept: set[int]) -> Step:
    """A reshape of a product, or a float ADD of one, as the product itself; a reshape of a sum dropping its summed
    axes as the sum without them (where nothing else reads the product or the sum)."""
    if step.op not in (Op.RESHAPE, Op.ADD) or step.compact is not None:
        return step
    for position, slot in enumerate(step.sources):
        product = result[slot]
        if readers[slot] != 1 or slot in kept:
            continue
        if step.op is Op.RESHAPE and product.op is Op.SUM and product.compact is None and \
                step.shape == tuple(n for axis, n in enumerate(product.shape) if axis not in product.arg):
            return dataclasses.replace(product, shape=step.shape)
        if product.op is not Fused.CONTRACT or len(product.sources) != 2:  # an addend is added in its shape
            continue
        if step.op is Op.RESHAPE:
            return dataclasses.replace(product, shape=step.shape)
        if step.dtype.is_float and product.shape == step.shape:
            return dataclasses.replace(product, sources=(*product.sources, step.sources[1 - position]))
    return step


def _unviewed_operands(step: Step, result: list[Step]) -> Step:
    """A product reading, through the views it reads, their sources: reshapes that only insert axes of size 1,
    and permutes (the product's `dims` name which of its axes each operand axis is, in any order)."""
    axes, size, dims = step.arg
    sources, new_dims = list(step.sources), list(dims)
    for position in (0, 1):
        while True:
            view = result[sources[position]]
            inner = _embedding(result[view.sources[0]].shape, view.shape) if view.op is Op.RESHAPE else \
                tuple(view.arg.index(axis) for axis in range(len(view.arg))) if view.op is Op.PERMUTE else None
            if inner is None:
                break
            sources[position] = view.sources[0]
            new_dims[position] = tuple(new_dims[position][axis] for axis in inner)
    return dataclasses.replace(step, arg=(axes, size, tuple(new_dims)), sources=tuple(sources))


def _embedding(inner: Shape, outer: Shape) -> Optional[tuple[int, ...]]:
    """The axes of `outer` that `inner`'s axes are, where `outer` is `inner` with axes of size 1 inserted."""
    found: list[int] = []
    for axis, size in enumerate(outer):
        if len(found) < len(inner) and inner[len(found)] == size:
            found.append(axis)
        elif size != 1:
            return None
    return tuple(found) if len(found) == len(inner) else None


def _live(steps: list[Step], outputs: list[int]) -> tuple[list[Step], list[int]]:
    """The steps without those whose value nothing needs (views left behind, folded products), renumbered."""
    needed = [False] * len(steps)
    for slot in outputs:
        needed[slot] = True
    for k in range(len(steps) - 1, -1, -1):
        if needed[k] or steps[k].op is Op.BUFFER:  # loads stay: in-place writes find their input by them
            needed[k] = True
            for source in steps[k].sources:
                needed[source] = True
    position = {old: new for new, old in enumerate(k for k in range(len(steps)) if needed[k])}
    moved = [dataclasses.replace(step, sources=tuple(position[s] for s in step.sources))
             for k, step in enumerate(steps) if needed[k]]
    return moved, [position[slot] for slot in outputs]
