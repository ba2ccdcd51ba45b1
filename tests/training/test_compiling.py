"""train.compile: "auto" compiles once the first steps are timed, and only when the eager time left pays back the
compiling; "true" and "false" as before."""

import types

import pytest

from medtune.training import compiling


def test_compiling_pays_back_only_on_long_runs():
    # 0.1 s steps: 2,000 left are 200 s eager; at 1.3x, compiling saves ~46 s, less than it costs
    assert not compiling.pays_back(0.1, 2_000)
    assert compiling.pays_back(0.1, 20_000)  # ~460 s saved
    assert not compiling.pays_back(5.0, 0)


@pytest.mark.parametrize("left, compiles", [(20_000, True), (500, False)])
def test_auto_compile_times_the_steps_then_decides_once(monkeypatch, left, compiles):
    clock = iter(range(1000))
    monkeypatch.setattr(compiling.time, "perf_counter", lambda: float(next(clock)) * 0.05)  # 0.05 s a tick
    compiled_layers, calls = [], []
    layers = [
        types.SimpleNamespace(compile=lambda dynamic, i=i: compiled_layers.append((i, dynamic))) for i in range(3)
    ]
    cb = compiling.AutoCompile(layers, calls.append)
    state = types.SimpleNamespace(global_step=0, max_steps=0)
    steps = compiling.WARMUP_STEPS + compiling.TIMED_STEPS
    for step in range(1, steps + 5):
        state.global_step, state.max_steps = step, steps + left
        cb.on_step_begin(None, state, None)
        cb.on_step_end(None, state, None)
        if step < steps:
            assert not cb.decided
    assert cb.decided and cb.timed == pytest.approx(0.05 * compiling.TIMED_STEPS)  # begin -> end only
    assert compiled_layers == ([(0, True), (1, True), (2, True)] if compiles else [])
    assert calls == ([steps] if compiles else [])


def test_compile_setting_accepts_booleans_and_auto(tiny_config, tmp_path):
    assert tiny_config(tmp_path / "a").train.compile == "auto"
    assert tiny_config(tmp_path / "b", "train.compile=true").train.compile == "true"
    assert tiny_config(tmp_path / "c", "train.compile=false").train.compile == "false"
    from medtune.errors import MedtuneError

    with pytest.raises(MedtuneError, match="train.compile"):
        tiny_config(tmp_path / "d", "train.compile=sometimes")
