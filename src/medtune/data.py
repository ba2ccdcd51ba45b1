"""Data: load instruction records, validate them, split without leaks, format prompts, tokenize with labels.

Records are dicts with the keys instruction / input / output, or chat records {"messages": [{role, content}, ...]}
(medtune.chat). Labels mask the prompt (completion-only loss) and always keep the EOS token that ends every answer
(every assistant turn of a chat record); padding is masked by position, never by token id (GPT-2 pads with its EOS id).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from medtune import chat
from medtune.config import DataConfig
from medtune.errors import MedtuneError
from medtune.files import read_text, split_lines
from medtune.phi.detect import FIELDS  # the text fields of a record
from medtune.phi.guard import phi_guard

SAMPLE = Path(__file__).parent / "sample_data" / "medical_qa.jsonl"
IGNORE_INDEX = -100

log = logging.getLogger("medtune.data")


# ---------------------------------------------------------------- loading


def parse_json_lines(text: str, path: str | Path) -> list:
    """The values of JSON Lines text, one a line (blank lines skipped; split on "\\n" only: files.split_lines).
    A bad line is one MedtuneError naming `path` and the line number."""
    rows = []
    for n, line in enumerate(split_lines(text), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except (json.JSONDecodeError, RecursionError) as e:
                why = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
                raise MedtuneError(f"{path}: line {n} is not valid JSON ({why})") from None
    return rows


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
            rows = parse_json_lines(read_text(path), path)
        elif suffix in (".csv", ".parquet"):
            import pandas as pd

            df = (
                pd.read_csv(io.StringIO(read_text(path)), dtype=object, keep_default_na=False)
                if suffix == ".csv"
                else pd.read_parquet(path)
            )
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
        raise MedtuneError(
            f"cannot load dataset '{source}' from the Hugging Face hub (offline, or no such dataset?): {msg[:200]}"
        ) from None
    return [dict(r) for r in ds]


def read_records(cfg: DataConfig) -> tuple[list[dict], str | None]:
    """Raw records from a local file or a hub id, their columns mapped to instruction/input/output or to chat records
    (map_columns), and the chat column they came from (None: instruction columns)."""
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


def load_records(cfg: DataConfig) -> list[dict]:
    """read_records' records alone."""
    return read_records(cfg)[0]


def chat_column(present: set, cfg: DataConfig) -> str | None:
    """The column of chat turns: data.chat_column, else `messages` or `conversations` when the data lacks the
    instruction/input/output columns (instruction data loads as it always did)."""
    if cfg.chat_column:
        return cfg.chat_column
    if {cfg.instruction_column, cfg.input_column, cfg.output_column} <= present:
        return None
    return next((c for c in chat.COLUMNS if c in present), None)


def map_columns(rows: list[dict], cfg: DataConfig, source: str = "data") -> tuple[list[dict], str | None]:
    """Records from rows: instruction/input/output by the configured columns, or chat records {"messages": turns};
    and the chat column used (data.chat_column, or the one found on its own: training saves it in the run's config,
    so that generate prompts in turns), None for instruction records."""
    names = {"instruction": cfg.instruction_column, "input": cfg.input_column, "output": cfg.output_column}
    if not rows:
        raise MedtuneError(f"{source}: no records")
    present = set().union(*(r.keys() for r in rows[:1000]))
    column = chat_column(present, cfg)
    if column is not None:
        if column not in present:
            raise MedtuneError(f"{source}: missing chat column '{column}' (data.chat_column); found {sorted(present)}")
        return [{"messages": r.get(column)} for r in rows], column
    missing = [f"{k} (column '{v}')" for k, v in names.items() if v not in present]
    if missing:
        raise MedtuneError(
            f"{source}: missing column(s) {', '.join(missing)}; found {sorted(present)}; "
            "map names with --set data.input_column=... etc. (chat records: a 'messages' or "
            "'conversations' column, or data.chat_column)"
        )
    return [{k: r.get(v) for k, v in names.items()} for r in rows], None


# ---------------------------------------------------------------- validation


def _rows_text(rows: list[int]) -> str:
    shown = ", ".join(str(r) for r in rows[:10])
    return shown + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")


