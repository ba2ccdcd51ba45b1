"""The evaluation report: the base-vs-tuned table (also used by the merged model's card) and report.md."""

from __future__ import annotations

import math
from pathlib import Path

from medtune.config import Config
from medtune.notice import NOTICE
from medtune.rundir import METRICS, read_json

MODELS = ("base", "tuned")
REPORT_SAMPLES = 5


def format_number(x, fmt: str) -> str:
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
    ("looping answers (>20% repeated 4-grams)", "looping_answers", ".0%"),
    ("gibberish answers", "gibberish_share", ".0%"),
)


def _cell(side: dict, key: str, fmt: str) -> str:
    """A value, with its 95% bootstrap interval when the metrics carry one (key_ci)."""
    text = format_number(side.get(key), fmt)
    ci = side.get(f"{key}_ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        text += f" [{format_number(ci[0], fmt)}, {format_number(ci[1], fmt)}]"
    return text


def table(metrics: dict) -> str:
    """The base-vs-tuned table as Markdown (also readable as plain text)."""
    head = ["metric", "base", "tuned", "reference answers"]
    body = []
    for label, key, fmt in ROWS:
        ref = metrics["reference"].get(key)
        body.append(
            [
                label,
                _cell(metrics["base"], key, fmt),
                _cell(metrics["tuned"], key, fmt),
                format_number(ref, fmt) if key in metrics["reference"] else "",
            ]
        )
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "| " + " | ".join("-" * w for w in widths) + " |"] + [line(r) for r in body])


def _forgetting(r: dict) -> bool | None:
    """The stored flag; computed for metrics written before evaluate stored it."""
    if "forgetting" in r:
        return r["forgetting"]
    from medtune.medbench.scoring import forgetting

    return forgetting(r["base"], r["tuned"])


def forgetting_warnings(benchmarks: dict) -> list[str]:
    """One line per benchmark on which the tuned model's accuracy fell below the base model's 95% interval."""
    lines = []
    for name, r in benchmarks.items():
        if _forgetting(r):
            low, high = r["base"]["acc_ci"]
            lines.append(
                f"warning: forgetting on {name}: tuned accuracy {r['tuned']['acc']:.3f} is below the base "
                f"model's 95% interval [{low:.3f}, {high:.3f}] (base {r['base']['acc']:.3f})"
            )
    return lines


def benchmark_table(benchmarks: dict) -> str:
    """Multiple-choice accuracy, base vs tuned, with the 95% interval, chance level and the forgetting flag (yes,
    no, n/a without intervals), then a warning line per benchmark flagged; '' when none were run."""
    if not benchmarks:
        return ""
    rows = [
        "| benchmark | questions | base accuracy | tuned accuracy | chance | forgetting |",
        "| --- | ---: | --- | --- | ---: | --- |",
    ]
    for name, r in benchmarks.items():
        flag = {True: "**yes**", False: "no", None: "n/a"}[_forgetting(r)]
        rows.append(
            f"| {name} | {r['tuned']['n']} | {_cell(r['base'], 'acc', '.3f')} | "
            f"{_cell(r['tuned'], 'acc', '.3f')} | {r['chance']:.3f} | {flag} |"
        )
    warnings = forgetting_warnings(benchmarks)
    return "\n".join(rows + ([""] + [f"**{w}**" for w in warnings] if warnings else []))


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
        ("model", m.name),
        ("tokenizer", m.tokenizer or m.name),
        ("quantization", m.quantization),
        ("LoRA", f"r={m.lora_r}, alpha={m.lora_alpha}, dropout={m.lora_dropout}, targets={m.lora_targets or 'auto'}"),
        ("training data", f"{d.source}" + (f" (first {d.max_records} records)" if d.max_records else "")),
        ("split", f"validation {d.val_fraction}, test {d.test_fraction}, seed {d.seed}; max_length {d.max_length}"),
        (
            "training",
            f"epochs {t.epochs}, max_steps {t.max_steps}, batch {t.batch_size} x {t.grad_accum} accumulation, "
            f"lr {t.learning_rate} ({t.lr_scheduler}), packing {t.packing}",
        ),
    ]
    final = _train_metrics(run_dir).get("final", {})
    bits = []
    for key, label, fmt in (
        ("train_loss", "train loss", ".4f"),
        ("eval_loss", "validation loss", ".4f"),
        ("train_seconds", "time (s)", ".1f"),
        ("tokens_per_second", "tokens/s", ".0f"),
        ("peak_gpu_memory_gib", "peak GPU memory (GiB)", ".2f"),
    ):
        if isinstance(final.get(key), (int, float)):
            bits.append(f"{label} {format(final[key], fmt)}")
    if bits:
        rows.append(("training result", ", ".join(bits)))
    return rows


