"""Evaluation: the base model vs the tuned model (base + adapter) on held-out records.

`run(run_dir)` writes, under RUN_DIR/eval/ (every file atomically):
  metrics.json     base / tuned / reference numbers, what was evaluated and how, timings
  report.md        the base-vs-tuned table, 5 sample answers, the loss curves, the config summary, the notice
  loss_curve.png   training and validation loss (from the run's metrics.json)
  samples.jsonl    every generated answer with its reference and ROUGE-L

Loss and perplexity count answer tokens only (the prompt is masked; the EOS that ends each answer counts).
Batches are streamed and only a chunk of logits exists at a time: the model body runs on the batch, then
the LM head is applied to the hidden states of answer positions, `chunk_tokens` rows at a time.
Both models are one PeftModel: the base numbers come from inside `disable_adapter()`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from medtune.config import Config, DataConfig, GenerateConfig, from_dict
from medtune.data import IGNORE_INDEX, Collator, encode, format_prompt, load_records, validate_records
from medtune.errors import MedtuneError
from medtune.files import NOTICE, atomic_write_json, atomic_write_jsonl, atomic_write_text

SPLITS = ("test", "validation")
MODELS = ("base", "tuned")
REPORT_SAMPLES = 5


# ---------------------------------------------------------------- inputs

def load_run_config(run_dir: Path) -> Config:
    import yaml

    if not run_dir.exists():
        raise MedtuneError(f"run folder not found: {run_dir}")
    if not run_dir.is_dir():
        raise MedtuneError(f"not a folder: {run_dir}")
    if not (run_dir / "adapter_config.json").exists():
        raise MedtuneError(f"{run_dir} holds no adapter (adapter_config.json): eval compares a base model with its "
                           "tuned adapter, so give the output dir of `medtune train` (a merged model has no base to compare)")
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise MedtuneError(f"{run_dir} has no config.yaml; is it a medtune training output dir?")
    try:
        values = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise MedtuneError(f"{cfg_file} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise MedtuneError(f"{cfg_file} must hold a mapping of config sections")
    return from_dict(values)


def load_eval_records(run_dir: Path, cfg: Config, data: str | None, split: str) -> tuple[list[dict], str]:
    """Records to evaluate on: `data` (a file or hub id with the run's column names) or a split saved by training."""
    if data:
        data_cfg = dataclasses.replace(cfg.data, source=str(data))
        source = str(data)
    else:
        if split not in SPLITS:
            raise MedtuneError(f"--split must be one of {', '.join(SPLITS)} (the splits training saves), got {split!r}")
        path = run_dir / "splits" / f"{split}.jsonl"
        if not path.is_file():
            raise MedtuneError(f"{path} not found: this run saved no {split} split; "
                               "pass --data FILE (or a hub dataset id) to evaluate on")
        # saved splits hold records already mapped to instruction / input / output
        data_cfg = DataConfig(source=str(path))
        source = str(path)
        if not path.read_text(encoding="utf-8").strip():
            frac = "test_fraction" if split == "test" else "val_fraction"
            other = "validation" if split == "test" else "test"
            raise MedtuneError(f"the {split} split of this run is empty (data.{frac}={getattr(cfg.data, frac)}); "
                               f"use --split {other} or --data FILE")
    records, _ = validate_records(load_records(data_cfg), source)
    return records, source


# ---------------------------------------------------------------- loss and perplexity

def _device(model) -> torch.device:
    return next(model.parameters()).device


def _body_and_head(model):
    """(body, lm_head) of a causal LM (or of a PeftModel's base), so that logits can be made in chunks.
    None where the head does more than a linear layer (logit scaling or soft-capping): then the plain forward is used."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefix = getattr(base, "base_model_prefix", None)
    body = getattr(base, prefix, None) if prefix else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    config = getattr(base, "config", None)
    special = any(getattr(config, k, None) not in (None, 1.0) for k in
                  ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier"))
    if body is None or head is None or body is base or special:
        return None
    return body, head


@torch.no_grad()
def answer_token_loss(model, encoded: list[dict], pad_token_id: int, batch_size: int = 8,
                      chunk_tokens: int = 1024, use_chunks: bool = True) -> dict:
    """Sum of cross-entropy over answer tokens (labels != -100, EOS included) and their count, streamed
    batch by batch. Returns loss (mean per answer token), perplexity = exp(loss), tokens, records."""
    parts = _body_and_head(model) if use_chunks else None
    collate = Collator(pad_token_id)
    device = _device(model)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))  # less padding
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = collate([encoded[i] for i in order[start:start + batch_size]])
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        targets = batch["labels"][:, 1:].to(device)
        keep = targets != IGNORE_INDEX
        if parts is not None:
            body, head = parts
            hidden = body(input_ids=ids, attention_mask=mask, use_cache=False)[0]
            rows = hidden[:, :-1][keep]
            del hidden
        else:
            rows = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1][keep]
        t = targets[keep]
        for s in range(0, t.numel(), chunk_tokens):
            x = rows[s:s + chunk_tokens]
            logits = head(x) if parts is not None else x
            total += float(F.cross_entropy(logits.float(), t[s:s + chunk_tokens], reduction="sum"))
        count += int(t.numel())
        del rows
    if count == 0:
        raise MedtuneError("no answer tokens to evaluate")
    loss = total / count
    try:
        ppl = math.exp(loss)
    except OverflowError:
        ppl = float("inf")
    return {"loss": loss, "perplexity": ppl, "answer_tokens": count, "records": len(encoded)}


# ---------------------------------------------------------------- generation metrics

def repeated_ngrams(sequences: list[list], n: int = 4) -> tuple[int, int]:
    """(repeated, total) n-grams over all sequences; an n-gram is repeated when it already occurred earlier
    in the same sequence."""
    repeated = total = 0
    for seq in sequences:
        grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
        total += len(grams)
        repeated += len(grams) - len(set(grams))
    return repeated, total


def repeated_4gram_share(sequences: list[list]) -> float | None:
    """Share of token 4-grams that repeat an earlier 4-gram of the same answer (None: no answer has 4 tokens).
    Counted on token ids, so degenerate output without spaces (".........") counts too."""
    repeated, total = repeated_ngrams(sequences, 4)
    return repeated / total if total else None


def rouge_l(predictions: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F1 per pair (rouge-score, Porter stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]


def eval_generate_config(cfg: Config, greedy: bool | None = None) -> GenerateConfig:
    """eval.max_new_tokens and the run's generation seed; greedy decoding without repetition penalty (default),
    or, with greedy false, sampling with the run's generate settings."""
    greedy = cfg.eval.greedy if greedy is None else greedy
    if greedy:
        return GenerateConfig(max_new_tokens=cfg.eval.max_new_tokens, greedy=True, repetition_penalty=1.0,
                              seed=cfg.generate.seed)
    return dataclasses.replace(cfg.generate, max_new_tokens=cfg.eval.max_new_tokens, greedy=False)


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[str], g: GenerateConfig, batch_size: int = 8) -> list[dict]:
    """Batched generation from exact prompts (left padding). Each row: answer, tokens, stopped_at_eos."""
    from transformers import set_seed

    from medtune.generate import generation_kwargs

    set_seed(g.seed)
    kwargs = generation_kwargs(g, tokenizer)
    eos = tokenizer.eos_token_id
    rows = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(_device(model))
            out = model.generate(**enc, **kwargs)
            for seq in out[:, enc["input_ids"].shape[1]:].tolist():
                stopped = eos in seq
                if stopped:
                    seq = seq[: seq.index(eos)]
                rows.append({"answer": tokenizer.decode(seq, skip_special_tokens=True).strip(),
                             "tokens": len(seq), "stopped_at_eos": stopped, "ids": seq})
    finally:
        tokenizer.padding_side = side
    return rows


