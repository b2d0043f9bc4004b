"""Autotuning (zyx/jit/tune.py): searches that only accept what the heuristics' kernel computes, winners that
persist in the cache database and shape later schedules, and the modes, the CLI and the records' validation."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import zyx
from zyx import cli
from zyx.jit import schedule as schedule_module
from zyx.jit import tune, tuning_mode
from zyx.jit.cache import device_fingerprint
from zyx.jit.choices import NO_TUNING, Choice, TunedChoices
from zyx.jit.disk_store import CacheWarning, DiskStore
from zyx.jit.kernel_ir import Const, If, Store
from zyx.jit.program import build_program
from zyx.jit.program_store import program_key
from zyx.jit.device_traits import DeviceTraits
from zyx.jit.schedule import schedule
from zyx.jit.tune_store import TuneRecord, Trial, TuningStore, parse_record
from zyx.trace.hashing import signature

REPOSITORY = Path(__file__).resolve().parents[2]
# child processes import this repository first, then what the parent found (dependencies installed with --target)
CHILD_PYTHONPATH = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
RNG = np.random.default_rng(0)
X = RNG.standard_normal((64, 64), dtype=np.float32)
W = RNG.standard_normal((64, 64), dtype=np.float32)
KERNELS = {  # one kernel each, of the three kinds a search shapes differently
    "product": (lambda x, w: (x @ w).relu(), lambda x, w: np.maximum(x @ w, 0)),
    "row sums": (lambda x, w: (x.exp() * 2).sum(1), lambda x, w: (np.exp(x) * 2).sum(1)),
    "elementwise": (lambda x, w: (x * w).tanh() + 1, lambda x, w: np.tanh(x * w) + 1),
}


@pytest.fixture
def always(monkeypatch):
    """Searches under ZYX_TUNE=1 take every kernel, however fast (these are small)."""
    monkeypatch.setattr(tuning_mode, "THRESHOLD_SECONDS", 0.0)
    monkeypatch.setattr(tuning_mode, "GPU_THRESHOLD_SECONDS", 0.0)


def scheduled(dev, kind: str, traits: DeviceTraits, tuned: TunedChoices = NO_TUNING):
    make, _ = KERNELS[kind]
    kernels, _ = schedule([make(dev.tensor(X), dev.tensor(W)).node], traits, tuned)
    (kernel,) = [k for k in kernels if k.site is not None]
    return kernels, kernel


def searched(dev, kind: str, tmp_path: Path, traits: DeviceTraits = None) -> TuneRecord:
    traits = traits or dev.traits
    kernels, kernel = scheduled(dev, kind, traits)
    (record,) = tune.Tuner(dev.runtime, traits, TuningStore(tmp_path)).search(kernels, NO_TUNING, 1)
    assert record.kernel == kernel.site.key and record.untuned_name == kernel.name
    return record


def realized_with(dev, kind: str, tuned: TunedChoices) -> np.ndarray:
    """The kernel's values on the device, scheduled with `tuned` (a fresh trace: no program from memory)."""
    make, _ = KERNELS[kind]
    dev.forget_programs()
    previous, dev._tuned = dev._tuned, tuned
    try:
        return make(dev.tensor(X), dev.tensor(W)).numpy()
    finally:
        dev._tuned = previous


