"""Small statistics for `medtune eval`: bootstrap intervals and a gibberish signal."""

from __future__ import annotations

import functools
import re
import unicodedata

import numpy as np

_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*|\d+(?:[.,]\d+)*|\S", re.UNICODE)
_TOKEN = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*|[^\w\s]+")  # a word (letters and digits, inner ' or -) or punctuation
_VOWELS = set("aeiouyAEIOUY")
_CONTRACTION = re.compile(r"(?:n['’]t|['’](?:s|ve|re|ll|d|m))$", re.IGNORECASE)

# closed word classes: "the of", "a is", "and and", "or." never occur in English prose
_DET, _CONJ, _AUX = {"the", "a", "an"}, {"and", "or", "nor"}, {"is", "are", "was", "were"}
_CLOSED = _DET | _CONJ | _AUX | {"of", "to", "in", "on", "at", "by", "for", "with", "from"}
_FUNCTION = _CLOSED | set(
    """but if then than so as into about over under between through during after before without within be been being
    has have had do does did will would can could should may might must not no it its this that these those there
    their they them he she his her him we our us you your i me my which who what when where why how all any each
    some such more most other only also very""".split()
)


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
        return len(tok) >= 7 and tok.lower() not in english_words()  # COPD, HIV are short; "HETATMIMPAUDIA" is not
    if letters >= 4 and not (set(tok) & _VOWELS):
        return True  # a long run of consonants
    if sum(c.isupper() for c in tok[1:]) >= 3 and not tok.isupper():
        return True  # inner capitals: "rRPPpAAA"
    return False


@functools.cache
def english_words() -> frozenset[str]:
    """The vocabulary: the English dictionary that the pyspellchecker package ships (about 160,000 lowercase words,
    inflections and common medical terms included; MIT, no dependencies). A maintained package rather than a word
    list of our own; it holds 96.5% of SCOWL's size-60 list, which this signal was first set on."""
    from spellchecker import SpellChecker

    return frozenset(SpellChecker(language="en", distance=1).word_frequency.keys())


def word_kind(w: str) -> int:
    """1: an English word; -1: no word ("immuneyl", "gentWhengn", "toothWh"); 0: can't tell (numbers, codes, single
    letters, abbreviations such as COPD, IgE or mmHg, and capitalized unknowns: names, eponyms, drugs)."""
    if any(c.isdigit() for c in w):
        return 0
    base = _CONTRACTION.sub("", w)  # isn't, they've, patient's
    if base != w:
        return 1 if base.lower() in ("ca", "wo", "sha") else word_kind(base)  # can't, won't, shan't
    parts = [p for p in re.split(r"['’-]", w) if p]
    if len(parts) > 1:  # hyphenated words: one bad part makes the whole a non-word
        kinds = [word_kind(p) for p in parts]
        return -1 if -1 in kinds else max(kinds)
    plain_case = w.islower() or w.isupper() or w[1:].islower()
    if w.lower() in english_words():
        return 1 if plain_case else (0 if len(w) <= 4 else -1)
    if len(w) == 1 or (w.isupper() and len(w) <= 6) or (w[0].isupper() and w[1:].islower()):
        return 0
    return 0 if not w.islower() and not w.isupper() and len(w) <= 4 else -1


def _broken_pairs(tokens: list[str]) -> int:
    """Adjacent tokens that English never puts together: a closed-class word twice ("and and", "is is"), an article
    before a closed-class word or a comma or full stop ("a is", "the ,"), a conjunction before another or before the
    end of a sentence ("and or", "and."); and an answer that opens with a lowercase "and", "or" or "is"."""
    low = [t.lower() for t in tokens]
    broken = int(next((t for t in tokens if t[0].isalnum()), "") in _CONJ | _AUX)
    for a, raw, b in zip(low, tokens, low[1:]):
        if a == b and (a in _CLOSED or not a[0].isalnum()):
            broken += 1
        elif a in _DET and (a != "a" or raw == "a") and (b in _CLOSED or b in {".", ",", ";", "!", "?"}):
            broken += 1  # "A and B" (vitamins, hepatitis types, blood groups) is not an article
        elif a in _CONJ and (b in _CONJ or b in {".", ";", "!", "?"}):
            broken += 1
    return broken


def gibberish_reason(text: str) -> str | None:
    """Why an answer is word salad, or None for one that reads as language: mostly punctuation (",,,,,"); most words
    in no vocabulary (random token soup); few function words among unknown words (soup of word pieces); function
    words in orders English never has ("and and is is", "the of"); conjunction soup; function words only ("and");
    runs of made-up words. Set on WikiDoc's 5,942 questions and 5,942 answers (2 flagged: lists of rare medical
    terms), medtune's sample answers (none), random token soup (99%) and the tiny preset's answers (all of its random
    base model's, 96 of 100 of its tuned model's). English words in a random order that happen to fit pass."""
    tokens = _TOKEN.findall(text)
    words = [t for t in tokens if t[0].isalnum()]
    chars = [c for c in text if not c.isspace()]
    if len(chars) >= 3 and sum(not c.isalnum() for c in chars) >= len(chars) / 2:
        return "punctuation"
    kinds = [word_kind(w) for w in words]
    bad = sum(c == "\ufffd" or (unicodedata.category(c) == "Cc" and c not in "\n\t\r") for c in text)
    real, unknown = kinds.count(1), kinds.count(-1) + bad
    scored = real + unknown
    if scored >= 5 and real < (0.6 if scored >= 10 else 0.5) * scored:
        return "non-words"
    low = [w.lower() for w in words]
    if len(words) >= 10 and real < 0.8 * scored and sum(w in _FUNCTION for w in low) < 0.1 * len(words):
        return "no grammar"
    broken = _broken_pairs(tokens)
    if broken >= 2 and broken >= 0.05 * len(words):
        return "broken grammar"
    if len(words) >= 8 and sum(w in _CONJ for w in low) > 0.3 * len(words):
        return "conjunction soup"
    if words and all(w in _CLOSED for w in low):
        return "closed-class words only"
    if _made_up_words(text):
        return "made-up words"
    return None


def _made_up_words(text: str, run: int = 3, share: float = 0.2) -> bool:
    """`run` made-up words in a row ("HETATMIMPAUDIA PROVOKATIONSWERTE XKCDZZQ", "xqzt xqzt xqzt"), or more than
    `share` of them. Measured on letters and digits only, so abbreviations, doses and lab values do not count."""
    words = [t for t in _WORD.findall(text) if any(c.isalnum() for c in t)]
    flags = [_nonword(w) for w in words]
    longest = cur = 0
    for f in flags:
        cur = cur + 1 if f else 0
        longest = max(longest, cur)
    return longest >= run or (len(words) >= 10 and sum(flags) / len(words) > share)


def is_gibberish(text: str) -> bool:
    """An answer that is word salad: gibberish_reason gives a reason."""
    return gibberish_reason(text) is not None


def gibberish_share(answers: list[str]) -> float | None:
    """Share of answers that are word salad (None: no answers)."""
    return sum(map(is_gibberish, answers)) / len(answers) if answers else None
