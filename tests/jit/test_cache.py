"""The persistent kernel cache: layers, keys, bounds, sharing between processes, and recovery from faults."""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pyopencl as cl
import pytest

from cache_worker import first_device, kernel_source, run_add, store_variant
from zyx.jit import cache as cache_module
from zyx.jit import cache_key as cache_key_module
from zyx.jit import disk_store
from zyx.jit.cache import (
    DEFAULT_SIZE_LIMIT, CacheDirectoryWarning, CacheWarning, KernelCache, cache_directory, default_cache,
    device_fingerprint, parse_size,
)
from zyx.jit.cache_key import COMPONENT_NAMES, FINGERPRINT_NAMES, cache_key, hash_hex, key_components
from zyx.counters import stats

WORKER = Path(__file__).with_name("cache_worker.py")
REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def device() -> cl.Device:
    return first_device()


@pytest.fixture(scope="module")
def context(device) -> cl.Context:
    return cl.Context([device])


@pytest.fixture(scope="module")
def queue(context) -> cl.CommandQueue:
    return cl.CommandQueue(context)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("ZYX_CACHE_DIR", str(directory))
    for name in ("ZYX_DEBUG", "ZYX_DEBUG_CACHE", "ZYX_CACHE_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return directory


def counted(function) -> dict[str, float]:
    """How much each stats counter moved while `function` ran."""
    before = stats()
    function()
    after = stats()
    return collections.defaultdict(int, {name: after[name] - before.get(name, 0) for name in after})


def cache_warnings(record) -> list[str]:
    return [str(warning.message) for warning in record if issubclass(warning.category, CacheWarning)]


def stored_entry(cache_dir: Path, context, queue, constant: int) -> str:
    """Compile, run and commit add_<constant> into the cache at cache_dir; return its key."""
    cache = KernelCache(cache_dir)
    assert run_add(cache, context, queue, constant)
    (entry,) = [entry for entry in cache.entries() if entry["kernel"] == f"add_{constant}"]
    return entry["key"]


def worker_env(cache_dir: Path, **extra: str) -> dict[str, str]:
    environment = {**os.environ, "ZYX_CACHE_DIR": str(cache_dir), **extra}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), environment.get("PYTHONPATH")]))
    return environment


