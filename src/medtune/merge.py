"""Merge: fold a run's LoRA adapter into its base model and save a standalone model folder.

The merged folder loads with `transformers.pipeline("text-generation", model=DIR)` and with medtune itself
(`medtune generate DIR ...`, `medtune serve DIR`). It holds:
  model.safetensors (+ config.json, generation_config.json)   the merged weights
  tokenizer files
  config.yaml                                                  the run's medtune config (prompt template,
                                                               generation defaults)
  manifest.json, metrics.json, eval_metrics.json               copied from the run when present
  README.md                                                    the model card
(the names: medtune.rundir). Before it is published, the folder is checked for what a serving engine such as vLLM
reads (medtune.deploy.check_serving_folder); a gap is one error line and nothing is written.

A 4bit (QLoRA) run is merged on the base reloaded *unquantized* (the usual PEFT path: an adapter can't be
folded into 4-bit weights). The adapter was trained against the NF4-rounded weights, so the merged model is
close to, not bit-identical with, what the run evaluated; the card says so.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from medtune import rundir
from medtune.errors import MedtuneError
from medtune.files import atomic_write_text, publish_dir, staging_dir
from medtune.notice import NOTICE
from medtune.rundir import LOCK, RunFolder, locked, open_run
from medtune.validate import check_output_folder

CHECK_QUESTION = "What is asthma?"

log = logging.getLogger("medtune.merge")


def _check_out(run_dir: Path, out: Path) -> None:
    check_output_folder(out)
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
        raise MedtuneError(f"--out {out} is not empty; choose a new folder (nothing was overwritten)")
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise MedtuneError("--out must not be the run folder or inside it")


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids.to(next(model.parameters()).device)).logits.float().cpu()


def check(run_dir: str | Path, out: str | Path) -> RunFolder:
    """The checks of a merge that need no model: the run folder, and `out` (new, or empty but for its lock)."""
    run = open_run(run_dir, want="run")
    _check_out(run.path, Path(out).expanduser())
    if run.config.model.name.startswith("random:") and run.base_model is None:
        raise MedtuneError(
            f"{run.path} was trained on a random base ({run.config.model.name}) but has no {rundir.BASE_MODEL}/ folder"
        )
    return run


def merge(run_dir: str | Path, out: str | Path, command: str = "medtune merge") -> Path:
    """Merge the adapter of `run_dir` into its base model; write the standalone model to `out` (new or empty), which
    is locked meanwhile (rundir.locked)."""
    out = Path(out).expanduser()
    with locked(out, command, create=True):
        run = check(run_dir, out)
        _merge(run, out)
    return out


def _merge(run: RunFolder, out: Path) -> None:
    from medtune.deploy import check_serving_folder
    from medtune.model import load_model, weights_dtype
    from medtune.modelcard import model_card

    run_dir, cfg = run.path, run.config
    quantized = cfg.model.quantization != "none"
    log.info(
        f"merge: loading base {run.base_model or cfg.model.name}"
        + (f" unquantized (the run used {cfg.model.quantization})" if quantized else "")
    )
    # merged and checked in float32 (bf16 rounding of the sum alone moved logits by up to 2.5 on SmolLM2), on the
    # CPU, then saved in the run's weight dtype
    model, tok = load_model(run, device="cpu", float32=True)

    from medtune.generate import prompt_for

    ids = tok(prompt_for(CHECK_QUESTION, cfg.data), return_tensors="pt", add_special_tokens=False)["input_ids"][:, :64]
    before = _logits(model, ids)
    merged = model.merge_and_unload()
    merged.eval()
    diff = float((_logits(merged, ids) - before).abs().max())
    if not diff <= 1e-3 * max(1.0, float(before.abs().max())):
        raise MedtuneError(f"merge check failed: merged logits differ from base + adapter by {diff:.3g}")
    log.info(f"merge: adapter folded in (max |logit difference| vs base + adapter: {diff:.2e})")

    merged.to(weights_dtype(cfg.model))
    _set_generation_defaults(merged, cfg, tok)
    stage = staging_dir(out)
    try:
        merged.save_pretrained(stage)
        tok.save_pretrained(stage)
        for src, name in rundir.MERGED_COPIES:
            if (run_dir / src).is_file():
                shutil.copyfile(run_dir / src, stage / name)
        if not (stage / rundir.CONFIG).exists():
            from medtune.config import dump_yaml

            atomic_write_text(stage / rundir.CONFIG, dump_yaml(cfg))
        atomic_write_text(stage / rundir.MODEL_CARD, model_card(run_dir, cfg, diff, out_name=out.name))
        problems = check_serving_folder(stage)  # (a chat template is not asked for: a template-format run has none)
        if problems:
            raise MedtuneError(f"merge: the merged folder is not ready for a serving engine: {'; '.join(problems)}")
        publish_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.info(f"merged model written to {out}\n{NOTICE}")


def _set_generation_defaults(model, cfg, tok) -> None:
    """So that pipeline() and model.generate() on the merged folder sample like `medtune generate`."""
    from medtune.generate import generation_kwargs

    kwargs = generation_kwargs(cfg.generate, tok)
    model.generation_config.update(**{k: v for k, v in kwargs.items() if v is not None})
