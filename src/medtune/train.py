"""Training: data -> model -> transformers Trainer -> adapter, tokenizer, config, manifest, metrics, loss curve.

Output folder layout (every file written atomically):
  adapter_model.safetensors, adapter_config.json   the LoRA adapter (PEFT format)
  tokenizer files                                   so the folder alone is enough to generate
  base_model/                                       only for random:<name> bases (random weights are not on any hub)
  config.yaml, manifest.json, metrics.json, loss_curve.png
  splits/{validation,test}.jsonl                    held-out records, for `medtune eval`
  checkpoints/checkpoint-N                          Trainer checkpoints (keep-limit), for --resume
  logs/                                             TensorBoard
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

import torch

from medtune import data as data_mod
from medtune import model as model_mod
from medtune.config import Config, dump_yaml
from medtune.errors import MedtuneError
from medtune.files import atomic_write_json, atomic_write_jsonl, atomic_write_text, publish_dir, staging_dir

RUN_FILES = ("adapter_config.json", "adapter_model.safetensors", "config.yaml", "manifest.json")


def _trainer_class():
    from transformers import Trainer

    class MedtuneTrainer(Trainer):
        """Adds non-padding tokens per second (since the last log) to the logs; computes the causal-LM loss from the
        decoder's hidden states in chunks over the labelled positions only (medtune.fast.linear_cross_entropy), and
        batches by token budget when a TokenBudgetBatchSampler is given."""

        fast_loss = None  # (decoder, output embedding weight) or None: the model's own loss
        loss_chunk: int | None = None
        compile_loss = False
        train_batch_sampler = None

        def log(self, logs, start_time=None):
            now = time.perf_counter()
            counter = self.data_collator
            if "loss" in logs and hasattr(counter, "tokens_seen"):  # every rank logs "loss" at the same step
                seen = sum_over_processes(counter.tokens_seen)
                last_t, last_n = getattr(self, "_tok_clock", (self._train_start, 0))
                dt = max(now - last_t, 1e-9)
                logs["tokens_per_second"] = round((seen - last_n) / dt, 1)
                self._tok_clock = (now, seen)
            super().log(logs, start_time)

        def train(self, *args, **kwargs):
            self._train_start = time.perf_counter()
            return super().train(*args, **kwargs)

        def get_train_dataloader(self):
            if self.train_batch_sampler is None:
                return super().get_train_dataloader()
            from torch.utils.data import DataLoader

            loader = DataLoader(self.train_dataset, batch_sampler=self.train_batch_sampler, collate_fn=self.data_collator,
                                num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
            return self.accelerator.prepare(loader)

        def get_eval_dataloader(self, eval_dataset=None):
            collator = self.data_collator  # evaluation counts its tokens on a copy: tokens_seen stays training's
            self.data_collator = copy.copy(collator)
            try:
                return super().get_eval_dataloader(eval_dataset)
            finally:
                self.data_collator = collator

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if (self.fast_loss is None or "labels" not in inputs or self.label_smoother is not None
                    or self.compute_loss_func is not None):
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            from medtune.fast import linear_cross_entropy

            decoder, weight = self.fast_loss
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            # The whole (DDP- and accelerate-wrapped) model runs, so DDP syncs gradients and autocast applies, but
            # its LM head sees only the last position (logits_to_keep=1); the decoder's output is caught by a hook
            # and the loss computed from it in chunks over the labelled positions.
            caught = []
            hook = decoder.register_forward_hook(lambda module, args, out: caught.append(out[0]))
            try:
                with self.accelerator.autocast():
                    model(**inputs, use_cache=False, logits_to_keep=1)
                    (hidden,) = caught
                    total, n = linear_cross_entropy(hidden, weight, labels, chunk=self.loss_chunk,
                                                    compiled=self.compile_loss)
            finally:
                hook.remove()
            if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
                loss = total / num_items_in_batch  # normalized over the whole accumulated batch, like the model's loss
                if self.args.average_tokens_across_devices:
                    loss = loss * self.accelerator.num_processes  # num_items_in_batch counts every process's tokens
            else:
                loss = total / n.clamp(min=1)
            return (loss, {"loss": loss}) if return_outputs else loss

    return MedtuneTrainer


def _bf16(cfg: Config) -> bool:
    if cfg.train.bf16 == "false":
        return False
    capable = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if cfg.train.bf16 == "true" and not capable:
        raise MedtuneError("train.bf16=true needs a GPU with bf16 support; use auto or false")
    return capable  # 4-bit too: LoRA and the non-quantized layers then run in bf16 rather than float32


def _optim(cfg: Config) -> str:
    if cfg.train.optim != "auto":
        return cfg.train.optim
    if cfg.model.quantization != "none" and torch.cuda.is_available():
        return "paged_adamw_8bit"
    return "adamw_torch"


def training_arguments(cfg: Config, out: Path, has_eval: bool):
    from transformers import TrainingArguments

    t = cfg.train
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=_optim(cfg),
        bf16=_bf16(cfg),
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_steps,
        eval_on_start=t.eval_on_start and has_eval,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        data_seed=t.seed,
        dataloader_num_workers=t.num_workers,
        remove_unused_columns=False,
        report_to=[] if t.report_to == "none" else ["tensorboard"],
        use_cpu=not torch.cuda.is_available(),
        ddp_backend=None if torch.cuda.is_available() or world_size() == 1 else "gloo",  # CPU: gloo (never MPI)
        ddp_find_unused_parameters=False,  # every LoRA weight is used in every forward; True costs a graph walk
        gradient_checkpointing=False,  # enabled on the model in model.add_lora
        disable_tqdm=False,
        prediction_loss_only=True,  # evaluation needs the loss only: no logits kept
    )


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except Exception:
        return None


def _sha256_records(records: list[dict]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()


def manifest(cfg: Config, prepared: data_mod.Prepared, source_sha: str) -> dict:
    pkgs = {}
    for name in ("medtune", "torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "packages": pkgs,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
        "processes": world_size(),
        "git_commit": _git_commit(),
        "data": {"source": cfg.data.source, "sha256": source_sha, "source_rows": prepared.source_rows,
                 "duplicates_removed": prepared.duplicates, "overlong_dropped": prepared.dropped,
                 "splits": {k: len(v) for k, v in prepared.encoded.items()}},
        "model": cfg.model.name,
    }


def _source_sha(cfg: Config, prepared: data_mod.Prepared) -> str:
    path = data_mod.SAMPLE if cfg.data.source == "builtin:sample" else Path(cfg.data.source)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return _sha256_records([r for rows in prepared.splits.values() for r in rows])


def plot_losses(log_history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    val = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), marker="o", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (answer tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def last_checkpoint(out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    ckpt = out / "checkpoints"
    return get_last_checkpoint(str(ckpt)) if ckpt.is_dir() else None


def check_output_dir(out: Path, resume: bool) -> str | None:
    if resume:
        ckpt = last_checkpoint(out)
        if ckpt is None:
            raise MedtuneError(f"--resume: no checkpoint found in {out / 'checkpoints'}")
        return ckpt
    if out.exists() and (any((out / f).exists() for f in RUN_FILES) or (out / "checkpoints").exists()):
        raise MedtuneError(f"output dir {out} already holds a run; pass --resume to continue it, "
                           "or choose another --output-dir (nothing was overwritten)")
    return None


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """Processes in this run: WORLD_SIZE as set by torchrun / accelerate launch, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def use_local_gpu() -> None:
    """Under torchrun / accelerate launch on CUDA: pin this process to its own GPU (LOCAL_RANK) before any model
    loads, so that a 4-bit base lands there (model.load_base_model maps it to the current device). The process group
    starts later, with the Trainer's arguments: once it exists, transformers' save_pretrained writes on rank 0 only,
    which would break each rank's round trip of a random 4-bit base through disk."""
    if world_size() > 1 and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def sum_over_processes(n: int) -> int:
    """`n` summed over all processes (a collective: every rank must call it); `n` itself in a single process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return n
    t = torch.tensor([n], dtype=torch.long, device="cuda" if torch.distributed.get_backend() == "nccl" else "cpu")
    torch.distributed.all_reduce(t)
    return int(t.item())


def _decoder_layers(decoder):
    for name in ("h", "layers", "layer"):
        layers = getattr(decoder, name, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    return None


def make_trainer(cfg: Config, model, tok, prepared: data_mod.Prepared, out: Path, log=print):
    """The Trainer for a LoRA model, with medtune's speed-ups: one-kernel GELU, packed flash attention (CUDA),
    the chunked loss over labelled positions, token-budget batches (train.batch_tokens), the train.max_memory_gib
    plan (tokens per batch, gradient checkpointing, loss chunk) and torch.compile (train.compile).
    Returns (trainer, collator, info)."""
    from medtune import fast

    t, enc = cfg.train, prepared.encoded
    cuda = torch.cuda.is_available()
    off = set(os.environ.get("MEDTUNE_DISABLE", "").split(","))  # ablations for benchmarks: gelu,norms,varlen,chunked_loss
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    info: dict = {"gelu_fused": 0 if "gelu" in off else fast.fuse_gelu(model),
                  "norms_keep_dtype": 0 if "norms" in off else fast.keep_dtype_norms(model)}
    varlen = bool(t.packing and cuda and cfg.model.attn_implementation in ("sdpa", fast.VARLEN) and "varlen" not in off
                  and fast.use_varlen(model))
    info["attention"] = fast.VARLEN if varlen else cfg.model.attn_implementation
    parts = None if "chunked_loss" in off else fast.fast_loss_parts(model)
    info["loss"] = "chunked" if parts is not None else "model"
    batch_tokens = t.batch_tokens if t.packing else None
    checkpointing = cfg.model.gradient_checkpointing
    chunk = None
    if t.max_memory_gib is not None:
        if not cuda:
            log("train: max_memory_gib applies to CUDA GPUs only; ignored on this machine")
        else:
            static = fast.param_bytes(base) + fast.trainable_state_bytes(model, "8bit" in _optim(cfg))
            wanted = batch_tokens if t.packing else t.batch_size * cfg.data.max_length
            try:
                plan = fast.plan(base.config, t.max_memory_gib, static, cfg.data.max_length, wanted,
                                 base.config.vocab_size, allow_checkpointing=True)
            except ValueError as e:
                raise MedtuneError(str(e)) from None
            if not t.packing and plan["batch_tokens"] < wanted:
                raise MedtuneError(f"train.max_memory_gib={t.max_memory_gib} fits about {plan['batch_tokens']} tokens per "
                                   f"batch, fewer than batch_size x max_length = {wanted}; lower train.batch_size or set "
                                   "train.packing=true (then the batch size is chosen for you)")
            if t.packing:
                batch_tokens = plan["batch_tokens"]
            checkpointing = checkpointing or plan["checkpointing"]
            chunk = plan["chunk"]
            info["plan"] = plan
    if checkpointing and not cfg.model.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    info["gradient_checkpointing"] = checkpointing

    pad = tok.pad_token_id
    collator = data_mod.PackingCollator(pad, row_length=cfg.data.max_length, flat=varlen) if t.packing \
        else data_mod.Collator(pad)
    sampler = None
    if t.packing and batch_tokens:
        sampler = data_mod.TokenBudgetBatchSampler([len(e["input_ids"]) for e in enc["train"]], batch_tokens, seed=t.seed)
    info["batch_tokens"] = batch_tokens
    if t.compile:
        layers = _decoder_layers(parts[0]) if parts is not None else None
        for layer in layers or []:
            layer.compile(dynamic=True)
        info["compiled"] = "blocks+loss" if layers is not None else "loss"

    args = training_arguments(cfg, out, has_eval=bool(enc["validation"]))
    trainer = _trainer_class()(model=model, args=args, train_dataset=enc["train"],
                               eval_dataset=enc["validation"] or None, data_collator=collator)
    trainer.fast_loss = parts
    trainer.loss_chunk = chunk
    trainer.compile_loss = bool(t.compile)
    trainer.train_batch_sampler = sampler
    world = world_size()
    per_step = (f"up to {batch_tokens} tokens" if sampler else f"{t.batch_size} examples")
    effective = (f"up to {batch_tokens * t.grad_accum * world} tokens" if sampler
                 else f"{t.batch_size * t.grad_accum * world} examples")
    log(f"train: {len(enc['train'])} examples, {per_step} per batch x {t.grad_accum} accumulation x {world} processes"
        f" = effective batch size {effective}"
        f"{f' ({len(sampler)} batches per epoch)' if sampler else ''}; device {'cuda' if cuda else 'cpu'}, bf16={args.bf16}, "
        f"optimizer {getattr(args.optim, 'value', args.optim)}, attention {info['attention']}, loss {info['loss']}, "
        f"packing {t.packing}, gradient checkpointing {checkpointing}"
        + (f", memory plan {info['plan']}" if "plan" in info else ""))
    return trainer, collator, info


def run(cfg: Config, resume: bool = False, log=print) -> dict:
    """Train a LoRA adapter as configured; returns the final metrics."""
    from transformers import set_seed

    out = Path(cfg.output_dir).expanduser()
    use_local_gpu()
    resume_from = check_output_dir(out, resume)  # every rank checks before rank 0 writes a run file (barrier below)
    set_seed(cfg.train.seed)
    if not is_main_process():
        log = lambda *a, **k: None  # noqa: E731  (rank 0 alone speaks)

    tok = model_mod.load_tokenizer(model_mod.tokenizer_path(cfg.model))
    prepared = data_mod.prepare(cfg.data, tok, log=log)
    model = model_mod.load_base_model(cfg.model, tok)
    if model_mod.is_random(cfg.model) and is_main_process():
        stage = staging_dir(out)
        model.save_pretrained(stage / "base_model") if cfg.model.quantization == "none" else \
            model_mod.build_random(cfg.model.name, tok).save_pretrained(stage / "base_model")
        publish_dir(stage, out)
    model.config.use_cache = False
    model = model_mod.add_lora(model, cfg.model, log=log)

    enc = prepared.encoded
    trainer, collator, speed = make_trainer(cfg, model, tok, prepared, out, log=log)
    if resume_from:
        trainer.args.eval_on_start = False  # the step-0 loss is in the checkpoint's log history already
    barrier()  # the Trainer's arguments started the process group; every rank has checked the output dir
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump_yaml(cfg))
        for name in ("validation", "test"):
            atomic_write_jsonl(out / "splits" / f"{name}.jsonl", prepared.splits[name])
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(out / "logs"))

    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - t0
    tokens = sum_over_processes(collator.tokens_seen)  # all processes' training tokens, before any evaluation
    metrics = dict(result.metrics)
    if enc["validation"]:
        last = [h for h in trainer.state.log_history if "eval_loss" in h]
        if last and last[-1]["step"] == trainer.state.global_step:  # the final step was already evaluated
            metrics.update({k: v for k, v in last[-1].items() if k.startswith("eval_")})
        else:
            metrics.update(trainer.evaluate())
    metrics["train_seconds"] = round(seconds, 2)
    metrics["train_tokens"] = tokens
    metrics["tokens_per_second"] = round(tokens / max(seconds, 1e-9), 1)
    if "eval_loss" in metrics:
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50))
    metrics.update({k: speed[k] for k in ("attention", "loss", "gradient_checkpointing", "batch_tokens")})
    if torch.cuda.is_available():
        metrics["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)

    # FSDP shards the LoRA weights too: every process takes part in gathering them (untested: needs GPUs)
    adapter_state = trainer.accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled else None
    if is_main_process():
        stage = staging_dir(out)
        trainer.model.save_pretrained(stage, state_dict=adapter_state)
        tok.save_pretrained(stage)
        publish_dir(stage, out)
        history = trainer.state.log_history
        atomic_write_json(out / "metrics.json", {"final": metrics, "log_history": history})
        atomic_write_json(out / "manifest.json", manifest(cfg, prepared, _source_sha(cfg, prepared)))
        plot_losses(history, out / "loss_curve.png")
        log(f"done: adapter and run files in {out} ({seconds:.1f}s, {metrics['tokens_per_second']:.0f} tokens/s"
            + (f", validation loss {metrics['eval_loss']:.4f})" if "eval_loss" in metrics else ")"))
    barrier()  # no process returns before rank 0 has written the run's files
    return metrics
