"""The server's side of generation: the run's tokenizer and settings, the limits, the queue of jobs, and the
generation worker (medtune.serving.worker) that runs the decoding engine, in a thread or in a process of its own
(continuous batching: a request joins the running batch at the next step and leaves it when it ends; each keeps its
own sampling settings, seed, max_tokens, streaming and cancellation). Prompts are tokenized here, on the server's
side. A full queue refuses new jobs (the app answers 429); a worker that died fails the jobs it had and every later
one (the app answers 503)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import multiprocessing
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

from medtune import rundir
from medtune.data import encode_prompt
from medtune.errors import MedtuneError
from medtune.generate import conversation_record, prompt_for
from medtune.model import load_tokenizer
from medtune.serving import worker as worker_side
from medtune.serving.limits import Limits

log = logging.getLogger("medtune.serve")


class Cancel(threading.Event):
    """A job's cancellation: set by its handler when the client leaves (or the reply is complete); the first set
    tells the worker (notify)."""

    def __init__(self):
        super().__init__()
        self.notify = None

    def set(self) -> None:
        if not self.is_set():
            super().set()
            if self.notify is not None:
                self.notify()


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
    cancel: Cancel = field(default_factory=lambda: Cancel())

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


WORKER_START_S = 1800  # a model that loads for longer than this is taken for a worker that hung


class EngineClient:
    """What the app asks of generation: limits, tokenization, submit and cancel jobs, counters for /metrics."""

    def __init__(self, model_dir: str | Path, limits: Limits | None = None, device: str | None = None):
        self.limits = limits or Limits()
        run = rundir.open_run(model_dir)
        self.cfg, self.name = run.config, run.path.resolve().name
        self.tok = load_tokenizer(str(run.path))
        self.jobs: dict[int, Job] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()  # self.jobs
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()  # messages for the worker (the sender thread sends)
        self._closed = False
        self.failed: str | None = None  # why the worker stopped, once it has
        # from the worker, after each step: requests waiting or running, rows running, decoding steps, tokens
        self.queued = self.running = self.decode_steps = self.generated_tokens = 0
        self.worker: worker_side.Worker | None = None  # the Worker itself when it runs in a thread (tests reach in)
        self._conn, self._runner = self._start(str(run.path), device)
        self._sender = threading.Thread(target=self._send_all, name="medtune-send", daemon=True)
        self._sender.start()
        sizes = self._wait_ready()
        if sizes.graphs:
            log.info("serve: %d CUDA graphs captured before serving (%.1f s)", sizes.graphs, sizes.warm_up_s)
        self.context, self.max_tokens = sizes.context, sizes.max_tokens
        self.max_prompt_tokens = sizes.max_prompt_tokens
        self.default_max_tokens = max(1, min(self.cfg.generate.max_new_tokens, self.max_tokens))
        self._reader = threading.Thread(target=self._read, name="medtune-events", daemon=True)
        self._reader.start()

    def _start(self, model_dir: str, device: str | None):
        mode = self.limits.worker
        if mode == "auto":
            import torch

            cuda = device.startswith("cuda") if device else torch.cuda.is_available()
            mode = "process" if cuda else "thread"
        if mode == "process":
            ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=worker_side.process_main, args=(theirs, model_dir, self.limits, device), name="medtune-worker"
            )
            proc.daemon = True
            proc.start()
            theirs.close()  # the worker holds its end: when it exits, ours reads EOF
            return ours, proc
        ours, theirs = multiprocessing.Pipe()
        args = (theirs, model_dir, self.limits, device, lambda w: setattr(self, "worker", w))
        thread = threading.Thread(target=worker_side.run, args=args, name="medtune-generate", daemon=True)
        thread.start()
        return ours, thread

    def _wait_ready(self) -> worker_side.Sizes:
        for _ in range(WORKER_START_S):
            if self._conn.poll(1.0):
                break
            if not self._runner.is_alive():
                break
        try:
            kind, value = self._conn.recv() if self._conn.poll() else ("failed", "the generation worker stopped")
        except (EOFError, OSError):
            kind, value = "failed", "the generation worker stopped while loading the model (out of memory?)"
        if kind != "ready":
            self.close()
            raise MedtuneError(str(value))
        assert isinstance(value, worker_side.Sizes)
        return value

    @property
    def default_temperature(self) -> float:
        """A request's temperature when it names none: the run's, or 0 (greedy) when the run decodes greedily."""
        return 0.0 if self.cfg.generate.greedy else self.cfg.generate.temperature

    @property
    def pending(self) -> int:
        """Requests queued or running."""
        return len(self.jobs)

    @property
    def busy(self) -> bool:
        return self.queued > 0

    def submit(self, job: Job) -> bool:
        """Queue a job; False when the queue is full (or the engine closed or failed: see `failed`)."""
        g = dataclasses.replace(
            self.cfg.generate,
            max_new_tokens=job.max_tokens,
            temperature=job.temperature,
            top_p=job.top_p,
            greedy=job.temperature <= 0,
            seed=job.seed,  # type: ignore[arg-type]  # None: unseeded (the engine draws a seed)
        )
        with self._lock:
            if self._closed or self.failed or len(self.jobs) >= self.limits.queue_size:
                return False
            key = next(self._ids)
            self.jobs[key] = job  # before the worker can answer it
        job.cancel.notify = lambda: self._send(("cancel", key))
        self._send(("job", key, job.input_ids, g, job.stream, tuple(job.stop)))
        return True

    def _send(self, message) -> None:
        """Hand a message to the sender thread: a full pipe (the worker reads between steps) never blocks the
        event loop that called."""
        if not self._closed and not self.failed:
            self._outbox.put(message)

    def _send_all(self) -> None:
        """The sender thread: messages to the worker in the order given, until close."""
        while True:
            message = self._outbox.get()
            try:
                self._conn.send(message)
            except OSError:  # the worker is gone: the reader fails its jobs
                pass
            if message == ("close",):
                return

    def close(self) -> None:
        """Stop the worker (a process that does not stop within 10 s is terminated)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._outbox.put(("close",))
        self._sender.join(10)
        self._runner.join(10)
        if isinstance(self._runner, multiprocessing.process.BaseProcess) and self._runner.is_alive():
            self._runner.terminate()
            self._runner.join(5)
        self._conn.close()

    def _read(self) -> None:
        """The worker's events, delivered to each job's event loop (one wake-up a loop a step)."""
        while True:
            try:
                _, items, stats = self._conn.recv()
            except (EOFError, OSError):
                break
            self.queued, self.running, self.decode_steps, self.generated_tokens = stats
            by_loop: dict = {}
            with self._lock:
                for key, kind, value in items:
                    job = self.jobs.get(key) if kind == "text" else self.jobs.pop(key, None)
                    if job is not None:
                        by_loop.setdefault(job.loop, []).append((job, kind, value))
            for loop, batch in by_loop.items():
                _post(loop, batch)
        if not self._closed:
            self._worker_died()

    def _worker_died(self) -> None:
        self.failed = "the generation worker stopped"
        log.error("%s; requests fail until the server is restarted", self.failed)
        with self._lock:
            jobs, self.jobs = list(self.jobs.values()), {}
        for job in jobs:
            _post(job.loop, [(job, "error", self.failed)])

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
