"""Benchmark tasks: lm-evaluation-harness prompt formats, parsing of --benchmark, loading (see medtune.medbench)."""

from __future__ import annotations

import ast
import io
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from medtune.data import parse_json_lines, read_table
from medtune.errors import MedtuneError
from medtune.files import read_text

LETTERS = ("A", "B", "C", "D")
PUBMEDQA_CHOICES = ("yes", "no", "maybe")
SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
MMLU_MEDICAL = (
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
)


class _BadRecord(ValueError):
    """A record that does not fit the task's column layout (becomes a MedtuneError naming the row)."""


@dataclass(frozen=True)
class Item:
    """One question: the prompt (context), its choices (scored as " " + choice), the index of the right one."""

    task: str
    id: str
    prompt: str
    choices: list[str]
    gold: int


@dataclass(frozen=True)
class TaskSpec:
    name: str
    hub: str  # the hub dataset id
    config: str | None
    split: str
    to_item: Callable[[dict], tuple[str, list[str], int]]  # a record in the hub layout -> (prompt, choices, gold)
    n_choices: int
    columns: str  # the layouts accepted (the hub dataset's, the original release's), for error messages
    subject: str | None = None  # MMLU: the rows of a shared file that belong to this task

    @property
    def chance(self) -> float:
        """Accuracy of a uniform guess: 1/4, PubMedQA 1/3."""
        return 1 / self.n_choices


class Benchmark(NamedTuple):
    """A task to run and where its data comes from: a local file, or None for the hub id in TASKS."""

    name: str
    source: str | None = None


# ---------------------------------------------------------------- record -> (prompt, choices, gold)


def _field(r: dict, *keys: str):
    for k in keys:
        if k in r and r[k] is not None:
            return r[k]
    raise _BadRecord(f"missing '{keys[0]}'" if len(keys) == 1 else f"missing all of {', '.join(keys)}")


def _text(r: dict, *keys: str) -> str:
    v = _field(r, *keys)
    if not isinstance(v, (str, int, float)):
        raise _BadRecord(f"column '{keys[0]}' is a {type(v).__name__}, not text")
    return str(v)


def _structured(v):
    """Lists and dicts that a CSV file holds as text (JSON or Python literals); numpy arrays from parquet as lists."""
    if isinstance(v, str):
        s = v.strip()
        if s[:1] in ("[", "{"):
            for parse in (json.loads, ast.literal_eval):
                try:
                    return parse(s)
                except (ValueError, SyntaxError):
                    pass
        return v
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def _gold_index(v, n: int, what: str) -> int:
    """An answer given as a 0-based index (int, or digits in a CSV) or as a letter A.. (any case)."""
    if hasattr(v, "item") and not isinstance(v, str):
        v = v.item()  # numpy scalars from parquet
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v.strip())
    if isinstance(v, str) and len(v.strip()) == 1 and v.strip().upper() in LETTERS[:n]:
        return LETTERS.index(v.strip().upper())
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
        raise _BadRecord(f"{what} {v!r} is not an answer index 0-{n - 1} or a letter A-{LETTERS[n - 1]}")
    return v


def _lettered(options: list[str]) -> str:
    return "".join(f"{letter}. {opt}\n" for letter, opt in zip(LETTERS, options))


def medmcqa_item(r: dict) -> tuple[str, list[str], int]:
    options = [_text(r, k) for k in ("opa", "opb", "opc", "opd")]
    prompt = "Question: " + _text(r, "question") + "\nChoices:\n" + _lettered(options) + "Answer:"
    return prompt, list(LETTERS), _gold_index(_field(r, "cop"), 4, "cop")


def medqa_item(r: dict) -> tuple[str, list[str], int]:
    if "sent1" in r:  # GBaker/MedQA-USMLE-4-options-hf (lm-eval's copy)
        question, options = _text(r, "sent1"), [_text(r, f"ending{i}") for i in range(4)]
        gold = _gold_index(_field(r, "label"), 4, "label")
    else:  # GBaker/MedQA-USMLE-4-options
        question, opts = _text(r, "question"), _structured(_field(r, "options"))
        if not isinstance(opts, dict) or not all(k in opts for k in LETTERS):
            raise _BadRecord("column 'options' must map A, B, C and D to the option texts")
        options = [str(opts[k]) for k in LETTERS]
        gold = _gold_index(_field(r, "answer_idx"), 4, "answer_idx")
    return f"Question: {question}\n" + _lettered(options) + "Answer:", list(LETTERS), gold


