"""zyx.viz: one cluster per kernel, stored buffers marked, each kernel's launch size; SVG through Graphviz."""
import re
import shutil
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

import zyx
from zyx import trace_graph

SVG = "{http://www.w3.org/2000/svg}"


def kernels_launched(*tensors):
    zyx.reset_stats()
    zyx.realize(*tensors)
    return zyx.stats()["kernels_launched"]


def softmax_of_product(dev):
    x = dev.tensor(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)).realize()
    return (x @ x.T + 1).relu().softmax(-1)


def test_dot_has_one_cluster_per_kernel_with_launch_sizes(tmp_path):
    dev = zyx.OpenCL()
    y = softmax_of_product(dev)
    text = zyx.viz(y, tmp_path / "graph.dot").read_text()
    clusters = re.findall(r'graph \[label="([^"]*)"', text)
    assert len(clusters) == kernels_launched(softmax_of_product(dev))
    assert all(re.search(r"\\nglobal \(\d+,\) local (\(\d+,\)|-)$", label) for label in clusters)
    assert 'DIV\\nstored (64, 64) float32", shape="box", peripheries="2"' in text  # the result is stored
    assert 'buffer (64, 64) float32", shape="cylinder"' in text  # x is read from memory


@pytest.mark.skipif(shutil.which("dot") is None, reason="renders SVG only where Graphviz is installed")
def test_svg_renders_with_one_cluster_per_kernel(tmp_path):
    dev = zyx.OpenCL()
    path = zyx.viz(softmax_of_product(dev), tmp_path / "graph.svg")
    root = ElementTree.parse(path).getroot()
    clusters = [g for g in root.iter(f"{SVG}g") if g.get("class") == "cluster"]
    assert len(clusters) == kernels_launched(softmax_of_product(dev))


def test_without_graphviz_dot_source_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(trace_graph.shutil, "which", lambda name: None)
    x = zyx.OpenCL().tensor([1.0, 2.0, 3.0])
    path = zyx.viz(x.exp() * 2, tmp_path / "graph.svg")
    assert path == tmp_path / "graph.dot"
    assert path.read_text().startswith('digraph "zyx" {') and path.read_text().count("subgraph cluster_") == 1


def test_cpu_tensors_are_drawn_as_the_jit_would_fuse_them(tmp_path):
    x = zyx.CPU().tensor([[1.0, 2.0], [3.0, 4.0]])
    a, b = x.exp().sum(-1), (x * 2).relu()
    text = zyx.viz([a, b], tmp_path / "both.dot").read_text()
    assert text.count("subgraph cluster_") == 2
    assert "RESHAPE\\nstored (2,) float32" in text and "WHERE\\nstored (2, 2) float32" in text


def test_a_realized_tensor_draws_its_recorded_trace(tmp_path):
    x = zyx.OpenCL().tensor([1.0, 2.0, 3.0])
    y = (x.exp() + 1).realize()
    text = zyx.viz(y, tmp_path / "y.dot").read_text()
    assert text.count("subgraph cluster_") == 1 and "EXP" in text and "ADD\\nstored (3,) float32" in text


def test_jit_step_draws_its_captured_program(tmp_path):
    dev = zyx.OpenCL()
    w = dev.tensor(np.ones((4, 3), np.float32)).realize()

    @zyx.jit
    def step(x):
        loss = (x @ w).square().mean()
        w.assign(w - 0.1 * loss.backward([w])[0])
        return loss

    with pytest.raises(ValueError, match="has captured no program yet"):
        zyx.viz(step, tmp_path / "none.dot")
    step(dev.tensor(np.ones((2, 4), np.float32)))
    text = zyx.viz(step, tmp_path / "step.dot").read_text()
    assert text.count("subgraph cluster_") == step.captured[0]["launches"]
    assert "input 0" in text and "stored slot" in text and "FLOPs" in text


def test_bad_input_is_named(tmp_path):
    with pytest.raises(TypeError, match="item 1 is a int"):
        zyx.viz([zyx.CPU().tensor([1.0]), 3], tmp_path / "x.dot")
    with pytest.raises(ValueError, match="nothing to draw"):
        zyx.viz([], tmp_path / "x.dot")
