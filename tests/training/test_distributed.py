"""Multi-process QLoRA training on CPU: `torchrun --nproc-per-node 2 -m medtune train` with the gloo backend.

Each launch runs the real command line. A sitecustomize.py on PYTHONPATH (active in the two workers only, which
torchrun gives a RANK) records, per rank, every file medtune writes into the run folder and, after training, the
global step, a hash of the trainable weights and the tokens that rank trained on. So the tests can tell
that rank 0 alone wrote the run's files, each once, and that both ranks trained the same synchronized weights."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HOOKS = r'''
import hashlib, importlib, json, os
from pathlib import Path

if "RANK" in os.environ and "LOCAL_RANK" in os.environ and os.environ.get("MEDTUNE_TEST_RECORD"):
    import transformers
    train = importlib.import_module("medtune.training.train")  # the recipe module (it imports the writers by name)

    RANK = os.environ["RANK"]
    LOG = Path(os.environ["MEDTUNE_TEST_RECORD"]) / f"rank{RANK}.jsonl"

    def record(**kw):
        with open(LOG, "a") as f:
            f.write(json.dumps({"rank": int(RANK), **kw}) + "\n")

    def recording(name, fn, path_arg=0):
        def wrapper(*args, **kwargs):
            record(event="write", via=name, path=str(args[path_arg]))
            return fn(*args, **kwargs)
        return wrapper

    for name in ("atomic_write_text", "atomic_write_json", "atomic_write_jsonl", "staging_dir"):
        setattr(train, name, recording(name, getattr(train, name)))
    train.plot_losses = recording("plot_losses", train.plot_losses, path_arg=1)
    _publish = train.publish_dir

    def publish_dir(stage, dest):
        for f in sorted(Path(stage).rglob("*")):
            if f.is_file():
                record(event="write", via="publish_dir", path=str(Path(dest) / f.relative_to(stage)))
        return _publish(stage, dest)

    train.publish_dir = publish_dir
    _train = transformers.Trainer.train

    def trainer_train(self, *args, **kwargs):
        result = _train(self, *args, **kwargs)
        h = hashlib.sha256()
        for name, p in sorted(self.model.named_parameters()):
            if p.requires_grad:
                h.update(name.encode() + p.detach().float().cpu().numpy().tobytes())
        record(event="trained", step=self.state.global_step, weights=h.hexdigest(),
               tokens=getattr(self, "tokens_seen", None), world=self.args.world_size)
        return result

    transformers.Trainer.train = trainer_train

    if os.environ.get("MEDTUNE_TEST_SIGNAL"):  # RANK:STEP:NAME: that rank sends itself the signal as that step begins
        import signal
        sig_rank, sig_step, sig_name = os.environ["MEDTUNE_TEST_SIGNAL"].split(":")
        _step = transformers.Trainer.training_step

        def training_step(self, *args, **kwargs):
            if RANK == sig_rank and self.state.global_step + 1 == int(sig_step) and not hasattr(self, "_signalled"):
                self._signalled = True
                os.kill(os.getpid(), getattr(signal, sig_name))
            return _step(self, *args, **kwargs)

        transformers.Trainer.training_step = training_step
'''

# QLoRA: every process quantizes its own copy of the random base (a round trip through disk) and trains on it
QUICK = ["model.quantization=4bit", "train.report_to=none", "train.logging_steps=1", "train.eval_steps=2",
         "train.save_steps=2"]


def launch(tiny: Path, tmp: Path, out: Path, *args: str, steps: int, nproc: int = 2, env: dict | None = None):
    """torchrun -m medtune train on the tiny preset; returns (completed process, records per rank)."""
    hooks = tmp / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(HOOKS)
    rec = tmp / f"records-{len(list(tmp.glob('records-*')))}"
    rec.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]),
           "MEDTUNE_TEST_RECORD": str(rec), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}  # CPU and gloo even where a GPU exists
    sets = [a for s in QUICK + [f"train.max_steps={steps}"] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "medtune", "train", "--config", str(tiny), "--output-dir", str(out), *sets, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    records = {r: [json.loads(line) for line in (rec / f"rank{r}.jsonl").read_text().splitlines()]
               if (rec / f"rank{r}.jsonl").exists() else [] for r in range(nproc)}
    return proc, records


def written(records: list[dict], out: Path) -> list[str]:
    return [os.path.relpath(r["path"], out) for r in records if r["event"] == "write" and r["via"] != "staging_dir"]


def trained(records: list[dict]) -> dict:
    (t,) = [r for r in records if r["event"] == "trained"]
    return t


def check_clean(out: Path) -> None:
    """No staging folders or temporary files left: every file is complete."""
    assert not list(out.rglob(".staging-*")) and not list(out.rglob("*.tmp")) and not list(out.rglob(".*.tmp.png"))


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
    for f in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "config.yaml", "manifest.json",
              "metrics.json", "loss_curve.png", "splits/validation.jsonl", "splits/test.jsonl",
              "base_model/model.safetensors"):
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
    assert said == [f"medtune: stopped by SIGTERM after step 3 of 4; checkpoint {ckpt}; resume with: medtune train "
                    f"{said[0].split(' medtune train ', 1)[1]}"], proc.stderr[-3000:]
    assert said[0].endswith("--resume (under the same launcher)")
    assert rundir.checkpoint_problem(ckpt) is None
    assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()
    assert written(rec[1], out) == [] and not (out / "adapter_model.safetensors").exists()

    proc, rec = launch(tiny_preset, tmp, out, "--resume", steps=4)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert trained(rec[0])["step"] == 4 and trained(rec[0])["weights"] == trained(records[0])["weights"]
