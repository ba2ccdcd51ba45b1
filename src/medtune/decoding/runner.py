"""The model on the device: the slot KV cache, each slot's state (its tokens, the token to feed next, its position,
length and count of generated tokens), the prefill and decode passes with their sampling, and their CUDA graphs.

Everything a step changes lives in fixed device tensors updated in place, so that a whole decode step (the forward,
the sampling, the update of every row's state) can be captured once per bucket as a CUDA graph and replayed: one
launch instead of hundreds of small kernels, which is what bounds a small model's eager step (NOTES.md: 25 ms a step
for SmolLM2-135M through model.generate, with well under 0.1 ms of memory traffic). So is the prefill of small
batches of short prompts, their first tokens sampled in the same graph."""

from __future__ import annotations

import logging
from typing import Any

import torch

from medtune.decoding import scheduler
from medtune.decoding.fused import RotaryPatch, fuse_for_decoding
from medtune.decoding.kvcache import SlotCache, use_slots
from medtune.decoding.sampling import RowSettings, sample
from medtune.model import decoder_and_head, decoder_output

log = logging.getLogger("medtune.decoding")


class ModelRunner:
    """Runs the model for the engine: rows 0..n-1 of a decode step are slots 0..n-1; one slot more than rows (the
    scratch slot) takes the padding rows of a prefill bucket."""

    def __init__(self, model, slots: int, max_len: int, pad: int, graphs: bool | None = None):
        self.model, self.max_len, self.pad = model, max_len, pad
        self.device = next(model.parameters()).device
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.head = (decoder_and_head(model) or (None,))[0], base.get_output_embeddings()
        use_slots(model)
        fuse_for_decoding(model)
        self.rope = RotaryPatch.of(model)  # entered by the engine around each step
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
        pw, pr = min(scheduler.PREFILL_GRAPH_WIDTH, self.max_len), scheduler.PREFILL_GRAPH_ROWS
        self.p_ids, self.p_last, self.p_rows, self.p_len, self.p_live = z(pr, pw), z(pr), z(pr), z(pr), z(pr)
        pinned = self.device.type == "cuda"
        self.host = [torch.zeros(2 * self.slots, dtype=torch.long, pin_memory=pinned) for _ in range(2)]
        self.flip = 0
        self.graphs: dict = {}
        self.use_graphs = self.device.type == "cuda" if graphs is None else graphs
        self.pool: Any = None  # the CUDA graphs' memory pool (torch.cuda.graph_pool_handle)

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

    # ------------------------------------------------------------ rows joining, leaving, ending

    def join(self, n0: int, rows: list, running: list) -> None:
        """Rows (rows.Row) join in slots n0..: their settings and seeds, then their prompts (prefill). running: the
        settings (GenerateConfigs) of every running row, these included."""
        self.settings.write(n0, [row.request.g for row in rows], [row.seed for row in rows])
        self.settings.note(running)
        lens = [len(row.request.ids) for row in rows]
        for group in scheduler.prefill_groups(lens, self.max_len, self.use_graphs):
            self._prefill([row.request.ids for row in rows[group]], n0 + group.start)

    def end(self, rows: list[int]) -> None:
        """These rows ended: their slots stop advancing (freed at the next admission)."""
        (index,) = upload(torch.tensor(rows), device=self.device)
        self.live.index_fill_(0, index, 0)

    def move(self, src: list[int], dst: list[int], width: int) -> None:
        """Slots src -> dst (state, settings and the cache's first `width` positions)."""
        s, d = upload(torch.tensor(src), torch.tensor(dst), device=self.device)
        self.cache.move(s, d, min(width, self.max_len))
        for t in (self.hist, self.tok_in, self.pos, self.lengths, self.steps):
            t.index_copy_(0, d, t.index_select(0, s))
        self.settings.move(s, d)

    def reset_free(self, n: int, running: list) -> None:
        """Rows 0..n-1 run (their settings: running); the slots beyond are free."""
        for t in (self.pos, self.tok_in, self.lengths, self.steps, self.live):
            t[n:].zero_()  # padding rows of a bucket: position 0 of a free slot, never advanced
        self.live[:n] = 1
        self.settings.note(running)

    # ------------------------------------------------------------ prefill

    def _prefill_logits(self, ids: torch.Tensor, last: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Prompts ids [B, W] (right-padded) into slots `rows`; the logits after each prompt's token `last`, [B, V]."""
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

    def _prefill(self, prompts: list[list[int]], n0: int) -> None:
        """Prompts into slots n0..; a CUDA graph per (rows, width) bucket (scheduler.prefill_bucket)."""
        b, lens = len(prompts), [len(p) for p in prompts]
        bb, wb, graph = scheduler.prefill_bucket(lens, self.max_len, self.use_graphs)
        ids = torch.full((bb, wb), self.pad, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, : lens[i]] = torch.tensor(p, dtype=torch.long)
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

    def launch(self, rows: list, joined: tuple[int, int] | None) -> tuple[torch.Tensor, Any]:
        """Queue one decode step for `rows` (in slots 0..n-1) and the copy of the step's tokens to the host: each
        row's new token, then the first tokens of the rows that joined (n0, count). Returns the host tensor and the
        event to wait for (None on the CPU, where the copy is done)."""
        n = len(rows)
        b, width = scheduler.decode_bucket(rows, self.slots, self.max_len)
        try:
            self._replay(("decode", b, width, *self.settings.key()), lambda: self._decode_step(b, width))
        except _CaptureFailed:
            self._decode_step(b, width)
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
        return host[: n + j], event

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

    # ------------------------------------------------------------ CUDA graphs

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
