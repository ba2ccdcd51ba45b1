"""How far training is: one log line per logging step (step, loss, learning rate, tokens/s, time left) and one per
evaluation, through the `medtune.training` logger, plus a progress bar on a terminal (medtune.console.progress_bars).
It replaces the Trainer's own printer and bars, which print Python dicts of strings and nest evaluation bars whose
cursor moves end up in redirected logs as escapes."""

from __future__ import annotations

import logging
import math
import time

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from medtune.console import progress_bars

log = logging.getLogger("medtune.training")


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def log_line(step: int, max_steps: int, logs: dict, left: float | None) -> str | None:
    """The line for one of the Trainer's log entries: a training step's or an evaluation's; None for the others
    (the final summary: medtune says `done: ...` itself)."""
    where = f"step {step}/{max_steps}"
    if "eval_loss" in logs:
        loss = logs["eval_loss"]
        return f"{where}  validation loss {loss:.4f} (perplexity {math.exp(min(loss, 50)):,.1f})"
    if "loss" not in logs:
        return None
    parts = [where, f"loss {logs['loss']:.4f}"]
    if "learning_rate" in logs:
        parts.append(f"lr {logs['learning_rate']:.2e}")
    if "tokens_per_second" in logs:
        parts.append(f"{logs['tokens_per_second']:,.0f} tokens/s")
    if left is not None:
        parts.append(f"{clock(left)} left")
    return "  ".join(parts)


class ProgressLog(TrainerCallback):
    """Log lines on the main process, a bar of the optimizer steps on a terminal (no bar for evaluation)."""

    def __init__(self):
        self.bar = None
        self.start: tuple[float, int] | None = None  # (time, step) after this process's first step
        self.warm = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.warm = False
        if state.is_world_process_zero and progress_bars():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if not self.warm:  # time left from the second step on: the first one's warm-up says nothing of the rate
            self.start, self.warm = (time.perf_counter(), state.global_step), True
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def time_left(self, state) -> float | None:
        if self.start is None or state.global_step <= self.start[1]:
            return None
        per_step = (time.perf_counter() - self.start[0]) / (state.global_step - self.start[1])
        return per_step * (state.max_steps - state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        line = log_line(state.global_step, state.max_steps, logs or {}, self.time_left(state))
        if line is None or not state.is_world_process_zero:
            return
        if self.bar is not None:
            self.bar.clear()
        log.info(line)
        if self.bar is not None:
            self.bar.refresh()

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def attach(trainer) -> None:
    """Replace the Trainer's printer and progress bars with ProgressLog."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(ProgressLog())
