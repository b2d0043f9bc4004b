"""Matrix products (matmul and torch's fixed-rank forms: bmm, mv, outer, addmm), tensordot, kron, cross, cdist and
dropout, composed from views, multiplies and sums (convolution and pooling: tensor_conv).

`matmul` keeps the reduced axis last in a (..., n, m, k) product so the JIT can recognise the pattern and
emit a tiled kernel.
"""
from __future__ import annotations

import string
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

from .dtypes import int64, promote
from .errors import ShapeError
from .tensor_base import TensorBase, rounded_once
from .tensor_movement import broadcast_shape, normalize_axis
from .trace import node as n
from .trace.ops import Op

if TYPE_CHECKING:
    from .tensor import Tensor


def _broadcast(node: n.Node, shape: tuple[int, ...]) -> n.Node:
    """`node` expanded to `shape`, with leading axes of size 1 where it has fewer (as Tensor.expand)."""
    return n.expand(n.reshape(node, (1,) * (len(shape) - len(node.shape)) + node.shape), shape)


def _product(left: n.Node, right: n.Node, a_shape: tuple[int, ...], b_shape: tuple[int, ...],
             batch: tuple[int, ...], dtype: Any) -> n.Node:
    """The trace of matmul(left, right) (see `LayerMixin.matmul`), the operands' shapes as matrices `a_shape` and
    `b_shape`: views of both to (batch..., n, m, k), multiplied, summed over k."""
    n_, k, m = a_shape[-2], a_shape[-1], b_shape[-1]
    full = batch + (n_, m, k)
    left = _broadcast(n.reshape(n.cast(left, dtype), a_shape[:-1] + (1, k)), full)
    batch_axes = len(b_shape) - 2
    right = n.permute(n.reshape(n.cast(right, dtype), b_shape), tuple(range(batch_axes)) + (batch_axes + 1, batch_axes))
    right = _broadcast(n.reshape(right, b_shape[:-2] + (1, m, k)), full)
    terms = n.binary(Op.MUL, left, right)
    terms = terms if dtype.is_float else n.cast(terms, int64)  # integers sum in int64, as Tensor.sum does
    return n.reshape(n.reduce(Op.SUM, terms, (len(full) - 1,)), full[:-1])


def _matmul(left: n.Node, right: n.Node, a_shape: tuple[int, ...], b_shape: tuple[int, ...],
            batch: tuple[int, ...], dtype: Any) -> n.Node:
    """The whole trace of matmul(left, right): the product (`_product`), cast back to an integer dtype (summed in
    int64), and the axes that 1-D operands gained dropped again."""
    node = _product(left, right, a_shape, b_shape, batch, dtype)
    if dtype.is_int:
        node = n.cast(node, dtype)
    if len(left.shape) == 1:
        node = n.reshape(node, node.shape[:-2] + node.shape[-1:])
    if len(right.shape) == 1:
        node = n.reshape(node, node.shape[:-1])
    return node


# A product's trace made again for operands of the shapes and dtypes met before (`node.graph_maker`): its eight
# or so nodes' constructors, checks and keys were most of an un-jitted `(x @ y).realize()`'s host time. A maker
# stands for operands that passed matmul's checks, so a product of operands met before skips them too.
PRODUCT_MAKERS_KEPT = 1024
_product_makers: dict[tuple, Callable[[n.Node, n.Node], n.Node]] = {}


