"""Data: load instruction records, validate them, split without leaks, format prompts, tokenize with labels.

Records are dicts with the keys instruction / input / output. Labels mask the prompt (completion-only loss)
and always keep the EOS token that ends every answer; padding is masked by position, never by token id
(GPT-2 pads with its EOS id).
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from medtune.config import DataConfig
from medtune.errors import MedtuneError
from medtune.files import read_text, split_lines

FIELDS = ("instruction", "input", "output")
SAMPLE = Path(__file__).parent / "sample_data" / "medical_qa.jsonl"
IGNORE_INDEX = -100


# ---------------------------------------------------------------- loading

def read_table(path: Path) -> list[dict]:
    """Rows of a .json (a list, {"data": [...]}, or records keyed by id), .jsonl, .csv or .parquet file. Text files
    are UTF-8 with or without a byte-order mark; JSON Lines are split on newlines only (files.split_lines)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            rows = json.loads(read_text(path))
            if isinstance(rows, dict) and "data" in rows and isinstance(rows["data"], list):
                rows = rows["data"]
            elif isinstance(rows, dict) and rows and all(isinstance(v, dict) for v in rows.values()):
                rows = [{"id": k, **v} for k, v in rows.items()]  # records keyed by id (e.g. PubMedQA's release)
            if not isinstance(rows, list):
                raise MedtuneError(f"{path}: a .json data file must hold a list of records")
        elif suffix == ".jsonl":
            rows = []
            for n, line in enumerate(split_lines(read_text(path)), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except (json.JSONDecodeError, RecursionError) as e:
                        why = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
                        raise MedtuneError(f"{path}: line {n} is not valid JSON ({why})") from None
        elif suffix in (".csv", ".parquet"):
            import pandas as pd
            df = pd.read_csv(io.StringIO(read_text(path)), dtype=object, keep_default_na=False) if suffix == ".csv" \
                else pd.read_parquet(path)
            rows = df.to_dict(orient="records")
        else:
            raise MedtuneError(f"{path}: unsupported data file type '{suffix}' (use .json, .jsonl, .csv or .parquet)")
    except json.JSONDecodeError as e:
        raise MedtuneError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise MedtuneError(f"{path}: not valid JSON (nested too deeply)") from None
    except MedtuneError:
        raise
    except Exception as e:  # pandas / pyarrow parse errors
        why = (str(e).splitlines() or [""])[0]
        raise MedtuneError(f"{path}: cannot read {suffix} file ({type(e).__name__}: {why})") from None
    if not all(isinstance(r, dict) for r in rows):
        raise MedtuneError(f"{path}: every record must be an object with instruction/input/output fields")
    return rows


def load_hub(source: str, name: str | None = None, split: str = "train") -> list[dict]:
    """Rows of a hub dataset (configuration `name`, `split`); offline, only the local cache can serve it."""
    from medtune.hub import hub_reachable, require_hub

    try:
        import datasets
        if hub_reachable():
            ds = datasets.load_dataset(source, name, split=split)
        else:  # offline: only the local cache can serve it
            datasets.config.HF_HUB_OFFLINE = True
            try:
                ds = datasets.load_dataset(source, name, split=split)
            except Exception:
                require_hub(source, "dataset")
    except MedtuneError:
        raise
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MedtuneError(f"cannot load dataset '{source}' from the Hugging Face hub "
                           f"(offline, or no such dataset?): {msg[:200]}") from None
    return [dict(r) for r in ds]


def load_records(cfg: DataConfig) -> list[dict]:
    """Load raw records from a local file or a hub id and map their columns to instruction/input/output."""
    source = cfg.source
    if source == "builtin:sample":
        path = SAMPLE
    else:
        path = Path(source).expanduser()
    looks_local = path.suffix.lower() in (".json", ".jsonl", ".csv", ".parquet") or source.startswith((".", "/", "~"))
    if path.exists():
        if path.is_dir():
            raise MedtuneError(f"{path} is a folder; give a .json, .jsonl, .csv or .parquet file")
        rows = read_table(path)
    elif looks_local:
        raise MedtuneError(f"data file not found: {source}")
    else:
        rows = load_hub(source)
    return map_columns(rows, cfg, source)


def map_columns(rows: list[dict], cfg: DataConfig, source: str = "data") -> list[dict]:
    names = {"instruction": cfg.instruction_column, "input": cfg.input_column, "output": cfg.output_column}
    if not rows:
        raise MedtuneError(f"{source}: no records")
    present = set().union(*(r.keys() for r in rows[:1000]))
    missing = [f"{k} (column '{v}')" for k, v in names.items() if v not in present]
    if missing:
        raise MedtuneError(f"{source}: missing column(s) {', '.join(missing)}; found {sorted(present)}; "
                           "map names with --set data.input_column=... etc.")
    return [{k: r.get(v) for k, v in names.items()} for r in rows]


# ---------------------------------------------------------------- validation

def _rows_text(rows: list[int]) -> str:
    shown = ", ".join(str(r) for r in rows[:10])
    return shown + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")


def record_problems(records: list[dict]) -> list[tuple[int, str, str]]:
    """Every invalid field as (row numbered from 1, field, problem): problem is 'type:<name>' for a non-string value
    or 'empty' for an empty instruction/output. A missing or None input becomes '' (the no-input template)."""
    problems = []
    for n, r in enumerate(records, 1):
        for k in FIELDS:
            v = r.get(k)
            if v is None and k == "input":
                r[k] = v = ""
            if not isinstance(v, str):
                problems.append((n, k, f"type:{type(v).__name__}"))
            elif k != "input" and not v.strip():
                problems.append((n, k, "empty"))
    return problems


def drop_duplicates(records: list[dict]) -> tuple[list[dict], int]:
    """Exact duplicates (same instruction, input and output) removed, first occurrence kept."""
    seen, unique = set(), []
    for r in records:
        key = (r["instruction"], r["input"], r["output"])
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return unique, len(records) - len(unique)


def validate_records(records: list[dict], source: str = "data") -> tuple[list[dict], int]:
    """Check types and emptiness (rows numbered from 1), then drop exact duplicates.
    `input` may be empty (the no-input template is used); instruction and output may not."""
    problems = record_problems(records)
    bad_type = [(n, k, p[5:]) for n, k, p in problems if p.startswith("type:")]
    empty = [(n, k) for n, k, p in problems if p == "empty"]
    if bad_type:
        n, k, t = bad_type[0]
        raise MedtuneError(f"{source}: non-string values in rows {_rows_text([b[0] for b in bad_type])} "
                           f"(first: row {n} field '{k}' is {t})")
    if empty:
        n, k = empty[0]
        raise MedtuneError(f"{source}: empty or whitespace-only fields in rows {_rows_text([e[0] for e in empty])} "
                           f"(first: row {n} field '{k}')")
    return drop_duplicates(records)


# ---------------------------------------------------------------- split

def question_key(r: dict) -> str:
    """The question a record asks, normalised (case, spacing, stray space before '?')."""
    text = f"{r['instruction']}\n{r['input']}".lower()
    return re.sub(r"\s+", " ", text).replace(" ?", "?").strip()


def split_records(records: list[dict], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[dict]]:
    """Deterministic split by seed in which all records asking the same question land in the same split."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(question_key(r), []).append(r)
    order = sorted(groups, key=lambda k: hashlib.sha256(f"{seed}\x00{k}".encode()).hexdigest())
    n = len(order)
    n_test = round(n * test_fraction) if test_fraction > 0 else 0
    n_val = round(n * val_fraction) if val_fraction > 0 else 0
    if test_fraction > 0 and n >= 3:
        n_test = max(n_test, 1)
    if val_fraction > 0 and n >= 3:
        n_val = max(n_val, 1)
    if n_test + n_val >= n:
        raise MedtuneError(f"only {n} distinct questions: too few for validation and test splits")
    parts = {"test": order[:n_test], "validation": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return {name: [r for k in keys for r in groups[k]] for name, keys in parts.items()}


# ---------------------------------------------------------------- formatting and tokenization

_USER_MARK = "MEDTUNEUSERTEXT"  # stands in for the user's text while a chat template is rendered once
_ANSWER_MARK = "MEDTUNEANSWERTEXT"


def _chat_messages(cfg: DataConfig, user: str, answer: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    msgs.append({"role": "user", "content": user})
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs


def _apply_chat(tokenizer, cfg: DataConfig, user: str, answer: str | None = None) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise MedtuneError("data.prompt_format=chat, but the tokenizer has no chat template; "
                           "use data.prompt_format=template")
    try:
        return tokenizer.apply_chat_template(_chat_messages(cfg, user, answer), tokenize=False,
                                             add_generation_prompt=answer is None)
    except Exception as e:
        raise MedtuneError(f"the tokenizer's chat template failed: {(str(e).splitlines() or [type(e).__name__])[0]}"
                           " (use data.prompt_format=template)") from None


def render_chat_prompt(tokenizer, cfg: DataConfig) -> str:
    """The tokenizer's chat template rendered once around a `{user}` field: the user turn (optional system
    prompt first) and the opening of the assistant's turn, ready for str.format(user=...)."""
    text = _apply_chat(tokenizer, cfg, _USER_MARK)
    if text.count(_USER_MARK) != 1:
        raise MedtuneError("the tokenizer's chat template does not show the user's message verbatim; "
                           "use data.prompt_format=template")
    return text.replace("{", "{{").replace("}", "}}").replace(_USER_MARK, "{user}")


