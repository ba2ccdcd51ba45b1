"""The generation engine: the model, its limits, and one worker thread that runs queued jobs through the one
decoding path (medtune.generate.complete). A full queue refuses new jobs (the app answers 429)."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

from medtune import rundir
from medtune.generate import complete, prompt_for
from medtune.model import context_length

log = logging.getLogger("medtune.serve")


@dataclass
class Limits:
    max_tokens: int = 512            # largest max_tokens a request may ask for (also capped by the context)
    max_prompt_tokens: int | None = None  # default: the model's context minus one
    max_body_bytes: int = 65536      # larger request bodies get 413
    queue_size: int = 64             # requests queued or running; beyond that 429


@dataclass
class Job:
    input_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stream: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)

    def emit(self, kind: str, value) -> None:
        """Called from the worker thread: hand an event to the request's event loop."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel.set()


def _streamer_class():
    from transformers import TextStreamer

    class JobStreamer(TextStreamer):
        """TextStreamer's word-boundary-safe incremental decoding, sending text to the job instead of stdout."""

        def __init__(self, tokenizer, job: Job):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.job = job

        def on_finalized_text(self, text: str, stream_end: bool = False):
            if text:
                self.job.emit("text", text)

    return JobStreamer


class Engine:
    """The model, its tokenizer and config, and one worker thread that runs queued jobs one at a time."""

    def __init__(self, model_dir: str | Path, limits: Limits | None = None, device: str | None = None):
        self.limits = limits or Limits()
        run = rundir.open_run(model_dir)
        model, tok = rundir.load_model(run, device=device)
        cfg = run.config
        if cfg.model.quantization == "none" and hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()  # same function, faster: no separate LoRA matmuls per token
            model.eval()
        self.model, self.tok, self.cfg = model, tok, cfg
        self.name = run.path.resolve().name
        self.context = int(context_length(model) or min(tok.model_max_length, 1_000_000))
        self.max_tokens = max(1, min(self.limits.max_tokens, self.context - 1))
        self.max_prompt_tokens = min(self.limits.max_prompt_tokens or self.context - 1, self.context - 1)
        self.default_max_tokens = max(1, min(cfg.generate.max_new_tokens, self.max_tokens))
        self._jobs: queue.Queue = queue.Queue()
        self._count = 0
        self._count_lock = threading.Lock()
        self.busy = False
        self._closed = False
        self._streamer = _streamer_class()
        self._thread = threading.Thread(target=self._work, name="medtune-generate", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._count

    def submit(self, job: Job) -> bool:
        """Queue a job; False when the queue is full (or the engine closed)."""
        with self._count_lock:
            if self._closed or self._count >= self.limits.queue_size:
                return False
            self._count += 1
        self._jobs.put(job)
        return True

    def close(self) -> None:
        self._closed = True
        self._jobs.put(None)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            try:
                if not job.cancel.is_set():
                    self.busy = True
                    job.emit("done", self.run(job))
            except Exception as e:  # a bug or an out-of-memory: report it to this request, keep serving
                log.exception("generation failed")
                job.emit("error", f"generation failed ({type(e).__name__})")
            finally:
                self.busy = False
                with self._count_lock:
                    self._count -= 1

    def prompt_ids(self, prompt: str, raw: bool) -> list[int]:
        """Token ids of a prompt (wrapped in the run's prompt template unless raw). Raises ValueError for text the
        tokenizer cannot take (e.g. a lone surrogate)."""
        text = prompt if raw else prompt_for(prompt, self.cfg.data)
        text.encode("utf-8")  # UnicodeEncodeError (a ValueError) for lone surrogates, before the tokenizer sees it
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def run(self, job: Job) -> dict:
        """Generate for one job (worker thread). Streams text through job.emit when job.stream."""
        g = dataclasses.replace(self.cfg.generate, max_new_tokens=job.max_tokens, temperature=job.temperature,
                                top_p=job.top_p, greedy=job.temperature <= 0, seed=job.seed)
        streamer = self._streamer(self.tok, job) if job.stream else None
        (c,) = complete(self.model, self.tok, [job.input_ids], g, streamer=streamer, cancel=job.cancel)
        return {"text": c.text, "completion_tokens": len(c.token_ids),
                "finish_reason": "stop" if c.stopped_at_eos else "length"}
