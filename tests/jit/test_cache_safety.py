"""A cache that cannot be turned against its user: planted rows run no code and delete no file, damage of any
kind is one warning and a rebuild, untrusted directories are refused, and the CLI works whatever the state."""
from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from test_cache import REPOSITORY, WORKER, cache_warnings, run_worker, worker_env
from zyx.jit import cache_key as cache_key_module
from zyx.jit.cache import KernelCache
from zyx.jit.disk_store import DATABASE_FILES, CacheDirectoryWarning, CacheWarning, DiskStore
from zyx.jit.program import Launch, Program
from zyx.jit.program_json import program_to_json
from zyx.jit.program_store import ProgramStore

COMPUTE = ("import numpy as np, zyx; x = zyx.OpenCL().tensor(np.arange(6, dtype=np.float32)); "
           "print(((x * 2).exp().sum()).item(), zyx.stats()['kernels_compiled'], zyx.stats()['graphs_scheduled'])")
EXPECTED = sum(math.exp(2 * i) for i in range(6))


def planted_pickle(marker: Path) -> bytes:
    """Protocol-0 pickle bytes that, if anything unpickled them, would run `touch marker`."""
    return f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()


def zyx_command(cache_dir: Path, *arguments: str, script: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", script] if script else [sys.executable, "-m", "zyx", *arguments]
    return subprocess.run(command, env=worker_env(cache_dir), cwd=REPOSITORY, capture_output=True, text=True,
                          timeout=120)


def compute(cache_dir: Path) -> tuple[float, int, int, str]:
    """Run COMPUTE in a new process: (value, kernels compiled, graphs scheduled, stderr)."""
    finished = zyx_command(cache_dir, script=COMPUTE)
    assert finished.returncode == 0, finished.stderr
    value, compiled, scheduled = finished.stdout.split()
    return float(value), int(compiled), int(scheduled), finished.stderr


def plant_diskcache_rows(database: Path, marker: Path, outside: Path) -> None:
    """Rows as the old diskcache layout read them: pickled keys and values, a value file named outside."""
    database.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE IF NOT EXISTS Settings (key TEXT NOT NULL UNIQUE, value)")
        db.execute("CREATE TABLE IF NOT EXISTS Cache (rowid INTEGER PRIMARY KEY, key BLOB, raw INTEGER, "
                   "store_time REAL, expire_time REAL, access_time REAL, access_count INTEGER DEFAULT 0, "
                   "tag BLOB, size INTEGER DEFAULT 0, mode INTEGER DEFAULT 0, filename TEXT, value BLOB)")
        now = time.time()
        pickle = planted_pickle(marker)
        db.execute("INSERT INTO Cache (key, raw, store_time, access_time, mode, value) VALUES (?, 0, ?, ?, 4, ?)",
                   (pickle, now, now, pickle))
        db.execute("INSERT INTO Cache (key, raw, store_time, access_time, mode, filename, size) "
                   "VALUES ('b:' || ?, 1, ?, ?, 2, ?, 1)", ("f" * 32, now, now, str(outside)))


def plant_store_rows(cache_dir: Path, marker: Path, outside: Path) -> None:
    """Rows in both tables of zyx's own store whose every column is a pickle or a path outside."""
    pickle = planted_pickle(marker)
    for table in ("kernels", "programs"):
        store = DiskStore(cache_dir, table, 1 << 30)
        for key in (pickle.decode(), str(outside), "f" * 32):
            store.put(key, pickle.decode(), pickle)
        store.put("meta-names-a-file", json.dumps({"filename": str(outside), "checksum": str(outside)}), pickle)


def test_planted_rows_run_no_code_and_delete_no_file(tmp_path):
    cache_dir, marker, outside = tmp_path / "cache", tmp_path / "marker", tmp_path / "outside.txt"
    outside.write_text("the user's file")
    plant_diskcache_rows(cache_dir / "cache.db", marker, outside)
    plant_diskcache_rows(cache_dir / "programs" / "cache.db", marker, outside)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        plant_store_rows(cache_dir, marker, outside)
    value, compiled, scheduled, _ = compute(cache_dir)
    assert value == pytest.approx(EXPECTED, rel=1e-5) and compiled >= 1 and scheduled >= 1
    for command in (["ls"], ["ls", "--json"], ["info"], ["info", "--json"], ["show", "ffff"], ["prune"],
                    ["clear", "--device", "x", "--yes"], ["clear", "--yes"]):
        finished = zyx_command(cache_dir, "cache", *command)
        assert "Traceback" not in finished.stderr, (command, finished.stderr)
    assert not marker.exists(), "a planted pickle ran"
    assert outside.read_text() == "the user's file"
    names = {path.name for path in cache_dir.iterdir()}  # SQLite removes -wal/-shm when the last connection closes
    assert {"cache.db", "programs", DATABASE_FILES[0]} <= names <= {"cache.db", "programs", *DATABASE_FILES}, names


def test_every_planted_kernel_row_is_skipped_by_listing_and_removed_by_prune(tmp_path):
    cache_dir, marker, outside = tmp_path / "cache", tmp_path / "marker", tmp_path / "outside.txt"
    outside.write_text("kept")
    plant_store_rows(cache_dir, marker, outside)
    cache = KernelCache(cache_dir)
    assert cache.entries() == [] and len(cache._store.rows()) == 4
    assert cache.prune() == 4 and cache._store.rows() == []
    assert not marker.exists() and outside.read_text() == "kept"


# -- programs: validated on load ---------------------------------------------------------------------

SOURCE = "__kernel void double_it(__global float* out, __global const float* x) { out[0] = 2 * x[0]; }"


def a_program() -> Program:
    return Program([Launch("double_it", SOURCE, (4,), None, (("slot", 0), ("input", 0)))], [16], [0], [[]], [[0]])


def replace_value(store: ProgramStore, key: str, text: str, checksum: str | None = None) -> None:
    value = text.encode()
    meta = json.dumps({"checksum": checksum or cache_key_module.hash_hex(value)})
    with sqlite3.connect(store._store.path) as db:
        db.execute("UPDATE programs SET value = ?, meta = ? WHERE key = ?", (value, meta, key))


def out_of_range(field: str, value) -> str:
    data = json.loads(program_to_json(a_program()))
    if field == "args":
        data["launches"][0]["args"] = value
    else:
        data[field] = value
    return json.dumps(data)


@pytest.mark.parametrize("text, checksum, reason", [
    ("{\"launches\": [", None, "not JSON"),
    (program_to_json(a_program()), "0" * 32, "checksum"),
    (out_of_range("args", [["slot", 1], ["input", 0]]), None, "index 1 is out of range for 1"),
    (out_of_range("args", [["slot", 0], ["input", 3]]), None, "index 3 is out of range for 1"),
    (out_of_range("args", [["pickle", 0]]), None, "kind one of"),
    (out_of_range("outputs", [-1]), None, "outputs: index -1"),
    (out_of_range("slot_bytes", [-16]), None, "not a non-negative integer"),
    (out_of_range("frees", [[7]]), None, "frees: index 7"),
    (out_of_range("aliases", {"0": 5}), None, "aliases: index 5"),
    (out_of_range("checks", [1]), None, "checks: index 1"),
    (json.dumps({**json.loads(out_of_range("checks", [0])), "aliases": {"0": 0}}), None,
     "checks: not all computed before the first launch writing an input in place"),
    (program_to_json(a_program()).replace("double_it", "os.system"), None, "not an identifier"),
    (planted_pickle(Path("/tmp/never")).decode(), None, "not JSON"),
])
def test_a_damaged_program_is_dropped_with_one_warning(tmp_path, monkeypatch, text, checksum, reason):
    monkeypatch.setenv("ZYX_CACHE_DIR", str(tmp_path / "cache"))
    store = ProgramStore()
    store.save("k" * 32, a_program())
    assert store.load("k" * 32, inputs=1, rands=0) == a_program()
    replace_value(store, "k" * 32, text, checksum)
    with pytest.warns(CacheWarning) as record:
        assert ProgramStore().load("k" * 32, inputs=1, rands=0) is None
    (message,) = cache_warnings(record)
    assert reason in message and "kkkkkkkkkkkk" in message
    assert len(store) == 0  # dropped: the next run schedules and stores it again


def test_a_program_naming_its_index_checks_is_stored_with_them_and_one_naming_none_as_before(tmp_path, monkeypatch):
    """`checks` is written only where a program has some: entries without it read as they did."""
    monkeypatch.setenv("ZYX_CACHE_DIR", str(tmp_path / "cache"))
    store, checked = ProgramStore(), a_program()
    checked.checks = [0]
    store.save("c" * 32, checked)
    store.save("k" * 32, a_program())
    assert store.load("c" * 32, inputs=1, rands=0) == checked and store.load("k" * 32, inputs=1, rands=0) == a_program()
    assert "checks" not in json.loads(program_to_json(a_program()))


def stored_program_text(cache_dir: Path, key: str) -> str:
    return DiskStore(cache_dir, "programs", 1 << 30).get(key)[1].decode()


def test_a_planted_program_does_not_reach_the_device(tmp_path):
    cache_dir = tmp_path / "cache"
    first = compute(cache_dir)
    store_rows = DiskStore(cache_dir, "programs", 1 << 30).rows()
    assert len(store_rows) == 1
    data = json.loads(stored_program_text(cache_dir, store_rows[0].key))
    data["launches"][0]["args"][0] = ["slot", 10 ** 6]
    text = json.dumps(data).encode()
    with sqlite3.connect(cache_dir / "zyx.db") as db:
        db.execute("UPDATE programs SET value = ?, meta = ? WHERE key = ?",
                   (text, json.dumps({"checksum": cache_key_module.hash_hex(text)}), store_rows[0].key))
    value, compiled, scheduled, errors = compute(cache_dir)
    assert value == pytest.approx(first[0]) and scheduled == 1 and compiled == 0
    assert errors.count("CacheWarning") == 1 and "out of range" in errors
    assert compute(cache_dir)[1:] == (0, 0, "")  # the next run is clean


# -- a damaged database ------------------------------------------------------------------------------

def garbage(path: Path) -> None:
    path.write_bytes(b"\x00garbage, not SQLite" * 300)


def truncate(path: Path) -> None:
    os.truncate(path, 1000)


def flip_three_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for position in (len(data) // 4, len(data) // 2, 3 * len(data) // 4):
        data[position] ^= 0x5A
    path.write_bytes(bytes(data))


def foreign_database(path: Path) -> None:
    path.unlink()
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE kernels (key TEXT, meta TEXT, value BLOB)")


@pytest.mark.parametrize("damage", [garbage, truncate, flip_three_bytes, foreign_database])
def test_a_damaged_database_is_one_warning_and_the_next_run_is_clean(tmp_path, damage):
    cache_dir = tmp_path / "cache"
    run_worker(worker_env(cache_dir), "build", "0", "1", "2")
    damage(cache_dir / "zyx.db")
    damaged = run_worker(worker_env(cache_dir), "build", "0", "1", "2")
    assert damaged["correct"] == [True] * 3
    if damage is flip_three_bytes:  # each flip may hit a binary (that entry is dropped), the database's structure
        assert len(damaged["warnings"]) <= 3  # (it is made afresh) or unused space (no harm)
        assert all("fails the checksum" in warning or "afresh" in warning for warning in damaged["warnings"])
    else:
        (warning,) = damaged["warnings"]
        assert "zyx.db" in warning and "afresh" in warning
    clean = run_worker(worker_env(cache_dir), "build", "0", "1", "2")
    assert clean["correct"] == [True] * 3 and clean["warnings"] == []
    assert clean["stats"]["cache_disk_hits"] == 3 and clean["stats"]["kernels_compiled"] == 0


@pytest.mark.parametrize("damage", [garbage, truncate, foreign_database])
def test_clear_leaves_an_empty_working_cache_whatever_the_state(tmp_path, damage):
    cache_dir = tmp_path / "cache"
    run_worker(worker_env(cache_dir), "build", "0")
    damage(cache_dir / "zyx.db")
    cleared = zyx_command(cache_dir, "cache", "clear", "--yes")
    assert cleared.returncode == 0 and "removed 0 entries" in cleared.stdout, cleared.stderr
    assert cleared.stderr.count("zyx: warning:") == 1 and "Traceback" not in cleared.stderr
    listed = zyx_command(cache_dir, "cache", "ls", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [] and listed.stderr == ""
    assert run_worker(worker_env(cache_dir), "build", "0")["stats"]["cache_disk_writes"] == 1


# -- whom the cache trusts ---------------------------------------------------------------------------

def group_writable(directory: Path) -> str:
    directory.chmod(0o770)
    return "writable by group or others (mode 770)"


def owned_by_another_user(directory: Path) -> str:
    os.chown(directory, os.geteuid() + 4242, -1)
    return f"belongs to user {os.geteuid() + 4242}"


def database_writable_by_others(directory: Path) -> str:
    os.close(os.open(directory / "zyx.db", os.O_CREAT | os.O_WRONLY, 0o600))
    (directory / "zyx.db").chmod(0o666)
    return "zyx.db is writable by group or others (mode 666)"


@pytest.mark.parametrize("make_untrusted", [group_writable, owned_by_another_user, database_writable_by_others])
def test_an_untrusted_directory_is_refused_with_one_warning(tmp_path, make_untrusted):
    cache_dir = tmp_path / "shared"
    cache_dir.mkdir(mode=0o700)
    fragment = make_untrusted(cache_dir)
    before = sorted(path.name for path in cache_dir.iterdir())
    report = run_worker(worker_env(cache_dir), "build", "0", "0")
    assert report["correct"] == [True, True] and report["stats"]["kernels_compiled"] == 1
    (warning,) = report["warnings"]
    assert f"refusing {cache_dir}" in warning and fragment in warning and "ZYX_CACHE_DIR" in warning
    assert sorted(path.name for path in cache_dir.iterdir()) == before  # nothing written there
    listed = zyx_command(cache_dir, "cache", "ls")
    assert listed.returncode == 1 and listed.stderr.startswith("zyx: error: refusing") and listed.stdout == ""


OPEN_AT_ONCE = """
import json, pathlib, sys, time, warnings
from zyx.jit.disk_store import DiskStore
start, number, folders = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
stored, said = 0, []
for round, folder in enumerate(folders):
    time.sleep(max(0.0, start + 0.1 * round - time.time()))  # every process opens the same empty folder at once
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stored += DiskStore(pathlib.Path(folder), "kernels", 1 << 20).put(f"key-{number % 4}", "{}", b"binary")
    said += [str(warning.message) for warning in caught]
print(json.dumps([stored, said]))
"""


def test_processes_that_create_the_database_together_keep_each_others_rows(tmp_path):
    """Eight processes open the same new cache directory at the same moment, ten times: none may take the
    database another is creating for someone else's and delete it (which lost rows on the 16-core GPU host)."""
    folders = [tmp_path / f"round-{round}" for round in range(10)]
    for folder in folders:
        folder.mkdir(mode=0o700)
    start = time.time() + 2.0
    workers = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, str(start), str(number), *map(str, folders)],
                                cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for number in range(8)]
    results = [json.loads(worker.communicate(timeout=60)[0]) for worker in workers]
    assert [said for _, said in results] == [[]] * 8
    assert sum(stored for stored, _ in results) == 4 * len(folders)  # four keys per folder, each stored once


def test_a_new_cache_directory_is_private(tmp_path):
    KernelCache(tmp_path / "new" / "cache")
    assert (tmp_path / "new" / "cache").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "new" / "cache" / "zyx.db").stat().st_mode & 0o777 == 0o600


