"""Module: parameters found in attributes, lists and dicts; buffers; modes; placement; state dicts."""
import numpy as np
import pytest

import zyx
from zyx import nn


class Block(nn.Module):
    def __init__(self, device):
        self.scale = zyx.ones(2, device=device)
        self.layers = [nn.Linear(2, 2, device=device), nn.Linear(2, 2, bias=False, device=device)]
        self.heads = {"left": nn.Linear(2, 1, device=device), "right": zyx.zeros(1, device=device)}
        self.norm = nn.BatchNorm1d(2, device=device)
        self.name, self.sizes = "block", (2, 2)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x * self.scale)
        return self.heads["left"](self.norm(x)) + self.heads["right"]


class Model(nn.Module):
    def __init__(self, device):
        self.block = Block(device)
        self.shared = self.block.layers[0]   # the same module twice: its tensors are counted once
        self.dropout = nn.Dropout(0.5)


PARAMETER_NAMES = ["block.scale", "block.layers.0.weight", "block.layers.0.bias", "block.layers.1.weight",
                   "block.heads.left.weight", "block.heads.left.bias", "block.heads.right", "block.norm.weight",
                   "block.norm.bias"]
BUFFER_NAMES = ["block.norm.running_mean", "block.norm.running_var", "block.norm.num_batches_tracked"]


def test_parameters_are_found_in_a_stable_order(nn_device):
    model = Model(nn_device)
    assert [name for name, _ in model.named_parameters()] == PARAMETER_NAMES
    assert model.parameters()[1] is model.block.layers[0].weight
    assert [name for name, _ in model.named_buffers()] == BUFFER_NAMES
    assert not {id(b) for b in model.buffers()} & {id(p) for p in model.parameters()}
    assert list(model.state_dict()) == PARAMETER_NAMES + BUFFER_NAMES


def test_gradients_flow_to_every_parameter(nn_device):
    model = Model(nn_device)
    loss = model.block(zyx.randn(4, 2, device=nn_device)).square().sum()
    grads = loss.backward(model.parameters())
    assert all(g is not None and g.shape == p.shape for g, p in zip(grads, model.parameters()))


def test_train_and_eval_reach_every_module(nn_device):
    model = Model(nn_device)
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    assert len(model.modules()) == 7  # Model, Block, 3 Linear, BatchNorm, Dropout


def test_to_moves_every_tensor(nn_device):
    model = Model(zyx.CPU())
    assert model.to(nn_device) is model
    assert all(t.device is nn_device for t in model.state_dict().values())
    assert model.to("cpu").block.heads["right"].device is zyx.CPU()


def test_state_dict_round_trip(nn_device):
    source, target = Model(nn_device), Model(nn_device)
    handles = target.parameters()
    target.load_state_dict(source.state_dict())
    assert target.parameters() == handles, "load_state_dict updates tensors in place"
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert np.array_equal(a.numpy(), b.numpy()), name
        assert a.dtype == b.dtype


def test_state_dict_is_a_snapshot(nn_device):
    model = nn.Linear(2, 2, device=nn_device)
    snapshot = model.state_dict()
    before = snapshot["weight"].numpy()
    nn.SGD(lr=1.0).update(model.parameters(), [zyx.ones(2, 2, device=nn_device), zyx.ones(2, device=nn_device)])
    assert np.array_equal(snapshot["weight"].numpy(), before)
    assert not np.array_equal(model.weight.numpy(), before)


def test_load_state_dict_reports_every_problem(nn_device):
    model = nn.Linear(3, 2, device=nn_device)
    state = {"weight": np.zeros((2, 4), np.float32), "extra": np.zeros(1, np.float32)}
    with pytest.raises(nn.StateDictError) as error:
        model.load_state_dict(state)
    message = str(error.value)
    assert "missing keys: bias" in message and "unexpected keys: extra" in message
    assert "weight (checkpoint (2, 4), module (2, 3))" in message
    assert error.value.missing == ["bias"] and error.value.unexpected == ["extra"]
    with pytest.raises(nn.StateDictError, match="shape mismatch"):
        model.load_state_dict(state, strict=False)


def test_load_state_dict_non_strict_and_casting(nn_device):
    model = nn.BatchNorm1d(2, device=nn_device)
    result = model.load_state_dict({"weight": np.array([2, 3]), "unknown": np.zeros(1)}, strict=False)
    assert result.missing_keys == ["bias", "running_mean", "running_var", "num_batches_tracked"]
    assert result.unexpected_keys == ["unknown"]
    assert model.weight.dtype == zyx.float32 and model.weight.tolist() == [2.0, 3.0]


def test_custom_module_needs_no_super_init(nn_device):
    class Scale(nn.Module):
        def __init__(self):
            self.factor = zyx.full((1,), 2.0, device=nn_device)

        def forward(self, x):
            return x * self.factor

    model = nn.Sequential(Scale(), nn.ReLU())
    assert model(zyx.tensor([-1.0, 3.0], device=nn_device)).tolist() == [0.0, 6.0]
    assert [name for name, _ in model.named_parameters()] == ["0.factor"]
    assert "Scale" in repr(model) and "ReLU" in repr(model)
    with pytest.raises(NotImplementedError):
        nn.Module()(1)
