"""The generation worker of `medtune serve`: the decoding engine (medtune.decoding.Engine) fed with the server's jobs,
in a thread of the server's process or in a process of its own (Limits.worker; its own process by default on CUDA).

It talks to the server (medtune.serving.engine.EngineClient) through one connection (multiprocessing.Pipe) whichever way
it runs. Between two decoding steps it reads what arrived (jobs, cancellations, close); after each step it sends
every event of the step (text pieces, results, errors) with the engine's counters in one message. Stop strings
are watched here, on the text as it is generated (StopText): a job is cancelled once one appears.

Why a process of its own: with the engine in a thread beside the HTTP event loop, both share one GIL, and each
burst of HTTP work (parsing, tokenizing, writing responses) delays the Python that launches the next GPU step; on
one H200 128 clients got a third of what the engine alone makes (docs/decoding.md)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass

from medtune import rundir
from medtune.decoding import Request
from medtune.errors import MedtuneError, first_line
from medtune.generate import make_engine
from medtune.model import context_length, load_model
from medtune.serving.limits import Limits

log = logging.getLogger("medtune.serve")


@dataclass
class Sizes:
    """The model's context and what the server allows within it (computed where the model is loaded)."""

    context: int
    max_tokens: int
    max_prompt_tokens: int
    graphs: int = 0  # CUDA graphs captured before serving (Engine.warm_up)
    warm_up_s: float = 0.0


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


class Worker:
    """The decoding engine and the jobs it runs, keyed by the server's job ids."""

    def __init__(self, model, tok, limits: Limits, warm_up=None):
        """warm_up: the run's GenerateConfig, to capture the first CUDA graphs before serving (see Engine.warm_up)."""
        self.model, self.tok = model, tok
        context = int(context_length(model) or min(tok.model_max_length, 1_000_000))
        max_tokens = max(1, min(limits.max_tokens, context - 1))
        max_prompt = min(limits.max_prompt_tokens or context - 1, context - 1)
        self.sizes = Sizes(context, max_tokens, max_prompt)
        self.engine = make_engine(model, tok, limits.max_batch_size, min(context, max_prompt + max_tokens))
        if warm_up is not None:  # (the server logs it: a worker process logs warnings only)
            t0 = time.perf_counter()
            self.sizes.graphs = self.engine.warm_up(warm_up)
            self.sizes.warm_up_s = round(time.perf_counter() - t0, 2)
        self.cancels: dict[int, threading.Event] = {}
        self.outbox: list = []  # (job id, kind, value) of the current step
        self.generated_tokens = 0
        self.sent_stats: tuple = ()

    def serve(self, conn) -> None:
        """Decode what arrives on conn until it closes (or the server goes away)."""
        conn.send(("ready", self.sizes))
        while self._read(conn):
            try:
                self.engine.step()
            except Exception as e:  # a bug or an out-of-memory: report it to the requests in flight, keep serving
                log.exception("generation failed")
                for request in self.engine.abort():
                    self._event(request.job, "error", f"generation failed ({type(e).__name__})")
            if self.outbox or self.engine.pending == 0:
                self._send(conn)

    def stats(self) -> tuple[int, int, int, int]:
        """Requests waiting or running, rows in the running batch, decoding steps, generated tokens."""
        e = self.engine
        return e.pending, len(e.rows), e.steps_run, self.generated_tokens

    def _send(self, conn) -> None:
        stats = self.stats()
        if self.outbox or stats != self.sent_stats:
            conn.send(("events", self.outbox, stats))
        self.outbox, self.sent_stats = [], stats

    def _read(self, conn) -> bool:
        """Take in every message that arrived (waiting for one while nothing runs). False: the server closed."""
        block = self.engine.pending == 0
        while block or conn.poll():
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the server went away
                return False
            block = False
            if message[0] == "close":
                return False
            if message[0] == "cancel":
                cancel = self.cancels.get(message[1])
                if cancel is not None:
                    cancel.set()
            elif message[0] == "job":
                self.engine.add(self.request(*message[1:]))
        return True

    def _event(self, job: int, kind: str, value) -> None:
        self.outbox.append((job, kind, value))
        if kind != "text":
            self.cancels.pop(job, None)

    def request(self, job: int, ids: list[int], g, stream: bool, stop: tuple[str, ...]):
        """The decoding request of job `job` (its settings g: a GenerateConfig): its text (cut at a stop string) and
        result go to the outbox."""
        cancel = self.cancels[job] = threading.Event()
        watch = StopText(stop) if stop or stream else None

        def on_text(text):
            assert watch is not None  # on_text is passed only with a watch
            piece = watch.feed(text)
            if watch.cut is not None:
                cancel.set()  # the engine stops this answer at its next token
            if piece and stream:
                self._event(job, "text", piece)

        def on_done(c):
            self.generated_tokens += len(c.token_ids)
            text, reason = c.text, "stop" if c.stop_reason in ("eos", "loop") else "length"
            if watch is not None:
                rest = watch.finish()
                if rest and stream:
                    self._event(job, "text", rest)
                if watch.cut is not None:
                    text, reason = watch.answer, "stop"
            self._event(job, "done", {"text": text, "completion_tokens": len(c.token_ids), "finish_reason": reason})

        return Request(ids, g, cancel, on_text if watch is not None else None, on_done, job)


def load(model_dir: str, limits: Limits, device: str | None) -> Worker:
    run = rundir.open_run(model_dir)
    model, tok = load_model(run, device=device, merge=True)
    return Worker(model, tok, limits, warm_up=run.config.generate)


def run(conn, model_dir: str, limits: Limits, device: str | None, on_worker=None) -> None:
    """Load the model and serve jobs from conn; a load that fails is reported on conn as ("failed", message).
    on_worker (thread mode) receives the Worker once it is built."""
    try:
        worker = load(model_dir, limits, device)
    except Exception as e:  # noqa: BLE001  (reported to the server, which raises it as one clear line)
        why = f"cannot start generation: {type(e).__name__}: {first_line(e)}"
        try:
            conn.send(("failed", str(e) if isinstance(e, MedtuneError) else why))
        except OSError:  # the server is gone
            pass
        return
    if on_worker is not None:
        on_worker(worker)
    try:
        worker.serve(conn)
    except (BrokenPipeError, ConnectionResetError):  # the server went away (killed): nothing is left to answer
        pass


def process_main(conn, model_dir: str, limits: Limits, device: str | None) -> None:
    """The entry point of the worker's own process: Ctrl+C is the server's to handle (it closes the connection)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="medtune worker: %(message)s")
    try:
        run(conn, model_dir, limits, device)
    finally:
        conn.close()
