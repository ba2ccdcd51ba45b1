"""The serving side of the decoding engine: the model, its limits, and one worker thread that feeds requests into
medtune.decoding.Engine as they arrive (continuous batching: a request joins the running batch at the next step and
leaves it when it ends; each keeps its own sampling settings, seed, max_tokens, streaming and cancellation). A full
queue refuses new jobs (the app answers 429). Stop strings are the serving layer's: a job's text is watched as it
is generated (StopText), and the job is cancelled once a stop string appears."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

from medtune import rundir
from medtune.data import encode_prompt
from medtune.generate import Request, conversation_record, make_engine, prompt_for
from medtune.model import context_length
from medtune.serving.limits import Limits

log = logging.getLogger("medtune.serve")


@dataclass
class Job:
    input_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stream: bool
    loop: asyncio.AbstractEventLoop
    stop: tuple[str, ...] = ()  # the answer ends before the first of these
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)

    def emit(self, kind: str, value) -> None:
        """Called from the worker thread: hand one event to the request's event loop."""
        _post(self.loop, [(self, kind, value)])

    def put(self, kind: str, value) -> None:
        """Called in the request's event loop: the event reaches the request's handler."""
        self.events.put_nowait((kind, value))


def _deliver(items: list) -> None:
    for job, kind, value in items:
        job.put(kind, value)


def _post(loop, items: list) -> None:
    """Hand events to an event loop in one wake-up (a wake-up is a system call: one a step, not one a token)."""
    try:
        loop.call_soon_threadsafe(_deliver, items)
    except RuntimeError:  # the loop is closed: nobody is listening any more
        for job, _, _ in items:
            job.cancel.set()


@dataclass
class StopText:
    """An answer's text as it is generated, cut before the first stop string. `feed` returns the text that is safe to
    send: it holds back an end that may be the start of a stop string, and trailing whitespace (the final answer is
    stripped), until what follows decides."""

    stops: tuple[str, ...] = ()
    text: str = ""
    sent: int = 0  # characters of text already returned
    cut: int | None = None  # where the first stop string begins, once one has appeared

    def feed(self, piece: str) -> str:
        if self.cut is not None:
            return ""
        self.text += piece
        hits = [i for s in self.stops if (i := self.text.find(s, self.sent)) >= 0]  # none can start before `sent`
        if hits:
            self.cut = min(hits)
            return self._release(self.cut)
        held = max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        return self._release(len(self.text) - held)

    def finish(self) -> str:
        """What is still held when the answer ends."""
        return self._release(len(self.text) if self.cut is None else self.cut)

    @property
    def answer(self) -> str:
        return self.text[: self.cut].strip()

    def _release(self, upto: int) -> str:
        piece = self.text[self.sent : upto].rstrip()
        self.sent += len(piece)
        return piece


