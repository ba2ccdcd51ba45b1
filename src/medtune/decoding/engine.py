"""The decoding engine behind `medtune generate`, `medtune eval` and `medtune serve`: continuous batching over a
slot KV cache, CUDA graphs, sampling for all rows at once on the device.

A request joins the running batch at the next step (its prompt is prefilled into a free slot) and leaves it when it
ends (EOS, its max_new_tokens, the loop guard, cancellation); the live rows are kept in slots 0..n-1, so a step runs
the smallest batch bucket that holds them over the shortest width bucket that holds their tokens. On CUDA a whole
decode step (the forward, the sampling, the update of every row's state) is captured once per bucket as a CUDA graph
and replayed, and so is the prefill of small batches of short prompts: one launch instead of hundreds of small
kernels, which is what bounds a small model's eager step (NOTES.md: 25 ms a step for SmolLM2-135M through
model.generate, with well under 0.1 ms of memory traffic). A prefill samples its prompts' first tokens in the same
graph, and the host reads one small tensor a step (every new token of the step), one step behind: step k+1 is
queued on the device before the host looks at the tokens of step k (stop checks, text, the loop guard), so the host's
work overlaps the device's. A row that ended at step k runs once more at step k+1; that token is dropped.

Why our own and not transformers' ContinuousBatchingManager: it draws every request from one global generator
(torch.multinomial), so an answer changes with its batch-mates, drops the repetition penalty, and measured 8-65x
slower on one H200 (benchmarks/decode.py, docs/decoding.md).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
import threading
from typing import TYPE_CHECKING, Any

import torch

from medtune.decoding.fused import fuse_for_decoding
from medtune.decoding.kvcache import SlotCache, use_slots
from medtune.decoding.rows import LoopGuard, Row, TextStream
from medtune.decoding.sampling import RowSettings, sample

if TYPE_CHECKING:
    from medtune.generate import Request

log = logging.getLogger("medtune.decoding")

WIDTH_STEP = 128  # decode attends over a multiple of this many positions (fewer graphs, little waste)
PREFILL_TOKENS = 16_384  # prompt tokens prefilled per step at most (running rows wait for one prefill only)
PREFILL_GRAPH_ROWS = 16  # prefills of up to this many prompts ...
PREFILL_GRAPH_WIDTH = 512  # ... of up to this many tokens run as CUDA graphs (bucketed); larger ones eagerly
# Requests join (prefill) and ended rows leave (slot compaction) every this many steps, not every step: on the
# H200 a step that admits costs about twice a plain one (SmolLM2-135M, 128 rows: 7.1 against 3.4 ms), so a server
# under load would spend half its time admitting one request a step. A request waits at most this many steps.
ADMIT_EVERY = 4


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class Engine:
    """Decodes Requests (medtune.generate.Request) with continuous batching. `add` may be called from any thread;
    `step` and `run` from one thread (the engine's owner)."""

    def __init__(self, model, tokenizer, slots: int = 32, max_len: int | None = None, graphs: bool | None = None):
        from medtune.model import context_length, decoder_and_head

        self.model, self.tok = model, tokenizer
        self.device = next(model.parameters()).device
        context = context_length(model)
        self.max_len = min(max_len or context or 2048, context or 1 << 30)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos or 0)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.head = (decoder_and_head(model) or (None,))[0], base.get_output_embeddings()
        use_slots(model)
        fuse_for_decoding(model)
        probe = self._probe()
        self.slots = self._fit_slots(max(1, slots), probe)
        # one more slot than rows: the padding rows of a prefill bucket write there (the scratch slot), so a bucket
        # never needs free slots beyond the rows that join; without it, a full engine prefilled eagerly (hundreds of
        # launches) whenever the bucket overhung the last slot
        self.scratch = self.slots
        self.cache = SlotCache(self.slots + 1, self.max_len, self.device, like=probe)
        z = lambda *shape: torch.zeros(shape, dtype=torch.long, device=self.device)  # noqa: E731
        self.hist = z(self.slots + 1, self.max_len)  # each slot's tokens: prompt and answer
        # per slot: the token to feed next, its position, the slot's length, tokens generated, live (1) or padding (0),
        # the token of the last decode step and of the last prefill
        self.tok_in, self.pos, self.lengths, self.steps, self.live, self.out, self.first = (
            z(self.slots + 1) for _ in range(7)
        )
        self.index = torch.arange(self.slots, device=self.device)
        self.settings = RowSettings.empty(self.slots + 1, self.device)
        pw, pr = min(PREFILL_GRAPH_WIDTH, self.max_len), PREFILL_GRAPH_ROWS
        self.p_ids, self.p_last, self.p_rows, self.p_len, self.p_live = z(pr, pw), z(pr), z(pr), z(pr), z(pr)
        pinned = self.device.type == "cuda"
        self.host = [torch.zeros(2 * self.slots, dtype=torch.long, pin_memory=pinned) for _ in range(2)]
        self.flip = 0
        self.since_admission = 0
        self.inflight: tuple | None = None  # the step queued on the device whose tokens the host has not read yet
        self.rows: list[Row] = []
        self.waiting: collections.deque = collections.deque()
        self.lock = threading.Lock()
        self.graphs: dict = {}
        self.use_graphs = self.device.type == "cuda" if graphs is None else graphs
        self.pool: Any = None  # the CUDA graphs' memory pool (torch.cuda.graph_pool_handle)
        self.steps_run = self.tokens_out = 0

    def _probe(self) -> SlotCache:
        """A one-token pass into a one-position cache: the model's key/value shapes and dtypes, layer by layer."""
        self.cache = probe = SlotCache(1, 1, self.device)
        one = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        with torch.no_grad(), probe:
            self._prefill_logits(one, one[0], one[0])
        return probe

    def _fit_slots(self, slots: int, probe: SlotCache) -> int:
        """As many slots as asked for, or as fit in 40% of the free GPU memory."""
        if self.device.type != "cuda":
            return slots
        per_slot = probe.bytes_per_slot() * self.max_len
        free, _ = torch.cuda.mem_get_info(self.device)
        fit = max(1, int(0.4 * free // max(per_slot, 1)))
        if fit < slots:
            log.warning(
                "decoding: %d rows at once fit in GPU memory (of %d asked), %d tokens each", fit, slots, self.max_len
            )
        return min(slots, fit)

    # ------------------------------------------------------------ requests in and out

    def add(self, request) -> None:
        if not request.ids:
            raise ValueError("a request needs at least one prompt token")
        with self.lock:
            self.waiting.append(request)

    @property
    def pending(self) -> int:
        """Requests waiting or running, plus one while a step's tokens are unread."""
        return len(self.waiting) + len(self.rows) + (self.inflight is not None)

    def abort(self) -> list:
        """Drop every running and waiting request (after a failed step) and return them; the engine stays usable."""
        with self.lock:
            dropped = [row.request for row in self.rows if not row.done] + list(self.waiting)
            self.waiting.clear()
        self.rows, self.inflight = [], None
        self._reset_free_rows()
        return dropped

    def run(self, requests: list) -> list:
        """Decode a list of requests to the end; their Completions in the order given."""
        out: dict[int, object] = {}
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
        if not self.use_graphs:
            return 0
        from medtune.generate import Request

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
        return len(self.graphs)

    @torch.no_grad()
    def step(self) -> None:
        """Every ADMIT_EVERY steps (at once when nothing runs): retire the rows that ended and admit waiting
        requests into free slots (prefill). Then queue one decode step for every running row, and read the tokens
        of the step before."""
        with self.cache:
            joined = None
            if self._admission_due():
                self._retire()
                joined = self._admit()
                self.since_admission = 0
            self.since_admission += 1
            running = any(not row.reason for row in self.rows)
            launched = self._launch(joined) if running else None
            if self.inflight is not None:
                self._collect(*self.inflight)
            self.inflight = launched

    def _admission_due(self) -> bool:
        live = sum(not row.reason for row in self.rows)
        if live == 0:
            return bool(self.rows or self.waiting)
        if live == len(self.rows) and not self.waiting:
            return False
        return self.since_admission >= ADMIT_EVERY

    # ------------------------------------------------------------ prefill

    def _admit(self) -> tuple[int, int] | None:
        """Prefill waiting requests into slots n0..n0+b-1; (n0, b), or None when none joined."""
        take: list[Request] = []
        budget = PREFILL_TOKENS
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
        if not live:
            return None
        n0 = len(self.rows)
        for r in live:
            seed = r.g.seed if r.g.seed is not None else random.getrandbits(62)
            stream = TextStream(self.tok) if r.on_text is not None else None
            self.rows.append(Row(r, seed, LoopGuard(r.g.loop_guard), stream))
        self.settings.write(n0, [r.g for r in live], [row.seed for row in self.rows[n0:]])
        self.settings.note([row.request.g for row in self.rows])
        self._prefill(live, n0)
        return n0, len(live)

    def _prefill_logits(self, ids: torch.Tensor, last: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Prompts ids [B, W] (right-padded) into slots `rows`; the logits after each prompt's token `last`, [B, V]."""
        from medtune.model import decoder_output

        b, w = ids.shape
        self.cache.mode, self.cache.rows = "prefill", rows
        pos = torch.arange(w, device=self.device).expand(b, w)
        index = torch.arange(b, device=self.device)
        decoder, head = self.head
        if decoder is not None:  # the head on one position a row, not on every prompt token
            hidden = decoder_output(self.model, decoder, input_ids=ids, position_ids=pos)[index, last]
            return head(hidden).float()
        return self.model(input_ids=ids, position_ids=pos, use_cache=False).logits[index, last].float()

    def _prefill_step(self, ids, last, rows, lens, live) -> torch.Tensor:
        """Prompts into slots `rows` (lens: their lengths, live: 0 for padding rows of a bucket), each row's first
        token sampled and its state set, all on the device (capturable). The first tokens go to `self.first`."""
        w = ids.shape[1]
        self.hist[rows, :w] = ids
        self.lengths[rows] = lens
        self.steps.index_fill_(0, rows, 0)
        self.live[rows] = live
        logits = self._prefill_logits(ids, last, rows)
        tokens = sample(logits, self.settings.take(rows), self.steps[rows], self.hist[rows, :w], self.lengths[rows])
        self._advance(rows, tokens)
        self.first[rows] = tokens
        return tokens

    def _prefill(self, requests: list, n0: int) -> None:
        """The prompts of `requests` into slots n0..; a CUDA graph per (rows, width) bucket, in groups of up to
        PREFILL_GRAPH_ROWS rows (a few replays cost less than one eager prefill's hundreds of launches)."""
        b, lens = len(requests), [len(r.ids) for r in requests]
        if self.use_graphs and b > PREFILL_GRAPH_ROWS and max(lens) <= self.p_ids.shape[1]:
            for k in range(0, b, PREFILL_GRAPH_ROWS):
                self._prefill(requests[k : k + PREFILL_GRAPH_ROWS], n0 + k)
            return
        bb, wb = _pow2(b), min(-(-max(lens) // 64) * 64, self.max_len)
        graph = self.use_graphs and bb <= PREFILL_GRAPH_ROWS and wb <= self.p_ids.shape[1]
        bb, wb = (bb, wb) if graph else (b, max(lens))
        ids = torch.full((bb, wb), self.pad, dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, : lens[i]] = torch.tensor(r.ids, dtype=torch.long)
        pad = [0] * (bb - b)
        slots = list(range(n0, n0 + b)) + [self.scratch] * (bb - b)  # padding rows: the scratch slot
        inputs = upload(
            ids,
            *(torch.tensor(v) for v in ([n - 1 for n in lens] + pad, slots, lens + pad, [1] * b + pad)),
            device=self.device,
        )
        if not graph:
            self._prefill_step(*inputs)
            return
        args = self.p_ids[:bb, :wb], self.p_last[:bb], self.p_rows[:bb], self.p_len[:bb], self.p_live[:bb]
        for buf, t in zip(args, inputs):
            buf.copy_(t)
        fn = lambda: self._prefill_step(*args)  # noqa: E731
        try:
            self._replay(("prefill", bb, wb, *self.settings.key()), fn)
        except _CaptureFailed:
            fn()

    # ------------------------------------------------------------ decode

    def _launch(self, joined: tuple[int, int] | None) -> tuple:
        """Queue one decode step for rows 0..n-1 and the copy of the step's tokens to the host."""
        n = len(self.rows)
        b = min(_pow2(n), self.slots)
        longest = max(row.length for row in self.rows) + 1  # + 1: the step still in flight
        width = min(self.max_len, -(-longest // WIDTH_STEP) * WIDTH_STEP)
        try:
            self._replay(("decode", b, width, *self.settings.key()), lambda: self._decode_step(b, width))
        except _CaptureFailed:
            self._decode_step(b, width)
        self.steps_run += 1
        host = self.host[self.flip]
        self.flip ^= 1
        blocking = self.device.type != "cuda"
        host[:n].copy_(self.out[:n], non_blocking=not blocking)
        j = 0
        if joined is not None:
            n0, j = joined
            host[n : n + j].copy_(self.first[n0 : n0 + j], non_blocking=not blocking)
        event = None
        if not blocking:
            event = torch.cuda.Event()
            event.record()
        return list(self.rows), joined, host[: n + j], event

    def _decode_step(self, b: int, width: int) -> torch.Tensor:
        """One token for rows 0..b-1: forward, sampling and state update, all on the device (capturable)."""
        c = self.cache
        c.mode, c.width, c.pos = "decode", width, self.pos
        col = torch.arange(width, device=self.device)
        c.bias = torch.zeros(b, width, device=self.device).masked_fill_(
            col[None, :] > self.pos[:b, None], float("-inf")
        )
        out = self.model(input_ids=self.tok_in[:b, None], position_ids=self.pos[:b, None], use_cache=False)
        tokens = sample(
            out.logits[:, -1].float(), self.settings.view(b), self.steps[:b], self.hist[:b, :width], self.lengths[:b]
        )
        self._advance(self.index[:b], tokens)
        self.out[:b].copy_(tokens)
        return self.out[:b]

    def _advance(self, rows: torch.Tensor, tokens: torch.Tensor) -> None:
        """Append each live row's new token to its state on the device (padding rows stay put). A row past the end
        of its slot (one that ended while this step was queued) rewrites its last position: its token is dropped."""
        live = self.live[rows]
        length = self.lengths[rows]
        at = length.clamp(max=self.max_len - 1)
        self.hist[rows, at] = torch.where(live > 0, tokens, self.hist[rows, at])
        self.tok_in[rows] = tokens * live
        self.pos[rows] = at * live
        self.lengths[rows] = length + live
        self.steps[rows] = self.steps[rows] + live

    def _replay(self, key: tuple, fn) -> torch.Tensor:
        """fn's output, from its CUDA graph (captured on first use of this key); eager if capture fails."""
        if not self.use_graphs:
            return fn()
        if key not in self.graphs:
            try:
                self.graphs[key] = self._capture(fn)
            except Exception as e:  # an architecture whose forward cannot be captured: decode eagerly
                log.warning(
                    "CUDA graph capture failed (%s: %s); decoding without CUDA graphs",
                    type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else "",
                )
                self.use_graphs = False
                self.graphs.clear()
                raise _CaptureFailed() from e
        graph, out = self.graphs[key]
        graph.replay()
        return out

    def _capture(self, fn):
        """Capture fn. Its state changes are made by the capture's warm-up run, so they are undone first and made
        again by the replay that follows."""
        state = (self.hist, self.tok_in, self.pos, self.lengths, self.steps, self.live, self.out, self.first)
        saved = [t.clone() for t in state]
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn()
            torch.cuda.current_stream().wait_stream(side)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = fn()
        finally:
            for t, s in zip(state, saved):
                t.copy_(s)
        return graph, out

    # ------------------------------------------------------------ on the host, after each step

    def _collect(self, rows: list, joined: tuple[int, int] | None, host: torch.Tensor, event) -> None:
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
                self._finish(self.rows[i])
            (index,) = upload(torch.tensor(ended), device=self.device)
            self.live.index_fill_(0, index, 0)

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

    def _retire(self) -> None:
        """Drop the rows that ended (already answered), move the survivors into slots 0..n-1 (state, settings and
        cache)."""
        if not any(row.reason for row in self.rows):
            return
        n = sum(not row.reason for row in self.rows)
        holes = [i for i in range(n) if self.rows[i].reason]  # each filled by a live row from beyond n
        tail = [i for i in range(n, len(self.rows)) if not self.rows[i].reason]
        if holes:
            src, dst = upload(torch.tensor(tail), torch.tensor(holes), device=self.device)
            width = max(self.rows[k].length for k in tail) + 1  # + 1: a step may be in flight
            self.cache.move(src, dst, min(width, self.max_len))
            for t in (self.hist, self.tok_in, self.pos, self.lengths, self.steps):
                t.index_copy_(0, dst, t.index_select(0, src))
            self.settings.move(src, dst)
            for k, j in zip(tail, holes):
                self.rows[j] = self.rows[k]
        del self.rows[n:]
        self._reset_free_rows()

    def _reset_free_rows(self) -> None:
        n = len(self.rows)
        for t in (self.pos, self.tok_in, self.lengths, self.steps, self.live):
            t[n:].zero_()  # padding rows of a bucket: position 0 of a free slot, never advanced
        self.live[:n] = 1
        self.settings.note([row.request.g for row in self.rows])

    def _finish(self, row: Row) -> None:
        from medtune.generate import Completion

        r = row.request
        assert row.reason is not None  # every row that finishes has its reason
        row.done = True
        text = self.tok.decode(row.tokens, skip_special_tokens=True).strip()
        if row.stream is not None and row.reason != "cancelled":
            row.emit_text(final=True)
        if r.on_done is not None:
            r.on_done(Completion(text, list(row.tokens), row.reason, len(r.ids)))


def upload(*parts: torch.Tensor, device) -> list[torch.Tensor]:
    """Host tensors (one dtype) on the device, in one asynchronous copy from pinned memory: a plain copy to a GPU
    waits for everything queued before it (the step in flight), which would undo the host/device overlap."""
    flat = torch.cat([p.reshape(-1) for p in parts])
    if device.type == "cuda":
        flat = flat.pin_memory().to(device, non_blocking=True)  # the pinned block is kept until the copy is done
    else:
        flat = flat.to(device)
    out, at = [], 0
    for p in parts:
        out.append(flat[at : at + p.numel()].view(p.shape))
        at += p.numel()
    return out


class _CaptureFailed(Exception):
    """Raised inside a step whose graph capture failed: the step is run again eagerly."""
