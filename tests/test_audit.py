"""`medtune.audit`: invalid rows, exact and near duplicates, token lengths, contamination against the train split,
and PHI, on small local files with each of these planted; bad input is one clear error; the real WikiDoc data
(when ../shared is present) is audited in reasonable time."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from medtune.audit import (
    CONTAMINATED,
    NEAR_THRESHOLD,
    NGRAM,
    SHINGLE,
    audit,
    containment,
    near_duplicate_pairs,
    summary_lines,
    written_files,
)
from medtune.config import DataConfig
from medtune.data import drop_duplicates, encode, load_records, prepare, record_problems, split_within_length
from medtune.errors import MedtuneError

_WORDS = (
    "blood pressure kidney liver lungs heart rest fluids fever cough rash pain swelling infection dose tablet "
    "doctor nurse clinic exercise sleep diet salt sugar water vitamin bone muscle joint skin eye ear throat "
    "stomach bowel bladder nerve brain mood stress weight breath chest back head neck arm leg hand foot "
    "morning evening daily weekly often rarely mild severe sudden slow early late"
).split()


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _records(n: int, seed: int = 0, words: int = 100) -> list[dict]:
    """Distinct invented records: a question and a long answer of random medical words (no two alike)."""
    rng = random.Random(seed)
    return [
        {
            "instruction": "Answer this question truthfully",
            "input": f"Question {i}: what helps with {' '.join(rng.sample(_WORDS, 4))}?",
            "output": " ".join(rng.choice(_WORDS) for _ in range(words)) + ".",
        }
        for i in range(n)
    ]


@pytest.fixture()
def planted_file(tmp_path):
    """A data file with known problems, and the rows (from 1) where each was planted."""
    rows = _records(60)
    near = dict(rows[10])
    words = near["output"].split()
    words[50] = "dizziness"  # one word changed in 100: a near duplicate of row 11
    near["output"] = " ".join(words)
    near["input"] = rows[10]["input"] + " (again)"
    rows.append(near)  # row 61
    rows.append(dict(rows[0]))  # row 62: exact copy of row 1
    rows.append(dict(rows[1]))  # row 63: exact copy of row 2
    rows.append(
        {
            "instruction": "Summarize the note",
            "input": "",  # row 64: PHI
            "output": "Mrs. Maria Lopez, DOB 03/14/1962, MRN: 00123456, phone (617) 555-0143.",
        }
    )
    rows.append(
        {
            "instruction": "Answer",
            "input": "Call me at 617.555.0177 please",  # row 65: PHI in the input
            "output": "We will call you back tomorrow about the results.",
        }
    )
    rows.append({"instruction": "Answer", "input": "What is gout?", "output": "  "})  # row 66: empty output
    rows.append({"instruction": "Answer", "input": 42, "output": "A number."})  # row 67: not a string
    return _write_jsonl(tmp_path / "data.jsonl", rows), rows


def _unique_valid(rows: list[dict]) -> list[dict]:
    records = [dict(r) for r in rows]
    bad = {n for n, _, _ in record_problems(records)}
    return drop_duplicates([r for n, r in enumerate(records, 1) if n not in bad])[0]


def _train_split(rows: list[dict], cfg: DataConfig, tok) -> list[dict]:
    return split_within_length(_unique_valid(rows), tok, cfg)[0]["train"]


def test_audit_finds_what_was_planted(tmp_path, tok, planted_file):
    path, rows = planted_file
    cfg = DataConfig(source=str(path), max_length=200, val_fraction=0.1, test_fraction=0.1)
    train = _train_split(rows, cfg, tok)
    copied = train[3]
    same_answer = {
        "instruction": "Answer this question truthfully",
        "input": "A different question entirely?",
        "output": train[5]["output"],
    }
    fresh = {
        "instruction": "Answer this question truthfully",
        "input": "Is a brand new question here?",
        "output": "An answer written only for the evaluation file, with its own words in it throughout.",
    }
    eval_path = _write_jsonl(tmp_path / "eval.jsonl", [fresh, copied, same_answer])

    out = tmp_path / "audit"
    a = audit(cfg, tok, out, against=[str(eval_path)])

    assert a["records"] == 67 and a["columns"] == {"instruction": "instruction", "input": "input", "output": "output"}
    assert a["invalid"]["rows"] == 2
    assert a["invalid"]["by_problem"] == {
        "input is int": {"count": 1, "rows": [67]},
        "output empty": {"count": 1, "rows": [66]},
    }
    d = a["duplicates"]
    assert d["exact"] == 2 and d["exact_examples"] == [[1, 62], [2, 63]]
    assert d["near"] >= 1 and {"rows": [11, 61]}.items() <= d["near_examples"][0].items()
    assert d["near_examples"][0]["jaccard"] >= 0.8
    lengths = [len(encode(r, tok, cfg)["input_ids"]) for r in _unique_valid(rows)]  # as train encodes them
    tk = a["tokens"]
    assert tk["count"] == 63 == len(lengths) and (tk["min"], tk["max"]) == (min(lengths), max(lengths))
    assert tk["over_max_length"] == sum(n > 200 for n in lengths) > 0 and tk["over_max_length_rows"]
    # contamination: the copy and the record with a train answer are caught, the fresh one is not
    test_split, against = a["contamination"]
    assert test_split["name"] == "test split" and test_split["records"] > 0
    assert against["name"] == str(eval_path) and against["records"] == 3
    assert against["above_threshold"] == 2 and against["exact_in_train"] == 1
    assert {e["row"] for e in against["examples"]} == {2, 3}
    # PHI: counted by type, with spans and no text
    p = a["phi"]
    assert p["counts"] == {"NAME": 1, "PHONE": 2, "MRN": 1, "DATE": 1}
    assert {(f["row"], f["field"]) for f in p["findings"]} == {(64, "output"), (65, "input")}
    for f in p["findings"]:
        assert set(f) == {"row", "field", "type", "start", "end"}
        assert rows[f["row"] - 1][f["field"]][f["start"] : f["end"]]

    # files: written, and free of record text
    written = json.loads((out / "audit.json").read_text())
    assert written == json.loads(json.dumps(a))
    review = json.loads((out / "phi_review.json").read_text())  # the same findings, each with its key
    assert [{k: v for k, v in f.items() if k != "key"} for f in review["findings"]] == p["findings"]
    assert all(len(f["key"]) == 64 for f in review["findings"]) and review["reviewed"] == []
    md = (out / "audit.md").read_text()
    assert "## Protected health information" in md and "| NAME | 1 |" in md
    assert (out / "lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    everything = (out / "audit.json").read_text() + md
    for secret in ("Maria Lopez", "00123456", "555-0143", "617.555.0177", "03/14/1962", rows[0]["output"][:40]):
        assert secret not in everything
    lines = summary_lines(a)
    assert any(line.startswith("PHI: 5 possible identifiers in 2 rows") for line in lines), lines
    assert any("2 exact" in line for line in lines) and any("invalid rows: 2" in line for line in lines)


def test_audit_uses_the_column_mapping_and_formats(tmp_path, tok):
    import pandas as pd

    rows = _records(30, seed=3)
    df = pd.DataFrame(
        {
            "task": [r["instruction"] for r in rows],
            "question": [r["input"] for r in rows],
            "answer": [r["output"] for r in rows],
        }
    )
    csv = tmp_path / "qa.csv"
    df.to_csv(csv, index=False)
    eval_csv = tmp_path / "eval.csv"
    df.iloc[:2].to_csv(eval_csv, index=False)
    cfg = DataConfig(source=str(csv), instruction_column="task", input_column="question", output_column="answer")
    a = audit(cfg, tok, tmp_path / "out", against=[str(eval_csv)])
    assert a["records"] == 30 and a["columns"]["input"] == "question" and a["invalid"]["rows"] == 0
    assert a["contamination"][-1]["records"] == 2  # the eval file is read with the same mapping

    parquet = tmp_path / "qa.parquet"
    df.to_parquet(parquet)
    b = audit(
        DataConfig(
            source=str(parquet),
            instruction_column="task",
            input_column="question",
            output_column="answer",
            max_records=20,
        ),
        tok,
        tmp_path / "out2",
    )
    assert b["records"] == 20 and b["source_rows"] == 30 and b["tokens"]["count"] == 20

    s = audit(DataConfig(source="builtin:sample"), tok, tmp_path / "sample")
    assert s["records"] > 100 and s["phi"]["total"] == 0 and s["duplicates"]["exact"] == 0
    # the files `medtune data audit` names on its last line are the files it wrote
    assert sorted(p.name for p in (tmp_path / "sample").iterdir()) == sorted(
        p.name for p in written_files(tmp_path / "sample")
    )


def test_audit_splits_as_training_loads_the_data(tmp_path, tok):
    """`train` leaves records longer than data.max_length out of each split: the audit reports the split it trains."""
    long = [dict(r, input=r["input"].replace("Question", "Long question")) for r in _records(12, seed=7, words=300)]
    path = _write_jsonl(tmp_path / "data.jsonl", _records(40, words=20) + long)
    cfg = DataConfig(source=str(path), max_length=128, val_fraction=0.2, test_fraction=0.2)
    prepared = prepare(cfg, tok)  # what training's data loading produces
    a = audit(cfg, tok, tmp_path / "out")
    sizes = {k: len(prepared.encoded[k]) for k in ("train", "validation", "test")}
    assert {k: a["split"][k] for k in sizes} == sizes
    assert a["split"]["overlong"] == prepared.dropped == a["tokens"]["over_max_length"] == 12
    assert a["contamination"][0]["records"] == sizes["test"]
    line = f"split as train makes it: train {sizes['train']}, validation {sizes['validation']}, test {sizes['test']}"
    assert line + " (without the 12 longer than 128 tokens)" in summary_lines(a)
    assert f"train {sizes['train']}, validation" in (tmp_path / "out" / "audit.md").read_text()


def test_too_few_records_to_split_is_reported_not_raised(tmp_path, tok):
    path = _write_jsonl(tmp_path / "three.jsonl", _records(3))
    a = audit(DataConfig(source=str(path), val_fraction=0.5, test_fraction=0.4), tok, tmp_path / "out")
    assert "too few" in a["split"]["error"] and a["contamination"] == []
    assert any(line.startswith("split:") for line in summary_lines(a))
    two = _write_jsonl(tmp_path / "two.jsonl", _records(2))
    b = audit(DataConfig(source=str(two)), tok, tmp_path / "out2")  # trains 2 / 0 / 0: the warning `train` gives
    assert (b["split"]["train"], b["split"]["validation"], b["split"]["test"]) == (2, 0, 0)
    assert any(line.startswith("warning: the validation and test splits are empty") for line in summary_lines(b))


@pytest.mark.parametrize(
    "content,suffix,message",
    [
        (None, ".jsonl", "data file not found"),
        ('{"instruction": "a", "input": "b", "output": "c"}\n{not json\n', ".jsonl", "line 2 is not valid JSON"),
        ("[{]", ".json", "not valid JSON"),
        ('[{"question": "q", "answer": "a"}]', ".json", "missing column"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, tok, content, suffix, message):
    path = tmp_path / f"data{suffix}"
    if content is not None:
        path.write_text(content)
    with pytest.raises(MedtuneError) as e:
        audit(DataConfig(source=str(path)), tok, tmp_path / "out")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out" / "audit.json").exists()


def test_missing_against_file_is_a_clear_error(tmp_path, tok):
    path = _write_jsonl(tmp_path / "data.jsonl", _records(20))
    with pytest.raises(MedtuneError, match="data file not found"):
        audit(DataConfig(source=str(path)), tok, tmp_path / "out", against=[str(tmp_path / "nope.jsonl")])


def test_near_duplicates_and_containment_helpers():
    base = " ".join(f"word{i}" for i in range(100))
    changed = base.replace("word50", "other")
    other = " ".join(f"term{i}" for i in range(100))
    pairs = near_duplicate_pairs([base, other, changed])
    assert [(i, j) for i, j, _ in pairs] == [(0, 2)] and pairs[0][2] >= 0.8
    train = [{"instruction": "", "input": "", "output": base}]
    scores = containment(
        [
            {"instruction": "", "input": "", "output": changed},
            {"instruction": "", "input": "", "output": other},
            {"instruction": "", "input": "", "output": "short"},
        ],
        train,
    )["scores"]
    assert scores[0] > 0.8 and scores[1] == 0.0 and scores[2] == 0.0


def test_docs_state_the_audit_settings(root):
    text = " ".join((root / "docs" / "data.md").read_text(encoding="utf-8").split())
    assert f"MinHash over word {SHINGLE}-gram shingles with LSH, Jaccard >= {NEAR_THRESHOLD}" in text
    assert f"evaluation record's word {NGRAM}-grams" in text and f"rows above {CONTAMINATED:.0%}" in text


def test_wikidoc_audit(tmp_path, shared, root):
    data = shared / "wikidoc_patient_information" / "wikidoc_patient_information.json"
    tokenizer = shared / "gpt2_tokenizer"
    if not (data.is_file() and tokenizer.is_dir()):
        pytest.skip("../shared/data not present")
    from medtune.model import load_tokenizer

    t = time.perf_counter()
    a = audit(DataConfig(source=str(data)), load_tokenizer(str(tokenizer)), tmp_path / "wd")
    seconds = time.perf_counter() - t
    assert a["records"] == 5942 and a["invalid"]["rows"] == 0
    assert a["duplicates"]["exact"] == 92 and a["tokens"]["count"] == 5850
    assert a["tokens"]["max"] > 3000 and a["tokens"]["over_max_length"] > 0
    # measured: 26 findings (names of cited physicians and authors, wiki editors' e-mail addresses, web links)
    assert 0 < a["phi"]["total"] < 100, a["phi"]["counts"]
    assert seconds < 120, seconds
    print("\n".join(summary_lines(a)))
    # the split `train` makes with the default max_length (512): 79 over-long records left out
    sp = a["split"]
    assert (sp["train"], sp["validation"], sp["test"], sp["overlong"]) == (5189, 294, 288, 79)
    test_split = a["contamination"][0]  # as docs/data.md reports it
    docs = " ".join((root / "docs" / "data.md").read_text(encoding="utf-8").split())
    assert f"split {sp['train']:,} / {sp['validation']} / {sp['test']} as `train` makes it" in docs
    assert f"{test_split['above_threshold']} of the {test_split['records']} test-split records" in docs
    assert len(load_records(DataConfig(source=str(data)))) == 5942
