"""Multiple-choice medical benchmarks: prompt formats per task, log-likelihood scoring checked against a direct
computation, batching invariance, local files and clear errors; `medtune eval --benchmark` end to end."""

from __future__ import annotations

import json

import pytest
import torch

from medtune import medbench
from medtune.errors import MedtuneError

ROWS = {  # invented questions, in each hub dataset's own columns
    "medmcqa": [
        {
            "question": "Which organ makes insulin?",
            "opa": "Liver",
            "opb": "Pancreas",
            "opc": "Spleen",
            "opd": "Kidney",
            "cop": 1,
        },
        {"question": "Which vitamin prevents scurvy?", "opa": "A", "opb": "B12", "opc": "C", "opd": "D", "cop": 2},
    ],
    "medqa": [
        {
            "question": "A man has chest pain on exertion. First test?",
            "options": {"A": "ECG", "B": "MRI", "C": "Biopsy", "D": "EEG"},
            "answer_idx": "A",
        }
    ],
    "pubmedqa": [
        {
            "question": "Does rest help sprains?",
            "context": {"contexts": ["Rest was studied.", "It helped."]},
            "final_decision": "yes",
        },
        {"question": "Does coffee cure flu?", "context": {"contexts": ["No effect was seen."]}, "final_decision": "no"},
    ],
    "mmlu_anatomy": [{"question": "How many chambers has the heart?", "choices": ["2", "3", "4", "5"], "answer": 2}],
}


def write(tmp_path, name):
    f = tmp_path / f"{name}.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in ROWS[name]))
    return str(f)


@pytest.fixture(scope="module")
def model(tok):
    from medtune.model import build_random

    return build_random("random:tiny", tok).eval()


def test_loglik_matches_a_direct_computation_and_batching(model, tok, tmp_path):
    items = medbench.load_task("medmcqa", write(tmp_path, "medmcqa")) + medbench.load_task(
        "pubmedqa", write(tmp_path, "pubmedqa")
    )
    ll = medbench.choice_logliks(model, tok, items, batch_size=3)
    one = medbench.choice_logliks(model, tok, items, batch_size=1)
    assert [x for row in ll for x in row] == pytest.approx([x for row in one for x in row], abs=1e-4)
    it = items[2]
    ctx = tok(it.prompt, add_special_tokens=False)["input_ids"]
    cont = tok(" " + it.choices[1], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([ctx + cont])).logits[0].log_softmax(-1)
    direct = sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))
    assert ll[2][1] == pytest.approx(direct, abs=1e-4)


def test_accuracy_follows_the_loglik(model, tok, tmp_path, monkeypatch):
    items = medbench.load_task("pubmedqa", write(tmp_path, "pubmedqa"))
    res = medbench.score(model, tok, items, bootstrap=200)
    assert 0 <= res["acc"] <= 1 and res["n"] == 2 and res["acc_ci"][0] <= res["acc"] <= res["acc_ci"][1]
    # a model that prefers the gold answer gets every question right
    monkeypatch.setattr(
        medbench.scoring,
        "choice_logliks",
        lambda m, t, its, b=32: [[0.0 if j == i.gold else -5.0 for j in range(len(i.choices))] for i in its],
    )
    assert medbench.score(model, tok, items)["acc"] == 1.0


def test_errors(tmp_path, monkeypatch):
    with pytest.raises(MedtuneError, match="unknown benchmark 'nope'"):
        medbench.parse_benchmarks("medqa,nope")
    assert [n for n, _ in medbench.parse_benchmarks("mmlu_medical")] == [f"mmlu_{s}" for s in medbench.MMLU_MEDICAL]
    assert medbench.parse_benchmarks("medqa=x.jsonl") == [("medqa", "x.jsonl")]
    with pytest.raises(MedtuneError, match="file not found"):
        medbench.load_task("medqa", str(tmp_path / "none.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n')
    with pytest.raises(MedtuneError, match="does not have the"):
        medbench.load_task("medmcqa", str(bad))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MedtuneError, match="hub"):
        medbench.load_task("medmcqa")


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, tiny_config):
    from medtune import training

    out = tmp_path_factory.mktemp("bench") / "run"
    training.run(tiny_config(out, "train.max_steps=2", "data.max_records=30"))
    return out


