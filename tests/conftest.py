import os
import pathlib

# The test suite keeps its kernel cache inside the repository's cache/ folder (ignored by git).
os.environ.setdefault("ZYX_CACHE_DIR", str(pathlib.Path(__file__).resolve().parent.parent / "cache"))
# ...and one PoCL cache for this process and every subprocess a test starts with a cache directory of its own
# (each would otherwise compile PoCL's half of every kernel again); tests of the placement itself unset it.
os.environ.setdefault("POCL_CACHE_DIR", os.path.join(os.environ["ZYX_CACHE_DIR"], "pocl"))

# pytest-xdist's workers set COLUMNS=80, which tells the CLI's tables (and rich) that a terminal of that width is
# there; the suite runs as it does without workers, where output to a pipe is never cut
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)

import pytest  # noqa: E402

import zyx  # noqa: E402


def make_device(name: str) -> "zyx.Device":
    """The zyx device a test parameter names: "cpu" -> zyx.CPU(), "opencl" -> zyx.OpenCL(), "torch" ->
    zyx.Torch("cpu"), "torch:DEVICE" -> zyx.Torch(DEVICE) (torch:cuda on a GPU machine)."""
    if name == "cpu":
        return zyx.CPU()
    if name == "opencl":
        return zyx.OpenCL()
    if name == "torch" or name.startswith("torch:"):
        return zyx.Torch(name[6:] or "cpu")
    raise ValueError(f"unknown test device {name!r}")


def _torch_importable() -> bool:
    import importlib.util
    return importlib.util.find_spec("torch") is not None


# Devices the device-generic tests run on: all three by default (torch where it is installed), so every such test
# is also a differential test of the OpenCL JIT and of the torch backend against the numpy reference.
# ZYX_TEST_DEVICES=cpu narrows it (e.g. where OpenCL is missing); ZYX_TEST_DEVICES=cpu,torch:cuda on a GPU machine.
TEST_DEVICES = os.environ.get("ZYX_TEST_DEVICES", "cpu,opencl" + (",torch" if _torch_importable() else "")).split(",")


@pytest.fixture(params=TEST_DEVICES)
def device(request):
    """A zyx device to build test tensors on (see TEST_DEVICES)."""
    return make_device(request.param)


@pytest.fixture(scope="session")
def test_devices() -> dict:
    """Every device of TEST_DEVICES by name, for tests that compare them all on one input (tests/fuzz)."""
    return {name: make_device(name) for name in TEST_DEVICES}


@pytest.fixture(autouse=True, scope="session")
def _test_process_keeps_kernels_in_memory():
    """The test process's own kernel cache stores no binaries: reading a binary back from PoCL compiles its
    kernels a second time, a quarter of a cold suite's CPU time. PoCL's cache (POCL_CACHE_DIR above) still
    shares compiled kernels between the workers and subprocesses; the disk cache's tests use caches of their own."""
    from zyx.jit.cache import default_cache
    default_cache().size_limit = 0


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true",
                     help="run the long variants of bounded tests (tests/fuzz: thousands of graphs, not hundreds)")


# float64 on OpenCL: the exhaustive per-op tests run every op in float32 on both devices and in float64 on the
# reference; on OpenCL, float64 runs for this sample of ops (the double code paths are shared by all ops), so a
# cold CI run compiles a few hundred kernels fewer (each PoCL build costs ~0.2 s). Deselected, not skipped.
OPENCL_FLOAT64_SAMPLE = {"exp", "log", "sqrt", "tanh", "sigmoid", "gelu", "abs", "round", "add", "div", "pow",
                         "maximum", "floordiv", "lt", "sum", "max", "var", "logsumexp", "prod"}
EXHAUSTIVE_TESTS = {"test_unary", "test_binary", "test_reductions"}


def pytest_collection_modifyitems(config, items):
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec else {}
        thinned = (item.originalname in EXHAUSTIVE_TESTS and params.get("device") == "opencl"
                   and params.get("dtype") == "float64" and params.get("name") not in OPENCL_FLOAT64_SAMPLE)
        (dropped if thinned else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
