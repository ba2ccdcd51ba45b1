"""The model card (README.md) of a merged model folder: what it is, how it was made, how it did, what it is not for.
The YAML front matter comes from huggingface_hub's ModelCardData (the hub's own schema)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from medtune import rundir
from medtune.errors import MedtuneError
from medtune.notice import NOTICE
from medtune.report import benchmark_table, decoding, table

INTENDED_USE = (
    "Research and education on fine-tuning small language models for medical question answering: "
    "studying the recipe, comparing runs, demonstrating a pipeline. Not for diagnosis, treatment, "
    "triage or any decision about a person's health."
)
LIMITS = (
    "- Small models trained on small data produce fluent text that is often wrong, incomplete or out of date, "
    "and can be confidently unsafe. Outputs have not been checked by clinicians.\n"
    "- The training data's biases and gaps (language, population, era, sources) carry over.\n"
    "- No safety tuning or refusal behaviour beyond what the base model had."
)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _front_matter(cfg) -> list[str]:
    from huggingface_hub import ModelCardData

    m = cfg.model
    hub_base = not m.name.startswith("random:") and not Path(m.name).expanduser().exists()
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["medtune", "lora", "merged", "medical"],
        base_model=m.name if hub_base else None,
    )
    return ["---", data.to_yaml().strip(), "---"]


def _base_and_data(cfg, manifest: dict) -> list[str]:
    m, d = cfg.model, cfg.data
    lines = ["## Base model", ""]
    if m.name.startswith("random:"):
        lines.append(
            f"- `{m.name}`: a GPT-2 architecture with **random weights** built by medtune "
            "(a test/demo model; it has learned nothing beyond its short fine-tuning)."
        )
    else:
        lines.append(f"- `{m.name}`")
    lines += [f"- tokenizer: `{m.tokenizer or m.name}`", "", "## Data", "", f"- source: `{d.source}`"]
    info = manifest.get("data") or {}
    if info.get("sha256"):
        lines.append(f"- sha256: `{info['sha256']}`")
    if info.get("splits"):
        lines.append(
            "- records: "
            + ", ".join(f"{k} {v}" for k, v in info["splits"].items())
            + f" (duplicates removed: {info.get('duplicates_removed', 0)}, "
            f"over-long dropped: {info.get('overlong_dropped', 0)})"
        )
    if info.get("phi_redacted"):
        lines.append(
            "- protected health information replaced before training: "
            + ", ".join(f"{k} {v}" for k, v in info["phi_redacted"].items())
        )
    lines.append(
        f"- max length: {d.max_length} tokens per example; loss on "
        + ("the answer only" if d.completion_only_loss else "prompt and answer")
    )
    return lines


def _recipe(cfg, manifest: dict, merge_diff: float | None) -> list[str]:
    m, t = cfg.model, cfg.train
    lines = [
        "## Recipe",
        "",
        f"- LoRA r={m.lora_r}, alpha={_fmt(m.lora_alpha)}, dropout={m.lora_dropout}, "
        f"targets={m.lora_targets or 'per architecture'}",
        f"- quantization during training: {m.quantization}",
    ]
    if m.quantization != "none":
        lines.append(
            f"- **merge:** the base was reloaded unquantized (full precision) and the adapter merged into it "
            f"(the standard PEFT path; adapters cannot be merged into {m.quantization} weights). The adapter "
            f"was trained against the quantized base, so outputs are close to, not identical with, the "
            f"quantized model used in training and evaluation."
        )
    steps = f"max_steps={t.max_steps}" if t.max_steps > 0 else f"epochs={t.epochs}"
    lines.append(
        f"- training: {steps}, batch {t.batch_size} x grad_accum {t.grad_accum}, "
        f"learning rate {t.learning_rate} ({t.lr_scheduler}), seed {t.seed}"
    )
    packages = manifest.get("packages") or {}
    if packages:
        lines.append("- software: " + ", ".join(f"{k} {v}" for k, v in packages.items() if v))
    if manifest.get("device"):
        lines.append(f"- trained on: {manifest['device']}")
    if merge_diff is not None:
        lines.append(
            f"- merge check: max |logit difference| between merged model and base + adapter = {merge_diff:.2e}"
        )
    lines.append(f"- merged: {time.strftime('%Y-%m-%d', time.gmtime())}")
    return lines


def _metrics(run_dir: Path, quantization: str) -> list[str]:
    final = (rundir.read_json(run_dir / rundir.METRICS) or {}).get("final") or {}
    shown = [
        (k, final[k])
        for k in (
            "train_loss",
            "eval_loss",
            "eval_perplexity",
            "train_tokens",
            "tokens_per_second",
            "train_seconds",
            "peak_gpu_memory_gib",
        )
        if k in final
    ]
    lines = ["## Metrics", ""]
    lines += (
        (["| metric | value |", "| --- | --- |"] + [f"| {k} | {_fmt(v)} |" for k, v in shown])
        if shown
        else ["No metrics were recorded for this run."]
    )
    ev = rundir.read_json(run_dir / rundir.EVAL / rundir.METRICS)
    if ev and isinstance(ev.get("base"), dict) and isinstance(ev.get("tuned"), dict) and "reference" in ev:
        data, gen = ev.get("data") or {}, ev.get("generation") or {}
        where = (
            f"{data.get('source', '?')}"
            + (f", split {data['split']}" if data.get("split") else "")
            + (f", {data['records']} records" if data.get("records") else "")
        )
        lines += [
            "",
            f"Evaluation (`medtune eval`, {where}; generation: {decoding(gen)}"
            + (f", {quantization} base" if quantization != "none" else "")
            + "):",
            "",
            table(ev),
        ]
        if ev.get("benchmarks"):
            lines += [
                "",
                "Medical multiple-choice benchmarks (log-likelihood accuracy):",
                "",
                benchmark_table(ev["benchmarks"]),
            ]
    return lines


def _prompt_shape(data_cfg) -> str | None:
    """The run's prompt with `{question}` where the question goes (plain or chat format), or None."""
    from medtune.generate import prompt_for

    mark = "MEDTUNEQUESTIONMARK"
    try:
        text = prompt_for(mark, data_cfg)
    except (MedtuneError, KeyError, IndexError, ValueError):
        return None
    return text.replace(mark, "{question}") if text.count(mark) == 1 else None


