"""How a collective enters a trace and a program, checked without MPI (test_mpi.py runs them across processes):
the node's rules, the gradient buckets, where the scheduler puts the two host steps, and the stored program's
validation."""
from __future__ import annotations

import json

import pytest

import zyx
from zyx.distributed.gradients import buckets
from zyx.jit.program import build_program
from zyx.jit.program_json import InvalidProgram, program_from_json, program_to_json
from zyx.jit.device_traits import CPU_VECTOR_WIDTH, DeviceTraits
from zyx.jit.schedule import schedule
from zyx.runtime.collectives import FINISH, START
from zyx.trace import node as n
from zyx.trace.autodiff import gradients
from zyx.trace.hashing import signature
from zyx.trace.ops import Op


@pytest.fixture
def dev():
    return zyx.OpenCL()


def scheduled(*tensors: zyx.Tensor):
    """The Program for realizing `tensors` on a CPU-shaped OpenCL device (scheduled only: nothing compiles)."""
    nodes = [t.node for t in tensors]
    _, leaves, rands = signature(nodes)
    kernels, targets = schedule(nodes, DeviceTraits(vector_width=CPU_VECTOR_WIDTH))
    return build_program(kernels, targets, leaves, rands), len(leaves), len(rands)


def first_use(program, arg) -> int:
    return next(k for k, launch in enumerate(program.launches) if arg in launch.args)


def test_a_bucket_is_started_after_its_sources_are_stored_and_finished_before_its_first_reader(dev):
    x, w = dev.randn(4, 3).realize(), dev.randn(3, 2).realize()
    flat = zyx.Tensor(n.collective([(x @ w).tanh().node, x.sum(0).node, x.node], "all_reduce", "sum"))
    independent = (x * 3).exp()  # reads no collective: free to run while the host communicates
    program, _, _ = scheduled(flat[:8].reshape(4, 2) * 2, independent)
    names = [launch.name for launch in program.launches]
    assert names.count(START) == names.count(FINISH) == 1, names
    start, finish = names.index(START), names.index(FINISH)
    started = program.launches[start]
    sources, result = started.args[:-1], started.args[-1]
    assert ("input", 0) in sources or any(kind == "input" for kind, _ in sources)  # x itself is read as it is
    stored = [first_use(program, source) for source in sources if source[0] == "slot"]
    assert len(stored) == 2 and start == max(stored) + 1
    readers = [k for k, launch in enumerate(program.launches) if result in launch.args and k not in (start, finish)]
    assert readers and finish == min(readers) - 1
    assert program.launches[finish].args == (result,) and started.collective == "all_reduce sum float32"
    assert started.global_size == (8 + 3 + 12,)
    assert program.kernel_count == len(names) - 2  # the host steps are no kernels


def test_a_bucket_communicates_while_the_backward_pass_of_the_next_runs(dev):
    """An MLP's gradients in two buckets (last layer first, as backward makes them): the kernels that wait for a
    bucket run after every kernel that does not, so the second bucket's backward runs between the first's steps."""
    model = zyx.nn.Sequential(zyx.nn.Linear(4, 8, device=dev), zyx.nn.ReLU(), zyx.nn.Linear(8, 3, device=dev))
    params = model.parameters()
    zyx.realize(*params)
    loss = zyx.nn.functional.cross_entropy(model(dev.randn(5, 4)), dev.tensor([0, 1, 2, 1, 0]))
    grads = loss.backward(params)
    last, first = [grads[2].node, grads[3].node], [grads[0].node, grads[1].node]
    updated = []
    for bucket, positions in ((last, (2, 3)), (first, (0, 1))):
        flat, start = n.collective(bucket, "all_reduce", "sum"), 0
        for position, grad in zip(positions, bucket):
            piece = zyx.Tensor(n.reshape(n.shrink(flat, [(start, start + grad.numel)]), grad.shape))
            updated.append(params[position] - piece * 0.1)
            start += grad.numel
    program, _, _ = scheduled(*updated)
    names = [launch.name for launch in program.launches]
    starts = [k for k, name in enumerate(names) if name == START]
    finishes = [k for k, name in enumerate(names) if name == FINISH]
    assert len(starts) == len(finishes) == 2 and max(starts) < min(finishes), names
    assert starts[1] - starts[0] > 1  # kernels of the first layer's gradients run while the last layer's communicate