def generation_metrics(rows: list[dict], references: list[str]) -> dict:
    answers = [r["answer"] for r in rows]
    scores = rouge_l(answers, references)
    for r, s in zip(rows, scores):
        r["rouge_l"] = s
    n = len(rows)
    return {"rouge_l": sum(scores) / n, "eos_rate": sum(r["stopped_at_eos"] for r in rows) / n,
            "mean_answer_tokens": sum(r["tokens"] for r in rows) / n,
            "repeated_4gram_share": repeated_4gram_share([r["ids"] for r in rows]), "generated": n}


def _max_positions(model) -> int | None:
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    for key in ("n_positions", "max_position_embeddings"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


# ---------------------------------------------------------------- report

def _num(x, fmt: str) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return format(x, fmt)


ROWS = (  # (label, metrics key, format)
    ("answer-token loss", "loss", ".4f"),
    ("perplexity", "perplexity", ".2f"),
    ("ROUGE-L F1", "rouge_l", ".4f"),
    ("EOS rate", "eos_rate", ".1%"),
    ("mean answer length (tokens)", "mean_answer_tokens", ".1f"),
    ("repeated 4-grams", "repeated_4gram_share", ".1%"),
)


def table(metrics: dict) -> str:
    """The base-vs-tuned table as Markdown (also readable as plain text)."""
    head = ["metric", "base", "tuned", "reference answers"]
    body = []
    for label, key, fmt in ROWS:
        ref = metrics["reference"].get(key)
        body.append([label, _num(metrics["base"][key], fmt), _num(metrics["tuned"][key], fmt),
                     _num(ref, fmt) if key in metrics["reference"] else ""])
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "| " + " | ".join("-" * w for w in widths) + " |"] + [line(r) for r in body])


