"""Every bad input of tests/refusals.py gives one line on stderr (`medtune: error: ...`), exit 2, no traceback, and
leaves no folder that blocks a rerun."""

from __future__ import annotations

import pytest
import refusals

from medtune.cli import main
from medtune.rundir import holds_run


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    from medtune import training
    from medtune.merge import merge
    from medtune.validate import load_config

    base = tmp_path_factory.mktemp("refusals")
    run = base / "run"
    training.run(
        load_config(
            refusals.ROOT / "configs" / "tiny-cpu.yaml",
            [
                "train.max_steps=2",
                "train.save_steps=100",
                "train.eval_steps=100",
                "train.report_to=none",
                "data.max_records=40",
            ],
            output_dir=str(run),
        )
    )
    merge(run, base / "merged")
    scratch = base / "scratch"
    scratch.mkdir()
    return refusals.materialize(scratch, run, base / "merged")


@pytest.mark.parametrize("case", refusals.CASES, ids=[c[0] for c in refusals.CASES])
def test_refused_with_one_clear_line(case, places, capsys):
    _, _, args, phrase = case
    rc = main(refusals.argv(args, places))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("medtune: error: "), err
    assert phrase in err[0], err[0]
    out = places["tmp"] + "/out"
    from pathlib import Path

    assert not holds_run(Path(out)), "a refused train left a folder that blocks a rerun"


def test_cases_have_unique_ids():
    ids = [c[0] for c in refusals.CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 50


def test_an_fsdp_launch_is_refused(monkeypatch, capsys, tmp_path):
    """`accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP in every process: medtune refuses it there,
    before any model loads (FSDP is untested; on CPU accelerate would quietly run DDP)."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    out = tmp_path / "out"
    rc = main(
        [
            "train",
            "--config",
            str(refusals.ROOT / "configs" / "tiny-cpu.yaml"),
            "--output-dir",
            str(out),
            "--set",
            "train.report_to=none",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("medtune: error: FSDP is not supported") and "torchrun" in err[0], err
    assert not out.exists()
