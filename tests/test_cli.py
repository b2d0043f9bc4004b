"""The `zyx` command line, driven as a user would: `python -m zyx ...` in a subprocess on a scratch cache."""
from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zyx.cli import CliError, parse_duration

REPOSITORY = Path(__file__).resolve().parents[1]
WORKER = REPOSITORY / "tests" / "jit" / "cache_worker.py"
IMAGINARY = "Imaginary GPU 9000"


def environment(cache_dir: Path) -> dict[str, str]:
    variables = {**os.environ, "ZYX_CACHE_DIR": str(cache_dir)}
    variables["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), variables.get("PYTHONPATH")]))
    return variables


def zyx(cache_dir: Path, *arguments: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zyx", *arguments], env=environment(cache_dir), cwd=REPOSITORY,
                          capture_output=True, text=True, timeout=60, **options)


def listed(cache_dir: Path, *arguments: str) -> list[dict]:
    finished = zyx(cache_dir, "cache", "ls", "--json", *arguments)
    assert finished.returncode == 0, finished.stderr
    return json.loads(finished.stdout)


def assert_one_line_error(finished: subprocess.CompletedProcess, status: int, *fragments: str) -> None:
    assert finished.returncode == status and finished.stdout == ""
    assert len(finished.stderr.splitlines()) == 1 and finished.stderr.startswith("zyx: error: ")
    assert all(fragment in finished.stderr for fragment in fragments), finished.stderr


@pytest.fixture(scope="module")
def populated(tmp_path_factory) -> tuple[Path, dict]:
    """A cache holding add_0, variants of it that prune and filters should catch, and two keys with one prefix."""
    directory = tmp_path_factory.mktemp("template") / "cache"
    variants = [
        {"components": {"device": IMAGINARY}, "kernel_names": ["add_far_away"], "hits": 5},
        {"components": {"zyx_version": "0.0.1"}, "last_used": time.time() - 10 * 86400},
        {"components": {"format": "0"}, "binary_size": 10 ** 9},
    ]
    finished = subprocess.run([sys.executable, str(WORKER), "populate", json.dumps(variants)],
                              env=environment(directory), capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    return directory, json.loads(finished.stdout)


@pytest.fixture
def cache(populated, tmp_path) -> tuple[Path, dict]:
    """A private copy of the populated cache, so that a test may remove entries."""
    template, keys = populated
    shutil.copytree(template, tmp_path / "cache")
    return tmp_path / "cache", keys


def test_ls_prints_one_row_per_entry(cache):
    directory, keys = cache
    finished = zyx(directory, "cache", "ls")
    assert finished.returncode == 0, finished.stderr
    header, *rows = finished.stdout.splitlines()
    assert header.split() == ["KEY", "KERNEL", "DEVICE", "SIZE", "COMPILE", "HITS", "LAST", "USED"]
    assert len(rows) == 6
    every_key = [keys["original"], *keys["variants"], *keys["twins"]]
    assert {row.split()[0] for row in rows} == {key[:12] for key in every_key}
    far_away = next(row for row in rows if row.startswith(keys["variants"][0][:12]))
    assert "add_far_away" in far_away and IMAGINARY in far_away and " KiB " in far_away and " ms " in far_away


def test_ls_filters_by_device_and_sorts(cache):
    directory, keys = cache
    assert [entry["key"] for entry in listed(directory, "--device", "imaginary")] == [keys["variants"][0]]
    assert listed(directory, "--sort", "hits")[0]["hits"] == 5
    assert listed(directory, "--sort", "size")[0]["key"] == keys["variants"][2]
    assert listed(directory, "--sort", "name")[0]["kernel"] == "add_0"
    by_time = [entry["last_used"] for entry in listed(directory)]
    assert by_time == sorted(by_time, reverse=True)
    compile_times = [entry["compile_seconds"] for entry in listed(directory, "--sort", "compile")]
    assert compile_times == sorted(compile_times, reverse=True)


def test_show_prints_components_metadata_and_source(cache):
    directory, keys = cache
    finished = zyx(directory, "cache", "show", keys["original"][:8])
    assert finished.returncode == 0, finished.stderr
    for fragment in (keys["original"], "source_hash", "driver_version", "zyx_version", "checksum", "hits",
                     "__kernel void add_0"):
        assert fragment in finished.stdout


def test_show_rejects_unknown_and_ambiguous_keys(cache):
    directory, keys = cache
    assert_one_line_error(zyx(directory, "cache", "show", "nothing-like-it"), 1, "no cache entry")
    assert_one_line_error(zyx(directory, "cache", "show", keys["twins"][0][:2]), 1, "ambiguous")


def test_info_counts_per_device_and_version(cache):
    directory, keys = cache
    finished = zyx(directory, "cache", "info")
    assert finished.returncode == 0, finished.stderr
    assert f"directory   {directory}" in finished.stdout and "entries     6" in finished.stdout
    assert "of 1.0 GiB" in finished.stdout and IMAGINARY in finished.stdout and "0.0.1" in finished.stdout
    info = json.loads(zyx(directory, "cache", "info", "--json").stdout)
    assert info["entries"] == 6 and info["by_device"][IMAGINARY] == 1 and info["by_zyx_version"]["0.0.1"] == 1
    assert sum(info["by_device"].values()) == 6 and info["size_limit"] == 1 << 30


def test_clear_by_age_and_device(cache):
    directory, keys = cache
    finished = zyx(directory, "cache", "clear", "--older-than", "7d", "--yes")
    assert finished.returncode == 0 and "removed 1 entries" in finished.stdout
    assert zyx(directory, "cache", "clear", "--device", "IMAGINARY", "--yes").stdout.strip() == "removed 1 entries"
    remaining = {entry["key"] for entry in listed(directory)}
    assert keys["variants"][0] not in remaining and keys["variants"][1] not in remaining and len(remaining) == 4


def test_clear_without_a_terminal_removes_everything_without_asking(cache):
    directory, _ = cache
    finished = zyx(directory, "cache", "clear", stdin=subprocess.DEVNULL)
    assert finished.returncode == 0 and "removed 6 entries" in finished.stdout
    assert listed(directory) == []


@pytest.mark.parametrize("answer, status, remaining", [(b"n\n", 1, 6), (b"y\n", 0, 0)])
def test_clear_on_a_terminal_asks_first(cache, answer, status, remaining):
    directory, _ = cache
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer)
        finished = zyx(directory, "cache", "clear", stdin=terminal)
    finally:
        os.close(terminal)
        os.close(controller)
    assert finished.returncode == status, finished.stderr
    assert "Remove 6 cache entries" in finished.stdout
    assert len(listed(directory)) == remaining


def test_clear_rejects_a_bad_duration(cache):
    directory, _ = cache
    for duration in ("7x", "seven days", "-1d"):
        assert_one_line_error(zyx(directory, "cache", "clear", f"--older-than={duration}", "--yes"), 2, "duration")
    assert len(listed(directory)) == 6


@pytest.mark.parametrize("text, seconds", [("90", 90), ("30s", 30), ("15m", 900), ("12h", 43200), ("7d", 604800),
                                           ("2w", 1209600), ("1.5h", 5400)])
def test_durations_accept_units(text, seconds):
    assert parse_duration(text) == seconds


def test_parse_duration_names_the_bad_text():
    with pytest.raises(CliError, match="'soon'"):
        parse_duration("soon")


def test_prune_removes_other_versions_formats_and_absent_devices(cache):
    directory, keys = cache
    finished = zyx(directory, "cache", "prune")
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.startswith("removed 3 entries")
    assert {entry["key"] for entry in listed(directory)} == {keys["original"], *keys["twins"]}


def test_devices_lists_every_platform_and_device(tmp_path):
    platforms = pytest.importorskip("zyx.runtime.platforms")
    described = platforms.describe_devices()
    finished = zyx(tmp_path / "cache", "devices")
    assert finished.returncode == 0, finished.stderr
    for row in described:
        assert f"platform {row['platform_index']}: {row['platform']}" in finished.stdout
        assert row["device"] in finished.stdout and row["driver_version"] in finished.stdout
    as_json = json.loads(zyx(tmp_path / "cache", "devices", "--json").stdout)
    assert [(row["platform"], row["device"]) for row in as_json] == [(row["platform"], row["device"]) for row in described]
    # PoCL reports global memory from what the machine has free, so only its kind is the same between processes
    assert all(isinstance(row["global_mem_bytes"], int) and row["global_mem_bytes"] > 0 for row in as_json)


def test_an_unusable_cache_directory_is_one_error_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert_one_line_error(zyx(blocker / "cache", "cache", "ls"), 1, "cannot open", str(blocker / "cache"))


def test_usage_errors_are_one_line(tmp_path):
    assert_one_line_error(zyx(tmp_path, "cache", "ls", "--sort", "colour"), 2, "--sort")
    assert_one_line_error(zyx(tmp_path), 2, "COMMAND")
    assert_one_line_error(zyx(tmp_path, "cache", "show"), 2, "KEY")


def test_clear_also_removes_scheduled_programs_and_the_next_run_compiles_again(tmp_path):
    script = ("import numpy as np, zyx; x = zyx.OpenCL().tensor(np.arange(6, dtype=np.float32)); "
              "print(((x * 2).exp().sum()).item(), zyx.stats()['kernels_compiled'], zyx.stats()['graphs_scheduled'])")

    def run():
        finished = subprocess.run([sys.executable, "-c", script], env=environment(tmp_path), capture_output=True,
                                  text=True, timeout=120)
        assert finished.returncode == 0, finished.stderr
        value, compiled, scheduled = finished.stdout.split()
        return float(value), int(compiled), int(scheduled)

    first = run()
    assert first[1] >= 1 and first[2] >= 1
    assert run()[1:] == (0, 0)
    assert len(listed(tmp_path)) >= 1
    cleared = zyx(tmp_path, "cache", "clear", "--yes")
    assert cleared.returncode == 0 and "scheduled programs" in cleared.stdout
    assert listed(tmp_path) == []
    again = run()
    assert again[1:] == first[1:] and again[0] == pytest.approx(first[0])
