"""Builds are quiet (no compiler chatter on stderr, no CompilerWarning) unless ZYX_DEBUG asks; a failed build names
the kernel and the files where its source and log were saved. PoCL's cache goes inside a private zyx cache only.
The options a device's kernels are built with follow from its runtime and the shapes its kernels take."""
import os
import uuid
import warnings
from types import SimpleNamespace

import numpy as np
import pyopencl as cl
import pytest

import zyx
from zyx.jit.compiler import CHECKING_OPTIONS, KernelBuildError, build_source, kernel_options
from zyx.jit.device_traits import DeviceTraits
from zyx.runtime.platforms import select_device
from zyx.runtime.pocl_cache import place_pocl_cache


@pytest.fixture(scope="module")
def device():
    return select_device()


@pytest.fixture(scope="module")
def context(device):
    return cl.Context([device])


def vector_source() -> str:
    """A kernel on 16-lane vectors whose build always logs a warning (its own #warning: whether PoCL's clang warns
    about the vectors' ABI depends on the CPU); unique, so no cache answers it."""
    return (f"#warning {WARNING}\n__kernel void vector_exp(__global float16* x) {{ /* {uuid.uuid4()} */\n"
            "  x[get_global_id(0)] = exp(x[get_global_id(0)]); }")


WARNING = "zyx: a line for the build log"


def test_a_build_prints_nothing_and_warns_nothing(context, device, capfd, monkeypatch):
    monkeypatch.delenv("ZYX_DEBUG", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        program = build_source(context, device, vector_source())
    assert program.vector_exp is not None
    assert caught == [] and capfd.readouterr().err == ""


def test_zyx_debug_2_prints_the_build_log(context, device, monkeypatch, capsys):
    """The driver's log, whatever it holds: PoCL's names the source's #warning, NVIDIA's only its own notes."""
    monkeypatch.setenv("ZYX_DEBUG", "2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyopencl's own CompilerWarning comes too: ZYX_DEBUG asked for it
        program = build_source(context, device, vector_source())
    printed = capsys.readouterr().err
    log = printed.partition("zyx.cache: build log of vector_exp:\n")[2]
    driver_log = program.get_build_info(device, cl.program_build_info.LOG).strip()
    assert driver_log and driver_log in log, printed
    if "Portable Computing Language" in device.platform.name:
        assert WARNING in log, printed


def test_a_failed_build_names_the_kernel_and_saves_source_and_log(context, device, tmp_path, monkeypatch):
    monkeypatch.setenv("ZYX_CACHE_DIR", str(tmp_path / "cache"))
    source = "__kernel void broken_kernel(__global float* x) { x[0] = undefined_name; }"
    with pytest.raises(KernelBuildError) as raised:
        build_source(context, device, source)
    message = str(raised.value)
    assert message.startswith(f"OpenCL could not build broken_kernel on {device.name.strip()}")
    assert "undefined_name" in message  # the compiler's log, not just "BUILD_PROGRAM_FAILURE"
    saved = sorted((tmp_path / "cache" / "build-errors").iterdir())
    assert [path.suffix for path in saved] == [".cl", ".log"] and all(str(path) in message for path in saved)
    assert saved[0].read_text() == source and "undefined_name" in saved[1].read_text()
    assert all(path.stat().st_mode & 0o077 == 0 for path in saved)


def test_a_failed_build_in_a_shared_cache_directory_saves_nothing(context, device, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("ZYX_CACHE_DIR", str(shared))
    with pytest.raises(KernelBuildError, match="not saved: the cache directory is not private"):
        build_source(context, device, "__kernel void broken_kernel(__global float* x) { x[0] = nope; }")
    assert list(shared.iterdir()) == []


@pytest.mark.parametrize("mode, placed", [(0o700, True), (0o777, False)])
def test_pocl_cache_goes_inside_a_private_zyx_cache_only(tmp_path, monkeypatch, mode, placed):
    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(mode)
    monkeypatch.setenv("ZYX_CACHE_DIR", str(root))
    monkeypatch.delenv("POCL_CACHE_DIR", raising=False)
    place_pocl_cache()
    assert os.environ.get("POCL_CACHE_DIR") == (str(root / "pocl") if placed else None)


def test_a_pocl_cache_dir_the_user_chose_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("ZYX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("POCL_CACHE_DIR", str(tmp_path / "mine"))
    place_pocl_cache()
    assert os.environ["POCL_CACHE_DIR"] == str(tmp_path / "mine") and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("gpu_shaped, is_gpu, capability, unsized, options", [
    (False, False, None, False, ()),                 # a CPU's own kernels: as optimized as the driver makes them
    (True, False, None, False, CHECKING_OPTIONS),    # GPU-shaped kernels checked on a CPU driver: unoptimized,
    (True, False, None, True, ()),                   # but for kernels of no set work-group size (a crash)
    (True, True, (9, 0), False, ("-DZYX_NATIVE_MATH", "-DZYX_PTX_CVT")),  # NVIDIA sm_80 and later: bfloat16
    (True, True, (8, 0), True, ("-DZYX_NATIVE_MATH", "-DZYX_PTX_CVT")),   # rounding by PTX's cvt
    (True, True, (7, 5), False, ("-DZYX_NATIVE_MATH",)),  # older NVIDIA: no bf16 cvt; GPUs: erf by native_recip
    (True, True, None, False, ("-DZYX_NATIVE_MATH",)),    # other GPUs
])
def test_kernel_options_follow_the_runtime_and_the_kernels_shapes(gpu_shaped, is_gpu, capability, unsized, options):
    runtime = SimpleNamespace(is_gpu=is_gpu, compute_capability=capability)
    assert kernel_options(DeviceTraits(gpu=gpu_shaped), runtime, unsized) == options


def test_gpu_shaped_kernels_on_a_cpu_driver_are_built_unoptimized_and_compute_the_same(dev, gpu):
    """The `gpu` fixture's device schedules GPU-shaped kernels on PoCL: built with CHECKING_OPTIONS, a launch group
    of a set work-group size too (reductions' groups of 256 beside elementwise kernels), but for a kernel or launch
    group without one (PoCL picks its size), built apart from them with the optimizer on; their results the
    reference's."""
    if dev.runtime.is_gpu:
        pytest.skip("the device is a GPU: its GPU-shaped kernels are its own, built optimized")
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(shape).astype(np.float32) for shape in ((64, 96), (8, 5)))
    x, y = gpu.tensor(a), gpu.tensor(b)
    scaled, summed = (x / (x.exp() * 2).sum()).sum(axis=0), y.sum(axis=0)
    zyx.realize(scaled, summed)
    np.testing.assert_allclose(scaled.numpy(), (a / (np.exp(a) * 2).sum()).sum(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(summed.numpy(), b.sum(axis=0), rtol=1e-5, atol=1e-6)
    shifted, scaled_up = x + 1, (y * 2).exp()
    zyx.realize(shifted, scaled_up)
    np.testing.assert_allclose(shifted.numpy(), a + 1, rtol=1e-6)
    np.testing.assert_allclose(scaled_up.numpy(), np.exp(b * 2), rtol=1e-5)
    launches = [launch for program in gpu.programs.values() for launch in program.launches if launch.is_kernel]
    assert sorted((launch.kernels > 1, launch.local_size is None) for launch in launches) == [
        (False, True), (True, False), (True, True)]
    for launch in launches:
        built = gpu._kernels[launch.source].program.get_build_info(gpu.runtime.device, cl.program_build_info.OPTIONS)
        assert (CHECKING_OPTIONS[0] in built.split()) != (launch.local_size is None), (launch.name, built)
