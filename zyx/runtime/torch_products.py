"""Sums of products (matrix products, their gradients, einsum) as one torch matrix product, planned once.

A CONTRACT step is sum(a * b) over some axes, where a and b broadcast to one shape. Its plan drops the
operands' broadcast axes (of size 1, or stride 0), then calls `torch.matmul` on them permuted and flattened to
(batch..., rows, columns) where every axis is kept or summed over both factors (what products and their gradients are:
cuBLAS's plain gemm for 2-D products, where einsum would call its batched form), else `torch.einsum`. The plan
depends only on the operands' shapes and strides, so it is made once per layout (`contract_plan`, cached), and
once per step of a replayed program (`bound_contract`), which then calls the plan itself. A plan is the torch
calls and nothing else: a view that changes nothing is not a call, and a plain product is `torch.matmul`
itself. (The planning passes lists, not generators, to builtins: torch.compile traces it on a program's first
compiled run.)
"""
from __future__ import annotations

import functools
import math
import string
from typing import Callable, Optional, Sequence

import torch

Plan = Callable[..., torch.Tensor]  # (a, b) or (a, b, addend) -> the step's value
Dims = tuple[tuple[int, ...], tuple[int, ...]]  # which axes of the broadcast size each axis of a and of b is


def contract(a: torch.Tensor, b: torch.Tensor, axes: tuple[int, ...], size: Sequence[int], dims: Dims,
             shape: Sequence[int], addend: Optional[torch.Tensor] = None) -> torch.Tensor:
    """sum(a * b) over `axes` of a and b broadcast to `size` (their axes being `dims` of it), reshaped to
    `shape`, plus `addend` where given, without storing a * b."""
    plan = contract_plan(tuple(a.shape), a.stride(), tuple(b.shape), b.stride(), axes, tuple(size), dims,
                         tuple(shape), None if addend is None else tuple(addend.shape))
    return plan(a, b) if addend is None else plan(a, b, addend)


def bound_contract(axes: tuple[int, ...], size: Sequence[int], dims: Dims, shape: Sequence[int]) -> Plan:
    """`contract` for one step of a program, planned on its first call: a program's values have the same layouts
    on every run (its inputs are contiguous buffers of fixed shapes, and torch's ops lay their results out by
    their operands'), so later calls only run the torch calls; `run.settled()` is the plan itself once made,
    which a program then calls directly (`program_code.GeneratedProgram.settle`)."""
    plan: Optional[Plan] = None

    def run(a: torch.Tensor, b: torch.Tensor, *addend: torch.Tensor) -> torch.Tensor:
        nonlocal plan
        if torch.compiler.is_compiling():  # a cell set at the first run would make Dynamo compile twice
            return contract(a, b, axes, size, dims, shape, *addend)
        if plan is None:
            plan = contract_plan(tuple(a.shape), a.stride(), tuple(b.shape), b.stride(), axes, tuple(size), dims,
                                 tuple(shape), tuple(addend[0].shape) if addend else None)
        return plan(a, b, *addend)

    run.settled = lambda: plan or run  # type: ignore[attr-defined]
    return run


@functools.lru_cache(maxsize=4096)
def contract_plan(a_shape: tuple[int, ...], a_strides: tuple[int, ...], b_shape: tuple[int, ...],
                  b_strides: tuple[int, ...], axes: tuple[int, ...], size: tuple[int, ...], dims: Dims,
                  shape: tuple[int, ...], addend: Optional[tuple[int, ...]]) -> Plan:
    """The torch calls computing `contract` for operands of these shapes and strides (and an addend of this
    shape, or none)."""
    letters = string.ascii_letters[:len(size)]
    unbroadcast_a, left = _broadcast_free(size, a_shape, a_strides, dims[0], letters)
    unbroadcast_b, right = _broadcast_free(size, b_shape, b_strides, dims[1], letters)
    present = set(left) | set(right)
    kept = "".join([letter for axis, letter in enumerate(letters) if axis not in axes and letter in present])
    sizes = dict(zip(letters, size))
    matmul = _matmul_plan(left, right, kept, sizes)
    product = matmul[0] if matmul else (lambda x, y, spec=f"{left},{right}->{kept}": torch.einsum(spec, x, y))
    # a summed axis broadcast in both operands adds the same product that many times
    repeats = math.prod([1 if letters[axis] in present else size[axis] for axis in axes])
    summed = tuple([1 if axis in axes else n for axis, n in enumerate(size)])
    unexpanded = tuple([n if letters[axis] in kept else 1 for axis, n in enumerate(summed)])
    # an axis neither factor has: stored whole, as a later step may write over the result (memory_plan.py)
    expanded = summed != unexpanded
    produced = tuple([sizes[c] for c in kept])
    plain = repeats == 1 and not expanded and produced == shape
    if addend is not None and matmul and matmul[1] and plain and \
            len(addend) <= 2 and all([n in (1, m) for n, m in zip(addend[::-1], shape[::-1])]):
        left, right = _then(unbroadcast_a, matmul[1][0]), _then(unbroadcast_b, matmul[1][1])
        if left is _same and right is _same:
            return lambda a, b, c: torch.addmm(c, a, b)
        return lambda a, b, c: torch.addmm(c, left(a), right(b))
    if addend is None and plain and unbroadcast_a is _same and unbroadcast_b is _same:
        return product

    def run(a: torch.Tensor, b: torch.Tensor, *added: torch.Tensor) -> torch.Tensor:
        result = product(unbroadcast_a(a), unbroadcast_b(b))
        if repeats != 1:
            result = result * repeats
        if expanded:
            result = result.reshape(unexpanded).expand(summed).contiguous()
        if result.shape != shape:
            result = result.reshape(shape)
        return torch.add(result, added[0]) if added else result

    return run


