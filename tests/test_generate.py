"""medtune.generate, the one decoding path: reading questions, prompts, batched generation (complete) with its stop
reasons, and `medtune generate` (one question, or --input FILE --output FILE.jsonl)."""

import dataclasses
import json

import pytest
import torch


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run()


def test_read_questions_txt_and_jsonl(tmp_path):
    from medtune.generate import read_questions

    txt = tmp_path / "q.txt"
    txt.write_text("  What is asthma?  \n\nHow is flu treated?\n   \n")
    assert read_questions(txt) == ["What is asthma?", "How is flu treated?"]
    jl = tmp_path / "q.jsonl"
    jl.write_text('{"question": "A?"}\n\n{"input": "B?", "id": 7}\n{"prompt": " C? "}\n')
    assert read_questions(jl) == ["A?", "B?", "C?"]


@pytest.mark.parametrize(
    "content, needle",
    [
        ('{"question": "A?"}\nnot json\n', "line 2 is not valid JSON"),
        ('{"text": "A?"}\n', "line 1 needs a non-empty 'question'"),
        ('{"question": "  "}\n', "line 1 needs"),
        ('["A?"]\n', "line 1 needs"),
    ],
)
def test_read_questions_errors(tmp_path, content, needle):
    from medtune.errors import MedtuneError
    from medtune.generate import read_questions

    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(MedtuneError, match=needle):
        read_questions(f)
    with pytest.raises(MedtuneError, match="not found"):
        read_questions(tmp_path / "missing.txt")


def test_batched_greedy_equals_one_at_a_time(run_dir, load_run):
    """Left padding must not change the answers (GPT-2 positions come from the attention mask); answers come back
    in the order of the prompts, whatever order complete() decodes them in."""
    from transformers import AutoModelForCausalLM

    from medtune.generate import answer, complete, encode_questions
    from medtune.model import context_length

    _, tok, cfg = load_run(run_dir)
    # the random base gives varied greedy text (the briefly tuned model mostly repeats one token)
    model = AutoModelForCausalLM.from_pretrained(str(run_dir / "base_model")).eval()
    g = dataclasses.replace(cfg.generate, greedy=True, max_new_tokens=8)
    qs = ["What is asthma?", "How long does a common cold usually last in adults and in children?", "Fever?"]
    prompts = encode_questions(tok, qs, cfg.data, context_length(model), g.max_new_tokens)
    for batch_size in (8, 2):  # one batch of three; two batches (longest first)
        batched = complete(model, tok, prompts, g, batch_size=batch_size)
        assert [c.prompt_tokens for c in batched] == [len(p) for p in prompts]  # the order of the questions
        for q, p, c in zip(qs, prompts, batched):
            (alone,) = complete(model, tok, [p], g)
            assert alone.token_ids == c.token_ids and alone.text == c.text
            one = answer(model, tok, q, cfg.data, g)
            assert one["answer"] == c.text and one["tokens"] == len(c.token_ids)
            assert one["stopped_at_eos"] == c.stopped_at_eos
            assert c.stop_reason in ("eos", "length") and c.stopped_at_eos == (c.stop_reason == "eos")
            assert len(c.token_ids) <= 8 and (c.stop_reason == "eos" or len(c.token_ids) == 8)
    assert len({len(p) for p in prompts}) > 1  # prompts of different lengths: the batch really was padded
    assert tok.padding_side == "right"  # restored


def test_complete_stop_reasons_and_cancel(run_dir, tok):
    """A request cancelled before it starts is never generated (stop_reason "cancelled", no tokens); EOS ends an
    answer ("eos") and is not part of its tokens; otherwise max_new_tokens does ("length")."""
    import threading

    from transformers import AutoModelForCausalLM

    from medtune.config import GenerateConfig
    from medtune.generate import complete

    model = AutoModelForCausalLM.from_pretrained(str(run_dir / "base_model")).eval()
    prompt = tok("What is asthma?", add_special_tokens=False)["input_ids"]
    g = GenerateConfig(max_new_tokens=6, greedy=True, loop_guard=0)
    cancelled = threading.Event()
    cancelled.set()
    word = tok(" a", add_special_tokens=False)["input_ids"][0]
    assert word != tok.eos_token_id
    head = model.get_output_embeddings()
    # the head's output forced to one token: EOS ends the answer at once, another token runs to max_new_tokens
    for forced, cancel, reason, n in (
        (tok.eos_token_id, None, "eos", 0),
        (word, None, "length", 6),
        (word, cancelled, "cancelled", 0),
    ):
        hook = head.register_forward_hook(lambda m, i, o, t=forced: o.index_fill(-1, torch.tensor([t]), 1e4))
        try:
            (c,) = complete(model, tok, [prompt], g, cancel=cancel)
        finally:
            hook.remove()
        assert c.stop_reason == reason and len(c.token_ids) == n and tok.eos_token_id not in c.token_ids, (reason, c)
        assert c.stopped_at_eos == (reason == "eos") and c.prompt_tokens == len(prompt)


def test_sampled_answers_are_seeded(run_dir, load_run):
    """complete() seeds each answer with g.seed: the same call gives the same answers, another seed others."""
    from medtune.generate import complete, encode_questions
    from medtune.model import context_length

    model, tok, cfg = load_run(run_dir)
    g = dataclasses.replace(cfg.generate, greedy=False, temperature=1.0, max_new_tokens=12, seed=3)
    prompts = encode_questions(tok, ["What is asthma?", "What is gout?"], cfg.data, context_length(model), 12)
    first = [c.token_ids for c in complete(model, tok, prompts, g)]
    assert [c.token_ids for c in complete(model, tok, prompts, g)] == first
    others = [[c.token_ids for c in complete(model, tok, prompts, dataclasses.replace(g, seed=s))] for s in (4, 5, 6)]
    assert any(o != first for o in others)


