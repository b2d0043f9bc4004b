"""zyx.save / zyx.load in safetensors: round trips, and files shared with PyTorch in both directions."""
import numpy as np
import pytest
import safetensors.torch
import torch

import zyx
from zyx import nn
from nn_reference import assert_close, copy_weights, rng


def zyx_model(device):
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, device=device), nn.BatchNorm2d(4, device=device), nn.ReLU(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 3, device=device))


def torch_model():
    return torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 3))


def trained_torch_model():
    """Non-default running statistics, so that the buffers really travel."""
    torch.manual_seed(0)
    model = torch_model()
    model(torch.randn(8, 2, 4, 4) * 3 + 1)
    return model.eval()


X = rng().standard_normal((2, 2, 4, 4)).astype(np.float32)


def test_round_trip_keeps_values_dtypes_and_shapes(nn_device, tmp_path):
    state = {"f32": zyx.randn(2, 3, device=nn_device),
             "f16": zyx.tensor([1.5, -2], device=nn_device, dtype=zyx.float16),
             "i64": zyx.arange(4, device=nn_device), "flag": zyx.tensor([True, False], device=nn_device),
             "scalar": zyx.full((), 3.0, device=nn_device), "array": np.arange(3, dtype=np.int32)}
    zyx.save(state, tmp_path / "state.safetensors", metadata={"epoch": "3"})
    loaded = zyx.load(tmp_path / "state.safetensors", device=nn_device)
    assert sorted(loaded) == sorted(state)
    for name, value in state.items():
        expected = value.numpy() if isinstance(value, zyx.Tensor) else value
        assert loaded[name].shape == expected.shape and loaded[name].dtype.np == expected.dtype, name
        assert np.array_equal(loaded[name].numpy(), expected), name
        assert loaded[name].device is nn_device


def test_save_rejects_non_string_keys(tmp_path):
    with pytest.raises(TypeError, match="strings"):
        zyx.save({1: zyx.zeros(1)}, tmp_path / "bad.safetensors")


def test_a_pytorch_file_loads_into_the_matching_zyx_model(nn_device, tmp_path):
    reference = trained_torch_model()
    safetensors.torch.save_file(reference.state_dict(), tmp_path / "torch.safetensors")
    model = zyx_model(nn_device)
    model.load_state_dict(zyx.load(tmp_path / "torch.safetensors", device=nn_device))
    model.eval()
    assert_close(model(zyx.tensor(X, device=nn_device)), reference(torch.tensor(X)))


def test_a_zyx_file_loads_into_the_matching_pytorch_model(nn_device, tmp_path):
    model = zyx_model(nn_device)
    copy_weights(model, trained_torch_model())   # non-default buffers
    zyx.save(model.state_dict(), tmp_path / "zyx.safetensors")
    reference = torch_model()
    reference.load_state_dict(safetensors.torch.load_file(tmp_path / "zyx.safetensors"))
    model.eval(), reference.eval()
    assert_close(model(zyx.tensor(X, device=nn_device)), reference(torch.tensor(X)))
    assert reference[1].num_batches_tracked.item() == 1


def test_a_transformer_block_checkpoint_crosses_over(nn_device, tmp_path):
    reference = torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, activation="gelu",
                                                 batch_first=True, norm_first=True)
    safetensors.torch.save_file(reference.state_dict(), tmp_path / "block.safetensors")
    block = nn.TransformerBlock(8, 2, dim_feedforward=16, device=nn_device)
    block.load_state_dict(zyx.load(tmp_path / "block.safetensors", device=nn_device))
    x = rng().standard_normal((2, 3, 8)).astype(np.float32)
    assert_close(block(zyx.tensor(x, device=nn_device)), reference(torch.tensor(x)), atol=2e-5)