def pubmedqa_item(r: dict) -> tuple[str, list[str], int]:
    if "CONTEXTS" in r:  # bigbio/pubmed_qa source schema and the original release
        contexts, question = _structured(r["CONTEXTS"]), _text(r, "QUESTION")
    else:  # qiaojin/PubMedQA: context = {"contexts": [...], "labels": [...], "meshes": [...]}
        ctx = _structured(_field(r, "context", "contexts"))
        contexts = ctx.get("contexts") if isinstance(ctx, dict) else ctx
        question = _text(r, "question")
    contexts = _structured(contexts)
    if isinstance(contexts, str):
        contexts = [contexts]
    if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
        raise _BadRecord("the abstract (CONTEXTS, or context.contexts) must be a list of paragraphs")
    decision = _text(r, "final_decision").strip().lower()
    if decision not in PUBMEDQA_CHOICES:
        raise _BadRecord(f"final_decision {decision!r} is not yes, no or maybe")
    prompt = "Abstract: " + "\n".join(contexts) + "\nQuestion: " + question + "\nAnswer:"
    return prompt, list(PUBMEDQA_CHOICES), PUBMEDQA_CHOICES.index(decision)


def mmlu_item(subject: str) -> Callable[[dict], tuple[str, list[str], int]]:
    header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"

    def to_item(r: dict) -> tuple[str, list[str], int]:
        choices = _structured(_field(r, "choices"))
        if not isinstance(choices, list) or len(choices) != 4:
            raise _BadRecord("column 'choices' must be a list of 4 option texts")
        prompt = header + _text(r, "question").strip() + "\n" + _lettered([str(c) for c in choices]) + "Answer:"
        return prompt, list(LETTERS), _gold_index(_field(r, "answer"), 4, "answer")

    return to_item


TASKS: dict[str, TaskSpec] = {
    "medmcqa": TaskSpec(
        "medmcqa",
        "openlifescienceai/medmcqa",
        None,
        "validation",
        medmcqa_item,
        4,
        "question, opa, opb, opc, opd, cop (0-3, or 1-4 as in the original dev.json, which is "
        "JSON Lines under a .json name)",
    ),
    "medqa": TaskSpec(
        "medqa",
        "GBaker/MedQA-USMLE-4-options",
        None,
        "test",
        medqa_item,
        4,
        "question, options {A..D}, answer_idx; or sent1, ending0-3, label",
    ),
    "pubmedqa": TaskSpec(
        "pubmedqa",
        "qiaojin/PubMedQA",
        "pqa_labeled",
        "train",
        pubmedqa_item,
        3,
        "question, context {contexts}, final_decision; or QUESTION, CONTEXTS, final_decision, "
        "also as the original ori_pqal.json (a dict keyed by PMID)",
    ),
    **{
        f"mmlu_{s}": TaskSpec(
            f"mmlu_{s}",
            "cais/mmlu",
            s,
            "test",
            mmlu_item(s),
            4,
            "question, choices [4], answer (0-3), optional subject; or the original header-less "
            "CSV (question, A, B, C, D, answer letter) or its folder of <subject>_test.csv files",
            subject=s,
        )
        for s in MMLU_MEDICAL
    },
}
GROUPS: dict[str, tuple[str, ...]] = {"mmlu_medical": tuple(f"mmlu_{s}" for s in MMLU_MEDICAL)}
ALIASES = {"medqa_4options": "medqa"}  # lm-eval's name for it


def valid_names() -> str:
    group = ", ".join(f"{g} (= {' + '.join(m)})" for g, m in GROUPS.items())
    return f"{', '.join(n for n in TASKS if not n.startswith('mmlu_'))}, {group}, or one of its subjects"


# ---------------------------------------------------------------- --benchmark NAME[=FILE][,NAME[=FILE]...]