def test_questions_longer_than_the_context_are_refused(run_dir, load_run):
    from medtune.errors import MedtuneError
    from medtune.generate import encode_questions

    _, tok, cfg = load_run(run_dir)
    with pytest.raises(MedtuneError, match="question 2: its prompt .* exceeds the model's context of 512 tokens"):
        encode_questions(tok, ["Short?", "word " * 600], cfg.data, 512, 16)
    assert len(encode_questions(tok, ["word " * 600], cfg.data, None, 16)) == 1  # no known context: no limit


def test_cli_generate_input_file(run_dir, tmp_path, capsys):
    from medtune.cli import main
    from medtune.notice import NOTICE

    qs = [f"What is condition number {i}?" for i in range(5)]
    src = tmp_path / "questions.txt"
    src.write_text("\n".join(qs) + "\n")
    out = tmp_path / "answers.jsonl"
    args = [
        "generate",
        str(run_dir),
        "--input",
        str(src),
        "--output",
        str(out),
        "--batch-size",
        "2",
        "--max-new-tokens",
        "6",
        "--seed",
        "3",
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "wrote 5 answers" in captured.out and NOTICE in captured.out
    assert "generating" not in captured.err  # a progress bar on a terminal only: captured output gets none
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
    args = ["generate", str(run_dir), "--input", str(src), "--output", str(out), "--max-new-tokens", "3"]
    assert main(args) == 2  # the --output folder must exist: refused before the model loads
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"folder {out.parent} not found" in err, err
    assert not out.parent.exists()
    out.parent.mkdir()
    assert main(args) == 0
    assert len(out.read_text().splitlines()) == 2
    capsys.readouterr()
    assert main(["generate", str(run_dir), "--input", str(src)]) == 2
    assert "--output" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert main(["generate", str(run_dir), "--input", str(empty), "--output", str(tmp_path / "e.jsonl")]) == 2
    assert "no questions" in capsys.readouterr().err
    assert not (tmp_path / "e.jsonl").exists()


# ---------------------------------------------------------------- the prompt of a chat request

HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is asthma?"},
    {"role": "assistant", "content": "A disease of the airways."},
    {"role": "user", "content": "Treatment?"},
]


def _prompt(turns, cfg, tok):
    from medtune.data import encode_prompt, format_prompt
    from medtune.generate import conversation_record

    record = conversation_record([dict(t) for t in turns], cfg)
    text, ids = format_prompt(record, cfg, tok), encode_prompt(record, tok, cfg)
    assert tok(text, add_special_tokens=False)["input_ids"] == ids
    return text, ids


def test_chat_prompt_of_an_instruction_template_run(tok):
    """No chat template, trained on instruction records: the last user turn is the question, system turns the
    instruction, earlier turns a transcript before the question."""
    from medtune.config import DataConfig
    from medtune.generate import prompt_for

    cfg = DataConfig()
    one = [{"role": "user", "content": " What is asthma? "}]
    assert _prompt(one, cfg, tok)[0] == prompt_for("What is asthma?", cfg)  # as /v1/completions asks it
    assert _prompt(HISTORY[:2], cfg, tok)[0] == prompt_for("What is asthma?", cfg, instruction="Be brief.")
    text, _ = _prompt(HISTORY, cfg, tok)
    assert text == prompt_for(
        "User: What is asthma?\nAssistant: A disease of the airways.\nUser: Treatment?", cfg, instruction="Be brief."
    )


def test_chat_prompt_of_a_chat_template_run_is_training_s_rendering():
    """data.prompt_format=chat: the tokenizer's chat template, with the tokens training gave the same conversation
    (an earlier answer ends with the end-of-turn token); data.system_prompt fills in when no system turn is sent."""
    from tiny_llama import chat_tokenizer, use_prompt_format

    from medtune.config import DataConfig
    from medtune.data import encode

    tok = chat_tokenizer()
    cfg = DataConfig(prompt_format="chat", system_prompt="You are a careful assistant.")
    use_prompt_format(cfg, tok)
    text, ids = _prompt(HISTORY, cfg, tok)
    assert text == tok.apply_chat_template(HISTORY, tokenize=False, add_generation_prompt=True)
    trained = encode({"messages": HISTORY + [{"role": "assistant", "content": "Inhalers."}]}, tok, cfg)["input_ids"]
    assert trained[: len(ids)] == ids and tok.decode(trained[len(ids) :]) == "Inhalers.<|im_end|>"
    text, _ = _prompt(HISTORY[1:2], cfg, tok)
    assert text == cfg.chat_prompt.format(user="What is asthma?")  # the run's own system prompt
    assert text.startswith("<|im_start|>system\nYou are a careful assistant.<|im_end|>")


def test_chat_prompt_of_a_run_trained_on_chat_records_uses_the_plain_turn_template(tok):
    from medtune.chat import PREAMBLE
    from medtune.config import DataConfig

    text, ids = _prompt(HISTORY, DataConfig(chat_column="messages"), tok)
    assert text == (
        PREAMBLE + "### System:\nBe brief.\n\n### User:\nWhat is asthma?\n\n### Assistant:\n"
        f"A disease of the airways.{tok.eos_token}\n\n### User:\nTreatment?\n\n### Assistant:\n"
    )
    assert ids.count(tok.eos_token_id) == 1
