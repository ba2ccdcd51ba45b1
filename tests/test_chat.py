"""Chat records (medtune.chat, through medtune.data): OpenAI `messages` and ShareGPT `conversations` files load alike;
every assistant turn and its end token are labelled, nothing else; bad records are refused naming rows; the split
groups by first user turn; PHI is found and redacted in every turn; packing keeps the labels; the eval form."""

from __future__ import annotations

import json

import pytest
from tiny_llama import chat_tokenizer, use_prompt_format

from medtune import data
from medtune.batching import Collator, PackingCollator
from medtune.config import DataConfig
from medtune.errors import MedtuneError


def conversation(i: int, turns: int = 3, system: bool = True) -> list[dict]:
    msgs = [{"role": "system", "content": "You answer medical questions briefly."}] if system else []
    for t in range(turns):
        msgs += [
            {"role": "user", "content": f"Question {t} about topic {i}: what helps?"},
            {"role": "assistant", "content": f"Answer {t} for topic {i}: rest and fluids usually help."},
        ]
    return msgs


def sharegpt(msgs: list[dict]) -> list[dict]:
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return [{"from": names[m["role"]], "value": m["content"]} for m in msgs]


def labelled_spans(e: dict) -> list[list[int]]:
    """The runs of labelled (not -100) tokens, each checked to equal the input ids at their positions."""
    spans, cur = [], []
    for i, (tok_id, label) in enumerate(zip(e["input_ids"], e["labels"])):
        if label == data.IGNORE_INDEX:
            if cur:
                spans.append(cur)
            cur = []
        else:
            assert label == tok_id, f"label at {i} differs from the input"
            cur.append(label)
    return spans + ([cur] if cur else [])


def answers_of(msgs):
    return [m["content"] for m in msgs if m["role"] == "assistant"]


def test_plain_template_labels_every_assistant_turn_and_its_eos(tok):
    """GPT-2-style tokenizer without a chat template: medtune's plain turn template; each assistant turn + EOS is
    labelled, system and user turns are in the input only."""
    msgs = conversation(1)
    r = {"messages": msgs}
    e = data.encode(r, tok, DataConfig())
    spans = labelled_spans(e)
    assert [tok.decode(s) for s in spans] == [a + tok.eos_token for a in answers_of(msgs)]
    assert all(s[-1] == tok.eos_token_id for s in spans)
    text = tok.decode(e["input_ids"])
    assert "### System:\nYou answer medical" in text and "### User:\nQuestion 2 about topic 1" in text
    assert text.endswith("### Assistant:\n" + msgs[-1]["content"] + tok.eos_token)
    full = data.encode(r, tok, DataConfig(completion_only_loss=False))
    assert full["labels"] == full["input_ids"] == e["input_ids"]


def test_chat_template_labels_every_assistant_turn_and_its_end_of_turn_token():
    """data.prompt_format=chat: the input is exactly the tokenizer's chat template rendering; each answer ends with the
    template's end-of-turn token (<|im_end|>, which training makes EOS: prompt_format), which is labelled."""
    tok = chat_tokenizer()
    cfg = DataConfig(prompt_format="chat")
    use_prompt_format(cfg, tok)
    msgs = conversation(2)
    e = data.encode({"messages": msgs}, tok, cfg)
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    assert tok.decode(e["input_ids"]) == rendered.removesuffix("\n")  # the last turn ends at its end-of-turn token
    spans = labelled_spans(e)
    assert [tok.decode(s) for s in spans] == [a + "<|im_end|>" for a in answers_of(msgs)]
    assert sum(i == tok.convert_tokens_to_ids("<|im_end|>") for i in e["input_ids"]) == len(msgs)


def test_data_system_prompt_fills_in_for_records_without_one(tok):
    own = data.encode({"messages": conversation(3)}, tok, DataConfig(system_prompt="Be kind."))
    assert "Be kind." not in tok.decode(own["input_ids"])
    bare = data.encode({"messages": conversation(3, system=False)}, tok, DataConfig(system_prompt="Be kind."))
    assert "### System:\nBe kind.\n\n### User:" in tok.decode(bare["input_ids"])


