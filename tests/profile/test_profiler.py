"""zyx.profile(): launches timed on the device, with the bytes and FLOPs the scheduler recorded for them."""
import json

import numpy as np
import pyopencl as cl
import pytest

import zyx
from zyx.debug import logger
from zyx.jit.program_json import program_from_json, program_to_json
from zyx.runtime.peak import device_peak

RNG = np.random.default_rng(3)


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def test_elementwise_launch_records_bytes_flops_and_time(device):
    a, b = device.tensor(data(1000)).realize(), device.tensor(data(1000)).realize()
    with zyx.profile() as p:
        out = (a + b).realize()
    np.testing.assert_allclose(out.numpy(), a.numpy() + b.numpy(), rtol=1e-6)
    assert len(p.records) == 1
    record = p.records[0]
    assert record.bytes_moved == 3 * 1000 * 4  # reads a and b, writes the sum
    assert record.flops == 1000
    assert record.seconds > 0
    assert record.node == "ADD (1000,) float32"


def test_matmul_flops_are_2mnk(device):
    m, k, n = 8, 16, 4
    x, w = device.tensor(data(m, k)).realize(), device.tensor(data(k, n)).realize()
    with zyx.profile() as p:
        (x @ w).realize()
    assert sum(r.flops for r in p.records) == 2 * m * n * k


def test_program_name_and_counts_survive_the_program_store_json():
    dev = zyx.OpenCL()
    x = dev.tensor(data(32, 32)).realize()
    with zyx.profile() as p:
        ((x @ x).exp() + 1).realize()
    program = dev.programs[next(k for k in dev.programs if k.startswith(p.records[0].program))]
    assert any(launch.flops for launch in program.launches)
    inputs = 1 + max((i for l in program.launches for kind, i in l.args if kind == "input"), default=-1)
    again = program_from_json(program_to_json(program), inputs, 0)
    assert again.launches == program.launches
    assert [(l.flops, l.bytes_moved, l.node) for l in again.launches] == \
        [(l.flops, l.bytes_moved, l.node) for l in program.launches]
    assert again.name == program.name


def test_table_lists_kernels_by_time_and_returns_the_text(device, capsys):
    x = device.tensor(data(64, 64)).realize()
    with zyx.profile() as p:
        (x @ x.T + 1).relu().softmax(-1).realize()
    text = p.table()
    assert capsys.readouterr().out == text
    rows = p.summaries()
    assert [row.seconds for row in rows] == sorted((row.seconds for row in rows), reverse=True)
    for row in rows:
        assert row.kernel in text and row.node in text
    assert sum(row.launches for row in rows) == len(p.records)


def test_percent_of_peak_columns_follow_the_overrides(monkeypatch):
    dev = zyx.OpenCL()
    x = dev.tensor(data(4096)).realize()
    with zyx.profile() as p:
        (x * 2).realize()
    monkeypatch.setenv("ZYX_PEAK_GBS", "100")
    monkeypatch.setenv("ZYX_PEAK_GFLOPS", "10")
    row = p.summaries()[0]
    assert (row.peak.gbs, row.peak.gflops) == (100.0, 10.0)
    text = p.table(print_table=False)
    assert "%peak GB/s" in text and "%peak GFLOP/s" in text
    assert f"{100 * row.gbs / 100:.1f}" in text
    monkeypatch.delenv("ZYX_PEAK_GBS")
    known_bandwidth = p.summaries()[0].peak.gbs  # PoCL's CPUs have none; a listed GPU has its datasheet figure
    assert ("%peak GB/s" in p.table(print_table=False)) == (known_bandwidth is not None)


def test_peak_table_and_bad_overrides(monkeypatch):
    assert device_peak("NVIDIA H200").gbs == 4800.0
    assert device_peak("NVIDIA H100 PCIe").gbs == 2000.0
    assert device_peak("some unknown accelerator") == device_peak("another one")
    assert device_peak("some unknown accelerator").gbs is None
    monkeypatch.setenv("ZYX_PEAK_GBS", "fast")
    with pytest.raises(ValueError, match="ZYX_PEAK_GBS='fast' is not a number"):
        device_peak("NVIDIA H200")


def test_table_limit_must_be_positive():
    with pytest.raises(ValueError, match="limit must be at least 1, got 0"):
        zyx.profile().table(limit=0)


