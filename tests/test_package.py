"""`import zyx` loads its public names on first use; the names stay what they were when it imported them all."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
# child processes import this repository first, then what the parent found (dependencies installed with --target)
CHILD_PYTHONPATH = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))


def run(script: str, **environment: str) -> str:
    finished = subprocess.run([sys.executable, "-c", script], cwd=REPOSITORY, capture_output=True, text=True,
                              timeout=120, env={"PYTHONPATH": CHILD_PYTHONPATH, "PATH": "/usr/bin:/bin", **environment})
    assert finished.returncode == 0, finished.stderr
    return finished.stdout


def test_every_public_name_resolves_to_what_it_names():
    printed = run("import inspect, zyx\n"
                  "for name in zyx.__all__:\n"
                  "    value = getattr(zyx, name)\n"
                  "    print(name, 'module' if inspect.ismodule(value) else 'other')")
    kinds = dict(line.split() for line in printed.splitlines())
    assert set(kinds) == set(__import__("zyx").__all__)
    assert kinds.pop("nn") == kinds.pop("distributed") == "module"
    assert set(kinds.values()) == {"other"}


def test_submodules_named_like_functions_do_not_replace_them():
    printed = run("import zyx.tensor, zyx.realize, zyx.jit.cache, zyx\n"
                  "print(callable(zyx.jit), callable(zyx.tensor), callable(zyx.realize))\n"
                  "print(zyx.jit(lambda x: x + 1)(zyx.OpenCL().tensor([1.0])).numpy()[0])")
    assert printed.split() == ["True", "True", "True", "2.0"]


def test_import_zyx_loads_neither_numpy_nor_pyopencl():
    printed = run("import sys, zyx\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'pyopencl')))")
    assert printed.strip() == "[]"


def test_a_process_that_loads_its_programs_imports_no_scheduler_kernel_ir_or_printer(tmp_path):
    """The scheduler's modules (kernel IR, transforms, printers: 0.1-0.2 s of imports, its 45 dataclasses most of
    it) are a compile's: a warm process finds its programs and binaries on disk and imports none of them."""
    script = ("import sys, zyx\n"
              "x = zyx.OpenCL().tensor([1.0, 2.0, 3.0])\n"
              "y = (x * 2).exp().sum(keepdim=True) @ x.max(keepdim=True)\n"
              "print(y.numpy().tolist())\n"
              "print(sorted(m for m in sys.modules if m.startswith('zyx.jit.')\n"
              "      and m.split('.')[2] in ('schedule', 'kernel_ir', 'lower', 'print_opencl', 'transforms')))")
    cold, warm = (run(script, ZYX_CACHE_DIR=str(tmp_path / "cache")) for _ in range(2))
    (cold_value, cold_modules), (warm_value, warm_modules) = cold.splitlines(), warm.splitlines()
    assert cold_modules != "[]"  # (the first process did schedule: the check below means something)
    assert warm_value == cold_value and warm_modules == "[]"


@pytest.mark.parametrize("device, needs", [("zyx.CPU()", None), ("zyx.Torch('cpu')", "torch")])
def test_ml_dtypes_loads_only_when_bfloat16_reaches_the_host(device, needs):
    # loading ml_dtypes' extension takes most of a warm start (ml_dtypes 0.7 beside numpy 2.4: 1.3-1.7 s): a
    # float32 program does without it, on a device or on the torch backend (which `zyx devices` imports)
    if needs:
        pytest.importorskip(needs)  # (an optional extra)
    printed = run("import sys, zyx\n"
                  f"x = {device}.tensor([1.5, 2.5])\n"
                  "print((x * 2).numpy().tolist(), 'ml_dtypes' in sys.modules)\n"
                  "h = x.to(zyx.bfloat16).numpy()\n"
                  f"print(h.dtype.name, h.astype('float32').tolist(), {device}.tensor([1.0], dtype='bfloat16').dtype"
                  " is zyx.bfloat16)")
    assert printed.split("\n")[:2] == ["[3.0, 5.0] False", "bfloat16 [1.5, 2.5] True"]


def test_ci_script_parses():
    """CI runs `.ci/run` before any test: a shell syntax error there fails CI before the suite starts."""
    finished = subprocess.run(["bash", "-n", str(REPOSITORY / ".ci" / "run")], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