def test_commits_are_not_flushed_one_by_one(tmp_path):
    # a warm start records a use of every entry it loads: a flush each (10 ms or more on a disk) would be most of it
    store = DiskStore(tmp_path, "kernels", 1 << 20)
    store.put("a", "{}", b"1")
    assert store._connection.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL (FULL is 2)
    assert store._connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # (safe with NORMAL)


# -- the store's bound, the writer's exit, the CLI's pipes ---------------------------------------------

def test_small_values_are_counted_exactly_and_evicted_least_recently_used_first(tmp_path):
    store = DiskStore(tmp_path, "kernels", size_limit=30)
    assert store.put("a", "{}", b"1234") and store.volume() == 7  # key, metadata and value bytes
    assert store.put("b", "{}", b"1234") and store.put("c", "{}", b"1234") and store.volume() == 21
    store.record_use("a")
    assert store.put("d", "{}", b"1234")  # 28 bytes: all four fit
    assert store.put("e", "{}", b"12345678")  # 11 more: b and c (least recently used) go
    assert [row.key for row in store.rows()] == ["a", "d", "e"] and store.volume() == 25
    assert not store.put("huge", "{}", b"x" * 40) and store.volume() == 25  # alone over the limit: not stored


def test_a_store_is_empty_until_an_entry_is_put_and_again_once_cleared(tmp_path):
    store = DiskStore(tmp_path, "kernels", size_limit=30)
    assert store.is_empty()
    assert store.put("a", "{}", b"1234") and not store.is_empty()
    assert store.clear() == 1 and store.is_empty()


