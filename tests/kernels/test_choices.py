"""KernelChoices: the fastest candidate by median wins, the default wins ties within the noise, the
answer is kept on disk per machine and reused, and timing can be turned off."""

from __future__ import annotations

import json

import pytest

from omnivision.kernels import choices as choices_module
from omnivision.kernels.choices import TUNING_ENV, KernelChoices


class FakeClock:
    """A clock that advances by the cost the running candidate declares."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def candidates(clock, costs, calls):
    def make(name, cost):
        def run():
            calls.append(name)
            clock.now += cost() if callable(cost) else cost
        return run
    return {name: make(name, cost) for name, cost in costs.items()}


@pytest.fixture(autouse=True)
def tuning_on(monkeypatch):
    monkeypatch.setenv(TUNING_ENV, "on")


def test_fastest_median_wins_and_is_remembered_on_disk(tmp_path):
    clock, calls = FakeClock(), []
    kc = KernelChoices(tmp_path / "k.json", clock=clock, repeats=5)
    # "b" has one slow outlier but the lower median
    spikes = iter([1.0, 9.0] + [1.0] * 10)  # warm-up, then an outlier in the first round
    assert kc.choose("op", "4x4", candidates(clock, {"a": 2.0, "b": lambda: next(spikes)}, calls)) == "b"
    assert calls.count("a") == 6 and calls.count("b") == 6  # warm-up + 5 rounds each, one call a round
    stored = json.loads((tmp_path / "k.json").read_text())
    (entry,) = stored.values()
    assert entry["choice"] == "b" and entry["median_s"] == {"a": 2.0, "b": 1.0}
    # a new process (a new object) on the same machine reads it and times nothing
    calls.clear()
    again = KernelChoices(tmp_path / "k.json", clock=clock)
    assert again.choose("op", "4x4", candidates(clock, {"a": 2.0, "b": 1.0}, calls)) == "b" and calls == []
    # another shape is timed anew
    assert again.choose("op", "8x8", candidates(clock, {"a": 1.0, "b": 2.0}, calls)) == "a" and calls


def test_the_default_wins_within_the_noise(tmp_path):
    clock = FakeClock()
    kc = KernelChoices(tmp_path / "k.json", clock=clock, noise=0.05)
    assert kc.choose("op", "s", candidates(clock, {"default": 1.04, "other": 1.0}, [])) == "default"
    assert kc.choose("op", "t", candidates(clock, {"default": 1.2, "other": 1.0}, [])) == "other"


def test_another_machine_times_again(tmp_path, monkeypatch):
    clock, calls = FakeClock(), []
    kc = KernelChoices(tmp_path / "k.json", clock=clock)
    assert kc.choose("op", "s", candidates(clock, {"a": 2.0, "b": 1.0}, calls)) == "b"
    monkeypatch.setattr(choices_module, "machine_key", lambda: "another-cpu")
    calls.clear()
    assert kc.choose("op", "s", candidates(clock, {"a": 1.0, "b": 2.0}, calls)) == "a" and calls
    assert len(json.loads((tmp_path / "k.json").read_text())) == 2


def test_tuning_off_takes_the_first_candidate_without_timing(tmp_path, monkeypatch):
    monkeypatch.setenv(TUNING_ENV, "off")
    clock, calls = FakeClock(), []
    kc = KernelChoices(tmp_path / "k.json", clock=clock)
    assert kc.choose("op", "s", candidates(clock, {"a": 9.0, "b": 1.0}, calls)) == "a"
    assert calls == [] and not (tmp_path / "k.json").exists()


def test_an_unreadable_or_unwritable_cache_only_costs_a_timing(tmp_path):
    bad = tmp_path / "k.json"
    bad.write_text("{not json")
    clock = FakeClock()
    assert KernelChoices(bad, clock=clock).choose("op", "s", candidates(clock, {"a": 2.0, "b": 1.0}, [])) == "b"
    blocked = tmp_path / "file" / "k.json"
    (tmp_path / "file").write_text("a file where the folder should be")
    assert KernelChoices(blocked, clock=clock).choose("op", "s", candidates(clock, {"a": 1.0, "b": 2.0}, [])) == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "k.json"]  # no temporary left behind


def test_a_fast_kernel_is_called_many_times_a_round(tmp_path):
    """Microsecond kernels are timed over enough calls that a round lasts `min_sample`, and the
    median is per call."""
    clock, calls = FakeClock(), []
    kc = KernelChoices(tmp_path / "k.json", clock=clock, repeats=3, min_sample=1e-3)
    assert kc.choose("op", "s", candidates(clock, {"a": 2e-5, "b": 1e-4}, calls)) == "a"
    assert calls.count("a") == 1 + 3 * 50 and calls.count("b") == 1 + 3 * 50  # 1 ms / 20 us
    (entry,) = json.loads((tmp_path / "k.json").read_text()).values()
    assert entry["median_s"] == pytest.approx({"a": 2e-5, "b": 1e-4})


def test_a_new_candidate_is_timed_against_the_remembered_choice(tmp_path):
    clock, calls = FakeClock(), []
    kc = KernelChoices(tmp_path / "k.json", clock=clock)
    assert kc.choose("op", "s", candidates(clock, {"a": 2.0, "b": 1.0}, calls)) == "b"
    calls.clear()
    later = KernelChoices(tmp_path / "k.json", clock=clock)
    assert later.choose("op", "s", candidates(clock, {"a": 2.0, "b": 1.0}, calls)) == "b" and calls == []
    assert later.choose("op", "s", candidates(clock, {"a": 2.0, "b": 1.0, "c": 0.5}, calls)) == "c"
    assert set(calls) == {"a", "b", "c"}


def test_remembered_answers_without_candidates(tmp_path, monkeypatch):
    """What `choose` would return without timing, from the names alone: None until a choice among
    exactly those names is kept; with timing off, the first name."""
    clock, calls = FakeClock(), []
    kc = KernelChoices(tmp_path / "k.json", clock=clock)
    assert kc.remembered("op", "s", ["a", "b"]) is None
    assert kc.choose("op", "s", candidates(clock, {"a": 2.0, "b": 1.0}, calls)) == "b"
    later = KernelChoices(tmp_path / "k.json", clock=clock)
    assert later.remembered("op", "s", ["b", "a"]) == "b"
    assert later.remembered("op", "s", ["a", "b", "c"]) is None  # another set: to be timed
    assert later.remembered("op", "other", ["a", "b"]) is None
    monkeypatch.setenv(TUNING_ENV, "off")
    assert later.remembered("op", "new", ["a", "b"]) == "a"
