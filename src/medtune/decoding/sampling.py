"""Sampling for every row of a batch at once, on the device, each row with its own settings and seed.

Each row's draw at its n-th generated token uses a uniform number that is a hash of (seed, n) alone, so an answer
depends on its prompt and seed, never on which requests share its batch or how many steps ran before it joined.
(transformers' samplers and its continuous-batching manager draw with torch.multinomial from one global generator:
an answer would change with its batch-mates.) The order of the steps follows `model.generate`: repetition penalty,
no-repeat n-grams, then temperature, top-k, top-p and min-p.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

M32 = 0xFFFFFFFF
MIN_TEMPERATURE = 1e-2  # below this sampling is greedy decoding in all but name, and logits / temperature overflow


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finalizer on int64 tensors holding 32-bit values (products wrap; the low 32 bits are exact)."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & M32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & M32
    return x ^ (x >> 16)


def uniform(seed: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """A float in [0, 1) for each (seed, step) pair: the same numbers on every device and in every batch. One
    finalizer round over a multiplicative mix (about 14 element-wise kernels: each one counts in a decode step)."""
    x = ((seed ^ (seed >> 32)) * 0x9E3779B1 + step * 0x85EBCA77 + 0x165667B1) & M32
    return (_mix32(x) >> 8).to(torch.float32) / float(1 << 24)


@dataclass
class RowSettings:
    """Per-row sampling settings as device tensors ([rows] each: views of one float and one integer matrix, so that
    writing a batch of new rows is two copies and moving rows is two kernels), and what the host must know to lay out
    the work (the largest top-k, whether any row has a penalty or bans n-grams). The engine keeps one set for all its
    slots and updates it in place as rows join and leave, so a captured CUDA graph keeps reading current values."""

    floats: torch.Tensor  # [4, rows]: temperature, top_p, min_p, repetition penalty (1: off)
    ints: torch.Tensor  # [4, rows]: greedy (0/1), top_k (0: no limit), seed, no-repeat n-gram size (0: off)
    max_top_k: int = 0  # host: the largest top_k of the rows, rounded up to a power of 2 (0: some row has none)
    any_penalty: bool = False
    ngram_sizes: tuple[int, ...] = ()

    temperature = property(lambda self: self.floats[0])
    top_p = property(lambda self: self.floats[1])
    min_p = property(lambda self: self.floats[2])
    penalty = property(lambda self: self.floats[3])
    greedy = property(lambda self: self.ints[0].bool())
    top_k = property(lambda self: self.ints[1])
    seed = property(lambda self: self.ints[2])
    no_repeat = property(lambda self: self.ints[3])

    @classmethod
    def empty(cls, rows: int, device) -> "RowSettings":
        floats = torch.tensor([[1.0], [1.0], [0.0], [1.0]], device=device).repeat(1, rows)
        ints = torch.tensor([[1], [0], [0], [0]], dtype=torch.int64, device=device).repeat(1, rows)
        return cls(floats, ints)

    def write(self, start: int, settings: list, seeds: list[int]) -> None:
        """Rows start.. take these settings (GenerateConfigs) and seeds."""
        span = slice(start, start + len(settings))
        floats = torch.tensor(
            [
                [max(g.temperature, MIN_TEMPERATURE) for g in settings],
                [g.top_p for g in settings],
                [g.min_p for g in settings],
                [g.repetition_penalty for g in settings],
            ]
        )
        ints = torch.tensor(
            [
                [int(g.greedy or g.temperature < MIN_TEMPERATURE) for g in settings],
                [g.top_k for g in settings],
                list(seeds),
                [g.no_repeat_ngram for g in settings],
            ]
        )
        cuda = self.floats.device.type == "cuda"
        for dst, src in ((self.floats, floats), (self.ints, ints)):  # pinned + asynchronous: no wait for the device
            dst[:, span].copy_(src.pin_memory() if cuda else src, non_blocking=cuda)

    def note(self, settings: list) -> None:
        """The host's summary of the running rows' settings (what shapes the sampling work)."""
        ks = [g.top_k for g in settings]
        self.max_top_k = 0 if not ks or any(k <= 0 for k in ks) else 1 << (max(ks) - 1).bit_length()
        self.any_penalty = any(g.repetition_penalty != 1.0 for g in settings)
        self.ngram_sizes = tuple(sorted({g.no_repeat_ngram for g in settings} - {0}))

    def move(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        for t in (self.floats, self.ints):
            t.index_copy_(1, dst, t.index_select(1, src))

    def key(self) -> tuple:
        """What decides the shape of the sampling work (part of a CUDA graph's key)."""
        return self.max_top_k, self.any_penalty, self.ngram_sizes

    def view(self, b: int) -> "RowSettings":
        """Rows 0..b-1."""
        return RowSettings(self.floats[:, :b], self.ints[:, :b], *self.key())

    def take(self, rows: torch.Tensor) -> "RowSettings":
        """The rows at these indices."""
        return RowSettings(self.floats.index_select(1, rows), self.ints.index_select(1, rows), *self.key())


def repetition_penalty(
    logits: torch.Tensor, history: torch.Tensor, lengths: torch.Tensor, penalty: torch.Tensor
) -> torch.Tensor:
    """model.generate's repetition penalty over each row's tokens so far (prompt and answer): a present token's
    logit is divided by the penalty (multiplied, when negative). history [B, W]: token ids, valid below lengths."""
    col = torch.arange(history.shape[1], device=history.device)
    ids = torch.where(col[None, :] < lengths[:, None], history, history[:, :1])  # padding repeats a present token
    present = logits.gather(1, ids)
    p = penalty[:, None]
    return logits.scatter(1, ids, torch.where(present < 0, present * p, present / p))


def ban_repeated_ngrams(
    logits: torch.Tensor, history: torch.Tensor, lengths: torch.Tensor, sizes: torch.Tensor, distinct: tuple[int, ...]
) -> torch.Tensor:
    """model.generate's no_repeat_ngram_size per row (sizes, [B]; distinct: its nonzero values): a token that
    would complete an n-gram already present in the row's tokens gets -inf."""
    for n in distinct:
        rows = sizes == n
        w = history.shape[1]
        if w < n:
            continue
        last = lengths[:, None] - (n - 1) + torch.arange(n - 1, device=logits.device)[None, :]  # [B, n-1]
        tail = history.gather(1, last.clamp(min=0))
        starts = torch.arange(w - n + 1, device=logits.device)
        match = (starts[None, :] + n <= lengths[:, None]) & rows[:, None] & (lengths[:, None] >= n)
        for j in range(n - 1):
            match &= history[:, j : j + w - n + 1] == tail[:, j : j + 1]
        hits = torch.zeros_like(logits).scatter_add_(1, history[:, n - 1 :], match.float())
        logits = logits.masked_fill(hits > 0, float("-inf"))  # the token that followed a matching (n-1)-gram
    return logits


def sample(
    logits: torch.Tensor,
    s: RowSettings,
    steps: torch.Tensor,
    history: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """The next token of each row ([B] int64) from logits [B, V] (float32). steps: each row's count of generated
    tokens so far (the position of this draw in its stream)."""
    if history is not None and s.any_penalty:
        assert lengths is not None  # history is valid below lengths
        logits = repetition_penalty(logits, history, lengths, s.penalty)
    if history is not None and s.ngram_sizes:
        assert lengths is not None
        logits = ban_repeated_ngrams(logits, history, lengths, s.no_repeat, s.ngram_sizes)
    best = logits.argmax(-1)
    k = s.max_top_k if 0 < s.max_top_k < logits.shape[1] else logits.shape[1]
    vals, idx = torch.topk(logits / s.temperature[:, None], k)  # sorted, most likely first
    col = torch.arange(k, device=logits.device)
    vals = vals.masked_fill((s.top_k[:, None] > 0) & (col[None, :] >= s.top_k[:, None]), float("-inf"))
    probs = vals.softmax(-1)
    drop = (probs.cumsum(-1) - probs) >= s.top_p[:, None]  # keep the smallest set reaching top_p (at least one)
    drop |= probs < s.min_p[:, None] * probs[:, :1]
    cdf = probs.masked_fill(drop, 0.0).cumsum(-1)
    u = uniform(s.seed, steps) * cdf[:, -1]
    pick = torch.searchsorted(cdf, u[:, None], right=True).clamp_(max=k - 1)
    return torch.where(s.greedy, best, idx.gather(1, pick)[:, 0])
