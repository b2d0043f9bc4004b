import pytest


@pytest.fixture
def nn_device(device):
    """The nn tests run on every device of the shared `device` fixture (tests/conftest.py)."""
    return device
