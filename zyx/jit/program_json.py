"""Programs as JSON text, and back only through validation: a stored program is data read from disk.

`program_from_json` checks every field a runtime would trust (kernel names, launch sizes, slot, input and
random-stream indices in range, byte counts non-negative integers) and raises `InvalidProgram` naming the
first field that is wrong, so a damaged entry is a miss rather than an out-of-range launch.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import Any

from ..runtime.collectives import FINISH, START, parse_step
from .program import Launch, Program, computed_before_writes

__all__ = ["InvalidProgram", "program_from_json", "program_to_json"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FIELDS = ("launches", "slot_bytes", "outputs", "frees", "allocs", "aliases", "name")
_OPTIONAL_FIELDS = ("checks",)  # written only where not empty (entries without them stay what they were)
_LAUNCH_FIELDS = {"name", "source", "global_size", "local_size", "args", "flops", "bytes_moved", "node", "collective",
                  "kernels"}
_SOURCE_KINDS = ("input", "slot")


class InvalidProgram(ValueError):
    """Stored program text that is not a valid Program for the trace it was looked up for."""


def program_to_json(program: Program) -> str:
    data = asdict(program)
    for name in _OPTIONAL_FIELDS:
        if not data[name]:
            del data[name]
    return json.dumps(data, separators=(",", ":"))


def program_from_json(text: str, inputs: int, rands: int) -> Program:
    """The Program `text` describes, for a trace with `inputs` buffers and `rands` random streams."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise InvalidProgram(f"not JSON ({error})") from None
    if not isinstance(data, dict) or not set(_FIELDS) <= set(data) <= {*_FIELDS, *_OPTIONAL_FIELDS}:
        raise InvalidProgram(f"expected an object with the fields {', '.join(_FIELDS)} (and maybe "
                             f"{', '.join(_OPTIONAL_FIELDS)})")
    slot_bytes = [_count(size, "slot_bytes") for size in _list(data["slot_bytes"], "slot_bytes")]
    slots = len(slot_bytes)
    ranges = {"input": inputs, "slot": slots, "seed": rands, "offset": rands}
    launches = [_launch(launch, k, ranges) for k, launch in enumerate(_list(data["launches"], "launches"))]
    _check_pairs(launches)
    outputs = [_index(slot, slots, "outputs") for slot in _list(data["outputs"], "outputs")]
    frees, allocs = (_per_launch(data[name], len(launches), slots, name) for name in ("frees", "allocs"))
    if not isinstance(data["aliases"], dict):
        raise InvalidProgram("aliases: expected an object")
    aliases = {_index(_integer(slot, "aliases"), slots, "aliases"): _index(leaf, inputs, "aliases")
               for slot, leaf in data["aliases"].items()}
    if not isinstance(data["name"], str):
        raise InvalidProgram("name: expected a string")
    program = Program(launches, slot_bytes, outputs, frees, allocs, aliases, data["name"])
    program.checks = [_index(target, len(outputs), "checks") for target in _list(data.get("checks", []), "checks")]
    if not computed_before_writes(program, program.checks):
        raise InvalidProgram("checks: not all computed before the first launch writing an input in place")
    return program


def _launch(data: Any, k: int, ranges: dict[str, int]) -> Launch:
    where = f"launches[{k}]"
    if not isinstance(data, dict) or set(data) != _LAUNCH_FIELDS:
        raise InvalidProgram(f"{where}: expected the fields {', '.join(sorted(_LAUNCH_FIELDS))}")
    name, source, collective = data["name"], data["source"], data["collective"]
    if collective != "":
        _check_collective(name, source, collective, data["args"], where)
    elif not (isinstance(name, str) and _IDENTIFIER.fullmatch(name) and isinstance(source, str)
              and re.search(rf"\b{name}\s*\(", source)):
        raise InvalidProgram(f"{where}: the kernel name {name!r} is not an identifier its source defines")
    global_size = tuple(_count(size, f"{where}.global_size") for size in _list(data["global_size"], where))
    local_size = data["local_size"]
    if local_size is not None:
        local_size = tuple(_count(size, f"{where}.local_size") for size in _list(local_size, where))
        if len(local_size) != len(global_size) or any(size == 0 or total % size
                                                       for total, size in zip(global_size, local_size)):
            raise InvalidProgram(f"{where}: local size {local_size} does not divide global size {global_size}")
    if not 1 <= len(global_size) <= 3:
        raise InvalidProgram(f"{where}: global size {global_size} must have 1 to 3 axes")
    args = []
    for arg in _list(data["args"], f"{where}.args"):
        if not (isinstance(arg, list) and len(arg) == 2 and arg[0] in ranges):
            raise InvalidProgram(f"{where}.args: {arg!r} is not [kind, index] with kind one of {sorted(ranges)}")
        args.append((arg[0], _index(arg[1], ranges[arg[0]], f"{where}.args ({arg[0]})")))
    if not isinstance(data["node"], str):
        raise InvalidProgram(f"{where}.node: expected a string")
    return Launch(name, source, global_size, local_size, tuple(args), _count(data["flops"], f"{where}.flops"),
                  _count(data["bytes_moved"], f"{where}.bytes_moved"), data["node"], collective,
                  max(1, _count(data["kernels"], f"{where}.kernels")))


def _check_collective(name: Any, source: Any, collective: Any, args: Any, where: str) -> None:
    """A collective step: START (sources, then the result's slot) or FINISH (the result's slot), no source code, and
    a collective `parse_step` reads."""
    if name not in (START, FINISH) or source != "":
        raise InvalidProgram(f"{where}: a collective step is named {START} or {FINISH} and has no source")
    try:
        parse_step(collective)
    except (ValueError, AttributeError) as error:
        raise InvalidProgram(f"{where}: {error}") from None
    count_ok = isinstance(args, list) and (len(args) >= 2 if name == START else len(args) == 1)
    if not (count_ok and all(isinstance(arg, list) and arg for arg in args) and args[-1][0] == "slot"
            and all(arg[0] in _SOURCE_KINDS for arg in args[:-1])):
        raise InvalidProgram(f"{where}.args: {args!r} are not the arguments of a {name} step")


def _check_pairs(launches: list[Launch]) -> None:
    """Every FINISH finishes a collective that a START before it started (on the same result slot)."""
    started = set()
    for k, launch in enumerate(launches):
        if launch.collective and launch.name == START:
            started.add(launch.args[-1])
        elif launch.collective and launch.args[0] not in started:
            raise InvalidProgram(f"launches[{k}]: finishes a collective that no earlier step started")
        elif launch.collective:
            started.remove(launch.args[0])


def _per_launch(data: Any, launches: int, slots: int, name: str) -> list[list[int]]:
    rows = _list(data, name)
    if len(rows) != launches:
        raise InvalidProgram(f"{name}: {len(rows)} lists for {launches} launches")
    return [[_index(slot, slots, name) for slot in _list(row, name)] for row in rows]


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise InvalidProgram(f"{where}: expected a list, found {type(value).__name__}")
    return value


def _integer(value: Any, where: str) -> int:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidProgram(f"{where}: {value!r} is not an integer")
    return value


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidProgram(f"{where}: {value!r} is not a non-negative integer")
    return value


def _index(value: Any, length: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < length:
        raise InvalidProgram(f"{where}: index {value!r} is out of range for {length}")
    return value
