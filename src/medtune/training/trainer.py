"""The transformers Trainer with medtune's additions: tokens/s in the logs, the chunked loss over labelled positions,
and token-budget batches. TRL's SFTTrainer would add its own data pipeline on top of the one in medtune.data; the
plain Trainer is all this needs."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from medtune import rundir, stopping
from medtune.batching import NUM_TOKENS
from medtune.config import Config
from medtune.loss import linear_cross_entropy
from medtune.machine import optimizer_name, use_bf16
from medtune.model import decoder_output
from medtune.training.distributed import max_over_processes, sum_over_processes, world_size


class MedtuneTrainer(Trainer):
    """fast_loss: (decoder, output embedding weight) to compute the loss from the decoder's output in chunks over
    the labelled positions (None: the model's own loss); loss_chunk: rows per chunk (None: chosen from the
    vocabulary); compile_loss: torch.compile the chunk; batch_sampler: batches of whole examples by token budget."""

    def __init__(
        self,
        *args,
        fast_loss=None,
        loss_chunk: int | None = None,
        compile_loss: bool = False,
        batch_sampler=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.fast_loss, self.loss_chunk, self.compile_loss = fast_loss, loss_chunk, compile_loss
        self.train_batch_sampler = batch_sampler
        self._train_start = time.perf_counter()
        self.batch_tokens: list[int] = []  # real tokens of every training batch, in the order trained on

    @property
    def tokens_seen(self) -> int:
        return sum(self.batch_tokens)

    def training_step(self, model, inputs, num_items_in_batch=None):
        n = inputs.pop(NUM_TOKENS, None)
        if n is not None:
            self.batch_tokens.append(n)
        return super().training_step(model, inputs, num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs.pop(NUM_TOKENS, None)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    def log(self, logs, start_time=None):
        now = time.perf_counter()
        if "loss" in logs:  # every rank logs "loss" at the same step
            seen = sum_over_processes(self.tokens_seen)
            last_t, last_n = getattr(self, "_tok_clock", (self._train_start, 0))
            logs["tokens_per_second"] = round((seen - last_n) / max(now - last_t, 1e-9), 1)
            self._tok_clock = (now, seen)
        super().log(logs, start_time)

    def train(self, *args, **kwargs):
        self._train_start = time.perf_counter()
        return super().train(*args, **kwargs)

    def get_train_dataloader(self):
        if self.train_batch_sampler is None:
            return super().get_train_dataloader()
        from torch.utils.data import DataLoader

        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=self.train_batch_sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if (
            self.fast_loss is None
            or "labels" not in inputs
            or self.label_smoother is not None
            or self.compute_loss_func is not None
        ):
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        decoder, weight = self.fast_loss
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        with self.accelerator.autocast():
            hidden = decoder_output(model, decoder, **inputs)
            total, n = linear_cross_entropy(hidden, weight, labels, chunk=self.loss_chunk, compiled=self.compile_loss)
        if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
            loss = total / num_items_in_batch  # normalized over the whole accumulated batch, like the model's loss
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes  # num_items_in_batch counts every process's tokens
        else:
            loss = total / n.clamp(min=1)
        return (loss, {"loss": loss}) if return_outputs else loss


class StopOnSignal(TrainerCallback):
    """A signal asked to stop (medtune.stopping): end training after this optimizer step, with a checkpoint of it and
    the loss since the last log line logged. Should the step be due for evaluation, it is evaluated first, as it would
    have been (the checkpoint's RNG state then matches an uninterrupted run's). Under several processes the request is
    shared every step (the largest signal number over the ranks), so that every rank stops after the same step and
    saves its part of one checkpoint, whichever rank got the signal."""

    def __init__(self):
        self.signum = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.signum = max_over_processes(stopping.requested())
        if self.signum:
            control.should_log = control.should_save = control.should_training_stop = True
        return control


def training_arguments(cfg: Config, out: Path, has_eval: bool) -> TrainingArguments:
    t = cfg.train
    return TrainingArguments(
        output_dir=str(out / rundir.CHECKPOINTS),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        neftune_noise_alpha=t.neftune_alpha,
        max_grad_norm=t.max_grad_norm,
        optim=optimizer_name(cfg),
        bf16=use_bf16(cfg),
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
        report_to=[r for r in t.report_to if r != "none"],
        use_cpu=not torch.cuda.is_available(),
        ddp_backend=None if torch.cuda.is_available() or world_size() == 1 else "gloo",  # CPU: gloo (never MPI)
        ddp_find_unused_parameters=False,  # every LoRA weight is used in every forward; True costs a graph walk
        # activation (gradient) checkpointing stays off here (the default): model.enable_checkpointing turns it on
        # on the model; the old name gradient_checkpointing=False is a deprecated alias (a FutureWarning)
        disable_tqdm=True,  # medtune.training.progress: log lines, and a bar on a terminal
        prediction_loss_only=True,  # evaluation needs the loss only: no logits kept
        logging_nan_inf_filter=False,  # log a nan/inf loss as such (the filter hid it; it read the loss each step)
    )
