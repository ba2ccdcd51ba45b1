"""Data audit: what a data set holds before training on it - invalid rows, exact and near duplicates, token
lengths, overlap of evaluation data with the training split (contamination), and protected health information.

Records are loaded with medtune.data.load_records, so local files of every format, hub ids and column mappings
behave as in `train`, and the split is the one `train` makes (data.split_within_length: the same fractions and seed,
over-long records left out of each split).
Problems that would stop `train` are reported here, not raised. The outputs (audit.json, audit.md, lengths.png)
name rows by number (from 1, as in `train`'s messages) and never copy a record's text.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from medtune import phi, rundir

# containment, near_duplicate_pairs and the constants are re-exported: medtune.audit is where they were first
from medtune.audit_overlap import (  # noqa: F401
    BANDS,
    CONTAMINATED,
    EXAMPLES,
    NEAR_THRESHOLD,
    NGRAM,
    NUM_PERM,
    SHINGLE,
    containment,
    contamination_report,
    near_duplicate_pairs,
)
from medtune.config import DataConfig
from medtune.data import (
    answer_texts,
    chat_prompt,
    drop_duplicates,
    empty_split_warning,
    encode,
    load_records,
    question_key,
    read_records,
    record_key,
    record_problems,
    split_within_length,
)
from medtune.errors import MedtuneError
from medtune.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from medtune.phi.guard import finding_key, phi_guard, scan_phi, text_fields, unreviewed

log = logging.getLogger("medtune.audit")

# ---------------------------------------------------------------- the audit


def _length_stats(lengths: list[int], max_length: int) -> dict:
    if not lengths:
        return {"count": 0}
    a = np.array(lengths)
    return {
        "count": len(lengths),
        "min": int(a.min()),
        "median": float(np.median(a)),
        "mean": round(float(a.mean()), 1),
        "p95": float(np.percentile(a, 95)),
        "max": int(a.max()),
        "total_tokens": int(a.sum()),
        "max_length": max_length,
        "over_max_length": int((a > max_length).sum()),
        "over_max_length_share": round(float((a > max_length).mean()), 4),
    }


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
    if cfg.prompt_format == "chat":
        return dataclasses.replace(cfg, chat_prompt=chat_prompt(cfg, tokenizer))
    return cfg


def _invalid_rows(records: list[dict]) -> tuple[dict, list[tuple[int, dict]]]:
    """Invalid rows (what `train` would stop on) grouped by problem, and the valid (row, record) pairs."""
    problems = record_problems(records)
    by_problem: dict[str, list[int]] = defaultdict(list)
    for row, field, problem in problems:
        field = "turn" if field.startswith("turn ") else field  # a chat record's turns are grouped together
        by_problem[f"{field} {problem.replace('type:', 'is ').replace('role:', 'with role ')}"].append(row)
    bad_rows = {row for row, _, _ in problems}
    grouped = {k: {"count": len(v), "rows": v[:EXAMPLES]} for k, v in sorted(by_problem.items())}
    valid = [(n, r) for n, r in enumerate(records, 1) if n not in bad_rows]
    return {"rows": len(bad_rows), "by_problem": grouped}, valid


def _exact_duplicates(valid: list[tuple[int, dict]]) -> tuple[dict, list[dict]]:
    """Exact duplicates (the ones `train` drops) and questions asked more than once with different answers; also
    the unique records."""
    first_row: dict[tuple, int] = {}
    dup_pairs = []
    for n, r in valid:
        key = record_key(r)
        if key in first_row:
            dup_pairs.append([first_row[key], n])
        else:
            first_row[key] = n
    unique, n_dups = drop_duplicates([r for _, r in valid])
    answers: dict[str, set] = defaultdict(set)
    for r in unique:
        answers[question_key(r)].add(tuple(a.strip() for a in answer_texts(r)))
    return {
        "exact": n_dups,
        "exact_examples": dup_pairs[:EXAMPLES],
        "questions_with_several_answers": sum(len(a) > 1 for a in answers.values()),
    }, unique


def _near_duplicates(unique: list[dict], row_of: dict[int, int]) -> dict:
    """Near duplicates among the unique records (exact duplicates are gone already)."""
    texts = ["\n".join(text_fields(r).values()) for r in unique]
    pairs = near_duplicate_pairs(texts)
    pairs.sort(key=lambda p: (-p[2], row_of[id(unique[p[0]])]))
    in_pairs = {i for p in pairs for i in p[:2]}
    return {
        "near": len(pairs),
        "near_records": len(in_pairs),
        "near_threshold": NEAR_THRESHOLD,
        "near_method": f"MinHash ({NUM_PERM} permutations, LSH {BANDS} bands) over {SHINGLE}-word shingles",
        "near_examples": [
            {"rows": sorted([row_of[id(unique[i])], row_of[id(unique[j])]]), "jaccard": est}
            for i, j, est in pairs[:EXAMPLES]
        ],
    }


def _token_lengths(unique: list[dict], row_of: dict[int, int], cfg: DataConfig, tokenizer) -> tuple[dict, list[int]]:
    """Token length statistics, as `train` encodes the records, and the lengths."""
    enc_cfg = _encode_cfg(cfg, tokenizer)
    lengths, long_rows = [], []
    for r in unique:
        n_tokens = len(encode(r, tokenizer, enc_cfg)["input_ids"])
        lengths.append(n_tokens)
        if n_tokens > cfg.max_length:
            long_rows.append(row_of[id(r)])
    stats = _length_stats(lengths, cfg.max_length)
    stats["over_max_length_rows"] = long_rows[:EXAMPLES]
    stats["overlong"] = cfg.overlong
    return stats, lengths


def _train_records(unique: list[dict], row_of: dict[int, int], cfg: DataConfig) -> list[dict]:
    """The records `train` splits: with data.phi=redact, copies with the findings replaced (phi_guard), numbered as
    their originals in row_of."""
    if cfg.phi != "redact":
        return unique
    records, _ = phi_guard(unique, cfg)
    row_of.update({id(new): row_of[id(old)] for old, new in zip(unique, records)})
    return records


def _contamination(
    unique: list[dict], row_of: dict[int, int], cfg: DataConfig, tokenizer, against: list[str] | None
) -> tuple[dict, list[dict]]:
    """The split `train` makes (split_within_length: over-long records left out of each split), and the overlap of
    the test split and of each `against` file with its train split."""
    split: dict = {"val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction, "seed": cfg.seed}
    reports: list[dict] = []
    records = _train_records(unique, row_of, cfg)
    try:
        splits, _, too_long = split_within_length(records, tokenizer, _encode_cfg(cfg, tokenizer))
    except MedtuneError as e:
        split["error"] = str(e)
        return split, reports
    split.update({k: len(v) for k, v in splits.items()}, overlong=len(too_long), max_length=cfg.max_length)
    split["warning"] = empty_split_warning(
        cfg, {k: len(v) for k, v in splits.items()}, len(set(map(question_key, records)))
    )
    train = splits["train"]
    if splits["test"]:
        reports.append(contamination_report("test split", [(row_of[id(r)], r) for r in splits["test"]], train))
    for path in against or []:
        eval_records = load_records(dataclasses.replace(cfg, source=str(path), max_records=None))
        reports.append(contamination_report(str(path), list(enumerate(eval_records, 1)), train))
    return split, reports


def _phi_findings(records: list[dict], out_dir: Path, cfg: DataConfig) -> dict:
    """Protected health information in every record (valid or not): counts by type and each finding's place; and
    out_dir/phi_review.json, each finding with its key (sha256 of type and text), for data.phi_reviewed."""
    findings = scan_phi(records)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        out_dir / rundir.PHI_REVIEW,
        {
            "about": "Each finding's key (sha256 of its type and matched text). Copy into 'reviewed' the keys of "
            "findings you judged not to be patient information; pass this file as data.phi_reviewed.",
            "reviewed": [],
            "findings": [{**f.to_dict(), "key": finding_key(records, f)} for f in findings],
        },
    )
    return {
        "counts": phi.count_by_type(findings),
        "total": len(findings),
        "rows": len({f.row for f in findings}),
        "unreviewed": len(unreviewed(records, findings, cfg)),  # what `train` acts on (data.phi)
        "findings": [f.to_dict() for f in findings],
    }


def audit(cfg: DataConfig, tokenizer, out_dir: Path, against: list[str] | None = None) -> dict:
    """Audit the data set of `cfg` and write out_dir/audit.json, audit.md and lengths.png; returns the audit dict.
    `against`: evaluation files (same column mapping) checked for overlap with the training split."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    records, column = read_records(cfg)
    cfg = dataclasses.replace(cfg, chat_column=column)  # the column found, for the report and the --against files
    source_rows = len(records)
    if cfg.max_records:
        records = records[: cfg.max_records]
    log.debug(f"audit: {len(records):,} records from {cfg.source}")
    report: dict = {
        "source": cfg.source,
        "records": len(records),
        "source_rows": source_rows,
    }
    report["columns"] = (
        {"messages": cfg.chat_column}
        if cfg.chat_column
        else {"instruction": cfg.instruction_column, "input": cfg.input_column, "output": cfg.output_column}
    )
    report["invalid"], valid = _invalid_rows(records)
    row_of = {id(r): n for n, r in valid}

    report["duplicates"], unique = _exact_duplicates(valid)
    t = time.perf_counter()
    report["duplicates"].update(_near_duplicates(unique, row_of))
    log.debug(
        f"audit: duplicates exact {report['duplicates']['exact']:,}, near {report['duplicates']['near']:,} pairs "
        f"({time.perf_counter() - t:.1f}s)"
    )

    t = time.perf_counter()
    report["tokens"], lengths = _token_lengths(unique, row_of, cfg, tokenizer)
    log.debug(f"audit: token lengths ({time.perf_counter() - t:.1f}s)")

    t = time.perf_counter()
    report["split"], report["contamination"] = _contamination(unique, row_of, cfg, tokenizer, against)
    log.debug(f"audit: contamination ({time.perf_counter() - t:.1f}s)")

    t = time.perf_counter()
    report["phi"] = _phi_findings(records, out_dir, cfg)
    log.debug(f"audit: PHI scan ({time.perf_counter() - t:.1f}s)")

    report["seconds"] = round(time.perf_counter() - t0, 2)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / rundir.AUDIT, report)
    atomic_write_text(out_dir / rundir.AUDIT_REPORT, render_markdown(report))
    png = _histogram_png(lengths, cfg.max_length, f"Token lengths: {Path(cfg.source).name}")
    atomic_write_bytes(out_dir / rundir.AUDIT_LENGTHS, png)
    return report


