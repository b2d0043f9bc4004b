"""Chains of elementwise nodes that one library call computes: fewer launches and passes over memory.

An optimized program (`interpret.build(optimize=True)`, zyx.Torch()) computes these as one step each:
- `a <= b`, which the trace spells `(a < b) | (a == b)`: one comparison (Fused.LE); `a != b`, spelled
  `~(a == b)`: one comparison (Fused.NE);
- relu, `where(x <= 0, 0, x)`: one clamp (Fused.RELU), and its gradient `where(x <= 0, 0, g)`, read off the
  relu's output as PyTorch's autograd does (Fused.RELU_GRAD), so the mask is not stored at all where nothing
  else reads it;
- `a + b * c` and `a - b * c` (Fused.MULADD, Fused.MULSUB: torch.addcmul), and `a + (b - a) * w`, an optimizer's
  moving average (Fused.LERP: torch.lerp);
- `cat`, which the trace spells as each piece padded with zeros to the whole and the pads summed (OR-ed for
  booleans): one join (Fused.CAT: torch.cat), not a pad per piece and an add per piece but one. A -0.0 in a
  piece stays -0.0 (as in torch.cat and numpy.concatenate; the sum made it +0.0). A jitted step's index check
  joins an index tensor's negated and plain entries so, to find both extremes in one reduction.
Only float nodes fuse (joins: any dtype), and only through nodes nothing else reads (a target is always
computed). `fuse` looks at consumers before their sources, so a longer chain claims a node before a shorter one
could.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from ..trace.node import Node
from ..trace.ops import Op
from .steps import Fused

FusedNode = tuple[Any, Any, tuple[Node, ...]]  # (op, arg, sources) of the step computing a node
_CONSTANT_VIEWS = (Op.RESHAPE, Op.EXPAND)
_JOINING = (Op.ADD, Op.OR)  # how cat sums its pieces' pads (OR: booleans)


def fuse(order: Sequence[Node], readers: dict[int, int], wanted: set[int], skipped: set[int],
         fused: dict[int, FusedNode]) -> None:
    """Add the chains of `order` (a toposort) to `fused` (id -> the step computing the node) and the nodes they
    make unneeded to `skipped`; `readers`: id -> how many nodes read it; `wanted`: ids of the targets."""
    position = {id(node): k for k, node in enumerate(order)}

    def only_here(node: Node, op: Op) -> bool:
        return node.op is op and readers[id(node)] == 1 and id(node) not in wanted and id(node) not in skipped \
            and id(node) not in fused  # (a MUL softmax_fusion computes as softmax(x) * h is no factor to absorb)

    masks: dict[int, list[Node]] = {}  # mask (x <= 0) -> the WHERE nodes reading it that fuse
    relus: dict[int, Node] = {}  # mask -> its relu, where(mask, 0, x)
    for node in order:
        compared = _le_operands(node, only_here)
        if compared is None:
            continue
        fused[id(node)] = (Fused.LE, None, compared)
        skipped.update(id(source) for source in node.src)
        if compared[0].dtype.is_float and _is_zero(compared[1]):
            masks[id(node)] = []
    for node in order:
        if node.op is Op.WHERE and id(node.src[0]) in masks and _is_zero(node.src[1]) and node.dtype.is_float \
                and node.src[2].shape == node.shape:
            mask, value = node.src[0], node.src[2]
            relu = relus.get(id(mask))
            if value is fused[id(mask)][2][0] and relu is None:
                relus[id(mask)] = node
                fused[id(node)] = (Fused.RELU, None, (value,))
            elif relu is not None and position[id(relu)] < position[id(node)] and relu.shape == node.shape:
                fused[id(node)] = (Fused.RELU_GRAD, None, (value, relu))
            else:
                continue
            masks[id(mask)].append(node)
    for node in order:
        if node.op is Op.NOT and only_here(node.src[0], Op.CMPEQ):
            fused[id(node)] = (Fused.NE, None, node.src[0].src)
            skipped.add(id(node.src[0]))
    for mask, uses in masks.items():
        if len(uses) == readers[mask] and mask not in wanted:
            skipped.add(mask)
    for node in reversed(order):
        if node.op is Op.ADD and node.dtype.is_float and id(node) not in skipped and id(node) not in fused:
            chain = _multiply_add(node, only_here)
            if chain is not None:
                fused[id(node)] = chain[0]
                skipped.update(id(inner) for inner in chain[1])
    for node in reversed(order):
        if node.op in _JOINING and id(node) not in skipped and id(node) not in fused:
            join = _concatenation(node, only_here)
            if join is not None:
                fused[id(node)] = join[0]
                skipped.update(id(inner) for inner in join[1])


def _le_operands(node: Node, only_here: Any) -> Optional[tuple[Node, Node]]:
    """(a, b) where `node` is `(a < b) | (a == b)` (or `b == a`), its two comparisons read nowhere else."""
    if node.op is not Op.OR or len({id(source) for source in node.src}) != 2:
        return None
    for less, equal in (node.src, node.src[::-1]):
        if only_here(less, Op.CMPLT) and only_here(equal, Op.CMPEQ) and \
                any(_same(less.src[0], x) and _same(less.src[1], y) for x, y in (equal.src, equal.src[::-1])):
            return less.src[0], less.src[1]
    return None


def _multiply_add(node: Node, only_here: Any) -> Optional[tuple[FusedNode, list[Node]]]:
    """The fused step of an ADD heading `a + (b - a) * w`, `a - b * c` or `a + b * c`, with the nodes it
    absorbs; None where it heads none."""
    for a, other in ((node.src[0], node.src[1]), (node.src[1], node.src[0])):
        if only_here(other, Op.MUL):
            for difference, weight in (other.src, other.src[::-1]):
                if only_here(difference, Op.ADD):
                    end, negation = difference.src
                    if only_here(negation, Op.NEG) and negation.src[0] is a and end is not a:
                        return (Fused.LERP, None, (a, end, weight)), [other, difference, negation]
            return (Fused.MULADD, None, (a, *other.src)), [other]
        if only_here(other, Op.NEG) and only_here(other.src[0], Op.MUL):
            return (Fused.MULSUB, None, (a, *other.src[0].src)), [other, other.src[0]]
    return None


def _concatenation(node: Node, only_here: Any) -> Optional[tuple[FusedNode, list[Node]]]:
    """The join heading `node` where it is cat's trace: an ADD (or OR) of ADDs (ORs) and zero pads, read nowhere
    else, the pads widening their pieces along one axis and tiling it; with the nodes it absorbs. None where it
    is not."""
    absorbed: list[Node] = []
    pads: list[Node] = []
    pending = [node]
    while pending:
        for source in pending.pop().src:
            if only_here(source, Op.PAD):
                pads.append(source)
            elif only_here(source, node.op):
                pending.append(source)
                absorbed.append(source)
            else:
                return None
    widened = {axis for pad in pads for axis, pair in enumerate(pad.arg[0]) if pair != (0, 0)}
    if len(widened) != 1 or any(pad.arg[1] != 0 for pad in pads):  # (node.pad's widths are never negative)
        return None
    axis, = widened
    pads.sort(key=lambda pad: pad.arg[0][axis][0])
    end = 0
    for pad in pads:
        if pad.arg[0][axis][0] != end:
            return None
        end += pad.src[0].shape[axis]
    if end != node.shape[axis]:
        return None
    return (Fused.CAT, axis, tuple(pad.src[0] for pad in pads)), absorbed + pads


def constant_of(node: Node) -> Optional[Node]:
    """The CONST node `node` is a view of (through reshapes and expands), if any."""
    while node.op in _CONSTANT_VIEWS:
        node = node.src[0]
    return node if node.op is Op.CONST else None


def _is_zero(node: Node) -> bool:
    constant = constant_of(node)
    return constant is not None and constant.arg == 0


def _same(a: Node, b: Node) -> bool:
    """Whether two nodes have the same value: the same node, or views of the same shape of equal constants (each
    `x <= 0` makes its own zeros)."""
    if a is b:
        return True
    constants = constant_of(a), constant_of(b)
    return None not in constants and a.shape == b.shape and constants[0].dtype == constants[1].dtype and \
        repr(constants[0].arg) == repr(constants[1].arg)
