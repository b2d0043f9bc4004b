import pytest

import zyx


@pytest.fixture
def dev():
    """The OpenCL device (PoCL here, a GPU where there is one)."""
    return zyx.OpenCL()
