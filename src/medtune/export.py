"""Merge: fold a run's LoRA adapter into its base model and save a standalone model folder.

The merged folder loads with `transformers.pipeline("text-generation", model=DIR)` and with medtune itself
(`medtune generate DIR ...`, `medtune serve DIR`). It holds:
  model.safetensors (+ config.json, generation_config.json)   the merged weights
  tokenizer files
  config.yaml                                                  the run's medtune config (prompt template, generation defaults)
  manifest.json, metrics.json, eval_metrics.json               copied from the run when present
  README.md                                                    the model card

A 4bit (QLoRA) run is merged on the base reloaded *unquantized* (the usual PEFT path: an adapter can't be
folded into 4-bit weights). The adapter was trained against the NF4-rounded weights, so the merged model is
close to, not bit-identical with, what the run evaluated; the card says so.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from medtune.errors import MedtuneError
from medtune.files import NOTICE, atomic_write_text, publish_dir, staging_dir

CHECK_QUESTION = "What is asthma?"


def _load_run_config(run_dir: Path):
    import yaml

    from medtune.config import Config, from_dict

    f = run_dir / "config.yaml"
    if not f.exists():
        return Config()
    try:
        return from_dict(yaml.safe_load(f.read_text(encoding="utf-8")) or {})
    except yaml.YAMLError as e:
        raise MedtuneError(f"{f} is not valid YAML: {str(e).splitlines()[0]}") from None


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _check_paths(run_dir: Path, out: Path) -> None:
    if not run_dir.is_dir():
        raise MedtuneError(f"not a folder: {run_dir}")
    if not (run_dir / "adapter_config.json").exists():
        if (run_dir / "config.json").exists():
            raise MedtuneError(f"{run_dir} is already a full model (config.json, no adapter): nothing to merge")
        raise MedtuneError(f"{run_dir} holds no LoRA adapter (adapter_config.json); pass a `medtune train` output dir")
    if out.exists() and not out.is_dir():
        raise MedtuneError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise MedtuneError(f"--out {out} is not empty; choose a new folder (nothing was overwritten)")
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise MedtuneError("--out must not be the run folder or inside it")


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids.to(next(model.parameters()).device)).logits.float().cpu()


def merge(run_dir: str | Path, out: str | Path, log=print) -> Path:
    """Merge the adapter of `run_dir` into its base model; write the standalone model to `out` (new or empty)."""
    from peft import PeftModel

    from medtune.model import is_random, load_base_model, load_tokenizer

    run_dir, out = Path(run_dir).expanduser(), Path(out).expanduser()
    _check_paths(run_dir, out)
    cfg = _load_run_config(run_dir)
    tok = load_tokenizer(str(run_dir))
    base_dir = run_dir / "base_model"
    local_base = str(base_dir) if base_dir.is_dir() else None
    if is_random(cfg.model) and local_base is None:
        raise MedtuneError(f"{run_dir} was trained on a random base ({cfg.model.name}) but has no base_model/ folder")
    quantized = cfg.model.quantization != "none"
    log(f"merge: loading base {local_base or cfg.model.name}" + (" unquantized (the run used "
                                                                  f"{cfg.model.quantization})" if quantized else ""))
    base = load_base_model(cfg.model, tok, local_path=local_base, quantize=False)
    model = PeftModel.from_pretrained(base, str(run_dir))
    model.eval()

    from medtune.generate import prompt_for

    ids = tok(prompt_for(CHECK_QUESTION, cfg.data), return_tensors="pt", add_special_tokens=False)["input_ids"][:, :64]
    before = _logits(model, ids)
    merged = model.merge_and_unload()
    merged.eval()
    diff = float((_logits(merged, ids) - before).abs().max())
    rel = 1e-3 if next(merged.parameters()).dtype == torch.float32 else 5e-2
    if not diff <= rel * max(1.0, float(before.abs().max())):
        raise MedtuneError(f"merge check failed: merged logits differ from base + adapter by {diff:.3g}")
    log(f"merge: adapter folded in (max |logit difference| vs base + adapter: {diff:.2e})")

    _set_generation_defaults(merged, cfg, tok)
    stage = staging_dir(out)
    try:
        merged.save_pretrained(stage)
        tok.save_pretrained(stage)
        for src, name in (("config.yaml", "config.yaml"), ("manifest.json", "manifest.json"),
                          ("metrics.json", "metrics.json"), ("eval/metrics.json", "eval_metrics.json")):
            if (run_dir / src).is_file():
                shutil.copyfile(run_dir / src, stage / name)
        if not (stage / "config.yaml").exists():
            from medtune.config import dump_yaml
            atomic_write_text(stage / "config.yaml", dump_yaml(cfg))
        atomic_write_text(stage / "README.md", model_card(run_dir, cfg, diff, out_name=out.name))
        _readable(stage)
        publish_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log(f"merged model written to {out}\n{NOTICE}")
    return out


def _readable(folder: Path) -> None:
    """Temporary-file writers create 0600 files; a model folder is meant to be shared: use the umask."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    for f in folder.rglob("*"):
        if f.is_file():
            f.chmod(0o666 & ~mask)


