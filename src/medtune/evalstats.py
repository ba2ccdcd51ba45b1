"""Small statistics for `medtune eval`: bootstrap intervals and a gibberish signal."""

from __future__ import annotations

import re

import numpy as np

_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*|\d+(?:[.,]\d+)*|\S", re.UNICODE)
_VOWELS = set("aeiouyAEIOUY")


def bootstrap_ci(values: list[float], n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05):
    """Percentile bootstrap interval of the mean: (low, high), or (None, None) for no values or no resamples."""
    x = np.asarray(values, dtype=float)
    if x.size == 0 or n_resamples < 1:
        return None, None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def _nonword(tok: str) -> bool:
    """A token no reader would take for a word, number, abbreviation or punctuation mark."""
    letters = sum(c.isalpha() for c in tok)
    if letters == 0:
        return False  # numbers and punctuation
    if len(tok) > 25:
        return True
    if tok.isupper():
        return len(tok) >= 7  # COPD, HIV, MRSA, BRCA are short; "HETATMIMPAUDIA" is not
    if letters >= 4 and not (set(tok) & _VOWELS):
        return True  # a long run of consonants
    if sum(c.isupper() for c in tok[1:]) >= 3 and not tok.isupper():
        return True  # inner capitals: "rRPPpAAA"
    return False


def is_gibberish(text: str, run: int = 3, share: float = 0.2) -> bool:
    """An answer that degenerates into non-words: `run` non-words in a row, or more than `share` of its words.
    Measured on letters and digits only, so medical abbreviations, doses and lab values do not count."""
    words = [t for t in _WORD.findall(text) if any(c.isalnum() for c in t)]
    if not words:
        return False
    flags = [_nonword(w) for w in words]
    longest = cur = 0
    for f in flags:
        cur = cur + 1 if f else 0
        longest = max(longest, cur)
    junk = sum(flags)
    return longest >= run or (len(words) >= 10 and junk / len(words) > share)


def gibberish_share(answers: list[str]) -> float | None:
    """Share of answers that degenerate into non-words (None: no answers)."""
    return sum(map(is_gibberish, answers)) / len(answers) if answers else None
