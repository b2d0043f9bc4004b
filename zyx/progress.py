"""Progress on the terminal while Zyx works (drawn by rich), and not a character when stderr is not a terminal.

A first step can compile for minutes; "compiling 37/120 kernels" says what it is doing. The bar is transient (it
disappears when done) and drawn on `console()`, a stderr console shared by whoever wants to draw beside it: a
training loop's own `rich.progress.Progress(console=zyx.progress.console())` keeps its line and Zyx's bar
nests below it. rich is imported only when a bar is drawn.
"""
from __future__ import annotations

import contextlib
import functools
import sys
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["compiling", "console", "storing"]


@functools.cache
def console() -> "Console":
    """The stderr console Zyx draws its progress on."""
    from rich.console import Console
    return Console(stderr=True)


@contextlib.contextmanager
def compiling(total: int) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`, to call as kernels finish compiling; shows "compiling n/total kernels" on a terminal."""
    if total <= 0 or not sys.stderr.isatty():
        yield lambda count: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    bar = Progress(TextColumn("compiling {task.completed}/{task.total} kernels"), BarColumn(), TimeElapsedColumn(),
                   console=console(), transient=True)
    with bar:
        task = bar.add_task("compiling", total=total)
        yield lambda count: bar.advance(task, count)


@contextlib.contextmanager
def storing() -> Iterator[None]:
    """While a cold run's exit waits for its compiled kernels to be stored for the next run (seconds, on PoCL
    about as long as they took to compile), say so on a terminal: the process has printed its last line."""
    if not sys.stderr.isatty():
        yield
        return
    with console().status("zyx: storing the compiled kernels for the next run"):
        yield
