"""The differential fuzzer in CI: DEFAULT_GRAPHS seeded graphs (LONG_GRAPHS with --long), each on every test
device against numpy and torch; plus checks that the fuzzer itself draws every op and catches a planted bug."""
from __future__ import annotations

import collections
import warnings

import zyx

from .check import check, reproducer, shrink
from .graphs import PROPOSERS, generate
from .ops import OPS, OpForms

DEFAULT_GRAPHS = 100
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
    """A zyx exp that is off by 0.1% fails a graph that uses exp, and the graph shrinks to end at that exp."""
    devices = {"cpu": zyx.CPU()}
    graphs = [generate(s) for s in range(40)]
    uses_exp = [g for g in graphs if any(step.op == "exp" for step in g.truncated(g.output).steps)]
    monkeypatch.setitem(OPS, "exp", OpForms("{a}.exp() * 1.001", "np.exp({a})", "{a}.exp()"))
    failing = [g for g in uses_exp if check(g, devices)]
    assert failing, "no graph caught the planted bug"
    assert len(uses_exp) - len(failing) <= len(uses_exp) // 2  # (exp followed by floor or a comparison hides it)
    for graph in failing:
        assert shrink(check(graph, devices)[0], devices).graph.steps[-1].op == "exp"
    monkeypatch.undo()
    assert not any(check(g, devices) for g in failing)
