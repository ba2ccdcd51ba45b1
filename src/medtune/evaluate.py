"""Evaluation: the base model vs the tuned model (base + adapter) on held-out records.

`run(run_dir)` writes, under RUN_DIR/eval/ (every file atomically):
  metrics.json     base / tuned / reference numbers, what was evaluated and how, timings
  report.md        the base-vs-tuned table, 5 sample answers, the loss curves, the config summary, the notice
  loss_curve.png   training and validation loss (from the run's metrics.json)
  samples.jsonl    every generated answer with its reference and ROUGE-L

Loss and perplexity count answer tokens only (the prompt is masked; the EOS that ends each answer counts), with the
chunked loss that training uses: only a chunk of logits exists at a time. The base model is evaluated first, as
loaded (no LoRA layers in its forward), then the run's adapter is added to it (merged into the weights unless the
base is quantized) for the tuned numbers. Answers come from the one decoding path (medtune.generate.complete).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from medtune import evalcache, notice, rundir
from medtune.batching import NUM_TOKENS, Collator
from medtune.config import Config, DataConfig, GenerateConfig
from medtune.data import (
    IGNORE_INDEX,
    encode_prompt,
    encode_within_length,
    eval_fields,
    load_records,
    reference_answer,
    validate_records,
)
from medtune.errors import MedtuneError
from medtune.evalstats import bootstrap_ci, gibberish_share
from medtune.files import atomic_write_json, atomic_write_jsonl, atomic_write_text
from medtune.generate import Completion, complete, make_engine
from medtune.loss import linear_cross_entropy, plot_losses
from medtune.model import add_adapter, context_length, decoder_and_head, decoder_output, load_model
from medtune.report import MODELS, forgetting_warnings, format_number, render_report, table
from medtune.validate import validate_eval_flags

DEFAULT_MAX_NEW_TOKENS = 512

log = logging.getLogger("medtune.evaluate")


# ---------------------------------------------------------------- inputs


def load_eval_records(run: rundir.RunFolder, data: str | None, split: str) -> tuple[list[dict], str]:
    """Records to evaluate on: `data` (a file or hub id with the run's column names) or a split saved by training."""
    if data:
        data_cfg, source = dataclasses.replace(run.config.data, source=str(data)), str(data)
    else:
        if split not in rundir.SPLIT_NAMES:
            raise MedtuneError(
                f"--split must be one of {', '.join(rundir.SPLIT_NAMES)} (the splits training saves), got {split!r}"
            )
        path = run.split_file(split)
        if not path.is_file():
            raise MedtuneError(
                f"{path} not found: this run saved no {split} split; "
                "pass --data FILE (or a hub dataset id) to evaluate on"
            )
        data_cfg, source = DataConfig(source=str(path)), str(path)  # saved splits hold instruction / input / output
        if not _split_records(path):
            raise MedtuneError(_empty_split_message(run, split))
    records, _ = validate_records(load_records(data_cfg), source)
    return records, source


def _split_records(path: Path) -> int:
    """How many records a split saved by training holds (0: none, or no such file)."""
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()) if path.is_file() else 0


def _empty_split_message(run: rundir.RunFolder, split: str) -> str:
    """An empty saved split: what training set aside, and the other split only where it has records."""
    frac = "test_fraction" if split == "test" else "val_fraction"
    other = "validation" if split == "test" else "test"
    n_other = _split_records(run.split_file(other))
    held = getattr(run.config.data, frac)
    why = "" if held == 0 else ", but too few distinct questions, or all longer than data.max_length"
    return (
        f"the {split} split of this run is empty (data.{frac}={held}{why}); pass --data FILE to evaluate on other "
        "records" + (f", or --split {other} ({n_other} records)" if n_other else f"; the {other} split is empty too")
    )


# ---------------------------------------------------------------- loss and perplexity

LOSS_BATCH_TOKENS = 32_768  # padded tokens per loss batch (records sorted by length, so little of it is padding)


