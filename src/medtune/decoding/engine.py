"""The decoding engine behind `medtune generate`, `medtune eval` and `medtune serve`: continuous batching over a
slot KV cache, CUDA graphs for the decode step, sampling for all rows at once on the device.

A request joins the running batch at the next step (its prompt is prefilled into a free slot) and leaves it when it
ends (EOS, its max_new_tokens, the loop guard, cancellation); the live rows are kept in slots 0..n-1, so a step runs
the smallest batch bucket that holds them over the shortest width bucket that holds their tokens. On CUDA each
(batch, width) bucket's decode step is captured once as a CUDA graph and replayed: one launch instead of hundreds of
small kernels, which is what bounds a small model's eager step (NOTES.md: 25 ms a step for SmolLM2-135M through
model.generate, with well under 0.1 ms of memory traffic).

Why our own and not transformers' ContinuousBatchingManager: it draws every request from one global generator
(torch.multinomial), so an answer changes with its batch-mates, and eval and users need seeded, reproducible
answers; measured side by side in benchmarks/decode.py.
"""
from __future__ import annotations

import collections
import logging
import random
import threading

import torch

from medtune.decoding.kvcache import SlotCache, use_slots
from medtune.decoding.rows import LoopGuard, Row, TextStream
from medtune.decoding.sampling import RowSettings, sample

log = logging.getLogger("medtune.decoding")

WIDTH_STEP = 128          # decode attends over a multiple of this many positions (fewer graphs, little waste)
PREFILL_TOKENS = 16_384   # prompt tokens prefilled per step at most (running rows wait for one prefill only)


def _batch_bucket(n: int, slots: int) -> int:
    b = 1
    while b < n:
        b *= 2
    return min(b, slots)