def test_a_collective_of_an_input_starts_the_program(dev):
    x = dev.randn(5).realize()
    program, _, _ = scheduled(zyx.Tensor(n.collective([x.node], "broadcast", 1)) + 1)
    assert program.launches[0].name == START and program.launches[0].args[0] == ("input", 0)
    assert program.launches[0].collective == "broadcast 1 float32"


def test_stored_collective_steps_are_validated(dev):
    x = dev.randn(4).realize()
    program, inputs, rands = scheduled(zyx.Tensor(n.collective([(x * 2).node], "all_reduce", "max")).exp())
    text = program_to_json(program)
    assert program_to_json(program_from_json(text, inputs, rands)) == text
    start = next(k for k, launch in enumerate(program.launches) if launch.name == START)

    def damaged(change) -> str:
        data = json.loads(text)
        change(data["launches"])
        with pytest.raises(InvalidProgram) as error:
            program_from_json(json.dumps(data), inputs, rands)
        return str(error.value)

    assert "no earlier step started" in damaged(lambda launches: launches.insert(0, launches.pop(start + 1)))
    assert "has no source" in damaged(lambda launches: launches[start].update(source="__kernel void x() {}"))
    assert "is not a collective" in damaged(lambda launches: launches[start].update(collective="all_reduce x float32"))
    assert "is not a collective" in damaged(lambda launches: launches[start].update(collective="broadcast 0 complex"))
    assert "not the arguments" in damaged(lambda launches: launches[start].update(args=[["seed", 0], ["slot", 1]]))
    assert "not the arguments" in damaged(lambda launches: launches[start + 1].update(args=[]))


def test_a_collective_node_refuses_what_it_cannot_combine(dev):
    a, b = dev.randn(3), dev.randn(2).cast(zyx.float16)
    with pytest.raises(ValueError, match="unknown reduction 'prod'"):
        n.collective([a.node], "all_reduce", "prod")
    with pytest.raises(ValueError, match="unknown collective 'gather'"):
        n.collective([a.node], "gather", 0)
    with pytest.raises(ValueError, match="source rank must be a non-negative integer"):
        n.collective([a.node], "broadcast", -1)
    with pytest.raises(TypeError, match="one bucket holds one dtype, got float16, float32"):
        n.collective([a.node, b.node], "all_reduce", "sum")
    with pytest.raises(ValueError, match="on different devices"):
        n.collective([a.node, zyx.CPU().randn(2).node], "all_reduce", "sum")
    node = n.collective([a.node, dev.randn(2, 2).node], "all_reduce", "min")
    assert node.shape == (7,) and node.dtype == zyx.float32


def test_the_gradient_of_a_sum_across_processes_is_the_sum_of_the_gradients(dev):
    a, b = dev.randn(3), dev.randn(2, 2)
    summed = n.collective([a.node, b.node], "all_reduce", "sum")
    ga, gb = gradients(summed, [a.node, b.node], n.const(1.0, summed.shape, summed.dtype, summed.device))
    assert ga.shape == (3,) and gb.shape == (2, 2)
    for grad in (ga, gb):
        found = [node for node in _below(grad) if node.op is Op.COLLECTIVE]
        assert len(found) == 1 and found[0].arg == ("all_reduce", "sum")
    picked = n.collective([a.node], "all_reduce", "max")
    with pytest.raises(NotImplementedError, match="no gradient flows through all_reduce"):
        gradients(picked, [a.node], n.const(1.0, picked.shape, picked.dtype, picked.device))


def _below(node):
    from zyx.trace.node import toposort
    return toposort([node])


def test_gradients_are_bucketed_by_device_and_dtype_from_the_last(dev):
    cpu = zyx.CPU()
    grads = [dev.randn(4), None, dev.randn(2).cast(zyx.float16), dev.randn(8), cpu.randn(3), dev.randn(1)]
    assert buckets(grads, 1 << 20) == [[5, 3, 0], [4], [2]]
    assert buckets(grads, 36) == [[5, 3], [0], [4], [2]]  # 4 + 32 bytes fill the first; 0 starts the next
    assert buckets([dev.randn(100), dev.randn(2)], 16) == [[1], [0]]  # larger than the limit: a bucket alone
    with pytest.raises(ValueError, match="positive number of bytes"):
        buckets(grads, 0)


def test_collectives_need_init_first(dev):
    with pytest.raises(RuntimeError, match=r"needs zyx.distributed.init\(\) first"):
        zyx.distributed.all_reduce(dev.randn(2))
