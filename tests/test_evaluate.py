"""Evaluation (issue 3): base vs tuned loss/perplexity, generation metrics, report.md + metrics.json.

One tiny GPT-2 (random weights, builtin tokenizer) is trained once per module to overfit ten short records;
the tests evaluate it on those same records (--data), so the tuned model must beat its base.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch

from medtune import evaluate, rundir
from medtune.cli import main
from medtune.data import encode
from medtune.notice import NOTICE
from medtune.report import ROWS
from medtune.validate import load_config

QA = [
    ("What causes a cold?", "A virus causes the common cold."),
    ("How is flu spread?", "Flu spreads through droplets from coughs and sneezes."),
    ("What is anemia?", "Anemia means too few red blood cells."),
    ("What helps a sore throat?", "Warm drinks and rest help a sore throat."),
    ("What is asthma?", "Asthma is a disease that narrows the airways."),
    ("How is acne treated?", "Acne is treated with creams and gentle washing."),
    ("What is a migraine?", "A migraine is a strong headache with nausea."),
    ("What lowers fever?", "Paracetamol and fluids can lower a fever."),
    ("What is eczema?", "Eczema is dry, itchy and red skin."),
    ("What is gout?", "Gout is joint pain caused by uric acid crystals."),
]

OVERRIDES = [
    "data.val_fraction=0.1",
    "data.test_fraction=0.1",
    'data.prompt_template="Q: {input}\\nA:"',
    'data.prompt_template_no_input="Q: {instruction}\\nA:"',
    "train.batch_size=8",
    "train.learning_rate=0.01",
    "train.warmup_ratio=0.0",
    "train.logging_steps=5",
    "train.eval_steps=20",
    "train.save_steps=1000",
    "train.report_to=none",
    "eval.max_new_tokens=20",
    "eval.num_samples=10",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from more threads, and on a busy 2-core machine two spinning
    OpenMP threads are up to 10x slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(tiny: Path, tmp: Path, name: str, records_file: Path, steps: int, extra: list[str] = ()) -> Path:
    from medtune import training

    out = tmp / name
    cfg = load_config(
        tiny,
        overrides=[f"output_dir={out}", f"data.source={records_file}", f"train.max_steps={steps}", *OVERRIDES, *extra],
    )
    training.run(cfg)
    return out


@pytest.fixture(scope="module")
def records_file(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("data") / "qa.jsonl"
    f.write_text("".join(json.dumps({"instruction": "Answer briefly.", "input": q, "output": a}) + "\n" for q, a in QA))
    return f


@pytest.fixture(scope="module")
def overfit(tmp_path_factory, tiny_preset, records_file):
    """A tiny run trained to overfit QA, evaluated on QA itself through the CLI: (run dir, metrics, stdout)."""
    run = _train(tiny_preset, tmp_path_factory.mktemp("runs"), "overfit", records_file, steps=40)
    return run


@pytest.fixture(scope="module")
def evaluated(overfit, records_file):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # greedy: the overfit model's answers are its training answers
        assert main(["eval", str(overfit), "--data", str(records_file), "--greedy"]) == 0
    out = overfit / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    files = {
        "report": (out / "report.md").read_text(),
        "samples": (out / "samples.jsonl").read_text(),
        "tmp": list(out.glob(".*tmp*")),
    }  # later tests evaluate again into the same folder
    return metrics, buf.getvalue(), files


def _independent_ppl(model, tok, cfg, records) -> tuple[float, float]:
    """exp(mean answer-token loss), one unpadded record at a time, through the model's own loss."""
    total, count = 0.0, 0
    for r in records:
        e = encode(r, tok, cfg.data)
        ids = torch.tensor([e["input_ids"]])
        labels = torch.tensor([e["labels"]])
        n = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss.item()  # mean over this record's answer tokens
        total += loss * n
        count += n
    return math.exp(total / count), total / count


