"""The `zyx` command line: inspect and maintain the kernel cache, list the OpenCL devices, WebGPU adapters and
zyx.Torch()'s devices, tune a script.

Every failure prints one line, `zyx: error: ...`, on stderr: exit status 2 for a bad command line,
1 for anything else. Only the standard library and zyx's small modules are imported before a command runs
(pyopencl, numpy, rich, wgpu and torch come with the command that needs them), so `zyx --help` answers at once.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import logging
import os
import re
import runpy
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from zyx import __version__
from zyx.cache_dir import cache_directory, private_folder
from zyx.debug import StderrHandler
from zyx.runtime.pocl_cache import FOLDER as POCL_FOLDER

SORT_ORDERS: dict[str, tuple[str, bool]] = {  # option -> (entry field, descending)
    "last_used": ("last_used", True), "size": ("size", True), "hits": ("hits", True),
    "compile": ("compile_seconds", True), "name": ("kernel", False),
}
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NARROWEST_SHRUNK_COLUMN = 12


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


def print_table(headers: Sequence[str] | None, rows: Sequence[Sequence[object]], shrink: Sequence[int] = (),
                indent: int = 0) -> None:
    """A plain table (rich) on stdout. On a terminal (or with COLUMNS set) it fits the width: the `shrink` columns,
    in that order, give up what is missing and end in "…"; piped elsewhere, nothing is cut. No `headers`: no
    header row (a list of names and values)."""
    from rich.console import Console
    from rich.padding import Padding
    from rich.table import Table

    console = Console(markup=False, highlight=False, emoji=False, soft_wrap=True)
    limited = sys.stdout.isatty() or bool(os.environ.get("COLUMNS"))
    cells = [[str(cell) for cell in row] for row in rows]
    columns = len(headers) if headers else len(cells[0]) if cells else 0
    titles = list(headers) if headers else [""] * columns
    widths = [max([len(title), *(len(row[column]) for row in cells)]) for column, title in enumerate(titles)]
    excess = sum(widths) + 2 * (len(widths) - 1) + indent - console.width if limited else 0
    for column in shrink:
        given = max(0, min(excess, widths[column] - _NARROWEST_SHRUNK_COLUMN))
        widths[column] -= given
        excess -= given
    table = Table(box=None, pad_edge=False, show_header=bool(headers), header_style="bold", padding=(0, 2, 0, 0),
                  collapse_padding=True)
    for header, width in zip(titles, widths):
        table.add_column(header, no_wrap=True, overflow="ellipsis", min_width=width, max_width=width)
    for row in cells:
        table.add_row(*row)
    if not limited:
        console.width = sum(widths) + 2 * len(widths) + indent
    with console.capture() as captured:
        console.print(Padding(table, (0, 0, 0, indent)))
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


# -- zyx cache ... ------------------------------------------------------------------------------

def _cache_or_none() -> Any:
    """The KernelCache of the cache directory, or None when that directory does not exist (and is not created:
    inspecting a cache must not make one)."""
    try:
        os.stat(cache_directory())
    except FileNotFoundError:
        return None
    except OSError:
        pass  # not a directory, not allowed: the cache says why
    from zyx.jit.cache import KernelCache
    return KernelCache()


def _say_empty(what: str) -> None:
    _messages().info(f"{what} in {cache_directory()}")


def cache_ls(args: argparse.Namespace) -> int:
    from zyx.jit.cache import selected
    cache = _cache_or_none()
    entries = [entry for entry in (cache.entries() if cache else []) if selected(entry, device=args.device)]
    entries = _with_tuning(entries, _tuning(cache).records() if cache else [])
    field, descending = SORT_ORDERS[args.sort]
    entries.sort(key=lambda entry: entry[field], reverse=descending)
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        _say_empty(f"no cached kernels on a device matching {args.device!r}" if args.device and cache and
                   cache.entries() else "the kernel cache is empty")
        return 0
    now = time.time()
    tuned = any(entry["tuned"] for entry in entries)  # (a column only where a search found something)
    print_table(("KEY", "KERNEL", "DEVICE", "SIZE", "COMPILE", "HITS", "LAST USED") + ("TUNED",) * tuned, [
        (entry["short_key"], entry["kernel"], entry["device"], format_bytes(entry["size"]),
         format_seconds(entry["compile_seconds"]), entry["hits"], format_age(entry["last_used"], now))
        + (format_speedups(entry["tuned"]),) * tuned
        for entry in entries
    ], shrink=(1, 2))
    return 0


def _with_tuning(entries: list[dict], records: list[Any]) -> list[dict]:
    """Each entry with "tuned": the speed-up of each of its kernels that beat the heuristics' kernel in a search,
    by kernel name."""
    return [{**entry, "tuned": {record.tuned_name: round(record.speedup, 3)
                                for record in _searches_of(entry, records) if record.improves}}
            for entry in entries]


def _searches_of(entry: dict, records: list[Any]) -> list[Any]:
    """The searches whose winner is one of the entry's kernels, made on the device and driver that compiled it
    (a kernel of the same name elsewhere is timed on other hardware)."""
    return [record for record in records if record.tuned_name in entry["kernel_names"]
            and all(entry["components"].get(name) == value for name, value in record.device.items())]


def format_speedups(speedups: dict[str, float]) -> str:
    """"1.42x" for one tuned kernel, "3: 1.05-1.42x" for several, "" for none."""
    if not speedups:
        return ""
    low, high = min(speedups.values()), max(speedups.values())
    return f"{high:.2f}x" if len(speedups) == 1 else f"{len(speedups)}: {low:.2f}-{high:.2f}x"


def cache_show(args: argparse.Namespace) -> int:
    cache = _cache_or_none()
    records = _tuning(cache).records() if cache is not None else []
    try:
        if cache is None:
            raise KeyError(f"no cache entry matches {args.key!r}: the kernel cache is empty")
        entry = cache.entry(args.key)
    except KeyError as error:
        searched = [r for r in records if args.key.strip() in (r.untuned_name, r.tuned_name) or
                    (len(args.key.strip()) >= 4 and r.kernel.startswith(args.key.strip().lower()))]
        if not searched:
            raise CliError(error.args[0]) from None
        for record in searched:  # a search whose winner has no binary here (yet): the search alone
            _print_search(record)
        return 0
    others = entry.get("also_in", [])
    if others:
        _messages().info(f"zyx: note: {args.key} is in {len(others) + 1} entries; showing the most recently used "
                         f"(the others: {', '.join(others)})")
    print(f"key         {entry['key']}")
    print(f"kernels     {', '.join(entry['kernel_names'])}")
    print("components")
    print_table(None, list(entry["components"].items()), indent=2)
    print("metadata")
    print_table(None, [
        ("binary size", format_bytes(entry["size"])), ("checksum", entry["checksum"]),
        ("compile time", format_seconds(entry["compile_seconds"])), ("hits", entry["hits"]),
        ("created", format_time(entry["created"])), ("last used", format_time(entry["last_used"])),
    ], indent=2)
    for record in _searches_of(entry, records):
        _print_search(record)
    print("source")
    print(entry["source"])
    return 0


def _print_search(record: Any) -> None:
    """One kernel's search: what won, by how much, and every candidate with its time."""
    verdict = (f"{record.tuned_name} ({record.choice.describe()}), {record.speedup:.2f}x the heuristics' kernel"
               if record.improves else f"the heuristics' kernel ({record.choice.describe()}) kept")
    print(f"tuning      {record.untuned_name} -> {verdict}")
    print(f"            searched in {record.search_seconds:.1f} s on {record.device['device']} (ZYX_TUNE={record.mode}, "
          f"{format_time(record.created)})")
    print_table(("CANDIDATE", "STATUS", "FASTEST", "SPEED-UP", ""), [
        (trial.choice.describe(), trial.status, "-" if trial.seconds is None else f"{trial.seconds * 1e3:.3f} ms",
         "-" if trial.relative is None else f"{1 / trial.relative:.2f}x",
         "heuristics" + (", winner" if trial.choice == record.choice else "") if trial.choice == record.heuristic
         else "winner" if trial.choice == record.choice else "")
        for trial in record.trials
    ], indent=2)
    print("            (speed-up: the median over samples taken alternately with the heuristics' kernel)")


