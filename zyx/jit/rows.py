"""Row kernels: an elementwise value that needs reductions over its own rows, in one kernel.

softmax, log_softmax, layer and RMS norms (and their gradients: sum(dy * y) per row) divide a tensor into
rows: each output element needs reductions over the elements of its row, broadcast back. Lowered one output
per work item, such a kernel would read those reductions from a buffer that another kernel writes first (and
that kernel reads the input once more). Here a work item owns a row instead: each reduction the row needs is a
pass over the row (later passes use earlier results: softmax's sum of exp(x - max) uses the max), and a last
pass computes and stores the row's outputs. The passes re-read the row, from cache while it is short enough.
On GPUs a transform (transforms/group.py) gives each row a work group, its items striding over every pass and
combining each reduction in local memory.

Which rows: the output's elements per output of a reduction the kernel reads (a reduction with R outputs read
by a root with R * L elements makes rows of L elements), when those are the reduction's rows: the reduction,
read at the root's element (row, c), is read at its own position `row`. The lowering refuses (NotRows) where
they are not (a column reduction, a transposed read); the scheduler then lowers the kernel as usual.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ..trace.node import Node
from ..trace.ops import Op, REDUCE_OPS
from .kernel_ir import Cond, Loop
from .lower import PARAM_LIMIT, Index, LoweredKernel, Lowering, linear, unravel
from .symbolic import Expr

# Rows longer than this keep two kernels (the reductions', then the elementwise one at one output per item):
# 16 Ki float32 elements are 64 KiB, which a CPU core's L2 and a GPU SM's L1 hold while the passes re-read them,
# and past which a kernel of few rows would leave most of a device idle.
ROW_LIMIT = 1 << 14
# On GPUs, rows up to this long are one kernel too where there are enough of them to fill the device
# (`long_rows`: at least that many rows): a work group per row, its passes re-reading the row (from L2 where
# the rows in flight fit it). GPT-2's logits (50 304 a row, bf16) did not fit an H100's L2, yet their row max, sum
# of exponentials and gradient in one kernel took 2.24 ms against 2.50 in the statistics' kernel and the gradient's.
GPU_ROW_LIMIT = 1 << 17


class NotRows(Exception):
    """The kernel's reductions are not over the rows it was asked to own."""


def row_length(root: Node, materialized: dict[int, Node], settled: set[int], long_rows: int = 0) -> Optional[int]:
    """Elements per row when `root` is elementwise and reads a reduction that has fewer outputs and that no
    other kernel stores (`settled`: produced or stored apart); the first found walking its sources, past stored
    nodes only where they are smaller than the root (a row's statistic the row kernel may store too). None
    where no such reduction is found or its rows are too long for one kernel: longer than ROW_LIMIT, or, where
    there are at least `long_rows` rows (0: never), than GPU_ROW_LIMIT."""
    if root.op in REDUCE_OPS or root.numel == 0:
        return None
    stack, seen = list(root.src), set()
    while stack:
        node = stack.pop()
        if id(node) in seen or node.op is Op.BUFFER or id(node) in settled:
            continue
        seen.add(id(node))
        if node.op not in REDUCE_OPS:
            stack.extend(node.src if id(node) not in materialized or node.numel < root.numel else ())
        elif node.numel and root.numel % node.numel == 0 and 2 <= root.numel // node.numel <= (
                GPU_ROW_LIMIT if long_rows and node.numel >= long_rows else ROW_LIMIT):
            return root.numel // node.numel
    return None


def statistics_read_elsewhere(root: Node, length: int, materialized: dict[int, Node],
                              users: dict[int, list[Node]]) -> list[Node]:
    """The row statistics (reductions with one value per row of `length`) that the row kernel of `root` computes
    and that a node outside it reads too, directly or through the kernel's elementwise values (`users`: each
    node's readers; nodes the scheduler made have none). Marked to store, the row kernel stores
    them beside its output and the other kernel reads them, instead of a reduction kernel of their own passing
    over the rows again: a cross-entropy's row max and sum of exponentials, which its gradient's row kernel
    computes and its loss reads."""
    rows, inside = root.numel // length, kernel_nodes(root, materialized)
    stack = [node for node in inside.values() if any(id(u) not in inside for u in users.get(id(node), ()))]
    found: dict[int, Node] = {}
    while stack:  # what those outside readers read of the kernel's reductions, through its elementwise values
        node = stack.pop()
        if id(node) not in inside or id(node) in found:
            continue
        found[id(node)] = node
        if node.op not in REDUCE_OPS:
            stack.extend(node.src)
    return [node for node in found.values() if node.op in REDUCE_OPS and node.numel == rows]


