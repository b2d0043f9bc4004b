"""While kernels compile, a terminal shows "compiling n/N kernels"; anything else sees not a character of it."""
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # cold compiles in subprocesses, to be seen while they run

REPOSITORY = Path(__file__).resolve().parents[1]
# softmax, a norm and a product: one program of several kernels, so one cold first call compiles many
SCRIPT = """
import numpy as np, zyx
x = zyx.OpenCL().tensor(np.random.default_rng(0).standard_normal((64, 48)).astype(np.float32))
y = (x @ x.T).softmax(-1).sum(0) + x.abs().max(1).sum() + (x * x).mean()
print(float(y.sum().item()) > 0, zyx.stats()["kernels_compiled"])
"""


def run(cache_dir: Path, terminal: bool) -> tuple[str, str]:
    """(stdout, stderr) of SCRIPT on a cold cache, its stderr a pseudo-terminal or a pipe."""
    env = {**os.environ, "ZYX_CACHE_DIR": str(cache_dir), "COLUMNS": "100",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))}
    env.pop("POCL_CACHE_DIR", None)  # a cold PoCL cache too: the compiles take long enough to draw
    if not terminal:
        finished = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stderr
        return finished.stdout, finished.stderr
    controller, follower = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:  # read while it runs: a full pseudo-terminal would block the bar
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        finished = subprocess.run([sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE, stderr=follower,
                                  text=True, timeout=300)
    finally:
        os.close(follower)
        reader.join(timeout=10)
        os.close(controller)
    assert finished.returncode == 0
    return finished.stdout, b"".join(chunks).decode(errors="replace")


def test_a_terminal_sees_kernels_counted_while_they_compile(tmp_path):
    stdout, stderr = run(tmp_path / "cache", terminal=True)
    compiled = int(stdout.split()[1])
    assert compiled >= 1
    assert "compiling 0/" in stderr and " kernels" in stderr


def test_a_pipe_sees_nothing(tmp_path):
    stdout, stderr = run(tmp_path / "cache", terminal=False)
    assert stdout.startswith("True") and stderr == ""


STORING = """
import sys, time
from zyx import progress
with progress.storing():
    time.sleep(0.5)
print("done")
"""


@pytest.mark.parametrize("terminal", [True, False])
def test_the_exit_says_it_is_storing_kernels_on_a_terminal_only(terminal):
    """progress.storing() (the exit's wait for binaries the helper still writes): a status line on a terminal,
    cleared when done; not a character on a pipe."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))}
    if not terminal:
        finished = subprocess.run([sys.executable, "-c", STORING], env=env, capture_output=True, text=True, timeout=60)
        assert finished.stdout == "done\n" and finished.stderr == ""
        return
    controller, follower = pty.openpty()
    try:
        finished = subprocess.run([sys.executable, "-c", STORING], env=env, stdout=subprocess.PIPE, stderr=follower,
                                  text=True, timeout=60)
        drawn = os.read(controller, 65536).decode(errors="replace")
    finally:
        os.close(follower)
        os.close(controller)
    assert finished.stdout == "done\n"
    assert "storing the compiled kernels for the next run" in drawn
