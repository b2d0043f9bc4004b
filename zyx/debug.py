"""Zyx's messages: stdlib `logging` under the `zyx` logger, with ZYX_DEBUG as a shortcut that turns them on.

Each module logs to a child (`zyx.cache`: programs compiled or loaded, build logs; `zyx.runtime`: kernel
launches; `zyx.schedule`: schedules and kernel sources; `zyx.jit`: steps captured again and why), so a user can
pick them with `logging.getLogger("zyx.jit").setLevel(logging.INFO)` and their own handlers. ZYX_DEBUG=1 sets
`zyx` to INFO (launches, compiles, recaptures), 2 and more to DEBUG (also sources and schedules);
ZYX_DEBUG_CACHE=1 sets `zyx.cache` to INFO and explains each cache miss. Either one is a request to see
messages now: they go to stderr as `logger: message` lines (and not on to the root logger's handlers, which
would print them twice); configure `zyx` yourself instead to send them elsewhere. The settings are read at each
message, so a test or a notebook may change them while running.
"""
from __future__ import annotations

import logging
import os
import sys

__all__ = ["debug_level", "explain_cache_misses", "logger"]

ROOT = "zyx"
_applied: list[tuple[int, bool]] = [(0, False)]  # the (ZYX_DEBUG, ZYX_DEBUG_CACHE) settings applied last
_applied_raw: list[tuple[object, object]] = [(None, None)]  # the same as os.environ held them (`_read`)
_loggers: dict[str, logging.Logger] = {}  # a program run asks for its logger at every run


def debug_level() -> int:
    """ZYX_DEBUG as a number (0 when unset or not a number)."""
    raw = _raw_get(_DEBUG_KEY) if _raw_get is not None else _read("ZYX_DEBUG")
    level = _levels.get(raw)
    if level is None:
        try:
            level = int(os.environ.decodevalue(raw)) if raw is not None else 0
        except ValueError:
            level = 0
        _levels[raw] = level
    return level


def explain_cache_misses() -> bool:
    """ZYX_DEBUG_CACHE=1: log why each kernel missed the cache (it reads every stored entry, so it is opt-in)."""
    return _read("ZYX_DEBUG_CACHE") == _ONE


# Every program run reads ZYX_DEBUG (to time its kernels at 2), and `os.environ.get` encodes the name, looks it up
# and decodes the value: microseconds, as much as a launch. os.environ keeps the encoded names and values in a
# dict, `_data`, which its writes update; the settings are read from it directly (through `get` where it lacks one).
_raw_environment = getattr(os.environ, "_data", None)
_raw_get = _raw_environment.get if isinstance(_raw_environment, dict) else None  # (looked up once: a replay reads
# its settings three times)
_levels: dict = {}  # a raw ZYX_DEBUG value -> its level
_keys = {name: os.environ.encodekey(name) for name in ("ZYX_DEBUG", "ZYX_DEBUG_CACHE")}
_DEBUG_KEY = _keys["ZYX_DEBUG"]
_ONE = os.environ.encodevalue("1")


def _read(name: str) -> object:
    """The setting `name` as os.environ keeps it (encoded), None when unset."""
    if _raw_get is not None:
        return _raw_get(_keys[name])
    value = os.environ.get(name)
    return None if value is None else os.environ.encodevalue(value)


def logger(name: str) -> logging.Logger:
    """The logger `name` (a `zyx.*` child), with the ZYX_DEBUG settings of this moment applied (compared as set,
    before they are parsed: a replay asks at every call)."""
    raw = (_read("ZYX_DEBUG"), _read("ZYX_DEBUG_CACHE"))
    if raw != _applied_raw[0]:
        settings = (debug_level(), explain_cache_misses())
        if settings != _applied[0]:
            _applied[0] = settings
            _apply(*settings)
        _applied_raw[0] = raw
    found = _loggers.get(name)
    if found is None:
        found = _loggers[name] = logging.getLogger(name)  # the same object every time, found under logging's lock
    return found


class StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a message comes (a redirect, pytest's capture)."""

    def __init__(self, form: str = "%(name)s: %(message)s") -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(form))

    @property  # type: ignore[override]
    def stream(self):  # noqa: D401
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


_handler = StderrHandler()


def _apply(level: int, cache_misses: bool) -> None:
    root = logging.getLogger(ROOT)
    root.setLevel(logging.NOTSET if level <= 0 else logging.INFO if level == 1 else logging.DEBUG)
    logging.getLogger(f"{ROOT}.cache").setLevel(logging.INFO if cache_misses and level <= 1 else logging.NOTSET)
    printing = level > 0 or cache_misses
    root.propagate = not printing
    if printing:
        root.addHandler(_handler)  # a no-op when it is there already
    else:
        root.removeHandler(_handler)
