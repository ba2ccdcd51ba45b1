"""Data audit: what a data set holds before training on it - invalid rows, exact and near duplicates, token
lengths, overlap of evaluation data with the training split (contamination), and protected health information.

Records are loaded with medtune.data.load_records, so local files of every format, hub ids and column mappings
behave as in `train`, and the split is the one `train` makes (split_records with the same fractions and seed).
Problems that would stop `train` are reported here, not raised. The outputs (audit.json, audit.md, lengths.png)
name rows by number (from 1, as in `train`'s messages) and never copy a record's text.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from medtune import phi
from medtune.config import DataConfig
from medtune.data import (FIELDS, drop_duplicates, encode, load_records, question_key, record_problems,
                          render_chat_prompt, split_records)
from medtune.errors import MedtuneError
from medtune.files import atomic_write_bytes, atomic_write_json, atomic_write_text

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

def _text(r: dict, field: str) -> str:
    v = r.get(field)
    return v if isinstance(v, str) else ""


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
    parts = [_ngram_hashes(hasher(_WORDS.findall(_text(r, f).lower())), n) for f in FIELDS]
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.uint64)


def _content_key(r: dict) -> str:
    return " ".join(_WORDS.findall(" ".join(_text(r, f) for f in FIELDS).lower()))


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
        chunk.append(i)
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
        block = np.ascontiguousarray(sigs[:, band * rows:(band + 1) * rows])
        for i in range(len(texts)):
            if len(sets[i]):
                buckets[block[i].tobytes()].append(i)
        for members in buckets.values():
            if len(members) < 2:
                continue
            if len(members) > 50:  # a crowded bucket: compare with its first member only (keeps it linear)
                candidates.update((members[0], m) for m in members[1:])
            else:
                candidates.update((members[x], members[y]) for x in range(len(members))
                                  for y in range(x + 1, len(members)))
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
    scores = []
    for r in eval_records:
        g = _record_ngrams(r, hasher, n)
        if len(common):
            g = g[~np.isin(g, common, assume_unique=True)]
        if len(g):
            scores.append(float(np.isin(g, train_grams, assume_unique=True).mean()))
        else:
            scores.append(1.0 if _content_key(r) in train_keys else 0.0)
    return {"scores": scores, "common_ngrams_ignored": int(len(common))}


def _contamination_report(name: str, eval_rows: list[tuple[int, dict]], train_records: list[dict]) -> dict:
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


# ---------------------------------------------------------------- the audit

def _length_stats(lengths: list[int], max_length: int) -> dict:
    if not lengths:
        return {"count": 0}
    a = np.array(lengths)
    return {"count": len(lengths), "min": int(a.min()), "median": float(np.median(a)),
            "mean": round(float(a.mean()), 1), "p95": float(np.percentile(a, 95)), "max": int(a.max()),
            "total_tokens": int(a.sum()), "max_length": max_length, "over_max_length": int((a > max_length).sum()),
            "over_max_length_share": round(float((a > max_length).mean()), 4)}


def _histogram_png(lengths: list[int], max_length: int, title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.8), dpi=100)
    xlabel = "tokens per example (prompt + answer + EOS)"
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if lengths:
        # the axis ends a little past max_length (or the 99th percentile); longer examples go in the last bin
        top = max(max_length * 1.25, float(np.percentile(lengths, 99)))
        clipped = np.minimum(np.array(lengths, dtype=float), top)
        beyond = int((np.array(lengths) > top).sum())
        ax.hist(clipped, bins=min(60, max(5, len(set(lengths)))), color="#4c72b0")
        if beyond:
            xlabel += f"\n{beyond} examples longer than {int(top)} (up to {max(lengths)}) are counted in the last bin"
    ax.axvline(max_length, color="#c44e52", linestyle="--", label=f"data.max_length = {max_length}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("examples")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _encode_cfg(cfg: DataConfig, tokenizer) -> DataConfig:
    """The config to tokenize with: in chat format, the chat template rendered once (as `train` does), on a copy
    so that neither the caller's config nor the tokenizer changes."""
    if cfg.prompt_format == "chat" and not cfg.chat_prompt:
        return dataclasses.replace(cfg, chat_prompt=render_chat_prompt(tokenizer, cfg))
    return cfg


