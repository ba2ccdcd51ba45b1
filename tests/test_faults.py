"""Crash safety: a training process killed (SIGKILL) after a checkpoint or while one is being written, then
`--resume`, ends with the same adapter and validation loss as an uninterrupted run (bit-identical on CPU).

The kill is deterministic: the training subprocess wraps torch.save so that it kills itself with SIGKILL at a
chosen file of a chosen checkpoint (after writing part of it, like a crash mid-write).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny-cpu.yaml"
SETS = ["train.max_steps=8", "train.save_steps=2", "train.eval_steps=4", "train.logging_steps=1",
        "train.report_to=none", "train.save_total_limit=3", "data.max_records=60"]

DRIVER = textwrap.dedent("""
    import os, signal, sys
    import torch
    ckpt, name = sys.argv[1], sys.argv[2]
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        path = str(f)
        if f"checkpoint-{ckpt}" in path and os.path.basename(path) == name:
            with open(path, "wb") as out:
                out.write(b"PK\\x03\\x04 partial")  # a torn write: some bytes, not a loadable file
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
    from medtune.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def _train(out: Path, *extra: str, kill: tuple[str, str] | None = None) -> subprocess.CompletedProcess:
    args = ["train", "--config", str(TINY), "--output-dir", str(out), *[a for s in SETS for a in ("--set", s)], *extra]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if kill:
        cmd = [sys.executable, "-c", DRIVER, kill[0], kill[1], *args]
    else:
        cmd = [sys.executable, "-m", "medtune", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "uninterrupted"
    p = _train(out)
    assert p.returncode == 0, p.stderr[-2000:]
    return out


@pytest.mark.parametrize("kill", [("4", "optimizer.pt"), ("4", "rng_state.pth"), ("6", "scheduler.pt")],
                         ids=["mid-optimizer", "mid-rng-state", "mid-scheduler"])
def test_kill_during_checkpoint_then_resume_equals_uninterrupted(reference, tmp_path, kill):
    out = tmp_path / "killed"
    p = _train(out, kill=kill)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert not (out / "adapter_model.safetensors").exists()  # the run had not finished
    p = _train(out, "--resume")
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"checkpoint-{kill[0]}" in p.stdout + p.stderr  # the incomplete checkpoint is named
    a, b = _adapter(reference), _adapter(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ref_m = json.loads((reference / "metrics.json").read_text())["final"]
    got_m = json.loads((out / "metrics.json").read_text())["final"]
    assert got_m["eval_loss"] == ref_m["eval_loss"]
    assert got_m["train_loss"] == pytest.approx(ref_m["train_loss"], rel=0.05)  # the whole run's loss, not the tail's
    assert not list(out.glob(".staging-*"))
    assert (out / "adapter_model.safetensors").stat().st_mode & 0o777 == (out / "config.yaml").stat().st_mode & 0o777


@pytest.mark.parametrize("damage", ["empty-folder", "no-trainer-state", "zero-byte-optimizer", "truncated-adapter"])
def test_resume_skips_damaged_newest_checkpoint(reference, tmp_path, damage):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    newest = max((out / "checkpoints").iterdir(), key=lambda p: int(p.name.split("-")[1]))
    if damage == "empty-folder":
        shutil.rmtree(newest)
        newest.mkdir()
    elif damage == "no-trainer-state":
        (newest / "trainer_state.json").unlink()
    elif damage == "zero-byte-optimizer":
        (newest / "optimizer.pt").write_bytes(b"")
    else:
        data = (newest / "adapter_model.safetensors").read_bytes()
        (newest / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    (out / ".staging-leftover").mkdir()
    p = _train(out, "--resume")
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"removing incomplete {newest.name}" in p.stdout + p.stderr
    a, b = _adapter(reference), _adapter(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / ".staging-leftover").exists()


def test_resume_without_any_complete_checkpoint_starts_over(reference, tmp_path):
    out = tmp_path / "early-crash"
    p = _train(out, kill=("2", "optimizer.pt"))  # dies while writing its first checkpoint
    assert p.returncode == -signal.SIGKILL
    p = _train(out)  # without --resume: refused, nothing overwritten
    assert p.returncode == 2 and "already holds a run" in p.stderr and "Traceback" not in p.stderr
    p = _train(out, "--resume")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "starting over" in p.stdout + p.stderr
    a, b = _adapter(reference), _adapter(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
