"""Several machines, as two "nodes" on this one: two torchrun agents (`--nnodes 2 --nproc-per-node 1`, c10d
rendezvous on 127.0.0.1), each in its own working directory with its own output folder, one process each (gloo).

The base is the tiny GPT-2 without dropout, saved as a local folder that both nodes load, so the 2-process run can
be compared with one process on the same global batch. Hooks in the workers (launching.py) record each rank's
writes, weights and working directory, and count the collectives and host reads of each training step."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launching import read_records, trained, worker_env, written

# logged after steps 1 and 3, one checkpoint (step 4); step 2 is a plain step (neither logged nor saved)
STEPS = [
    "train.max_steps=4",
    "train.logging_steps=3",
    "train.save_steps=4",
    "train.eval_steps=100",
    "train.eval_on_start=false",
    "train.report_to=none",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_nodes(tiny: Path, tmp: Path, base: Path, *args: str, timeout: int = 300):
    """Two torchrun agents, node ranks 0 and 1, each in tmp/node<R> with the output folder `run` (relative: a
    different path per node); returns (per agent: (returncode, stdout, stderr)), records per rank)."""
    env, rec = worker_env(tmp, {"MEDTUNE_TEST_COUNT_OPS": "1"})
    endpoint = f"127.0.0.1:{free_port()}"
    sets = [a for s in STEPS for a in ("--set", s)]
    agents = []
    for rank in (0, 1):
        cwd = tmp / f"node{rank}"
        cwd.mkdir(exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc-per-node=1",
            f"--node-rank={rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            "--rdzv-id=medtune-test",
            "-m",
            "medtune",
            "train",
            "--config",
            str(tiny),
            "--model",
            str(base),
            "--output-dir",
            "run",
            *sets,
            *args,
        ]
        agents.append(
            subprocess.Popen(
                cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
            )
        )
    results = []
    try:
        for p in agents:
            out, err = p.communicate(timeout=timeout)
            results.append((p.returncode, out, err))
    finally:
        for p in agents:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return results, read_records(rec, 2)


@pytest.fixture(scope="module")
def base(tmp_path_factory, tok):
    """The tiny random GPT-2 with every dropout off, as a local model folder."""
    from medtune.model import build_random

    path = tmp_path_factory.mktemp("base") / "tiny-no-dropout"
    build_random("random:tiny", tok).save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, tiny_preset, base):
    tmp = tmp_path_factory.mktemp("nodes")
    agents, records = launch_nodes(tiny_preset, tmp, base)
    for rc, out, err in agents:
        assert rc == 0, out[-3000:] + err[-5000:]
    return tmp, agents, records


def test_two_machines_train_one_run_on_rank_0s_machine(two_nodes):
    """c10d assigns the ranks (it ignores --node-rank): the run folder is on the machine whose process got rank 0."""
    tmp, agents, records = two_nodes
    t0, t1 = trained(records[0]), trained(records[1])
    assert t0["step"] == t1["step"] == 4 and t0["world"] == t1["world"] == 2
    assert t0["weights"] == t1["weights"]  # DDP over the two "machines" kept the LoRA weights identical
    main, helper = Path(t0["cwd"]), Path(t1["cwd"])
    assert {main, helper} == {tmp / "node0", tmp / "node1"}

    said = [out for _, out, _ in agents if re.search(r"x 2 processes = effective batch size 16\b", out)]
    assert len(said) == 1 and said[0].count("done: adapter and run files") == 1  # rank 0 alone speaks

    assert written(records[1], helper / "run") == []  # medtune's writers ran on rank 0 alone
    files = {str(f.relative_to(main / "run")) for f in (main / "run").rglob("*") if f.is_file()}
    for f in (
        "adapter_model.safetensors",
        "config.yaml",
        "metrics.json",
        "manifest.json",
        "splits/test.jsonl",
        "checkpoints/checkpoint-4/adapter_model.safetensors",
        "checkpoints/checkpoint-4/rng_state_0.pth",
    ):
        assert f in files, f
    assert not any("rng_state_1" in f for f in files)
    # the other machine keeps only its process's RNG state of each checkpoint (the Trainer's, for --resume)
    assert [str(f.relative_to(helper)) for f in helper.rglob("*") if f.is_file()] == [
        "run/checkpoints/checkpoint-4/rng_state_1.pth"
    ]
    final = json.loads((main / "run" / "metrics.json").read_text())["final"]
    assert final["train_tokens"] == t0["tokens"] + t1["tokens"]
    assert json.loads((main / "run" / "manifest.json").read_text())["processes"] == 2


def test_two_machines_equal_one_process_with_the_same_global_batch(two_nodes, tiny_preset, base, tmp_path):
    """8 examples on each of 2 processes = 16 in one: the same batches, the same token-weighted loss, the same
    adapter (up to float rounding in a different summation order)."""
    from safetensors.torch import load_file

    from medtune import training
    from medtune.validate import load_config

    tmp, _, records = two_nodes
    single = tmp_path / "single"
    cfg = load_config(tiny_preset, STEPS + ["train.batch_size=16"], output_dir=str(single), model__name=str(base))
    training.run(cfg)
    main = Path(trained(records[0])["cwd"]) / "run"
    two, one = load_file(main / "adapter_model.safetensors"), load_file(single / "adapter_model.safetensors")
    assert two.keys() == one.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5)
    losses = [
        [h["loss"] for h in json.loads((run / "metrics.json").read_text())["log_history"] if "loss" in h]
        for run in (main, single)
    ]
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], rel=1e-4)


def per_step(records: list[dict], step: int) -> dict[tuple, int]:
    """What a rank's hooks counted while the global step was `step` (after step `step` ended: the stop check, its
    logging and checkpoint if due, then step `step + 1`'s forward, backward and optimizer step), keyed by (kind, op,
    where: the innermost frame of medtune or a library, by: the innermost frame of medtune or the Trainer)."""
    (ops,) = [r["per_step"] for r in records if r["event"] == "ops"]
    counts = {}
    for key, n in ops[str(step)].items():
        kind, op, where, _, by = key.split()
        counts[kind, op, where, by] = n
    return counts


def test_collectives_and_host_reads_per_training_step(two_nodes):
    """Per plain training step each process joins three collectives: DDP's gradient all-reduce (one bucket for this
    model), the Trainer's all-gather of the labelled-token count (the loss is normalized over every process's
    tokens) and medtune's stop check (a signal to any rank stops all after the same step). medtune's code reads one
    value back from a tensor per step (the stop check's: on a GPU, each such read waits for the GPU); tokens/s is
    summed over the processes only when a step is logged."""
    _, _, records = two_nodes
    for rank in (0, 1):
        plain, logged = per_step(records[rank], 2), per_step(records[rank], 3)
        assert sorted((k[1], k[3], n) for k, n in plain.items() if k[0] == "collective") == [
            ("allgather_", "transformers/trainer.py:_get_num_items_in_batch", 1),
            ("allreduce_", "medtune/training/trainer.py:on_step_end", 1),
            ("allreduce_", "transformers/trainer.py:training_step", 1),
        ], plain  # DDP's, in the backward
        assert {k[2]: n for k, n in plain.items() if k[0] == "host_read" and k[2].startswith("medtune/")} == {
            "medtune/training/trainer.py:on_step_end": 1
        }, plain
        # the Trainer's loop no longer reads every step's loss (its nan/inf filter is off); on this CPU AdamW reads
        # its step counters (CPU tensors on a GPU too), and an unpacked batch's attention mask is checked
        assert not [k for k in plain if k[0] == "host_read" and k[2] == "transformers/trainer.py:_run_epoch"], plain
        extra = {k: n - plain.get(k, 0) for k, n in logged.items() if k[0] == "collective" and n > plain.get(k, 0)}
        assert sorted((k[1], k[3]) for k in extra) == [
            ("allgather_", "transformers/trainer.py:_maybe_log_save_evaluate"),  # the loss of the logging interval
            ("allgather_", "transformers/trainer.py:store_flos"),
            ("allreduce_", "medtune/training/trainer.py:log"),
        ], extra  # tokens/s over all processes


def test_resume_without_a_shared_folder_is_refused_on_every_machine(two_nodes, tiny_preset, base, tmp_path):
    """--resume reads the output folder on every machine: here only one holds the checkpoint. Every process says so
    and stops before training (it used to start over on one machine and crash the group at the first step)."""
    tmp, _, records = two_nodes
    for node in ("node0", "node1"):
        shutil.copytree(tmp / node, tmp_path / node)
    main = tmp_path / Path(trained(records[0])["cwd"]).name / "run"
    before = {f: f.read_bytes() for f in main.rglob("*") if f.is_file()}
    agents, rec = launch_nodes(tiny_preset, tmp_path, base, "--resume")
    for rc, _, err in agents:
        assert rc != 0
        assert re.search(
            r"medtune: error: --resume: the processes of this run see different checkpoints in run "
            r"\(from step 0 to 4; 0: none\): every machine must see the same output folder",
            err,
        ), err
    assert not [r for rank in (0, 1) for r in rec[rank] if r["event"] in ("write", "trained")]
    assert {f: f.read_bytes() for f in main.rglob("*") if f.is_file()} == before
