"""`dim=` (PyTorch's spelling) accepted wherever zyx takes `axis=`: one wrapper, applied to whole classes.

`x.sum(dim=1)`, `x.softmax(dim=-1)`, `zyx.cat(ts, dim=0)` and `x.flip(dims=0)` are `axis=` calls.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
ALIASES = ("dim", "dims")


def accepts_dim(fn: F) -> F:
    """`fn`, also taking `dim=` (or `dims=`) for its `axis` parameter."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for alias in ALIASES:
            if alias in kwargs:
                if "axis" in kwargs:
                    raise TypeError(f"{fn.__name__}() got both axis= and {alias}= (two names for one argument)")
                kwargs["axis"] = kwargs.pop(alias)
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _takes_axis(fn: Any) -> bool:
    return inspect.isfunction(fn) and "axis" in inspect.signature(fn).parameters


def accept_dim_on_methods(cls: type) -> type:
    """Wrap every public method of `cls` (its own and inherited) that has an `axis` parameter with `accepts_dim`."""
    for name in dir(cls):
        if name.startswith("_"):
            continue
        method = inspect.getattr_static(cls, name)
        if _takes_axis(method):
            setattr(cls, name, accepts_dim(method))
    return cls