def test_exit_waits_about_a_second_for_queued_writes(tmp_path):
    script = ("import time; from zyx.jit.background import BackgroundWriter; w = BackgroundWriter(); "
              "[w.submit(lambda: time.sleep(2)) for _ in range(30)]; print('queued', flush=True)")
    start = time.monotonic()
    finished = zyx_command(tmp_path, script=script)
    assert finished.returncode == 0 and finished.stdout == "queued\n", finished.stderr
    assert time.monotonic() - start < 8  # 60 s of queued work; python startup and one job in flight


def test_binaries_written_in_the_background_are_there_for_the_next_process(tmp_path):
    cache_dir = tmp_path / "cache"
    first = compute(cache_dir)
    assert first[1] >= 1 and compute(cache_dir)[1:] == (0, 0, "")


@pytest.mark.parametrize("command", ["info", "ls --json"])
def test_a_closed_pipe_is_not_a_traceback(tmp_path, command):
    cache_dir = tmp_path / "cache"
    run_worker(worker_env(cache_dir), "build", "0")
    finished = subprocess.run(f"{sys.executable} -m zyx cache {command} | (sleep 0; exit 0)", shell=True,
                              env=worker_env(cache_dir), cwd=REPOSITORY, capture_output=True, text=True, timeout=60)
    assert finished.stderr == ""


