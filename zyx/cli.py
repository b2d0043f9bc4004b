"""The `zyx` command line: inspect and maintain the kernel cache, list the OpenCL devices.

Every failure prints one line, `zyx: error: ...`, on stderr: exit status 2 for a bad command line,
1 for anything else.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import sys
import time
import warnings
from typing import Callable, Sequence

import pyopencl as cl

from zyx.jit.cache import CacheDirectoryWarning, CacheWarning, KernelCache, selected

SORT_ORDERS: dict[str, tuple[str, bool]] = {  # option -> (entry field, descending)
    "last_used": ("last_used", True), "size": ("size", True), "hits": ("hits", True),
    "compile": ("compile_seconds", True), "name": ("kernel", False),
}
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class CliError(Exception):
    """A failure reported as one line on stderr; `status` is the exit code."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump), like every other zyx error."""

    def error(self, message: str):  # type: ignore[override]
        raise CliError(f"{message} (see {self.prog} --help)", status=2)


def parse_duration(text: str) -> float:
    """Seconds from "90", "30s", "15m", "12h", "7d" or "2w"."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if match is None:
        raise CliError(f"not a duration: {text!r} (write a number with s, m, h, d or w, e.g. 7d)", status=2)
    return float(match[1]) * _DURATION_UNITS[match[2] or "s"]


def format_bytes(count: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = 0
    while count >= 1024 and power < len(units) - 1:
        count /= 1024
        power += 1
    return f"{count:.0f} B" if power == 0 else f"{count:.1f} {units[power]}"


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def format_age(timestamp: float, now: float) -> str:
    age = max(0.0, now - timestamp)
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= length:
            return f"{age // length:.0f}{unit} ago"
    return f"{age:.0f}s ago"


def format_time(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")


def print_table(rows: Sequence[Sequence[object]], indent: str = "") -> None:
    """Left-aligned columns; the first row is usually the header."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(cells[0]))] if cells else []
    for row in cells:
        print(indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


# -- zyx cache ... ------------------------------------------------------------------------------

def cache_ls(args: argparse.Namespace) -> int:
    entries = [entry for entry in KernelCache().entries() if selected(entry, device=args.device)]
    field, descending = SORT_ORDERS[args.sort]
    entries.sort(key=lambda entry: entry[field], reverse=descending)
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    now = time.time()
    print_table([("KEY", "KERNEL", "DEVICE", "SIZE", "COMPILE", "HITS", "LAST USED"), *(
        (entry["short_key"], entry["kernel"], entry["device"], format_bytes(entry["size"]),
         format_seconds(entry["compile_seconds"]), entry["hits"], format_age(entry["last_used"], now))
        for entry in entries
    )])
    return 0


def cache_show(args: argparse.Namespace) -> int:
    try:
        entry = KernelCache().entry(args.key)
    except KeyError as error:
        raise CliError(error.args[0]) from None
    print(f"key         {entry['key']}")
    print(f"kernels     {', '.join(entry['kernel_names'])}")
    print("components")
    print_table(list(entry["components"].items()), indent="  ")
    print("metadata")
    print_table([
        ("binary size", format_bytes(entry["size"])), ("checksum", entry["checksum"]),
        ("compile time", format_seconds(entry["compile_seconds"])), ("hits", entry["hits"]),
        ("created", format_time(entry["created"])), ("last used", format_time(entry["last_used"])),
    ], indent="  ")
    print("source")
    print(entry["source"])
    return 0


def cache_info(args: argparse.Namespace) -> int:
    info = KernelCache().info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"directory   {info['directory']}")
    print(f"entries     {info['entries']}")
    print(f"size        {format_bytes(info['bytes'])} of {format_bytes(info['size_limit'])}")
    from .jit.program_store import default_program_store
    print(f"programs    {len(default_program_store())} scheduled programs (cleared with the kernels)")
    for title, counts in (("per device", info["by_device"]), ("per zyx version", info["by_zyx_version"])):
        print(title)
        print_table(sorted(counts.items()), indent="  ")
    return 0


