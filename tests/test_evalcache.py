"""The base model's eval scores kept for the next eval of the same base (medtune.evalcache): a second run tuned from
the same base folder gets the same base numbers without scoring the base again; any change to what they depend on
(the inputs, the weights) scores it again; a broken entry is a miss; eval.reuse_base: false never reads them."""

import json
import os
import threading
import time

import pytest

from medtune import evalcache, evaluate, medbench
from medtune.model import build_random

QUESTIONS = [  # invented, in MedMCQA's columns
    {"id": "q1", "question": "Which organ makes insulin?", "opa": "Liver", "opb": "Pancreas", "opc": "Skin",
     "opd": "Bone", "cop": 1},
    {"id": "q2", "question": "Which vitamin prevents scurvy?", "opa": "A", "opb": "B", "opc": "C", "opd": "D",
     "cop": 2},
]  # fmt: skip


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_config, tok):
    """Two runs with different adapters (rank 4 and 8) on one local base folder, and a benchmark file."""
    from medtune import training

    root = tmp_path_factory.mktemp("evalcache")
    base = root / "base"
    build_random("random:tiny", tok).save_pretrained(base)
    tok.save_pretrained(base)
    runs = []
    for r in (4, 8):
        out = root / f"r{r}"
        training.run(
            tiny_config(out, "train.max_steps=2", "data.max_records=30", f"model.lora_r={r}", model__name=str(base))
        )
        runs.append(out)
    bench = root / "medmcqa.jsonl"
    bench.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return runs, base, f"medmcqa={bench}"


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """A fresh cache folder; counts of base passes and benchmark scorings."""
    monkeypatch.setenv("MEDTUNE_CACHE", str(tmp_path / "cache"))
    calls = {"pass": 0, "bench": 0}
    real_pass, real_score = evaluate._evaluate_pass, medbench.score

    def pass_(name, *a, **k):
        calls["pass"] += name == "base"
        return real_pass(name, *a, **k)

    def score(*a, **k):
        calls["bench"] += 1
        return real_score(*a, **k)

    monkeypatch.setattr(evaluate, "_evaluate_pass", pass_)
    monkeypatch.setattr(medbench, "score", score)
    return calls


def test_a_second_run_of_the_same_base_reuses_the_base_scores(two_runs, counted):
    (a, b), _, spec = two_runs
    first = evaluate.run(a, num_samples=2, benchmarks=spec)
    assert counted == {"pass": 1, "bench": 2}  # base and tuned benchmark scorings
    second = evaluate.run(b, num_samples=2, benchmarks=spec)
    assert counted == {"pass": 1, "bench": 3}  # the tuned model only
    assert second["base"] == first["base"] and second["tuned"] != first["tuned"]
    kept, scored = second["benchmarks"]["medmcqa"]["base"], first["benchmarks"]["medmcqa"]["base"]
    assert kept["kept"] is True and {k: v for k, v in kept.items() if k not in ("kept", "seconds")} == {
        k: v for k, v in scored.items() if k != "seconds"
    }
    assert "base (kept)" in second["seconds"] and "base loss" not in second["seconds"]
    samples = [json.loads(ln) for ln in (b / "eval" / "samples.jsonl").read_text().splitlines()]
    first_samples = [json.loads(ln) for ln in (a / "eval" / "samples.jsonl").read_text().splitlines()]
    assert [s["base"] for s in samples] == [s["base"] for s in first_samples]  # the base's answers kept too