def length_batches(lengths: list[int], max_tokens: int, max_rows: int | None = None) -> list[list[int]]:
    """Indices sorted by length, cut into batches of at most max_tokens padded tokens (and max_rows rows)."""
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if cur and ((len(cur) + 1) * lengths[i] > max_tokens or (max_rows and len(cur) >= max_rows)):
            batches.append(cur)
            cur = []
        cur.append(i)
    return batches + [cur] if cur else batches


@torch.no_grad()
def answer_token_loss(
    model,
    encoded: list[dict],
    pad_token_id: int,
    max_tokens: int = LOSS_BATCH_TOKENS,
    chunk_tokens: int = 1024,
    use_chunks: bool = True,
) -> dict:
    """Sum of cross-entropy over answer tokens (labels != -100, EOS included) and their count, streamed batch by
    batch (batched by length). Returns loss (mean per answer token), perplexity = exp(loss), tokens, records."""
    parts = decoder_and_head(model) if use_chunks else None
    collate = Collator(pad_token_id)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for chunk in length_batches([len(e["input_ids"]) for e in encoded], max_tokens):
        batch = collate([encoded[i] for i in chunk])
        batch.pop(NUM_TOKENS)
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
        if parts is not None:
            decoder, weight = parts
            hidden = decoder_output(model, decoder, **batch)
            loss_sum, n = linear_cross_entropy(hidden, weight, labels, chunk=chunk_tokens)
        else:
            logits = model(**batch, use_cache=False).logits[:, :-1]
            keep = labels[:, 1:] != IGNORE_INDEX
            loss_sum = F.cross_entropy(logits[keep].float(), labels[:, 1:][keep], reduction="sum")
            n = keep.sum()
        total += float(loss_sum)
        count += int(n)
    if count == 0:
        raise MedtuneError("no answer tokens to evaluate")
    loss = total / count
    ppl = math.exp(loss) if loss < 700 else float("inf")
    return {"loss": loss, "perplexity": ppl, "answer_tokens": count, "records": len(encoded)}


# ---------------------------------------------------------------- generation metrics


def repeated_ngrams(sequences: list[list], n: int = 4) -> tuple[int, int]:
    """(repeated, total) n-grams over all sequences; an n-gram is repeated when it already occurred earlier
    in the same sequence."""
    repeated = total = 0
    for seq in sequences:
        grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
        total += len(grams)
        repeated += len(grams) - len(set(grams))
    return repeated, total


def repeated_4gram_share(sequences: list[list]) -> float | None:
    """Share of token 4-grams that repeat an earlier 4-gram of the same answer (None: no answer has 4 tokens).
    Counted on token ids, so degenerate output without spaces (".........") counts too."""
    repeated, total = repeated_ngrams(sequences, 4)
    return repeated / total if total else None


LOOPING = 0.2  # an answer more than this share of whose 4-grams repeat earlier ones is counted as looping


def looping_share(sequences: list[list]) -> float | None:
    """Share of answers with more than 20% repeated 4-grams (answers of 4+ tokens): how many answers a user would
    see loop, where repeated_4gram_share weighs long answers more."""
    shares = [r / t for r, t in (repeated_ngrams([s], 4) for s in sequences) if t]
    return sum(s > LOOPING for s in shares) / len(sequences) if sequences else None