def _check_file(source: str, name: str) -> Path:
    """The file to read for task `name`; for MMLU tasks a folder (the original release's data/test) gives its
    <subject>_test.csv."""
    spec, path = TASKS[name], Path(source).expanduser()
    if path.is_dir() and spec.subject:
        path = path / f"{spec.subject}_test.csv"
        if not path.is_file():
            raise MedtuneError(
                f"benchmark {name}: folder {source} has no {path.name} (MMLU's data/test folder "
                f"holds one <subject>_test.csv per subject)"
            )
    if path.suffix.lower() not in SUFFIXES:
        raise MedtuneError(
            f"benchmark {name}: '{source}' is not a .json, .jsonl, .csv or .parquet file; expected "
            f"the layout of the hub dataset {spec.hub} or its original release: {spec.columns}"
        )
    if not path.is_file():
        raise MedtuneError(f"benchmark {name}: file not found: {source}")
    return path


def parse_benchmarks(text: str) -> list[Benchmark]:
    """`medmcqa,medqa=path/medqa_test.jsonl,mmlu_medical` -> [Benchmark(name, source)], groups expanded, in order.
    A source is a local file in the hub dataset's own columns; without one the task loads its hub id. Names are
    case-insensitive (lm-eval's medqa_4options is medqa); a task named twice with different files is an error. Only
    the text is checked here (no file is opened): load_task reads and checks the files. Paths cannot hold commas."""
    entries = [e.strip() for e in (text or "").split(",")]
    if not any(entries):
        raise MedtuneError(f"--benchmark needs at least one name: {valid_names()}")
    chosen: dict[str, str | None] = {}
    for entry in entries:
        if not entry:
            raise MedtuneError(f"--benchmark {text!r}: empty name between commas")
        raw, eq, given = entry.partition("=")
        name, source = ALIASES.get(raw.strip().lower(), raw.strip().lower()), given.strip() or None
        names = GROUPS.get(name, (name,))
        if names[0] not in TASKS:
            raise MedtuneError(f"unknown benchmark '{raw.strip()}'; choose from {valid_names()}")
        if eq and source is None:
            raise MedtuneError(f"--benchmark {entry!r}: no file after '='")
        for n in names:
            if n in chosen and chosen[n] != source:
                raise MedtuneError(
                    f"benchmark {n} is given twice with different data ({chosen[n] or 'hub'} and {source or 'hub'})"
                )
            chosen[n] = source
    return [Benchmark(n, s) for n, s in chosen.items()]


# ---------------------------------------------------------------- loading


def _load_hub_rows(spec: TaskSpec) -> list[dict]:
    from medtune.data import load_hub

    hint = f"download it elsewhere and pass the file: --benchmark {spec.name}=FILE (columns: {spec.columns})"
    try:
        return load_hub(spec.hub, spec.config, spec.split)
    except MedtuneError as e:
        raise MedtuneError(f"benchmark {spec.name}: {e}; {hint}") from None


def _json_lines_named_json(path: Path) -> list | None:
    """The rows of a .json file that holds JSON Lines (MedMCQA's original dev.json); None for one JSON document."""
    text = read_text(path)
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # a second document after the first: one record a line
            return parse_json_lines(text, path)
    except RecursionError:
        pass  # read_table reports it
    return None


def _mmlu_headerless_csv(path: Path) -> list[dict] | None:
    """The rows of one of MMLU's original CSVs (Hendrycks et al.: no header row; question, A, B, C, D, answer
    letter), in cais/mmlu's columns; `subject` from a file name such as anatomy_test.csv. None for a CSV with a
    header row (or one that pandas cannot read: read_table then reports it)."""
    import pandas as pd

    try:
        df = pd.read_csv(io.StringIO(read_text(path)), header=None, dtype=object, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError):
        return None
    if df.shape[1] != 6 or not len(df) or "question" in {str(v).strip().lower() for v in df.iloc[0]}:
        return None
    named = re.fullmatch(r"(.+)_(test|dev|val)", path.stem)
    subject = {"subject": named.group(1)} if named else {}
    return [
        {"question": q, "choices": [a, b, c, d], "answer": answer, **subject}
        for q, a, b, c, d, answer in df.itertuples(index=False)
    ]