class LayerMixin:
    __slots__ = ()
    node: Any

    def matmul(self, other: "Tensor") -> "Tensor":
        """numpy's matmul: batched and broadcast; 1-D operands gain and lose an axis."""
        b = other
        if not isinstance(b, TensorBase):
            if not (isinstance(b, (list, tuple)) or hasattr(b, "__array__")):
                raise TypeError(f"matmul needs a tensor, got {type(b).__name__}")
            b = self._operand(b, "matmul")  # type: ignore[attr-defined]
        left_node, right_node = self.node, b.node  # the nodes, not the tensors' properties: a Python call fewer each
        folds = right_node.op is Op.PERMUTE  # (`x @ w.T`: the product's own permute of w.T is w, no node)
        key = (left_node.shape, right_node.shape, left_node.dtype, right_node.dtype)
        maker = None if folds else _product_makers.get(key)
        if maker is not None and left_node.device is right_node.device:
            return self._wrap(maker(left_node, right_node))
        if not left_node.shape or not right_node.shape:
            raise ShapeError(f"matmul: both operands need at least one dimension, got {left_node.shape} and "
                             f"{right_node.shape}")
        a_shape = left_node.shape if len(left_node.shape) > 1 else (1,) + left_node.shape
        b_shape = right_node.shape if len(right_node.shape) > 1 else right_node.shape + (1,)
        if a_shape[-1] != b_shape[-2]:
            raise ShapeError(f"matmul: shapes {left_node.shape} and {right_node.shape} do not match "
                             f"({a_shape[-1]} != {b_shape[-2]})")
        try:
            batch = broadcast_shape("matmul", a_shape[:-2], b_shape[:-2])
        except ShapeError:
            raise ShapeError(f"matmul: batch axes of shapes {left_node.shape} and {right_node.shape} "
                             "cannot be broadcast together") from None
        if left_node.device is not right_node.device:
            raise ValueError(f"matmul: operands live on different devices ({left_node.device} and "
                             f"{right_node.device})")
        dtype = promote(left_node.dtype, right_node.dtype)

        def build(x: n.Node, y: n.Node) -> n.Node:
            return _matmul(x, y, a_shape, b_shape, batch, dtype)
        if folds:
            return self._wrap(build(left_node, right_node))
        if len(_product_makers) >= PRODUCT_MAKERS_KEPT:
            _product_makers.clear()
        maker = _product_makers[key] = n.graph_maker(build, (left_node, right_node))
        return self._wrap(maker(left_node, right_node))

    def __matmul__(self, other: "Tensor") -> "Tensor":
        return self.matmul(other)

    def __rmatmul__(self, other: "Tensor") -> "Tensor":
        return self._operand(other, "matmul").matmul(self)  # type: ignore[attr-defined]

    def dot(self, other: "Tensor") -> "Tensor":
        """The inner product of two 1-D tensors."""
        if self.ndim != 1 or other.ndim != 1:  # type: ignore[attr-defined]
            raise ShapeError(f"dot: needs two 1-D tensors, got {self.shape} and {other.shape}")  # type: ignore
        return self.matmul(other)

    def _check_ranks(self, other: "Tensor", ranks: tuple[int, int], op: str) -> "Tensor":
        """`other` as a tensor, once self and it have the ranks torch's fixed-rank product `op` takes."""
        other = self._operand(other, op)  # type: ignore[attr-defined]
        if (len(self.node.shape), len(other.node.shape)) != ranks:
            names = {1: "1-D", 2: "2-D", 3: "3-D"}
            raise ShapeError(f"{op}: needs a {names[ranks[0]]} and a {names[ranks[1]]} tensor, got shapes "
                             f"{self.node.shape} and {other.node.shape}")
        return other  # type: ignore[return-value]

    def bmm(self, other: "Tensor") -> "Tensor":
        """Batched matrix product of (b, n, k) and (b, k, m) tensors (torch.bmm: no broadcasting)."""
        other = self._check_ranks(other, (3, 3), "bmm")
        if self.node.shape[0] != other.node.shape[0]:
            raise ShapeError(f"bmm: batch sizes differ in shapes {self.node.shape} and {other.node.shape}")
        return self.matmul(other)

    def mv(self, vec: "Tensor") -> "Tensor":
        """The product of an (n, m) matrix and an (m,) vector: an (n,) vector (torch.mv)."""
        return self.matmul(self._check_ranks(vec, (2, 1), "mv"))

    def outer(self, other: "Tensor") -> "Tensor":
        """The outer product of two vectors: out[i, j] = self[i] * other[j] (torch.outer)."""
        other = self._check_ranks(other, (1, 1), "outer")
        return self.unsqueeze(-1) * other  # type: ignore[attr-defined]

    def addmm(self, mat1: "Tensor", mat2: "Tensor", beta: float = 1, alpha: float = 1) -> "Tensor":
        """beta * self + alpha * (mat1 @ mat2), as torch.addmm(input, mat1, mat2): self broadcasts to the
        product's shape; with beta = 0 it is not read (nan and inf in it do not propagate)."""
        product = mat1.matmul(mat1._check_ranks(mat2, (2, 2), "addmm"))
        try:
            fits = broadcast_shape("addmm", self.node.shape, product.shape) == product.shape
        except ShapeError:
            fits = False
        if not fits:
            raise ShapeError(f"addmm: input of shape {self.node.shape} does not broadcast to the product's shape "
                             f"{product.shape} (of {mat1.shape} and {mat2.shape})")
        product = product if alpha == 1 else product * alpha
        if beta == 0:
            return product
        return (self if beta == 1 else self * beta) + product  # type: ignore[operator]

    def tensordot(self, other: "Tensor", dims: Union[int, Sequence[Any]] = 2) -> "Tensor":
        """The sum of products over the axes `dims` pairs up, as torch.tensordot: an int n contracts self's last n
        axes with other's first n; a pair of lists names them. The result has self's remaining axes, then
        other's (an einsum)."""
        from .einsum import einsum
        other = self._operand(other, "tensordot")  # type: ignore[attr-defined]
        a_shape, b_shape = self.node.shape, other.node.shape
        if isinstance(dims, int):
            if not 0 <= dims <= min(len(a_shape), len(b_shape)):
                raise ShapeError(f"tensordot: cannot contract {dims} axes of shapes {a_shape} and {b_shape}")
            pairs = [(len(a_shape) - dims + i, i) for i in range(dims)]
        else:
            mine, its = ([d] if isinstance(d, int) else list(d) for d in dims)
            if len(mine) != len(its):
                raise ShapeError(f"tensordot: dims {dims!r} name {len(mine)} and {len(its)} axes")
            pairs = [(normalize_axis(a, len(a_shape), "tensordot"), normalize_axis(b, len(b_shape), "tensordot"))
                     for a, b in zip(mine, its)]
        for a, b in pairs:
            if a_shape[a] != b_shape[b]:
                raise ShapeError(f"tensordot: axis {a} of shape {a_shape} and axis {b} of shape {b_shape} differ "
                                 "in size")
        letters = iter(string.ascii_letters)
        a_labels = [next(letters) for _ in a_shape]
        b_labels = [next(letters) for _ in b_shape]
        for a, b in pairs:
            b_labels[b] = a_labels[a]
        out = [label for i, label in enumerate(a_labels) if i not in {a for a, _ in pairs}]
        out += [label for i, label in enumerate(b_labels) if i not in {b for _, b in pairs}]
        return einsum(f"{''.join(a_labels)},{''.join(b_labels)}->{''.join(out)}", self, other)

    def kron(self, other: "Tensor") -> "Tensor":
        """The Kronecker product (torch.kron): block (i, j, ...) of the result is self[i, j, ...] * other, the
        ranks first padded with leading 1s to the larger."""
        other = self._operand(other, "kron")  # type: ignore[attr-defined]
        rank = max(self.ndim, other.ndim)  # type: ignore[attr-defined]
        a_shape = (1,) * (rank - len(self.node.shape)) + self.node.shape
        b_shape = (1,) * (rank - len(other.node.shape)) + other.node.shape
        a = self.reshape(tuple(d for s in a_shape for d in (s, 1)))  # type: ignore[attr-defined]
        b = other.reshape(tuple(d for s in b_shape for d in (1, s)))
        return (a * b).reshape(tuple(s * t for s, t in zip(a_shape, b_shape)))

    def cross(self, other: "Tensor", axis: Optional[int] = None) -> "Tensor":
        """The cross product of 3-vectors along `axis` (torch.linalg.cross's rules: same ranks, broadcasting
        elsewhere); axis None is the first of self's axes of size 3, as torch.cross."""
        other = self._operand(other, "cross")  # type: ignore[attr-defined]
        a_shape, b_shape = self.node.shape, other.node.shape
        if axis is None:
            axis = next((i for i, s in enumerate(a_shape) if s == 3), None)
            if axis is None:
                raise ShapeError(f"cross: no axis of size 3 in shape {a_shape}")
        if len(a_shape) != len(b_shape):
            raise ShapeError(f"cross: shapes {a_shape} and {b_shape} need the same number of dimensions")
        axis = normalize_axis(axis, len(a_shape), "cross")
        if a_shape[axis] != 3 or b_shape[axis] != 3:
            raise ShapeError(f"cross: axis {axis} must have size 3 in both shapes, got {a_shape} and {b_shape}")
        broadcast_shape("cross", a_shape, b_shape)
        a1, a2 = (self.roll(-k, axis) for k in (1, 2))  # type: ignore[attr-defined]
        b1, b2 = (other.roll(-k, axis) for k in (1, 2))
        return a1 * b2 - a2 * b1

    def linear(self, weight: "Tensor", bias: Optional["Tensor"] = None) -> "Tensor":
        """x @ weight.T + bias, weight shaped (out, in) as PyTorch's."""
        out = self.matmul(weight.T)
        return out + bias if bias is not None else out

    def dropout(self, p: float = 0.5, training: bool = True) -> "Tensor":
        """Zero each element with probability p and scale the rest by 1/(1-p); a new mask every call."""
        return self._dropout(p, training, self.shape, "dropout")

    def _dropout(self, p: float, training: bool, mask_shape: Sequence[int], op: str) -> "Tensor":
        """Dropout with one draw per element of `mask_shape` (broadcast to self's shape): the element's own for
        dropout, one per channel (N, C, 1, ...) for the channel-wise forms."""
        if not 0 <= p <= 1:
            raise ValueError(f"{op} probability must be in [0, 1], got {p}")
        if not training or p == 0:
            return self  # type: ignore[return-value]
        if p == 1:
            dropped = self._full(self.shape, True, "bool")  # type: ignore[attr-defined]
            return dropped.where(0, self)  # zeros even for inf/nan, gradient 0
        keep = self._rand(mask_shape) >= p  # type: ignore[attr-defined]
        return keep.where(self * (1 / (1 - p)), 0)  # type: ignore[operator]

    def _channel_dropout(self, p: float, training: bool, spatial: int, op: str, unbatched: bool = True) -> "Tensor":
        """Whole channels zeroed with probability p, the kept scaled by 1/(1-p): axis 1 of (N, C, *spatial), axis 0
        of an unbatched (C, *spatial). Neighbouring elements of a feature map are correlated, so element-wise dropout
        would hardly regularise them. `unbatched` False keeps axis 1 for the smaller rank too (dropout2d's)."""
        if self.ndim not in (spatial + 1, spatial + 2):
            raise ShapeError(f"{op}: needs (N, C, *spatial) or (C, *spatial) with {spatial} spatial axes, got shape "
                             f"{self.shape}")
        channels = 1 if unbatched and self.ndim == spatial + 1 else 2
        mask_shape = self.shape[:channels] + (1,) * (self.ndim - channels)
        return self._dropout(p, training, mask_shape, op)

    def dropout1d(self, p: float = 0.5, training: bool = True) -> "Tensor":
        """Channel-wise dropout of (N, C, L) or unbatched (C, L): each channel zeroed whole with probability p,
        the kept scaled by 1/(1-p)."""
        return self._channel_dropout(p, training, 1, "dropout1d")

    def dropout2d(self, p: float = 0.5, training: bool = True) -> "Tensor":
        """Channel-wise dropout of (N, C, H, W): each channel zeroed whole with probability p, the kept scaled by
        1/(1-p). A 3-D input is taken as (N, C, L), channels on axis 1, as PyTorch still does (with a warning)."""
        return self._channel_dropout(p, training, 2, "dropout2d", unbatched=False)

    def dropout3d(self, p: float = 0.5, training: bool = True) -> "Tensor":
        """Channel-wise dropout of (N, C, D, H, W) or unbatched (C, D, H, W): each channel zeroed whole with
        probability p, the kept scaled by 1/(1-p)."""
        return self._channel_dropout(p, training, 3, "dropout3d")