def chat_end_of_turn_id(tokenizer, cfg: DataConfig) -> int | None:
    """The special token the chat template closes an assistant turn with (<|im_end|>, <|eot_id|>, <end_of_turn>,
    or EOS itself), or None if the template ends a turn with no special token."""
    text = _apply_chat(tokenizer, cfg, "Hello", _ANSWER_MARK)
    if _ANSWER_MARK not in text:
        return None
    after = text.split(_ANSWER_MARK, 1)[1]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for i in tokenizer(after, add_special_tokens=False)["input_ids"]:
        if i in special:
            return i
    return None


def setup_prompt_format(cfg: DataConfig, tokenizer, log=print) -> None:
    """For data.prompt_format=chat: render the chat template into cfg.chat_prompt (unless pinned there already) and
    make the tokenizer's EOS the template's end-of-turn token, so that every answer is trained to end with it and
    generation (which stops at tokenizer.eos_token_id) stops there. The run saves both: config.yaml and the
    tokenizer. Nothing to do for the plain template format."""
    if cfg.prompt_format != "chat":
        return
    if not cfg.chat_prompt:
        cfg.chat_prompt = render_chat_prompt(tokenizer, cfg)
    end = chat_end_of_turn_id(tokenizer, cfg)
    if end is None:
        log(f"data: the chat template closes a turn with no special token; answers end with EOS "
            f"{tokenizer.eos_token!r}")
    elif end != tokenizer.eos_token_id:
        token = tokenizer.convert_ids_to_tokens(end)
        log(f"data: chat format; answers end with the template's end-of-turn token {token!r} "
            f"(EOS was {tokenizer.eos_token!r}), and generation stops there")
        tokenizer.eos_token = token


