"""Multi-process QLoRA training on CPU: `torchrun --nproc-per-node 2 -m medtune train` with the gloo backend.

Each launch runs the real command line. Hooks in the workers (launching.py) record, per rank, every file medtune
writes into the run folder and, after training, the global step, a hash of the trainable weights and the tokens that
rank trained on. So the tests can tell that rank 0 alone wrote the run's files, each once, and that both ranks
trained the same synchronized weights."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launching import check_clean, read_records, trained, worker_env, written

# QLoRA: every process quantizes its own copy of the random base (a round trip through disk) and trains on it
QUICK = [
    "model.quantization=4bit",
    "train.report_to=none",
    "train.logging_steps=1",
    "train.eval_steps=2",
    "train.save_steps=2",
]


def launch(tiny: Path, tmp: Path, out: Path, *args: str, steps: int, nproc: int = 2, env: dict | None = None):
    """torchrun -m medtune train on the tiny preset; returns (completed process, records per rank)."""
    env, rec = worker_env(tmp, env)
    sets = [a for s in QUICK + [f"train.max_steps={steps}"] for a in ("--set", s)]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "medtune",
        "train",
        "--config",
        str(tiny),
        "--output-dir",
        str(out),
        *sets,
        *args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return proc, read_records(rec, nproc)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_preset):
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "run"
    proc, records = launch(tiny_preset, tmp, out, steps=4)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return tmp, out, proc, records


def test_two_processes_train_one_run_written_by_rank_0(ddp_run):
    tmp, out, proc, records = ddp_run
    # rank 0 alone speaks, and says how the batch scales: 8 per device x 1 accumulation x 2 processes
    assert len(re.findall(r"x 2 processes = (?:effective batch size )?16\b", proc.stdout)) == 1, proc.stdout
    assert proc.stdout.count("done: adapter and run files") == 1
    assert "loss chunked" in proc.stdout  # the chunked loss runs under DDP too (through the DDP-wrapped forward)

    # both ranks trained all 4 steps in one 2-process group, and DDP kept their LoRA weights identical
    t0, t1 = trained(records[0]), trained(records[1])
    assert t0["step"] == t1["step"] == 4 and t0["world"] == t1["world"] == 2
    assert t0["weights"] == t1["weights"]

    # rank 0 alone wrote medtune's files, each exactly once; rank 1 wrote nothing
    assert written(records[1], out) == []
    files = written(records[0], out)
    assert len(files) == len(set(files)), files
    for f in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "config.yaml",
        "manifest.json",
        "metrics.json",
        "loss_curve.png",
        "splits/validation.jsonl",
        "splits/test.jsonl",
        "base_model/model.safetensors",
    ):
        assert f in files and (out / f).is_file(), f
    check_clean(out)

    # the Trainer's checkpoints: written once (by rank 0), plus each rank's own RNG state for --resume
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    ckpt = out / "checkpoints" / "checkpoint-4"
    assert (ckpt / "adapter_model.safetensors").is_file()
    assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()

    # metrics count both processes' tokens; the manifest records the process count
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert final["train_tokens"] == t0["tokens"] + t1["tokens"] > 0
    assert json.loads((out / "manifest.json").read_text())["processes"] == 2
    steps = [h["step"] for h in json.loads((out / "metrics.json").read_text())["log_history"] if "loss" in h]
    assert steps == [1, 2, 3, 4]


def test_adapter_from_two_processes_loads(ddp_run, load_run):
    _, out, _, _ = ddp_run
    model, tok, cfg = load_run(out)
    assert cfg.model.quantization == "4bit"
    ids = torch.tensor([tok("Patient symptoms include fever and cough.")["input_ids"]])
    with torch.no_grad():
        tuned = model(ids).logits
        with model.disable_adapter():
            base = model(ids).logits
    assert torch.isfinite(tuned).all() and not torch.allclose(tuned, base)


def test_resume_under_two_processes(ddp_run, tiny_preset):
    tmp, first, _, records = ddp_run
    out = tmp / "resumed"
    shutil.copytree(first, out)  # leave the first run as it was for the other tests
    proc, rec = launch(tiny_preset, tmp, out, "--resume", steps=6)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    t0, t1 = trained(rec[0]), trained(rec[1])
    assert t0["step"] == t1["step"] == 6 and t0["weights"] == t1["weights"]
    assert t0["weights"] != trained(records[0])["weights"]  # it trained on from step 4
    assert written(rec[1], out) == []
    check_clean(out)
    assert (out / "checkpoints" / "checkpoint-6").is_dir()
    state = json.loads((out / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    # the log history carries over from checkpoint-4; no step was trained (and logged) twice
    steps = [h["step"] for h in json.loads((out / "metrics.json").read_text())["log_history"] if "loss" in h]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(ddp_run, tiny_preset):
    """SIGTERM to rank 1 alone (rank 0 never sees it) during step 3: both ranks finish step 3, save one checkpoint of
    it (with both ranks' RNG states), rank 0 says where; the resumed 2-process run ends where ddp_run (4 steps) did."""
    from medtune import rundir

    tmp, _, _, records = ddp_run
    out = tmp / "signalled"
    proc, rec = launch(tiny_preset, tmp, out, steps=4, env={"MEDTUNE_TEST_SIGNAL": "1:3:SIGTERM"})
    assert proc.returncode != 0, proc.stderr[-3000:]  # the workers exited 143: torchrun reports a failure
    t0, t1 = trained(rec[0]), trained(rec[1])
    assert t0["step"] == t1["step"] == 3 and t0["weights"] == t1["weights"]
    ckpt = out / "checkpoints" / "checkpoint-3"
    said = [ln for ln in proc.stderr.splitlines() if ln.startswith("medtune: stopped")]
    assert said == [
        f"medtune: stopped by SIGTERM after step 3 of 4; checkpoint {ckpt}; resume with: medtune train "
        f"{said[0].split(' medtune train ', 1)[1]}"
    ], proc.stderr[-3000:]
    assert said[0].endswith("--resume (under the same launcher)")
    assert rundir.checkpoint_problem(ckpt) is None
    assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()
    assert written(rec[1], out) == [] and not (out / "adapter_model.safetensors").exists()

    proc, rec = launch(tiny_preset, tmp, out, "--resume", steps=4)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert trained(rec[0])["step"] == 4 and trained(rec[0])["weights"] == trained(records[0])["weights"]
