"""What goes into the decoding engine and what comes out: a Request (a prompt's token ids with its own settings,
cancellation and callbacks) and its Completion (the answer, its tokens and why it stopped)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from medtune.config import GenerateConfig


@dataclass
class Completion:
    text: str
    token_ids: list[int]  # the answer's tokens, EOS excluded
    stop_reason: str  # "eos": the model ended its answer; "length": max_new_tokens; "loop": the loop guard; "cancelled"
    prompt_tokens: int

    @property
    def stopped_at_eos(self) -> bool:
        return self.stop_reason == "eos"


@dataclass
class Request:
    """One prompt to complete with its own settings (sampling, seed, max_new_tokens, loop guard), cancellation,
    streamed text (on_text) and the finished Completion (on_done, called from the engine's thread)."""

    ids: list[int]
    g: GenerateConfig
    cancel: threading.Event | None = None
    on_text: Callable[[str], None] | None = None
    on_done: Callable[[Completion], None] | None = None
    job: object = None  # the caller's handle (serving's Job)