def audit(cfg: DataConfig, tokenizer, out_dir: Path, against: list[str] | None = None, log=print) -> dict:
    """Audit the data set of `cfg` and write out_dir/audit.json, audit.md and lengths.png; returns the audit dict.
    `against`: evaluation files (same column mapping) checked for overlap with the training split."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    records = load_records(cfg)
    source_rows = len(records)
    if cfg.max_records:
        records = records[: cfg.max_records]
    log(f"audit: {len(records):,} records from {cfg.source}")
    report: dict = {
        "source": cfg.source,
        "records": len(records),
        "source_rows": source_rows,
        "columns": {"instruction": cfg.instruction_column, "input": cfg.input_column, "output": cfg.output_column},
    }

    # invalid rows: what `train` would stop on
    problems = record_problems(records)
    by_problem: dict[str, list[int]] = defaultdict(list)
    for row, field, problem in problems:
        by_problem[f"{field} {problem.replace('type:', 'is ')}"].append(row)
    bad_rows = {row for row, _, _ in problems}
    grouped = {k: {"count": len(v), "rows": v[:EXAMPLES]} for k, v in sorted(by_problem.items())}
    report["invalid"] = {"rows": len(bad_rows), "by_problem": grouped}
    valid = [(n, r) for n, r in enumerate(records, 1) if n not in bad_rows]
    row_of = {id(r): n for n, r in valid}

    # exact duplicates (the ones `train` drops) and questions asked more than once with different answers
    first_row: dict[tuple, int] = {}
    dup_pairs = []
    for n, r in valid:
        key = (r["instruction"], r["input"], r["output"])
        if key in first_row:
            dup_pairs.append([first_row[key], n])
        else:
            first_row[key] = n
    unique, n_dups = drop_duplicates([r for _, r in valid])
    answers: dict[str, set] = defaultdict(set)
    for r in unique:
        answers[question_key(r)].add(r["output"].strip())
    report["duplicates"] = {"exact": n_dups, "exact_examples": dup_pairs[:EXAMPLES],
                            "questions_with_several_answers": sum(len(a) > 1 for a in answers.values())}

    # near duplicates among the unique records
    t = time.perf_counter()
    texts = ["\n".join(_text(r, f) for f in FIELDS) for r in unique]  # exact duplicates are gone already
    pairs = near_duplicate_pairs(texts)
    pairs.sort(key=lambda p: (-p[2], row_of[id(unique[p[0]])]))
    in_pairs = {i for p in pairs for i in p[:2]}
    report["duplicates"].update({
        "near": len(pairs), "near_records": len(in_pairs), "near_threshold": NEAR_THRESHOLD,
        "near_method": f"MinHash ({NUM_PERM} permutations, LSH {BANDS} bands) over {SHINGLE}-word shingles",
        "near_examples": [{"rows": sorted([row_of[id(unique[i])], row_of[id(unique[j])]]), "jaccard": est}
                          for i, j, est in pairs[:EXAMPLES]]})
    log(f"audit: duplicates exact {n_dups:,}, near {len(pairs):,} pairs ({time.perf_counter() - t:.1f}s)")

    # token lengths, as `train` encodes them
    t = time.perf_counter()
    enc_cfg = _encode_cfg(cfg, tokenizer)
    lengths, long_rows = [], []
    for r in unique:
        n_tokens = len(encode(r, tokenizer, enc_cfg)["input_ids"])
        lengths.append(n_tokens)
        if n_tokens > cfg.max_length:
            long_rows.append(row_of[id(r)])
    report["tokens"] = _length_stats(lengths, cfg.max_length)
    report["tokens"]["over_max_length_rows"] = long_rows[:EXAMPLES]
    report["tokens"]["overlong"] = cfg.overlong
    log(f"audit: token lengths ({time.perf_counter() - t:.1f}s)")

    # contamination: the test split, and each --against file, against the train split
    t = time.perf_counter()
    report["split"] = {"val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction, "seed": cfg.seed}
    report["contamination"] = []
    try:
        splits = split_records(unique, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    except MedtuneError as e:
        report["split"]["error"] = str(e)
        splits = None
    if splits is not None:
        report["split"].update({k: len(v) for k, v in splits.items()})
        train = splits["train"]
        if splits["test"]:
            report["contamination"].append(_contamination_report(
                "test split", [(row_of[id(r)], r) for r in splits["test"]], train))
        for path in against or []:
            eval_records = load_records(dataclasses.replace(cfg, source=str(path), max_records=None))
            report["contamination"].append(_contamination_report(str(path), list(enumerate(eval_records, 1)), train))
    log(f"audit: contamination ({time.perf_counter() - t:.1f}s)")

    # protected health information
    t = time.perf_counter()
    findings = phi.scan_records(records)
    report["phi"] = {"counts": phi.count_by_type(findings), "total": len(findings),
                     "rows": len({f.row for f in findings}), "findings": [f.to_dict() for f in findings]}
    log(f"audit: PHI scan ({time.perf_counter() - t:.1f}s)")

    report["seconds"] = round(time.perf_counter() - t0, 2)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "audit.json", report)
    atomic_write_text(out_dir / "audit.md", render_markdown(report))
    png = _histogram_png(lengths, cfg.max_length, f"Token lengths: {Path(cfg.source).name}")
    atomic_write_bytes(out_dir / "lengths.png", png)
    return report


# ---------------------------------------------------------------- summaries

def _rows(rows: list) -> str:
    return ", ".join(str(r) for r in rows) if rows else "-"


def summary_lines(a: dict) -> list[str]:
    """A few lines for the terminal."""
    head = f"records: {a['records']:,}"
    if a["records"] != a["source_rows"]:
        head += f" (first {a['records']:,} of {a['source_rows']:,})"
    lines = [head]
    inv = a["invalid"]
    if inv["rows"]:
        kinds = "; ".join(f"{k}: {v['count']} (rows {_rows(v['rows'])})" for k, v in inv["by_problem"].items())
        lines.append(f"invalid rows: {inv['rows']:,} - train stops on these: {kinds}")
    else:
        lines.append("invalid rows: none")
    d = a["duplicates"]
    lines.append(f"duplicates: {d['exact']:,} exact (train drops them), {d['near']:,} near-duplicate pairs "
                 f"(Jaccard >= {d['near_threshold']}) over {d['near_records']:,} records; "
                 f"{d['questions_with_several_answers']:,} questions with several answers")
    tk = a["tokens"]
    if tk.get("count"):
        lines.append(f"tokens: min {tk['min']}, median {tk['median']:g}, p95 {tk['p95']:g}, max {tk['max']}; "
                     f"{tk['over_max_length']:,} longer than max_length {tk['max_length']} "
                     f"({tk['over_max_length_share']:.1%}, train will {tk['overlong']} them)")
    if "error" in a["split"]:
        lines.append(f"split: {a['split']['error']}")
    for c in a["contamination"]:
        lines.append(f"overlap with train, {c['name']}: {c['above_threshold']:,} of {c['records']:,} records share "
                     f"more than {c['threshold']:.0%} of their {c['ngram']}-grams with train (mean {c['mean']:.3f}, "
                     f"{c['exact_in_train']:,} exact copies)")
    p = a["phi"]
    if p["total"]:
        kinds = ", ".join(f"{k} {v}" for k, v in p["counts"].items())
        lines.append(f"PHI: {p['total']:,} possible identifiers in {p['rows']:,} rows ({kinds})")
    else:
        lines.append("PHI: none found")
    lines.append(f"audit took {a['seconds']:.1f}s")
    return lines


def render_markdown(a: dict) -> str:
    """audit.md: the same content as audit.json, for reading. Rows are numbered from 1; no record text."""
    out = [f"# Data audit: {a['source']}", "", *[f"- {line}" for line in summary_lines(a)], ""]
    cols = a["columns"]
    out += ["## Columns", "", f"instruction <- `{cols['instruction']}`, input <- `{cols['input']}`, "
                              f"output <- `{cols['output']}`", ""]
    out += ["## Invalid rows", ""]
    if a["invalid"]["by_problem"]:
        out += ["| problem | rows | examples |", "|---|---:|---|"]
        out += [f"| {k} | {v['count']} | {_rows(v['rows'])} |" for k, v in a["invalid"]["by_problem"].items()]
    else:
        out.append("None.")
    d = a["duplicates"]
    out += ["", "## Duplicates", "", f"Exact duplicates: {d['exact']} (row pairs: "
            f"{'; '.join(f'{x}-{y}' for x, y in d['exact_examples']) or '-'}).", "",
            f"Near duplicates ({d['near_method']}, estimated Jaccard >= {d['near_threshold']}): {d['near']} pairs.", ""]
    if d["near_examples"]:
        out += ["| rows | Jaccard |", "|---|---:|"]
        out += [f"| {e['rows'][0]}, {e['rows'][1]} | {e['jaccard']:.2f} |" for e in d["near_examples"]]
    tk = a["tokens"]
    out += ["", "## Token lengths", "", "![token lengths](lengths.png)", ""]
    if tk.get("count"):
        out += ["| min | median | mean | p95 | max | over max_length |", "|---:|---:|---:|---:|---:|---:|",
                f"| {tk['min']} | {tk['median']:g} | {tk['mean']:g} | {tk['p95']:g} | {tk['max']} | "
                f"{tk['over_max_length']} (rows {_rows(tk['over_max_length_rows'])}) |"]
    out += ["", "## Overlap with the training split", ""]
    sp = a["split"]
    if "error" in sp:
        out.append(f"No split: {sp['error']}")
    else:
        out.append(f"Split as `train` makes it (val {sp['val_fraction']}, test {sp['test_fraction']}, seed "
                   f"{sp['seed']}): train {sp.get('train', 0)}, validation {sp.get('validation', 0)}, test "
                   f"{sp.get('test', 0)}. Containment = share of a record's {NGRAM}-word n-grams found in train.")
    for c in a["contamination"]:
        ex = "; ".join(f"row {e['row']} ({e['containment']:.2f})" for e in c["examples"]) or "-"
        out += ["", f"**{c['name']}**: {c['records']} records, {c['above_threshold']} above {c['threshold']}, "
                    f"mean {c['mean']:.3f}, {c['exact_in_train']} exact copies. Highest: {ex}."]
    p = a["phi"]
    out += ["", "## Protected health information", ""]
    if p["total"]:
        out += ["| type | findings |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in p["counts"].items()]
        out += ["", "First findings (row, field, type, characters):", ""]
        out += [f"- row {f['row']} {f['field']} {f['type']} [{f['start']}:{f['end']}]" for f in p["findings"][:20]]
        if p["total"] > 20:
            out.append(f"- ... {p['total'] - 20} more in audit.json")
    else:
        out.append("None found.")
    return "\n".join(out) + "\n"
