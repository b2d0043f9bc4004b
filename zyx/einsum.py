"""einsum: Einstein summation by pairwise contraction, left to right, each a broadcast multiply and a sum.

Each operand's axes get labels; a label repeated within one operand takes that diagonal first; every pair
contraction sums out the labels that neither the output nor a later operand needs, with the summed labels
flattened onto one last axis (the shape the JIT recognises as a matrix product).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

from .autocast import lower_precision
from .errors import ShapeError

if TYPE_CHECKING:
    from .tensor import Tensor

Labels = list[str]


def _terms(equation: str, operands: Sequence["Tensor"]) -> tuple[list[Labels], Labels]:
    """Input label lists (an ellipsis becomes one label per axis it covers, aligned from the right) and the
    output's, explicit after '->' or implicit (ellipsis, then labels used once, alphabetically)."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(operands):
        raise ValueError(f"einsum: equation {equation!r} has {len(terms)} operands, {len(operands)} were given")
    for term in terms + [rhs]:
        letters = term.replace("...", "")
        if term.count("...") > 1 or not all(c.isalpha() for c in letters):
            raise ValueError(f"einsum: term {term!r} of {equation!r} must be letters with at most one '...'")
    inputs, widest = [], 0
    for term, operand in zip(terms, operands):
        letters = len(term.replace("...", ""))
        covered = operand.ndim - letters
        if covered < 0 or (covered and "..." not in term):
            raise ShapeError(f"einsum: term {term!r} does not fit operand of shape {operand.shape}")
        widest = max(widest, covered)
        head, _, tail = term.partition("...")
        inputs.append(list(head) + [f"...{i}" for i in range(-covered, 0)] + list(tail))
    ellipsis = [f"...{i}" for i in range(-widest, 0)]
    if arrow:
        head, dots, tail = rhs.partition("...")
        output = list(head) + (ellipsis if dots else []) + list(tail)
    else:
        counts: dict[str, int] = {}
        for labels in inputs:
            for label in labels:
                counts[label] = counts.get(label, 0) + 1
        output = ellipsis + sorted(label for label, c in counts.items() if c == 1 and not label.startswith("..."))
    used = {label for labels in inputs for label in labels}
    if len(set(output)) != len(output) or not set(output) <= used | set(ellipsis):
        raise ValueError(f"einsum: output {rhs!r} of {equation!r} repeats a label or names one no input has")
    return inputs, output


def _take_diagonals(x: "Tensor", labels: Labels) -> tuple["Tensor", Labels]:
    """Labels repeated within one operand: keep the diagonal of each repeated pair (a view)."""
    labels = list(labels)
    for label in dict.fromkeys(labels):
        while labels.count(label) > 1:
            first = labels.index(label)
            second = labels.index(label, first + 1)
            x = x.diagonal(0, first, second)
            labels = [l for k, l in enumerate(labels) if k not in (first, second)] + [label]
    return x, labels


def _align(x: "Tensor", labels: Labels, order: Labels) -> "Tensor":
    """x's axes arranged in `order`, with size-1 axes for the labels x lacks."""
    x = x.permute([labels.index(label) for label in order if label in labels])
    sizes = iter(x.shape)
    return x.reshape(tuple(next(sizes) if label in labels else 1 for label in order))


def _contract(a: "Tensor", la: Labels, b: "Tensor", lb: Labels, needed: set[str]) -> tuple["Tensor", Labels]:
    """a * b over the union of their labels, summing those not in `needed` (flattened onto one last axis)."""
    union = list(dict.fromkeys(la + lb))
    kept = [label for label in union if label in needed]
    summed = [label for label in union if label not in needed]
    product = _align(a, la, kept + summed) * _align(b, lb, kept + summed)
    if summed:
        shape = product.shape[:len(kept)]
        product = product.reshape(shape + (math.prod(product.shape[len(kept):]),)).sum(-1)
    return product, kept


@lower_precision
def einsum(equation: str, *operands: Any) -> "Tensor":
    """Einstein summation as torch.einsum: einsum('bij,bjk->bik', a, b), with '...' and implicit outputs.
    Operands may also come as one list. Sizes broadcast where a label has size 1 in some operand."""
    tensors = list(operands[0]) if len(operands) == 1 and isinstance(operands[0], (list, tuple)) else list(operands)
    if not tensors:
        raise ValueError("einsum needs at least one operand")
    inputs, output = _terms(equation, tensors)
    sizes: dict[str, int] = {}
    for labels, t in zip(inputs, tensors):
        for label, size in zip(labels, t.shape):
            if sizes.get(label, 1) not in (1, size) and size != 1:
                raise ShapeError(f"einsum: label {label!r} has sizes {sizes[label]} and {size} in {equation!r} "
                                 f"(shapes {[t.shape for t in tensors]})")
            sizes[label] = max(sizes.get(label, 1), size)
    pairs = [_take_diagonals(t, labels) for t, labels in zip(tensors, inputs)]
    result, labels = pairs[0]
    for position, (t, t_labels) in enumerate(pairs[1:], start=1):
        later = {label for _, rest in pairs[position + 1:] for label in rest}
        result, labels = _contract(result, labels, t, t_labels, set(output) | later)
    unused = [k for k, label in enumerate(labels) if label not in output]
    if unused:
        result = result.sum(unused)
        labels = [label for label in labels if label in output]
    return result.permute([labels.index(label) for label in output]) if output else result