def _tuning(cache: Any) -> Any:
    """The tuning records next to `cache`'s kernels."""
    from zyx.jit.tune_store import TuningStore
    return TuningStore(cache.directory)


def cache_info(args: argparse.Namespace) -> int:
    cache = _cache_or_none()
    if cache is None:
        info: dict[str, Any] = {"directory": str(cache_directory()), "exists": False, "entries": 0, "bytes": 0,
                                "programs": 0, "tuned": 0, "pocl_bytes": 0, "pocl_files": 0, "by_device": {},
                                "by_zyx_version": {}}
    else:
        from zyx.jit.program_store import default_program_store
        info = {**cache.info(), "exists": True, "programs": len(default_program_store()),
                "tuned": len(_tuning(cache).records()), **_pocl_usage()}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    if not info["exists"]:
        print(f"directory   {info['directory']} (does not exist: nothing was cached yet)")
        return 0
    print(f"directory   {info['directory']}")
    print(f"entries     {info['entries']}")
    print(f"size        {format_bytes(info['bytes'])} of {format_bytes(info['size_limit'])}")
    print(f"programs    {info['programs']} scheduled programs (cleared with the kernels)")
    print(f"tuned       {info['tuned']} kernels searched (cleared with the kernels)")
    print(f"pocl        {format_bytes(info['pocl_bytes'])} in {info['pocl_files']} files of PoCL's own cache "
          f"(cleared with the kernels)")
    for title, counts in (("per device", info["by_device"]), ("per zyx version", info["by_zyx_version"])):
        if counts:
            print(title)
            print_table(None, sorted(counts.items()), indent=2)
    return 0


