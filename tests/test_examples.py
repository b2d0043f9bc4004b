"""examples/*.py run in their --short mode, as subprocesses with a fresh kernel cache, and do what they claim."""
from __future__ import annotations

import importlib.util
import os
import pathlib
import pty
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import zyx

pytestmark = pytest.mark.slow  # each example trains on a cold cache: minutes


EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("zyx-cache")


def run_example(name: str, cache_dir: pathlib.Path, *args: str) -> str:
    env = dict(os.environ, ZYX_CACHE_DIR=str(cache_dir))
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def number(pattern: str, text: str) -> float:
    found = re.search(pattern, text, flags=re.M)
    assert found, f"{pattern!r} not in the output:\n{text}"
    return float(found.group(1))


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_trains_saves_and_a_second_run_compiles_nothing(cache_dir, tmp_path):
    checkpoint = tmp_path / "digits.safetensors"
    out = run_example("digits.py", cache_dir, "--short", "--checkpoint", str(checkpoint))
    losses = [float(v) for v in re.findall(r"^epoch \d+/\d+  loss ([\d.]+)", out, flags=re.M)]
    assert len(losses) == 3 and losses[-1] < losses[0], out
    accuracy = number(r"^test accuracy ([\d.]+)%", out)
    assert accuracy > 50, out
    assert number(r"([\d.]+) steps/s, [\d]+ samples/s", out) > 0
    assert re.search(r"^epoch +1/3  8/8  loss [\d.]+  [\d.]+ steps/s  \d+ samples/s", out, re.M), out  # the bar
    assert number(r"kernels_compiled (\d+)", out) > 0

    # the checkpoint loads back into the same model, which scores what the script printed
    digits = load_example("digits")
    cpu = zyx.CPU()
    model = digits.build_model(cpu)
    model.load_state_dict(zyx.load(checkpoint, device=cpu))
    _, _, x_test, y_test = digits.load_data(0)
    predicted = model(cpu.tensor(x_test)).argmax(-1).numpy()
    assert abs(100 * np.mean(predicted == y_test) - accuracy) <= 100 / len(y_test) + 1e-9

    again = run_example("digits.py", cache_dir, "--short", "--checkpoint", str(checkpoint))
    assert number(r"kernels_compiled (\d+)", again) == 0, again
    assert number(r"graphs_scheduled (\d+)", again) == 0, again
    assert number(r"^test accuracy ([\d.]+)%", again) == accuracy


def test_digits_on_wgpu_reaches_the_reference_accuracy(cache_dir, tmp_path):
    """--device wgpu trains on WebGPU (lavapipe here, Vulkan/Metal/DirectX elsewhere) to what the reference device
    reaches, within one test image in a hundred."""
    try:
        zyx.WGPU()
    except (RuntimeError, ImportError) as error:
        pytest.skip(f"no WebGPU adapter: {error}")
    found = {}
    for device in ("wgpu", "cpu"):
        out = run_example("digits.py", cache_dir, "--short", "--device", device, "--checkpoint",
                          str(tmp_path / f"{device}.safetensors"))
        assert f"device: zyx.{'WGPU' if device == 'wgpu' else 'CPU'}(" in out, out
        found[device] = number(r"^test accuracy ([\d.]+)%", out)
    assert abs(found["wgpu"] - found["cpu"]) <= 1.0