def test_perplexity_is_exp_of_mean_answer_token_loss(overfit, evaluated, records_file, load_run):
    metrics = evaluated[0]
    model, tok, cfg = load_run(overfit)
    records = [json.loads(line) for line in records_file.read_text().splitlines()]
    tuned_ppl, tuned_loss = _independent_ppl(model, tok, cfg, records)
    with model.disable_adapter():
        base_ppl, base_loss = _independent_ppl(model, tok, cfg, records)
    assert metrics["tuned"]["perplexity"] == pytest.approx(tuned_ppl, rel=1e-4)
    assert metrics["tuned"]["loss"] == pytest.approx(tuned_loss, rel=1e-4)
    assert metrics["base"]["perplexity"] == pytest.approx(base_ppl, rel=1e-4)
    assert metrics["tuned"]["perplexity"] == pytest.approx(math.exp(metrics["tuned"]["loss"]), rel=1e-9)

    # chunked head (odd batch and chunk sizes) and the plain full-logits forward agree with it too
    encoded = [encode(r, tok, cfg.data) for r in records]
    answer_tokens = sum(sum(1 for x in e["labels"][1:] if x != -100) for e in encoded)
    longest = max(len(e["input_ids"]) for e in encoded)
    chunked = evaluate.answer_token_loss(model, encoded, tok.pad_token_id, max_tokens=3 * longest, chunk_tokens=5)
    plain = evaluate.answer_token_loss(model, encoded, tok.pad_token_id, max_tokens=4 * longest, use_chunks=False)
    for result in (chunked, plain):
        assert result["perplexity"] == pytest.approx(tuned_ppl, rel=1e-4)
        assert result["answer_tokens"] == answer_tokens == metrics["data"]["answer_tokens"]


def test_overfit_model_beats_its_base(evaluated):
    metrics = evaluated[0]
    base, tuned = metrics["base"], metrics["tuned"]
    assert tuned["perplexity"] < base["perplexity"] / 10
    assert tuned["rouge_l"] > base["rouge_l"] + 0.2
    assert tuned["eos_rate"] >= base["eos_rate"]
    for side in (base, tuned):
        assert 0 <= side["rouge_l"] <= 1 and 0 <= side["eos_rate"] <= 1
        assert 0 < side["mean_answer_tokens"] <= 20
        assert side["generated"] == len(QA) and 0 <= side["looping_answers"] <= 1
    assert {"load", "base loss", "base generation", "adapter", "tuned loss", "tuned generation"} <= set(
        metrics["seconds"]
    )
    assert metrics["data"] == {**metrics["data"], "records": len(QA), "dropped_overlong": 0, "split": None}


def _cell(text: str) -> float | None:
    text = text.split("[")[0].strip()  # the value, without its interval
    if text in ("", "n/a"):
        return None
    return float(text[:-1]) / 100 if text.endswith("%") else float(text)


def _interval(text: str) -> list[float] | None:
    m = re.search(r"\[([^,]+), ([^\]]+)\]", text)
    return [_cell(m.group(1)), _cell(m.group(2))] if m else None


def test_report_and_metrics_exist_and_agree(overfit, evaluated):
    metrics, stdout, files = evaluated
    from medtune.config import GenerateConfig

    # every decoding setting reaches metrics.json (top_k and min_p were left out of a hand-written list)
    assert {f.name for f in dataclasses.fields(GenerateConfig)} <= set(metrics["generation"])
    out = overfit / "eval"
    report = files["report"]
    for label, key, fmt in ROWS:
        row = re.search(rf"^\| {re.escape(label)} +\|([^|]*)\|([^|]*)\|([^|]*)\|$", report, re.M)
        assert row, f"no table row for {label}"
        assert row.group(0) in stdout  # the CLI printed the same table
        tol = 0.0006 if "%" in fmt else 10 ** -int(re.search(r"\.(\d)", fmt).group(1)) * 0.51
        for i, side in ((1, "base"), (2, "tuned")):
            assert _cell(row.group(i)) == pytest.approx(metrics[side][key], abs=tol), (label, side)
            if f"{key}_ci" in metrics[side]:  # ROUGE-L and EOS rate carry 95% bootstrap intervals
                lo, hi = metrics[side][f"{key}_ci"]
                assert lo <= metrics[side][key] <= hi
                assert _interval(row.group(i)) == pytest.approx([lo, hi], abs=tol), (label, side)
    # five samples: question, reference, base and tuned answers, as in samples.jsonl
    samples = [json.loads(line) for line in files["samples"].splitlines()]
    assert len(samples) == len(QA)
    assert len(re.findall(r"^### \d\. ", report, re.M)) == 5
    for s in samples[:5]:
        for text in (s["question"], s["reference"]):
            assert f"> {text}" in report
        for side in ("base", "tuned"):
            assert f"**{side.capitalize()}** (ROUGE-L {s[f'{side}_rouge_l']:.3f}" in report
            assert (f"> {s[side]}" if s[side] else "> (empty answer)") in report
    # loss curve image, config summary, notice
    img = re.search(r"!\[[^\]]*\]\(([^)]+\.png)\)", report)
    assert img and (out / img.group(1)).stat().st_size > 1000
    assert "| model | random:tiny |" in report and "| quantization | none |" in report
    assert NOTICE in report and metrics["notice"] == NOTICE
    assert not files["tmp"]  # atomic writes left no temporary files