def rouge_l(predictions: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F1 per pair (rouge-score, Porter stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]


def eval_generate_config(cfg: Config, greedy: bool | None = None, max_new_tokens: int | None = None) -> GenerateConfig:
    """What eval decodes with: by default the run's generate settings as they are (what `medtune generate` and
    `serve` give users: greedy where the run's generate.greedy is), seeded; greedy=True: greedy decoding without
    repetition penalty; greedy=False (`--sample`): the run's sampling settings even where it decodes greedily."""
    n = max_new_tokens or cfg.eval.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    if greedy or (greedy is None and cfg.eval.greedy):
        return GenerateConfig(max_new_tokens=n, greedy=True, repetition_penalty=1.0, seed=cfg.generate.seed)
    return dataclasses.replace(cfg.generate, max_new_tokens=n, greedy=cfg.generate.greedy and greedy is None)


def resolve_max_new_tokens(cfg: Config, ref_lengths: list[int], prompt_lengths: list[int], context: int | None) -> int:
    """eval.max_new_tokens, or (unset) enough for an answer to stop by itself: 512, or the 95th percentile of the
    reference answers' lengths when that is more; either way within the model's context for a median prompt."""
    if cfg.eval.max_new_tokens:
        return cfg.eval.max_new_tokens
    refs = sorted(ref_lengths)
    p95 = refs[min(len(refs) - 1, int(0.95 * len(refs)))] if refs else 0
    n = max(DEFAULT_MAX_NEW_TOKENS, p95)
    if context is not None and prompt_lengths:
        n = min(n, context - sorted(prompt_lengths)[len(prompt_lengths) // 2])
    return max(n, 1)


def generation_metrics(
    completions: list, references: list[str], bootstrap: int = 0, seed: int = 0
) -> tuple[dict, list[float]]:
    """Aggregate metrics of generated answers against references (with 95% bootstrap intervals for ROUGE-L and the
    EOS rate when bootstrap > 0), and the ROUGE-L of each answer."""
    scores = rouge_l([c.text for c in completions], references)
    stopped = [float(c.stopped_at_eos) for c in completions]
    n = len(completions)
    out = {
        "rouge_l": sum(scores) / n,
        "eos_rate": sum(stopped) / n,
        "mean_answer_tokens": sum(len(c.token_ids) for c in completions) / n,
        "repeated_4gram_share": repeated_4gram_share([c.token_ids for c in completions]),
        "looping_answers": looping_share([c.token_ids for c in completions]),
        "loop_guard_stops": sum(c.stop_reason == "loop" for c in completions) / n,
        "gibberish_share": gibberish_share([c.text for c in completions]),
        "generated": n,
    }
    if bootstrap:
        out["rouge_l_ci"] = list(bootstrap_ci(scores, bootstrap, seed))
        out["eos_rate_ci"] = list(bootstrap_ci(stopped, bootstrap, seed))
    return out, scores


# ---------------------------------------------------------------- main entry


@dataclasses.dataclass
class EvalInputs:
    kept: list[dict]
    encoded: list[dict]
    prompts: list[list[int]]  # prompt ids of the questions chosen for generation
    chosen: list[int]
    refs: list[str]
    dropped: int
    source: str


def prepare_inputs(
    run: rundir.RunFolder, model, tok, data, split, num_samples: int, greedy
) -> tuple[EvalInputs, GenerateConfig]:
    records, source = load_eval_records(run, data, split)
    # answer tokens only, whatever training did
    data_cfg = dataclasses.replace(run.config.data, completion_only_loss=True)
    kept, encoded, _ = encode_within_length(records, tok, data_cfg)
    if not kept:
        raise MedtuneError(
            f"all {len(records)} records from {source} are longer than data.max_length="
            f"{data_cfg.max_length} tokens; nothing to evaluate"
        )
    limit = context_length(model)
    ids = [encode_prompt(r, tok, data_cfg) for r in kept]
    ref_lengths = [len(e["input_ids"]) - len(p) - 1 for e, p in zip(encoded, ids)]
    g = eval_generate_config(
        run.config, greedy, resolve_max_new_tokens(run.config, ref_lengths, list(map(len, ids)), limit)
    )
    candidates = [i for i, p in enumerate(ids) if limit is None or len(p) + g.max_new_tokens <= limit]
    chosen = random.Random(g.seed).sample(candidates, min(num_samples, len(candidates)))
    return EvalInputs(
        kept,
        encoded,
        [ids[i] for i in chosen],
        chosen,
        [reference_answer(kept[i]) for i in chosen],
        len(records) - len(kept),
        source,
    ), g


def _evaluate_pass(
    name: str, model, tok, inp: EvalInputs, g: GenerateConfig, batch_size: int, bootstrap: int = 0
) -> tuple[dict, dict, list]:
    """Loss and (when questions were chosen) generated answers of one model: (metrics, seconds, answers)."""
    result: dict = {}
    seconds: dict = {}
    t0 = time.perf_counter()
    loss = answer_token_loss(model, inp.encoded, tok.pad_token_id)
    seconds[f"{name} loss"] = time.perf_counter() - t0
    perplexity = format_number(loss["perplexity"], ".2f")
    log.info(
        f"eval: {name:5s} answer-token loss {loss['loss']:.4f}, perplexity {perplexity} "
        f"({loss['answer_tokens']:,} tokens, {seconds[f'{name} loss']:.1f} s)"
    )
    result.update(loss=loss["loss"], perplexity=loss["perplexity"], answer_tokens=loss["answer_tokens"])
    if not inp.chosen:
        result.update(
            rouge_l=None,
            eos_rate=None,
            mean_answer_tokens=None,
            repeated_4gram_share=None,
            looping_answers=None,
            loop_guard_stops=None,
            gibberish_share=None,
            generated=0,
        )
        return result, seconds, []
    t0 = time.perf_counter()
    engine = make_engine(model, tok, min(batch_size, len(inp.prompts)), max(map(len, inp.prompts)) + g.max_new_tokens)
    answers = complete(model, tok, inp.prompts, g, engine=engine)
    del engine
    seconds[f"{name} generation"] = time.perf_counter() - t0
    agg, scores = generation_metrics(answers, inp.refs, bootstrap, g.seed)
    result.update(agg, rouge_l_each=scores)
    log.info(
        f"eval: {name:5s} generated {len(inp.chosen)} answers, ROUGE-L {agg['rouge_l']:.4f}, looping "
        f"{agg['looping_answers']:.0%} ({seconds[f'{name} generation']:.1f} s)"
    )
    return result, seconds, answers


def _base_pass(
    model, tok, inp: EvalInputs, g: GenerateConfig, cfg: Config, identity: dict | None, reuse: bool
) -> tuple:
    """_evaluate_pass of the base model, or its result kept by an earlier eval of the same base (medtune.evalcache;
    reuse=False scores it and replaces what was kept)."""
    if identity is None:
        return _evaluate_pass("base", model, tok, inp, g, cfg.eval.batch_size, cfg.eval.bootstrap)
    payload = {
        "records": [[e["input_ids"], e["labels"]] for e in inp.encoded],
        "prompts": inp.prompts,
        "references": inp.refs,
        "generate": dataclasses.asdict(g),
        "eval": [cfg.eval.batch_size, cfg.eval.bootstrap],
    }

    def score() -> dict:
        result, took, answers = _evaluate_pass("base", model, tok, inp, g, cfg.eval.batch_size, cfg.eval.bootstrap)
        return {"result": result, "seconds": took, "answers": [dataclasses.asdict(c) for c in answers]}

    k = evalcache.key(identity, "pass", payload)
    value, kept = evalcache.kept_or_scored(k, score, ("result", "seconds", "answers"), reuse)
    if kept:
        log.info("eval: base loss and answers kept from an earlier eval of the same base and inputs (eval.reuse_base)")
    seconds = {"base (kept)": 0.0} if kept else value["seconds"]
    return value["result"], seconds, [Completion(**c) for c in value["answers"]]


def _samples(inp: EvalInputs, answers: dict, result: dict) -> list[dict]:
    samples = []
    for j, i in enumerate(inp.chosen):
        r = inp.kept[i]
        s: dict[str, object] = dict(eval_fields(r))
        for name in MODELS:
            c = answers[name][j]
            s.update(
                {
                    name: c.text,
                    f"{name}_tokens": len(c.token_ids),
                    f"{name}_stopped_at_eos": c.stopped_at_eos,
                    f"{name}_stop_reason": c.stop_reason,
                    f"{name}_rouge_l": result[name]["rouge_l_each"][j],
                }
            )
        samples.append(s)
    return samples


def _write_outputs(run: rundir.RunFolder, metrics: dict, samples: list[dict]) -> None:
    out = run.eval_dir
    out.mkdir(parents=True, exist_ok=True)
    history = (run.read_json(rundir.METRICS) or {}).get("log_history") or []
    curve = None
    if any("loss" in h or "eval_loss" in h for h in history):
        plot_losses(history, out / rundir.LOSS_CURVE)
        curve = rundir.LOSS_CURVE
    atomic_write_jsonl(out / rundir.SAMPLES, [{**s, "notice": notice.NOTICE} for s in samples])
    atomic_write_text(out / rundir.REPORT, render_report(metrics, samples, run.config, run.path, curve))
    atomic_write_json(out / rundir.METRICS, metrics)
    log.info("")
    log.info(table(metrics))
    for line in forgetting_warnings(metrics.get("benchmarks") or {}):
        log.warning(f"eval: {line}")
    log.info(f"\nreport: {out / rundir.REPORT}\nmetrics: {out / rundir.METRICS}\n{notice.NOTICE}")


def run_benchmarks(
    model, tok, tasks: list, cfg: Config, side: str, identity: dict | None = None, reuse: bool = True
) -> dict:
    """Multiple-choice benchmarks (medtune.medbench) of one model: {name: scores}. With the base's `identity`
    (medtune.evalcache), a benchmark scored by an earlier eval of the same base is taken from there (reuse=False:
    scored again, replacing it)."""
    from medtune import medbench

    out = {}
    for name, _source, items in tasks:

        def score(items=items) -> dict:
            t0 = time.perf_counter()
            scored = medbench.score(model, tok, items, cfg.eval.batch_size, cfg.eval.bootstrap, cfg.generate.seed)
            result = {k: v for k, v in scored.items() if k != "per_item"}  # per question: too long to keep
            return {**result, "seconds": round(time.perf_counter() - t0, 2)}

        if identity is None:
            out[name] = score()
        else:
            payload = {
                "items": [dataclasses.asdict(it) for it in items],
                "eval": [cfg.eval.batch_size, cfg.eval.bootstrap, cfg.generate.seed],
            }
            k = evalcache.key(identity, f"benchmark {name}", payload)
            out[name], kept = evalcache.kept_or_scored(k, score, ("acc", "n"), reuse)
            if kept:
                out[name] = {**out[name], "seconds": 0.0, "kept": True}
        how = "kept from an earlier eval of the same base" if out[name].get("kept") else f"{out[name]['seconds']:.1f} s"
        log.info(f"eval: {name}: {side} accuracy {out[name]['acc']:.3f} ({len(items)} questions, {how})")
    return out


def _benchmark_results(tasks: list, scores: dict) -> dict:
    """Per benchmark: source, chance, base and tuned scores, and `forgetting` (medbench.forgetting: the tuned accuracy
    below the lower end of the base model's 95% interval; None without intervals)."""
    from medtune import medbench

    out = {}
    for name, source, _items in tasks:
        base, tuned = scores["base"][name], scores["tuned"][name]
        out[name] = {
            "source": source or medbench.TASKS[name].hub,
            "chance": 1 / medbench.TASKS[name].n_choices,
            "base": base,
            "tuned": tuned,
            "forgetting": medbench.forgetting(base, tuned),
            "seconds": base["seconds"] + tuned["seconds"],
        }
    return out


def run(
    run_dir: str | Path,
    data: str | None = None,
    split: str | None = None,
    num_samples: int | None = None,
    greedy: bool | None = None,
    benchmarks: str | None = None,
    reuse_base: bool | None = None,
) -> dict:
    """Evaluate a training output dir: base vs tuned. Writes RUN_DIR/eval/{metrics.json,report.md,...},
    prints the table, and returns the metrics. reuse_base (default eval.reuse_base): take the base's scores from an
    earlier eval of the same base where one kept them (medtune.evalcache); False scores the base and replaces them."""
    t_start = time.perf_counter()
    run = rundir.open_run(run_dir, want="run")
    cfg = run.config
    split = split or cfg.eval.split
    num_samples = cfg.eval.num_samples if num_samples is None else num_samples
    validate_eval_flags(num_samples)
    load_eval_records(run, data, split)  # bad --data / --split fail before the model loads
    tasks = _benchmark_tasks(benchmarks, cfg)
    model, tok = load_model(run, adapter=False)
    seconds = {"load": time.perf_counter() - t_start}
    inp, g = prepare_inputs(run, model, tok, data, split, num_samples, greedy)
    log.info(
        f"eval: {len(inp.kept)} records from {inp.source}"
        + (f" ({inp.dropped} longer than {cfg.data.max_length} tokens left out)" if inp.dropped else "")
    )
    result, answers, bench = {}, {}, {}
    reuse = cfg.eval.reuse_base if reuse_base is None else reuse_base
    identity = evalcache.base_identity(run, model, tok)
    for name in MODELS:
        if name == "tuned":
            t0 = time.perf_counter()
            model = add_adapter(run, model, merge=True)
            seconds["adapter"] = time.perf_counter() - t0
            result[name], took, answers[name] = _evaluate_pass(
                name, model, tok, inp, g, cfg.eval.batch_size, cfg.eval.bootstrap
            )
        else:
            result[name], took, answers[name] = _base_pass(model, tok, inp, g, cfg, identity, reuse)
        seconds.update(took)
        if tasks:
            t0 = time.perf_counter()
            bench[name] = run_benchmarks(model, tok, tasks, cfg, name, identity if name == "base" else None, reuse)
            seconds[f"{name} benchmarks"] = time.perf_counter() - t0
    reference = {}
    if inp.chosen:
        ref_ids = [tok(r, add_special_tokens=False)["input_ids"] for r in inp.refs]
        reference = {
            "mean_answer_tokens": sum(map(len, ref_ids)) / len(ref_ids),
            "repeated_4gram_share": repeated_4gram_share(ref_ids),
            "looping_answers": looping_share(ref_ids),
            "gibberish_share": gibberish_share(inp.refs),
        }
    seconds["total"] = time.perf_counter() - t_start
    samples = _samples(inp, answers, result)
    for name in MODELS:
        result[name].pop("rouge_l_each", None)
    metrics = {
        "base": {k: v for k, v in result["base"].items() if k != "answer_tokens"},
        "tuned": {k: v for k, v in result["tuned"].items() if k != "answer_tokens"},
        "reference": reference,
        "data": {
            "source": inp.source,
            "split": None if data else split,
            "records": len(inp.kept),
            "dropped_overlong": inp.dropped,
            "answer_tokens": result["tuned"]["answer_tokens"],
        },
        # every decoding setting, by construction: a new GenerateConfig field is recorded without a change here
        "generation": {"generated": len(inp.chosen), **dataclasses.asdict(g), "batch_size": cfg.eval.batch_size},
        "benchmarks": _benchmark_results(tasks, bench) if tasks else {},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "run_dir": str(run.path),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "notice": notice.NOTICE,
    }
    _write_outputs(run, metrics, samples)
    return metrics


def _benchmark_tasks(spec: str | None, cfg: Config) -> list:
    """(name, source, items) of each --benchmark; every file or hub id is read before the model loads."""
    if not spec:
        return []
    from medtune import medbench

    return [
        (name, source, medbench.load_task(name, source, cfg.eval.benchmark_limit, cfg.generate.seed))
        for name, source in medbench.parse_benchmarks(spec)
    ]
