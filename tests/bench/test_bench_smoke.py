"""The benchmark scripts run end to end on tiny inputs and print one table (speed is not checked here)."""
import json
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # each benchmark script starts a process and compiles

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"


def _run(script: str, *args: str, tmp_path: pathlib.Path) -> tuple[str, dict]:
    out = tmp_path / "result.json"
    finished = subprocess.run(
        [sys.executable, str(BENCH / script), "--repeat", "1", "--warmup", "1", "--json", str(out), *args],
        capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished.stdout, json.loads(out.read_text())


def test_elementwise_prints_a_row_per_implementation(tmp_path):
    stdout, result = _run("elementwise.py", "--size", "64", "--vectors", "4", "--only", "numpy,opencl,zyx",
                          tmp_path=tmp_path)
    assert "| workload | implementation | median |" in stdout
    rows = {(r["workload"], r["implementation"]): r for r in result["results"]}
    assert set(rows) == {(w, i) for w in ("W1a", "W1b") for i in ("numpy", "opencl", "zyx")}
    for workload in ("W1a", "W1b"):
        numpy_row = rows[(workload, "numpy")]
        assert numpy_row["median_s"] > 0 and numpy_row["unit"] == "GB/s" and numpy_row["ratio"] is not None
        for implementation in ("opencl", "zyx"):  # either measured and correct, or skipped with a reason
            row = rows[(workload, implementation)]
            assert "MISMATCH" not in row["note"]
            assert row["median_s"] is not None or row["note"].startswith("skipped: ")


def test_matmul_counts_flops(tmp_path):
    pytest.importorskip("numpy")
    stdout, result = _run("matmul.py", "--only", "numpy", tmp_path=tmp_path)
    rows = result["results"]
    assert [r["workload"] for r in rows] == ["W3 1024³", "W3 2048³"]
    assert all(r["unit"] == "GFLOP/s" and r["throughput"] > 0 for r in rows)


def test_attention_training_reports_memory_and_the_gradient_error(tmp_path):
    """A2 (--train): fused and unfused steps, each with its peak memory growth and dV's error against numpy."""
    _, result = _run("attention.py", "--train", "--contexts", "40", "--heads", "1", "--head-dim", "8",
                     "--only", "zyx-staged,zyx-unfused", tmp_path=tmp_path)
    rows = {r["implementation"]: r for r in result["results"]}
    assert set(rows) == {"zyx-staged", "zyx-unfused"} and all(r["workload"] == "A2 T=40" for r in rows.values())
    for row in rows.values():
        assert row["extra"]["first_head_error"] < 1e-4 and row["extra"]["grown_bytes"] > 0
    assert rows["zyx-staged"]["extra"]["kernels"] < rows["zyx-unfused"]["extra"]["kernels"]


def test_attention_backward_variants_are_timed_per_kernel_and_checked_against_torch(tmp_path):
    """A2 with --backward: zyx-staged once per variant, each with its kernels' time per step and its output and
    gradients within the tolerance of torch's (float64)."""
    _, result = _run("attention.py", "--train", "--contexts", "37", "--heads", "2", "--head-dim", "8",
                     "--only", "zyx-staged", "--backward", "default,split-two-pass", "--calls", "2", "--check-torch",
                     tmp_path=tmp_path)
    rows = {r["implementation"]: r for r in result["results"]}
    assert set(rows) == {"zyx-staged", "zyx-staged/split-two-pass"}
    for row in rows.values():
        assert "PASS against torch" in row["note"], row["note"]
        assert set(row["extra"]["torch_errors"]) == {"out", "dq", "dk", "dv"}
        assert row["extra"]["kernel_table"] and all(k["ms"] > 0 for k in row["extra"]["kernel_table"])


@pytest.mark.long  # (36 s: attention under autocast is checked against torch in tests/jit/test_attention_autocast.py)
def test_attention_under_autocast_is_checked_against_torch_in_its_tolerance(tmp_path):
    """A2 under --autocast bfloat16: the fused step (fewer kernels) and the unfused one, each within the bfloat16
    tolerance of torch's (float64) output and gradients."""
    _, result = _run("attention.py", "--train", "--contexts", "37", "--heads", "2", "--head-dim", "8",
                     "--only", "zyx-staged,zyx-unfused", "--autocast", "bfloat16", "--check-torch",
                     tmp_path=tmp_path)
    rows = {r["implementation"]: r for r in result["results"]}
    assert set(rows) == {"zyx-staged", "zyx-unfused"}
    for row in rows.values():
        assert "PASS against torch" in row["note"], row["note"]
    assert rows["zyx-staged"]["extra"]["kernels"] < rows["zyx-unfused"]["extra"]["kernels"]


def test_list_devices_exits_cleanly():
    finished = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--list-devices"],
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-3000:]