def test_chrome_trace_is_complete_events_in_microseconds(device, tmp_path):
    x = device.tensor(data(128, 128)).realize()
    with zyx.profile() as p:
        (x @ x).sum(-1).realize()
    path = p.export_chrome_trace(tmp_path / "trace.json")
    trace = json.loads(path.read_text())
    kernels = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(kernels) == len(p.records)
    for event, record in zip(kernels, p.records):
        assert {"name", "ts", "dur", "pid", "tid", "args"} <= event.keys()
        assert event["dur"] == pytest.approx(record.seconds * 1e6)
        assert event["ts"] >= 0
        assert event["args"]["kernel"] == record.kernel and event["args"]["program"] == record.program
        assert (event["args"]["bytes"], event["args"]["flops"]) == (record.bytes_moved, record.flops)
    names = [e for e in trace["traceEvents"] if e["ph"] == "M"]
    assert {e["pid"] for e in names} == {e["pid"] for e in kernels}
    starts = [e["ts"] for e in kernels]
    assert starts == sorted(starts)  # one in-order queue: launches start in launch order


def test_timed_queue_only_while_profiling():
    backend = zyx.OpenCL().runtime
    profiling_enable = cl.command_queue_properties.PROFILING_ENABLE
    x = zyx.OpenCL().tensor(data(256)).realize()
    assert not backend.queue.properties & profiling_enable
    with zyx.profile():
        assert backend.queue.properties & profiling_enable
        y = (x + 1).realize()
    z = (y * 2).realize()  # queued on the plain queue after the timed one: still ordered
    assert not backend.queue.properties & profiling_enable
    np.testing.assert_allclose(z.numpy(), (x.numpy() + 1) * 2, rtol=1e-6)


def test_nested_profilers_both_record_and_one_cannot_reenter(device):
    x = device.tensor(data(16)).realize()
    with zyx.profile() as outer:
        (x + 1).realize()
        with zyx.profile() as inner:
            (x * 3).realize()
            with pytest.raises(RuntimeError, match="already recording"):
                inner.__enter__()
    assert len(outer.records) == 2 and len(inner.records) == 1
    assert inner.records[0] is outer.records[1]


def test_debug_2_logs_each_kernel_time(monkeypatch, capsys):
    dev = zyx.OpenCL()
    x = dev.tensor(data(1024)).realize()
    capsys.readouterr()
    monkeypatch.setenv("ZYX_DEBUG", "2")
    with zyx.profile() as p:
        (x.exp() + 2).realize()
    monkeypatch.setenv("ZYX_DEBUG", "0")
    logger("zyx")  # applies the setting back
    prefix = "zyx.profile: "
    lines = [line[len(prefix):] for line in capsys.readouterr().err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1
    assert f"{p.records[0].kernel} " in lines[0] and f"global {p.records[0].global_size}" in lines[0]
    assert f"{p.records[0].seconds * 1e6:9.2f}us" in lines[0]
    assert "us" in lines[0] and "GB/s" in lines[0] and "GFLOP/s" in lines[0] and "ADD (1024,) float32" in lines[0]


def test_synchronize_waits_for_queued_kernels():
    dev = zyx.OpenCL()
    x = dev.tensor(data(1 << 16)).realize()
    with zyx.profile() as p:
        for _ in range(4):
            x = (x * 1.0001 + 1).realize()
        zyx.synchronize(dev)
        assert all(r.event.command_execution_status == cl.command_execution_status.COMPLETE for r in p.records)
    zyx.synchronize()  # every device made so far, the CPU one included
    with pytest.raises(TypeError, match="zyx.Device or None, got str"):
        zyx.synchronize("opencl")


def test_cpu_device_records_one_host_timed_entry_per_evaluated_program():
    a = zyx.CPU().tensor(data(10, 10)).realize()
    with zyx.profile() as p:
        zyx.realize(a + 1, (a * 2).sum())
    assert len(p.records) == 1
    record = p.records[0]
    assert record.device_name == "cpu" and record.end_ns > record.start_ns
    assert record.node.endswith(" and 1 more")
    assert record.bytes_moved == 400 + 400 + 4  # reads a, writes both results
    assert record.flops == 100 + 100 + 100     # add, multiply, sum of 100 elements
