"""A CPU row kernel keeps the costly value its reduction's pass computes in its output, and its storing pass reads it
back (zyx/jit/transforms/keep_in_output.py): softmax's and a cross-entropy gradient's exponentials computed once,
softmax's division a multiplication by the sum's reciprocal, the results torch's; an output that an in-place update would have written over its input keeps its own buffer."""
import numpy as np
import torch

import zyx
import zyx.nn.functional as F
from zyx.jit.kernel_ir import Alu, Load, Store, walk
from zyx.jit.rows import lower_rows
from zyx.jit.transforms.keep_in_output import keep_in_output
from zyx.trace.ops import Op

RNG = np.random.default_rng(29)


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def test_softmax_computes_each_exponential_once_and_reads_it_back():
    x = zyx.CPU().tensor(data(8, 40))
    root = x.softmax(-1).node
    kernel = lower_rows(root, {id(root): root}, set(), 40).ir
    kept = keep_in_output(kernel)
    exps = lambda k: sum(isinstance(s, Alu) and s.op is Op.EXP for s in walk(k.body))  # noqa: E731
    assert exps(kernel) == 2 and exps(kept) == 1
    output = next(s.buffer for s in walk(kept.body) if isinstance(s, Store))
    assert sum(isinstance(s, Store) and s.buffer == output for s in walk(kept.body)) == 2
    assert any(isinstance(s, Load) and s.buffer == output for s in walk(kept.body))
    # the storing pass multiplies by the sum's reciprocal, computed once before it (as torch's CPU softmax)
    storing = kept.body[-1]
    assert not any(isinstance(s, Alu) and s.op is Op.DIV for s in walk(storing.body))
    assert any(isinstance(s, Alu) and s.op is Op.RECIP for s in kept.body)


def test_what_nothing_computes_twice_is_left_as_it_is():
    x = zyx.CPU().tensor(data(8, 40))
    root = (x - x.mean(-1, keepdim=True)).node  # (the mean's pass computes nothing costly)
    assert keep_in_output(lower_rows(root, {id(root): root}, set(), 40).ir) is None


def test_softmax_log_softmax_and_cross_entropy_match_torch(dev):
    a, target = data(33, 300), RNG.integers(0, 300, 33)
    target[4] = -100
    x, t = dev.tensor(a), torch.tensor(a, requires_grad=True)
    loss = F.cross_entropy(x, dev.tensor(target))
    grad, = loss.backward([x])
    expected = torch.nn.functional.cross_entropy(t, torch.tensor(target))
    expected.backward()
    for got, want in [(x.softmax(-1), t.softmax(-1)), (x.log_softmax(-1), t.log_softmax(-1)), (loss, expected),
                      (grad, t.grad)]:
        np.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_an_output_updated_in_place_keeps_its_own_buffer(dev):
    """w.assign(w * 0.5 + softmax(x)) in a jitted step: its row kernel reads w only where it stores, so it could write
    over w's buffer; its output read back before it is complete, it must not (w would be half overwritten by then)."""
    a, b = data(16, 64), data(16, 64)
    w, x = dev.tensor(a), dev.tensor(b)

    @zyx.jit
    def step(w, x):
        w.assign(w * 0.5 + x.softmax(-1))
        return w.sum()

    expected = a.copy()
    for _ in range(3):
        step(w, x)
        e = np.exp(b - b.max(-1, keepdims=True))
        expected = expected * 0.5 + e / e.sum(-1, keepdims=True)
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-5, atol=1e-6)