class Engine:
    """Decodes Requests (medtune.generate.Request) with continuous batching. `add` may be called from any thread;
    `step` and `run` from one thread (the engine's owner)."""

    def __init__(self, model, tokenizer, slots: int = 32, max_len: int | None = None, graphs: bool | None = None):
        from medtune.model import context_length, decoder_and_head

        self.model, self.tok = model, tokenizer
        self.device = next(model.parameters()).device
        context = context_length(model)
        self.max_len = min(max_len or context or 2048, context or 1 << 30)
        self.slots = max(1, slots)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos or 0)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.head = (decoder_and_head(model) or (None,))[0], base.get_output_embeddings()
        use_slots(model)
        self.slots = self._fit_slots(self.slots)
        self.cache = SlotCache(self.slots, self.max_len, self.device)
        z = lambda *shape: torch.zeros(shape, dtype=torch.long, device=self.device)  # noqa: E731
        self.hist, self.tok_in, self.pos, self.lengths, self.steps = (z(self.slots, self.max_len), z(self.slots),
                                                                       z(self.slots), z(self.slots), z(self.slots))
        self.rows: list[Row] = []
        self.waiting: collections.deque = collections.deque()
        self.lock = threading.Lock()
        self.settings: RowSettings | None = None
        self.graphs: dict = {}
        self.use_graphs = self.device.type == "cuda" if graphs is None else graphs
        self.pool = None
        self.steps_run = self.tokens_out = 0
        with torch.no_grad(), self.cache:  # every layer's buffers exist before any graph is captured
            self._prefill_forward(torch.full((1, 1), self.pad, device=self.device), [1], slot0=0)

    def _fit_slots(self, slots: int) -> int:
        """As many slots as asked for, or as fit in 40% of the free GPU memory (a probe measures the model's key and
        value bytes per position)."""
        if self.device.type != "cuda":
            return slots
        self.cache = probe = SlotCache(1, 1, self.device)
        with torch.no_grad(), probe:
            self._prefill_forward(torch.full((1, 1), self.pad, device=self.device), [1], slot0=0)
        per_slot = probe.bytes_per_slot() * self.max_len
        free, _ = torch.cuda.mem_get_info(self.device)
        fit = max(1, int(0.4 * free // max(per_slot, 1)))
        if fit < slots:
            log.warning("decoding: %d rows at once fit in GPU memory (of %d asked), %d tokens each", fit, slots,
                        self.max_len)
        return min(slots, fit)

    # ------------------------------------------------------------ requests in and out

    def add(self, request) -> None:
        with self.lock:
            self.waiting.append(request)

    @property
    def pending(self) -> int:
        return len(self.waiting) + len(self.rows)

    def abort(self) -> list:
        """Drop every running and waiting request (after a failed step) and return them; the engine stays usable."""
        with self.lock:
            dropped = [row.request for row in self.rows] + list(self.waiting)
            self.waiting.clear()
        self.rows, self.settings = [], None
        self.pos.zero_()
        self.tok_in.zero_()
        return dropped

    def run(self, requests: list) -> list:
        """Decode a list of requests to the end; their Completions in the order given."""
        out: dict[int, object] = {}
        for i, r in enumerate(requests):
            done = r.on_done
            r.on_done = (lambda c, i=i, done=done: (out.__setitem__(i, c), done and done(c)))
            self.add(r)
        while len(out) < len(requests):
            self.step()
        return [out[i] for i in range(len(requests))]

    @torch.no_grad()
    def step(self) -> None:
        """Admit waiting requests into free slots (prefill), then one decode step for every running row."""
        with self.cache:
            self._admit()
            if self.rows:
                self._decode()

    # ------------------------------------------------------------ prefill

    def _admit(self) -> None:
        take, budget = [], PREFILL_TOKENS
        with self.lock:
            while self.waiting and len(self.rows) + len(take) < self.slots:
                r = self.waiting[0]
                if take and len(r.ids) > budget:
                    break
                budget -= len(r.ids)
                take.append(self.waiting.popleft())
        live = []
        for r in take:
            if r.cancel is not None and r.cancel.is_set():  # never started: nothing to generate
                self._finish(Row(r, 0, LoopGuard(0), None, reason="cancelled"))
            else:
                live.append(r)
        if live:
            self._prefill(live)

    def _prefill_forward(self, ids: torch.Tensor, lengths: list[int], slot0: int) -> torch.Tensor:
        """Prompts (right-padded) into slots slot0.. and the logits after each prompt's last token, [B, V]."""
        from medtune.model import decoder_output

        b, w = ids.shape
        self.cache.mode, self.cache.rows = "prefill", torch.arange(slot0, slot0 + b, device=self.device)
        last = torch.tensor(lengths, device=self.device) - 1
        pos = torch.arange(w, device=self.device).expand(b, w)
        rows = torch.arange(b, device=self.device)
        decoder, head = self.head
        if decoder is not None:  # the head on one position a row, not on every prompt token
            hidden = decoder_output(self.model, decoder, input_ids=ids, position_ids=pos)[rows, last]
            return head(hidden).float()
        return self.model(input_ids=ids, position_ids=pos, use_cache=False).logits[rows, last].float()

    def _prefill(self, requests: list) -> None:
        n0, b = len(self.rows), len(requests)
        lens = [len(r.ids) for r in requests]
        ids = torch.full((b, max(lens)), self.pad, dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, :lens[i]] = torch.tensor(r.ids, dtype=torch.long)
        ids = ids.to(self.device)
        logits = self._prefill_forward(ids, lens, n0)
        rows = slice(n0, n0 + b)
        self.hist[rows, :ids.shape[1]] = ids
        self.lengths[rows] = torch.tensor(lens, device=self.device)
        self.steps[rows] = 0
        for r in requests:
            seed = r.g.seed if r.g.seed is not None else random.getrandbits(62)
            stream = TextStream(self.tok) if r.on_text is not None else None
            self.rows.append(Row(r, seed, LoopGuard(r.g.loop_guard), stream, prompt_len=len(r.ids)))
        settings = RowSettings.build([r.g for r in requests], [row.seed for row in self.rows[n0:]], self.device)
        tokens = sample(logits, settings, self.steps[rows], self.hist[rows, :ids.shape[1]], self.lengths[rows])
        self._advance(n0, tokens)
        self._retire(joined=True)

    # ------------------------------------------------------------ decode

    def _decode(self) -> None:
        n = len(self.rows)
        b = _batch_bucket(n, self.slots)
        longest = max(row.prompt_len + len(row.tokens) + 1 for row in self.rows)
        width = min(self.max_len, -(-longest // WIDTH_STEP) * WIDTH_STEP)
        logits = self._forward(b, width)[:n]
        tokens = sample(logits, self.settings, self.steps[:n], self.hist[:n, :width], self.lengths[:n])
        self.steps_run += 1
        self._advance(0, tokens)
        self._retire()

    def _decode_forward(self, b: int, width: int) -> torch.Tensor:
        """One token for rows 0..b-1 (logits [b, V], float32); the shapes and buffers are fixed per (b, width)."""
        c = self.cache
        c.mode, c.width, c.pos = "decode", width, self.pos
        col = torch.arange(width, device=self.device)
        c.bias = torch.zeros(b, width, device=self.device).masked_fill_(col[None, :] > self.pos[:b, None],
                                                                        float("-inf"))
        out = self.model(input_ids=self.tok_in[:b, None], position_ids=self.pos[:b, None], use_cache=False)
        return out.logits[:, -1].float()

    def _forward(self, b: int, width: int) -> torch.Tensor:
        if not self.use_graphs:
            return self._decode_forward(b, width)
        key = (b, width)
        if key not in self.graphs:
            try:
                self.graphs[key] = self._capture(b, width)
            except Exception as e:  # an architecture whose forward cannot be captured: decode eagerly
                log.warning("CUDA graph capture failed (%s: %s); decoding without CUDA graphs",
                            type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
                self.use_graphs = False
                self.graphs.clear()
                return self._decode_forward(b, width)
        graph, out = self.graphs[key]
        graph.replay()
        return out

    def _capture(self, b: int, width: int):
        """Capture one decode step. The warm-up run writes the same keys and values the real step will (same inputs),
        so it is safe while rows are running."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._decode_forward(b, width)
        torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self._decode_forward(b, width)
        return graph, out

    # ------------------------------------------------------------ after each token

    def _advance(self, start: int, tokens: torch.Tensor) -> None:
        """Append each row's new token (device state), then hand them to the rows on the host (one sync a step)."""
        n = tokens.shape[0]
        rows = torch.arange(start, start + n, device=self.device)
        at = self.lengths[start:start + n].clamp(max=self.max_len - 1)
        self.hist[rows, at] = tokens
        self.tok_in[start:start + n] = tokens
        self.pos[start:start + n] = self.lengths[start:start + n]
        self.lengths[start:start + n] += 1
        self.steps[start:start + n] += 1
        for row, t in zip(self.rows[start:start + n], tokens.tolist()):
            self._take(row, t)

    def _take(self, row: Row, token: int) -> None:
        r = row.request
        if token == self.eos:
            row.reason = "eos"
            return
        row.tokens.append(token)
        cut = row.guard.add(row.tokens)
        if cut is not None:
            del row.tokens[cut:]
            row.reason = "loop"
        elif r.cancel is not None and r.cancel.is_set():
            row.reason = "cancelled"
        elif len(row.tokens) >= r.g.max_new_tokens or row.prompt_len + len(row.tokens) >= self.max_len:
            row.reason = "length"
        self.tokens_out += 1
        row.emit_text(final=row.reason is not None)

    def _retire(self, joined: bool = False) -> None:
        """Finish the rows that stopped, move the survivors into slots 0..n-1, and refresh the rows' settings."""
        if not joined and not any(row.reason for row in self.rows):
            return
        keep = [i for i, row in enumerate(self.rows) if not row.reason]
        for row in self.rows:
            if row.reason:
                self._finish(row)
        moves = [(k, j) for j, k in enumerate(keep) if k != j]
        if moves:
            src = torch.tensor([k for k, _ in moves], device=self.device)
            dst = torch.tensor([j for _, j in moves], device=self.device)
            width = max(self.rows[k].prompt_len + len(self.rows[k].tokens) + 1 for k in keep)
            self.cache.move(src, dst, min(width, self.max_len))
            for t in (self.hist, self.tok_in, self.pos, self.lengths, self.steps):
                t.index_copy_(0, dst, t.index_select(0, src))
        self.rows = [self.rows[k] for k in keep]
        n = len(self.rows)
        self.pos[n:].zero_()  # padding rows of a bucket attend to position 0 of a free slot
        self.tok_in[n:].zero_()
        self.settings = RowSettings.build([row.request.g for row in self.rows], [row.seed for row in self.rows],
                                          self.device) if self.rows else None

    def _finish(self, row: Row) -> None:
        from medtune.generate import Completion

        r = row.request
        text = self.tok.decode(row.tokens, skip_special_tokens=True).strip()
        if row.stream is not None and row.reason != "cancelled":
            row.emit_text(final=True)
        if r.on_done is not None:
            r.on_done(Completion(text, list(row.tokens), row.reason, len(r.ids)))