@rounded_once
def cdist(x1: "Tensor", x2: "Tensor", p: float = 2.0,
          compute_mode: str = "use_mm_for_euclid_dist_if_necessary") -> "Tensor":
    """The p-norm distance between each row of x1 (..., P, M) and each row of x2 (..., R, M): (..., P, R), batch
    axes broadcasting, as torch.cdist. For p = 2 torch's compute_mode picks the matrix-product expansion
    |a|^2 + |b|^2 - 2ab (fast, less accurate for near points) when P or R exceeds 25 (or always/never); every
    zero distance has gradient 0, as torch's."""
    modes = ("use_mm_for_euclid_dist_if_necessary", "use_mm_for_euclid_dist", "donot_use_mm_for_euclid_dist")
    if compute_mode not in modes:
        raise ValueError(f"cdist: compute_mode must be one of {modes}, got {compute_mode!r}")
    if x1.ndim < 2 or x2.ndim < 2 or x1.shape[-1] != x2.shape[-1]:
        raise ShapeError(f"cdist: needs (..., P, M) and (..., R, M) tensors, got shapes {x1.shape} and {x2.shape}")
    try:
        broadcast_shape("cdist", x1.shape[:-2], x2.shape[:-2])
    except ShapeError:
        raise ShapeError(f"cdist: batch axes of shapes {x1.shape} and {x2.shape} do not broadcast") from None
    if not (x1.dtype.is_float and x2.dtype.is_float):
        raise TypeError(f"cdist: needs floating-point tensors, got {x1.dtype} and {x2.dtype}")
    if p < 0:
        raise ValueError(f"cdist: p must be non-negative, got {p}")
    expand = compute_mode == modes[1] or (compute_mode == modes[0] and max(x1.shape[-2], x2.shape[-2]) > 25)
    if p != 2 or not expand:
        return (x1.unsqueeze(-2) - x2.unsqueeze(-3)).norm(p, -1)
    squares = (x1 * x1).sum(-1, keepdim=True) + (x2 * x2).sum(-1).unsqueeze(-2) - 2 * x1.matmul(x2.transpose(-2, -1))
    zero = squares <= 0  # round-off can make a zero distance slightly negative: 0 there, with gradient 0
    return zero.where(0.0, zero.where(1.0, squares).sqrt())