def _quote(text: str, limit: int = 800) -> str:
    text = text.strip()
    if len(text) > limit:
        text = text[:limit].rstrip() + " […]"
    if not text:
        text = "(empty answer)"
    return "\n".join("> " + ln if ln.strip() else ">" for ln in text.splitlines())


def config_summary(cfg: Config, run_dir: Path) -> list[tuple[str, str]]:
    m, d, t = cfg.model, cfg.data, cfg.train
    rows = [
        ("model", m.name), ("tokenizer", m.tokenizer or m.name), ("quantization", m.quantization),
        ("LoRA", f"r={m.lora_r}, alpha={m.lora_alpha}, dropout={m.lora_dropout}, targets={m.lora_targets or 'auto'}"),
        ("training data", f"{d.source}" + (f" (first {d.max_records} records)" if d.max_records else "")),
        ("split", f"validation {d.val_fraction}, test {d.test_fraction}, seed {d.seed}; max_length {d.max_length}"),
        ("training", f"epochs {t.epochs}, max_steps {t.max_steps}, batch {t.batch_size} x {t.grad_accum} accumulation, "
                     f"lr {t.learning_rate} ({t.lr_scheduler}), packing {t.packing}"),
    ]
    final = _train_metrics(run_dir).get("final", {})
    bits = []
    for key, label, fmt in (("train_loss", "train loss", ".4f"), ("eval_loss", "validation loss", ".4f"),
                            ("train_seconds", "time (s)", ".1f"), ("tokens_per_second", "tokens/s", ".0f"),
                            ("peak_gpu_memory_gib", "peak GPU memory (GiB)", ".2f")):
        if isinstance(final.get(key), (int, float)):
            bits.append(f"{label} {format(final[key], fmt)}")
    if bits:
        rows.append(("training result", ", ".join(bits)))
    return rows