def format_prompt(r: dict, cfg: DataConfig, tokenizer=None) -> str:
    """The prompt for a record: the plain template, or (data.prompt_format=chat) the chat template's user turn
    (instruction, a blank line, input) followed by the opening of the assistant's turn."""
    instruction = (r.get("instruction") or cfg.default_instruction).strip()
    inp = (r.get("input") or "").strip()
    if cfg.prompt_format == "chat":
        template = cfg.chat_prompt
        if not template:
            if tokenizer is None:
                raise MedtuneError("data.prompt_format=chat: the chat template has not been rendered "
                                   "(data.chat_prompt is empty and no tokenizer was given)")
            template = render_chat_prompt(tokenizer, cfg)
        return template.format(user=f"{instruction}\n\n{inp}" if inp else instruction)
    template = cfg.prompt_template if inp else cfg.prompt_template_no_input
    return template.format(instruction=instruction, input=inp)


def encode(r: dict, tokenizer, cfg: DataConfig) -> dict:
    """input_ids = prompt + answer + EOS; labels = -100 over the prompt (if completion-only) then answer + EOS.
    In chat format, run setup_prompt_format first: it makes EOS the chat template's end-of-turn token."""
    prompt_ids = tokenizer(format_prompt(r, cfg, tokenizer), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(r["output"].strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = prompt_ids + answer_ids
    labels = ([IGNORE_INDEX] * len(prompt_ids) if cfg.completion_only_loss else list(prompt_ids)) + answer_ids
    return {"input_ids": ids, "labels": labels}


@dataclass
class Prepared:
    splits: dict[str, list[dict]]  # raw records
    encoded: dict[str, list[dict]]  # token ids and labels
    duplicates: int
    dropped: int
    source_rows: int
    extra: dict = field(default_factory=dict)  # for the manifest: e.g. phi_redacted counts


REVIEWED = Path(__file__).parent / "assets" / "phi_reviewed.json"


def finding_key(records: list[dict], f) -> str:
    """A finding's identity without its text: sha256 of its type and the matched text."""
    text = records[f.row - 1][f.field][f.start:f.end]
    return hashlib.sha256(f"{f.type}\0{text}".encode()).hexdigest()


def reviewed_findings(path: str | None) -> set[str]:
    """Keys of findings a person reviewed and judged not to be patient information: medtune's own list (the
    wikidoc data's editor and author names, contact addresses and web references) plus data.phi_reviewed."""
    keys = set()
    for f in [REVIEWED] + ([Path(path).expanduser()] if path else []):
        try:
            data = json.loads(read_text(f))
            keys |= {k for k in data["reviewed"] if isinstance(k, str)}
        except (OSError, ValueError, KeyError, TypeError):
            raise MedtuneError(f"data.phi_reviewed: {f} is not a JSON file with a 'reviewed' list of finding keys") \
                from None
    return keys


def phi_guard(records: list[dict], cfg: DataConfig, log=print) -> tuple[list[dict], dict]:
    """data.phi: stop (error), warn, or replace findings with [TYPE] placeholders (redact) before training."""
    if cfg.phi == "off":
        return records, {}
    from medtune import phi

    reviewed = reviewed_findings(cfg.phi_reviewed)
    findings = [f for f in phi.scan_records(records) if finding_key(records, f) not in reviewed]
    if not findings:
        return records, {}
    counts = phi.count_by_type(findings)
    shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    if cfg.phi == "error":
        raise MedtuneError(f"{cfg.source}: {len(findings)} possible protected health information findings ({shown}); "
                           f"see them with `medtune data audit {cfg.source}`, or set data.phi=redact to replace "
                           "them with [TYPE] placeholders (warn: train anyway)")
    if cfg.phi == "warn":
        log(f"data: warning: {len(findings)} possible protected health information findings ({shown}); "
            f"training on them as data.phi=warn says (`medtune data audit {cfg.source}` lists them)")
        return records, {}
    records, counts = phi.redact_records(records)
    log(f"data: replaced {sum(counts.values())} possible protected health information findings with placeholders "
        f"({shown})")
    return records, {"phi_redacted": counts}


@dataclass
class Checked:
    """The records read, validated, de-duplicated and PHI-guarded: all that `train` checks about its data without
    a tokenizer (so that `medtune train` refuses a bad file before it imports torch)."""
    raw: list[dict]  # as read (the first data.max_records), for row numbers
    records: list[dict]
    duplicates: int
    source_rows: int
    extra: dict = field(default_factory=dict)


def load_checked(cfg: DataConfig, log=print) -> Checked:
    raw = load_records(cfg)
    n_rows = len(raw)
    if cfg.max_records:
        raw = raw[: cfg.max_records]
    records, dups = validate_records(raw, cfg.source)
    records, extra = phi_guard(records, cfg, log)
    return Checked(raw, records, dups, n_rows, extra)


def prepare(cfg: DataConfig, tokenizer, log=print, checked: Checked | None = None) -> Prepared:
    """Split, prompt-format and tokenize the records (load_checked's, or `checked` when the caller has them)."""
    c = checked or load_checked(cfg, log)
    setup_prompt_format(cfg, tokenizer, log)
    splits = split_records(c.records, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    encoded, dropped, too_long = {}, 0, []
    for name, rows in splits.items():
        kept_rows, kept = [], []
        for r in rows:
            e = encode(r, tokenizer, cfg)
            if len(e["input_ids"]) > cfg.max_length:
                too_long.append(r)
                continue
            kept_rows.append(r)
            kept.append(e)
        splits[name], encoded[name] = kept_rows, kept
    if too_long:
        if cfg.overlong == "error":
            index = {id(r): n for n, r in enumerate(c.raw, 1)}
            rows = sorted(index[id(r)] for r in too_long)
            raise MedtuneError(f"{len(too_long)} records are longer than data.max_length={cfg.max_length} tokens: "
                               f"rows {_rows_text(rows)} (set data.overlong=drop to skip them)")
        dropped = len(too_long)
    log(f"data: {c.source_rows} records from {cfg.source}; {c.duplicates} exact duplicates removed; "
        f"{dropped} longer than {cfg.max_length} tokens dropped; split train/validation/test = "
        f"{len(encoded['train'])}/{len(encoded['validation'])}/{len(encoded['test'])}")
    if not encoded["train"]:
        raise MedtuneError("no training records left after validation and length filtering")
    for name, frac in (("validation", cfg.val_fraction), ("test", cfg.test_fraction)):
        if frac > 0 and not encoded[name]:
            log(f"data: warning: the {name} split is empty ({len(c.records)} records are too few for "
                f"data.{'val' if name == 'validation' else 'test'}_fraction={frac}); "
                + ("no validation loss will be computed" if name == "validation" else "`medtune eval` will need --data"))
    return Prepared(splits, encoded, c.duplicates, dropped, c.source_rows, c.extra)
