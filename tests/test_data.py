import json
import re

import pandas as pd
import pytest

from medtune.config import DataConfig
from medtune.data import (
    IGNORE_INDEX,
    empty_split_warning,
    encode,
    format_prompt,
    load_records,
    prepare,
    question_key,
    split_records,
    validate_records,
)
from medtune.errors import MedtuneError

REC = {
    "instruction": "Answer this question truthfully",
    "input": "What causes a fever?",
    "output": "A fever is usually the body fighting an infection.",
}


def test_labels_mask_prompt_and_keep_eos(tok):
    cfg = DataConfig()
    e = encode(REC, tok, cfg)
    prompt_len = len(tok(format_prompt(REC, cfg), add_special_tokens=False)["input_ids"])
    assert e["input_ids"][-1] == tok.eos_token_id
    assert e["labels"][-1] == tok.eos_token_id
    assert all(x == IGNORE_INDEX for x in e["labels"][:prompt_len])
    assert e["labels"][prompt_len:] == e["input_ids"][prompt_len:]
    assert tok.decode(e["input_ids"][prompt_len:-1]) == REC["output"]


def test_full_sequence_loss_when_completion_only_off(tok):
    e = encode(REC, tok, DataConfig(completion_only_loss=False))
    assert e["labels"] == e["input_ids"]


def test_no_input_template(tok):
    r = dict(REC, input="")
    assert "### Input" not in format_prompt(r, DataConfig())
    assert "### Input" in format_prompt(REC, DataConfig())


def test_split_is_leak_free_and_deterministic(make_records):
    rows = make_records(200)
    # the same question asked twice (with case/spacing/stray-space variants) must stay in one split
    rows += [dict(r, input=r["input"].upper().replace("?", " ?"), output=r["output"] + " Again.") for r in rows[:60]]
    s1 = split_records(rows, 0.1, 0.1, seed=7)
    s2 = split_records(list(rows), 0.1, 0.1, seed=7)
    assert s1 == s2
    keys = {name: {question_key(r) for r in part} for name, part in s1.items()}
    assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    assert sum(len(p) for p in s1.values()) == len(rows)
    assert len(keys["test"]) == 20 and len(keys["validation"]) == 20
    assert split_records(rows, 0.1, 0.1, seed=8)["test"] != s1["test"]


def test_duplicates_removed_and_bad_rows_named(make_records):
    rows = make_records(3) + make_records(1)
    unique, dups = validate_records([dict(r) for r in rows])
    assert len(unique) == 3 and dups == 1
    bad = make_records(5)
    bad[2]["output"] = "   "
    with pytest.raises(MedtuneError, match=r"rows 3 .*output"):
        validate_records(bad)
    bad = make_records(5)
    bad[3]["instruction"] = 12
    with pytest.raises(MedtuneError, match=r"non-string.*rows 4"):
        validate_records(bad)


@pytest.mark.parametrize("suffix", ["json", "jsonl", "csv", "parquet"])
def test_file_formats(tmp_path, suffix, make_records, write_jsonl):
    rows = make_records(5)
    path = tmp_path / f"d.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(rows))
    elif suffix == "jsonl":
        write_jsonl(path, rows)
    elif suffix == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    assert load_records(DataConfig(source=str(path))) == rows


SEP = "Line one.\u2028Line two.\u2029Next paragraph."  # legal unescaped in JSON strings; str.splitlines() breaks there


def write_user_file(path, rows, variant: str):
    """The files people have: `variant` is unicode-separators (.jsonl with U+2028/U+2029 in the text), bom-jsonl,
    bom-json, bom-csv (a UTF-8 byte-order mark first, as Excel and Notepad write), crlf-jsonl (Windows line ends)
    or no-final-newline (.jsonl)."""
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if variant == "bom-json":
        data = json.dumps(rows, ensure_ascii=False, indent=1)
    elif variant == "bom-csv":
        data = pd.DataFrame(rows).to_csv(index=False)
    else:
        end = "\r\n" if variant == "crlf-jsonl" else "\n"
        data = end.join(lines) + ("" if variant == "no-final-newline" else end)
    bom = "\ufeff" if variant.startswith("bom") else ""
    path.write_bytes((bom + data).encode("utf-8"))
    return path


USER_FILES = {
    "unicode-separators": "jsonl",
    "bom-jsonl": "jsonl",
    "bom-json": "json",
    "bom-csv": "csv",
    "crlf-jsonl": "jsonl",
    "no-final-newline": "jsonl",
}


@pytest.mark.parametrize("variant", list(USER_FILES))
def test_files_people_have_load_unchanged(tmp_path, variant, make_records):
    rows = make_records(4)
    rows[1]["output"] = SEP
    path = write_user_file(tmp_path / f"d.{USER_FILES[variant]}", rows, variant)
    assert load_records(DataConfig(source=str(path))) == rows  # no stray BOM in the first column name, no split text


