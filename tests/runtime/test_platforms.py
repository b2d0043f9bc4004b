"""Device enumeration on the real OpenCL install, and the default choice on made-up machines."""
import pyopencl as cl
import pytest

from zyx.runtime import platforms
from zyx.runtime.platforms import describe_devices, pocl_version, select_device, select_device_by_ordinal

EXPECTED_KEYS = {
    "platform_index", "platform", "platform_version", "device_index", "device", "type", "global_mem_bytes",
    "max_alloc_bytes", "compute_units", "opencl_c_version", "driver_version", "fp16", "fp64",
}


def _fake(platform_index, platform_version, device_type, device_index=0, device="dev", memory=2**32):
    description = {
        "platform_index": platform_index, "platform": f"Platform {platform_index}",
        "platform_version": platform_version, "device_index": device_index, "device": device,
        "type": device_type, "global_mem_bytes": memory,
    }
    return description, f"cl-device {platform_index}.{device_index}"


@pytest.fixture
def fake_machine(monkeypatch):
    """Replaces enumeration with the given (description, device) pairs; devices named in `broken` cannot compile."""
    def install(*pairs, broken=()):
        monkeypatch.setattr(platforms, "_enumerate", lambda: tuple(pairs))
        monkeypatch.setattr(platforms, "compile_problem",
                            lambda device: "unknown target CPU 'generic'" if device in broken else None)
    return install


def test_describe_devices_lists_every_device_with_all_keys():
    devices = describe_devices()
    assert devices, "this machine has PoCL installed"
    for description in devices:
        assert set(description) == EXPECTED_KEYS
        assert description["type"] in {"GPU", "CPU", "ACCELERATOR", "CUSTOM", "OTHER"}
        assert description["max_alloc_bytes"] <= description["global_mem_bytes"]
        assert isinstance(description["fp16"], bool) and isinstance(description["fp64"], bool)


def test_describe_devices_returns_copies():
    describe_devices()[0]["device"] = "changed"
    assert describe_devices()[0]["device"] != "changed"


def test_ordinals_follow_describe_order():
    for ordinal, description in enumerate(describe_devices()):
        device = select_device_by_ordinal(ordinal)
        assert isinstance(device, cl.Device)
        assert device.name.strip() == description["device"]


def test_ordinal_out_of_range_names_what_exists():
    with pytest.raises(ValueError, match=r"opencl:99.*\n.*opencl:0"):
        select_device_by_ordinal(99)


def test_default_is_a_real_device_of_the_best_platform():
    device = select_device()
    best = max(describe_devices(), key=platforms.preference)
    assert device.name.strip() == best["device"]


def test_explicit_choice_by_name_substring_is_case_insensitive():
    first = describe_devices()[0]
    assert select_device(platform=first["platform"].upper()).platform.name.strip() == first["platform"]
    assert select_device(device=first["device"].lower()).name.strip() == first["device"]


def test_unknown_choice_raises_value_error_listing_devices():
    with pytest.raises(ValueError, match=r"platform='no such platform'.*available:\n  opencl:0"):
        select_device(platform="no such platform")
    with pytest.raises(ValueError, match="device=7"):
        select_device(platform=0, device=7)


@pytest.mark.parametrize("version, expected", [
    ("OpenCL 3.0 PoCL 3.1+debian  Linux, None+Asserts", (3, 1, 0, 1)),
    ("OpenCL 3.0 PoCL 3.0-rc2  Linux, Release", (3, 0, 0, 0)),
    ("OpenCL 3.0 PoCL 5.0.1  Linux", (5, 0, 1, 1)),
    ("OpenCL 3.0 CUDA 13.0.48", None),
])
def test_pocl_version_parsing(version, expected):
    assert pocl_version(version) == expected


def test_default_prefers_newest_pocl_whatever_the_order(fake_machine):
    wheel = _fake(0, "OpenCL 3.0 PoCL 3.0-rc2  Linux", "CPU")
    debian = _fake(1, "OpenCL 3.0 PoCL 3.1+debian  Linux", "CPU")
    fake_machine(wheel, debian)
    assert select_device() == debian[1]
    fake_machine(debian, wheel)
    assert select_device() == debian[1]


def test_release_beats_its_release_candidate(fake_machine):
    candidate = _fake(0, "OpenCL 3.0 PoCL 3.0-rc2", "CPU")
    release = _fake(1, "OpenCL 3.0 PoCL 3.0", "CPU")
    fake_machine(candidate, release)
    assert select_device() == release[1]


def test_gpu_beats_any_cpu(fake_machine):
    pocl = _fake(0, "OpenCL 3.0 PoCL 6.0", "CPU")
    nvidia = _fake(1, "OpenCL 3.0 CUDA 13.0.48", "GPU")
    fake_machine(pocl, nvidia)
    assert select_device() == nvidia[1]


def test_a_device_that_cannot_compile_is_passed_over(fake_machine):
    newest = _fake(0, "OpenCL 3.0 PoCL 6.0", "CPU")
    older = _fake(1, "OpenCL 3.0 PoCL 3.1", "CPU")
    fake_machine(newest, older, broken=(newest[1],))
    assert select_device() == older[1]
    assert select_device(platform=0) == newest[1]  # an explicit choice is honoured
    fake_machine(newest, broken=(newest[1],))
    with pytest.raises(RuntimeError, match="unknown target CPU"):
        select_device()


def test_a_given_problem_check_is_asked_instead_of_the_probe(fake_machine):
    newest = _fake(0, "OpenCL 3.0 PoCL 6.0", "CPU")
    older = _fake(1, "OpenCL 3.0 PoCL 3.1", "CPU")
    fake_machine(newest, older, broken=(older[1],))
    asked = []

    def remembered(device):  # what zyx.OpenCL() passes: passes remembered across processes (zyx/jit/probe.py)
        asked.append(device)
        return "no longer compiles" if device == newest[1] else None
    assert select_device(problem=remembered) == older[1] and asked == [newest[1], older[1]]
    assert select_device() == newest[1]  # the plain probe (faked here: only `older` is broken)


def test_single_device_is_chosen(fake_machine):
    only = _fake(0, "OpenCL 3.0 PoCL 3.0-rc2", "CPU")
    fake_machine(only)
    assert select_device() == only[1]


def test_choices_narrow_then_preference_picks(fake_machine):
    wheel = _fake(0, "OpenCL 3.0 PoCL 3.0-rc2", "CPU")
    debian = _fake(1, "OpenCL 3.0 PoCL 3.1+debian", "CPU")
    fake_machine(wheel, debian)
    assert select_device(platform="3.0-rc2") == wheel[1]
    assert select_device(platform=0) == wheel[1]
    assert select_device(platform="0") == wheel[1]
    assert select_device(device=0) == debian[1]


def test_no_platform_at_all(fake_machine):
    fake_machine()
    assert describe_devices() == []
    with pytest.raises(ValueError, match="no OpenCL platform found"):
        select_device()