def _broadcast_free(size: tuple[int, ...], shape: tuple[int, ...], strides: tuple[int, ...], dims: tuple[int, ...],
                    letters: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """How to drop an operand's broadcast axes (of size 1 where `size` differs, or of stride 0), and the letters
    of the axes it keeps; its axes are the `dims` of `size`."""
    dropped = [axis for axis, whose in enumerate(dims)
               if shape[axis] != size[whose] or (strides[axis] == 0 and size[whose] > 1)]
    kept = "".join([letters[whose] for axis, whose in enumerate(dims) if axis not in dropped])
    if not dropped:
        return _same, kept
    if all([shape[axis] == 1 for axis in dropped]):
        return (lambda x, axes=tuple(dropped): x.squeeze(axes)), kept
    index = tuple([0 if axis in dropped else slice(None) for axis in range(len(dims))])
    return (lambda x: x[index]), kept


def _matmul_plan(left: str, right: str, kept: str, sizes: dict[str, int]) -> Optional[tuple[Plan, Optional[tuple]]]:
    """einsum(left,right->kept) as `torch.matmul`, where every letter is kept or summed over both factors, and
    where it is one plain 2-D product whose result needs no reshape, how to arrange its operands (for
    `torch.addmm`); None for the rest (a sum over one factor's own axis)."""
    shared = set(left) & set(right)
    batch = [c for c in kept if c in shared]
    summed = [c for c in left if c in shared and c not in kept]
    free_left, free_right = [c for c in left if c not in shared], [c for c in right if c not in shared]
    if not summed or any([c not in kept for c in free_left + free_right]):
        return None
    batch_sizes = tuple([sizes[c] for c in batch])

    def flattened(groups: tuple[list[str], list[str]]) -> tuple[int, ...]:
        """The batch sizes, then one axis per group of letters. Without batch axes an empty group has no axis:
        torch.matmul takes a 1-D operand as a vector (a dot, a matrix-vector product), and its result then has
        no axis for it, so a dot is one call, not four (two reshapes to matrices, and one of the 1×1 result)."""
        return (*batch_sizes, *[math.prod([sizes[c] for c in group]) for group in groups if group or batch])

    def arranged(axes: str, rows: list[str], columns: list[str]) -> Callable[[torch.Tensor], torch.Tensor]:
        """The operand with the batch axes first, then `rows` and `columns` flattened into one axis each (each
        call only where it changes something)."""
        order = [axes.index(c) for c in batch + rows + columns]
        return _view(None if order == sorted(order) else order, tuple([sizes[c] for c in batch + rows + columns]),
                     flattened((rows, columns)))

    left_arranged, right_arranged = arranged(left, free_left, summed), arranged(right, summed, free_right)
    produced = batch + free_left + free_right
    final = [produced.index(c) for c in kept]
    flat = flattened((free_left, free_right))
    unflat = _view(None, flat, tuple([sizes[c] for c in produced]))
    final_order = None if final == sorted(final) else final
    plain = not batch and final_order is None and len(free_left) == len(free_right) == 1

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        result = unflat(torch.matmul(left_arranged(x), right_arranged(y)))
        return result if final_order is None else result.permute(final_order)

    direct = final_order is None and left_arranged is right_arranged is unflat is _same
    return (torch.matmul if direct else run), ((left_arranged, right_arranged) if plain else None)


def _view(order: Optional[list[int]], permuted: tuple[int, ...],
          shape: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    """x permuted by `order` (None: not), whose shape is then `permuted`, reshaped to `shape`: no call that
    changes nothing (`_same`)."""
    if order is None:
        return _same if permuted == shape else (lambda x: x.reshape(shape))
    return (lambda x: x.permute(order)) if permuted == shape else (lambda x: x.permute(order).reshape(shape))


def _same(x: torch.Tensor) -> torch.Tensor:
    """A view that changes nothing: plans leave it out (`_then`, `contract_plan`)."""
    return x


def _then(first: Callable[[torch.Tensor], torch.Tensor],
          second: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """`second(first(x))`, without the calls that change nothing."""
    if first is _same or second is _same:
        return second if first is _same else first
    return lambda x: second(first(x))