def _pocl_folder() -> Path | None:
    return private_folder(POCL_FOLDER, create=False)


def _pocl_usage() -> dict[str, int]:
    """Bytes and files of PoCL's compile cache inside the Zyx cache directory (symbolic links not followed)."""
    folder = _pocl_folder()
    sizes = [os.lstat(Path(root) / name).st_size for root, _, files in os.walk(folder) for name in files] if folder else []
    return {"pocl_bytes": sum(sizes), "pocl_files": len(sizes)}


def _clear_pocl() -> int:
    """Empty PoCL's cache folder (not the folder itself); return how many files went."""
    folder = _pocl_folder()
    if folder is None:
        return 0
    files = _pocl_usage()["pocl_files"]
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)  # does not follow symbolic links inside
        else:
            child.unlink()
    return files


def cache_clear(args: argparse.Namespace) -> int:
    from zyx.jit.cache import selected
    cache = _cache_or_none()
    older_than = parse_duration(args.older_than) if args.older_than is not None else None
    if cache is None:
        _say_empty("nothing to clear: the kernel cache does not exist")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError("not clearing without --yes when input is not a terminal (nobody can confirm)", status=2)
        matching = sum(1 for entry in cache.entries() if selected(entry, args.device, older_than))
        if not _confirmed(f"Remove {matching} cache entries from {cache.directory}? [y/N] "):
            print("nothing removed")
            return 1
    removed = cache.clear(device=args.device, older_than_seconds=older_than)
    everything = args.device is None and older_than is None
    searches = _tuning(cache).clear(args.device, older_than)
    message = f"removed {removed} entries" + (f", {searches} tuning records" if searches or everything else "")
    if everything:  # the scheduled programs and PoCL's cache go too
        from zyx.jit.program_store import default_program_store
        message += f", {default_program_store().clear()} scheduled programs and {_clear_pocl()} PoCL cache files"
    print(message)
    return 0