def stored_statistics(root: Node, rows: int, elements: int, materialized: dict[int, Node],
                      settled: set[int]) -> list[Node]:
    """The row statistics (reductions with one value per row of `rows` making up `elements`) below `root` that are
    marked to store and that no kernel stores yet (`settled`): those `root`'s kernel computes and would store."""
    found, stack, seen = [], list(root.src), set()
    while stack:
        node = stack.pop()
        if id(node) in seen or node.op is Op.BUFFER or id(node) in settled:
            continue
        seen.add(id(node))
        if node.op in REDUCE_OPS and node.numel == rows and id(node) in materialized:
            found.append(node)
        stack.extend(node.src if id(node) not in materialized or node.numel < elements else ())
    return found


def kernel_nodes(root: Node, materialized: dict[int, Node], stored: Sequence[Node] = ()) -> dict[int, Node]:
    """The nodes `root`'s kernel computes, by id: those below it down to the stored values it reads (and `stored`)."""
    inside: dict[int, Node] = {}
    stack, apart = [root], {id(node) for node in stored}
    while stack:
        node = stack.pop()
        if (id(node) not in inside and node.op is not Op.BUFFER and id(node) not in apart
                and (node is root or id(node) not in materialized)):
            inside[id(node)] = node
            stack.extend(node.src)
    return inside


def read_by_earlier_rows(statistic: Node, root: Node, elements: int, inside: dict[int, Node],
                         users: dict[int, list[Node]], position: dict[int, int]) -> bool:
    """Whether a value over the rows of `root`'s kernel (their `elements`) that the kernel does not compute
    (`inside`: kernel_nodes) reads `statistic` through elementwise values (`users`: each node's readers) and comes
    before `root` in the program (`position`): a layer norm's output reads its mean and variance, which its
    gradient's kernels recompute. A cross-entropy's loss, which reads its gradient's row max, is no such value (one
    a row)."""
    limit, stack, seen = position.get(id(root), -1), [statistic], set()
    while stack:
        for reader in users.get(id(stack.pop()), ()):
            if id(reader) in seen or reader.op in REDUCE_OPS:
                continue
            seen.add(id(reader))
            if reader.numel == elements and id(reader) not in inside and position.get(id(reader), limit) < limit:
                return True
            stack.append(reader)
    return False


class RowLowering(Lowering):
    """Lowering whose work item owns a row of `length` consecutive outputs: the row's reductions are loops at
    the top level, and a last loop over the row stores the outputs."""

    def __init__(self, root: Node, materialized: dict[int, Node], produced: set[int], length: int,
                 allow_extra_outputs: bool = True, stored_apart: frozenset = frozenset(),
                 param_limit: int = PARAM_LIMIT):
        super().__init__(root, materialized, produced, allow_extra_outputs, stored_apart, param_limit)
        self.length, self.rows = length, self.numel // length
        self.row = Expr.var("gid", self.rows)
        self.column = self.names.fresh("c")
        position = self.row * length + Expr.var(self.column, length)
        self.elements, self.positions, self.guards = [unravel(position, self.space)], [position], [()]

    def lower(self) -> LoweredKernel:
        lowered = super().lower()
        if not self._reductions:
            raise NotRows(self.root)
        return lowered

    def _lower_outputs(self) -> None:
        self._open_loop(self.column, self.length)
        super()._lower_outputs()
        self._scopes[0].append(Loop(self.column, self.length, tuple(self._close_loop())))

    def _work_items(self) -> int:
        return self.rows

    def _can_host(self, node: Node, index: Index, guard: Cond) -> bool:
        """A value with one element per row is computed once per row, at the row's own position (refused for
        a reduction read anywhere else: these are not its rows); a value of the root's shape in the last
        pass, at the output being stored."""
        if node.numel == self.rows and node.op is not Op.BUFFER:
            hosted = not guard and linear(index, node.shape) == self.row
            if not hosted and node.op in REDUCE_OPS:
                raise NotRows(node)
            return hosted
        return node.op not in REDUCE_OPS and super()._can_host(node, index, guard)

    def _reduced_positions(self, node: Node) -> list[Expr]:
        return [self.row]


def lower_rows(root: Node, materialized: dict[int, Node], produced: set[int], length: int,
               allow_extra_outputs: bool = True, stored_apart: frozenset = frozenset(),
               param_limit: int = PARAM_LIMIT) -> Optional[LoweredKernel]:
    """The row kernel storing `root` (see RowLowering), or None where its reductions are not over its rows."""
    try:
        return RowLowering(root, materialized, produced, length, allow_extra_outputs, stored_apart,
                           param_limit).lower()
    except NotRows:
        return None