def record_problems(records: list[dict]) -> list[tuple[int, str, str]]:
    """Every invalid field as (row numbered from 1, field, problem): problem is 'type:<name>' for a non-string value
    or 'empty' for an empty instruction/output. A missing or None input becomes '' (the no-input template). Chat
    records (medtune.chat.normalize): also 'role:<repr>' and 'no assistant turn'; a valid one gets its turns in
    {role, content} form."""
    problems = []
    for n, r in enumerate(records, 1):
        if chat.is_chat(r):
            turns, found = chat.normalize(r["messages"])
            problems += [(n, k, p) for k, p in found]
            if not found:
                r["messages"] = turns
            continue
        for k in FIELDS:
            v = r.get(k)
            if v is None and k == "input":
                r[k] = v = ""
            if not isinstance(v, str):
                problems.append((n, k, f"type:{type(v).__name__}"))
            elif k != "input" and not v.strip():
                problems.append((n, k, "empty"))
    return problems


def record_key(r: dict) -> tuple:
    """What makes two records exact duplicates: every field, or every turn."""
    if chat.is_chat(r):
        return tuple((t["role"], t["content"]) for t in r["messages"])
    return r["instruction"], r["input"], r["output"]


def drop_duplicates(records: list[dict]) -> tuple[list[dict], int]:
    """Exact duplicates (same instruction, input and output; or the same turns) removed, first occurrence kept."""
    seen, unique = set(), []
    for r in records:
        key = record_key(r)
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return unique, len(records) - len(unique)


def _refuse(source: str, problems: list[tuple[int, str, str]]) -> None:
    """One error naming the rows of the first kind of problem found."""
    kinds = [
        ("type:", "non-string values in rows {rows} (first: row {n} field '{k}' is {p})"),
        (
            "role:",
            "unknown role in rows {rows} (first: row {n} {k} has role {p}; roles are system, user or "
            "human, assistant or gpt)",
        ),
        ("empty", "empty or whitespace-only fields in rows {rows} (first: row {n} field '{k}')"),
        (
            "no assistant turn",
            "no assistant turn in rows {rows}: a chat record needs at least one answer to learn from",
        ),
    ]
    for prefix, text in kinds:
        found = [(n, k, p[len(prefix) :]) for n, k, p in problems if p.startswith(prefix)]
        if found:
            n, k, p = found[0]
            raise MedtuneError(f"{source}: " + text.format(rows=_rows_text([f[0] for f in found]), n=n, k=k, p=p))


def validate_records(records: list[dict], source: str = "data") -> tuple[list[dict], int]:
    """Check types and emptiness (rows numbered from 1), then drop exact duplicates.
    `input` may be empty (the no-input template is used); instruction and output may not. Chat records: known
    roles, no empty turn, at least one assistant turn."""
    _refuse(source, record_problems(records))
    return drop_duplicates(records)


# ---------------------------------------------------------------- split


