"""Tuning records on disk: the winner of each kernel's search, with every candidate's time, per device and driver.

A record is one row of the `tuning` table of the cache directory's store (`disk_store`), keyed by the fingerprint
of the kernel the heuristics make, the device fingerprint (device, platform, driver, OpenCL C versions) and the
record format. Its metadata is JSON, parsed and checked field by field before anything uses it (`parse_record`):
a record that fails is dropped with one CacheWarning, so its kernel is searched again the next time tuning is on.
The scheduler sees a device's records as a `TunedChoices` (choices.py).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import time
import warnings
from dataclasses import dataclass
from typing import Any, Optional

from .cache import cache_directory, device_matches
from .cache_key import FINGERPRINT_NAMES, cache_key
from .choices import Choice, TunedChoices
from .disk_store import CacheWarning, DiskStore, Row

__all__ = ["TUNE_FORMAT", "Trial", "TuneRecord", "TuningStore", "default_tuning_store", "parse_record", "record_key"]

TABLE = "tuning"
TUNE_FORMAT = "tune-3"
"""Bump when the record layout changes: older records then miss and are searched again (tune-2: CPU products
choose whether their right operand is packed; tune-3: tensor-core choices name warpgroup and split always)."""
SIZE_LIMIT = 16 << 20
STATUSES = ("ok", "cut", "wrong", "failed")
"""A candidate was timed in full; cut after its first run (clearly slower than the best so far); computed other
values than the heuristics' kernel; or failed to build or run."""
_HEX = re.compile(r"[0-9a-f]{32}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Trial:
    """One candidate of a search: its choice, its fastest sample (None unless it ran), what became of it, and
    its time relative to the heuristics' kernel (the median over samples taken alternately with it; None for
    that kernel itself and for candidates that did not run)."""

    choice: Choice
    seconds: Optional[float]
    status: str
    relative: Optional[float] = None


@dataclass(frozen=True)
class TuneRecord:
    """The outcome of one kernel's search on one device."""

    kernel: str                  # fingerprint of the heuristics' kernel (the key's first part)
    device: dict[str, str]       # the device fingerprint (FINGERPRINT_NAMES)
    untuned_name: str            # the heuristics' kernel, as ZYX_DEBUG and `zyx cache ls` name it
    tuned_name: str              # the winner's
    heuristic: Choice
    choice: Choice               # the winner (the heuristic itself when nothing beat it)
    untuned_seconds: float       # the fastest sample of each
    tuned_seconds: float
    relative: float              # the winner's time relative to the heuristics' kernel (1 when that won)
    trials: tuple[Trial, ...]
    mode: int                    # ZYX_TUNE of the search: 1 (the heuristics' neighbourhood) or 2 (every choice)
    search_seconds: float
    created: float = 0.0

    @property
    def improves(self) -> bool:
        """Whether a candidate beat the heuristics' choice. A record that does not only says the kernel was
        searched: it changes no schedule (nor the programs' keys, `TunedChoices.digest`)."""
        return self.choice != self.heuristic

    def kept_heuristic(self) -> "TuneRecord":
        """This search with the heuristics' choice as its outcome (its winner made its step no faster)."""
        return dataclasses.replace(self, choice=self.heuristic, tuned_name=self.untuned_name,
                                   tuned_seconds=self.untuned_seconds, relative=1.0)

    @property
    def speedup(self) -> float:
        """How much faster the winner is than the heuristics' kernel, measured alternately with it."""
        return 1 / self.relative if self.relative > 0 else 1.0

    @property
    def key(self) -> str:
        return record_key(self.kernel, self.device)

    def to_json(self) -> str:
        return json.dumps({
            "format": TUNE_FORMAT, "kernel": self.kernel, "device": self.device, "untuned_name": self.untuned_name,
            "tuned_name": self.tuned_name, "heuristic": self.heuristic.to_json(), "choice": self.choice.to_json(),
            "untuned_seconds": self.untuned_seconds, "tuned_seconds": self.tuned_seconds, "relative": self.relative,
            "trials": [{"choice": t.choice.to_json(), "seconds": t.seconds, "status": t.status,
                        "relative": t.relative} for t in self.trials],
            "mode": self.mode, "search_seconds": self.search_seconds,
        })


def record_key(kernel: str, device: dict[str, str]) -> str:
    return cache_key({"kernel": kernel, **device, "format": TUNE_FORMAT})


def _seconds(value: Any, what: str, optional: bool = False) -> Optional[float]:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} is not a time in seconds")
    return float(value)


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"{what} is not a kernel name")
    return value


