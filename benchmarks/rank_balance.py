"""How evenly a multi-GPU step's work splits over the processes (CPU only, no model): the slowest process sets the
pace of every DDP step, so a step costs the most loaded process's work, not the mean.

For the batching modes of benchmarks/ddp_gpu.sh it replays one epoch of the data: each process's tokens and
attention work (sum of squared example lengths) per optimizer step, then prints the work of the most loaded process
over the mean (1.00 = even; 1.10: the step takes 10% longer than an even split would), and how full token-budget
batches are. The data is prepared as in training (the config's data section, the real tokenizer).

usage: python benchmarks/rank_balance.py TOKENIZER_DIR [DATA_FILE] [--gpus 2] [--global-batch 64]
       [--batch-tokens 16384] [--config configs/gpt2-xl-qlora.yaml]"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from medtune import data as data_mod  # noqa: E402
from medtune.batching import TokenBudgetBatchSampler  # noqa: E402
from medtune.model import load_tokenizer  # noqa: E402
from medtune.training.train import record_data_choices  # noqa: E402
from medtune.validate import load_config  # noqa: E402


def fixed_examples(lengths: list[int], per_gpu: int, gpus: int, seed: int) -> list[list[list[int]]]:
    """A shuffled epoch cut into batches of `per_gpu` examples, batch k to process k mod gpus (as accelerate's
    BatchSamplerShard does); per step, per process, the example lengths."""
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    batches = [[lengths[i] for i in order[s : s + per_gpu]] for s in range(0, len(order) - per_gpu + 1, per_gpu)]
    return [batches[s : s + gpus] for s in range(0, len(batches) - gpus + 1, gpus)]


def token_budget(lengths: list[int], per_gpu_tokens: int, gpus: int, seed: int) -> list[list[list[int]]]:
    """medtune's token-budget batches (train.batch_tokens per process), dealt out the same way."""
    batches = [[lengths[i] for i in b] for b in TokenBudgetBatchSampler(lengths, per_gpu_tokens, seed=seed)]
    return [batches[s : s + gpus] for s in range(0, len(batches) - gpus + 1, gpus)]


def imbalance(steps: list[list[list[int]]], work) -> float:
    """Mean over steps of (the most loaded process's work / the mean process's work)."""
    return statistics.mean(max(work(b) for b in step) / statistics.mean(work(b) for b in step) for step in steps)


def report(name: str, steps: list[list[list[int]]], budget: int | None = None) -> None:
    tokens = lambda b: sum(b)  # noqa: E731
    attention = lambda b: sum(k * k for k in b)  # noqa: E731
    fill = "-" if budget is None else f"{statistics.mean(sum(b) for s in steps for b in s) / budget:.1%}"
    print(
        f"| {name} | {len(steps)} | {statistics.mean(sum(map(sum, s)) for s in steps):,.0f} | {fill} | "
        f"{imbalance(steps, tokens):.3f} | {imbalance(steps, attention):.3f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tokenizer")
    ap.add_argument("data", nargs="?")
    ap.add_argument("--config", default=str(ROOT / "configs" / "gpt2-xl-qlora.yaml"))
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--global-batch", type=int, default=64)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    data = a.data or str(Path(a.tokenizer).parent / "wikidoc_patient_information" / "wikidoc_patient_information.json")
    cfg = load_config(a.config, ["train.report_to=none"], data__source=data, model__tokenizer=a.tokenizer)
    tok, checked = load_tokenizer(a.tokenizer), data_mod.load_checked(cfg.data)
    record_data_choices(cfg, tok, checked)  # as `medtune train` does (chat format: EOS)
    enc = data_mod.prepare(cfg.data, tok, checked).encoded["train"]
    lengths = [len(e["input_ids"]) for e in enc]
    n = a.gpus
    print(
        f"{len(lengths)} training examples, {sum(lengths):,} tokens, lengths: median "
        f"{statistics.median(lengths):.0f}, max {max(lengths)}; {n} processes\n"
    )
    print("| batching | steps an epoch | tokens per step | batches full | most loaded / mean: tokens | attention |")
    print("| --- | --- | --- | --- | --- | --- |")
    report(
        f"{a.global_batch} examples per step ({a.global_batch // n} per process)",
        fixed_examples(lengths, a.global_batch // n, n, a.seed),
    )
    report(
        f"{a.batch_tokens} tokens per step ({a.batch_tokens // n} per process)",
        token_budget(lengths, a.batch_tokens // n, n, a.seed),
        budget=a.batch_tokens // n,
    )
    report(
        f"{a.batch_tokens} tokens per process (weak scaling)",
        token_budget(lengths, a.batch_tokens, n, a.seed),
        budget=a.batch_tokens,
    )


if __name__ == "__main__":
    main()