def _set_generation_defaults(model, cfg, tok) -> None:
    """So that pipeline() and model.generate() on the merged folder sample like `medtune generate`."""
    g = cfg.generate
    gc = model.generation_config
    gc.eos_token_id = tok.eos_token_id
    gc.pad_token_id = tok.pad_token_id
    gc.max_new_tokens = g.max_new_tokens
    gc.repetition_penalty = g.repetition_penalty
    if g.greedy or g.temperature <= 0:
        gc.do_sample = False
    else:
        gc.do_sample, gc.temperature, gc.top_p, gc.top_k = True, g.temperature, g.top_p, g.top_k


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


EVAL_ROWS = (("answer-token loss", "loss", ".4f"), ("perplexity", "perplexity", ".2f"),
             ("ROUGE-L F1", "rouge_l", ".4f"), ("EOS rate", "eos_rate", ".1%"),
             ("mean answer length (tokens)", "mean_answer_tokens", ".1f"),
             ("repeated 4-grams", "repeated_4gram_share", ".1%"))


def _eval_table(run_dir: Path, quantization: str) -> list[str]:
    """The base-vs-tuned table of `medtune eval` (RUN_DIR/eval/metrics.json), when the run was evaluated."""
    ev = _read_json(run_dir / "eval" / "metrics.json")
    if not ev or not isinstance(ev.get("base"), dict) or not isinstance(ev.get("tuned"), dict):
        return []

    def cell(section, key, fmt):
        v = (ev.get(section) or {}).get(key)
        return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else ""

    data = ev.get("data") or {}
    where = f"{data.get('source', '?')}" + (f", split {data['split']}" if data.get("split") else "") \
        + (f", {data['records']} records" if data.get("records") else "")
    out = ["", f"Evaluation (`medtune eval`, {where}; generation greedy"
               + (f", {quantization} base" if quantization != "none" else "") + "):", "",
           "| metric | base | tuned | reference answers |", "| --- | --- | --- | --- |"]
    for label, key, fmt in EVAL_ROWS:
        out.append(f"| {label} | {cell('base', key, fmt)} | {cell('tuned', key, fmt)} | {cell('reference', key, fmt)} |")
    return out


def _prompt_shape(data_cfg) -> str | None:
    """The run's prompt with `{question}` where the question goes (plain or chat format), or None."""
    from medtune.generate import prompt_for

    mark = "MEDTUNEQUESTIONMARK"
    try:
        text = prompt_for(mark, data_cfg)
    except (MedtuneError, KeyError, IndexError, ValueError):
        return None
    return text.replace(mark, "{question}") if text.count(mark) == 1 else None