def test_default_split_and_validation_split(overfit):
    m = evaluate.run(overfit, num_samples=1)
    assert m["data"]["split"] == "test" and m["data"]["records"] == 1
    assert m["data"]["source"].endswith("splits/test.jsonl")
    assert m["base"]["generated"] == m["tuned"]["generated"] == 1
    m = evaluate.run(overfit, split="validation", num_samples=0)
    assert m["data"]["split"] == "validation" and m["tuned"]["rouge_l"] is None
    assert {"load", "base loss", "adapter", "tuned loss", "total"} <= set(m["seconds"])
    assert math.isfinite(m["tuned"]["perplexity"])
    assert "n/a" in (overfit / "eval" / "report.md").read_text()


def test_generation_metric_helpers():
    assert evaluate.repeated_ngrams([[1, 2, 3, 4, 1, 2, 3, 4], [5, 5, 5], [7, 7, 7, 7, 7]]) == (1 + 1, 5 + 2)
    assert evaluate.repeated_4gram_share([[1, 2, 3]]) is None
    assert evaluate.rouge_l(["a virus causes colds", ""], ["A virus causes the common cold.", "x"]) == pytest.approx(
        [0.8, 0.0]
    )  # stemmed (colds -> cold): LCS 4 words, P 4/4, R 4/6
    # looping answers: per answer, more than 20% of its 4-grams repeat (answer 1: 4 of 9; answer 2: none)
    assert evaluate.looping_share([[1, 2, 3, 4, 5] * 2 + [6, 7], list(range(30)), [1, 1]]) == pytest.approx(1 / 3)


def test_loss_batches_by_length():
    lengths = [5, 100, 7, 98, 6, 99]
    batches = evaluate.length_batches(lengths, max_tokens=300)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 300  # the padded batch fits the budget
    assert batches[0] == [0, 4, 2]  # shortest first, together
    assert evaluate.length_batches([10] * 5, 1000, max_rows=2) == [[0, 1], [2, 3], [4]]


