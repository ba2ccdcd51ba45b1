"""Overlap measures for the data audit (medtune.audit): near duplicates by MinHash with LSH banding over word
shingles, and containment of evaluation records' word n-grams in the training split (contamination). Hashes are
stable across processes (blake2b), so results do not depend on PYTHONHASHSEED."""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict

import numpy as np

from medtune.phi.guard import text_fields

NGRAM = 8  # words per n-gram for contamination
SHINGLE = 5  # words per shingle for near duplicates
NUM_PERM = 128  # MinHash permutations: 16 bands of 8 rows, so pairs above ~0.7 Jaccard become candidates
BANDS = 16
NEAR_THRESHOLD = 0.8  # estimated Jaccard at which two records count as near duplicates
CONTAMINATED = 0.5  # containment above which an eval record counts as contaminated
EXAMPLES = 10  # example rows or pairs kept per finding
_MASK64 = (1 << 64) - 1
_WORDS = re.compile(r"\w+")


# ---------------------------------------------------------------- hashing helpers


class _WordHasher:
    """Stable 64-bit hashes of words (blake2b, so the same in every process), cached."""

    def __init__(self):
        self.cache: dict[str, int] = {}

    def __call__(self, words: list[str]) -> np.ndarray:
        cache, out = self.cache, []
        for w in words:
            h = cache.get(w)
            if h is None:
                h = cache[w] = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
            out.append(h)
        return np.array(out, dtype=np.uint64)


_POWERS = np.array([pow(0x9E3779B97F4A7C15, k, 1 << 64) for k in range(max(NGRAM, SHINGLE))], dtype=np.uint64)


def _ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes of every run of n consecutive words (a polynomial in the word hashes, wrapping mod 2**64)."""
    if len(word_hashes) < n:
        return np.empty(0, dtype=np.uint64)
    windows = np.lib.stride_tricks.sliding_window_view(word_hashes, n)
    with np.errstate(over="ignore"):
        return (windows * _POWERS[:n]).sum(axis=1, dtype=np.uint64)


def _record_ngrams(r: dict, hasher: _WordHasher, n: int) -> np.ndarray:
    """Unique n-gram hashes of a record, each field on its own (no n-gram spans two fields)."""
    parts = [_ngram_hashes(hasher(_WORDS.findall(text.lower())), n) for text in text_fields(r).values()]
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.uint64)


def _content_key(r: dict) -> str:
    return " ".join(_WORDS.findall(" ".join(text_fields(r).values()).lower()))


# ---------------------------------------------------------------- near duplicates (MinHash + LSH)


def _minhash(shingle_sets: list[np.ndarray], seed: int = 1) -> np.ndarray:
    """MinHash signatures (one row per set, NUM_PERM columns) with multiply-shift hashes h -> (a*h + b) >> 32."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=NUM_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63, size=NUM_PERM, dtype=np.uint64)
    sigs = np.full((len(shingle_sets), NUM_PERM), np.iinfo(np.uint32).max, dtype=np.uint32)
    sizes = np.array([len(s) for s in shingle_sets])
    nonempty = np.flatnonzero(sizes)
    if len(nonempty) == 0:
        return sigs
    chunk: list[int] = []
    count = 0

    def flush(idx: list[int]) -> None:
        flat = np.concatenate([shingle_sets[i] for i in idx])
        with np.errstate(over="ignore"):
            hashed = ((flat[:, None] * a[None, :] + b[None, :]) >> np.uint64(32)).astype(np.uint32)
        starts = np.concatenate([[0], np.cumsum(sizes[idx])[:-1]])
        sigs[idx] = np.minimum.reduceat(hashed, starts, axis=0)

    for i in nonempty:  # chunks of ~30k shingles keep the (shingles x permutations) matrix small
        chunk.append(int(i))
        count += sizes[i]
        if count > 30_000:
            flush(chunk)
            chunk, count = [], 0
    if chunk:
        flush(chunk)
    return sigs