def cache_clear(args: argparse.Namespace) -> int:
    cache = KernelCache()
    older_than = parse_duration(args.older_than) if args.older_than is not None else None
    if not args.yes and sys.stdin.isatty():
        matching = sum(1 for entry in cache.entries() if selected(entry, args.device, older_than))
        if not _confirmed(f"Remove {matching} cache entries from {cache.directory}? [y/N] "):
            print("nothing removed")
            return 1
    removed = cache.clear(device=args.device, older_than_seconds=older_than)
    message = f"removed {removed} entries"
    if args.device is None and older_than is None:  # everything: the scheduled programs go too
        from .jit.program_store import default_program_store
        message += f" and {default_program_store().clear()} scheduled programs"
    print(message)
    return 0


def _confirmed(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def cache_prune(args: argparse.Namespace) -> int:
    removed = KernelCache().prune()
    print(f"removed {removed} entries that this zyx version and the present devices cannot use")
    return 0


# -- zyx devices ---------------------------------------------------------------------------------

def devices(args: argparse.Namespace) -> int:
    try:
        from zyx.runtime.platforms import describe_devices
    except ImportError as error:
        raise CliError(f"listing devices needs zyx.runtime.platforms ({error})") from None
    described = describe_devices()
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    for platform_index in sorted({row["platform_index"] for row in described}):
        rows = [row for row in described if row["platform_index"] == platform_index]
        print(f"platform {platform_index}: {rows[0]['platform']} ({rows[0]['platform_version']})")
        print_table([("#", "DEVICE", "TYPE", "MEMORY", "MAX ALLOC", "UNITS", "OPENCL C", "DRIVER", "FP16", "FP64"), *(
            (row["device_index"], row["device"], row["type"], format_bytes(row["global_mem_bytes"]),
             format_bytes(row["max_alloc_bytes"]), row["compute_units"], row["opencl_c_version"],
             row["driver_version"], "yes" if row["fp16"] else "no", "yes" if row["fp64"] else "no")
            for row in rows
        )], indent="  ")
    return 0


# -- wiring ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zyx", description="Zyx command line: the kernel cache and OpenCL devices.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cache = commands.add_parser("cache", help="inspect and maintain the persistent kernel cache")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")

    ls = _command(cache_commands, "ls", cache_ls, "one row per cached program")
    ls.add_argument("--device", metavar="NAME", help="only devices whose name contains NAME (any case)")
    ls.add_argument("--sort", choices=sorted(SORT_ORDERS), default="last_used", help="default: last_used")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")

    show = _command(cache_commands, "show", cache_show, "key components, metadata and source of one entry")
    show.add_argument("key", metavar="KEY", help="a key, or a prefix that only one key starts with")

    info = _command(cache_commands, "info", cache_info, "directory, size, limit, entries per device and version")
    info.add_argument("--json", action="store_true", help="print JSON")

    clear = _command(cache_commands, "clear", cache_clear, "remove entries (asks first on a terminal)")
    clear.add_argument("--device", metavar="NAME", help="only devices whose name contains NAME (any case)")
    clear.add_argument("--older-than", metavar="AGE", help="only entries last used longer ago, e.g. 7d (s/m/h/d/w)")
    clear.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    _command(cache_commands, "prune", cache_prune, "remove entries no present device or this zyx version can use")

    listing = _command(commands, "devices", devices, "list OpenCL platforms and devices")
    listing.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _command(commands: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int],
             summary: str) -> argparse.ArgumentParser:
    command = commands.add_parser(name, help=summary, description=summary)
    command.set_defaults(run=run)
    return command


def main(argv: list[str] | None = None) -> int:
    """Run one command. A cache directory that cannot be used is an error here, since the user asked about the
    cache; a fault the cache repaired (a damaged entry or database) is one warning line, and the command goes on."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", CacheWarning)
            warnings.simplefilter("error", CacheDirectoryWarning)
            warnings.showwarning = _print_warning
            args = build_parser().parse_args(argv)
            status = args.run(args)
            sys.stdout.flush()  # here, so a closed pipe is met inside this try and not at interpreter exit
            return status
    except CliError as error:
        return _fail(str(error), error.status)
    except CacheDirectoryWarning as error:
        return _fail(error.reason, 1)
    except cl.Error as error:
        return _fail(f"OpenCL: {str(error).splitlines()[0]}", 1)
    except BrokenPipeError:  # `zyx cache ls | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's own flush must not fail again
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"zyx: warning: {message}", file=sys.stderr)


def _fail(message: str, status: int) -> int:
    print(f"zyx: error: {message}", file=sys.stderr)
    return status
