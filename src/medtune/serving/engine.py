"""The generation engine: the model, its limits, and one worker thread that runs queued jobs through the one
decoding path (medtune.generate.complete_batch). Requests that wait together are decoded together: the worker takes
up to max_batch_size queued jobs at a time into one batch (dynamic batching; each keeps its own sampling settings,
seed, max_tokens, streaming and cancellation). A full queue refuses new jobs (the app answers 429)."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

from medtune import rundir
from medtune.generate import Request, complete_batch, prompt_for
from medtune.model import context_length

log = logging.getLogger("medtune.serve")


@dataclass
class Limits:
    max_tokens: int = 512            # largest max_tokens a request may ask for (also capped by the context)
    max_prompt_tokens: int | None = None  # default: the model's context minus one
    max_body_bytes: int = 65536      # larger request bodies get 413
    queue_size: int = 64             # requests queued or running; beyond that 429
    max_batch_size: int = 16         # requests decoded together (1: one at a time)


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
        self.batches = self.batched_requests = self.generated_tokens = 0  # for /metrics
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

    def _next_batch(self) -> list[Job] | None:
        """Block for one job, then take whatever else is waiting, up to max_batch_size. None: the engine closed."""
        job = self._jobs.get()
        if job is None:
            return None
        batch = [job]
        while len(batch) < self.limits.max_batch_size:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._jobs.put(None)  # closing: finish this batch first
                break
            batch.append(job)
        return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [j for j in batch if not j.cancel.is_set()]
            try:
                if live:
                    self.busy = True
                    for job, result in zip(live, self.run(live)):
                        job.emit("done", result)
            except Exception as e:  # a bug or an out-of-memory: report it to these requests, keep serving
                log.exception("generation failed")
                for job in live:
                    job.emit("error", f"generation failed ({type(e).__name__})")
            finally:
                self.busy = False
                with self._count_lock:
                    self._count -= len(batch)

    def prompt_ids(self, prompt: str, raw: bool) -> list[int]:
        """Token ids of a prompt (wrapped in the run's prompt template unless raw). Raises ValueError for text the
        tokenizer cannot take (e.g. a lone surrogate)."""
        text = prompt if raw else prompt_for(prompt, self.cfg.data)
        text.encode("utf-8")  # UnicodeEncodeError (a ValueError) for lone surrogates, before the tokenizer sees it
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def run(self, jobs: list[Job]) -> list[dict]:
        """Generate for a batch of jobs (worker thread); streaming jobs get their text through job.emit."""
        requests = []
        for job in jobs:
            g = dataclasses.replace(self.cfg.generate, max_new_tokens=job.max_tokens, temperature=job.temperature,
                                    top_p=job.top_p, greedy=job.temperature <= 0, seed=job.seed)
            on_text = (lambda text, job=job: job.emit("text", text)) if job.stream else None
            requests.append(Request(job.input_ids, g, job.cancel, on_text))
        done = complete_batch(self.model, self.tok, requests)
        self.batches += 1
        self.batched_requests += len(jobs)
        self.generated_tokens += sum(len(c.token_ids) for c in done)
        return [{"text": c.text, "completion_tokens": len(c.token_ids),
                 "finish_reason": "stop" if c.stopped_at_eos else "length"} for c in done]
