"""medtune.medbench: lm-eval's prompt formats, log-likelihood scoring checked against a computation by hand,
batching and truncation, PeftModel and disable_adapter, seeded subsets, groups, and one-line errors.
Every question here is invented for the tests."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
import torch

from medtune import medbench
from medtune.errors import MedtuneError

MEDMCQA = [  # openlifescienceai/medmcqa columns; cop is 0-based
    {
        "id": "m1",
        "question": "Which organ secretes insulin?",
        "opa": "Liver",
        "opb": "Pancreas",
        "opc": "Spleen",
        "opd": "Kidney",
        "cop": 1,
        "choice_type": "single",
        "subject_name": "Physiology",
    },
    {
        "id": "m2",
        "question": "Lack of which vitamin causes scurvy?",
        "opa": "Vitamin C",
        "opb": "Vitamin D",
        "opc": "Vitamin K",
        "opd": "Vitamin A",
        "cop": 0,
        "choice_type": "single",
        "subject_name": "Biochemistry",
    },
    {
        "id": "m3",
        "question": "A typical adult resting heart rate is",
        "opa": "20/min",
        "opb": "40/min",
        "opc": "70/min",
        "opd": "150/min",
        "cop": 2,
        "choice_type": "single",
        "subject_name": "Physiology",
    },
    {
        "id": "m4",
        "question": "Which bone is in the forearm?",
        "opa": "Femur",
        "opb": "Tibia",
        "opc": "Humerus",
        "opd": "Radius",
        "cop": 3,
        "choice_type": "single",
        "subject_name": "Anatomy",
    },
]
MEDQA = [  # GBaker/MedQA-USMLE-4-options columns
    {
        "question": "A 60-year-old man has crushing chest pain for 30 minutes. What is the first test?",
        "options": {"A": "ECG", "B": "MRI of the head", "C": "Skin biopsy", "D": "EEG"},
        "answer_idx": "A",
        "answer": "ECG",
        "meta_info": "step1",
    },
    {
        "question": "A child has a barking cough and stridor at night. What is the most likely diagnosis?",
        "options": {"A": "Asthma", "B": "Croup", "C": "Pneumonia", "D": "Otitis media"},
        "answer_idx": "B",
        "answer": "Croup",
        "meta_info": "step2&3",
    },
    {
        "question": "A woman has fatigue and a low ferritin level. Which supplement helps?",
        "options": {"A": "Zinc", "B": "Iodine", "C": "Iron", "D": "Calcium"},
        "answer_idx": "C",
        "answer": "Iron",
        "meta_info": "step1",
    },
]
MEDQA_HF = [  # the same questions as GBaker/MedQA-USMLE-4-options-hf, lm-eval's copy
    {
        "sent1": r["question"],
        **{f"ending{i}": r["options"][k] for i, k in enumerate("ABCD")},
        "label": "ABCD".index(r["answer_idx"]),
    }
    for r in MEDQA
]
PUBMEDQA = [  # qiaojin/PubMedQA pqa_labeled columns
    {
        "pubid": 1,
        "question": "Does daily walking improve sleep quality?",
        "context": {
            "contexts": ["Forty adults walked daily for a month.", "Sleep scores improved."],
            "labels": ["METHODS", "RESULTS"],
        },
        "long_answer": "It seems to.",
        "final_decision": "yes",
    },
    {
        "pubid": 2,
        "question": "Does eating carrots cure short sight?",
        "context": {"contexts": ["Refraction did not change in any group."], "labels": ["RESULTS"]},
        "long_answer": "No.",
        "final_decision": "no",
    },
    {
        "pubid": 3,
        "question": "Is a second opinion useful for rare rashes?",
        "context": {"contexts": ["Opinions differed in half of the cases."], "labels": ["RESULTS"]},
        "long_answer": "Unclear.",
        "final_decision": "maybe",
    },
]
PUBMEDQA_BIGBIO = [  # bigbio/pubmed_qa source schema (lm-eval's layout)
    {"QUESTION": r["question"], "CONTEXTS": r["context"]["contexts"], "final_decision": r["final_decision"]}
    for r in PUBMEDQA
]
MMLU = [  # cais/mmlu columns
    {
        "question": " How many bones does an adult human have? ",
        "subject": "anatomy",
        "choices": ["106", "206", "306", "406"],
        "answer": 1,
    },
    {
        "question": "Which nerve supplies the diaphragm?",
        "subject": "anatomy",
        "choices": ["Vagus", "Phrenic", "Ulnar", "Radial"],
        "answer": 1,
    },
    {
        "question": "Which blood test best reflects recent bleeding?",
        "subject": "clinical_knowledge",
        "choices": ["Sodium", "Hemoglobin", "Lipase", "TSH"],
        "answer": 1,
    },
]


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def model(tok):
    from medtune.model import build_random

    return build_random("random:tiny", tok).eval()


@pytest.fixture
def files(tmp_path):
    return {
        "medmcqa": jsonl(tmp_path / "medmcqa.jsonl", MEDMCQA),
        "medqa": jsonl(tmp_path / "medqa.jsonl", MEDQA),
        "pubmedqa": jsonl(tmp_path / "pubmedqa.jsonl", PUBMEDQA),
        "mmlu_anatomy": jsonl(tmp_path / "mmlu.jsonl", MMLU),
    }


def by_hand(model, tok, prompt: str, continuation: str, max_len: int | None = None) -> float:
    """log P(continuation | prompt): one unpadded sequence, every logit, log-softmax written out."""
    ctx = tok(prompt)["input_ids"]
    cont = tok(prompt + continuation)["input_ids"][len(ctx) :]
    seq = (ctx + cont)[-(max_len + 1) :] if max_len else ctx + cont
    with torch.no_grad():
        logits = model(torch.tensor([seq[:-1]])).logits[0].double()
    logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    first = len(seq) - 1 - len(cont)  # the position whose logits predict the first continuation token
    return sum(float(logp[first + k, t]) for k, t in enumerate(cont))


# ---------------------------------------------------------------- formats and files


def test_prompt_formats_are_lm_evals(files, tmp_path):
    mc = medbench.load_task("medmcqa", files["medmcqa"])
    assert mc[0].prompt == (
        "Question: Which organ secretes insulin?\nChoices:\nA. Liver\nB. Pancreas\nC. Spleen\nD. Kidney\nAnswer:"
    )
    assert mc[0].choices == ["A", "B", "C", "D"] and [i.gold for i in mc] == [1, 0, 2, 3] and mc[0].id == "m1"
    qa = medbench.load_task("medqa", files["medqa"])
    assert qa[1].prompt == (
        "Question: A child has a barking cough and stridor at night. What is the most likely "
        "diagnosis?\nA. Asthma\nB. Croup\nC. Pneumonia\nD. Otitis media\nAnswer:"
    )
    assert [i.gold for i in qa] == [0, 1, 2]
    qa_hf = medbench.load_task("medqa", jsonl(tmp_path / "medqa_hf.jsonl", MEDQA_HF))
    assert [(i.prompt, i.gold) for i in qa_hf] == [(i.prompt, i.gold) for i in qa]
    pq = medbench.load_task("pubmedqa", files["pubmedqa"])
    assert pq[0].prompt == (
        "Abstract: Forty adults walked daily for a month.\nSleep scores improved.\n"
        "Question: Does daily walking improve sleep quality?\nAnswer:"
    )
    assert pq[0].choices == ["yes", "no", "maybe"] and [i.gold for i in pq] == [0, 1, 2]
    pq_bigbio = medbench.load_task("pubmedqa", jsonl(tmp_path / "bigbio.jsonl", PUBMEDQA_BIGBIO))
    assert [(i.prompt, i.gold) for i in pq_bigbio] == [(i.prompt, i.gold) for i in pq]
    mm = medbench.load_task("mmlu_anatomy", files["mmlu_anatomy"])  # keeps its own subject's rows
    assert len(mm) == 2 and mm[0].prompt == (
        "The following are multiple choice questions (with answers) about anatomy.\n\n"
        "How many bones does an adult human have?\nA. 106\nB. 206\nC. 306\nD. 406\nAnswer:"
    )
    ck = medbench.load_task("mmlu_clinical_knowledge", files["mmlu_anatomy"])
    assert len(ck) == 1 and ck[0].prompt.startswith(
        "The following are multiple choice questions (with answers) about clinical knowledge.\n\nWhich blood test"
    )
    assert {n: s.chance for n, s in medbench.TASKS.items()}["pubmedqa"] == pytest.approx(1 / 3)
    assert all(s.chance == 0.25 for n, s in medbench.TASKS.items() if n != "pubmedqa")


def test_csv_parquet_and_json_files_read_like_jsonl(files, tmp_path):
    ref = medbench.load_task("medqa", files["medqa"])
    csv = tmp_path / "medqa.csv"  # nested columns become text in a CSV: JSON ...
    pd.DataFrame([{**r, "options": json.dumps(r["options"])} for r in MEDQA]).to_csv(csv, index=False)
    assert medbench.load_task("medqa", str(csv)) == ref
    csv2 = tmp_path / "mmlu.csv"  # ... or Python literals, as pandas writes lists
    pd.DataFrame(MMLU).to_csv(csv2, index=False)
    assert medbench.load_task("mmlu_anatomy", str(csv2)) == medbench.load_task("mmlu_anatomy", files["mmlu_anatomy"])
    pq = tmp_path / "pubmedqa.parquet"
    pd.DataFrame(PUBMEDQA).to_parquet(pq)
    assert [i.prompt for i in medbench.load_task("pubmedqa", str(pq))] == [
        i.prompt for i in medbench.load_task("pubmedqa", files["pubmedqa"])
    ]
    keyed = tmp_path / "pqal.json"  # PubMedQA's own release: one object keyed by PMID
    keyed.write_text(json.dumps({str(100 + k): r for k, r in enumerate(PUBMEDQA_BIGBIO)}))
    items = medbench.load_task("pubmedqa", str(keyed))
    assert [i.id for i in items] == ["100", "101", "102"] and [i.gold for i in items] == [0, 1, 2]


def test_medmcqa_original_release_numbers_answers_from_one(tmp_path):
    rows = [{**r, "cop": r["cop"] + 1} for r in MEDMCQA]  # 1-4, as the MedMCQA release files
    items = medbench.load_task("medmcqa", jsonl(tmp_path / "raw.jsonl", rows))
    assert [i.gold for i in items] == [1, 0, 2, 3]


def _release_files(folder, medmcqa, mmlu, pubmedqa):
    """Rows in the hub layouts written as the original releases ship them: MedMCQA's dev.json (JSON Lines under a
    .json name, cop 1-4, raw UTF-8), MMLU's header-less data/test/<subject>_test.csv (answer letters), PubMedQA's
    ori_pqal.json (a dict keyed by PMID, upper-case fields)."""
    import csv

    dev = folder / "dev.json"
    dev.write_text(
        "".join(json.dumps({**r, "cop": int(r["cop"]) + 1, "exp": None}, ensure_ascii=False) + "\n" for r in medmcqa),
        encoding="utf-8",
    )
    test = folder / "data" / "test"
    test.mkdir(parents=True)
    for subject in sorted({r["subject"] for r in mmlu}):
        with open(test / f"{subject}_test.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(
                [r["question"], *r["choices"], "ABCD"[int(r["answer"])]] for r in mmlu if r["subject"] == subject
            )
    pqal = folder / "ori_pqal.json"
    pqal.write_text(
        json.dumps(
            {
                str(r["pubid"]): {
                    "QUESTION": r["question"],
                    "CONTEXTS": list(r["context"]["contexts"]),
                    "LABELS": list(r["context"].get("labels", [])),
                    "MESHES": [],
                    "YEAR": "2001",
                    "reasoning_required_pred": "yes",
                    "reasoning_free_pred": "yes",
                    "final_decision": r["final_decision"],
                    "LONG_ANSWER": r.get("long_answer", ""),
                }
                for r in pubmedqa
            }
        )
    )
    return {"medmcqa": str(dev), "mmlu": str(test), "pubmedqa": str(pqal)}


def _same_items(a, b, ids=True):
    key = (lambda i: (i.id, i.prompt, i.choices, i.gold)) if ids else (lambda i: (i.prompt, i.choices, i.gold))
    return [key(i) for i in a] == [key(i) for i in b]


def test_original_releases_read_as_they_come(tmp_path):
    medmcqa = [{**r, "question": r["question"] + "\u2029(para)"} if k == 1 else r for k, r in enumerate(MEDMCQA)]
    mmlu = MMLU + [
        {
            "question": 'Which, of these, is "long"?\nPick one.',
            "subject": "anatomy",
            "choices": ["Femur", "None", "NA", "1,5"],
            "answer": 0,
        }
    ]
    got = _release_files(tmp_path, medmcqa, mmlu, PUBMEDQA)
    hub = tmp_path / "hub"
    hub.mkdir()
    dev = medbench.load_task("medmcqa", got["medmcqa"])
    assert _same_items(dev, medbench.load_task("medmcqa", jsonl(hub / "medmcqa.jsonl", medmcqa)))
    assert [i.gold for i in dev] == [1, 0, 2, 3] and "\u2029(para)" in dev[1].prompt  # a U+2029 keeps its line
    pqal = medbench.load_task("pubmedqa", got["pubmedqa"])
    assert _same_items(pqal, medbench.load_task("pubmedqa", jsonl(hub / "pubmedqa.jsonl", PUBMEDQA)))
    assert [i.id for i in pqal] == ["1", "2", "3"]  # the PMIDs
    for subject in ("anatomy", "clinical_knowledge"):  # a folder: each subject reads <subject>_test.csv
        name = f"mmlu_{subject}"
        ref = medbench.load_task(name, jsonl(hub / "mmlu.jsonl", mmlu))
        assert _same_items(medbench.load_task(name, got["mmlu"]), ref, ids=False)
        assert _same_items(medbench.load_task(name, f"{got['mmlu']}/{subject}_test.csv"), ref, ids=False)
    odd = medbench.load_task("mmlu_anatomy", got["mmlu"])[-1]  # quotes, commas, a newline, "None" and "NA" kept
    assert odd.prompt.endswith('Which, of these, is "long"?\nPick one.\nA. Femur\nB. None\nC. NA\nD. 1,5\nAnswer:')
    with pytest.raises(
        MedtuneError, match="anatomy_test.csv has no rows with subject 'college_medicine' \\(found: anatomy\\)"
    ):  # the subject comes from the file name
        medbench.load_task("mmlu_college_medicine", f"{got['mmlu']}/anatomy_test.csv")


@pytest.mark.parametrize(
    "name, fname, content, message",
    [
        ("medmcqa", "dev.json", '{"question": "x", "cop": 1}\n{oops\n', "line 2 is not valid JSON"),
        ("medmcqa", "dev.json", "[{", "not valid JSON"),
        ("pubmedqa", "ori_pqal.json", '{"1": "yes"}', "must hold a list of records"),
        ("mmlu_anatomy", "anatomy_test.csv", "What?,a,b,c,d\nWhy?,a,b,c,d\n", "row 1 does not have the col"),
        ("mmlu_anatomy", "notes.txt", "hello", "is not a .json, .jsonl, .csv or .parquet file"),
    ],
)
def test_unreadable_release_files_name_the_layouts(tmp_path, name, fname, content, message):
    (tmp_path / fname).write_text(content)
    with pytest.raises(MedtuneError, match=message) as e:
        medbench.load_task(name, str(tmp_path / fname))
    assert "\n" not in str(e.value) and medbench.TASKS[name].columns in str(e.value)
    assert "original" in str(e.value)


def test_mmlu_release_folder_without_the_subject_fails_in_one_line(tmp_path):
    (tmp_path / "anatomy_test.csv").write_text("Q?,a,b,c,d,A\n")
    with pytest.raises(MedtuneError, match="folder .* has no college_medicine_test.csv") as e:
        medbench.load_task("mmlu_college_medicine", str(tmp_path))
    assert "\n" not in str(e.value)


def test_shared_benchmark_files_read_alike_in_the_original_layouts(shared, tmp_path):
    """The real hub-layout files of ../shared/data/medbench, rewritten in the original releases' layouts, give the
    same questions (skipped where the shared data is absent)."""
    folder = shared / "medbench"
    names = ("medmcqa_validation", "mmlu_medical_test", "pubmedqa_pqa_labeled")
    if not all((folder / f"{n}.parquet").is_file() for n in names):
        pytest.skip(f"{folder} not present")
    rows = {n: pd.read_parquet(folder / f"{n}.parquet").to_dict(orient="records") for n in names}
    for r in rows["mmlu_medical_test"]:
        r["choices"] = list(r["choices"])
    for r in rows["pubmedqa_pqa_labeled"]:
        r["context"] = {k: list(v) for k, v in r["context"].items() if k in ("contexts", "labels")}
    got = _release_files(tmp_path, *rows.values())
    assert _same_items(
        medbench.load_task("medmcqa", got["medmcqa"]),
        medbench.load_task("medmcqa", str(folder / "medmcqa_validation.parquet")),
    )
    assert _same_items(
        medbench.load_task("pubmedqa", got["pubmedqa"]),
        medbench.load_task("pubmedqa", str(folder / "pubmedqa_pqa_labeled.parquet")),
    )
    hub = medbench.load_benchmarks(medbench.parse_benchmarks(f"mmlu_medical={folder / 'mmlu_medical_test.parquet'}"))
    release = medbench.load_benchmarks(medbench.parse_benchmarks(f"mmlu_medical={got['mmlu']}"))
    assert [len(v) for v in release.values()] == [135, 265, 144, 173, 100, 272]
    assert all(_same_items(release[n], hub[n], ids=False) for n in hub)


def test_limit_is_a_seeded_subset_in_order(files):
    every = medbench.load_task("medmcqa", files["medmcqa"])
    two = medbench.load_task("medmcqa", files["medmcqa"], limit=2, seed=5)
    assert len(two) == 2 and two == medbench.load_task("medmcqa", files["medmcqa"], limit=2, seed=5)
    assert [every.index(i) for i in two] == sorted(every.index(i) for i in two)
    assert {
        tuple(i.id for i in medbench.load_task("medmcqa", files["medmcqa"], limit=2, seed=s)) for s in range(10)
    } != {tuple(i.id for i in two)}  # other seeds pick other questions
    assert medbench.load_task("medmcqa", files["medmcqa"], limit=99) == every
    with pytest.raises(MedtuneError, match="at least 1"):
        medbench.load_task("medmcqa", files["medmcqa"], limit=0)


@pytest.mark.parametrize(
    "name, rows, message",
    [
        (
            "medmcqa",
            [{"question": "x", "opa": "a", "opb": "b", "opc": "c"}],
            "row 1 does not have the columns.*missing .opd.",
        ),
        ("medmcqa", [MEDMCQA[0], {**MEDMCQA[1], "cop": 7}], "row 2 .*cop 7 is not an answer index"),
        ("medmcqa", [{**MEDMCQA[0], "cop": -1}], "cop -1"),  # the hub's test split: no answers
        ("medqa", [{**MEDQA[0], "options": ["ECG", "MRI"]}], "must map A, B, C and D"),
        ("pubmedqa", [{**PUBMEDQA[0], "final_decision": "perhaps"}], "'perhaps' is not yes, no or maybe"),
        ("mmlu_anatomy", [{**MMLU[0], "choices": ["1", "2", "3"]}], "list of 4 option texts"),
        ("mmlu_anatomy", [MMLU[2]], "no rows with subject 'anatomy' \\(found: clinical_knowledge\\)"),
        ("medqa", [], "holds no records"),
    ],
)
def test_bad_records_fail_in_one_line(tmp_path, name, rows, message):
    with pytest.raises(MedtuneError, match=message) as e:
        medbench.load_task(name, jsonl(tmp_path / "bad.jsonl", rows))
    assert "\n" not in str(e.value)


def test_bad_files_fail_in_one_line(tmp_path):
    cases = {
        "missing.jsonl": (None, "file not found"),
        "notes.txt": ("hello", "not a .json, .jsonl, .csv or .parquet"),
        "broken.jsonl": ('{"question": 1}\n{oops\n', "line 2 is not valid JSON"),
        "broken.json": ("[{", "not valid JSON"),
        "scalar.json": ("3", "must hold a list of records"),
        "broken.parquet": ("not parquet", "cannot read .parquet file"),
    }
    for fname, (content, message) in cases.items():
        if content is not None:
            (tmp_path / fname).write_text(content)
        with pytest.raises(MedtuneError, match=message) as e:
            medbench.load_task("medqa", str(tmp_path / fname))
        assert "\n" not in str(e.value), fname
    with pytest.raises(MedtuneError, match="unknown benchmark 'usmle'"):
        medbench.load_task("usmle")
    with pytest.raises(MedtuneError, match="group of tasks"):
        medbench.load_task("mmlu_medical")


def test_offline_hub_id_fails_in_one_line(monkeypatch):
    from medtune import hub

    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)
    for name in ("medmcqa", "pubmedqa", "mmlu_anatomy"):
        with pytest.raises(MedtuneError, match=f"unreachable.*--benchmark {name}=FILE") as e:
            medbench.load_task(name)
        assert "\n" not in str(e.value) and medbench.TASKS[name].hub in str(e.value)


def test_parse_benchmarks():
    P = medbench.parse_benchmarks
    assert P("medmcqa") == [("medmcqa", None)]
    assert P(" MedQA = data/medqa test.jsonl , pubmedqa") == [("medqa", "data/medqa test.jsonl"), ("pubmedqa", None)]
    assert P("medqa_4options,medqa") == [("medqa", None)]  # lm-eval's name; a repeat is kept once
    group = P("mmlu_medical=all.parquet")
    assert [b.name for b in group] == [f"mmlu_{s}" for s in medbench.MMLU_MEDICAL]
    assert {b.source for b in group} == {"all.parquet"}
    assert [b.name for b in P("mmlu_anatomy,mmlu_medical")][:2] == ["mmlu_anatomy", "mmlu_clinical_knowledge"]
    for text, message in [
        (
            "medmcqa,usmle",
            "unknown benchmark 'usmle'; choose from medmcqa, medqa, pubmedqa, mmlu_medical \\(= mmlu_anatomy",
        ),
        ("", "at least one name"),
        ("medqa,,pubmedqa", "empty name"),
        ("medqa=", "no file after '='"),
        ("medqa=a.jsonl,medqa=b.jsonl", "given twice with different data"),
        ("mmlu_anatomy=a.csv,mmlu_medical", "given twice"),
    ]:
        with pytest.raises(MedtuneError, match=message):
            P(text)


# ---------------------------------------------------------------- scoring


def test_scores_match_a_computation_by_hand(model, tok, files):
    items = medbench.load_task("medmcqa", files["medmcqa"]) + medbench.load_task("pubmedqa", files["pubmedqa"])
    res = medbench.score(model, tok, items, batch_size=4, bootstrap=200)
    assert res["n"] == 7 and res["task"] == "medmcqa+pubmedqa" and res["truncated"] == 0
    for key in ("acc", "acc_norm"):
        lo, hi = res[f"{key}_ci"]
        assert 0 <= lo <= res[key] <= hi <= 1
    assert res["chance"] == pytest.approx((4 * 0.25 + 3 / 3) / 7)
    for item, p in zip(items, res["per_item"]):
        direct = [by_hand(model, tok, item.prompt, " " + c) for c in item.choices]
        assert p["logliks"] == pytest.approx(direct, abs=1e-4)
        assert p["pred"] == max(range(len(direct)), key=direct.__getitem__)
    assert res["acc"] == sum(p["pred"] == p["gold"] for p in res["per_item"]) / 7


def test_batching_and_batch_order_do_not_change_results(model, tok, files):
    items = [i for name in files for i in medbench.load_task(name, files[name])]
    one = medbench.score(model, tok, items, batch_size=1)
    four = medbench.score(model, tok, items, batch_size=4)
    assert one["acc"] == four["acc"] and one["acc_norm"] == four["acc_norm"]
    for a, b in zip(one["per_item"], four["per_item"]):
        assert a["logliks"] == pytest.approx(b["logliks"], abs=1e-4)
    again = medbench.choice_logliks(model, tok, items[::-1], batch_size=3)[::-1]
    assert [x for row in again for x in row] == pytest.approx(
        [x for p in one["per_item"] for x in p["logliks"]], abs=1e-4
    )


def test_long_prompts_are_cut_on_the_left_like_lm_eval(model, tok):
    long = {**PUBMEDQA[0], "context": {"contexts": ["Walking was studied in an invented cohort of adults."] * 80}}
    items = [
        medbench.Item("pubmedqa", "long", medbench.pubmedqa_item(long)[0], ["yes", "no", "maybe"], 0),
        medbench.Item("medmcqa", "long", "Question: " + "very " * 700 + "long?\nAnswer:", list("ABCD"), 0),
    ]
    assert all(len(tok(i.prompt)["input_ids"]) > 512 for i in items)  # random:tiny has 512 positions
    res = medbench.score(model, tok, items, batch_size=2)
    assert res["truncated"] == 2
    for item, p in zip(items, res["per_item"]):
        direct = [by_hand(model, tok, item.prompt, " " + c, max_len=512) for c in item.choices]
        assert p["logliks"] == pytest.approx(direct, abs=1e-4)


class Rigged(torch.nn.Module):
    """A causal LM that adds `boost` to the logits of some tokens at every position: it prefers a continuation made
    of those tokens whatever the prompt says."""

    def __init__(self, base, token_ids, boost=30.0):
        super().__init__()
        self.base, self.token_ids, self.boost = base, list(token_ids), boost
        self.config = base.config

    def forward(self, input_ids, attention_mask=None, **kwargs):
        out = self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        out.logits[..., self.token_ids] += self.boost
        return out


def test_a_model_rigged_toward_the_gold_answer_gets_everything_right(model, tok, files):
    mc = medbench.load_task("medmcqa", files["medmcqa"])
    letter_b = Rigged(model, tok(" B")["input_ids"])
    assert medbench.score(letter_b, tok, [i for i in mc if i.gold == 1])["acc"] == 1.0
    assert medbench.score(letter_b, tok, [i for i in mc if i.gold != 1])["acc"] == 0.0
    pq = medbench.load_task("pubmedqa", files["pubmedqa"])  # " yes" is two tokens of the tiny tokenizer
    assert len(tok(" yes")["input_ids"]) == 2
    yes = Rigged(model, tok(" yes")["input_ids"])
    res = medbench.score(yes, tok, pq)
    assert [p["pred"] for p in res["per_item"]] == [0, 0, 0] and res["acc"] == pytest.approx(1 / 3)
    assert medbench.score(yes, tok, [pq[0]])["acc"] == 1.0


def test_acc_norm_divides_by_the_choice_length_in_characters(model, tok, files, monkeypatch):
    pq = medbench.load_task("pubmedqa", files["pubmedqa"])
    # yes -3.0 (-1.0 a character), no -2.4 (-1.2), maybe -4.0 (-0.8): acc picks "no", acc_norm "maybe"
    monkeypatch.setattr(
        medbench.scoring, "choice_logliks", lambda m, t, items, b=16: [[-3.0, -2.4, -4.0] for _ in items]
    )
    res = medbench.score(model, tok, pq)
    assert [(p["pred"], p["pred_norm"]) for p in res["per_item"]] == [(1, 2)] * 3
    assert res["acc"] == pytest.approx(1 / 3) and res["acc_norm"] == pytest.approx(1 / 3)
    assert [p["gold"] for p in res["per_item"]] == [0, 1, 2]


def test_peft_model_tuned_vs_base_with_disable_adapter(tok, files):
    from peft import LoraConfig, get_peft_model

    from medtune.model import build_random

    base = build_random("random:tiny", tok)
    items = medbench.load_task("medmcqa", files["medmcqa"]) + medbench.load_task("pubmedqa", files["pubmedqa"])
    plain = medbench.score(base, tok, items)
    peft = get_peft_model(
        build_random("random:tiny", tok), LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True)
    )
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    peft.train()
    tuned = medbench.score(peft, tok, items)
    assert peft.training  # the model's mode is restored
    with peft.disable_adapter():
        off = medbench.score(peft, tok, items)
    flat = lambda r: [x for p in r["per_item"] for x in p["logliks"]]  # noqa: E731
    assert flat(off) == pytest.approx(flat(plain), abs=1e-5)
    assert max(abs(a - b) for a, b in zip(flat(tuned), flat(plain))) > 1e-3
    delta = medbench.compare(off, tuned, bootstrap=200)
    assert delta["n"] == 7 and delta["delta_acc"] == pytest.approx(tuned["acc"] - off["acc"])
    lo, hi = delta["delta_acc_ci"]
    assert lo <= delta["delta_acc"] <= hi
    with pytest.raises(MedtuneError, match="same questions"):
        medbench.compare(off, medbench.score(base, tok, items[:3]))


def test_mmlu_medical_from_one_shared_file_and_its_group_row(model, tok, tmp_path, caplog):
    rows = [
        {
            "question": f"Invented {s.replace('_', ' ')} question number {k}?",
            "subject": s,
            "choices": ["one", "two", "three", "four"],
            "answer": k % 4,
        }
        for s in medbench.MMLU_MEDICAL
        for k in range(2)
    ]
    benchmarks = medbench.parse_benchmarks(f"mmlu_medical={jsonl(tmp_path / 'mmlu_all.jsonl', rows)}")
    tasks = medbench.load_benchmarks(benchmarks)
    assert [len(v) for v in tasks.values()] == [2] * 6
    caplog.set_level(logging.INFO, logger="medtune.medbench")
    results = medbench.score_tasks(model, tok, tasks, batch_size=5)
    group = results["mmlu_medical"]
    logged = [r for r in caplog.records if r.name == "medtune.medbench"]
    assert group["n"] == 12 and group["members"] == [b.name for b in benchmarks] and len(logged) == 6
    assert group["acc"] == pytest.approx(sum(results[b.name]["acc"] * 2 for b in benchmarks) / 12)
    assert group["chance"] == 0.25 and "per_item" not in group
    no_ci = medbench.score_tasks(model, tok, tasks, bootstrap=0)["mmlu_medical"]
    logged = [r for r in caplog.records if r.name == "medtune.medbench"]
    assert no_ci["acc"] == group["acc"] and no_ci["acc_ci"] == [None, None] and len(logged) == 12


def test_empty_items_and_bad_batch_size(model, tok, files):
    with pytest.raises(MedtuneError, match="no benchmark questions"):
        medbench.score(model, tok, [])
    with pytest.raises(MedtuneError, match="batch size"):
        medbench.score(model, tok, medbench.load_task("medqa", files["medqa"]), batch_size=0)