def test_turns_after_the_last_answer_are_not_trained(tok):
    msgs = conversation(4, turns=1) + [{"role": "user", "content": "One more thing?"}]
    e = data.encode({"messages": msgs}, tok, DataConfig())
    assert "One more thing" not in tok.decode(e["input_ids"]) and e["input_ids"][-1] == tok.eos_token_id


def test_openai_and_sharegpt_files_load_alike(tmp_path, write_jsonl):
    convs = [conversation(i) for i in range(4)]
    a = write_jsonl(tmp_path / "a.jsonl", [{"messages": c} for c in convs])
    b = write_jsonl(tmp_path / "b.jsonl", [{"conversations": sharegpt(c), "id": i} for i, c in enumerate(convs)])
    cfg_a, cfg_b = DataConfig(source=str(a)), DataConfig(source=str(b))
    (ra, column_a), (rb, column_b) = data.read_records(cfg_a), data.read_records(cfg_b)
    ra, _ = data.validate_records(ra)
    rb, _ = data.validate_records(rb)
    assert ra == rb == [{"messages": c} for c in convs]
    assert (column_a, column_b) == ("messages", "conversations")  # training saves it with the run
    assert cfg_a.chat_column is None and cfg_b.chat_column is None  # the data layer leaves the config alone


def test_a_parquet_chat_file_loads(tmp_path):
    import pandas as pd

    convs = [conversation(i) for i in range(3)]
    path = tmp_path / "c.parquet"
    pd.DataFrame({"messages": convs}).to_parquet(path)
    records, _ = data.validate_records(data.load_records(DataConfig(source=str(path))))
    assert records == [{"messages": c} for c in convs]


def test_instruction_columns_keep_priority_and_chat_column_can_be_named(tmp_path, write_jsonl, make_records):
    rows = [dict(r, messages=conversation(i)) for i, r in enumerate(make_records(3))]
    path = write_jsonl(tmp_path / "both.jsonl", rows)
    assert not data.chat.is_chat(data.load_records(DataConfig(source=str(path)))[0])
    named = data.load_records(DataConfig(source=str(path), chat_column="messages"))
    assert named[0] == {"messages": rows[0]["messages"]}
    with pytest.raises(MedtuneError, match="missing chat column 'dialog'"):
        data.load_records(DataConfig(source=str(path), chat_column="dialog"))


