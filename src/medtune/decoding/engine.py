"""The decoding engine behind `medtune generate`, `medtune eval` and `medtune serve`: continuous batching over a
slot KV cache, CUDA graphs, sampling for all rows at once on the device.

A request joins the running batch at the next step (its prompt is prefilled into a free slot) and leaves it when it
ends (EOS, its max_new_tokens, the loop guard, cancellation); the live rows are kept in slots 0..n-1, so a step runs
the smallest batch bucket that holds them over the shortest width bucket that holds their tokens. The engine is the
coordinator of a step: the scheduler (scheduler.py) decides which requests join and which rows leave, the model
runner (runner.py) runs the prefill and decode passes on the device (CUDA graphs, sampling.py, kvcache.py), and each
row (rows.py) takes its new tokens on the host. The host reads one small tensor a step (every new token of the step),
one step behind: step k+1 is queued on the device before the host looks at the tokens of step k (stop checks, text,
the loop guard), so the host's work overlaps the device's. A row that ended at step k runs once more at step k+1;
that token is dropped.

Why our own and not transformers' ContinuousBatchingManager: it draws every request from one global generator
(torch.multinomial), so an answer changes with its batch-mates, drops the repetition penalty, and measured 8-65x
slower on one H200 (benchmarks/decode.py, docs/decoding.md).
"""

from __future__ import annotations

import dataclasses

import torch

from medtune.decoding.request import Completion, Request
from medtune.decoding.rows import LoopGuard, Row
from medtune.decoding.runner import ModelRunner
from medtune.decoding.scheduler import Scheduler
from medtune.model import context_length


class Engine:
    """Decodes Requests with continuous batching. `add` may be called from any thread; `step` and `run` from one
    thread (the engine's owner)."""

    def __init__(self, model, tokenizer, slots: int = 32, max_len: int | None = None, graphs: bool | None = None):
        self.tok = tokenizer
        context = context_length(model)
        self.max_len = min(max_len or context or 2048, context or 1 << 30)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos or 0)
        self.runner = ModelRunner(model, slots, self.max_len, self.pad, graphs)
        self.slots = self.runner.slots
        self.scheduler = Scheduler(self.slots)
        self.inflight: tuple | None = None  # the step queued on the device whose tokens the host has not read yet
        self.steps_run = self.tokens_out = 0

    @property
    def rows(self) -> list[Row]:
        """The running rows (row i in slot i)."""
        return self.scheduler.rows

    @property
    def pending(self) -> int:
        """Requests waiting or running, plus one while a step's tokens are unread."""
        return len(self.scheduler.waiting) + len(self.rows) + (self.inflight is not None)

    def add(self, request: Request) -> None:
        if not request.ids:
            raise ValueError("a request needs at least one prompt token")
        self.scheduler.add(request)

    def abort(self) -> list[Request]:
        """Drop every running and waiting request (after a failed step) and return them; the engine stays usable."""
        dropped = self.scheduler.drop_all()
        self.inflight = None
        self.runner.reset_free(0, [])
        return dropped

    def run(self, requests: list[Request]) -> list[Completion]:
        """Decode a list of requests to the end; their Completions in the order given."""
        out: dict[int, Completion] = {}
        for i, r in enumerate(requests):

            def finished(c, i=i, done=r.on_done):
                out[i] = c
                if done is not None:
                    done(c)

            r.on_done = finished
            self.add(r)
        while len(out) < len(requests):
            self.step()
        return [out[i] for i in range(len(requests))]

    def warm_up(self, g, prompt_tokens: int = 120, new_tokens: int = 16) -> int:
        """Capture, before any request, the CUDA graphs that a server's first minutes would capture while clients
        wait (each capture stalls every running row for tens of ms): a decode step for every batch bucket at the
        first two widths, and the prefills that reach them. Runs dummy requests with settings g (the run's: they
        decide the sampling graphs' shape). Returns the number of graphs; 0 without graphs (CPU)."""
        if not self.runner.use_graphs:
            return 0
        n = max(1, min(prompt_tokens, self.max_len - new_tokens - 2))
        g = dataclasses.replace(g, max_new_tokens=new_tokens, loop_guard=0, seed=0)
        buckets = sorted({min(1 << i, self.slots) for i in range(self.slots.bit_length() + 1)})
        eos, self.eos = self.eos, -1  # every dummy answer runs its full length
        try:
            for b in buckets:
                self.run([Request([self.pad] * n, g) for _ in range(b)])
            while self.pending:  # the ended rows leave their slots
                self.step()
        finally:
            self.eos = eos
            self.steps_run = self.tokens_out = 0  # the counters are the requests'
        return len(self.runner.graphs)

    @torch.no_grad()
    def step(self) -> None:
        """Every ADMIT_EVERY steps (at once when nothing runs): retire the rows that ended and admit waiting
        requests into free slots (prefill). Then queue one decode step for every running row, and read the tokens
        of the step before."""
        with self.runner.cache, self.runner.rope:
            joined = None
            if self.scheduler.admits_now():
                self._retire()
                joined = self._admit()
            launched = None
            if any(not row.reason for row in self.rows):
                launched = (list(self.rows), joined, *self.runner.launch(self.rows, joined))
                self.steps_run += 1
            if self.inflight is not None:
                self._collect(*self.inflight)
            self.inflight = launched

    def _retire(self) -> None:
        """Free the slots of the rows that ended; the survivors move into slots 0..n-1."""
        moves = self.scheduler.retire()
        if moves is None:
            return
        src, dst, width = moves
        if src:
            self.runner.move(src, dst, width)
        self.runner.reset_free(len(self.rows), [row.request.g for row in self.rows])

    def _admit(self) -> tuple[int, int] | None:
        """Prefill waiting requests into slots n0..n0+b-1; (n0, b), or None when none joined."""
        live = []
        for r in self.scheduler.take_waiting():
            if r.cancel is not None and r.cancel.is_set():  # never started: nothing to generate
                Row(r, 0, LoopGuard(0), None, reason="cancelled").finish(self.tok)
            else:
                live.append(r)
        if not live:
            return None
        joining = [Row.start(r, self.tok) for r in live]
        n0 = len(self.rows)
        self.rows.extend(joining)
        self.runner.join(n0, joining, [row.request.g for row in self.rows])
        return n0, len(joining)

    def _collect(self, rows: list[Row], joined: tuple[int, int] | None, host: torch.Tensor, event) -> None:
        """The host's side of a queued step: each row's new token (a row that joined: its first token, then the
        step's), in the row order of when the step was queued."""
        if event is not None:
            event.synchronize()
        tokens = host.tolist()
        n, (n0, j) = len(rows), joined or (0, 0)
        for i, row in enumerate(rows):
            if n0 <= i < n0 + j and not row.reason:
                self._take(row, tokens[n + i - n0])
            if not row.reason:
                self._take(row, tokens[i])
        ended = [i for i, row in enumerate(self.rows) if row.reason and not row.done]
        if ended:  # answered now; their slots stop advancing and are freed at the next admission
            for i in ended:
                self.rows[i].finish(self.tok)
            self.runner.end(ended)

    def _take(self, row: Row, token: int) -> None:
        if row.take(token, self.eos, self.max_len):
            self.tokens_out += 1
            row.emit_text(final=row.reason is not None)