def model_card(run_dir: Path, cfg, merge_diff: float | None = None, out_name: str = "MERGED_DIR") -> str:
    """README.md for the merged folder: what it is, how it was made, how it did, what it is not for."""
    m, d, t = cfg.model, cfg.data, cfg.train
    manifest = _read_json(run_dir / "manifest.json") or {}
    metrics = (_read_json(run_dir / "metrics.json") or {}).get("final") or {}
    random_base = m.name.startswith("random:")
    hub_base = not random_base and not Path(m.name).expanduser().exists()
    data_info = manifest.get("data") or {}
    packages = manifest.get("packages") or {}

    front = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             "tags: [medtune, lora, merged, medical]"]
    if hub_base:
        front.append(f"base_model: {m.name}")
    front.append("---")

    lines = front + ["", f"# {run_dir.name} (merged)", "",
                     f"> **{NOTICE}**", "",
                     "A causal language model fine-tuned with medtune "
                     "(LoRA" + (" / QLoRA" if m.quantization != "none" else "") + "), with the adapter merged into "
                     "the base weights. This folder is standalone: it needs neither PEFT nor the base model.", ""]

    lines += ["## Base model", ""]
    if random_base:
        lines.append(f"- `{m.name}`: a GPT-2 architecture with **random weights** built by medtune "
                     "(a test/demo model; it has learned nothing beyond its short fine-tuning).")
    else:
        lines.append(f"- `{m.name}`")
    lines.append(f"- tokenizer: `{m.tokenizer or m.name}`")

    lines += ["", "## Data", "", f"- source: `{d.source}`"]
    if data_info.get("sha256"):
        lines.append(f"- sha256: `{data_info['sha256']}`")
    if data_info.get("splits"):
        lines.append("- records: " + ", ".join(f"{k} {v}" for k, v in data_info["splits"].items())
                     + f" (duplicates removed: {data_info.get('duplicates_removed', 0)}, "
                       f"over-long dropped: {data_info.get('overlong_dropped', 0)})")
    lines.append(f"- max length: {d.max_length} tokens per example; loss on "
                 + ("the answer only" if d.completion_only_loss else "prompt and answer"))

    lines += ["", "## Recipe", "",
              f"- LoRA r={m.lora_r}, alpha={m.lora_alpha}, dropout={m.lora_dropout}, "
              f"targets={m.lora_targets or 'per architecture'}",
              f"- quantization during training: {m.quantization}"]
    if m.quantization != "none":
        lines.append(f"- **merge:** the base was reloaded unquantized (full precision) and the adapter merged into it "
                     f"(the standard PEFT path; adapters cannot be merged into {m.quantization} weights). The adapter "
                     f"was trained against the quantized base, so outputs are close to, not identical with, the "
                     f"quantized model used in training and evaluation.")
    steps = f"max_steps={t.max_steps}" if t.max_steps > 0 else f"epochs={t.epochs}"
    lines.append(f"- training: {steps}, batch {t.batch_size} x grad_accum {t.grad_accum}, "
                 f"learning rate {t.learning_rate} ({t.lr_scheduler}), seed {t.seed}")
    if packages:
        lines.append("- software: " + ", ".join(f"{k} {v}" for k, v in packages.items() if v))
    if manifest.get("device"):
        lines.append(f"- trained on: {manifest['device']}")
    if merge_diff is not None:
        lines.append(f"- merge check: max |logit difference| between merged model and base + adapter "
                     f"= {merge_diff:.2e}")
    lines.append(f"- merged: {time.strftime('%Y-%m-%d', time.gmtime())}")

    shown = [(k, metrics[k]) for k in ("train_loss", "eval_loss", "eval_perplexity", "train_tokens",
                                         "tokens_per_second", "train_seconds", "peak_gpu_memory_gib")
             if k in metrics]
    lines += ["", "## Metrics", ""]
    if shown:
        lines += ["| metric | value |", "| --- | --- |"] + [f"| {k} | {_fmt(v)} |" for k, v in shown]
    else:
        lines.append("No metrics were recorded for this run.")
    lines += _eval_table(run_dir, m.quantization)

    template = _prompt_shape(d)
    lines += ["", "## Prompt format", ""]
    if template is not None:
        lines += ["The model was trained on prompts of this form, the question in place of `{question}` "
                  "(medtune applies it for you; with plain `transformers` you must apply it yourself):", "",
                  "```text", template.rstrip("\n"), "```"]
    else:
        lines.append(f"`data.prompt_format={getattr(d, 'prompt_format', 'template')}`: see config.yaml.")
    lines += ["", "## Use", "", "```python", "from transformers import pipeline",
              f"pipe = pipeline(\"text-generation\", model=\"{out_name}\")  # this folder"]
    if template is not None:
        lines.append("prompt = " + json.dumps(template) + ".replace(\"{question}\", \"What is asthma?\")")
        lines.append("print(pipe(prompt, return_full_text=False)[0][\"generated_text\"])")
    lines += ["```", "",
              "or `medtune generate DIR \"What is asthma?\"`, or `medtune serve DIR` (HTTP API and a web page).", "",
              "## Intended use", "",
              "Research and education on fine-tuning small language models for medical question answering: "
              "studying the recipe, comparing runs, demonstrating a pipeline. Not for diagnosis, treatment, "
              "triage or any decision about a person's health.", "",
              "## Limits", "",
              "- Small models trained on small data produce fluent text that is often wrong, incomplete or "
              "out of date, and can be confidently unsafe. Outputs have not been checked by clinicians.",
              "- The training data's biases and gaps (language, population, era, sources) carry over.",
              "- No safety tuning or refusal behaviour beyond what the base model had.",
              f"- Context is limited to {d.max_length} tokens in training.", "",
              "## Notice", "", NOTICE, ""]
    return "\n".join(lines)