@pytest.mark.parametrize("variant", ["unicode-separators", "bom-json", "crlf-jsonl", "no-final-newline"])
def test_files_people_have_train(tmp_path, variant, make_records, tiny_preset, capsys):
    from medtune.cli import main
    from medtune.data import read_table

    rows = make_records(30)
    for r in rows[::3]:
        r["output"] = SEP
    path = write_user_file(tmp_path / f"d.{USER_FILES[variant]}", rows, variant)
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--config",
            str(tiny_preset),
            "--output-dir",
            str(out),
            "--data",
            str(path),
            "--set",
            "train.max_steps=1",
            "--set",
            "train.eval_on_start=false",
            "--set",
            "train.report_to=none",
        ]
    )
    assert rc == 0, capsys.readouterr().err[-2000:]
    assert (out / "adapter_model.safetensors").is_file()
    held_out = read_table(out / "splits" / "validation.jsonl") + read_table(out / "splits" / "test.jsonl")
    assert len(held_out) == 6 and all(r in rows for r in held_out)  # the saved splits read back whole


def test_column_mapping_and_missing_columns(tmp_path, make_records, write_jsonl):
    rows = [{"q": r["input"], "a": r["output"], "instruction": r["instruction"]} for r in make_records(3)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    got = load_records(DataConfig(source=str(path), input_column="q", output_column="a"))
    assert got[0]["input"] == rows[0]["q"] and got[0]["output"] == rows[0]["a"]
    with pytest.raises(MedtuneError, match="missing column.*input"):
        load_records(DataConfig(source=str(path)))


def test_bad_files(tmp_path):
    with pytest.raises(MedtuneError, match="not found"):
        load_records(DataConfig(source=str(tmp_path / "none.jsonl")))
    (tmp_path / "x.jsonl").write_text('{"a": 1}\n{broken\n')
    with pytest.raises(MedtuneError, match="line 2"):
        load_records(DataConfig(source=str(tmp_path / "x.jsonl")))
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(MedtuneError, match="unsupported"):
        load_records(DataConfig(source=str(tmp_path / "x.txt")))


def test_overlong_drop_or_error(tmp_path, tok, make_records, write_jsonl):
    rows = make_records(30)
    rows[4]["output"] = "very long answer " * 100
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    p = prepare(DataConfig(source=str(path), max_length=128), tok)
    assert p.dropped == 1 and sum(len(v) for v in p.encoded.values()) == 29
    assert all(len(e["input_ids"]) <= 128 for v in p.encoded.values() for e in v)
    with pytest.raises(MedtuneError, match=r"rows 5\b"):
        prepare(DataConfig(source=str(path), max_length=128, overlong="error"), tok)


def test_empty_held_out_splits_are_one_warning(tmp_path, tok, make_records, write_jsonl, caplog):
    """A 2-record file trains 2 / 0 / 0: one warning line through the medtune logger says why and what to do."""
    path = write_jsonl(tmp_path / "two.jsonl", make_records(2))
    with caplog.at_level("WARNING", logger="medtune"):
        p = prepare(DataConfig(source=str(path), val_fraction=0.1, test_fraction=0.1), tok)
    assert [len(p.encoded[k]) for k in ("train", "validation", "test")] == [2, 0, 0]
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("medtune")]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    line = warnings[0].getMessage()
    assert "validation and test splits are empty: 2 distinct questions are too few" in line and "\n" not in line
    assert "data.val_fraction=0.1, data.test_fraction=0.1 (at least 3 are needed" in line
    assert "no validation loss" in line and "`medtune eval` will need --data FILE" in line
    caplog.clear()
    with caplog.at_level("WARNING", logger="medtune"):  # no held-out split asked for: nothing to warn about
        prepare(DataConfig(source=str(path), val_fraction=0.0, test_fraction=0.0), tok)
    assert not caplog.records


def test_empty_split_warning_names_the_cause():
    cfg = DataConfig(val_fraction=0.1, test_fraction=0.2, max_length=64)
    assert empty_split_warning(cfg, {"train": 9, "validation": 1, "test": 1}, 11) is None
    assert empty_split_warning(DataConfig(test_fraction=0.0), {"train": 2, "validation": 1, "test": 0}, 3) is None
    line = empty_split_warning(cfg, {"train": 9, "validation": 1, "test": 0}, 11)
    assert line == (
        "data: warning: the test split is empty: all its records are longer than data.max_length=64 tokens "
        "(raise data.max_length); `medtune eval` will need --data FILE"
    )
    line = empty_split_warning(cfg, {"train": 1, "validation": 0, "test": 1}, 1)
    assert "validation split is empty: 1 distinct question is too few to hold any out for data.val_fraction=0.1" in line


def test_the_sample_size_stated_in_the_docs_and_the_preset_is_true(root):
    n = len(load_records(DataConfig(source="builtin:sample")))
    for name in ("README.md", "docs/training.md", "configs/tiny-cpu.yaml"):
        text = (root / name).read_text(encoding="utf-8")
        stated = re.findall(r"builtin:sample`?[^.]{0,60}?(\d[\d,]*)[- ](?:medical Q&A )?records?", text)
        assert stated and all(int(s.replace(",", "")) == n for s in stated), (name, stated, n)


def test_builtin_sample_is_valid(tok):
    p = prepare(DataConfig(source="builtin:sample", max_length=256), tok)
    assert p.source_rows >= 150 and p.duplicates == 0 and len(p.encoded["test"]) > 0
