"""The devices of this process: zyx.CPU(), zyx.OpenCL(), zyx.WGPU(), zyx.Torch() (each made once), the default
device, and device specs ('cpu', 'opencl:N'...). The Device class and its kinds live in zyx/runtime/.

OpenCL, WGPU and Torch devices import their module when first made: it loads the JIT and pyopencl, wgpu or torch
(optional, and slow to import), which `import zyx` and a CPU-only program never pay for.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from .runtime.device import Device

_DEVICES: dict[Any, Device] = {}


def synchronize(device: Optional[Device] = None) -> None:
    """Wait for the work queued on `device` (every device made so far when None), e.g. before reading a clock:
    realizing a tensor only enqueues its kernels."""
    if device is not None and not isinstance(device, Device):
        raise TypeError(f"zyx.synchronize expects a zyx.Device or None, got {type(device).__name__}")
    for each in [device] if device is not None else list(_DEVICES.values()):
        each.synchronize()


def CPU() -> Device:
    """Tensors in RAM, traces run by numpy: the reference device."""
    if "cpu" not in _DEVICES:
        from .runtime.cpu import CPUDevice  # (its interpreter: a program on another device never loads it)
        _DEVICES["cpu"] = CPUDevice()
    return _DEVICES["cpu"]


def OpenCL(platform: int | str | None = None, device: int | str | None = None) -> Device:
    """Tensors in OpenCL buffers; traces fused into kernels. Picks a GPU if present, else the fastest CPU."""
    from .jit.probe import compile_problem  # (pyopencl: see the module's docstring)
    from .runtime.platforms import select_device
    return _opencl_for(select_device(platform, device, problem=compile_problem))


def _opencl_for(cl_device: Any) -> Device:
    key = ("opencl", cl_device.int_ptr)
    if key not in _DEVICES:
        from .runtime.opencl_device import OpenCLDevice  # (the JIT and pyopencl: see the module's docstring)
        _DEVICES[key] = OpenCLDevice(cl_device)
    return _DEVICES[key]


def WGPU(adapter: int | str | None = None) -> Device:
    """Tensors in WebGPU buffers (wgpu: Vulkan, Metal, DirectX 12); traces fused into WGSL kernels. `adapter`: an
    index into `zyx devices`' WGPU list, or a power preference: "high-performance" (the default: a discrete GPU
    first) or "low-power". float64 is not supported; int64 is computed in 32 bits."""
    from .runtime.webgpu import select_adapter  # (wgpu: see the module's docstring)
    return _wgpu_for(select_adapter(adapter))


def _wgpu_for(index: int) -> Device:
    key = ("wgpu", index)
    if key not in _DEVICES:
        from .runtime.wgpu_device import WgpuDevice  # (the JIT: see the module's docstring)
        _DEVICES[key] = WgpuDevice(index)
    return _DEVICES[key]


FUSING_KINDS = ("opencl", "wgpu")  # devices whose traces are scheduled into kernels
CAPTURING_KINDS = (*FUSING_KINDS, "torch")  # devices whose programs zyx.jit captures and replays


def import_torch() -> Any:
    """The torch module; ImportError naming the extra to install when it is missing."""
    try:
        import torch  # (see the module's docstring)
    except ImportError as error:
        raise ImportError(f"zyx.Torch() and the torch interop need PyTorch, which cannot be imported here "
                          f"({error}): pip install zyx[torch]") from None
    return torch


def Torch(device: Any = None, compile: bool | str | None = None) -> Device:
    """Tensors in torch tensors, traces run as torch ops (cuBLAS, cuDNN, MPS... wherever PyTorch runs).

    `device`: "cpu", "cuda", "cuda:N", "mps" or a torch.device; default CUDA if there is one, else MPS, else the
    CPU. `compile`: run each program as a `torch.compile`d function, True or a torch.compile mode such as
    "reduce-overhead" (CUDA graphs); default: env ZYX_TORCH_COMPILE (1 or a mode). Each program's first run pays
    for compiling. Needs PyTorch (`pip install zyx[torch]`).
    """
    torch = import_torch()
    from .runtime.torch_device import TorchDevice, compile_mode  # (torch: see the module's docstring)
    chosen = resolve_torch_device(torch, device)
    mode = compile_mode(compile)
    key = ("torch", str(chosen), mode)
    if key not in _DEVICES:
        _DEVICES[key] = TorchDevice(chosen, mode)
    return _DEVICES[key]


def resolve_torch_device(torch: Any, device: Any) -> Any:
    """The torch.device `device` names, with the CUDA index filled in; ValueError when torch has no such device."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"zyx.Torch: {device!r} is not a torch device ({error})") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = torch.cuda.current_device() if chosen.index is None and count else chosen.index or 0
        if index >= count:
            raise ValueError(f"zyx.Torch: no CUDA device {index} (torch {torch.__version__} sees {count})")
        return torch.device("cuda", index)
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"zyx.Torch: MPS is not available to torch {torch.__version__} here")
    if chosen.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"zyx.Torch: device type {chosen.type!r} is not supported (cpu, cuda or mps)")
    return chosen


DEVICE_SPECS = ("'cpu', 'opencl', 'opencl:N', 'wgpu', 'wgpu:N', 'torch' or 'torch:DEVICE' (torch:cpu, torch:cuda, "
                "torch:cuda:N, torch:mps)")


def device_from_spec(spec: str) -> Device:
    """`cpu`, `opencl`, `opencl:N` (the N-th OpenCL device in `zyx devices` order), `wgpu` or `wgpu:N` (the N-th
    WebGPU adapter), `torch` or `torch:DEVICE` (a torch device: cpu, cuda, cuda:N, mps; `+compile` at the end asks
    for `compile=True`, `+compile=MODE` for a torch.compile mode)."""
    spec = spec.strip().lower()
    if spec == "cpu":
        return CPU()
    if spec == "opencl":
        return OpenCL()
    if spec.startswith("opencl:") and spec[7:].isdigit():
        from .runtime.platforms import select_device_by_ordinal  # (pyopencl: see the module's docstring)
        return _opencl_for(select_device_by_ordinal(int(spec[7:])))
    if spec == "wgpu":
        return WGPU()
    if spec.startswith("wgpu:") and spec[5:].isdigit():
        return WGPU(int(spec[5:]))
    name, _, option = spec.partition("+")
    if (name == "torch" or name.startswith("torch:")) and (option in ("", "compile") or option.startswith("compile=")):
        return Torch(name[6:] or None, compile=option.partition("=")[2] or True if option else None)
    raise ValueError(f"unknown device {spec!r}: use {DEVICE_SPECS}")


_default: list[Device] = []


def default_device() -> Device:
    """The device for tensors made without one: env ZYX_DEVICE (cpu, opencl, opencl:N, wgpu, wgpu:N, torch,
    torch:DEVICE), else CPU."""
    if not _default:
        _default.append(device_from_spec(os.environ.get("ZYX_DEVICE", "cpu")))
    return _default[0]


def set_default_device(device: Device | str) -> None:
    """The device for tensors made without one, from now on (a Device or a spec: 'cpu', 'opencl:N', 'wgpu',
    'torch:cuda'...)."""
    _default[:] = [device if isinstance(device, Device) else device_from_spec(device)]

