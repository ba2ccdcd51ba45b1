"""Crash safety: a training process killed (SIGKILL) after a checkpoint or while one is being written, then
`--resume`, ends with the same adapter and validation loss as an uninterrupted run (bit-identical on CPU). A process
sent SIGTERM, SIGINT or SIGUSR1 mid-training saves the step it was in, says where and how to resume, and the resumed
run ends bit-identical too.

The kill is deterministic: the training subprocess wraps torch.save so that it kills itself with SIGKILL at a
chosen file of a chosen checkpoint (after writing part of it, like a crash mid-write). The signals are sent by the
test, from outside, while the training subprocess waits inside a chosen step (PAUSE) for one to arrive.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from medtune import rundir

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny-cpu.yaml"
SETS = [
    "train.max_steps=8",
    "train.save_steps=2",
    "train.eval_steps=4",
    "train.logging_steps=1",
    "train.report_to=none",
    "train.save_total_limit=3",
    "data.max_records=60",
]

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


@pytest.mark.parametrize(
    "kill",
    [("4", "optimizer.pt"), ("4", "rng_state.pth"), ("6", "scheduler.pt")],
    ids=["mid-optimizer", "mid-rng-state", "mid-scheduler"],
)
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
        data = (newest / rundir.ADAPTER_WEIGHTS).read_bytes()
        (newest / rundir.ADAPTER_WEIGHTS).write_bytes(data[: len(data) // 2])
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


# ---------------------------------------------------------------- signals: SIGTERM, SIGINT, SIGUSR1

PAUSE = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    marker, mode = Path(sys.argv[1]), sys.argv[2]
    from medtune import model, stopping
    from medtune.training.trainer import MedtuneTrainer

    def wait_here():
        marker.write_text(str(os.getpid()))  # the test sees it and sends the signal
        deadline = time.monotonic() + 60
        while not stopping.requested() and time.monotonic() < deadline:
            time.sleep(0.01)

    if mode == "setup":  # before training: the base model is loading
        def load_base_model(*args, **kwargs):
            wait_here()
        model.load_base_model = load_base_model
    else:  # inside step 3 (after checkpoint-2); "hang": and that step never ends
        real_step = MedtuneTrainer.training_step

        def training_step(self, *args, **kwargs):
            if self.state.global_step == 2 and not marker.exists():
                wait_here()
                if mode == "hang":
                    time.sleep(60)
            return real_step(self, *args, **kwargs)
        MedtuneTrainer.training_step = training_step
    from medtune.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def _paused(out: Path, tmp: Path, mode: str) -> tuple[subprocess.Popen, Path]:
    """A training subprocess waiting at `mode` (step, hang, setup) for a signal; returns it and its stderr file."""
    marker, err = tmp / f"paused-{mode}", tmp / f"stderr-{mode}.txt"
    args = ["train", "--config", str(TINY), "--output-dir", str(out), *[a for s in SETS for a in ("--set", s)]]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with open(err, "w") as f:
        p = subprocess.Popen(
            [sys.executable, "-c", PAUSE, str(marker), mode, *args], stdout=subprocess.DEVNULL, stderr=f, env=env
        )
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert p.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
        time.sleep(0.05)
    return p, err


def _last_line(err: Path) -> str:
    text = err.read_text()
    assert "Traceback" not in text, text[-3000:]
    return text.strip().splitlines()[-1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1], ids=lambda s: s.name)
def test_signal_mid_training_saves_that_step_and_resume_equals_uninterrupted(reference, tmp_path, sig):
    out = tmp_path / "run"
    p, err = _paused(out, tmp_path, "step")
    sent = time.monotonic()
    p.send_signal(sig)
    if sig == signal.SIGINT:
        p.send_signal(sig)  # the same Ctrl+C twice at once (a launcher forwarding it): still one clean stop
    assert p.wait(timeout=30) == 128 + sig and time.monotonic() - sent < 30
    ckpt = out / "checkpoints" / "checkpoint-3"
    line = _last_line(err)
    assert line.startswith(f"medtune: stopped by {sig.name} after step 3 of 8; checkpoint {ckpt}; resume with: "), line
    assert rundir.checkpoint_problem(ckpt) is None  # complete: adapter, optimizer, scheduler, RNG, trainer state
    assert not (out / rundir.LOCK).exists() and not (out / "adapter_model.safetensors").exists()
    if sig == signal.SIGUSR1:
        return  # the same stop as SIGTERM's; its resume is checked once there

    command = shlex.split(line.split("resume with: ", 1)[1])  # exactly what the line says, run as printed
    assert command[:2] == ["medtune", "train"] and command[-1] == "--resume"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "medtune", *command[1:]], capture_output=True, text=True, env=env, timeout=600
    )
    assert p.returncode == 0, p.stderr[-2000:]
    a, b = _adapter(reference), _adapter(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (
        json.loads((out / "metrics.json").read_text())["final"]["eval_loss"]
        == json.loads((reference / "metrics.json").read_text())["final"]["eval_loss"]
    )


def test_second_ctrl_c_stops_at_once(tmp_path):
    out = tmp_path / "run"
    p, err = _paused(out, tmp_path, "hang")  # the step being finished never ends
    p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 30
    while "SIGINT received" not in err.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.2)  # a second Ctrl+C, not the first one delivered twice
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=30) == 130
    line = _last_line(err)
    assert line.startswith(
        "medtune: stopped at once by SIGINT; the newest complete checkpoint is kept, resume with: medtune train "
    ) and line.endswith(" --resume"), line
    assert rundir.latest_complete_checkpoint(out).name == "checkpoint-2"
    assert not (out / rundir.LOCK).exists()


def test_signal_before_training_stops_at_once_and_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    p, err = _paused(out, tmp_path, "setup")  # the output folder is locked, nothing written yet
    assert (out / rundir.LOCK).exists()
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 143
    assert _last_line(err) == "medtune: stopped at once by SIGTERM"
    assert not out.exists()  # the lock's folder, removed again: nothing was written
