import os

import pytest

import zyx


def make_device(name: str) -> zyx.Device:
    """The zyx device a test parameter names: "cpu" -> zyx.CPU(), "opencl" -> zyx.OpenCL()."""
    if name == "cpu":
        return zyx.CPU()
    if name == "opencl":
        return zyx.OpenCL()
    raise ValueError(f"unknown test device {name!r}")


# "cpu" only by default; "opencl" joins once the JIT lands (ZYX_TEST_DEVICES=cpu,opencl tries it now).
NN_DEVICES = os.environ.get("ZYX_TEST_DEVICES", "cpu").split(",")


@pytest.fixture(params=NN_DEVICES)
def nn_device(request: pytest.FixtureRequest) -> zyx.Device:
    return make_device(request.param)
