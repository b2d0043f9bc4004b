"""README.md says what is true: every ```python block runs on its own, as a reader pastes it into a new Python,
and prints what its `# prints X` comment claims; every `zyx` and `python examples/...` command it shows exists
with the options it shows (checked against their --help, so nothing is installed, cleared or trained here)."""
from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent
README = (REPOSITORY / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```", README, flags=re.S | re.M)
BASH_LINES = [line.split(" #")[0].strip() for block in re.findall(r"^```bash\n(.*?)^```", README, flags=re.S | re.M)
              for line in block.splitlines() if line.strip()]
NO_DOT = re.compile(r"zyx\.viz: Graphviz's dot is not installed; [^\n]*\n")
CLAIM = re.compile(r"#\s*prints (\S+)( \(on PoCL)?")
"""`# prints X`; `# prints X (on PoCL...` holds only where zyx.OpenCL() is PoCL (a GPU fuses differently)."""


def run(*command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(command, cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=300)


def test_readme_has_python_examples():
    assert len(PYTHON_BLOCKS) >= 3


@pytest.mark.parametrize("source", PYTHON_BLOCKS, ids=[f"block{i}" for i in range(1, len(PYTHON_BLOCKS) + 1)])
def test_python_block_runs_alone_and_prints_what_it_claims(source):
    finished = run(sys.executable, "-c", source)
    assert finished.returncode == 0, finished.stderr
    # quiet: no compiler output, no warnings; but zyx.viz's note where Graphviz is not installed (pip installs none)
    stderr = finished.stderr if shutil.which("dot") else re.sub(NO_DOT, "", finished.stderr)
    assert stderr == "", finished.stderr
    claims = CLAIM.findall(source)
    if claims:
        printed = finished.stdout.split()[-len(claims):]
        assert len(printed) == len(claims), finished.stdout
        for shown, (claimed, pocl_only) in zip(printed, claims):
            assert shown == claimed or (pocl_only and not opencl_is_pocl()), finished.stdout


def opencl_is_pocl() -> bool:
    import zyx
    from zyx.runtime.platforms import pocl_version
    return pocl_version(zyx.OpenCL().runtime.device.platform.version) is not None


def options_in(line: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", line))


@pytest.mark.parametrize("line", [line for line in BASH_LINES if line.startswith("zyx ")])
def test_zyx_command_exists_with_its_options(line):
    words = [word for word in shlex.split(line.split("[")[0]) if word.isascii() and not word.isupper()]
    finished = run(sys.executable, "-m", "zyx", *words[1:], "--help")
    assert finished.returncode == 0, finished.stderr
    missing = options_in(line) - options_in(finished.stdout)
    assert not missing, f"{line}: zyx {' '.join(words[1:])} has no {missing}"


def script_of(line: str) -> str:
    """What a `python ...` line runs: a script's path, or `-m module`."""
    words = line.split()
    return " ".join(words[1:3]) if words[1] == "-m" else words[1]


@pytest.mark.parametrize("script", sorted({script_of(line) for line in BASH_LINES if line.startswith("python ")}))
def test_example_command_exists_with_its_options(script):
    pytest.importorskip("sklearn")
    finished = run(sys.executable, *script.split(), "--help")
    assert finished.returncode == 0, finished.stderr
    shown = set().union(*(options_in(line) for line in BASH_LINES if line.startswith(f"python {script}")))
    assert shown - options_in(finished.stdout) == set()


def test_the_fast_subset_the_readme_offers_exists():
    assert 'pytest -n auto -m "not slow"' in README
    assert re.search(r'markers = \[[^\]]*"slow:', (REPOSITORY / "pyproject.toml").read_text())