def _usage(cfg, out_name: str) -> list[str]:
    template = _prompt_shape(cfg.data)
    lines = ["## Prompt format", ""]
    if template is not None:
        lines += [
            "The model was trained on prompts of this form, the question in place of `{question}` "
            "(medtune applies it for you; with plain `transformers` you must apply it yourself):",
            "",
            "```text",
            template.rstrip("\n"),
            "```",
        ]
    else:
        lines.append(f"`data.prompt_format={cfg.data.prompt_format}`: see config.yaml.")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        f'pipe = pipeline("text-generation", model="{out_name}")  # this folder',
    ]
    if template is not None:
        lines.append("prompt = " + json.dumps(template) + '.replace("{question}", "What is asthma?")')
        lines.append('print(pipe(prompt, return_full_text=False)[0]["generated_text"])')
    lines += [
        "```",
        "",
        'or `medtune generate DIR "What is asthma?"`, or `medtune serve DIR` (HTTP API and a web page).',
    ]
    return lines


def model_card(run_dir: Path, cfg, merge_diff: float | None = None, out_name: str = "MERGED_DIR") -> str:
    """README.md for the merged folder."""
    manifest = rundir.read_json(run_dir / rundir.MANIFEST) or {}
    m = cfg.model
    intro = [
        "",
        f"# {run_dir.name} (merged)",
        "",
        f"> **{NOTICE}**",
        "",
        "A causal language model fine-tuned with medtune (LoRA"
        + (" / QLoRA" if m.quantization != "none" else "")
        + "), with the adapter merged into the base weights. This folder is standalone: it needs neither PEFT "
        "nor the base model.",
        "",
    ]
    sections = [
        _base_and_data(cfg, manifest),
        _recipe(cfg, manifest, merge_diff),
        _metrics(run_dir, m.quantization),
        _usage(cfg, out_name),
        ["## Intended use", "", INTENDED_USE],
        ["## Limits", "", LIMITS, f"- Context is limited to {cfg.data.max_length} tokens in training."],
        ["## Notice", "", NOTICE],
    ]
    lines = _front_matter(cfg) + intro
    for section in sections:
        lines += section + [""]
    return "\n".join(lines)
