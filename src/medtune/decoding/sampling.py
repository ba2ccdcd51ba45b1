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
    """A float in [0, 1) for each (seed, step) pair: the same numbers on every device and in every batch."""
    x = _mix32((seed & M32) ^ _mix32((step * 0x9E3779B1 + 0x7F4A7C15) & M32))
    x = _mix32(x ^ ((seed >> 32) & M32))
    return (x >> 8).to(torch.float32) / float(1 << 24)


@dataclass
class RowSettings:
    """Per-row sampling settings as device tensors ([B] each), rebuilt when rows join or leave the batch."""
    greedy: torch.Tensor      # bool
    temperature: torch.Tensor
    top_p: torch.Tensor
    top_k: torch.Tensor       # int64, 0: no limit
    min_p: torch.Tensor
    penalty: torch.Tensor     # repetition penalty, 1: off
    seed: torch.Tensor        # int64
    max_top_k: int            # host: the largest top_k of the rows (0 if any row has none)
    any_penalty: bool
    no_repeat: tuple[int, ...]  # host: the no-repeat n-gram size of each row (0: off)

    @classmethod
    def build(cls, settings: list, seeds: list[int], device) -> "RowSettings":
        greedy = [g.greedy or g.temperature < MIN_TEMPERATURE for g in settings]
        f = lambda xs: torch.tensor(xs, dtype=torch.float32).to(device, non_blocking=True)  # noqa: E731
        i = lambda xs: torch.tensor(xs, dtype=torch.int64).to(device, non_blocking=True)  # noqa: E731
        ks = [g.top_k for g in settings]
        return cls(greedy=torch.tensor(greedy).to(device, non_blocking=True),
                   temperature=f([max(g.temperature, MIN_TEMPERATURE) for g in settings]),
                   top_p=f([g.top_p for g in settings]), top_k=i(ks), min_p=f([g.min_p for g in settings]),
                   penalty=f([g.repetition_penalty for g in settings]), seed=i(seeds),
                   max_top_k=0 if any(k <= 0 for k in ks) else max(ks),
                   any_penalty=any(g.repetition_penalty != 1.0 for g in settings),
                   no_repeat=tuple(g.no_repeat_ngram for g in settings))


def repetition_penalty(logits: torch.Tensor, history: torch.Tensor, lengths: torch.Tensor,
                       penalty: torch.Tensor) -> torch.Tensor:
    """model.generate's repetition penalty over each row's tokens so far (prompt and answer): a present token's
    logit is divided by the penalty (multiplied, when negative). history [B, W]: token ids, valid below lengths."""
    col = torch.arange(history.shape[1], device=history.device)
    ids = torch.where(col[None, :] < lengths[:, None], history, history[:, :1])  # padding repeats a present token
    present = logits.gather(1, ids)
    p = penalty[:, None]
    return logits.scatter(1, ids, torch.where(present < 0, present * p, present / p))


def ban_repeated_ngrams(logits: torch.Tensor, history: torch.Tensor, lengths: torch.Tensor,
                        sizes: tuple[int, ...]) -> torch.Tensor:
    """model.generate's no_repeat_ngram_size per row: a token that would complete an n-gram already present in the
    row's tokens gets -inf."""
    for n in sorted(set(sizes) - {0}):
        rows = torch.tensor([s == n for s in sizes], device=logits.device)
        w = history.shape[1]
        if w < n:
            continue
        last = lengths[:, None] - (n - 1) + torch.arange(n - 1, device=logits.device)[None, :]  # [B, n-1]
        tail = history.gather(1, last.clamp(min=0))
        starts = torch.arange(w - n + 1, device=logits.device)
        match = (starts[None, :] + n <= lengths[:, None]) & rows[:, None] & (lengths[:, None] >= n)
        for j in range(n - 1):
            match &= history[:, j:j + w - n + 1] == tail[:, j:j + 1]
        hits = torch.zeros_like(logits).scatter_add_(1, history[:, n - 1:], match.float())
        logits = logits.masked_fill(hits > 0, float("-inf"))  # the token that followed a matching (n-1)-gram
    return logits


def sample(logits: torch.Tensor, s: RowSettings, steps: torch.Tensor, history: torch.Tensor | None = None,
           lengths: torch.Tensor | None = None) -> torch.Tensor:
    """The next token of each row ([B] int64) from logits [B, V] (float32). steps: each row's count of generated
    tokens so far (the position of this draw in its stream)."""
    if history is not None and s.any_penalty:
        logits = repetition_penalty(logits, history, lengths, s.penalty)
    if history is not None and any(s.no_repeat):
        logits = ban_repeated_ngrams(logits, history, lengths, s.no_repeat)
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
