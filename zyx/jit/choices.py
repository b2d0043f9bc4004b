"""How the scheduler shapes one kernel: a Choice of plan and transform parameters, and the tuned choices it looks up.

The scheduler shapes every kernel from a Choice: its heuristics make one (`schedule._build_shaped`), and where a
search found a faster one for the same kernel on this device (tune.py), it is handed to the scheduler in a
`TunedChoices`, keyed by the fingerprint of the kernel the heuristics make. Choices read from disk are checked
against FAMILIES before anything uses them; the scheduler also checks a tuned choice against what the kernel at
hand allows (`TuneSite.options`) and falls back to its heuristics otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional

from .cache_key import hash_hex

FAMILIES: dict[str, dict[str, tuple[int, ...]]] = {
    # a CPU product's register tile: rows of the left operand times `width` columns (vectors of 16 floats); and
    # whether its right operand is copied into panels first (1) or read in place (0, where it can be)
    "cpu_matmul": {"rows": (1, 2, 3, 4, 5, 6, 8, 10, 12, 16), "width": (16, 32, 64), "packed": (0, 1)},
    # a GPU product's work-group block (block x block * wide outputs, per_item x per_item * wide per item: the
    # heuristics take block // 16 and wide 1), staged slice of k, local buffers per tile (2: double-buffered), and
    # groups per block of outputs (each summing a chunk of k: matmul.py, split.py)
    "local_tiles": {"block": (32, 64, 128), "per_item": (2, 4, 8), "bk": (8, 16, 32, 64), "buffers": (1, 2),
                    "split": (1, 2, 4, 8), "wide": (1, 2)},
    # a product on tensor cores (tensor_cores.py): a warp's outputs along m, bytes of each row a slice stages, local
    # buffers per tile, and whether stored operands are copied by cp.async into a pipeline that deep (1) or the
    # operands staged through registers (0: one buffer, or two double-buffered), whether warpgroups multiply
    # (1: wgmma, compute capability 9.x; 2: in ping-pong, each consumer warpgroup its own block), and groups per
    # block of outputs (as local_tiles' split)
    "tensor_cores": {"columns": (32, 48, 64), "row_bytes": (64, 128), "buffers": (1, 2, 3, 4, 6), "pipelined": (0, 1),
                     "warpgroup": (0, 1, 2), "split": (1, 2, 3, 4, 8)},
    # any other kernel: a register tile of a product (outputs per item along n and m), vector lanes,
    # accumulators per reduction loop, items per work group sharing a reduction (0: none)
    "plain": {"tile_n": (1, 2, 4, 8, 16), "tile_m": (1, 2, 4, 8, 16), "width": (1, 2, 4, 8, 16),
              "unroll": (1, 2, 4, 8, 16), "group": (0, 32, 64, 128, 256, 512, 1024)},
}
"""Every parameter a choice of each family may set, and the values any kernel may take (a kernel allows fewer)."""

Options = tuple[tuple[str, tuple[int, ...]], ...]  # (parameter, the values this kernel allows), by name


@dataclass(frozen=True)
class Choice:
    """Parameters of one family (a subset of FAMILIES[family]), sorted by name."""

    family: str
    values: tuple[tuple[str, int], ...]

    @staticmethod
    def of(family: str, **values: int) -> "Choice":
        return Choice(family, tuple(sorted(values.items())))

    def __getitem__(self, name: str) -> int:
        return dict(self.values)[name]

    def get(self, name: str, default: int) -> int:
        return dict(self.values).get(name, default)

    def replaced(self, **values: int) -> "Choice":
        return Choice.of(self.family, **{**dict(self.values), **values})

    def describe(self) -> str:
        """`rows=4 width=16`: how the CLI and the logs show a choice."""
        return " ".join(f"{name}={value}" for name, value in self.values)

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "values": dict(self.values)}

    @staticmethod
    def from_json(data: Any) -> "Choice":
        """The choice a JSON object describes; ValueError when it is not one FAMILIES allows."""
        if not isinstance(data, dict) or set(data) != {"family", "values"}:
            raise ValueError("a choice is an object with a family and values")
        family, values = data["family"], data["values"]
        allowed = FAMILIES.get(family) if isinstance(family, str) else None
        if allowed is None or not isinstance(values, dict) or not values:
            raise ValueError(f"no choice family {family!r}")
        for name, value in values.items():
            if name not in allowed or isinstance(value, bool) or not isinstance(value, int) or value not in allowed[name]:
                raise ValueError(f"{family} choice: {name}={value!r} is not one of {allowed.get(name)}")
        return Choice.of(family, **values)


def fits(choice: Choice, family: str, options: Options) -> bool:
    """Whether `choice` sets exactly the parameters of `options` to values they allow."""
    allowed = dict(options)
    return (choice.family == family and {name for name, _ in choice.values} == set(allowed)
            and all(value in allowed[name] for name, value in choice.values))


@dataclass(frozen=True)
class TuneSite:
    """What the tuner needs to know of a kernel the scheduler shaped: the key tuned choices are found by (the
    fingerprint of the kernel the heuristics make, and its name), the heuristics' choice, the choice the kernel
    was shaped with, and the values each parameter may take for it."""

    key: str
    name: str
    heuristic: Choice
    applied: Choice
    options: Options


class TunedChoices(Mapping[str, Choice]):
    """Tuned choices by kernel key, read only (the scheduler's view of the tuning records of one device).
    `digest` names the whole set: a program scheduled with other tuned choices has another key."""

    def __init__(self, choices: Optional[Mapping[str, Choice]] = None):
        self._choices = dict(choices or {})
        self._digest: Optional[str] = None

    def __getitem__(self, key: str) -> Choice:
        return self._choices[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._choices)

    def __len__(self) -> int:
        return len(self._choices)

    def with_choice(self, key: str, choice: Choice) -> "TunedChoices":
        return TunedChoices({**self._choices, key: choice})

    @property
    def digest(self) -> str:
        if self._digest is None:
            items = sorted((key, choice.family, choice.values) for key, choice in self._choices.items())
            self._digest = hash_hex(repr(items)) if items else "none"
        return self._digest


NO_TUNING = TunedChoices()