def question_key(r: dict) -> str:
    """The question a record asks, normalised (case, spacing, stray space before '?'); a chat record's is its first
    user turn."""
    text = chat.first_question(r["messages"]) if chat.is_chat(r) else f"{r['instruction']}\n{r['input']}"
    text = text.lower()
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
    parts = {"test": order[:n_test], "validation": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
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
    return chat.render(tokenizer, _chat_messages(cfg, user, answer), generation_prompt=answer is None)


def render_chat_prompt(tokenizer, cfg: DataConfig) -> str:
    """The tokenizer's chat template rendered once around a `{user}` field: the user turn (optional system
    prompt first) and the opening of the assistant's turn, ready for str.format(user=...)."""
    text = _apply_chat(tokenizer, cfg, _USER_MARK)
    if text.count(_USER_MARK) != 1:
        raise MedtuneError(
            "the tokenizer's chat template does not show the user's message verbatim; use data.prompt_format=template"
        )
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


def chat_prompt(cfg: DataConfig, tokenizer=None) -> str:
    """The chat turn around `{user}` that data.prompt_format=chat prompts with: data.chat_prompt when it is set
    (pinned, or saved by training), else the tokenizer's chat template rendered around the config's system prompt."""
    if cfg.chat_prompt:
        return cfg.chat_prompt
    if tokenizer is None:
        raise MedtuneError(
            "data.prompt_format=chat: the chat template has not been rendered "
            "(data.chat_prompt is empty and no tokenizer was given)"
        )
    return render_chat_prompt(tokenizer, cfg)


@dataclass(frozen=True)
class PromptFormat:
    """How a run prompts, worked out from its data config and its tokenizer (prompt_format). The training command
    stores both: chat_prompt in the run's config (data.chat_prompt), eos_token in the tokenizer it saves."""

    chat_prompt: str | None  # the chat turn around {user} (chat format); the template format: data.chat_prompt as is
    eos_token: str | None = None  # the token every answer ends with, when it is not the tokenizer's EOS already


def prompt_format(cfg: DataConfig, tokenizer) -> PromptFormat:
    """For data.prompt_format=chat: the chat template rendered (chat_prompt) and its end-of-turn token, which must be
    the tokenizer's EOS so that every answer is trained to end with it and generation (which stops at
    tokenizer.eos_token_id) stops there. Nothing to change for the plain template format. Changes neither `cfg`
    nor the tokenizer."""
    if cfg.prompt_format != "chat":
        return PromptFormat(cfg.chat_prompt)
    prompt = chat_prompt(cfg, tokenizer)
    end = chat_end_of_turn_id(tokenizer, cfg)
    if end is None:
        log.info(
            f"data: the chat template closes a turn with no special token; answers end with EOS {tokenizer.eos_token!r}"
        )
    elif end != tokenizer.eos_token_id:
        token = tokenizer.convert_ids_to_tokens(end)
        log.info(
            f"data: chat format; answers end with the template's end-of-turn token {token!r} "
            f"(EOS was {tokenizer.eos_token!r}), and generation stops there"
        )
        return PromptFormat(prompt, token)
    return PromptFormat(prompt)


def _user_text(r: dict, cfg: DataConfig) -> str:
    """The user's message for an instruction record: the instruction, a blank line, the input. A run trained on
    chat records learned bare questions, so there the default instruction is left out."""
    instruction = (r.get("instruction") or cfg.default_instruction).strip()
    inp = (r.get("input") or "").strip()
    if cfg.chat_column and inp and instruction == cfg.default_instruction.strip():
        return inp
    return f"{instruction}\n\n{inp}" if inp else instruction


def _chat_segments(r: dict, cfg: DataConfig, tokenizer) -> list[tuple[str, bool]]:
    """A chat record as (text, is_answer) segments, ending with its last answer: the tokenizer's chat template
    (data.prompt_format=chat) or medtune's plain one."""
    turns = chat.training_turns(r["messages"], cfg.system_prompt)
    if cfg.prompt_format != "chat":
        return chat.plain_segments(turns)
    if tokenizer is None:
        raise MedtuneError("data.prompt_format=chat: a chat record needs the tokenizer to render its turns")
    return chat.template_segments(turns, tokenizer)


def format_prompt(r: dict, cfg: DataConfig, tokenizer=None) -> str:
    """The prompt for a record: everything before its answer, ending with the opening of the assistant's turn.
    Instruction records: the plain template, or (data.prompt_format=chat) the chat template's user turn (instruction,
    a blank line, input); a run trained on chat records with the plain template asks it as a user turn. Chat records:
    every turn before the last assistant turn (the tokenizer is needed for the chat template, and for the EOS token
    that ends earlier answers)."""
    if chat.is_chat(r):
        before = _chat_segments(r, cfg, tokenizer)[:-1]
        if tokenizer is None and any(answer for _, answer in before):
            raise MedtuneError("the prompt of a multi-turn chat record needs the tokenizer (its answers end with EOS)")
        return "".join(text + (tokenizer.eos_token if answer else "") for text, answer in before)
    user = _user_text(r, cfg)
    if cfg.prompt_format == "chat":
        return chat_prompt(cfg, tokenizer).format(user=user)
    if cfg.chat_column:
        turns = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []) + [
            {"role": "user", "content": user}
        ]
        return "".join(text for text, _ in chat.plain_segments(turns, generation_prompt=True))
    instruction = (r.get("instruction") or cfg.default_instruction).strip()
    inp = (r.get("input") or "").strip()
    template = cfg.prompt_template if inp else cfg.prompt_template_no_input
    return template.format(instruction=instruction, input=inp)


def _pieces(r: dict, tokenizer, cfg: DataConfig) -> list[tuple[list[int], bool]]:
    """A record's token ids in pieces (ids, is_answer); every answer ends with EOS."""
    if chat.is_chat(r):
        segments = _chat_segments(r, cfg, tokenizer)
    else:
        segments = [(format_prompt(r, cfg, tokenizer), False), (r["output"].strip(), True)]
    return [
        (tokenizer(text, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if answer else []), answer)
        for text, answer in segments
    ]


