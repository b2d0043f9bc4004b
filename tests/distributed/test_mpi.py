"""zyx.distributed across real processes: `mpirun -n 2` (and `-n 4 --oversubscribe`) running worker.py.

These need Open MPI's `mpirun` and mpi4py (`.ci/run` installs both); where either is missing they are skipped,
saying which. Each rank prints one JSON line; a failed check inside a rank aborts the job (non-zero exit).
"""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

WORKER = pathlib.Path(__file__).resolve().parent / "worker.py"
REPOSITORY = WORKER.parents[2]
# child processes import this repository first, then what the parent found (dependencies installed with --target)
CHILD_PYTHONPATH = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))

pytestmark = [
    pytest.mark.skipif(shutil.which("mpirun") is None,
                       reason="needs MPI's launcher: apt-get install openmpi-bin libopenmpi-dev"),
    pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None, reason="needs mpi4py: pip install 'zyx[mpi]'"),
]


def mpirun(ranks: int, *args: str, cache: pathlib.Path, timeout: float = 240,
           **env: str) -> subprocess.CompletedProcess:
    """`mpirun -n ranks python worker.py args`, with its own kernel cache; more ranks than cores are allowed."""
    command = ["mpirun", "--oversubscribe", "-n", str(ranks)]
    if os.geteuid() == 0:
        command.append("--allow-run-as-root")  # CI containers run as root; Open MPI refuses that otherwise
    environment = dict(os.environ, ZYX_CACHE_DIR=str(cache), PYTHONPATH=CHILD_PYTHONPATH, **env)
    return subprocess.run([*command, sys.executable, str(WORKER), *args], env=environment, capture_output=True,
                          text=True, timeout=timeout)


def reports(done: subprocess.CompletedProcess, ranks: int) -> dict[int, dict]:
    """Each rank's JSON report, by rank; fails with the job's output unless it succeeded and every rank reported.
    mpirun forwards the ranks' output as it comes, so two reports can share a line: each is decoded where it starts."""
    assert done.returncode == 0, f"the MPI job failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    found = {}
    decoder, start = json.JSONDecoder(), done.stdout.find('{"rank"')
    while start >= 0:
        report, end = decoder.raw_decode(done.stdout, start)
        found[report["rank"]] = report
        start = done.stdout.find('{"rank"', end)
    assert sorted(found) == list(range(ranks)), done.stdout + done.stderr
    return found


@pytest.mark.parametrize("ranks, devices", [(2, "cpu,opencl"), (4, "cpu")])
def test_collectives_are_exact_on_every_rank(ranks, devices, tmp_path):
    """all_reduce (sum, mean, max, min over every dtype), broadcast and a bucket of several shapes equal the values
    each rank computes from every rank's inputs (small integers: exact in every dtype, reassociation included)."""
    env = {} if "opencl" in devices else {"ZYX_DEVICE": "cpu"}
    done = mpirun(ranks, "collectives", devices, cache=tmp_path, **env)
    assert all(report["checked"] == devices.split(",") for report in reports(done, ranks).values())


@pytest.mark.slow  # about 40 s on 2 busy cores: two MPI jobs, the first compiling the step's kernels
def test_jitted_two_rank_training_equals_one_process_and_a_warm_start_compiles_nothing(tmp_path):
    """Two ranks, each on half of every batch, end with the parameters one process gets on the whole batches (up to
    float reassociation: atol 1e-5 after 3 Adam steps; measured 9e-8); the all-reduce is a step of the captured
    program; each kernel was compiled by one rank only; a second job compiles and schedules nothing."""
    cold = reports(mpirun(2, "train", cache=tmp_path), 2)
    assert cold[0]["max_difference"] < 1e-5 * max(1.0, cold[0]["largest_parameter"]), cold[0]
    assert cold[0]["spread"] == cold[1]["spread"] == 0.0  # every rank holds the same parameters, bit for bit
    launches = cold[0]["launches"]
    assert launches.count("collective_start") == launches.count("collective_finish") == 1, launches
    start, finish = launches.index("collective_start"), launches.index("collective_finish")
    assert 0 < start < finish < len(launches) - 1  # after the gradients, before the update
    from zyx.jit.cache import KernelCache
    stored = len(KernelCache(tmp_path).entries())
    assert cold[0]["kernels_compiled"] + cold[1]["kernels_compiled"] == stored > 0  # no kernel compiled twice
    warm = reports(mpirun(2, "train", cache=tmp_path), 2)
    for report in warm.values():
        assert report["kernels_compiled"] == 0 and report["graphs_scheduled"] == 0, report
        assert report["launches"] == launches


@pytest.mark.parametrize("mode, says", [
    ("crash", "was stopped by the launcher"),  # rank 1 exits with status 3 (os._exit): mpirun stops rank 0
    ("leave", "waited 3 s for all_reduce"),    # rank 1 exits normally: rank 0 gives up after its timeout
])
def test_a_rank_that_dies_ends_the_job_with_a_clear_error(mode, says, tmp_path):
    began = time.monotonic()
    done = mpirun(2, "fail", mode, cache=tmp_path, timeout=120, ZYX_DEVICE="cpu", ZYX_DISTRIBUTED_TIMEOUT="3")
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert says in output, output
    assert "never joined" not in output
    assert time.monotonic() - began < 100
