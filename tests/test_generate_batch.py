"""medtune generate --input FILE --output FILE.jsonl: reading questions, batching, the answers file."""
import dataclasses
import json

import pytest

from test_export import tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory)


def test_read_questions_txt_and_jsonl(tmp_path):
    from medtune.generate import read_questions

    txt = tmp_path / "q.txt"
    txt.write_text("  What is asthma?  \n\nHow is flu treated?\n   \n")
    assert read_questions(txt) == ["What is asthma?", "How is flu treated?"]
    jl = tmp_path / "q.jsonl"
    jl.write_text('{"question": "A?"}\n\n{"input": "B?", "id": 7}\n{"prompt": " C? "}\n')
    assert read_questions(jl) == ["A?", "B?", "C?"]


@pytest.mark.parametrize("content, needle", [
    ('{"question": "A?"}\nnot json\n', "line 2 is not valid JSON"),
    ('{"text": "A?"}\n', "line 1 needs a non-empty 'question'"),
    ('{"question": "  "}\n', "line 1 needs"),
    ('["A?"]\n', "line 1 needs"),
])
def test_read_questions_errors(tmp_path, content, needle):
    from medtune.errors import MedtuneError
    from medtune.generate import read_questions

    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(MedtuneError, match=needle):
        read_questions(f)
    with pytest.raises(MedtuneError, match="not found"):
        read_questions(tmp_path / "missing.txt")


def test_batched_greedy_equals_one_at_a_time(run_dir):
    """Left padding must not change the answers (GPT-2 positions come from the attention mask)."""
    from transformers import AutoModelForCausalLM

    from medtune.generate import answer, answer_batch
    from medtune.model import load_for_inference

    _, tok, cfg = load_for_inference(run_dir)
    # the random base gives varied greedy text (the briefly tuned model mostly repeats one token)
    model = AutoModelForCausalLM.from_pretrained(str(run_dir / "base_model")).eval()
    g = dataclasses.replace(cfg.generate, greedy=True, max_new_tokens=8)
    qs = ["What is asthma?", "How long does a common cold usually last in adults and in children?", "Fever?"]
    batched = answer_batch(model, tok, qs, cfg.data, g)
    assert [r["question"] for r in batched] == qs
    for q, row in zip(qs, batched):
        assert answer(model, tok, q, cfg.data, g)["answer"] == row["answer"]
    assert tok.padding_side == "right"  # restored


def test_cli_generate_input_file(run_dir, tmp_path, capsys):
    from medtune.cli import main
    from medtune.files import NOTICE

    qs = [f"What is condition number {i}?" for i in range(5)]
    src = tmp_path / "questions.txt"
    src.write_text("\n".join(qs) + "\n")
    out = tmp_path / "answers.jsonl"
    args = ["generate", str(run_dir), "--input", str(src), "--output", str(out), "--batch-size", "2",
            "--max-new-tokens", "6", "--seed", "3"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "wrote 5 answers" in captured.out and NOTICE in captured.out
    assert "generating" in captured.err  # the progress bar (3 batches)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question"] for r in rows] == qs
    for r in rows:
        assert set(r) >= {"question", "answer", "tokens", "stopped_at_eos", "notice"}
        assert r["notice"] == NOTICE and 0 <= r["tokens"] <= 6 and isinstance(r["answer"], str)
    first = out.read_text()
    assert main(args) == 0  # same seed, same answers
    assert out.read_text() == first


def test_cli_generate_jsonl_input_and_errors(run_dir, tmp_path, capsys):
    from medtune.cli import main

    src = tmp_path / "q.jsonl"
    src.write_text('{"question": "What is asthma?"}\n{"input": "What is flu?"}\n')
    out = tmp_path / "sub" / "a.jsonl"
    assert main(["generate", str(run_dir), "--input", str(src), "--output", str(out), "--max-new-tokens", "3"]) == 0
    assert len(out.read_text().splitlines()) == 2
    capsys.readouterr()
    assert main(["generate", str(run_dir), "--input", str(src)]) == 2
    assert "--output" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert main(["generate", str(run_dir), "--input", str(empty), "--output", str(tmp_path / "e.jsonl")]) == 2
    assert "no questions" in capsys.readouterr().err
    assert not (tmp_path / "e.jsonl").exists()