def test_torch_backend_compares_w3_w4_w6_with_torch_eager(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "torch.json"
    finished = subprocess.run([sys.executable, "-m", "bench.torch_backend", "--device", "cpu", "--quick",
                               "--repeat", "1", "--steps", "1", "--json", str(out)],
                              cwd=BENCH.parent, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "| workload | zyx.Torch | torch eager |" in finished.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["workload"] for r in rows] == ["W3 256³", "W3 256³ jit", "W3 512³", "W3 512³ jit", "W4 SGD", "W6 SGD",
                                             "W4 Adam", "W6 Adam"]
    assert all(r["zyx"] > 0 and r["torch"] > 0 and "MISMATCH" not in r["note"] for r in rows)
def test_host_time_reports_microseconds_launches_and_the_floor(tmp_path):
    stdout, result = _run("host_time.py", "--calls", "3", tmp_path=tmp_path)
    rows = {(r["workload"], r["implementation"]): r for r in result["results"]}
    workloads = ["H1 realize, cached 20-node structure", "H3 (x @ y).realize() un-jitted, 64×64, cached program",
                 "H2 jitted replay, W4 step (SGD)", "H2 jitted replay, W4 step (Adam)"]
    assert set(rows) == {(w, i) for w in workloads for i in ("zyx", "opencl")}
    for workload in workloads:
        zyx_row, floor = rows[(workload, "zyx")], rows[(workload, "opencl")]
        assert zyx_row["extra"]["python_us"] > 0 and zyx_row["extra"]["wall_us"] > 0
        assert zyx_row["extra"]["launches_per_call"] == floor["extra"]["launches_per_call"] >= 1
    assert rows[(workloads[0], "zyx")]["extra"]["launches_per_call"] == 1  # the 20 nodes fuse into one kernel


def test_rows_times_each_row_workload_against_torch_on_the_cpu():
    finished = subprocess.run([sys.executable, str(BENCH / "rows.py"), "--repeat", "1", "--rows", "8", "--cols", "64",
                               "--torch", "cpu"], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    lines = [line for line in finished.stdout.splitlines() if line[:2] in {f"R{i}" for i in range(6)}]
    assert [line.split()[0] for line in lines] == [f"R{i}" for i in range(6)]  # values checked against torch's
    assert all(" GB/s (" in line and "x zyx's speed)" in line for line in lines)


def test_wgpu_variants_times_every_shape_and_reports_nan_kept_where_zyx_prints_it():
    webgpu = pytest.importorskip("zyx.runtime.webgpu")
    pytest.importorskip("wgpu")
    if not webgpu.adapters():
        pytest.skip("no WebGPU adapter on this machine")
    finished = subprocess.run([sys.executable, str(BENCH / "wgpu_variants.py"), "--size", "64", "--repeat", "2"],
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    lines = finished.stdout.splitlines()
    assert "WRONG VALUES" not in finished.stdout and sum(" GB/s" in line for line in lines) >= 4
    assert [line.split()[1:3] for line in lines if "both (zyx's WGSL now)" in line] == [["NaN", "kept"]] * 2
    assert "  all ok" in lines


def test_train_step_runs_the_jitted_step_on_wgpu_beside_opencl(tmp_path):
    webgpu = pytest.importorskip("zyx.runtime.webgpu")
    pytest.importorskip("wgpu")
    if not webgpu.adapters():
        pytest.skip("no WebGPU adapter on this machine")
    _, result = _run("train_step.py", "--only", "zyx,zyx-wgpu", "--train-sizes", "16,16,10", "--train-batch", "8",
                     "--train-steps", "2", tmp_path=tmp_path)
    rows = {(r["workload"], r["implementation"]): r for r in result["results"]}
    for optimizer in ("SGD", "Adam"):  # both ran (their warm-up losses checked against numpy's)
        assert rows[(f"W4 {optimizer}", "zyx-wgpu")]["median_s"] > 0
        assert rows[(f"W4 {optimizer}", "zyx")]["median_s"] > 0


def test_w7_products_checks_the_gradients_and_times_each_kernel():
    finished = subprocess.run([sys.executable, str(BENCH / "w7_products.py"), "--size", "cpu", "--repeat", "1",
                               "--only", "attention"], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    checks = [line for line in finished.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(checks) == 8 and all(line.startswith("PASS") for line in checks), finished.stdout
    assert "attention: zyx " in finished.stdout and "attention products: zyx " in finished.stdout


def test_interleaved_blocks_start_warm_after_their_pause(monkeypatch):
    """Each block of timed runs follows untimed runs for at least INTERLEAVE_WARM_S after its pause (cores woken
    from the pause run slowly for a while): with runs of 20 ms (on a fake clock) and 50 ms of warming, 3 untimed
    runs a block."""
    import argparse
    import types
    import numpy as np
    sys.path.insert(0, str(BENCH))
    import _harness
    clock, calls = [0.0], []
    monkeypatch.setattr(_harness, "time", types.SimpleNamespace(perf_counter=lambda: clock[0], sleep=lambda _: None))

    def run():
        calls.append(clock[0])
        clock[0] += 0.02
    case = _harness.Case(run=run, result=lambda: np.zeros(1))
    workload = _harness.Workload("W0", "a run of 20 ms", {}, lambda: np.zeros(1), "GB/s", 1.0)
    args = argparse.Namespace(repeat=4, warmup=1, only="")
    records = _harness.measure_interleaved(workload, {"zyx": lambda _: case}, args, np.zeros(1), block=2, warm_s=0.05)
    assert len(calls) == 1 + 2 * (3 + 2)  # set up, then two blocks of 3 untimed and 2 timed runs
    assert records[0].runs_s == pytest.approx([0.02] * 4)


def test_tensor_cores_times_a_batched_product_and_refuses_batches_of_a_transposed_left_operand():
    """bench/tensor_cores.py's `--batch`: the left operand's rows as batches (a linear layer on [B, n / B, k], as
    W7's products); where the device has no tensor cores it still times zyx's product (torch: no CUDA here)."""
    script = str(BENCH / "tensor_cores.py")
    finished = subprocess.run([sys.executable, script, "--dtypes", "bfloat16", "--sizes", "", "--shapes", "64x32x48",
                               "--transposed", "--batch", "4", "--repeat", "1"], capture_output=True, text=True,
                              timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "64x32x48 a@b.T in 4 batches: zyx" in finished.stdout and "TFLOP/s" in finished.stdout
    refused = subprocess.run([sys.executable, script, "--left-transposed", "--batch", "4"], capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode != 0 and "--batch" in refused.stderr