# -- the program key -----------------------------------------------------------------------------------

def test_the_program_key_follows_every_zyx_setting_that_may_shape_a_program(monkeypatch):
    monkeypatch.delenv("ZYX_TILE", raising=False)
    plain = cache_key_module.program_settings()
    monkeypatch.setenv("ZYX_TILE", "8x8")
    assert cache_key_module.program_settings() != plain and '"ZYX_TILE": "8x8"' in cache_key_module.program_settings()
    monkeypatch.delenv("ZYX_TILE")
    for unrelated in ("ZYX_DEBUG", "ZYX_CACHE_DIR", "ZYX_DEVICE"):
        monkeypatch.setenv(unrelated, "1")
    assert cache_key_module.program_settings() == plain


@pytest.mark.parametrize("module", ["trace/philox.py", "dtypes.py", "jit/tiling.py"])
def test_the_program_key_follows_every_zyx_source_file(tmp_path, module):
    package = Path(cache_key_module.__file__).resolve().parents[1]
    copy = shutil.copytree(package, tmp_path / "zyx", ignore=shutil.ignore_patterns("__pycache__"))
    assert cache_key_module.package_source_hash(copy) == cache_key_module.zyx_source_hash()
    with open(copy / module, "a") as file:
        file.write("\n# a changed constant\n")
    assert cache_key_module.package_source_hash(copy) != cache_key_module.zyx_source_hash()
