"""Tensors to and from PyTorch: `t.torch()` (tensor_convert.py) and `zyx.from_torch(t)`.

`t.torch()` shares memory where the device allows: on zyx.Torch() it is the buffer itself, on zyx.CPU() a view
of the numpy array; elsewhere it is a host copy. Zyx values never change in place, except by a jitted step's
update of its own parameters, which then shows in a shared torch tensor too (as in-place updates show in
PyTorch's `.numpy()`); `.clone()` the torch tensor to keep a value. `zyx.from_torch` copies: a zyx tensor must
not change when the torch tensor is later written to.
"""
from __future__ import annotations

from typing import Any, Optional

from .devices import Device, Torch, import_torch
from .dtypes import to_dtype
from .leaves import data_leaf, torch_leaf
from .tensor import Tensor


def from_torch(source: Any, device: Optional[Device] = None) -> Tensor:
    """A zyx tensor holding a copy of a torch tensor's values, on `device` (default: zyx.Torch() on the torch
    tensor's own device; any zyx device works, through the host where it is not a torch one)."""
    torch = import_torch()
    from .runtime.torch_arrays import TORCH_DTYPES, to_numpy  # (torch: optional, slow to import)
    if not isinstance(source, torch.Tensor):
        raise TypeError(f"from_torch expects a torch.Tensor, got {type(source).__name__}")
    names = {dtype: name for name, dtype in TORCH_DTYPES.items()}
    if source.dtype not in names:
        raise TypeError(f"from_torch: zyx has no dtype for {source.dtype} (it holds {', '.join(TORCH_DTYPES)})")
    device = Torch(source.device) if device is None else device
    dtype = to_dtype(names[source.dtype])
    if device.kind == "torch":
        return Tensor(torch_leaf(source, dtype, device))
    return Tensor(data_leaf(to_numpy(source.detach().to("cpu").contiguous()), device, dtype))