def run_worker(environment: dict[str, str], *arguments: str) -> dict:
    finished = subprocess.run([sys.executable, str(WORKER), *arguments], env=environment, capture_output=True,
                              text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    return json.loads(finished.stdout)


# -- location, size, key -----------------------------------------------------------------------------

def test_directory_comes_from_zyx_cache_dir_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("ZYX_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_directory() == tmp_path / "explicit"
    monkeypatch.delenv("ZYX_CACHE_DIR")
    assert cache_directory() == tmp_path / "xdg" / "zyx"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_directory() == tmp_path / "home" / ".cache" / "zyx"


def test_default_cache_is_one_per_process_in_the_env_directory(cache_dir, monkeypatch):
    monkeypatch.setattr(cache_module, "_default", None)  # as if this process had not used it yet
    assert default_cache() is default_cache()
    assert default_cache().directory == Path(os.environ["ZYX_CACHE_DIR"])


@pytest.mark.parametrize("text, size", [("1048576", 1 << 20), ("512M", 512 << 20), ("1G", 1 << 30),
                                        ("64KiB", 64 << 10), ("1.5g", 3 << 29), ("2 GB", 2 << 30)])
def test_sizes_accept_bytes_and_suffixes(text, size):
    assert parse_size(text) == size


def test_size_limit_defaults_to_one_gib_and_reads_zyx_cache_size(cache_dir, monkeypatch):
    assert KernelCache(cache_dir).size_limit == DEFAULT_SIZE_LIMIT == 1 << 30
    monkeypatch.setenv("ZYX_CACHE_SIZE", "512M")
    assert KernelCache(cache_dir).size_limit == 512 << 20
    assert KernelCache(cache_dir, size_limit=12345).size_limit == 12345
    monkeypatch.setenv("ZYX_CACHE_SIZE", "lots")
    with pytest.warns(CacheWarning, match="ZYX_CACHE_SIZE") as record:
        assert KernelCache(cache_dir).size_limit == DEFAULT_SIZE_LIMIT
    assert len(cache_warnings(record)) == 1


def test_key_is_built_from_named_components(device):
    components = key_components(device, kernel_source(1), ("-cl-fast-relaxed-math",))
    assert tuple(components) == COMPONENT_NAMES
    assert device_fingerprint(device) == {name: components[name] for name in FINGERPRINT_NAMES}
    assert components["device"] == device.name.strip() and components["driver_version"] == device.driver_version
    assert components["source_hash"] == hash_hex(kernel_source(1)) and components["options"] == "-cl-fast-relaxed-math"
    key = cache_key(components)
    assert re.fullmatch(r"[0-9a-f]{32}", key)
    assert key == cache_key(key_components(device, kernel_source(1), ("-cl-fast-relaxed-math",)))
    assert key != cache_key(key_components(device, kernel_source(2), ("-cl-fast-relaxed-math",)))
    assert key != cache_key(key_components(device, kernel_source(1), ()))


def test_zyx_version_falls_back_when_zyx_is_not_installed(monkeypatch):
    def not_installed(name):
        raise cache_key_module.importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(cache_key_module.importlib.metadata, "version", not_installed)
    assert cache_key_module.zyx_version.__wrapped__() == "0+unknown"


# -- the three layers --------------------------------------------------------------------------------

def test_build_compiles_then_hits_memory_then_loads_from_disk(cache_dir, context, queue, device):
    cache = KernelCache(cache_dir)
    compiled = counted(lambda: run_add(cache, context, queue, 3))
    assert compiled["kernels_compiled"] == compiled["cache_misses"] == 1 and compiled["compile_seconds"] > 0
    assert compiled["cache_disk_writes"] == 1
    program = cache.build(context, device, kernel_source(3))
    assert cache.build(context, device, kernel_source(3)) is program
    remembered = counted(lambda: run_add(cache, context, queue, 3))
    assert remembered["cache_memory_hits"] == 1 and remembered["kernels_compiled"] == 0
    assert remembered["cache_disk_hits"] == remembered["cache_disk_writes"] == 0

    results = []
    loaded = counted(lambda: results.append(run_add(KernelCache(cache_dir), context, queue, 3)))
    assert results == [True]
    assert loaded["cache_disk_hits"] == 1 and loaded["kernels_compiled"] == loaded["cache_misses"] == 0
    assert loaded["cache_disk_writes"] == 0  # a loaded program is not stored again


def test_an_entry_holds_binary_source_checksum_and_metadata(cache_dir, context, queue, device):
    key = stored_entry(cache_dir, context, queue, 4)
    cache = KernelCache(cache_dir)
    entry = cache.entry(key[:12])
    assert entry["key"] == key and entry["short_key"] == key[:12]
    assert entry["components"] == key_components(device, kernel_source(4), ()) and cache_key(entry["components"]) == key
    assert entry["kernel_names"] == ["add_4"] and entry["source"] == kernel_source(4)
    binary = cache._store.get(key)[1]
    assert entry["checksum"] == hash_hex(binary) and entry["size"] == len(binary) > 0
    assert entry["compile_seconds"] > 0 and entry["hits"] == 0 and entry["created"] <= entry["last_used"] <= time.time()
    assert run_add(KernelCache(cache_dir), context, queue, 4)
    assert cache.entry(key)["hits"] == 1 and cache.entry(key)["last_used"] >= entry["last_used"]


def test_commit_later_stores_on_the_writer_thread(cache_dir, context, device):
    """The JIT hands fresh binaries to a writer thread (reading one is slow on PoCL); `flush` waits for it."""
    cache = KernelCache(cache_dir)
    program = cache.build(context, device, kernel_source(6))
    writes = counted(lambda: (cache.commit_later(program), cache.flush()))
    assert writes["cache_disk_writes"] == 1 and len(cache.entries()) == 1
    assert counted(cache.flush)["cache_disk_writes"] == 0  # nothing left queued


def test_commit_stores_a_program_once(cache_dir, context, device):
    cache = KernelCache(cache_dir)
    program = cache.build(context, device, kernel_source(5))
    writes = counted(lambda: [cache.commit(program) for _ in range(3)])
    assert writes["cache_disk_writes"] == 1 and len(cache.entries()) == 1


def test_a_size_limit_of_zero_keeps_kernels_in_memory_and_reads_no_binary(cache_dir, context, device, monkeypatch):
    """ZYX_CACHE_SIZE=0: nothing is written, and no binary is read back (on PoCL that compiles the kernels again)."""
    monkeypatch.setenv("ZYX_CACHE_SIZE", "0")
    cache = KernelCache(cache_dir)
    monkeypatch.setattr(cache_module, "program_binary", lambda *_: pytest.fail("a binary was read back"))
    program = cache.build(context, device, kernel_source(7))
    writes = counted(lambda: (cache.commit(program), cache.commit_later(program), cache.flush()))
    assert writes["cache_disk_writes"] == 0 and cache.entries() == [] and not cache.stores_binaries
    assert cache.build(context, device, kernel_source(7)) is program  # still served from memory


def test_entries_are_bounded_by_the_size_limit_least_recently_used_first(cache_dir, context, queue):
    original = stored_entry(cache_dir, context, queue, 0)
    entry_bytes = KernelCache(cache_dir).info()["bytes"]  # key, metadata and binary of one entry
    cache = KernelCache(cache_dir, size_limit=int(3.5 * entry_bytes))
    first, second = (store_variant(cache, original, components={"options": f"-DV={n}"}) for n in range(2))
    assert run_add(KernelCache(cache_dir), context, queue, 0)  # a load makes the original most recently used
    third, fourth = (store_variant(cache, original, components={"options": f"-DV={n}"}) for n in range(2, 4))
    assert {entry["key"] for entry in cache.entries()} == {original, third, fourth}
    assert cache.info()["bytes"] <= cache.size_limit


# -- several processes ------------------------------------------------------------------------------

def test_eight_processes_share_one_empty_cache(tmp_path):
    go_file = tmp_path / "go"
    environment = worker_env(tmp_path / "cache", ZYX_TEST_GO_FILE=str(go_file))
    workers = [subprocess.Popen([sys.executable, str(WORKER), "build", "100", str(number % 4)], env=environment,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for number in range(8)]
    deadline = time.monotonic() + 40
    while len(list(tmp_path.glob("go.ready.*"))) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    go_file.touch()  # all eight reach the empty cache together
    outputs = [worker.communicate(timeout=60) for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * 8, [error for _, error in outputs]
    reports = [json.loads(output) for output, _ in outputs]
    assert all(all(report["correct"]) for report in reports)
    assert sum(report["stats"].get("cache_disk_writes", 0) for report in reports) == 5  # each kernel stored once
    kernels = sorted(entry["kernel"] for entry in KernelCache(tmp_path / "cache").entries())
    assert kernels == ["add_0", "add_1", "add_100", "add_2", "add_3"]

    later = run_worker(worker_env(tmp_path / "cache"), "build", "0", "1", "2", "3", "100")
    assert all(later["correct"])
    assert later["stats"]["cache_disk_hits"] == 5 and later["stats"]["kernels_compiled"] == 0


def test_a_writer_killed_mid_write_leaves_a_working_cache(tmp_path):
    environment = worker_env(tmp_path / "cache")
    for pause in (0.05, 0.3):
        writer = subprocess.Popen([sys.executable, str(WORKER), "hammer"], env=environment, stdout=subprocess.PIPE,
                                  text=True)
        assert writer.stdout.readline().strip() == "writing"
        time.sleep(pause)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        report = run_worker(environment, "build", "0", "1")
        assert report["correct"] == [True, True]
        assert report["stats"]["cache_disk_hits"] == 1 and report["stats"]["kernels_compiled"] == 1
        cache = KernelCache(tmp_path / "cache")
        assert len(cache.entries()) > 3 and cache.prune() == 0


# -- recovery from faults ---------------------------------------------------------------------------

def set_row(store, key, **columns):
    """Overwrite columns of a stored row, as a damaged disk or another process could."""
    with sqlite3.connect(store.path) as db:
        db.execute(f"UPDATE kernels SET {', '.join(f'{name} = ?' for name in columns)} WHERE key = ?",
                   (*columns.values(), key))


def flip_binary_bytes(store, key):
    binary = bytearray(store.get(key)[1])
    for position in (7, len(binary) // 2, len(binary) - 3):
        binary[position] ^= 0xFF
    set_row(store, key, value=bytes(binary))


def truncate_binary(store, key):
    set_row(store, key, value=store.get(key)[1][:100])


def garble_metadata(store, key):
    set_row(store, key, meta='{"components": {"source_hash": ')


def mismatch_checksum(store, key):
    set_row(store, key, meta=json.dumps({**json.loads(store.get(key)[0].meta), "checksum": "0" * 32}))


def wrong_kernel_name(store, key):
    set_row(store, key, meta=json.dumps({**json.loads(store.get(key)[0].meta), "kernel_names": ["x; rm -rf /"]}))


def store_junk_binary(store, key):
    junk = b"not an OpenCL program binary " * 64
    meta = json.loads(store.get(key)[0].meta)
    set_row(store, key, value=junk, meta=json.dumps({**meta, "checksum": hash_hex(junk), "binary_size": len(junk)}))


@pytest.mark.parametrize("damage, reason", [
    (flip_binary_bytes, "checksum"), (truncate_binary, "checksum"), (garble_metadata, "garbled"),
    (mismatch_checksum, "checksum"), (wrong_kernel_name, "kernel names"), (store_junk_binary, "driver rejected"),
])
def test_a_damaged_entry_is_dropped_with_one_warning_and_recompiled(cache_dir, context, queue, damage, reason):
    key = stored_entry(cache_dir, context, queue, 6)
    damage(KernelCache(cache_dir)._store, key)
    results = []
    with pytest.warns(CacheWarning) as record:
        moved = counted(lambda: results.append(run_add(KernelCache(cache_dir), context, queue, 6)))
    assert results == [True] and moved["kernels_compiled"] == 1 and moved["cache_disk_writes"] == 1
    (message,) = cache_warnings(record)
    assert key[:12] in message and reason in message
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        healed = counted(lambda: results.append(run_add(KernelCache(cache_dir), context, queue, 6)))
    assert results == [True, True] and healed["cache_disk_hits"] == 1


def test_a_directory_that_cannot_be_created_gives_a_memory_only_cache(tmp_path, context, queue):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.warns(CacheDirectoryWarning) as record:
        cache = KernelCache(blocker / "cache")
    assert len(cache_warnings(record)) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert run_add(cache, context, queue, 7) and run_add(cache, context, queue, 8)
        moved = counted(lambda: run_add(cache, context, queue, 7))
    assert moved["cache_memory_hits"] == 1
    assert cache.entries() == [] and cache.info()["on_disk"] is False and cache.clear() == 0


class FailingWrites:
    """A connection whose writes fail as a full disk or a read-only file would."""

    def __init__(self, db: sqlite3.Connection, failure: str):
        self.db, self.failure = db, failure

    def execute(self, sql: str, *arguments):
        if not sql.startswith("SELECT"):
            raise sqlite3.OperationalError(self.failure)
        return self.db.execute(sql, *arguments)

    def close(self) -> None:
        self.db.close()


@pytest.mark.parametrize("failure", ["database or disk is full", "attempt to write a readonly database"])
def test_a_store_that_fails_to_write_turns_memory_only_with_one_warning(cache_dir, context, queue, failure):
    cache = KernelCache(cache_dir)
    cache._store._connection = FailingWrites(cache._store._connection, failure)
    with pytest.warns(CacheDirectoryWarning, match=failure) as record:
        assert run_add(cache, context, queue, 9) and run_add(cache, context, queue, 10)
    assert len(cache_warnings(record)) == 1
    assert cache.info()["on_disk"] is False and run_add(cache, context, queue, 9)


def test_a_store_that_cannot_be_written_is_read_from(cache_dir, context, queue, monkeypatch):
    """What a read-only filesystem does (as root, permissions cannot show it): the writable open fails, so the
    store opens the filled database with mode=ro, serves its entries and keeps new programs in memory."""
    stored_entry(cache_dir, context, queue, 11)
    writable_connect = disk_store._connect

    def read_only_filesystem(path, read_only_mode=None):
        if read_only_mode is None:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return writable_connect(path, read_only_mode)
    monkeypatch.setattr(disk_store, "_connect", read_only_filesystem)
    with pytest.warns(CacheWarning, match="reading compiled kernels") as record:
        cache = KernelCache(cache_dir)
        moved = counted(lambda: (run_add(cache, context, queue, 11), run_add(cache, context, queue, 12)))
    assert len(cache_warnings(record)) == 1
    assert moved["cache_disk_hits"] == 1 and moved["kernels_compiled"] == 1 and moved["cache_disk_writes"] == 0
    assert cache.info()["read_only"] is True and [entry["kernel"] for entry in cache.entries()] == ["add_11"]


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) to mount a read-only filesystem")
def test_a_filled_cache_on_a_read_only_filesystem_is_read(cache_dir, context, queue):
    stored_entry(cache_dir, context, queue, 11)
    environment = worker_env(cache_dir)
    script = (f"mount --bind {cache_dir} {cache_dir} && mount -o remount,ro,bind {cache_dir} && "
              f"exec {sys.executable} {WORKER} build 11 12")
    finished = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=environment, capture_output=True,
                              text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    report = json.loads(finished.stdout)
    assert report["correct"] == [True, True]
    assert report["stats"]["cache_disk_hits"] == 1 and report["stats"]["kernels_compiled"] == 1
    (warning,) = report["warnings"]
    assert "read-only file system" in warning, warning


# -- inspection and maintenance ---------------------------------------------------------------------

def test_entry_finds_a_unique_prefix_and_names_unknown_and_ambiguous_ones(cache_dir, context, queue):
    original = stored_entry(cache_dir, context, queue, 0)
    cache = KernelCache(cache_dir)
    keys = [original] + [store_variant(cache, original, components={"options": f"-DV={n}"}) for n in range(20)]
    prefix = next(key[:1] for key in keys if sum(other.startswith(key[:1]) for other in keys) > 1)
    with pytest.raises(KeyError, match="ambiguous"):
        cache.entry(prefix)
    with pytest.raises(KeyError, match="no cache entry"):
        cache.entry("not-a-key")
    assert cache.entry(original[:12].upper())["key"] == original


def test_clear_removes_all_or_by_device_and_age(cache_dir, context, queue):
    original = stored_entry(cache_dir, context, queue, 0)
    cache = KernelCache(cache_dir)
    old = store_variant(cache, original, components={"options": "-DOLD"}, last_used=time.time() - 8 * 86400)
    other = store_variant(cache, original, components={"device": "Imaginary GPU 9000"})
    assert cache.clear(older_than_seconds=7 * 86400) == 1
    assert cache.clear(device="imaginary gpu") == 1
    assert {entry["key"] for entry in cache.entries()} == {original} and old != other
    assert cache.clear() == 1 and cache.entries() == []


def test_prune_removes_what_this_version_and_these_devices_cannot_use(cache_dir, context, queue):
    original = stored_entry(cache_dir, context, queue, 0)
    cache = KernelCache(cache_dir)
    for components in ({"zyx_version": "0.0.1"}, {"format": "0"}, {"device": "Imaginary GPU 9000"},
                       {"driver_version": "0.1-imaginary"}):
        store_variant(cache, original, components=components)
    usable = store_variant(cache, original, components={"options": "-DSTILL_USABLE"})
    garbled = store_variant(cache, original, components={"options": "-DGARBLED"})
    set_row(cache._store, garbled, meta="{not json")
    assert cache.prune() == 5
    assert {entry["key"] for entry in cache.entries()} == {original, usable}
    assert [row.key for row in cache._store.rows()] == [original, usable]


def test_info_counts_entries_per_device_and_version(cache_dir, context, queue, device):
    original = stored_entry(cache_dir, context, queue, 0)
    cache = KernelCache(cache_dir)
    store_variant(cache, original, components={"device": "Imaginary GPU 9000", "zyx_version": "0.0.1"})
    info = cache.info()
    assert info["directory"] == str(cache_dir) and info["entries"] == 2 and info["on_disk"] is True
    assert 0 < info["bytes"] <= info["size_limit"] == DEFAULT_SIZE_LIMIT
    assert info["by_device"] == {device.name.strip(): 1, "Imaginary GPU 9000": 1}
    assert info["by_zyx_version"] == {cache_key_module.zyx_version(): 1, "0.0.1": 1}


def test_listing_does_not_refresh_least_recently_used_order(cache_dir, context, queue):
    original = stored_entry(cache_dir, context, queue, 0)
    cache = KernelCache(cache_dir)
    before = cache._store.rows()
    cache.entries(), cache.info(), cache.entry(original), cache.prune()
    assert cache._store.rows() == before


# -- debug output -----------------------------------------------------------------------------------

def test_zyx_debug_prints_one_line_per_compiled_or_loaded_program(cache_dir, context, queue, monkeypatch, capsys):
    monkeypatch.setenv("ZYX_DEBUG", "1")
    cache = KernelCache(cache_dir)
    run_add(cache, context, queue, 13)
    run_add(cache, context, queue, 13)  # from memory: nothing to say
    run_add(KernelCache(cache_dir), context, queue, 13)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"zyx.cache: compiled add_13 in \d+\.\d ms \(key [0-9a-f]{12}\)", lines[0])
    assert re.fullmatch(r"zyx.cache: loaded add_13 from the cache in \d+\.\d ms \(key [0-9a-f]{12}\)", lines[1])
    monkeypatch.delenv("ZYX_DEBUG")
    run_add(KernelCache(cache_dir), context, queue, 13)
    assert capsys.readouterr().err == ""


def test_zyx_debug_cache_names_the_components_that_differ(cache_dir, context, queue, monkeypatch, capsys):
    monkeypatch.setenv("ZYX_DEBUG_CACHE", "1")
    original = stored_entry(cache_dir, context, queue, 14)
    assert "no entry holds this source" in capsys.readouterr().err
    run_add(KernelCache(cache_dir), context, queue, 14, ("-cl-fast-relaxed-math",))
    explained = capsys.readouterr().err
    assert f"nearest entry {original[:12]} differs in options ('-cl-fast-relaxed-math' here, '' stored)" in explained


@pytest.mark.parametrize("pending", [True, False])
def test_the_exit_says_so_only_while_the_helper_still_stores_binaries(tmp_path, monkeypatch, pending):
    """The exit's wait for the helper (a cold run's last seconds on PoCL) runs inside progress.storing() only
    when the helper has jobs left; either way the helper is stopped within the writer's budget."""
    cache = KernelCache(tmp_path / "cache")
    shown, stopped = [], []

    class Helper:
        def wait(self, timeout=None):
            return not pending

        def stop(self, deadline):
            stopped.append((deadline, bool(shown)))

    class Storing:
        def __enter__(self):
            shown.append(True)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(cache, "_helper", Helper())
    monkeypatch.setattr(cache_module.progress, "storing", Storing)
    cache._stop_helper(100.0)
    assert stopped == [(100.0 + cache._exit_wait_seconds(), pending)]