def _train_metrics(run_dir: Path) -> dict:
    return read_json(run_dir / METRICS) or {}


def decoding(gen: dict) -> str:
    """How eval's answers were decoded, from metrics.json's "generation" (older files lack the newer keys)."""
    how = ["greedy decoding"] if gen.get("greedy") else ["sampling"]
    if not gen.get("greedy") and gen.get("temperature") is not None:
        how.append(f"temperature {gen['temperature']:g}, top-p {gen['top_p']:g}")
    if gen.get("repetition_penalty", 1.0) != 1.0:
        how.append(f"repetition penalty {gen['repetition_penalty']:g}")
    if gen.get("no_repeat_ngram"):
        how.append(f"no repeated {gen['no_repeat_ngram']}-gram")
    return how[0] + (f" ({', '.join(how[1:])})" if len(how) > 1 else "")


def render_report(metrics: dict, samples: list[dict], cfg: Config, run_dir: Path, curve: str | None) -> str:
    d, gen = metrics["data"], metrics["generation"]
    out = [
        f"# Evaluation: {run_dir.name}",
        "",
        f"> **{NOTICE}**",
        "",
        f"Base model vs tuned model (base + LoRA adapter) on {d['records']} held-out records from `{d['source']}`"
        + (
            f" ({d['dropped_overlong']} longer than data.max_length={cfg.data.max_length} tokens left out)"
            if d["dropped_overlong"]
            else ""
        )
        + ".",
        "",
        table(metrics),
        "",
        *(
            [
                benchmark_table(metrics["benchmarks"]),
                "",
                "Multiple-choice benchmarks: log-likelihood of each choice after the prompt "
                "(lm-evaluation-harness prompts); accuracy with its 95% bootstrap interval; "
                "forgetting: the tuned accuracy is below the lower end of the base model's "
                "interval.",
                "",
            ]
            if metrics.get("benchmarks")
            else []
        ),
        f"- Loss and perplexity: answer tokens only (prompt masked, EOS counted), {d['answer_tokens']:,} tokens; "
        "perplexity = exp(mean loss per answer token).",
        f"- Generation: {gen['generated']} questions drawn with seed {gen['seed']}, "
        f"{decoding(gen)}, at most {gen['max_new_tokens']} new tokens. "
        "ROUGE-L F1 (rouge-score, stemmed) against the reference answer; EOS rate = share of answers that ended "
        "with EOS before the limit; repeated 4-grams = share of token 4-grams that already occurred earlier "
        "in the same answer.",
        "- Time: " + ", ".join(f"{k} {v:.1f} s" for k, v in metrics["seconds"].items()) + ".",
        f"- Created {metrics['created']}; all answers in `samples.jsonl`.",
        "",
    ]
    out += ["## Sample answers", ""]
    if not samples:
        out += ["(no answers generated: --num-samples 0)", ""]
    for n, s in enumerate(samples[:REPORT_SAMPLES], 1):
        q = s["question"] if not s.get("instruction") else f"{s['instruction']}\n{s['question']}".strip()
        out += [
            f"### {n}. {_headline(s['question'] or s['instruction'])}",
            "",
            "**Question**",
            "",
            _quote(q),
            "",
            "**Reference**",
            "",
            _quote(s["reference"]),
            "",
        ]
        for name in MODELS:
            tag = "ended with EOS" if s[f"{name}_stopped_at_eos"] else "hit max_new_tokens"
            out += [
                f"**{name.capitalize()}** (ROUGE-L {s[f'{name}_rouge_l']:.3f}, {s[f'{name}_tokens']} tokens, {tag})",
                "",
                _quote(s[name]),
                "",
            ]
    out += ["## Loss curves", ""]
    out += (
        [f"![training and validation loss]({curve})", ""]
        if curve
        else ["(no training log found in the run's metrics.json)", ""]
    )
    out += ["## Run configuration", "", "| key | value |", "| --- | --- |"]
    out += [f"| {k} | {str(v).replace('|', '/')} |" for k, v in config_summary(cfg, run_dir)]
    out += ["", "---", "", f"*{NOTICE}*", ""]
    return "\n".join(out)


def _headline(text: str, limit: int = 90) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[:limit].rstrip() + "…"
