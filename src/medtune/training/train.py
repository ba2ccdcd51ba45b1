"""Training: config -> data -> model -> Trainer -> the run folder (layout: medtune.rundir)."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import torch

from medtune import data as data_mod
from medtune import model as model_mod
from medtune import rundir, stopping
from medtune.batching import Collator, PackingCollator, TokenBudgetBatchSampler
from medtune.config import Config, dump_yaml
from medtune.errors import MedtuneError
from medtune.files import atomic_write_json, atomic_write_jsonl, atomic_write_text, publish_dir, staging_dir
from medtune.loss import plot_losses
from medtune.machine import optimizer_name
from medtune.training import attention, compiling, memory, patches, progress, trackers
from medtune.training.artifacts import manifest, whole_run_train_loss
from medtune.training.distributed import (
    barrier,
    is_main_process,
    max_over_processes,
    sum_over_processes,
    use_local_gpu,
    world_size,
)
from medtune.training.trainer import MedtuneTrainer, StopOnSignal, training_arguments
from medtune.validate import validate_against_model

log = logging.getLogger("medtune.training")


def _decoder_layers(decoder):
    for name in ("h", "layers", "layer"):
        layers = getattr(decoder, name, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    return None


def _memory_plan(cfg: Config, model, base) -> memory.MemoryPlan | None:
    """train.max_memory_gib on CUDA: tokens per batch, gradient checkpointing and the loss chunk that fit."""
    t = cfg.train
    if t.max_memory_gib is None:
        return None
    if not torch.cuda.is_available():
        log.warning("train: max_memory_gib applies to CUDA GPUs only; ignored on this machine")
        return None
    static = memory.param_bytes(base) + memory.trainable_state_bytes(model, "8bit" in optimizer_name(cfg))
    unpacked = t.batch_size * cfg.data.max_length  # the tokens of a batch without packing
    wanted = t.batch_tokens if t.packing else unpacked
    plan = memory.plan(
        base.config,
        t.max_memory_gib,
        static,
        cfg.data.max_length,
        wanted,
        base.config.vocab_size,
        allow_checkpointing=True,
    )
    if not t.packing and plan.batch_tokens < unpacked:
        raise memory.DoesNotFit(
            f"train.max_memory_gib={t.max_memory_gib} fits about {plan.batch_tokens} tokens per "
            f"batch, fewer than batch_size x max_length = {unpacked}; lower train.batch_size or set "
            "train.packing=true (then the batch size is chosen for you)"
        )
    return plan


@dataclasses.dataclass
class SpeedUps:
    """What apply_speedups chose for a training run (the run's metrics.json keeps the choices: metrics)."""

    gelu_fused: int  # GELU modules made one kernel
    norms_keep_dtype: int  # layer norms that keep the compute dtype
    attention: str  # the attention kernel
    varlen: bool  # packed flash attention over the examples' boundaries
    fast_loss: tuple[torch.nn.Module, torch.Tensor] | None  # (decoder, output embedding weight): the chunked loss
    batch_tokens: int | None  # tokens per batch (packing), as configured or planned
    gradient_checkpointing: bool = False
    plan: memory.MemoryPlan | None = None  # train.max_memory_gib's
    compiled: str | None = None  # what torch.compile compiled (train.compile)

    @property
    def blocks(self):
        """The decoder's blocks (what train.compile compiles), when the chunked loss found the decoder."""
        return _decoder_layers(self.fast_loss[0]) if self.fast_loss is not None else None

    @property
    def loss(self) -> str:
        return "chunked" if self.fast_loss is not None else "model"

    @property
    def chunk(self) -> int | None:
        """Rows per chunk of the loss: the plan's, else None (chosen from the vocabulary)."""
        return self.plan.chunk if self.plan is not None else None

    def metrics(self) -> dict:
        """The choices a run's final metrics record."""
        return {
            "attention": self.attention,
            "loss": self.loss,
            "gradient_checkpointing": self.gradient_checkpointing,
            "batch_tokens": self.batch_tokens,
            "compiled": self.compiled,
        }


def apply_speedups(cfg: Config, model) -> SpeedUps:
    """One-kernel GELU, dtype-keeping layer norms, packed flash attention (CUDA), the chunked loss, the memory plan,
    torch.compile; train.disable turns pieces off. Returns what was chosen."""
    t, off = cfg.train, set(cfg.train.disable)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    gelu = 0 if "gelu" in off else patches.fuse_gelu(model)
    norms = 0 if "norms" in off else patches.keep_dtype_norms(model)
    varlen = bool(
        t.packing
        and torch.cuda.is_available()
        and "varlen" not in off
        and cfg.model.attn_implementation in ("sdpa", attention.VARLEN)
        and attention.use_varlen(model)
    )
    lean = bool(  # CPU: no attention matrices kept for backward (attention.lean_attention_forward)
        not varlen
        and "lean_attention" not in off
        and cfg.model.attn_implementation == "sdpa"
        and attention.use_lean(model)
    )
    if not torch.cuda.is_available() and "host_memory" not in off:
        memory.return_freed_host_memory()  # freed activations go back to the system (memory.py says why)
    chosen = SpeedUps(
        gelu_fused=gelu,
        norms_keep_dtype=norms,
        attention=attention.VARLEN if varlen else attention.LEAN if lean else cfg.model.attn_implementation,
        varlen=varlen,
        fast_loss=None if "chunked_loss" in off else model_mod.decoder_and_head(model),
        batch_tokens=t.batch_tokens if t.packing else None,
    )
    checkpointing = cfg.model.gradient_checkpointing
    chosen.plan = plan = _memory_plan(cfg, model, base)
    if plan is not None:
        chosen.batch_tokens = plan.batch_tokens if t.packing else chosen.batch_tokens
        checkpointing = checkpointing or plan.checkpointing
    if checkpointing and not cfg.model.gradient_checkpointing:  # else add_lora turned it on already
        model_mod.enable_checkpointing(model)
        found = model_mod.decoder_and_head(model)
        layers = _decoder_layers(found[0]) if found is not None else None
        if plan is not None and layers is not None:  # the plan's layers only (selective checkpointing)
            k = memory.checkpoint_only(list(layers), plan.checkpoint_layers)
            chosen.plan = plan = dataclasses.replace(plan, checkpoint_layers=k)
    chosen.gradient_checkpointing = checkpointing
    if t.compile == "true":
        layers = chosen.blocks
        compiling.compile_blocks(layers or [])
        chosen.compiled = "blocks+loss" if layers is not None else "loss"
    return chosen


def record_data_choices(cfg: Config, tok, checked: data_mod.Checked) -> None:
    """Record for the run what the data layer found: the chat column and the rendered chat turn go into the config
    (config.yaml: generate and serve prompt with them), the chat template's end-of-turn token becomes the EOS of the
    tokenizer the run saves (answers are trained to end there, and generation stops there)."""
    fmt = data_mod.prompt_format(cfg.data, tok)
    cfg.data.chat_column, cfg.data.chat_prompt = checked.chat_column, fmt.chat_prompt
    if fmt.eos_token is not None:
        tok.eos_token = fmt.eos_token


def make_trainer(cfg: Config, model, tok, prepared: data_mod.Prepared, out: Path):
    """The Trainer for a LoRA model with medtune's speed-ups. Returns (trainer, collator, the speed-ups chosen)."""
    t, enc = cfg.train, prepared.encoded
    info = apply_speedups(cfg, model)
    batch_tokens = info.batch_tokens
    collator = (
        PackingCollator(tok.pad_token_id, row_length=cfg.data.max_length, flat=info.varlen)
        if t.packing
        else Collator(tok.pad_token_id)
    )
    sampler = None
    if t.packing and batch_tokens:
        sampler = TokenBudgetBatchSampler([len(e["input_ids"]) for e in enc["train"]], batch_tokens, seed=t.seed)
    args = training_arguments(cfg, out, has_eval=bool(enc["validation"]))
    trainer = MedtuneTrainer(
        model=model,
        args=args,
        train_dataset=enc["train"],
        eval_dataset=enc["validation"] or None,
        data_collator=collator,
        fast_loss=info.fast_loss,
        loss_chunk=info.chunk,
        compile_loss=t.compile == "true",
        batch_sampler=sampler,
    )
    if t.compile == "auto" and torch.cuda.is_available() and info.blocks is not None:

        def compiled(step: int) -> None:
            trainer.compile_loss = True
            info.compiled = f"blocks+loss from step {step}"

        trainer.add_callback(compiling.AutoCompile(info.blocks, compiled))
    trackers.attach(trainer, cfg, out / rundir.LOGS)
    progress.attach(trainer)
    world = world_size()
    per_step = f"up to {sampler.max_tokens} tokens" if sampler else f"{t.batch_size} examples"
    effective = (
        f"up to {sampler.max_tokens * t.grad_accum * world} tokens"
        if sampler
        else f"{t.batch_size * t.grad_accum * world} examples"
    )
    log.info(
        f"train: {len(enc['train'])} examples, {per_step} per batch x {t.grad_accum} accumulation x {world} "
        f"processes = effective batch size {effective}"
        f"{f' ({len(sampler)} batches per epoch)' if sampler else ''}; "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}, bf16={args.bf16}, optimizer "
        f"{getattr(args.optim, 'value', args.optim)}, attention {info.attention}, loss {info.loss}, "
        f"packing {t.packing}, gradient checkpointing {info.gradient_checkpointing}"
        + (f", memory plan {dataclasses.asdict(info.plan)}" if info.plan is not None else "")
    )
    return trainer, collator, info


