"""The differential fuzzer in CI: DEFAULT_GRAPHS seeded graphs (LONG_GRAPHS with --long), each on every test
device against numpy and torch; plus checks that the fuzzer itself draws every op and catches a planted bug."""
from __future__ import annotations

import collections
import warnings

import pytest

from .check import check, reproducer, shrink
from .graphs import PROPOSERS, generate
from .ops import OPS, OpForms

DEFAULT_GRAPHS = 300
LONG_GRAPHS = 3000


def pytest_generate_tests(metafunc):
    if "seed" in metafunc.fixturenames:
        count = LONG_GRAPHS if metafunc.config.getoption("--long") else DEFAULT_GRAPHS
        metafunc.parametrize("seed", range(count))


def _report(failures, devices) -> str:
    return "\n\n".join(f"{f}\nshrunk: {(s := shrink(f, devices))}\n{reproducer(s)}" for f in failures)


def test_graph(seed, test_devices):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the references' notes (torch var with one element...)
        failures = check(generate(seed), test_devices)
    assert not failures, _report(failures, test_devices)


def test_generation_is_deterministic():
    assert [generate(seed) for seed in range(20)] == [generate(seed) for seed in range(20)]


def test_default_seeds_draw_every_op():
    """A proposer that never succeeds would silently leave its op untested."""
    used = collections.Counter(step.op for seed in range(DEFAULT_GRAPHS) for step in generate(seed).steps)
    assert not set(PROPOSERS) - set(used), f"never drawn: {set(PROPOSERS) - set(used)}"


def test_a_planted_bug_is_found_and_shrunk(monkeypatch):
    """A zyx exp that is off by 0.1% fails the graph, and the shrunk graph ends at an exp."""
    seed = next(s for s in range(DEFAULT_GRAPHS) if any(step.op == "exp" for step in generate(s).steps))
    devices = {"cpu": __import__("zyx").CPU()}
    assert not check(generate(seed), devices)
    monkeypatch.setitem(OPS, "exp", OpForms("{a}.exp() * 1.001", "np.exp({a})", "{a}.exp()"))
    failures = check(generate(seed), devices)
    assert failures
    assert shrink(failures[0], devices).graph.steps[-1].op == "exp"