def _confirmed(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def cache_prune(args: argparse.Namespace) -> int:
    cache = _cache_or_none()
    removed = cache.prune() if cache is not None else 0
    print(f"removed {removed} entries that this zyx version and the present devices cannot use")
    return 0


# -- zyx tune ------------------------------------------------------------------------------------

def tune(args: argparse.Namespace) -> int:
    """Run a script as `python SCRIPT ARGS...` would, with ZYX_TUNE=1 (2 with --exhaustive); then say what the
    searches found."""
    script = Path(args.script)
    if not script.is_file():
        raise CliError(f"no script {args.script!r}")
    os.environ["ZYX_TUNE"] = "2" if args.exhaustive else "1"
    start = time.time()
    sys.argv = [str(script), *args.arguments]
    sys.path.insert(0, str(script.resolve().parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
        status = 0
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    from zyx.jit.cache import default_cache
    default_cache().flush()  # the winners' binaries, so the next run compiles nothing
    found = [record for record in _tuning(default_cache()).records() if record.created >= start]
    faster = [record for record in found if record.improves]
    best = max(faster, key=lambda record: record.speedup, default=None)
    _messages().info(f"zyx tune: searched {len(found)} kernels, {len(faster)} faster than the heuristics"
                     + (f" (best {best.speedup:.2f}x: {best.untuned_name} -> {best.tuned_name})" if best else "")
                     + "; `zyx cache ls` shows them, `zyx cache show KERNEL` each search")
    return status


# -- zyx devices ---------------------------------------------------------------------------------

def devices(args: argparse.Namespace) -> int:
    from zyx.jit.probe import compile_problem
    from zyx.runtime.platforms import default_ordinal, describe_devices
    described = describe_devices()
    wanted = os.environ.get("ZYX_DEVICE", "").strip().lower()
    chosen = re.fullmatch(r"opencl:(\d+)", wanted)
    default = (None if wanted.startswith(("wgpu", "torch")) else int(chosen[1]) if chosen
               else default_ordinal(problem=compile_problem))
    for ordinal, row in enumerate(described):
        row["kind"], row["default"] = "opencl", ordinal == default
    adapters = _wgpu_adapters(wanted)
    torch_rows, torch_missing = _torch_devices(wanted)
    if args.json:
        print(json.dumps(described + adapters + torch_rows, indent=2))
        return 0
    if not described:
        _messages().info("no OpenCL platform found (zyx.CPU() still works)")
    for platform_index in sorted({row["platform_index"] for row in described}):
        rows = [row for row in described if row["platform_index"] == platform_index]
        print(f"platform {platform_index}: {rows[0]['platform']} ({rows[0]['platform_version']})")
        print_table(("", "#", "DEVICE", "TYPE", "MEMORY", "MAX ALLOC", "UNITS", "OPENCL C", "DRIVER", "FP16",
                     "FP64"), [
            ("*" if row["default"] else "", row["device_index"], row["device"], row["type"],
             format_bytes(row["global_mem_bytes"]), format_bytes(row["max_alloc_bytes"]), row["compute_units"],
             row["opencl_c_version"], row["driver_version"], "yes" if row["fp16"] else "no",
             "yes" if row["fp64"] else "no")
            for row in rows
        ], shrink=(2, 9), indent=2)
    if adapters:
        print("WebGPU adapters (zyx.WGPU(N); ZYX_WGPU_BACKENDS picks the backends)")
        print_table(("", "#", "ADAPTER", "TYPE", "BACKEND", "MAX BINDING", "BUFFERS", "DRIVER"), [
            ("*" if row["default"] else "", row["index"], row["device"], row["type"], row["backend"],
             format_bytes(row["max_binding_bytes"]), row["storage_buffers"], row["driver"]) for row in adapters
        ], shrink=(2, 7), indent=2)
    if torch_rows:
        import torch
        print(f"torch {torch.__version__}: zyx.Torch(device), ZYX_DEVICE=torch:DEVICE")
        print_table(("", "ZYX_DEVICE", "DEVICE", "TYPE", "MEMORY"), [
            ("*" if row["default"] else "", row["spec"], row["device"], row["type"],
             format_bytes(row["global_mem_bytes"])) for row in torch_rows], shrink=(2,), indent=2)
    else:
        print(f"torch: {torch_missing}")
    if default is not None and described:
        print("* the device zyx.OpenCL() uses" if chosen is None else "* the device ZYX_DEVICE names")
    elif any(row["default"] for row in adapters):
        print("* the adapter ZYX_DEVICE names")
    elif any(row["default"] for row in torch_rows):
        print("* the device ZYX_DEVICE names")
    return 0


def _wgpu_adapters(wanted: str) -> list[dict]:
    """The WebGPU adapters (none where wgpu is not installed), the one ZYX_DEVICE names marked default."""
    try:
        from zyx.runtime.webgpu import describe_adapters, select_adapter
        adapters = describe_adapters()
    except (ImportError, RuntimeError):
        return []
    named = re.fullmatch(r"wgpu(?::(\d+))?", wanted)
    default = (int(named[1]) if named[1] else select_adapter()) if named and adapters else None
    return [{**row, "kind": "wgpu", "default": row["index"] == default} for row in adapters]


def _torch_devices(wanted: str) -> tuple[list[dict[str, Any]], str]:
    """zyx.Torch()'s devices (the one ZYX_DEVICE names marked default), or none and why."""
    if importlib.util.find_spec("torch") is None:
        return [], "not installed (pip install zyx[torch] for zyx.Torch())"
    from zyx.devices import resolve_torch_device
    from zyx.runtime.torch_device import describe_torch_devices
    import torch
    rows = describe_torch_devices()
    named = None
    if wanted == "torch" or wanted.startswith("torch:"):
        try:
            named = f"torch:{resolve_torch_device(torch, wanted.partition('+')[0][6:] or None)}"
        except ValueError:
            named = None
    for row in rows:
        row["default"] = row["spec"] == named
    return rows, ""


# -- wiring ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zyx", description="Zyx command line: the kernel cache, OpenCL devices, autotuning.")
    parser.add_argument("--version", action="version", version=f"zyx {_version()}")
    parser.set_defaults(run=lambda args: _print_help(parser))
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    cache = commands.add_parser("cache", help="inspect and maintain the persistent kernel cache",
                                description="Inspect and maintain the persistent kernel cache.")
    cache.set_defaults(run=lambda args: _print_help(cache))
    cache_commands = cache.add_subparsers(dest="cache_command", metavar="ACTION")

    ls = _command(cache_commands, "ls", cache_ls, "one row per cached program")
    ls.add_argument("--device", metavar="NAME", help="only devices whose name contains NAME (any case)")
    ls.add_argument("--sort", choices=sorted(SORT_ORDERS), default="last_used", help="default: last_used")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")

    show = _command(cache_commands, "show", cache_show, "key components, metadata and source of one entry")
    show.add_argument("key", metavar="KEY", help="a key, a prefix only one key starts with, or a kernel name as "
                                                 "ZYX_DEBUG=1 prints it")

    info = _command(cache_commands, "info", cache_info,
                    "directory, size, limit, entries per device and version, PoCL's cache")
    info.add_argument("--json", action="store_true", help="print JSON")

    clear = _command(cache_commands, "clear", cache_clear,
                     "remove entries (asks first on a terminal; elsewhere needs --yes)")
    clear.add_argument("--device", metavar="NAME", help="only devices whose name contains NAME (any case)")
    clear.add_argument("--older-than", metavar="AGE", help="only entries last used longer ago, e.g. 7d (s/m/h/d/w)")
    clear.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    _command(cache_commands, "prune", cache_prune, "remove entries no present device or this zyx version can use")

    tuning = _command(commands, "tune", tune, "run a Python script with OpenCL kernel autotuning on (ZYX_TUNE=1)")
    tuning.add_argument("--exhaustive", action="store_true", help="try every choice of each kernel (ZYX_TUNE=2)")
    tuning.add_argument("script", metavar="SCRIPT", help="the script, as `python SCRIPT` would run it")
    tuning.add_argument("arguments", metavar="ARGS", nargs=argparse.REMAINDER, help="the script's arguments")

    listing = _command(commands, "devices", devices, "list OpenCL platforms and devices, WebGPU adapters and "
                       "zyx.Torch()'s devices; * marks the default")
    listing.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _version() -> str:
    return __version__


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _command(commands: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int],
             summary: str) -> argparse.ArgumentParser:
    command = commands.add_parser(name, help=summary, description=summary)
    command.set_defaults(run=run)
    return command


def main(argv: list[str] | None = None) -> int:
    """Run one command. A cache directory that cannot be used is an error here, since the user asked about the
    cache; a fault the cache repaired (a damaged entry or database) is one warning line, and the command goes on."""
    try:
        args = build_parser().parse_args(argv)
        from zyx.jit.disk_store import CacheDirectoryWarning, CacheWarning
        with warnings.catch_warnings():
            warnings.simplefilter("always", CacheWarning)
            warnings.simplefilter("error", CacheDirectoryWarning)
            warnings.showwarning = _print_warning
            try:
                status = args.run(args)
            except CacheDirectoryWarning as error:
                return _fail(error.reason, 1)
            sys.stdout.flush()  # here, so a closed pipe is met inside this try and not at interpreter exit
            return status
    except CliError as error:
        return _fail(str(error), error.status)
    except BrokenPipeError:  # `zyx cache ls | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's own flush must not fail again
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as error:
        if type(error).__module__.startswith("pyopencl"):  # cl.Error, without importing pyopencl for --help
            return _fail(f"OpenCL: {str(error).splitlines()[0]}", 1)
        raise


def _messages() -> logging.Logger:
    """The CLI's own lines on stderr ("zyx: error: ..."): the `zyx.cli` logger, shown whatever ZYX_DEBUG says
    (a user's `logging` configuration may still add handlers to it)."""
    log = logging.getLogger("zyx.cli")
    if not log.handlers:
        log.addHandler(StderrHandler("%(message)s"))
        log.setLevel(logging.INFO)
        log.propagate = False  # ZYX_DEBUG's handler on `zyx` would print each line twice
    return log


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    _messages().warning(f"zyx: warning: {message}")


def _fail(message: str, status: int) -> int:
    _messages().error(f"zyx: error: {message}")
    return status
