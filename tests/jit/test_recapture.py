"""A jitted step that traces again says why on the `zyx.jit` logger, and too many captures say how to avoid them."""
import logging
import warnings

import numpy as np
import pytest

import zyx
from zyx.step.jit import MAX_CAPTURES, JitWarning


@pytest.fixture
def recaptures(caplog):
    """The messages `zyx.jit` logs at INFO during the test."""
    caplog.set_level(logging.INFO, logger="zyx.jit")
    return lambda: [record.getMessage() for record in caplog.records if record.name == "zyx.jit"]


def ones(dev, *shape):
    return dev.tensor(np.ones(shape, np.float32))


def test_a_new_shape_names_the_argument_and_both_shapes(dev, recaptures):
    f = zyx.jit(lambda x, y: x + y)
    f(ones(dev, 2, 3), ones(dev, 3))
    assert recaptures() == []  # the first capture is no news
    f(ones(dev, 4, 3), ones(dev, 3))
    assert recaptures() == ["<lambda> traced again (capture 2): new shape of argument 0: (2, 3) → (4, 3)"]


def test_a_new_python_constant_is_named_with_both_values(dev, recaptures):
    f = zyx.jit(lambda x, k: x * k)
    x = ones(dev, 4)
    f(x, 2.0)
    f(x, 2.0)  # a replay: nothing to say
    f(x, 0.5)
    f(x, k=0.5)
    assert recaptures() == ["<lambda> traced again (capture 2): new Python constant argument 1: 2.0 → 0.5",
                            "<lambda> traced again (capture 3): argument 'k' is passed by keyword, by position "
                            "when captured"]


def test_a_rebound_global_is_named(dev, recaptures):
    global scale
    scale = ones(dev, 4)

    @zyx.jit
    def step(x):
        return x * scale

    x = ones(dev, 4)
    step(x)
    scale = ones(dev, 4) * 2
    np.testing.assert_allclose(step(x).numpy(), 2.0)
    assert recaptures() == ["step traced again (capture 2): `scale` was rebound to another tensor"]


def test_a_mode_change_is_named(dev, recaptures):
    model = zyx.nn.Sequential(zyx.nn.Linear(3, 3, device=dev), zyx.nn.Dropout(0.5))

    @zyx.jit
    def forward(x):
        return model(x)

    x = ones(dev, 2, 3)
    forward(x)
    forward(x)
    model.eval()
    forward(x)
    assert recaptures()[-1].endswith("switched to eval mode")


def test_an_autocast_change_is_named(dev, recaptures):
    w = ones(dev, 3, 3)
    product = zyx.jit(lambda x: x @ w)
    x = ones(dev, 2, 3)
    product(x)
    with zyx.autocast(zyx.bfloat16):
        assert product(x).dtype == zyx.bfloat16
    assert recaptures()[-1].endswith("called under zyx.autocast(zyx.bfloat16), traced under no autocast")


def test_too_many_captures_say_which_argument_varies_and_how_to_avoid_it(dev, recaptures):
    f = zyx.jit(lambda x, y: x + y)
    y = ones(dev, 1)
    with pytest.warns(JitWarning) as warned:
        for n in range(1, MAX_CAPTURES + 2):
            f(ones(dev, n), y)
    message = str(warned[0].message)
    assert f"has captured {MAX_CAPTURES + 1} programs" in message
    assert f"argument 0 caused {MAX_CAPTURES} of them: keep the shape of argument 0 fixed" in message
    assert len(recaptures()) == MAX_CAPTURES


def test_nothing_is_logged_unless_asked(dev, caplog):
    f = zyx.jit(lambda x: x + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f(ones(dev, 2))
        f(ones(dev, 3))
    assert [record for record in caplog.records if record.name == "zyx.jit"] == []