# -- searches ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(KERNELS))
def test_every_candidate_computes_the_untuned_values_and_the_winner_is_right(dev, kind, tmp_path, always):
    record = searched(dev, kind, tmp_path)
    assert record.trials[0].choice == record.heuristic and len(record.trials) >= 2
    assert {trial.status for trial in record.trials} <= {"ok", "cut"}, record.trials
    assert record.speedup >= 1 and (record.speedup == 1) == (record.choice == record.heuristic)
    out = realized_with(dev, kind, TunedChoices({record.kernel: record.choice}))
    np.testing.assert_allclose(out, KERNELS[kind][1](X, W).reshape(out.shape), rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_gpu_shaped_candidates_compute_the_untuned_values(dev, tmp_path, always):
    """Local-memory tiles and work groups (what a GPU gets), run on whatever device is here."""
    traits = DeviceTraits(gpu=True, group_size=64, vector_width=4, max_group_size=256)
    for kind, family in (("product", "local_tiles"), ("row sums", "plain")):
        record = searched(dev, kind, tmp_path / kind, traits)
        assert record.heuristic.family == family
        assert {trial.status for trial in record.trials} <= {"ok", "cut"}, record.trials


def test_a_candidate_computing_other_values_is_rejected(dev, tmp_path, always, monkeypatch):
    apply = schedule_module._apply_plain

    def wrong_at_width_8(kernel, space, tile, choice, vector, scalar_gathers):
        shaped = apply(kernel, space, tile, choice, vector, scalar_gathers)
        if choice.get("width", 1) != 8:
            return shaped
        body = tuple(dataclasses.replace(s, value=Const(0.0, s.dtype, getattr(s.value, "width", 1)))
                     if isinstance(s, Store) else s for s in shaped.body)
        assert any(isinstance(s, Store) for s in body) and not any(isinstance(s, If) for s in body)
        return dataclasses.replace(shaped, body=body)

    monkeypatch.setattr(schedule_module, "_apply_plain", wrong_at_width_8)
    record = searched(dev, "elementwise", tmp_path)
    statuses = {trial.choice.get("width", 1): trial.status for trial in record.trials}
    assert statuses[8] == "wrong" and record.choice.get("width", 1) != 8
    assert all(status in ("ok", "cut") for width, status in statuses.items() if width != 8)


# -- persistence ---------------------------------------------------------------------------------------------

def stored_winner(dev, tmp_path: Path, heuristic_won: bool = False,
                  device: dict = None) -> tuple[TuneRecord, object]:
    """A record (as a search would write it) choosing another vector width than the heuristics' for the
    elementwise kernel (or keeping the heuristics' choice), on this device or `device`; and that kernel as the
    heuristics shape it."""
    _, kernel = scheduled(dev, "elementwise", dev.traits)
    site = kernel.site
    other = next(c for c in tune.candidates(site, dev.traits, 1) if c != site.heuristic)
    winner, name, relative = (site.heuristic, kernel.name, 1.0) if heuristic_won else (other, "e_winner", 0.5)
    record = TuneRecord(site.key, device or device_fingerprint(dev.runtime.device), kernel.name, name,
                        site.heuristic, winner, 2e-3, 2e-3 * relative, relative,
                        (Trial(site.heuristic, 2e-3, "ok"), Trial(other, 1e-3, "ok", 0.5)), 1, 0.5)
    TuningStore(tmp_path).put(record)
    return record, kernel


def test_the_winner_persists_and_a_fresh_store_uses_it_without_searching(dev, tmp_path, monkeypatch):
    record, untuned = stored_winner(dev, tmp_path)
    fresh = TuningStore(tmp_path)
    assert fresh.records() == [dataclasses.replace(record, created=fresh.records()[0].created)]
    tuned = fresh.choices(device_fingerprint(dev.runtime.device))
    assert dict(tuned) == {record.kernel: record.choice}
    kernels, kernel = scheduled(dev, "elementwise", dev.traits, tuned)
    assert kernel.site.applied == record.choice and kernel.site.key == record.kernel
    assert kernel.name != untuned.name and kernel.site.name == untuned.name
    monkeypatch.setattr(tune.Tuner, "_search", lambda *a: pytest.fail("searched a kernel with a record"))
    assert tune.Tuner(dev.runtime, dev.traits, fresh).search(kernels, tuned, 1) == []
    np.testing.assert_allclose(realized_with(dev, "elementwise", tuned), KERNELS["elementwise"][1](X, W), rtol=1e-5,
                               atol=1e-6)


def test_a_kernel_whose_heuristic_won_is_remembered_and_changes_no_program_key(dev, tmp_path, monkeypatch):
    record, _ = stored_winner(dev, tmp_path, heuristic_won=True)
    device = device_fingerprint(dev.runtime.device)
    store = TuningStore(tmp_path)
    assert store.get(record.kernel, device).choice == record.heuristic  # searched: not searched again
    assert dict(store.choices(device)) == {} and store.choices(device).digest == NO_TUNING.digest
    forgotten = []
    monkeypatch.setattr(dev, "_tuned", NO_TUNING)
    monkeypatch.setattr(dev, "forget_programs", lambda: forgotten.append(True))
    monkeypatch.setattr(tune.Tuner, "search", lambda self, kernels, tuned, mode: [record])
    dev._search([], 1, lambda tuned: pytest.fail("no winner: no step to time"), [], [])
    assert dev.tuned.digest == NO_TUNING.digest and forgotten == []  # nothing to schedule again


@pytest.mark.parametrize("step_ratio, kept", [(0.5, True), (1.0, False), (2.0, False)])
def test_a_winner_is_kept_only_where_it_makes_its_step_faster(dev, tmp_path, monkeypatch, step_ratio, kept):
    """The whole step (every kernel and launch) timed with the winners against without: one that does not make
    it faster is stored as searched, the heuristics' choice kept."""
    record, _ = stored_winner(dev, tmp_path)
    make, _ = KERNELS["elementwise"]
    targets = [make(dev.tensor(X), dev.tensor(W)).node]
    _, leaves, rands = signature(targets)

    def program_with(tuned):
        kernels, scheduled_targets = schedule(targets, dev.traits, tuned)
        return build_program(kernels, scheduled_targets, leaves, rands)

    untuned = []

    def sample(runtime, launches, estimate):  # the untuned step (timed first) 1 s, the tuned one step_ratio s
        untuned.append(untuned[0] if untuned else launches)
        return 1.0 if launches is untuned[0] else step_ratio

    monkeypatch.setattr(tune, "_sample", sample)
    store = TuningStore(tmp_path)
    tuner = tune.Tuner(dev.runtime, dev.traits, store)
    assert tuner.kept_in_step(program_with, NO_TUNING, [record], leaves, rands) == ([record] if kept else [])
    stored = store.get(record.kernel, device_fingerprint(dev.runtime.device))
    assert stored.choice == (record.choice if kept else record.heuristic) and stored.trials == record.trials


def test_a_candidate_printing_as_an_earlier_one_reports_that_ones_final_times(dev, tmp_path, always, monkeypatch):
    """Two choices making the same kernels are run once; the later one's trial is the earlier one's, after the
    extra pairs the finalists get."""
    _, kernel = scheduled(dev, "elementwise", dev.traits)
    other = next(c for c in tune.candidates(kernel.site, dev.traits, 1) if c != kernel.site.heuristic)
    monkeypatch.setattr(tune, "candidates", lambda site, traits, mode: [site.heuristic, other, other])
    seen, samples = [], []

    def sample(runtime, launches, estimate):  # the heuristics' kernel 1 s; the other faster at each sample
        if not any(launches is known for known in seen):
            seen.append(launches)
        samples.append(launches)
        return 1.0 if launches is seen[0] else 1.0 / len(samples)

    monkeypatch.setattr(tune, "_sample", sample)
    record = searched(dev, "elementwise", tmp_path)
    first, twin = record.trials[1:]
    assert first.seconds == 1.0 / len(samples) and twin == first and record.tuned_seconds == first.seconds


def test_a_candidate_clearly_slower_than_the_best_so_far_is_cut_after_one_pair(dev, tmp_path, always, monkeypatch):
    """0.8 of the heuristics' time is no gain once a candidate took 0.5: 1.6 times the best, cut after its first
    pair; one slower than the heuristics' kernel but within CUT_OVER_BEST of the best so far is timed in full."""
    _, kernel = scheduled(dev, "elementwise", dev.traits)
    others = [c for c in tune.candidates(kernel.site, dev.traits, 2) if c != kernel.site.heuristic][:3]
    monkeypatch.setattr(tune, "candidates", lambda site, traits, mode: [site.heuristic, *others])
    times = [1.0, 0.5, 0.8, 0.6]  # per candidate, by the order their launches first show up
    seen = []

    def sample(runtime, launches, estimate):
        if not any(launches is known for known in seen):
            seen.append(launches)
        return times[next(i for i, known in enumerate(seen) if launches is known)]

    monkeypatch.setattr(tune, "_sample", sample)
    record = searched(dev, "elementwise", tmp_path)
    fast, slow, near = record.trials[1:]
    assert (fast.status, slow.status, near.status) == ("ok", "cut", "ok") and record.choice == fast.choice
    assert slow.relative == pytest.approx(0.8) and near.relative == pytest.approx(0.6)


def test_zyx_tune_0_never_searches(dev, monkeypatch):
    monkeypatch.setattr(tune.Tuner, "search", lambda *a: pytest.fail("searched under ZYX_TUNE=0"))
    for value in (None, "0", ""):
        if value is None:
            monkeypatch.delenv("ZYX_TUNE", raising=False)
        else:
            monkeypatch.setenv("ZYX_TUNE", value)
        dev.forget_programs()
        assert tuning_mode.tune_mode() == 0
        np.testing.assert_allclose((dev.tensor(X) * 3).numpy(), X * 3)
        zyx.jit(lambda x: x * 5)(dev.tensor(X))
    monkeypatch.setenv("ZYX_TUNE", "3")
    with pytest.raises(ValueError, match="ZYX_TUNE='3'"):
        tuning_mode.tune_mode()


def test_jit_with_tune_searches_the_kernels_of_its_programs(dev, monkeypatch):
    """Of its new programs: none is loaded from disk (an earlier run of this test stored one after its search)."""
    modes = []
    monkeypatch.setattr(tune.Tuner, "search", lambda self, kernels, tuned, mode: modes.append(mode) or [])
    monkeypatch.setattr(type(dev), "_load", lambda *args: None)
    monkeypatch.delenv("ZYX_TUNE", raising=False)
    zyx.jit(lambda x: (x * 7).exp())(dev.tensor(X))
    assert modes == []
    tuned_step = zyx.jit(tune=True)(lambda x: (x * 11).exp())
    np.testing.assert_allclose(tuned_step(dev.tensor(X)).numpy(), np.exp(X * 11), rtol=1e-5)
    assert modes == [1]


def test_a_program_scheduled_with_other_tuned_choices_has_another_key(dev):
    fingerprint, traits = dev.fingerprint(), dev.traits
    one = TunedChoices({"0" * 32: Choice.of("plain", width=8)})
    other = TunedChoices({"0" * 32: Choice.of("plain", width=4)})
    keys = {program_key("structure", fingerprint, traits, tuned.digest) for tuned in (NO_TUNING, one, other)}
    assert len(keys) == 3


# -- records read from disk are checked ----------------------------------------------------------------------

def good_record_json(dev, tmp_path) -> tuple[dict, str]:
    record, _ = stored_winner(dev, tmp_path)
    return json.loads(record.to_json()), record.key


@pytest.mark.parametrize("damage", [
    lambda d: d.update(kernel="not hex"),
    lambda d: d.update(format="tune-0"),
    lambda d: d["device"].update(device=3),
    lambda d: d["choice"]["values"].update(width=3),
    lambda d: d["choice"].update(family="warp_drive"),
    lambda d: d.update(untuned_seconds=-1.0),
    lambda d: d.update(tuned_seconds=float("nan")),
    lambda d: d["trials"][1].update(relative="fast"),
    lambda d: d["trials"][1].update(status="best"),
    lambda d: d.update(trials=[]),
    lambda d: d.update(mode=True),
    lambda d: d.update(tuned_name="e_x; rm -rf"),
    lambda d: d["trials"].pop(),  # the winner is no longer among the candidates
], ids=["kernel", "format", "device", "value", "family", "negative", "nan", "relative", "status", "no trials", "mode",
        "name", "winner"])
def test_a_damaged_record_is_refused(dev, tmp_path, damage):
    data, key = good_record_json(dev, tmp_path)
    assert parse_record(json.dumps(data), key).choice == Choice.from_json(data["choice"])
    damage(data)
    with pytest.raises(ValueError):
        parse_record(json.dumps(data), key)


def test_a_damaged_record_is_dropped_with_one_warning_and_searched_again(dev, tmp_path):
    data, key = good_record_json(dev, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = DiskStore(tmp_path, "tuning", 1 << 20)
        store.delete([key])
        store.put(key, json.dumps({**data, "choice": {"family": "plain", "values": {"width": 1000}}}), b"")
    device = device_fingerprint(dev.runtime.device)
    with pytest.warns(CacheWarning, match="searched again") as caught:
        assert dict(TuningStore(tmp_path).choices(device)) == {}
    assert len(caught) == 1
    assert DiskStore(tmp_path, "tuning", 1 << 20).rows() == []


# -- across processes, and the command line ------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, sys, numpy as np, zyx
    from zyx.jit import tune, tuning_mode
    from zyx.jit.cache import default_cache
    tuning_mode.THRESHOLD_SECONDS = tuning_mode.GPU_THRESHOLD_SECONDS = 0.0  # search this small kernel, ...
    tune.NEIGHBOURS = 3  # ... quickly
    dev = zyx.OpenCL()
    searches = []
    search = tune.Tuner._search
    tune.Tuner._search = lambda *a: searches.append(a[1].name) or search(*a)
    rng = np.random.default_rng(0)
    x, w = (dev.tensor(rng.standard_normal((64, 64), dtype=np.float32)) for _ in range(2))
    step = lambda x, w: (x @ w).relu()
    out = zyx.jit(tune=True)(step)(x, w) if sys.argv[1:] == ["jit"] else step(x, w)
    out.numpy()
    default_cache().flush()
    stats = zyx.stats()
    names = [launch.name for program in dev.programs.values() for launch in program.launches]
    print(json.dumps({"compiled": stats["kernels_compiled"], "scheduled": stats["graphs_scheduled"],
                      "tuned": stats["kernels_tuned"], "searched": searches, "launched": names}))
""")


def run_child(cache_dir: Path, tune_mode: str, *arguments: str) -> dict:
    """The child's counts; `jit`: it runs its step as `@zyx.jit(tune=True)`."""
    environment = {**os.environ, "ZYX_CACHE_DIR": str(cache_dir), "ZYX_TUNE": tune_mode,
                   "PYTHONPATH": CHILD_PYTHONPATH}
    finished = subprocess.run([sys.executable, "-c", CHILD, *arguments], env=environment, capture_output=True,
                              text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    return json.loads(finished.stdout)


def zyx_cli(cache_dir: Path, *arguments: str, cwd: Path = REPOSITORY) -> subprocess.CompletedProcess:
    environment = {**os.environ, "ZYX_CACHE_DIR": str(cache_dir), "PYTHONPATH": CHILD_PYTHONPATH}
    environment.pop("ZYX_TUNE", None)
    return subprocess.run([sys.executable, "-m", "zyx", *arguments], env=environment, capture_output=True,
                          text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def tuned_cache(tmp_path_factory) -> tuple[Path, dict]:
    """A cache directory in which one process searched a product kernel (ZYX_TUNE=1) and ran its winner."""
    directory = tmp_path_factory.mktemp("tuned") / "cache"
    return directory, run_child(directory, "1")


def test_a_warm_start_with_tuned_kernels_compiles_nothing(tuned_cache, tmp_path):
    template, first = tuned_cache
    shutil.copytree(template, tmp_path / "cache")
    assert first["tuned"] == 1 and first["compiled"] >= 2
    (record,) = TuningStore(tmp_path / "cache").records()
    assert record.tuned_name in first["launched"]
    warm = run_child(tmp_path / "cache", "0")
    assert (warm["compiled"], warm["scheduled"], warm["tuned"]) == (0, 0, 0)
    assert warm["launched"] == first["launched"]


def test_a_warm_jit_with_tune_loads_its_program_and_searches_nothing(tmp_path):
    first = run_child(tmp_path / "cache", "0", "jit")
    assert first["searched"] and first["compiled"] >= 2
    warm = run_child(tmp_path / "cache", "0", "jit")
    assert (warm["compiled"], warm["scheduled"], warm["searched"]) == (0, 0, [])
    assert warm["launched"] == first["launched"]


def test_the_cli_marks_tuned_kernels_of_the_device_and_driver_they_were_searched_on(dev, tmp_path):
    record, _ = stored_winner(dev, tmp_path)
    elsewhere = {**record.device, "driver_version": "other driver"}
    stored_winner(dev, tmp_path, device=elsewhere)
    kept, _ = stored_winner(dev, tmp_path / "kept", heuristic_won=True)
    entry = {"kernel_names": [record.tuned_name, kept.tuned_name], "components": {**record.device, "x": "y"}}
    on_the_other = {**entry, "components": {**elsewhere, "x": "y"}}
    unknown = {**entry, "components": {**record.device, "device": "another device"}}
    marked = cli._with_tuning([entry, on_the_other, unknown], TuningStore(tmp_path).records() + [kept])
    assert [e["tuned"] for e in marked] == [{record.tuned_name: 2.0}, {record.tuned_name: 2.0}, {}]
    assert cli._searches_of(entry, [kept]) == [kept] and cli._searches_of(unknown, [kept]) == []


def test_the_cli_shows_tuned_entries_and_searches_and_clears_them(tuned_cache, tmp_path):
    template, _ = tuned_cache
    directory = tmp_path / "cache"
    shutil.copytree(template, directory)
    (record,) = TuningStore(directory).records()
    listing = zyx_cli(directory, "cache", "ls", "--json")
    assert listing.returncode == 0, listing.stderr
    marked = [entry["tuned"] for entry in json.loads(listing.stdout) if entry["tuned"]]
    assert marked == [{record.tuned_name: pytest.approx(record.speedup, abs=1e-3)}] * record.improves
    table = zyx_cli(directory, "cache", "ls").stdout
    assert ("TUNED" in table.splitlines()[0] and f"{record.speedup:.2f}x" in table) == record.improves
    shown = zyx_cli(directory, "cache", "show", record.untuned_name)
    assert shown.returncode == 0, shown.stderr
    assert f"tuning      {record.untuned_name} -> " in shown.stdout
    assert all(trial.choice.describe() in shown.stdout for trial in record.trials)
    cleared = zyx_cli(directory, "cache", "clear", "--yes")
    assert "1 tuning records" in cleared.stdout, cleared.stdout
    assert TuningStore(directory).records() == []


def test_zyx_tune_runs_a_script_with_tuning_on(tmp_path):
    script = tmp_path / "step.py"
    script.write_text("import os, sys\nprint(os.environ['ZYX_TUNE'], sys.argv[1:])\nsys.exit(3)\n")
    finished = zyx_cli(tmp_path / "cache", "tune", str(script), "--lr", "0.1", cwd=tmp_path)
    assert finished.returncode == 3, finished.stderr
    assert finished.stdout == "1 ['--lr', '0.1']\n"
    assert "zyx tune: searched 0 kernels" in finished.stderr
    exhaustive = zyx_cli(tmp_path / "cache", "tune", "--exhaustive", str(script), cwd=tmp_path)
    assert exhaustive.stdout.startswith("2 []")


def test_gpus_search_kernels_from_a_lower_threshold():
    """A 75 us product is worth a search on a GPU (candidates compile in tens of ms, back-to-back launches time it
    closely), not on a CPU, where such a time is mostly the launch."""
    from zyx.jit.device_traits import DeviceTraits
    assert tuning_mode.threshold_seconds(DeviceTraits(gpu=True)) < 75e-6 < tuning_mode.threshold_seconds(DeviceTraits())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_candidates_are_compared_with_the_reference_as_allclose_would_chunk_by_chunk(monkeypatch, dtype):
    """`_same_values` as np.allclose(equal_nan=True) within TOLERANCE, the absolute part relative to the reference's
    largest finite magnitude (found in a later chunk here), compared a few elements at a time: NaN against NaN and
    equal infinities pass; NaN against a number, opposite infinities and one value past the bound do not."""
    from types import SimpleNamespace
    import ml_dtypes
    monkeypatch.setattr(tune, "COMPARED_CHUNK", 5)
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    node = SimpleNamespace(dtype=SimpleNamespace(name=dtype))
    tolerance = tune.TOLERANCE[dtype]
    ref = np.array([0.5, np.nan, np.inf, -np.inf, 1.0, 2.0, 0.0, 3.0, -4.0, 1000.0, 7.0, 0.25], dtype=np_dtype)

    def same(changed: dict) -> bool:
        out = ref.copy()
        for index, value in changed.items():
            out[index] = value
        return tune._same_values([out.reshape(3, 4)], [ref.reshape(3, 4)], [node])
    assert same({})
    assert same({6: 0.5 * tolerance * 1000})  # within tolerance of the largest value (1000, in the second chunk)
    assert not same({6: 4 * tolerance * 1000})
    assert not same({1: 1.0}) and not same({0: np.nan}) and not same({2: -np.inf}) and not same({4: np.inf})
    assert not same({7: 3.0 * (1 + 4 * tolerance) + 4 * tolerance * 1000})
    integers = SimpleNamespace(dtype=SimpleNamespace(name="int32"))
    assert not tune._same_values([np.array([1, 2, 4])], [np.array([1, 2, 3])], [integers])