def test_any_change_to_what_the_base_scores_depend_on_scores_it_again(two_runs, counted, tmp_path):
    (a, b), base, spec = two_runs
    evaluate.run(a, num_samples=2, benchmarks=spec)
    assert counted == {"pass": 1, "bench": 2}
    evaluate.run(b, num_samples=1, benchmarks=spec)  # other questions: the pass again, the benchmark kept
    assert counted == {"pass": 2, "bench": 3}
    evaluate.run(b, num_samples=1, greedy=True, benchmarks=spec)  # other decoding
    assert counted == {"pass": 3, "bench": 4}
    fewer = tmp_path / "medmcqa.jsonl"  # other benchmark questions
    fewer.write_text(json.dumps(QUESTIONS[0]) + "\n")
    evaluate.run(b, num_samples=1, greedy=True, benchmarks=f"medmcqa={fewer}")
    assert counted == {"pass": 3, "bench": 6}
    weights = next(base.glob("*.safetensors"))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten, same size: maybe other weights
    evaluate.run(b, num_samples=1, greedy=True)
    assert counted["pass"] == 4


def test_a_broken_entry_is_a_miss_and_rescoring_replaces_it(two_runs, counted):
    (a, b), _, _ = two_runs
    first = evaluate.run(a, num_samples=1)
    entries = list(evalcache.cache_dir().glob("*.json"))
    assert len(entries) == 1
    for broken in ("{", "{}", "[1]"):  # unreadable, or another shape: scored again, never an error
        entries[0].write_text(broken)
        assert evaluate.run(b, num_samples=1)["base"] == first["base"]
    entries[0].write_text(json.dumps({"result": {**first["base"], "perplexity": 1.0}, "seconds": {}, "answers": []}))
    assert evaluate.run(b, num_samples=1, reuse_base=False)["base"] == first["base"]  # a wrong entry: rescored...
    assert evaluate.run(b, num_samples=1)["base"] == first["base"]  # ...and replaced
    assert counted["pass"] == 5


def test_rescore_base_scores_the_base_every_time(two_runs, counted):
    (a, _), _, _ = two_runs
    from medtune.cli import main

    evaluate.run(a, num_samples=1)
    evaluate.run(a, num_samples=1, reuse_base=False)
    assert main(["eval", str(a), "--num-samples", "1", "--rescore-base"]) == 0
    assert counted["pass"] == 3
    assert main(["eval", str(a), "--num-samples", "1"]) == 0
    assert counted["pass"] == 3


def test_evals_wanting_one_key_at_once_score_it_once(tmp_path, monkeypatch):
    """A sweep's variants reach the base's eval together: the second waits for the first's score instead of scoring
    the base again."""
    monkeypatch.setenv("MEDTUNE_CACHE", str(tmp_path))
    started, calls, first = threading.Event(), [], []

    def slow() -> dict:
        calls.append("first")
        started.set()
        time.sleep(0.5)
        return {"acc": 0.5}

    t = threading.Thread(target=lambda: first.append(evalcache.kept_or_scored("k", slow, ("acc",))))
    t.start()
    assert started.wait(10)
    second = evalcache.kept_or_scored("k", lambda: calls.append("second") or {"acc": 0.0}, ("acc",))
    t.join()
    assert first == [({"acc": 0.5}, False)] and second == ({"acc": 0.5}, True) and calls == ["first"]


def test_a_cache_folder_that_cannot_be_written_is_no_error(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MEDTUNE_CACHE", str(blocker))  # a file where the folder should be
    assert evalcache.kept_or_scored("k", lambda: {"acc": 1.0}, ("acc",)) == ({"acc": 1.0}, False)
    assert evalcache.kept_or_scored("k", lambda: {"acc": 0.0}, ("acc",)) == ({"acc": 0.0}, False)
    assert "could not keep the base scores" in caplog.text


def test_what_the_key_tells_apart(tmp_path):
    """A hub id with no local snapshot cannot be told from its next version: nothing is kept for it. A tokenizer
    that encodes or formats differently (here: its chat template) is another key."""
    from medtune.model import load_tokenizer

    assert evalcache._weights("nobody/no-such-model-here") is None
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x")
    assert evalcache._weights(str(f))[0][1] == 1  # a local file: its path, size and modification time
    tok = load_tokenizer("builtin:tiny")
    before = evalcache._tokenizer(tok)
    assert evalcache._tokenizer(tok) == before
    tok.chat_template = "{{ messages }}"
    assert evalcache._tokenizer(tok) != before