def read_rows(path: Path, name: str) -> list[dict]:
    """The records of a local benchmark file: what medtune.data.read_table reads, plus the original releases as
    they come: MedMCQA's dev.json (JSON Lines under a .json name), MMLU's header-less CSVs, PubMedQA's ori_pqal.json
    (a dict keyed by PMID; read_table reads it, the PMID becoming the id). Errors name the layouts expected."""
    spec = TASKS[name]
    try:
        suffix = path.suffix.lower()
        rows = _json_lines_named_json(path) if suffix == ".json" else None
        if rows is None and suffix == ".csv" and spec.subject:
            rows = _mmlu_headerless_csv(path)
        rows = read_table(path) if rows is None else rows
    except MedtuneError as e:
        raise MedtuneError(
            f"benchmark {name}: {e}; expected the layout of {spec.hub} or its original release: {spec.columns}"
        ) from None
    if not all(isinstance(r, dict) for r in rows):
        raise MedtuneError(f"benchmark {name}: {path} holds values that are not records; expected {spec.columns}")
    return rows


def _medmcqa_one_based(rows: list[dict]) -> bool:
    """MedMCQA's original release numbers answers 1-4, the hub copy 0-3: a file holding a 4 and no 0 is 1-based."""
    cops = set()
    for r in rows:
        v = r.get("cop")
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())
        cops.add(v)
    return 4 in cops and 0 not in cops


def load_task(name: str, source: str | None = None, limit: int | None = None, seed: int = 0) -> list[Item]:
    """The questions of task `name` from `source` (a local .jsonl/.json/.csv/.parquet file in the hub dataset's
    own columns or as the original release has it: read_rows; for MMLU also the release's data/test folder) or,
    when None, from the task's hub id. `limit` keeps a random subset of that many questions, chosen
    by `seed`, in their original order. Raises MedtuneError with one clear line for anything wrong."""
    name = ALIASES.get(name.strip().lower(), name.strip().lower())
    if name not in TASKS:
        if name in GROUPS:
            raise MedtuneError(
                f"{name} is a group of tasks ({', '.join(GROUPS[name])}); load them one by one "
                "(parse_benchmarks expands it)"
            )
        raise MedtuneError(f"unknown benchmark '{name}'; choose from {valid_names()}")
    spec = TASKS[name]
    if limit is not None and limit < 1:
        raise MedtuneError(f"benchmark limit must be at least 1, got {limit}")
    if source is None:
        where, rows = spec.hub, _load_hub_rows(spec)
    else:
        path = _check_file(str(source), name)
        where, rows = str(path), read_rows(path, name)
    if not rows:
        raise MedtuneError(f"benchmark {name}: {where} holds no records")
    numbered = list(enumerate(rows))
    if spec.subject and any("subject" in r for r in rows):
        numbered = [(i, r) for i, r in numbered if str(r.get("subject", "")).strip() == spec.subject]
        if not numbered:
            found = sorted({str(r.get("subject")) for r in rows})[:8]
            raise MedtuneError(
                f"benchmark {name}: {where} has no rows with subject '{spec.subject}' (found: {', '.join(found)})"
            )
    shift = name == "medmcqa" and _medmcqa_one_based(rows)
    if limit is not None and limit < len(numbered):
        keep = sorted(random.Random(seed).sample(range(len(numbered)), limit))
        numbered = [numbered[k] for k in keep]
    items = []
    for i, r in numbered:
        if shift:
            r = {**r, "cop": int(r["cop"]) - 1}
        try:
            prompt, choices, gold = spec.to_item(r)
        except _BadRecord as e:
            raise MedtuneError(
                f"benchmark {name}: {where} row {i + 1} does not have the columns of {spec.hub} ({spec.columns}): {e}"
            ) from None
        items.append(Item(name, str(r.get("id", r.get("pubid", i))), prompt, list(choices), gold))
    return items


def load_benchmarks(
    benchmarks: list[Benchmark] | list[tuple[str, str | None]], limit: int | None = None, seed: int = 0
) -> dict[str, list[Item]]:
    """Every task's questions, loaded once so that the base and the tuned model score the same ones."""
    return {name: load_task(name, source, limit, seed) for name, source in benchmarks}
