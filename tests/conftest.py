import os
import pathlib

# The test suite keeps its kernel cache inside the repository's cache/ folder (ignored by git).
os.environ.setdefault("ZYX_CACHE_DIR", str(pathlib.Path(__file__).resolve().parent.parent / "cache"))

import pytest  # noqa: E402

import zyx  # noqa: E402


def make_device(name: str) -> "zyx.Device":
    """The zyx device a test parameter names: "cpu" -> zyx.CPU(), "opencl" -> zyx.OpenCL()."""
    if name == "cpu":
        return zyx.CPU()
    if name == "opencl":
        return zyx.OpenCL()
    raise ValueError(f"unknown test device {name!r}")


# Devices the device-generic tests run on: both by default, so every such test is also a differential test of
# the OpenCL JIT against the numpy reference. ZYX_TEST_DEVICES=cpu narrows it (e.g. where OpenCL is missing).
TEST_DEVICES = os.environ.get("ZYX_TEST_DEVICES", "cpu,opencl").split(",")


@pytest.fixture(params=TEST_DEVICES)
def device(request):
    """A zyx device to build test tensors on (see TEST_DEVICES)."""
    return make_device(request.param)