def encode(r: dict, tokenizer, cfg: DataConfig) -> dict:
    """input_ids = prompt + answer + EOS; labels = -100 over the prompt (if completion-only) then answer + EOS.
    Chat records: every assistant turn + EOS is labelled, every other turn masked.
    In chat format, the tokenizer's EOS must be the chat template's end-of-turn token first (prompt_format)."""
    ids, labels = [], []
    for piece, answer in _pieces(r, tokenizer, cfg):
        ids += piece
        labels += piece if answer or not cfg.completion_only_loss else [IGNORE_INDEX] * len(piece)
    return {"input_ids": ids, "labels": labels}


# ---------------------------------------------------------------- evaluation form


def encode_prompt(r: dict, tokenizer, cfg: DataConfig) -> list[int]:
    """The prompt of a record's evaluation form as token ids: everything before its (last) answer, exactly as
    `encode` tokenizes it, so encode(r)["input_ids"] starts with it."""
    pieces = _pieces(r, tokenizer, cfg)
    last = max(i for i, (_, answer) in enumerate(pieces) if answer)
    return [i for piece, _ in pieces[:last] for i in piece]


def answer_texts(r: dict) -> list[str]:
    """The answers a record teaches: its output, or a chat record's assistant turns."""
    return chat.answers(r["messages"]) if chat.is_chat(r) else [r["output"]]


def reference_answer(r: dict) -> str:
    """The answer a record's prompt asks for: its output, or a chat record's last assistant turn (stripped)."""
    return answer_texts(r)[-1].strip()


def eval_fields(r: dict) -> dict[str, str]:
    """What to show of a record next to generated answers: instruction, question and reference. A chat record's
    instruction is its system turn (or ''), its question the last user turn before its last answer."""
    if not chat.is_chat(r):
        return {"instruction": r["instruction"], "question": r["input"], "reference": r["output"]}
    turns = chat.training_turns(r["messages"], None)[:-1]
    pick = lambda role: next((t["content"] for t in reversed(turns) if t["role"] == role), "")  # noqa: E731
    return {"instruction": pick("system"), "question": pick("user"), "reference": reference_answer(r)}


def with_system_prompt(cfg: DataConfig, system: str | None, tokenizer=None) -> DataConfig:
    """A copy of a run's data config that prompts with another system message (`generate --system`; '' or None:
    none). Chat format: the chat template is rendered again around it (now with `tokenizer`, else data.chat_prompt
    is cleared for render_chat_prompt); a run trained on chat records with the plain template starts its prompts
    with a System turn. The instruction template has no place for one: refused."""
    if cfg.prompt_format != "chat" and not cfg.chat_column:
        raise MedtuneError(
            "--system needs a run trained in chat format (data.prompt_format=chat) or on chat "
            "records; this run's prompt template has no system message"
        )
    cfg = dataclasses.replace(cfg, system_prompt=system or None)
    if cfg.prompt_format == "chat":  # the chat template rendered again, around the new system prompt
        cfg.chat_prompt = render_chat_prompt(tokenizer, cfg) if tokenizer is not None else None
    return cfg


@dataclass
class Prepared:
    splits: dict[str, list[dict]]  # raw records
    encoded: dict[str, list[dict]]  # token ids and labels
    duplicates: int
    dropped: int
    source_rows: int
    extra: dict = field(default_factory=dict)  # for the manifest: e.g. phi_redacted counts


@dataclass
class Checked:
    """The records read, validated, de-duplicated and PHI-guarded: all that `train` checks about its data without
    a tokenizer (so that `medtune train` refuses a bad file before it imports torch)."""

    raw: list[dict]  # as read (the first data.max_records), for row numbers
    records: list[dict]
    duplicates: int
    source_rows: int
    extra: dict = field(default_factory=dict)
    chat_column: str | None = None  # the column of chat records (map_columns), for the run's config


def load_checked(cfg: DataConfig) -> Checked:
    raw, column = read_records(cfg)
    n_rows = len(raw)
    if cfg.max_records:
        raw = raw[: cfg.max_records]
    records, dups = validate_records(raw, cfg.source)
    records, extra = phi_guard(records, cfg)
    return Checked(raw, records, dups, n_rows, extra, column)


