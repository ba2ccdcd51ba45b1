"""Bad inputs medtune must refuse with one clear line and exit 2 (used by tests/test_refusals.py and by
scripts/refusals_table.py, which renders the table "Every refusal case" of docs/reliability.md).

Each case: (id, what the user did, argv with placeholders, a phrase the error line must contain). Placeholders are
paths made by `materialize`: {tiny} the tiny preset, {tmp} a scratch folder, {run} a trained tiny run, {bad_run} a
copy of it with a corrupt config.yaml, {empty_adapter} a copy with a 0-byte adapter, {merged} its merged model,
{busy} a run folder and {busy_out} an empty folder whose locks another medtune command holds (as does the lock of
{tmp}/busy.gguf).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from medtune.rundir import ADAPTER_WEIGHTS, CHECKPOINTS, CONFIG, LOCK

ROOT = Path(__file__).resolve().parents[1]
T = ["train", "--config", "{tiny}", "--output-dir", "{tmp}/out", "--set", "train.report_to=none"]

CASES = [
    ("lr-negative", "`--set train.learning_rate=-1`", T + ["--set", "train.learning_rate=-1"], "must be > 0"),
    ("lr-nan", "`--set train.learning_rate=.nan`", T + ["--set", "train.learning_rate=.nan"], "finite number"),
    ("optim-bogus", "`--set train.optim=bogus`", T + ["--set", "train.optim=bogus"], "must be one of auto"),
    (
        "scheduler-bogus",
        "`--set train.lr_scheduler=bogus`",
        T + ["--set", "train.lr_scheduler=bogus"],
        "must be one of linear",
    ),
    ("epochs-negative", "`--set train.epochs=-1`", T + ["--set", "train.epochs=-1"], "must be > 0"),
    ("max-steps-zero", "`--set train.max_steps=0`", T + ["--set", "train.max_steps=0"], "must be -1"),
    ("max-records-negative", "`--set data.max_records=-1`", T + ["--set", "data.max_records=-1"], "must be >= 1"),
    (
        "max-length-over-context",
        "`data.max_length` above the model's context",
        T + ["--set", "data.max_length=2048"],
        "longer than the model's context",
    ),
    (
        "output-dir-is-file",
        "`--output-dir` naming an existing file",
        ["train", "--config", "{tiny}", "--output-dir", "{tmp}/a-file"],
        "exists and is not a folder",
    ),
    (
        "fractions-sum",
        "validation + test fractions >= 1",
        T + ["--set", "data.val_fraction=0.6", "--set", "data.test_fraction=0.5"],
        "must be less than 1",
    ),
    ("bf16-on-cpu", "`--set train.bf16=true` without a bf16 GPU", T + ["--set", "train.bf16=true"], "needs a GPU"),
    (
        "paged-optim-on-cpu",
        "`--set train.optim=paged_adamw_8bit` without CUDA",
        T + ["--set", "train.optim=paged_adamw_8bit"],
        "needs a CUDA GPU",
    ),
    (
        "8bit-on-cpu",
        "`--set model.quantization=8bit` without CUDA",
        T + ["--set", "model.quantization=8bit"],
        "needs a CUDA GPU",
    ),
    (
        "batch-tokens-small",
        "`train.batch_tokens` below `data.max_length`",
        T + ["--set", "train.packing=true", "--set", "train.batch_tokens=10"],
        "must be at least data.max_length",
    ),
    (
        "template-bad-field",
        "a prompt template with an unknown `{field}`",
        T + ["--set", "data.prompt_template=Q: {question} {input}"],
        "not a valid template",
    ),
    ("unknown-key", "`--set train.bogus=1`", T + ["--set", "train.bogus=1"], "unknown config key"),
    ("set-without-equals", "`--set train`", T + ["--set", "train"], "section.key=value"),
    ("config-missing", "`--config` naming a missing file", ["train", "--config", "{tmp}/nope.yaml"], "not found"),
    ("config-not-mapping", "a preset that is not a mapping", ["train", "--config", "{tmp}/list.yaml"], "not a mapping"),
    ("random-unknown", "`--model random:nope`", T + ["--model", "random:nope"], "unknown random model"),
    (
        "lora-targets-missing",
        "LoRA targets the model does not have",
        T + ["--set", "model.lora_targets=q_proj"],
        "do not fit this model",
    ),
    ("data-missing", "`--data` naming a missing file", T + ["--data", "{tmp}/missing.jsonl"], "not found"),
    ("data-bad-json", "a .jsonl line that is not JSON", T + ["--data", "{tmp}/bad.jsonl"], "not valid JSON"),
    ("data-empty-output", "a record with an empty answer", T + ["--data", "{tmp}/empty_output.jsonl"], "empty"),
    ("data-not-utf8", "a data file that is not UTF-8", T + ["--data", "{tmp}/latin1.jsonl"], "not UTF-8"),
    ("data-folder", "`--data` naming a folder", T + ["--data", "{tmp}"], "is a folder"),
    ("data-type", "an unsupported data file type", T + ["--data", "{tmp}/q.txt"], "unsupported data file type"),
    (
        "chat-unknown-role",
        "a chat record with an unknown role",
        T + ["--data", "{tmp}/chat_role.jsonl"],
        "unknown role in rows 2",
    ),
    (
        "chat-no-assistant",
        "a chat record without an assistant turn",
        T + ["--data", "{tmp}/chat_no_answer.jsonl"],
        "no assistant turn in rows 2",
    ),
    (
        "chat-empty-turn",
        "a chat record with an empty turn",
        T + ["--data", "{tmp}/chat_empty_turn.jsonl"],
        "empty or whitespace-only fields in rows 2",
    ),
    (
        "report-to-unknown",
        "`--set train.report_to=bogus`",
        T + ["--set", "train.report_to=bogus"],
        "must be one of none, tensorboard",
    ),
    (
        "report-to-not-installed",
        "a tracker whose package is not installed (`--set train.report_to=azure_ml`)",
        T + ["--set", "train.report_to=azure_ml"],
        "pip install azureml-core",
    ),
    ("resume-missing", "`--resume` on a folder that does not exist", T + ["--resume"], "not found"),
    ("resume-finished", "a second `train` into a finished run", T[:4] + ["{run}"], "already holds a run"),
    (
        "gen-not-utf8-txt",
        "`generate --input` a non-UTF-8 .txt",
        ["generate", "{run}", "--input", "{tmp}/latin1.txt", "--output", "{tmp}/a.jsonl"],
        "not UTF-8",
    ),
    (
        "gen-not-utf8-jsonl",
        "`generate --input` a non-UTF-8 .jsonl",
        ["generate", "{run}", "--input", "{tmp}/latin1.jsonl", "--output", "{tmp}/a.jsonl"],
        "not UTF-8",
    ),
    (
        "gen-long-question",
        "a question longer than the context (5,000 tokens)",
        ["generate", "{run}", "--input", "{tmp}/long.txt", "--output", "{tmp}/a.jsonl"],
        "exceeds the model's context",
    ),
    (
        "gen-huge-line",
        "a 1 MB line as a question",
        ["generate", "{run}", "--input", "{tmp}/huge.txt", "--output", "{tmp}/a.jsonl"],
        "characters long; the limit",
    ),
    ("gen-batch-zero", "`generate --batch-size 0`", ["generate", "{run}", "hi", "--batch-size", "0"], "must be >= 1"),
    (
        "gen-batch-negative",
        "`generate --batch-size -1`",
        ["generate", "{run}", "--input", "{tmp}/q.txt", "--output", "{tmp}/a.jsonl", "--batch-size", "-1"],
        "must be >= 1",
    ),
    (
        "gen-max-new-negative",
        "`generate --max-new-tokens -5`",
        ["generate", "{run}", "hi", "--max-new-tokens", "-5"],
        "must be >= 1",
    ),
    (
        "gen-max-new-huge",
        "`generate --max-new-tokens 100000`",
        ["generate", "{run}", "hi", "--max-new-tokens", "100000"],
        "exceeds the model's context",
    ),
    ("gen-top-p", "`generate --top-p 5`", ["generate", "{run}", "hi", "--top-p", "5"], "must be <= 1"),
    (
        "gen-temperature",
        "`generate --temperature -1`",
        ["generate", "{run}", "hi", "--temperature", "-1"],
        "must be >= 0",
    ),
    (
        "gen-output-dir",
        "`generate --output` naming a folder",
        ["generate", "{run}", "--input", "{tmp}/q.txt", "--output", "{tmp}"],
        "is a folder",
    ),
    (
        "gen-input-no-output",
        "`generate --input` without `--output`",
        ["generate", "{run}", "--input", "{tmp}/q.txt"],
        "needs --output",
    ),
    (
        "gen-input-missing",
        "`generate --input` a missing file",
        ["generate", "{run}", "--input", "{tmp}/none.txt", "--output", "{tmp}/a.jsonl"],
        "not found",
    ),
    (
        "gen-corrupt-config",
        "`generate` on a run whose config.yaml is corrupt",
        ["generate", "{bad_run}", "hi"],
        "not valid YAML",
    ),
    (
        "gen-empty-adapter",
        "`generate` on a run whose adapter file is empty",
        ["generate", "{empty_adapter}", "hi"],
        "is empty",
    ),
    ("gen-not-a-run", "`generate` on a folder holding no model", ["generate", "{tmp}", "hi"], "neither an adapter"),
    ("gen-missing", "`generate` on a missing folder", ["generate", "{tmp}/nothing", "hi"], "not found"),
    (
        "gen-system-template",
        "`generate --system` on a run trained with the instruction template",
        ["generate", "{run}", "hi", "--system", "Be brief."],
        "--system needs a run trained in chat format",
    ),
    (
        "serve-corrupt-config",
        "`serve` on a run whose config.yaml is corrupt",
        ["serve", "{bad_run}", "--port", "0"],
        "not valid YAML",
    ),
    (
        "serve-queue-zero",
        "`serve --queue-size 0`",
        ["serve", "{run}", "--port", "0", "--queue-size", "0"],
        "must be >= 1",
    ),
    ("eval-merged", "`eval` on a merged model (no base to compare)", ["eval", "{merged}"], "needs a `medtune train`"),
    ("eval-split", "`eval --split bogus`", ["eval", "{run}", "--split", "bogus"], "--split must be one of"),
    ("eval-num-samples", "`eval --num-samples -1`", ["eval", "{run}", "--num-samples", "-1"], "0 or more"),
    ("eval-data-missing", "`eval --data` a missing file", ["eval", "{run}", "--data", "{tmp}/none.jsonl"], "not found"),
    (
        "eval-benchmark-type",
        "`eval --benchmark` a file of another type",
        ["eval", "{run}", "--benchmark", "medmcqa={tmp}/q.txt"],
        "expected the layout",
    ),
    (
        "eval-benchmark-layout",
        "`eval --benchmark` a CSV in no layout the task reads",
        ["eval", "{run}", "--benchmark", "mmlu_anatomy={tmp}/anatomy_test.csv"],
        "original header-less CSV",
    ),
    ("merge-out-not-empty", "`merge --out` a non-empty folder", ["merge", "{run}", "--out", "{tmp}"], "is not empty"),
    (
        "merge-out-inside-run",
        "`merge --out` inside the run folder",
        ["merge", "{run}", "--out", "{run}/merged"],
        "must not be the run folder",
    ),
    ("merge-merged", "`merge` a merged model", ["merge", "{merged}", "--out", "{tmp}/m2"], "needs a `medtune train`"),
    (
        "train-folder-in-use",
        "`train --resume` on a run another `medtune train` is writing",
        T[:4] + ["{busy}", "--resume"],
        "is in use by `medtune train",
    ),
    ("eval-run-in-use", "`eval` on a run another medtune command is writing", ["eval", "{busy}"], "is in use by"),
    (
        "merge-out-in-use",
        "`merge --out` a folder another `merge` is writing",
        ["merge", "{run}", "--out", "{busy_out}"],
        "is in use by `medtune merge",
    ),
    (
        "export-out-in-use",
        "`export --out` a file another `export` is writing",
        ["export", "{run}", "--out", "{tmp}/busy.gguf"],
        "is in use by `medtune export",
    ),
]

_OTHERS: list[int] = []  # lock files held as another medtune process would (kept open for the tests' lifetime)


def hold_lock(file: Path, command: str) -> None:
    """Hold `file` as a lock of another medtune process (pid 4242 on node-7): a flock of its own."""
    fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(
        fd, json.dumps({"pid": 4242, "host": "node-7", "command": command, "since": "2026-12-01 10:00:00"}).encode()
    )
    _OTHERS.append(fd)


def materialize(tmp: Path, run: Path, merged: Path) -> dict[str, str]:
    """Write the bad files the cases name; returns the placeholder values."""
    rec = {"instruction": "Answer.", "input": "What is asthma?", "output": "A disease of the airways."}
    (tmp / "a-file").write_text("x")
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    (tmp / "bad.jsonl").write_text(json.dumps(rec) + "\n{not json\n")
    (tmp / "empty_output.jsonl").write_text(json.dumps({**rec, "output": "  "}) + "\n")
    (tmp / "latin1.jsonl").write_bytes(
        (json.dumps({**rec, "input": "caf\u00e9"}, ensure_ascii=False) + "\n").encode("latin-1")
    )
    (tmp / "latin1.txt").write_bytes("caf\u00e9 au lait?\n".encode("latin-1"))
    (tmp / "q.txt").write_text("What is asthma?\n")
    (tmp / "anatomy_test.csv").write_text("Which bone?,Femur,Ulna,Radius,B\nWhich organ?,Liver,Lung,Skin,A\n")
    turns = [
        {"role": "user", "content": "What is asthma?"},
        {"role": "assistant", "content": "A disease of the airways."},
    ]
    for name, bad in (
        ("chat_role", [{"role": "doctor", "content": "Hi."}] + turns),
        ("chat_no_answer", turns[:1]),
        ("chat_empty_turn", [{"role": "user", "content": " "}, turns[1]]),
    ):
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in (turns, bad)))
    (tmp / "long.txt").write_text("word " * 5000 + "?\n")
    (tmp / "huge.txt").write_text("a" * 1_000_000 + "\n")
    bad_run, empty_adapter = tmp / "bad_run", tmp / "empty_adapter"
    for copy in (bad_run, empty_adapter):
        if not copy.exists():
            shutil.copytree(run, copy, ignore=shutil.ignore_patterns(CHECKPOINTS))
    (bad_run / CONFIG).write_text("model: [unclosed\n")
    (empty_adapter / ADAPTER_WEIGHTS).write_bytes(b"")
    busy, busy_out = tmp / "busy_run", tmp / "busy_out"
    busy.mkdir(exist_ok=True)
    busy_out.mkdir(exist_ok=True)
    hold_lock(busy / LOCK, f"medtune train --config configs/gpt2-lora.yaml --output-dir {busy}")
    hold_lock(busy_out / LOCK, f"medtune merge {run} --out {busy_out}")
    hold_lock(tmp / f".busy.gguf{LOCK}", f"medtune export {run} --out {tmp / 'busy.gguf'}")
    return {
        "tiny": str(ROOT / "configs" / "tiny-cpu.yaml"),
        "tmp": str(tmp),
        "run": str(run),
        "bad_run": str(bad_run),
        "empty_adapter": str(empty_adapter),
        "merged": str(merged),
        "busy": str(busy),
        "busy_out": str(busy_out),
    }


def argv(case_args: list[str], values: dict[str, str]) -> list[str]:
    return [a.format(**values) if "{" in a and "{question}" not in a and "{input}" not in a else a for a in case_args]