def near_duplicate_pairs(texts: list[str], threshold: float = NEAR_THRESHOLD) -> list[tuple[int, int, float]]:
    """Pairs (i, j, estimated Jaccard) of texts whose word-shingle sets (lower case, punctuation ignored) are at
    least `threshold` similar, i < j. Texts with fewer than SHINGLE words are one shingle; texts with no word are in
    no pair."""
    hasher = _WordHasher()
    sets = []
    for t in texts:
        words = hasher(_WORDS.findall(t.lower()))
        if len(words) == 0:
            sets.append(np.empty(0, dtype=np.uint64))
            continue
        sh = _ngram_hashes(words, SHINGLE) if len(words) >= SHINGLE else _ngram_hashes(words, len(words))
        sets.append(np.unique(sh))
    sigs = _minhash(sets)
    rows = NUM_PERM // BANDS
    candidates: set[tuple[int, int]] = set()
    for band in range(BANDS):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        block = np.ascontiguousarray(sigs[:, band * rows : (band + 1) * rows])
        for i in range(len(texts)):
            if len(sets[i]):
                buckets[block[i].tobytes()].append(i)
        for members in buckets.values():
            if len(members) < 2:
                continue
            if len(members) > 50:  # a crowded bucket: compare with its first member only (keeps it linear)
                candidates.update((members[0], m) for m in members[1:])
            else:
                candidates.update(
                    (members[x], members[y]) for x in range(len(members)) for y in range(x + 1, len(members))
                )
    pairs = []
    for i, j in sorted(candidates):
        est = float(np.mean(sigs[i] == sigs[j]))
        if est >= threshold:
            pairs.append((i, j, round(est, 3)))
    return pairs


# ---------------------------------------------------------------- contamination


def containment(eval_records: list[dict], train_records: list[dict], n: int = NGRAM) -> dict:
    """Share of each eval record's word n-grams that also occur in the train records. N-grams found in more than 1%
    of the train records (and at least 10) are common phrasing or a shared template, not a leak: they are left out
    of both counts. Records shorter than n words in every field count 1.0 when their whole text is in train."""
    hasher = _WordHasher()
    train_sets = [_record_ngrams(r, hasher, n) for r in train_records]
    flat = np.concatenate(train_sets) if train_sets else np.empty(0, dtype=np.uint64)
    grams, df = np.unique(flat, return_counts=True)
    common_limit = max(10, math.ceil(0.01 * len(train_records)))
    common = grams[df > common_limit]
    train_grams = grams[df <= common_limit]
    train_keys = {_content_key(r) for r in train_records}
    eval_sets = [_record_ngrams(r, hasher, n) for r in eval_records]
    sizes = np.array([len(g) for g in eval_sets], dtype=np.int64)
    flat = np.concatenate(eval_sets) if eval_sets else np.empty(0, dtype=np.uint64)
    owner = np.repeat(np.arange(len(eval_sets)), sizes)  # one isin over all eval n-grams, then sums per record
    keep = ~np.isin(flat, common) if len(common) else np.ones(len(flat), dtype=bool)
    found = np.isin(flat[keep], train_grams)
    kept = np.bincount(owner[keep], minlength=len(eval_sets))
    hits = np.bincount(owner[keep], weights=found, minlength=len(eval_sets))
    scores = []
    for i, r in enumerate(eval_records):
        if kept[i]:
            scores.append(float(hits[i] / kept[i]))
        else:
            scores.append(1.0 if _content_key(r) in train_keys else 0.0)
    return {"scores": scores, "common_ngrams_ignored": int(len(common))}


def contamination_report(name: str, eval_rows: list[tuple[int, dict]], train_records: list[dict]) -> dict:
    result = containment([r for _, r in eval_rows], train_records)
    scores = result["scores"]
    train_keys = {_content_key(r) for r in train_records}
    ranked = sorted(zip(scores, (n for n, _ in eval_rows)), key=lambda x: (-x[0], x[1]))
    return {
        "name": name,
        "records": len(eval_rows),
        "ngram": NGRAM,
        "threshold": CONTAMINATED,
        "above_threshold": sum(s > CONTAMINATED for s in scores),
        "exact_in_train": sum(_content_key(r) in train_keys for _, r in eval_rows),
        "mean": round(float(np.mean(scores)), 4) if scores else 0.0,
        "common_ngrams_ignored": result["common_ngrams_ignored"],
        "examples": [{"row": row, "containment": round(s, 3)} for s, row in ranked[:EXAMPLES] if s > 0],
    }
