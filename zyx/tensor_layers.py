"""Matrix products (matmul and torch's fixed-rank forms: bmm, mv, outer, addmm) and dropout, composed from views,
multiplies and sums (convolution and pooling: tensor_conv).

`matmul` keeps the reduced axis last in a (..., n, m, k) product so the JIT can recognise the pattern and
emit a tiled kernel.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from .dtypes import int64, promote
from .errors import ShapeError
from .tensor_base import TensorBase
from .tensor_movement import broadcast_shape
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
        other = other if isinstance(other, TensorBase) else self._operand(other, op)  # type: ignore[attr-defined]
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

    def linear(self, weight: "Tensor", bias: Optional["Tensor"] = None) -> "Tensor":
        """x @ weight.T + bias, weight shaped (out, in) as PyTorch's."""
        out = self.matmul(weight.T)
        return out + bias if bias is not None else out

    def dropout(self, p: float = 0.5, training: bool = True) -> "Tensor":
        """Zero each element with probability p and scale the rest by 1/(1-p); a new mask every call."""
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        if not training or p == 0:
            return self  # type: ignore[return-value]
        if p == 1:
            dropped = self._full(self.shape, True, "bool")  # type: ignore[attr-defined]
            return dropped.where(0, self)  # zeros even for inf/nan, gradient 0
        keep = self._rand(self.shape) >= p  # type: ignore[attr-defined]
        return keep.where(self * (1 / (1 - p)), 0)  # type: ignore[operator]
