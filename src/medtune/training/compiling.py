"""train.compile: torch.compile the decoder blocks and the chunked loss, at the start ("true") or, with "auto" (the
default on CUDA), once the run's first steps are timed and only when the eager time the run has left would pay
back the compiling. A short run (3 epochs of wikidoc on gpt2: about 20 s) would spend several times its length
compiling; a long one gains for hours."""

from __future__ import annotations

import logging
import time

from transformers import TrainerCallback

from medtune.training.distributed import max_over_processes

log = logging.getLogger("medtune.training")

COMPILE_S = 120.0  # compiling gpt2's blocks and loss took about 80 s on an H100; bigger models take longer
SPEEDUP = 1.3  # assumed gain of a compiled step over an eager one (not yet measured alone; docs/performance.md)
WARMUP_STEPS, TIMED_STEPS = 3, 7  # the first steps warm up; the next ones are timed


def compile_blocks(layers) -> None:
    for layer in layers:
        layer.compile(dynamic=True)


def pays_back(step_s: float, steps_left: int) -> bool:
    """Does compiling now save more than it costs, for a run with `steps_left` steps of `step_s` seconds?"""
    return steps_left * step_s * (1 - 1 / SPEEDUP) > COMPILE_S


class AutoCompile(TrainerCallback):
    """Times WARMUP_STEPS + 1 .. WARMUP_STEPS + TIMED_STEPS of this process's steps (from step begin to step end:
    evaluation and checkpoints in between are not counted), then compiles the blocks and the loss if that pays back
    (pays_back). `on_compile(step)` is called when it compiles (the trainer's loss and the run's record)."""

    def __init__(self, layers, on_compile):
        self.layers, self.on_compile = layers, on_compile
        self.steps, self.timed, self.began = 0, 0.0, 0.0
        self.decided = False

    def on_step_begin(self, args, state, control, **kwargs):
        self.began = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.decided:
            return
        self.steps += 1
        if self.steps > WARMUP_STEPS:
            self.timed += time.perf_counter() - self.began
        if self.steps < WARMUP_STEPS + TIMED_STEPS:
            return
        self.decided = True
        # every rank decides alike (the slowest rank's time): a rank that compiled alone would hold up the others
        step_s = max_over_processes(round(1000 * self.timed / TIMED_STEPS)) / 1000
        left = max(0, state.max_steps - state.global_step)
        about = f"{left} steps of {step_s:.2f} s left (about {left * step_s:.0f} s eager)"
        if not pays_back(step_s, left):
            log.info(f"train: compile auto: not compiling: {about}; it would not pay back ~{COMPILE_S:.0f} s")
            return
        log.info(f"train: compile auto: compiling the decoder blocks and the loss: {about}")
        compile_blocks(self.layers)
        self.on_compile(state.global_step)
