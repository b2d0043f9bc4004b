"""Launch groups: tiny kernels that depend on nothing between them and another kernel run in one launch with it.

A training step launches kernels of a few work items beside its big ones: an index range check, the optimizer's
step counter, the loss, a bias's update. On the host each launch costs as much as a large one (microseconds of
enqueue, and a wake-up of the device's threads), so `group_launches` folds each tiny kernel into a launch that
already runs, where their order allows: the group's kernels run side by side, work items numbered through them
(`print_opencl.print_group`).

Kernels in one launch run in no order, so two of them may share it only when neither depends on the other:
neither reads what the other stores, and (`program._dependencies`) neither reads the old value of a buffer the
other overwrites in place. A step counter updated in place is then grouped with a kernel that does not read it,
before its readers, and never with a reader of its old value. Kernels with work groups, local memory or barriers
keep their own launch (their items must form whole groups).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from .kernel_ir import Barrier, Gather, If, Kernel, LocalArray, Load, Loop, Rand, RenderedKernel, Role, Store, walk

TINY_ITEMS = 64  # a kernel of at most this many work items is tiny: it may join another kernel's launch
LOOKBACK = 8     # launches a kernel may join, counted back from the last (a program may have thousands)

GroupPrinter = Callable[[Sequence[Kernel]], tuple[str, str]]


def group_launches(kernels: Sequence[RenderedKernel], before: Sequence[set[int]], printer: GroupPrinter,
                   max_params: int) -> list[RenderedKernel]:
    """`kernels` (in launch order; `before[k]`: the kernels k must run after, all earlier) in launches: a tiny
    kernel joins the latest launch it may join (one placed after everything it runs after, whose kernels are all
    tiny or which it is tiny for, with room for its parameters; one of the last LOOKBACK), else it gets its own."""
    launches: list[list[int]] = []
    launch_of: list[int] = []
    groupable = [_groupable(kernel) for kernel in kernels]
    for k, kernel in enumerate(kernels):
        earliest = max(1 + max((launch_of[p] for p in before[k]), default=-1), len(launches) - LOOKBACK)
        joined = next((g for g in range(len(launches) - 1, earliest - 1, -1) if groupable[k]
                       and all(groupable[m] for m in launches[g])
                       and _may_join(kernel, [kernels[m] for m in launches[g]], max_params)), None)
        if joined is None:
            joined = len(launches)
            launches.append([])
        launches[joined].append(k)
        launch_of.append(joined)
    return [kernels[members[0]] if len(members) == 1 else _grouped([kernels[m] for m in members], printer)
            for members in launches]


def _may_join(kernel: RenderedKernel, group: list[RenderedKernel], max_params: int) -> bool:
    """Whether a kernel may join a launch of groupable kernels that it is independent of."""
    tiny = kernel.global_size <= TINY_ITEMS
    return ((tiny or all(member.global_size <= TINY_ITEMS for member in group))
            and len(kernel.params) + sum(len(member.params) for member in group) <= max_params)


def _groupable(kernel: RenderedKernel) -> bool:
    """A plain kernel: printed from IR, launched without work groups, no local memory or barriers."""
    ir = kernel.ir
    return (ir is not None and not kernel.collective and kernel.local_size is None and kernel.global_size > 0
            and ir.axis(Role.LOCAL) is None and not any(isinstance(s, (LocalArray, Barrier)) for s in walk(ir.body)))


def _grouped(members: list[RenderedKernel], printer: GroupPrinter) -> RenderedKernel:
    """One kernel running `members` side by side (their parameters renamed apart)."""
    irs = [_renamed(member.ir, f"_{k}") for k, member in enumerate(members)]  # type: ignore[arg-type]
    name, source = printer(irs)
    total = sum(member.global_size for member in members)
    return RenderedKernel(
        name, source, (total,), [p for ir in irs for p in ir.params], [n for m in members for n in m.outputs],
        [n for m in members for n in m.loads], [n for m in members for n in m.needs],
        set().union(*(m.misaligned for m in members)), total, None, max(m.longest_reduction for m in members),
        kernels=sum(m.kernels for m in members))


def _renamed(kernel: Kernel, suffix: str) -> Kernel:
    """`kernel` with `suffix` after each parameter's name, in its signature and wherever its statements name one."""
    names = {p.name: p.name + suffix for p in kernel.params}
    return dataclasses.replace(kernel, params=tuple(dataclasses.replace(p, name=names[p.name]) for p in kernel.params),
                               body=_renamed_body(kernel.body, names))


def _renamed_body(body: tuple, names: dict[str, str]) -> tuple:
    return tuple(_renamed_statement(statement, names) for statement in body)


def _renamed_statement(statement: object, names: dict[str, str]) -> object:
    if isinstance(statement, (Load, Gather, Store)):
        return dataclasses.replace(statement, buffer=names[statement.buffer])
    if isinstance(statement, Rand):
        return dataclasses.replace(statement, seed=names[statement.seed], offset=names[statement.offset])
    if isinstance(statement, (Loop, If)):
        return dataclasses.replace(statement, body=_renamed_body(statement.body, names))
    return statement