def parse_record(text: str, key: str, created: float = 0.0) -> TuneRecord:
    """The record stored under `key`, every field checked; ValueError says what is wrong with it."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError("its JSON is garbled") from None
    if not isinstance(data, dict) or data.get("format") != TUNE_FORMAT:
        raise ValueError("it is not a tuning record of this format")
    device, kernel = data.get("device"), data.get("kernel")
    if not (isinstance(device, dict) and set(device) == set(FINGERPRINT_NAMES)
            and all(isinstance(v, str) for v in device.values())):
        raise ValueError("its device fingerprint is garbled")
    if not isinstance(kernel, str) or not _HEX.fullmatch(kernel) or record_key(kernel, device) != key:
        raise ValueError("it does not match its key")
    heuristic, choice = Choice.from_json(data.get("heuristic")), Choice.from_json(data.get("choice"))
    trials_data = data.get("trials")
    if not isinstance(trials_data, list) or not trials_data:
        raise ValueError("its candidates are garbled")
    trials = []
    for trial in trials_data:
        if not isinstance(trial, dict) or trial.get("status") not in STATUSES:
            raise ValueError("a candidate is garbled")
        trials.append(Trial(Choice.from_json(trial.get("choice")),
                            _seconds(trial.get("seconds"), "a candidate's time", optional=True), trial["status"],
                            _seconds(trial.get("relative"), "a candidate's relative time", optional=True)))
    if {heuristic.family, choice.family} != {t.choice.family for t in trials} or choice not in [t.choice for t in trials]:
        raise ValueError("its winner is not one of its candidates")
    mode = data.get("mode")
    if mode not in (1, 2) or isinstance(mode, bool):
        raise ValueError("its mode is garbled")
    return TuneRecord(kernel, dict(device), _name(data.get("untuned_name"), "the untuned kernel"),
                      _name(data.get("tuned_name"), "the tuned kernel"), heuristic, choice,
                      _seconds(data.get("untuned_seconds"), "the untuned time"),  # type: ignore[arg-type]
                      _seconds(data.get("tuned_seconds"), "the tuned time"),  # type: ignore[arg-type]
                      _seconds(data.get("relative"), "the relative time"), tuple(trials),  # type: ignore[arg-type]
                      mode, _seconds(data.get("search_seconds"), "the search time"), created)  # type: ignore[arg-type]


class TuningStore:
    """Tuning records in `directory/zyx.db` (opened at first use; the cache directory by default)."""

    def __init__(self, directory: Any = None) -> None:
        self._directory = directory
        self._disk: Optional[DiskStore] = None

    @property
    def _store(self) -> DiskStore:
        if self._disk is None:
            self._disk = DiskStore(self._directory or cache_directory(), TABLE, SIZE_LIMIT)
        return self._disk

    def records(self, device: Optional[dict[str, str]] = None) -> list[TuneRecord]:
        """Every valid record (of one device fingerprint, if given), most recent first; damaged ones are dropped
        with one warning each."""
        found, damaged = [], []
        for row in self._store.rows():
            record = self._parsed(row)
            if record is None:
                damaged.append(row.key)
            elif device is None or record.device == device:
                found.append(record)
        self._store.delete(damaged)
        return sorted(found, key=lambda record: record.created, reverse=True)

    def choices(self, device: dict[str, str]) -> TunedChoices:
        """The device's tuned choices, as the scheduler looks them up: those that beat the heuristics'."""
        return TunedChoices({record.kernel: record.choice for record in self.records(device) if record.improves})

    def get(self, kernel: str, device: dict[str, str]) -> Optional[TuneRecord]:
        key = record_key(kernel, device)
        stored = self._store.get(key)
        if stored is None:
            return None
        record = self._parsed(stored[0])
        if record is None:
            self._store.delete([key])
        return record

    def put(self, record: TuneRecord) -> None:
        """Store `record`, replacing an earlier search of the same kernel on the same device."""
        self._store.delete([record.key])
        self._store.put(record.key, record.to_json(), b"")

    def clear(self, device: Optional[str] = None, older_than_seconds: Optional[float] = None) -> int:
        """Remove records (all, or those of devices whose name contains `device` and created before the age)."""
        if device is None and older_than_seconds is None:
            return self._store.clear()
        cutoff = time.time() - older_than_seconds if older_than_seconds is not None else math.inf
        return self._store.delete([record.key for record in self.records()
                                   if (device is None or device_matches(device, record.device["device"]))
                                   and record.created < cutoff])

    @staticmethod
    def _parsed(row: Row) -> Optional[TuneRecord]:
        try:
            return parse_record(row.meta, row.key, row.created)
        except ValueError as error:
            warnings.warn(f"zyx tuning: dropped record {row.key[:12]} because {error}; its kernel will be searched "
                          f"again", CacheWarning, stacklevel=4)
            return None


_default: list[TuningStore] = []


def default_tuning_store() -> TuningStore:
    if not _default:
        _default.append(TuningStore())
    return _default[0]