def encode_within_length(records: list[dict], tokenizer, cfg: DataConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """The records encoded (encode), and those longer than data.max_length left out: (kept, their encodings,
    too long)."""
    kept, encoded, too_long = [], [], []
    for r in records:
        e = encode(r, tokenizer, cfg)
        if len(e["input_ids"]) > cfg.max_length:
            too_long.append(r)
            continue
        kept.append(r)
        encoded.append(e)
    return kept, encoded, too_long


def split_within_length(records: list[dict], tokenizer, cfg: DataConfig) -> tuple[dict, dict, list[dict]]:
    """What `train` splits and keeps, and what `medtune data audit` reports: the records split by question
    (split_records), then each split's records longer than data.max_length left out (encode_within_length).
    Returns (records by split, their encodings by split, the records left out)."""
    splits = split_records(records, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    encoded, too_long = {}, []
    for name, rows in splits.items():
        splits[name], encoded[name], longer = encode_within_length(rows, tokenizer, cfg)
        too_long += longer
    return splits, encoded, too_long


def empty_split_warning(cfg: DataConfig, sizes: dict[str, int], questions: int) -> str | None:
    """One line when data.val_fraction or data.test_fraction asks for a split that came out empty (`sizes`: records
    by split, after length filtering): too few distinct questions (a held-out split needs at least 3), or every
    record of the split over data.max_length. None when every split asked for has records."""
    fractions = {"validation": ("val_fraction", cfg.val_fraction), "test": ("test_fraction", cfg.test_fraction)}
    empty = [name for name, (_, frac) in fractions.items() if frac > 0 and not sizes[name]]
    if not empty:
        return None
    keys = ", ".join(f"data.{fractions[name][0]}={fractions[name][1]}" for name in empty)
    it, its = ("it", "its") if len(empty) == 1 else ("them", "their")
    why = (
        f"{questions} distinct question{' is' if questions == 1 else 's are'} too few to hold any out for {keys} "
        f"(at least 3 are needed: add records, or set {it} to 0)"
        if questions < 3
        else f"all {its} records are longer than data.max_length={cfg.max_length} tokens (raise data.max_length)"
    )
    then = ["no validation loss will be computed"] * ("validation" in empty)
    then += ["`medtune eval` will need --data FILE"] * ("test" in empty)
    splits = " and ".join(empty) + (" splits are" if len(empty) > 1 else " split is")
    return f"data: warning: the {splits} empty: {why}; {' and '.join(then)}"


def prepare(cfg: DataConfig, tokenizer, checked: Checked | None = None) -> Prepared:
    """Split, prompt-format and tokenize the records (load_checked's, or `checked` when the caller has them). In chat
    format the tokenizer's EOS must be the template's end-of-turn token already (prompt_format: the training command
    sets it, and saves the tokenizer with it)."""
    c = checked or load_checked(cfg)
    if cfg.prompt_format == "chat" and chat_end_of_turn_id(tokenizer, cfg) not in (None, tokenizer.eos_token_id):
        raise ValueError("data.prepare: set the tokenizer's EOS to the chat template's end-of-turn token first")
    splits, encoded, too_long = split_within_length(c.records, tokenizer, cfg)
    if too_long and cfg.overlong == "error":
        index = {id(r): n for n, r in enumerate(c.raw, 1)}
        numbers = sorted(index[id(r)] for r in too_long)
        raise MedtuneError(
            f"{len(too_long)} records are longer than data.max_length={cfg.max_length} tokens: "
            f"rows {_rows_text(numbers)} (set data.overlong=drop to skip them)"
        )
    dropped = len(too_long)
    log.info(
        f"data: {c.source_rows} records from {cfg.source}; {c.duplicates} exact duplicates removed; "
        f"{dropped} longer than {cfg.max_length} tokens dropped; split train/validation/test = "
        f"{len(encoded['train'])}/{len(encoded['validation'])}/{len(encoded['test'])}"
    )
    if not encoded["train"]:
        raise MedtuneError("no training records left after validation and length filtering")
    warning = empty_split_warning(cfg, {k: len(v) for k, v in encoded.items()}, len(set(map(question_key, c.records))))
    if warning:
        log.warning(warning)
    return Prepared(splits, encoded, c.duplicates, dropped, c.source_rows, c.extra)