def _save_random_base(cfg: Config, tok, out: Path) -> None:
    """random:<name> bases are on no hub: the run keeps its base weights (unquantized, as built) in base_model/."""
    from transformers.utils import logging as hf_logging

    stage = staging_dir(out)
    hf_logging.disable_progress_bar()
    try:
        model_mod.build_random(cfg.model.name, tok).save_pretrained(stage / rundir.BASE_MODEL)
    finally:
        hf_logging.enable_progress_bar()
    publish_dir(stage, out)


def _final_metrics(trainer, result, info: SpeedUps, seconds: float, resumed: bool) -> dict:
    tokens = sum_over_processes(trainer.tokens_seen)  # all processes' training tokens (evaluation never counts)
    metrics = dict(result.metrics)
    history = trainer.state.log_history
    if resumed and whole_run_train_loss(history) is not None:
        metrics["train_loss"] = whole_run_train_loss(history)
    if trainer.eval_dataset is not None:
        last = [h for h in history if "eval_loss" in h]
        if last and last[-1]["step"] == trainer.state.global_step:  # the final step was already evaluated
            metrics.update({k: v for k, v in last[-1].items() if k.startswith("eval_")})
        else:
            metrics.update(trainer.evaluate())
    metrics.update(
        train_seconds=round(seconds, 2), train_tokens=tokens, tokens_per_second=round(tokens / max(seconds, 1e-9), 1)
    )
    if "eval_loss" in metrics:
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50))
    metrics.update(info.metrics())
    if torch.cuda.is_available():
        metrics["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return metrics


def _write_results(cfg, trainer, tok, prepared, metrics: dict, out: Path, extra: dict | None) -> None:
    stage = staging_dir(out)
    trainer.model.save_pretrained(stage)
    tok.save_pretrained(stage)
    publish_dir(stage, out)
    history = trainer.state.log_history
    atomic_write_json(out / rundir.METRICS, {"final": metrics, "log_history": history})
    atomic_write_json(out / rundir.MANIFEST, manifest(cfg, prepared, extra))
    plot_losses(history, out / rundir.LOSS_CURVE)


def fit(cfg: Config, out: Path, resume: bool, checked: data_mod.Checked) -> dict:
    """The recipe, once medtune.training.entry.run holds the folder and has checked the config, folder, data and
    machine: tokenizer, splits, model (checked against the config), LoRA, the Trainer, then the run's files."""
    from transformers import set_seed

    use_local_gpu()
    resume_from = rundir.prepare_output(out, resume, tidy=is_main_process())  # every rank checks; rank 0 writes
    trackers.check(cfg, main_process=is_main_process())  # each tracker's package installed, MLflow's store opens
    set_seed(cfg.train.seed)
    tok = model_mod.load_tokenizer(model_mod.tokenizer_path(cfg.model))
    record_data_choices(cfg, tok, checked)
    prepared = data_mod.prepare(cfg.data, tok, checked=checked)
    model = model_mod.load_base_model(cfg.model, tok)
    validate_against_model(cfg, model_mod.context_length(model))
    model.config.use_cache = False
    model = model_mod.add_lora(model, cfg.model)
    trainer, _, info = make_trainer(cfg, model, tok, prepared, out)
    if resume:
        _same_resume_point(out, resume_from)
    if is_main_process():  # every check has passed: the first file of the run is written now
        rundir.clean_staging(out)
        if model_mod.is_random(cfg.model):
            _save_random_base(cfg, tok, out)
    if resume_from:
        trainer.args.eval_on_start = False  # the step-0 loss is in the checkpoint's log history already
    barrier()  # the Trainer's arguments started the process group; every rank has checked the output dir
    if is_main_process():
        atomic_write_text(out / rundir.CONFIG, dump_yaml(cfg))
        for name in rundir.SPLIT_NAMES:
            atomic_write_jsonl(rundir.split_path(out, name), prepared.splits[name])
    with stopping.graceful():
        metrics = _train(cfg, trainer, tok, prepared, info, out, resume_from)
    barrier()  # no process returns before rank 0 has written the run's files
    return metrics


def _same_resume_point(out: Path, resume_from: Path | None) -> None:
    """--resume under several processes: every process reads the output folder itself, and all must continue from the
    same checkpoint (a collective, after the Trainer started the process group). On machines without a shared folder
    the others see none: they would start over and crash or hang the group at the first step."""
    match = rundir.CHECKPOINT.match(resume_from.name) if resume_from else None
    step = int(match[1]) if match else 0
    low, high = -max_over_processes(-step), max_over_processes(step)
    if low != high:
        raise MedtuneError(
            f"--resume: the processes of this run see different checkpoints in {out} (from step {low} "
            f"to {high}; 0: none): every machine must see the same output folder (a shared filesystem)"
        )


def _train(cfg: Config, trainer, tok, prepared, info: SpeedUps, out: Path, resume_from: Path | None) -> dict:
    """trainer.train, then the final metrics and the run's files; a signal ends it after a step, with Stopped."""
    stop = StopOnSignal()
    trainer.add_callback(stop)
    if is_main_process():
        trackers.start(cfg, out)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - t0
    if stop.signum and trainer.state.global_step < trainer.state.max_steps:
        raise _stopped(stop.signum, trainer, out)
    metrics = _final_metrics(trainer, result, info, seconds, resumed=resume_from is not None)
    if is_main_process():
        _write_results(cfg, trainer, tok, prepared, metrics, out, prepared.extra)
        trackers.finish(cfg, metrics)
        log.info(
            f"done: adapter and run files in {out} ({seconds:.1f}s, {metrics['tokens_per_second']:.0f} tokens/s"
            + (f", validation loss {metrics['eval_loss']:.4f})" if "eval_loss" in metrics else ")")
        )
    return metrics


def _stopped(signum: int, trainer, out: Path) -> stopping.Stopped:
    """Training stopped on a signal after a step that the Trainer has just saved: where is its checkpoint?"""
    barrier()  # every rank has written its part of the checkpoint (each its own RNG state)
    step, last = trainer.state.global_step, trainer.state.max_steps
    if not is_main_process():
        return stopping.Stopped(signum, None)
    ckpt = rundir.checkpoint_path(out, step)
    problem = rundir.checkpoint_problem(ckpt)
    where = (
        f"checkpoint {ckpt}"
        if problem is None
        else f"its checkpoint {ckpt} is incomplete ({problem}): --resume continues from the newest complete one"
    )
    return stopping.Stopped(signum, f"stopped by {stopping.name(signum)} after step {step} of {last}; {where}")
