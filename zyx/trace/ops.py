"""The primitive ops: everything the Tensor API offers is composed from these few."""
from __future__ import annotations

from enum import Enum, auto


class Op(Enum):
    # Ops are singletons: hashing by identity keeps `op in SOME_OPS` in C (Enum's own hash is a Python call,
    # and hashed its name with the process's random string hash, so no order over ops was ever fixed by it).
    __hash__ = object.__hash__

    # leaves
    BUFFER = auto()  # realized data held by node.buffer
    CONST = auto()   # arg: a Python scalar filling the node's shape
    RAND = auto()    # arg: (seed, offset); uniform float32 in [0, 1) from the Philox counter generator
    # unary
    NEG = auto(); RECIP = auto(); SQRT = auto(); EXP = auto(); LOG = auto(); SIN = auto(); COS = auto()
    TANH = auto(); SIGMOID = auto(); ERF = auto(); FLOOR = auto(); CEIL = auto(); RINT = auto()
    NOT = auto()     # logical on bool, bitwise (~x) on integers
    DETACH = auto()  # identity for values, a wall for gradients
    CAST = auto()    # arg: target DType
    # binary (operands share shape and dtype)
    ADD = auto(); MUL = auto(); DIV = auto(); POW = auto(); MAX = auto(); CMPLT = auto(); CMPEQ = auto()
    AND = auto(); OR = auto(); XOR = auto()  # logical on bool, bitwise on integers
    SHL = auto(); SHR = auto()  # integers; shifts past the width give 0 (or -1 for a negative >>), as PyTorch
    # ternary
    WHERE = auto()   # src: (condition bool, a, b)
    # reductions over arg axes; reduced axes keep size 1
    SUM = auto(); RMAX = auto()
    # movement: views, never copies
    RESHAPE = auto()  # arg: new shape
    PERMUTE = auto()  # arg: axis order
    EXPAND = auto()   # arg: new shape (only size-1 axes grow)
    PAD = auto()      # arg: (((before, after), ...), fill value)
    SHRINK = auto()   # arg: ((start, end), ...)
    FLIP = auto()     # arg: axes to reverse
    # across processes (zyx.distributed): a value combined with the same node's value in every other process
    COLLECTIVE = auto()  # arg: ("all_reduce", "sum" | "max" | "min") or ("broadcast", source rank)


LEAF_OPS = frozenset({Op.BUFFER, Op.CONST, Op.RAND})
UNARY_OPS = frozenset({Op.NEG, Op.RECIP, Op.SQRT, Op.EXP, Op.LOG, Op.SIN, Op.COS, Op.TANH, Op.SIGMOID, Op.ERF, Op.FLOOR,
                       Op.CEIL, Op.RINT, Op.NOT, Op.DETACH, Op.CAST})
BINARY_OPS = frozenset({Op.ADD, Op.MUL, Op.DIV, Op.POW, Op.MAX, Op.CMPLT, Op.CMPEQ, Op.AND, Op.OR, Op.XOR, Op.SHL,
                        Op.SHR})
BITWISE_OPS = frozenset({Op.AND, Op.OR, Op.XOR})
SHIFT_OPS = frozenset({Op.SHL, Op.SHR})
COMPARE_OPS = frozenset({Op.CMPLT, Op.CMPEQ})
ELEMENTWISE_OPS = UNARY_OPS | BINARY_OPS | {Op.WHERE}
REDUCE_OPS = frozenset({Op.SUM, Op.RMAX})
MOVEMENT_OPS = frozenset({Op.RESHAPE, Op.PERMUTE, Op.EXPAND, Op.PAD, Op.SHRINK, Op.FLIP})
REDUCTIONS_ACROSS_PROCESSES = ("sum", "max", "min")