def test_eval_runs_benchmarks_base_vs_tuned(bench_run, tmp_path, capsys):
    from medtune.cli import main

    out = bench_run
    spec = f"medmcqa={write(tmp_path, 'medmcqa')},pubmedqa={write(tmp_path, 'pubmedqa')}"
    assert main(["eval", str(out), "--num-samples", "0", "--benchmark", spec]) == 0
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(metrics["benchmarks"]) == {"medmcqa", "pubmedqa"}
    assert metrics["benchmarks"]["pubmedqa"]["chance"] == pytest.approx(1 / 3)
    assert {"acc", "acc_norm", "n"} <= set(metrics["benchmarks"]["medmcqa"]["tuned"])
    assert "| medmcqa | 2 |" in (out / "eval" / "report.md").read_text()
    assert main(["eval", str(out), "--benchmark", "bogus"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_forgetting_is_flagged_in_metrics_log_report_and_card(bench_run, tmp_path, capsys, monkeypatch):
    """The tuned model scored below the base model's 95% interval on one benchmark (the scorer rigged: the base
    picks every gold answer, the tuned model every gold answer of PubMedQA and none of MedMCQA)."""
    from medtune import evaluate, rundir
    from medtune.cli import main
    from medtune.modelcard import model_card

    real = evaluate.run_benchmarks

    def rigged(model, tok, tasks, cfg, side, *_):  # identity and reuse dropped: no kept base scores either way
        def logliks(m, t, items, b=16):
            right = side == "base" or items[0].task == "pubmedqa"
            return [[0.0 if (j == i.gold) == right else -5.0 for j in range(len(i.choices))] for i in items]

        with monkeypatch.context() as m:
            m.setattr(medbench.scoring, "choice_logliks", logliks)
            return real(model, tok, tasks, cfg, side)

    monkeypatch.setattr(evaluate, "run_benchmarks", rigged)
    rows = ROWS["medmcqa"] * 10  # 20 questions: a base interval that a tuned accuracy of 0 falls below
    (tmp_path / "medmcqa.jsonl").write_text(
        "".join(json.dumps({**r, "id": f"q{k}"}) + "\n" for k, r in enumerate(rows))
    )
    spec = f"medmcqa={tmp_path / 'medmcqa.jsonl'},pubmedqa={write(tmp_path, 'pubmedqa')}"
    assert main(["eval", str(bench_run), "--num-samples", "0", "--benchmark", spec]) == 0
    bench = json.loads((bench_run / "eval" / "metrics.json").read_text())["benchmarks"]
    assert bench["medmcqa"]["tuned"]["acc"] == 0 and bench["medmcqa"]["base"]["acc"] == 1
    assert bench["medmcqa"]["forgetting"] is True and bench["pubmedqa"]["forgetting"] is False
    warning = "warning: forgetting on medmcqa: tuned accuracy 0.000 is below the base model's 95% interval"
    logged = capsys.readouterr()  # the table on stdout, the warning on stderr
    assert f"eval: {warning}" in logged.err and "forgetting on pubmedqa" not in logged.out + logged.err
    report = (bench_run / "eval" / "report.md").read_text()
    assert f"**{warning}" in report and "| 0.250 | **yes** |" in report and "| 0.333 | no |" in report
    card = model_card(bench_run, rundir.open_run(bench_run).config)
    assert warning in card and "**yes**" in card


def test_forgetting_needs_the_base_interval():
    from medtune.report import benchmark_table, forgetting_warnings

    base = {"n": 40, "acc": 0.5, "acc_ci": [0.35, 0.65]}
    assert medbench.forgetting(base, {"acc": 0.34}) is True
    assert medbench.forgetting(base, {"acc": 0.35}) is False  # at the lower end: not below it
    assert medbench.forgetting({**base, "acc_ci": [None, None]}, {"acc": 0.0}) is None  # eval.bootstrap=0
    old = {"x": {"base": base, "tuned": {"n": 40, "acc": 0.2, "acc_ci": [0.1, 0.3]}, "chance": 0.25}}
    assert forgetting_warnings(old) == [
        (
            "warning: forgetting on x: tuned accuracy 0.200 is below the base model's 95% "
            "interval [0.350, 0.650] (base 0.500)"
        )
    ]  # metrics written before the flag
    no_ci = {"x": {**old["x"], "base": {**base, "acc_ci": [None, None]}, "forgetting": None}}
    assert "| 0.250 | n/a |" in benchmark_table(no_ci) and not forgetting_warnings(no_ci)