def test_user_errors_are_one_line_exit_2(overfit, tmp_path, capsys):
    fake = tmp_path / "fake"
    (fake / rundir.SPLITS).mkdir(parents=True)
    for name in (rundir.CONFIG, rundir.ADAPTER_CONFIG):
        (fake / name).write_bytes((overfit / name).read_bytes())
    assert main(["eval", str(fake)]) == 2  # a run folder holds the adapter's weights too
    err = capsys.readouterr().err.strip()
    assert "has adapter_config.json but no adapter_model.safetensors" in err and len(err.splitlines()) == 1, err
    (fake / rundir.ADAPTER_WEIGHTS).write_bytes((overfit / rundir.ADAPTER_WEIGHTS).read_bytes())
    rundir.split_path(fake, "test").write_text("")
    cases = [
        (["eval", str(tmp_path / "nope")], "folder not found"),
        (["eval", str(tmp_path)], "holds neither an adapter"),
        (["eval", str(overfit.parent / "overfit" / "config.yaml")], "not a folder"),
        (["eval", str(fake)], "test split of this run is empty"),
        (["eval", str(fake), "--split", "validation"], "saved no validation split"),
        (["eval", str(fake), "--split", "train"], "--split must be one of test, validation"),
        (["eval", str(fake), "--data", str(tmp_path / "missing.jsonl")], "data file not found"),
        (["eval", str(fake), "--num-samples", "-1"], "--num-samples must be 0 or more"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    assert main(["eval", str(fake), "--data", str(bad)]) == 2
    assert "missing column" in capsys.readouterr().err


def test_an_empty_split_is_one_clear_error(tmp_path):
    """A run trained on too little data saved empty splits: eval names the situation, and suggests the other split
    only when it has records."""
    from types import SimpleNamespace

    from medtune.config import Config
    from medtune.errors import MedtuneError

    run = SimpleNamespace(config=Config(), split_file=lambda name: rundir.split_path(tmp_path, name))
    (tmp_path / rundir.SPLITS).mkdir()
    for name in rundir.SPLIT_NAMES:
        rundir.split_path(tmp_path, name).write_text("")
    with pytest.raises(MedtuneError) as e:
        evaluate.load_eval_records(run, None, "test")
    message = str(e.value)
    assert message.startswith("the test split of this run is empty (data.test_fraction=0.05, but too few distinct")
    assert message.endswith("pass --data FILE to evaluate on other records; the validation split is empty too")
    assert "--split" not in message and "\n" not in message
    rows = [{"instruction": "Answer", "input": f"Question {i}?", "output": "An answer."} for i in range(2)]
    rundir.split_path(tmp_path, "validation").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(MedtuneError, match=r"or --split validation \(2 records\)$"):
        evaluate.load_eval_records(run, None, "test")
    assert len(evaluate.load_eval_records(run, None, "validation")[0]) == 2


def test_train_eval_at_end_calls_evaluate(tmp_path, tiny_preset, monkeypatch):
    from medtune import training

    calls = []
    monkeypatch.setattr(training, "run", lambda cfg, **kw: {})
    monkeypatch.setattr(evaluate, "run", lambda run_dir, **kw: calls.append((run_dir, kw)))
    out = tmp_path / "r"
    assert (
        main(["train", "--config", str(tiny_preset), "--output-dir", str(out), "--set", "train.eval_at_end=true"]) == 0
    )
    assert calls == [(str(out), {})]


def test_4bit_run_evaluates_on_cpu(overfit, tmp_path, records_file):
    """The overfit run's adapter on a 4-bit NF4 base (as a QLoRA run has), evaluated on CPU."""
    pytest.importorskip("bitsandbytes")
    import shutil

    import yaml

    run = tmp_path / "q4"
    shutil.copytree(overfit, run, ignore=shutil.ignore_patterns("checkpoints", "eval", "logs"))
    values = yaml.safe_load((run / "config.yaml").read_text())
    values["model"]["quantization"] = "4bit"
    (run / "config.yaml").write_text(yaml.safe_dump(values))
    m = evaluate.run(run, data=str(records_file), num_samples=2)
    for side in ("base", "tuned"):
        assert math.isfinite(m[side]["perplexity"]) and m[side]["generated"] == 2
    assert m["tuned"]["perplexity"] < m["base"]["perplexity"]
    assert "| quantization | 4bit |" in (run / "eval" / "report.md").read_text()


def test_sampled_evaluation_is_seeded_and_recorded(overfit, records_file, capsys):
    """--sample draws with the run's generate settings; the same seed gives the same answers, and metrics say so."""

    def sampled():
        assert main(["eval", str(overfit), "--data", str(records_file), "--num-samples", "3", "--sample"]) == 0
        capsys.readouterr()
        m = json.loads((overfit / "eval" / "metrics.json").read_text())
        answers = [json.loads(line)["tuned"] for line in (overfit / "eval" / "samples.jsonl").read_text().splitlines()]
        return m, answers

    m1, a1 = sampled()
    _, a2 = sampled()
    assert m1["generation"]["greedy"] is False and a1 == a2
    cfg = load_config(overfit / "config.yaml")
    g = evaluate.eval_generate_config(cfg, greedy=False)
    assert (g.temperature, g.top_p, g.seed) == (cfg.generate.temperature, cfg.generate.top_p, cfg.generate.seed)
    assert g.max_new_tokens == cfg.eval.max_new_tokens
    # the default decodes like `medtune generate` (the run's settings, seeded); --greedy without repetition penalty
    assert cfg.eval.greedy is False and evaluate.eval_generate_config(cfg) == g
    greedy = evaluate.eval_generate_config(cfg, greedy=True)
    assert greedy.greedy is True and greedy.repetition_penalty == 1.0 and greedy.max_new_tokens == g.max_new_tokens
    # a run that decodes greedily (generate.greedy, e.g. smollm2-lora) is evaluated greedily with its own penalty,
    # as `medtune generate` answers; --sample still samples with the run's temperature and top-p
    cfg.generate.greedy, cfg.generate.repetition_penalty = True, 1.05
    as_generate = evaluate.eval_generate_config(cfg)
    assert as_generate.greedy is True and as_generate.repetition_penalty == 1.05
    assert evaluate.eval_generate_config(cfg, greedy=False).greedy is False


def test_the_report_says_how_answers_were_decoded():
    """report.md and the model card name the decoding settings that shaped the answers, not just greedy/sampled."""
    from medtune.report import decoding

    assert decoding({"greedy": True, "repetition_penalty": 1.0}) == "greedy decoding"
    preset = {"greedy": True, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.05, "no_repeat_ngram": 4}
    assert decoding(preset) == "greedy decoding (repetition penalty 1.05, no repeated 4-gram)"
    sampled = {"greedy": False, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1, "no_repeat_ngram": 0}
    assert decoding(sampled) == "sampling (temperature 0.7, top-p 0.9, repetition penalty 1.1)"
    assert decoding({"greedy": False, "repetition_penalty": 1.1}) == "sampling (repetition penalty 1.1)"  # older file
