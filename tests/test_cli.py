"""The `zyx` command line, driven as a user would: `python -m zyx ...` in a subprocess on a scratch cache."""
from __future__ import annotations

import functools
import json
import os
import re
import pty
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zyx.cli import CliError, parse_duration, print_table

REPOSITORY = Path(__file__).resolve().parents[1]
WORKER = REPOSITORY / "tests" / "jit" / "cache_worker.py"
IMAGINARY = "Imaginary GPU 9000"


def environment(cache_dir: Path) -> dict[str, str]:
    variables = {**os.environ, "ZYX_CACHE_DIR": str(cache_dir)}
    variables["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), variables.get("PYTHONPATH")]))
    return variables


def zyx(cache_dir: Path, *arguments: str, **options) -> subprocess.CompletedProcess:
    options.setdefault("env", environment(cache_dir))
    return subprocess.run([sys.executable, "-m", "zyx", *arguments], cwd=REPOSITORY, capture_output=True, text=True,
                          timeout=60, **options)


@pytest.fixture(scope="session")
def devices(tmp_path_factory):
    """What `zyx devices ARGUMENTS` prints (ZYX_DEVICE set to `zyx_device` where given), each run once a test
    process: a run imports torch and wgpu and opens every driver (7 s here), and the listing does not change."""
    cache_dir = tmp_path_factory.mktemp("devices") / "cache"

    @functools.lru_cache(maxsize=None)
    def printed(*arguments: str, zyx_device: str = "") -> str:
        env = {**environment(cache_dir), **({"ZYX_DEVICE": zyx_device} if zyx_device else {})}
        finished = zyx(cache_dir, "devices", *arguments, env=env)
        assert finished.returncode == 0, finished.stderr
        return finished.stdout
    return printed


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
    assert "add_far_away" in far_away and IMAGINARY in far_away
    assert re.search(r" \d+(\.\d+)? (ms|s) ", far_away), far_away  # the compile time (seconds on a loaded machine)
    assert re.search(r" \d+(\.\d+)? (B|KiB|MiB) ", far_away), far_away  # NVIDIA's binaries are under 1 KiB


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


def test_clear_without_a_terminal_refuses_unless_told_yes(cache):
    directory, _ = cache
    assert_one_line_error(zyx(directory, "cache", "clear", stdin=subprocess.DEVNULL), 2, "--yes", "not a terminal")
    assert len(listed(directory)) == 6
    finished = zyx(directory, "cache", "clear", "--yes", stdin=subprocess.DEVNULL)
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


def test_devices_lists_every_platform_and_device(devices):
    platforms = pytest.importorskip("zyx.runtime.platforms")
    described = platforms.describe_devices()
    table = devices()
    for row in described:
        assert f"platform {row['platform_index']}: {row['platform']}" in table
        assert row["device"] in table and row["driver_version"] in table
    as_json = [row for row in json.loads(devices("--json")) if row["kind"] == "opencl"]
    assert [(row["platform"], row["device"]) for row in as_json] == [(row["platform"], row["device"]) for row in described]
    # PoCL reports global memory from what the machine has free, so only its kind is the same between processes
    assert all(isinstance(row["global_mem_bytes"], int) and row["global_mem_bytes"] > 0 for row in as_json)


def test_devices_lists_torch_and_marks_the_one_zyx_device_names(devices):
    pytest.importorskip("torch")
    rows = json.loads(devices("--json"))
    torch_rows = [row for row in rows if row["kind"] == "torch"]
    assert torch_rows[0]["spec"] == "torch:cpu" and not any(row["default"] for row in torch_rows)
    marked = json.loads(devices("--json", zyx_device="torch:cpu"))
    assert [row["spec"] for row in marked if row["default"]] == ["torch:cpu"]
    table = devices(zyx_device="torch:cpu")
    assert [line.split()[1] for line in table.splitlines() if line.startswith("  *")] == ["torch:cpu"]
    assert "* the device ZYX_DEVICE names" in table


def test_an_unusable_cache_directory_is_one_error_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert_one_line_error(zyx(blocker / "cache", "cache", "ls"), 1, "cannot open", str(blocker / "cache"))


def test_usage_errors_are_one_line(tmp_path):
    assert_one_line_error(zyx(tmp_path, "cache", "ls", "--sort", "colour"), 2, "--sort")
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


# -- day one: help, version, widths, pipes, empty and missing caches, kernel names, the default device ----------

def test_no_arguments_print_help_and_succeed(tmp_path):
    for arguments, fragment in (((), "COMMAND"), (("cache",), "ACTION")):
        finished = zyx(tmp_path, *arguments)
        assert finished.returncode == 0 and finished.stderr == ""
        assert finished.stdout.startswith("usage: zyx") and fragment in finished.stdout


def test_version_is_the_package_version(tmp_path):
    import zyx as package
    finished = zyx(tmp_path, "--version")
    assert finished.returncode == 0 and finished.stdout.strip() == f"zyx {package.__version__}"


def test_help_imports_neither_numpy_nor_pyopencl_nor_rich(tmp_path):
    script = ("import sys, contextlib, io, zyx.cli\n"
              "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
              "    zyx.cli.main(['cache', 'ls', '--help'])\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'pyopencl', 'rich', 'sqlite3')))")
    finished = subprocess.run([sys.executable, "-c", script], env=environment(tmp_path), capture_output=True,
                              text=True, timeout=60)
    assert finished.returncode == 0 and finished.stdout.strip() == "[]", finished.stderr


def test_tables_fit_the_terminal_and_cut_the_kernel_column(monkeypatch, capsys):
    rows = [("1a2b3c4d5e6f", "e_" + "0123456789abcdef" * 44, "pthread-haswell-AMD EPYC", "61.0 KiB")]
    monkeypatch.setenv("COLUMNS", "80")
    print_table(("KEY", "KERNEL", "DEVICE", "SIZE"), rows, shrink=(1, 2))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(len(line) <= 80 for line in lines)
    assert lines[1].startswith("1a2b3c4d5e6f  e_0123") and "…  pthread-haswell-AMD EPYC  61.0 KiB" in lines[1]
    monkeypatch.delenv("COLUMNS")  # piped (as under pytest): every character stays, for grep
    print_table(("KEY", "KERNEL", "DEVICE", "SIZE"), rows, shrink=(1, 2))
    assert rows[0][1] in capsys.readouterr().out


def test_ls_fits_a_narrow_terminal(cache):
    directory, _ = cache
    finished = zyx(directory, "cache", "ls", env={**environment(directory), "COLUMNS": "64"})
    assert finished.returncode == 0, finished.stderr
    assert all(len(line) <= 64 for line in finished.stdout.splitlines()) and "…" in finished.stdout


def test_json_into_a_closed_pipe_exits_quietly(cache):
    directory, _ = cache
    reader, writer = os.pipe()
    os.close(reader)  # like `| head` that has read all it wanted
    try:
        finished = subprocess.run([sys.executable, "-m", "zyx", "cache", "ls", "--json"], env=environment(directory),
                                  stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(writer)
    assert finished.returncode == 128 + 13 and finished.stderr == "", finished.stderr


def test_an_empty_cache_says_so(tmp_path):
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    finished = zyx(directory, "cache", "ls")
    assert finished.returncode == 0 and finished.stdout == "" and "kernel cache is empty" in finished.stderr
    assert json.loads(zyx(directory, "cache", "ls", "--json").stdout) == []


def test_inspecting_a_missing_cache_does_not_create_it(tmp_path):
    directory = tmp_path / "never-made"
    info = zyx(directory, "cache", "info")
    assert info.returncode == 0 and "does not exist" in info.stdout, info.stderr
    assert json.loads(zyx(directory, "cache", "info", "--json").stdout)["exists"] is False
    assert "kernel cache is empty" in zyx(directory, "cache", "ls").stderr
    assert_one_line_error(zyx(directory, "cache", "show", "add_0"), 1, "empty")
    assert zyx(directory, "cache", "clear", "--yes").returncode == 0
    assert not directory.exists()


def test_show_accepts_a_kernel_name_as_zyx_debug_prints_it(cache):
    directory, keys = cache
    finished = zyx(directory, "cache", "show", "add_far_away")
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.startswith(f"key         {keys['variants'][0]}")
    shared = zyx(directory, "cache", "show", "add_0")  # the original and two variants hold add_0
    assert shared.returncode == 0 and "add_0 is in" in shared.stderr and "showing the most recently used" in shared.stderr
    assert_one_line_error(zyx(directory, "cache", "show", "add_nowhere"), 1, "no cache entry", "'add_nowhere'")


def test_devices_mark_the_default_device(devices):
    platforms = pytest.importorskip("zyx.runtime.platforms")
    default = platforms.default_ordinal()
    rows = [row for row in json.loads(devices("--json")) if row["kind"] == "opencl"]
    assert [row["default"] for row in rows] == [ordinal == default for ordinal in range(len(rows))]
    table = devices()
    marked = [line for line in table.splitlines() if line.startswith("  *")]
    assert len(marked) == 1 and rows[default]["device"] in marked[0] and "zyx.OpenCL() uses" in table
    chosen = devices("--json", zyx_device="opencl:1")
    assert [row["default"] for row in json.loads(chosen)
            if row["kind"] == "opencl"] == [ordinal == 1 for ordinal in range(len(rows))]


def test_devices_list_the_webgpu_adapters_and_mark_the_one_zyx_device_names(devices):
    webgpu = pytest.importorskip("zyx.runtime.webgpu")
    pytest.importorskip("wgpu")
    adapters = webgpu.describe_adapters()
    if not adapters:
        pytest.skip("no WebGPU adapter on this machine")
    listed = json.loads(devices("--json", zyx_device="wgpu:0"))
    rows = [row for row in listed if row["kind"] == "wgpu"]
    assert [row["device"] for row in rows] == [row["device"] for row in adapters]
    assert [row["default"] for row in listed] == [row["kind"] == "wgpu" and row["index"] == 0 for row in listed]
    table = devices()
    assert "WebGPU adapters" in table and adapters[0]["device"] in table


def test_info_counts_and_clear_empties_pocls_own_cache(tmp_path):
    variables = {key: value for key, value in environment(tmp_path).items() if key != "POCL_CACHE_DIR"}
    script = "import zyx; x = zyx.OpenCL().arange(6); print((x * 3 + 1).sum().item())"
    finished = subprocess.run([sys.executable, "-c", script], env=variables, capture_output=True, text=True,
                              timeout=120)
    assert finished.returncode == 0 and finished.stderr == "", finished.stderr
    pocl_files = [path for path in (tmp_path / "pocl").rglob("*") if path.is_file()]
    assert pocl_files, "PoCL did not use the folder inside the zyx cache"
    info = json.loads(zyx(tmp_path, "cache", "info", "--json", env=variables).stdout)
    assert info["pocl_files"] == len(pocl_files) and info["pocl_bytes"] == sum(p.stat().st_size for p in pocl_files)
    cleared = zyx(tmp_path, "cache", "clear", "--yes", env=variables)
    assert f"{len(pocl_files)} PoCL cache files" in cleared.stdout
    assert not any(path.is_file() for path in (tmp_path / "pocl").rglob("*"))