def _train_metrics(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def render_report(metrics: dict, samples: list[dict], cfg: Config, run_dir: Path, curve: str | None) -> str:
    d, gen = metrics["data"], metrics["generation"]
    out = [f"# Evaluation: {run_dir.name}", "", f"> **{NOTICE}**", "",
           f"Base model vs tuned model (base + LoRA adapter) on {d['records']} held-out records from `{d['source']}`"
           + (f" ({d['dropped_overlong']} longer than data.max_length={cfg.data.max_length} tokens left out)"
              if d["dropped_overlong"] else "") + ".", "",
           table(metrics), "",
           f"- Loss and perplexity: answer tokens only (prompt masked, EOS counted), {d['answer_tokens']:,} tokens; "
           "perplexity = exp(mean loss per answer token).",
           f"- Generation: {gen['generated']} questions drawn with seed {gen['seed']}, "
           f"{'greedy decoding' if gen['greedy'] else 'sampling'}, at most {gen['max_new_tokens']} new tokens. "
           "ROUGE-L F1 (rouge-score, stemmed) against the reference answer; EOS rate = share of answers that ended "
           "with EOS before the limit; repeated 4-grams = share of token 4-grams that already occurred earlier in the same answer.",
           f"- Time: " + ", ".join(f"{k} {v:.1f} s" for k, v in metrics["seconds"].items()) + ".",
           f"- Created {metrics['created']}; all answers in `samples.jsonl`.", ""]
    out += ["## Sample answers", ""]
    if not samples:
        out += ["(no answers generated: --num-samples 0)", ""]
    for n, s in enumerate(samples[:REPORT_SAMPLES], 1):
        q = s["question"] if not s.get("instruction") else f"{s['instruction']}\n{s['question']}".strip()
        out += [f"### {n}. {_first_line(s['question'] or s['instruction'])}", "",
                "**Question**", "", _quote(q), "",
                "**Reference**", "", _quote(s["reference"]), ""]
        for name in MODELS:
            tag = "ended with EOS" if s[f"{name}_stopped_at_eos"] else "hit max_new_tokens"
            out += [f"**{name.capitalize()}** (ROUGE-L {s[f'{name}_rouge_l']:.3f}, {s[f'{name}_tokens']} tokens, {tag})",
                    "", _quote(s[name]), ""]
    out += ["## Loss curves", ""]
    out += ([f"![training and validation loss]({curve})", ""] if curve else
            ["(no training log found in the run's metrics.json)", ""])
    out += ["## Run configuration", "", "| key | value |", "| --- | --- |"]
    out += [f"| {k} | {str(v).replace('|', '/')} |" for k, v in config_summary(cfg, run_dir)]
    out += ["", "---", "", f"*{NOTICE}*", ""]
    return "\n".join(out)


def _first_line(text: str, limit: int = 90) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[:limit].rstrip() + "…"


# ---------------------------------------------------------------- main entry

def run(run_dir: str | Path, data: str | None = None, split: str | None = None, num_samples: int | None = None,
        greedy: bool | None = None, log=print) -> dict:
    """Evaluate a training output dir: base vs tuned. Writes RUN_DIR/eval/{metrics.json,report.md,...},
    prints the table, and returns the metrics."""
    from medtune.model import load_for_inference
    from medtune.train import plot_losses

    t_start = time.perf_counter()
    run_dir = Path(run_dir).expanduser()
    cfg = load_run_config(run_dir)
    split = split or cfg.eval.split
    num_samples = cfg.eval.num_samples if num_samples is None else num_samples
    if num_samples < 0:
        raise MedtuneError(f"--num-samples must be 0 or more, got {num_samples}")
    if cfg.eval.batch_size < 1:
        raise MedtuneError(f"eval.batch_size must be >= 1, got {cfg.eval.batch_size}")
    records, source = load_eval_records(run_dir, cfg, data, split)

    model, tok, cfg = load_for_inference(run_dir)
    if not hasattr(model, "disable_adapter"):
        raise MedtuneError(f"{run_dir} did not load as base + adapter")
    data_cfg = dataclasses.replace(cfg.data, completion_only_loss=True)  # answer tokens only, whatever training did
    kept, encoded = [], []
    for r in records:
        e = encode(r, tok, data_cfg)
        if len(e["input_ids"]) <= data_cfg.max_length:
            kept.append(r)
            encoded.append(e)
    dropped = len(records) - len(kept)
    if not kept:
        raise MedtuneError(f"all {len(records)} records from {source} are longer than data.max_length="
                           f"{data_cfg.max_length} tokens; nothing to evaluate")
    log(f"eval: {len(kept)} records from {source}"
        + (f" ({dropped} longer than {data_cfg.max_length} tokens left out)" if dropped else ""))

    g = eval_generate_config(cfg, greedy)
    prompts = [format_prompt(r, data_cfg) for r in kept]
    limit = _max_positions(model)
    candidates = [i for i, p in enumerate(prompts)
                  if limit is None or len(tok(p, add_special_tokens=False)["input_ids"]) + g.max_new_tokens <= limit]
    chosen = random.Random(g.seed).sample(candidates, min(num_samples, len(candidates)))

    result: dict = {name: {} for name in MODELS}
    seconds: dict = {}
    rows: dict = {}
    refs = [kept[i]["output"].strip() for i in chosen]
    for name in MODELS:
        ctx = model.disable_adapter() if name == "base" else contextlib.nullcontext()
        with ctx:
            t0 = time.perf_counter()
            loss = answer_token_loss(model, encoded, tok.pad_token_id, batch_size=cfg.eval.batch_size)
            seconds[f"{name} loss"] = time.perf_counter() - t0
            log(f"eval: {name:5s} answer-token loss {loss['loss']:.4f}, perplexity {_num(loss['perplexity'], '.2f')} "
                f"({loss['answer_tokens']:,} tokens, {seconds[f'{name} loss']:.1f} s)")
            result[name].update(loss=loss["loss"], perplexity=loss["perplexity"])
            if chosen:
                t0 = time.perf_counter()
                rows[name] = generate_answers(model, tok, [prompts[i] for i in chosen], g, cfg.eval.batch_size)
                seconds[f"{name} generation"] = time.perf_counter() - t0
                result[name].update(generation_metrics(rows[name], refs))
                log(f"eval: {name:5s} generated {len(chosen)} answers, ROUGE-L {result[name]['rouge_l']:.4f} "
                    f"({seconds[f'{name} generation']:.1f} s)")
            else:
                result[name].update(rouge_l=None, eos_rate=None, mean_answer_tokens=None,
                                    repeated_4gram_share=None, generated=0)
    reference = {}
    if chosen:
        ref_ids = [tok(r, add_special_tokens=False)["input_ids"] for r in refs]
        reference = {"mean_answer_tokens": sum(map(len, ref_ids)) / len(ref_ids),
                     "repeated_4gram_share": repeated_4gram_share(ref_ids)}

    samples = []
    for j, i in enumerate(chosen):
        s = {"instruction": kept[i]["instruction"], "question": kept[i]["input"], "reference": kept[i]["output"]}
        for name in MODELS:
            r = rows[name][j]
            s.update({name: r["answer"], f"{name}_tokens": r["tokens"], f"{name}_stopped_at_eos": r["stopped_at_eos"],
                      f"{name}_rouge_l": r["rouge_l"]})
        samples.append(s)

    seconds["total"] = time.perf_counter() - t_start
    metrics = {
        **result,
        "reference": reference,
        "data": {"source": source, "split": None if data else split, "records": len(kept),
                 "dropped_overlong": dropped, "answer_tokens": loss["answer_tokens"]},
        "generation": {"generated": len(chosen), "greedy": g.greedy, "max_new_tokens": g.max_new_tokens,
                       "repetition_penalty": g.repetition_penalty, "seed": g.seed, "batch_size": cfg.eval.batch_size},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "run_dir": str(run_dir),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "notice": NOTICE,
    }

    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    history = _train_metrics(run_dir).get("log_history") or []
    curve = None
    if any("loss" in h or "eval_loss" in h for h in history):
        plot_losses(history, out / "loss_curve.png")
        curve = "loss_curve.png"
    atomic_write_jsonl(out / "samples.jsonl", [{**s, "notice": NOTICE} for s in samples])
    atomic_write_text(out / "report.md", render_report(metrics, samples, cfg, run_dir, curve))
    atomic_write_json(out / "metrics.json", metrics)
    log("")
    log(table(metrics))
    log(f"\nreport: {out / 'report.md'}\nmetrics: {out / 'metrics.json'}\n{NOTICE}")
    return metrics