def written_files(out_dir: Path) -> list[Path]:
    """Every file `audit` writes into out_dir, as the last line of `medtune data audit` names them."""
    return [
        Path(out_dir) / name for name in (rundir.AUDIT_REPORT, rundir.AUDIT, rundir.AUDIT_LENGTHS, rundir.PHI_REVIEW)
    ]


# ---------------------------------------------------------------- summaries


def _rows(rows: list) -> str:
    return ", ".join(str(r) for r in rows) if rows else "-"


def _overlong_action(overlong: str) -> str:
    return "train drops them" if overlong == "drop" else "train stops on them (data.overlong=error)"


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
    lines.append(
        f"duplicates: {d['exact']:,} exact (train drops them), {d['near']:,} near-duplicate pairs "
        f"(Jaccard >= {d['near_threshold']}) over {d['near_records']:,} records; "
        f"{d['questions_with_several_answers']:,} questions with several answers"
    )
    tk = a["tokens"]
    if tk.get("count"):
        lines.append(
            f"tokens: min {tk['min']}, median {tk['median']:g}, p95 {tk['p95']:g}, max {tk['max']}; "
            f"{tk['over_max_length']:,} longer than max_length {tk['max_length']} "
            f"({tk['over_max_length_share']:.1%}, {_overlong_action(tk['overlong'])})"
        )
    sp = a["split"]
    if "error" in sp:
        lines.append(f"split: {sp['error']}")
    else:
        lines.append(
            f"split as train makes it: train {sp['train']:,}, validation {sp['validation']:,}, test {sp['test']:,}"
            + (f" (without the {sp['overlong']:,} longer than {sp['max_length']} tokens)" if sp["overlong"] else "")
        )
    if sp.get("warning"):
        lines.append(sp["warning"].removeprefix("data: "))
    for c in a["contamination"]:
        lines.append(
            f"overlap with train, {c['name']}: {c['above_threshold']:,} of {c['records']:,} records share "
            f"more than {c['threshold']:.0%} of their {c['ngram']}-grams with train (mean {c['mean']:.3f}, "
            f"{c['exact_in_train']:,} exact copies)"
        )
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
    out += ["## Columns", "", ", ".join(f"{k} <- `{v}`" for k, v in cols.items()), ""]
    out += ["## Invalid rows", ""]
    if a["invalid"]["by_problem"]:
        out += ["| problem | rows | examples |", "|---|---:|---|"]
        out += [f"| {k} | {v['count']} | {_rows(v['rows'])} |" for k, v in a["invalid"]["by_problem"].items()]
    else:
        out.append("None.")
    d = a["duplicates"]
    out += [
        "",
        "## Duplicates",
        "",
        f"Exact duplicates: {d['exact']} (row pairs: {'; '.join(f'{x}-{y}' for x, y in d['exact_examples']) or '-'}).",
        "",
        f"Near duplicates ({d['near_method']}, estimated Jaccard >= {d['near_threshold']}): {d['near']} pairs.",
        "",
    ]
    if d["near_examples"]:
        out += ["| rows | Jaccard |", "|---|---:|"]
        out += [f"| {e['rows'][0]}, {e['rows'][1]} | {e['jaccard']:.2f} |" for e in d["near_examples"]]
    tk = a["tokens"]
    out += ["", "## Token lengths", "", f"![token lengths]({rundir.AUDIT_LENGTHS})", ""]
    if tk.get("count"):
        out += [
            "| min | median | mean | p95 | max | over max_length |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {tk['min']} | {tk['median']:g} | {tk['mean']:g} | {tk['p95']:g} | {tk['max']} | "
            f"{tk['over_max_length']} (rows {_rows(tk['over_max_length_rows'])}) |",
        ]
    out += ["", "## Overlap with the training split", ""]
    sp = a["split"]
    if "error" in sp:
        out.append(f"No split: {sp['error']}")
    else:
        out.append(
            f"Split as `train` makes it (val {sp['val_fraction']}, test {sp['test_fraction']}, seed "
            f"{sp['seed']}): train {sp['train']}, validation {sp['validation']}, test {sp['test']}"
            + (
                f", without the {sp['overlong']} records longer than {sp['max_length']} tokens"
                if sp["overlong"]
                else ""
            )
            + f". Containment = share of a record's {NGRAM}-word n-grams found in train."
        )
    for c in a["contamination"]:
        ex = "; ".join(f"row {e['row']} ({e['containment']:.2f})" for e in c["examples"]) or "-"
        out += [
            "",
            f"**{c['name']}**: {c['records']} records, {c['above_threshold']} above {c['threshold']}, "
            f"mean {c['mean']:.3f}, {c['exact_in_train']} exact copies. Highest: {ex}.",
        ]
    p = a["phi"]
    out += ["", "## Protected health information", ""]
    if p["total"]:
        out += ["| type | findings |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in p["counts"].items()]
        out += ["", "First findings (row, field, type, characters):", ""]
        out += [f"- row {f['row']} {f['field']} {f['type']} [{f['start']}:{f['end']}]" for f in p["findings"][:20]]
        if p["total"] > 20:
            out.append(f"- ... {p['total'] - 20} more in {rundir.AUDIT}")
    else:
        out.append("None found.")
    return "\n".join(out) + "\n"