class Engine:
    """The model, its tokenizer and config, and one worker thread running the decoding engine."""

    def __init__(self, model_dir: str | Path, limits: Limits | None = None, device: str | None = None):
        self.limits = limits or Limits()
        run = rundir.open_run(model_dir)
        model, tok = rundir.load_model(run, device=device, merge=True)
        cfg = run.config
        self.model, self.tok, self.cfg = model, tok, cfg
        self.name = run.path.resolve().name
        self.context = int(context_length(model) or min(tok.model_max_length, 1_000_000))
        self.max_tokens = max(1, min(self.limits.max_tokens, self.context - 1))
        self.max_prompt_tokens = min(self.limits.max_prompt_tokens or self.context - 1, self.context - 1)
        self.default_max_tokens = max(1, min(cfg.generate.max_new_tokens, self.max_tokens))
        self.decoder = make_engine(
            model, tok, self.limits.max_batch_size, min(self.context, self.max_prompt_tokens + self.max_tokens)
        )
        self._jobs: queue.Queue = queue.Queue()
        self._outbox: list = []  # (job, kind, value) of the current step
        self._count = 0
        self._count_lock = threading.Lock()
        self._closed = False
        self.generated_tokens = 0  # for /metrics
        self._thread = threading.Thread(target=self._work, name="medtune-generate", daemon=True)
        self._thread.start()

    @property
    def default_temperature(self) -> float:
        """A request's temperature when it names none: the run's, or 0 (greedy) when the run decodes greedily."""
        return 0.0 if self.cfg.generate.greedy else self.cfg.generate.temperature

    @property
    def pending(self) -> int:
        """Requests queued or running."""
        return self._count

    @property
    def busy(self) -> bool:
        return self.decoder.pending > 0

    @property
    def decode_steps(self) -> int:
        return self.decoder.steps_run

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

    def _take_jobs(self) -> bool:
        """Move newly submitted jobs into the decoder (blocking while it has nothing to do). False: closing."""
        block = self.decoder.pending == 0
        while True:
            try:
                job = self._jobs.get(block=block)
            except queue.Empty:
                return True
            if job is None:
                return False
            block = False
            if job.cancel.is_set():  # the client left while it waited
                self._done(job)
                continue
            self.decoder.add(self.request(job))

    def _work(self) -> None:
        while self._take_jobs():
            try:
                self.decoder.step()
            except Exception as e:  # a bug or an out-of-memory: report it to the requests in flight, keep serving
                log.exception("generation failed")
                for request in self.decoder.abort():
                    self._outbox.append((request.job, "error", f"generation failed ({type(e).__name__})"))
                    self._done(request.job)
            self._flush()

    def _flush(self) -> None:
        """Send the step's events (text pieces, results) to their event loops, one wake-up a loop."""
        by_loop: dict = {}
        for item in self._outbox:
            by_loop.setdefault(item[0].loop, []).append(item)
        self._outbox = []
        for loop, items in by_loop.items():
            _post(loop, items)

    def _done(self, job: Job) -> None:
        with self._count_lock:
            self._count -= 1

    def prompt_ids(self, prompt: str, raw: bool) -> list[int]:
        """Token ids of a prompt (wrapped in the run's prompt template unless raw). Raises ValueError for text the
        tokenizer cannot take (e.g. a lone surrogate)."""
        text = prompt if raw else prompt_for(prompt, self.cfg.data)
        text.encode("utf-8")  # UnicodeEncodeError (a ValueError) for lone surrogates, before the tokenizer sees it
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def chat_ids(self, turns: list[dict]) -> list[int]:
        """Token ids of the prompt for the assistant's next turn after `turns` (medtune.generate.conversation_record),
        tokenized exactly as training tokenized it. Raises ValueError for text that is not valid Unicode, MedtuneError
        when the run's chat template refuses the conversation."""
        for t in turns:
            t["content"].encode("utf-8")
        return encode_prompt(conversation_record(turns, self.cfg.data), self.tok, self.cfg.data)

    def request(self, job: Job) -> Request:
        """The decoding request of a job: its settings over the run's generate settings; its text (cut at a stop
        string) and result go back to the job's event loop."""
        g = dataclasses.replace(
            self.cfg.generate,
            max_new_tokens=job.max_tokens,
            temperature=job.temperature,
            top_p=job.top_p,
            greedy=job.temperature <= 0,
            seed=job.seed,  # type: ignore[arg-type]  # None: unseeded (the engine draws a seed)
        )
        watch = StopText(job.stop) if job.stop or job.stream else None

        def on_text(text):
            assert watch is not None  # on_text is passed only with a watch
            piece = watch.feed(text)
            if watch.cut is not None:
                job.cancel.set()  # the engine stops this answer at its next token
            if piece and job.stream:
                self._outbox.append((job, "text", piece))

        def on_done(c):
            self.generated_tokens += len(c.token_ids)
            self._done(job)
            text, reason = c.text, "stop" if c.stop_reason in ("eos", "loop") else "length"
            if watch is not None:
                rest = watch.finish()
                if rest and job.stream:
                    self._outbox.append((job, "text", rest))
                if watch.cut is not None:
                    text, reason = watch.answer, "stop"
            self._outbox.append(
                (job, "done", {"text": text, "completion_tokens": len(c.token_ids), "finish_reason": reason})
            )

        return Request(job.input_ids, g, job.cancel, on_text if watch is not None else None, on_done, job)