BAD = {
    "unknown role": (
        {"role": "tool", "content": "42"},
        r"unknown role in rows 3 \(first: row 3 turn 2 has role 'tool'",
    ),
    "empty turn": (
        {"role": "user", "content": "  "},
        r"empty or whitespace-only fields in rows 3 \(first: row 3 field 'turn 2'\)",
    ),
    "content not text": (
        {"role": "user", "content": None},
        r"non-string values in rows 3 \(first: row 3 field 'turn 2' is NoneType",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_turns_are_refused_naming_rows(case):
    turn, message = BAD[case]
    records = [{"messages": conversation(i)} for i in range(5)]
    records[2]["messages"].insert(1, turn)
    with pytest.raises(MedtuneError, match=message):
        data.validate_records(records, "chat.jsonl")


def test_records_without_an_assistant_turn_are_refused():
    records = [{"messages": conversation(i)} for i in range(6)]
    records[1]["messages"] = [m for m in records[1]["messages"] if m["role"] != "assistant"]
    records[4]["messages"] = []
    with pytest.raises(MedtuneError, match=r"chat.jsonl: no assistant turn in rows 2, 5"):
        data.validate_records(records, "chat.jsonl")
    with pytest.raises(MedtuneError, match=r"row 1 field 'messages' is str"):
        data.validate_records([{"messages": "hello"}], "chat.jsonl")


def test_duplicates_dropped_and_split_grouped_by_first_user_turn():
    records = [{"messages": conversation(i)} for i in range(60)]
    records.append({"messages": conversation(0)})  # exact duplicate of record 1
    for i in range(20):  # the same opening question (case and spacing aside), then a different conversation
        msgs = conversation(i, turns=1)
        msgs[1]["content"] = "  " + msgs[1]["content"].upper().replace("?", " ?")
        msgs[2]["content"] = f"A different answer {i}."
        records.append({"messages": msgs})
    unique, dups = data.validate_records(records)
    assert dups == 1 and len(unique) == 80
    splits = data.split_records(unique, 0.1, 0.1, seed=3)
    assert splits == data.split_records(list(unique), 0.1, 0.1, seed=3)
    keys = {name: {data.question_key(r) for r in part} for name, part in splits.items()}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["validation"]
    assert not keys["test"] & keys["validation"] and len(keys["test"]) == 6
    assert sum(map(len, splits.values())) == 80


def test_phi_in_any_turn_is_found_redacted_and_audited(tmp_path, tok, write_jsonl):
    from medtune.audit import audit

    rows = [{"messages": conversation(i)} for i in range(30)]
    rows[7]["messages"][4]["content"] = "Sure. Call me at (617) 555-0143 about Mrs. Maria Lopez."
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(MedtuneError, match="possible protected health information"):
        data.prepare(DataConfig(source=str(path)), tok)
    p = data.prepare(DataConfig(source=str(path), phi="redact"), tok)
    redacted = next(r for part in p.splits.values() for r in part if "[PHONE]" in r["messages"][4]["content"])
    assert "555-0143" not in json.dumps(p.splits) and "[NAME]" in redacted["messages"][4]["content"]
    result = audit(DataConfig(source=str(path)), tok, tmp_path / "audit")
    found = {(f["row"], f["field"], f["type"]) for f in result["phi"]["findings"]}
    assert {(8, "turn 5", "PHONE"), (8, "turn 5", "NAME")} <= found
    assert result["columns"] == {"messages": "messages"} and result["invalid"]["rows"] == 0


def test_audit_reports_bad_chat_rows_instead_of_raising(tmp_path, tok, write_jsonl):
    from medtune.audit import audit

    rows = [{"messages": conversation(i)} for i in range(12)]
    rows[3]["messages"][1]["role"] = "tool"
    rows[5]["messages"] = [rows[5]["messages"][1]]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    result = audit(DataConfig(source=str(path)), tok, tmp_path / "audit")
    assert result["invalid"]["by_problem"] == {
        "messages no assistant turn": {"count": 1, "rows": [6]},
        "turn with role 'tool'": {"count": 1, "rows": [4]},
    }


@pytest.mark.parametrize("packing", [False, True])
def test_collators_keep_the_assistant_labels(tok, packing):
    encoded = [data.encode({"messages": conversation(i, turns=1 + i % 3)}, tok, DataConfig()) for i in range(5)]
    collate = PackingCollator(tok.pad_token_id, row_length=256) if packing else Collator(tok.pad_token_id)
    batch = collate(encoded)
    got = [int(x) for x in batch["labels"].flatten() if x != data.IGNORE_INDEX]
    want = [x for e in encoded for x in e["labels"] if x != data.IGNORE_INDEX]
    assert sorted(got) == sorted(want) and got.count(tok.eos_token_id) == sum(1 + i % 3 for i in range(5))


@pytest.mark.parametrize("fmt", ["template", "chat"])
def test_eval_form_is_the_last_answer_after_everything_before_it(tok, fmt):
    tok = chat_tokenizer() if fmt == "chat" else tok
    cfg = DataConfig(prompt_format=fmt)
    use_prompt_format(cfg, tok)
    msgs = conversation(5)
    r = {"messages": msgs}
    e, prompt = data.encode(r, tok, cfg), data.encode_prompt(r, tok, cfg)
    assert e["input_ids"][: len(prompt)] == prompt
    assert tok.decode(e["input_ids"][len(prompt) : -1]) == msgs[-1]["content"] == data.reference_answer(r)
    assert tok(data.format_prompt(r, cfg, tok), add_special_tokens=False)["input_ids"] == prompt
    assert data.eval_fields(r) == {
        "instruction": msgs[0]["content"],
        "question": msgs[-2]["content"],
        "reference": msgs[-1]["content"],
    }
    inst = {"instruction": "Answer", "input": "Why?", "output": "Because."}
    assert (
        data.encode(inst, tok, cfg)["input_ids"][: len(data.encode_prompt(inst, tok, cfg))]
        == data.encode_prompt(inst, tok, cfg)
        and data.reference_answer(inst) == "Because."
    )


def test_a_chat_run_prompts_questions_as_a_user_turn_with_the_system_prompt(tok):
    """What `generate` sends to a run trained on chat records: the question as a user turn (no default instruction),
    opening the assistant's turn; --system (with_system_prompt) adds a System turn. The instruction template refuses."""
    cfg = DataConfig(chat_column="messages")
    ask = {"instruction": cfg.default_instruction, "input": "What is asthma?"}
    prompt = data.format_prompt(ask, cfg)
    trained = data.encode_prompt(
        {"messages": [{"role": "user", "content": "What is asthma?"}, {"role": "assistant", "content": "x"}]}, tok, cfg
    )
    assert tok(prompt, add_special_tokens=False)["input_ids"] == trained
    with_sys = data.format_prompt(ask, data.with_system_prompt(cfg, "Be brief.", tok))
    assert with_sys.startswith(data.chat.PREAMBLE + "### System:\nBe brief.\n\n### User:\nWhat is asthma?")
    with pytest.raises(MedtuneError, match="--system needs a run trained in chat format"):
        data.with_system_prompt(DataConfig(), "Be brief.", tok)


def test_system_prompt_rerenders_the_chat_template():
    tok = chat_tokenizer()
    cfg = DataConfig(prompt_format="chat")
    use_prompt_format(cfg, tok)
    assert "system" not in cfg.chat_prompt
    new = data.with_system_prompt(cfg, "Be brief.", tok)
    ask = {"instruction": "Answer", "input": "Why?"}
    assert data.format_prompt(ask, new).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nAnswer")
    assert cfg.system_prompt is None and "Be brief" not in data.format_prompt(ask, cfg)  # the run's config is kept


def test_a_chat_file_trains_generates_and_its_saved_splits_evaluate(tmp_path, tiny_config, write_jsonl, capsys):
    """ShareGPT file -> packed training -> splits saved as OpenAI-style messages -> evaluate.py's loader reads them,
    the eval form (encode / encode_prompt) gives the answer-token loss and generated answers; generate --system."""
    from medtune import evaluate, rundir, training
    from medtune.cli import main
    from medtune.config import GenerateConfig
    from medtune.generate import complete
    from medtune.model import load_model

    path = write_jsonl(
        tmp_path / "chat.jsonl", [{"conversations": sharegpt(conversation(i, turns=1 + i % 3))} for i in range(40)]
    )
    out = tmp_path / "run"
    training.run(
        tiny_config(
            out,
            "train.max_steps=3",
            "train.save_steps=100",
            "train.packing=true",
            "train.batch_tokens=1024",
            data__source=str(path),
        )
    )
    run = rundir.open_run(out)
    assert run.config.data.chat_column == "conversations"
    saved = [json.loads(line) for line in (out / "splits" / "test.jsonl").read_text().splitlines()]
    assert len(saved) == 4 and all(list(r) == ["messages"] and r["messages"][-1]["role"] == "assistant" for r in saved)
    records, _ = evaluate.load_eval_records(run, None, "test")
    model, tok = load_model(run)
    cfg = run.config.data
    encoded = [data.encode(r, tok, cfg) for r in records]
    loss = evaluate.answer_token_loss(model, encoded, tok.pad_token_id)
    assert loss["answer_tokens"] == sum(x != data.IGNORE_INDEX for e in encoded for x in e["labels"])
    answers = complete(
        model, tok, [data.encode_prompt(r, tok, cfg) for r in records], GenerateConfig(max_new_tokens=4, greedy=True)
    )
    assert len(answers) == 4 and all(a.prompt_tokens < len(e["input_ids"]) for a, e in zip(answers, encoded))
    capsys.readouterr()
    assert main(["generate", str(out), "What helps?", "--system", "Be brief.", "--max-new-tokens", "4"]) == 0
    assert "Q: What helps?" in capsys.readouterr().out