@pytest.mark.long  # (two runs on the reference device, 103 s: the digits' autocast tests make the claim in CI)
def test_char_gpt_in_bfloat16_autocast_reaches_the_float32_loss(cache_dir, tmp_path):
    """The last ten steps' loss of the short run in bfloat16 autocast is within 1% of float32's (reference device;
    on an NVIDIA GPU its products run on tensor cores)."""
    def loss(*args: str) -> float:
        out = run_example("char_gpt.py", cache_dir, "--short", "--device", "cpu", "--plot",
                          str(tmp_path / "loss.png"), *args)
        return number(r"^loss: first 10 steps [\d.]+ -> last 10 steps ([\d.]+)", out)

    assert abs(loss("--autocast", "bfloat16") / loss() - 1) <= 0.01


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_digits_under_autocast_reaches_the_float32_accuracy(cache_dir, tmp_path, dtype):
    """Mixed precision (float16 with its loss scaler) trains to within 1% of float32's accuracy, on the reference
    device (on OpenCL the same programs run their products on tensor cores where the GPU has them)."""
    def accuracy(*args: str) -> float:
        out = run_example("digits.py", cache_dir, "--short", "--device", "cpu", "--checkpoint",
                          str(tmp_path / "digits.safetensors"), *args)
        return number(r"^test accuracy ([\d.]+)%", out)

    assert abs(accuracy("--autocast", dtype) - accuracy()) <= 1.0


@pytest.mark.skipif(shutil.which("mpirun") is None or importlib.util.find_spec("mpi4py") is None,
                    reason="needs MPI: apt-get install openmpi-bin libopenmpi-dev; pip install 'zyx[mpi]'")
def test_digits_on_two_ranks_reaches_the_one_process_accuracy(cache_dir, tmp_path):
    """Each rank trains on its half of every batch, gradients averaged inside the jitted step: the run computes
    what one process does, up to the order of float additions, so the accuracies agree."""
    alone = run_example("digits.py", cache_dir, "--short", "--checkpoint", str(tmp_path / "alone.safetensors"))
    command = ["mpirun", "--oversubscribe", "-n", "2", *(["--allow-run-as-root"] if os.geteuid() == 0 else []),
               sys.executable, str(EXAMPLES / "digits.py"), "--short", "--distributed",
               "--checkpoint", str(tmp_path / "ranks.safetensors")]
    done = subprocess.run(command, env=dict(os.environ, ZYX_CACHE_DIR=str(cache_dir)), capture_output=True,
                          text=True, timeout=600)
    ranks = done.stdout + done.stderr
    assert done.returncode == 0, ranks
    assert "rank 0 of 2; each rank 32 samples of every batch" in ranks
    assert number(r"^test accuracy ([\d.]+)%", ranks) == number(r"^test accuracy ([\d.]+)%", alone), ranks
    # (not anchored: mpirun forwards each rank's output in chunks, and rank 1's line may follow a rank 0 line's text)
    assert re.search(r"rank 1: kernels_compiled \d+", ranks), ranks


def test_char_gpt_learns_samples_and_plots(cache_dir, tmp_path):
    plot = tmp_path / "loss.png"
    out = run_example("char_gpt.py", cache_dir, "--short", "--plot", str(plot))
    first, last = re.search(r"loss: first 10 steps ([\d.]+) -> last 10 steps ([\d.]+)", out).groups()
    assert float(last) < float(first) - 0.2, out
    assert out.count("--- sample at step") == 3  # before training, halfway, at the end
    assert "--- sample at step 30 ---\nReturn the " in out
    assert number(r"throughput: ([\d.]+) steps/s", out) > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_the_progress_bar_is_drawn_before_the_first_step_ends(monkeypatch):
    """On a terminal the bar shows 0/N while the first step (tracing, compiling) is still running."""
    progress = load_example("_progress")
    controller, follower = pty.openpty()
    terminal = os.fdopen(follower, "w")
    monkeypatch.setattr(sys, "stderr", terminal)
    try:
        bar = progress.ProgressBar(8, desc="epoch  1/3", skip_first=True)
        time.sleep(0.5)  # the first step, still compiling
        before_first_step = os.read(controller, 65536).decode(errors="replace")
        for _ in range(8):
            bar.update(loss=0.25)
        bar.close()
        after = os.read(controller, 65536).decode(errors="replace")
    finally:
        monkeypatch.undo()
        terminal.close()
        os.close(controller)
    assert "epoch  1/3" in before_first_step and "0/8" in before_first_step
    assert "8/8" in after and "loss 0.2500" in after
