"""Generation: answer questions with a trained run (base + adapter) or a merged model."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from medtune.config import DataConfig, GenerateConfig
from medtune.data import format_prompt
from medtune.errors import MedtuneError
from medtune.files import NOTICE, atomic_write_jsonl


def generation_kwargs(g: GenerateConfig, tokenizer) -> dict:
    kw = dict(max_new_tokens=g.max_new_tokens, repetition_penalty=g.repetition_penalty,
              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if g.greedy or g.temperature <= 0:
        kw.update(do_sample=False)
    else:
        kw.update(do_sample=True, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k)
    return kw


def prompt_for(question: str, data_cfg: DataConfig, instruction: str | None = None) -> str:
    return format_prompt({"instruction": instruction or data_cfg.default_instruction, "input": question}, data_cfg)


def _device(model):
    return next(model.parameters()).device


def answer(model, tokenizer, question: str, data_cfg: DataConfig, g: GenerateConfig, streamer=None) -> dict:
    """Generate one answer. Returns text, token count and whether it stopped at EOS."""
    from transformers import set_seed

    set_seed(g.seed)
    prompt = prompt_for(question, data_cfg)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(_device(model))
    with torch.no_grad():
        out = model.generate(**enc, streamer=streamer, **generation_kwargs(g, tokenizer))
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    stopped = tokenizer.eos_token_id in new
    if stopped:
        new = new[: new.index(tokenizer.eos_token_id)]
    return {"question": question, "answer": tokenizer.decode(new, skip_special_tokens=True).strip(),
            "tokens": len(new), "stopped_at_eos": stopped}


def answer_batch(model, tokenizer, questions: list[str], data_cfg: DataConfig, g: GenerateConfig) -> list[dict]:
    """Batched generation with left padding (the prompt ends where generation starts)."""
    from transformers import set_seed

    set_seed(g.seed)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        prompts = [prompt_for(q, data_cfg) for q in questions]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(_device(model))
        with torch.no_grad():
            out = model.generate(**enc, **generation_kwargs(g, tokenizer))
    finally:
        tokenizer.padding_side = side
    rows = []
    for q, seq in zip(questions, out[:, enc["input_ids"].shape[1]:].tolist()):
        stopped = tokenizer.eos_token_id in seq
        if stopped:
            seq = seq[: seq.index(tokenizer.eos_token_id)]
        rows.append({"question": q, "answer": tokenizer.decode(seq, skip_special_tokens=True).strip(),
                     "tokens": len(seq), "stopped_at_eos": stopped})
    return rows


def read_questions(path: str | Path) -> list[str]:
    """Questions from a .txt file (one per line) or a .jsonl file (field question, input or prompt)."""
    path = Path(path)
    if not path.is_file():
        raise MedtuneError(f"input file not found: {path}")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.suffix.lower() != ".jsonl":
        return [ln.strip() for ln in lines]
    questions = []
    for n, ln in enumerate(lines, 1):
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError:
            raise MedtuneError(f"{path}: line {n} is not valid JSON") from None
        q = next((obj[k] for k in ("question", "input", "prompt") if isinstance(obj, dict) and k in obj), None)
        if not isinstance(q, str) or not q.strip():
            raise MedtuneError(f"{path}: line {n} needs a non-empty 'question' (or 'input' / 'prompt') string")
        questions.append(q.strip())
    return questions


def generate_file(model, tokenizer, in_path, out_path, data_cfg: DataConfig, g: GenerateConfig, batch_size: int = 8):
    from tqdm.auto import tqdm

    questions = read_questions(in_path)
    if not questions:
        raise MedtuneError(f"{in_path}: no questions")
    rows = []
    for i in tqdm(range(0, len(questions), batch_size), desc="generating", unit="batch", file=sys.stderr):
        rows += answer_batch(model, tokenizer, questions[i:i + batch_size], data_cfg, g)
    for r in rows:
        r["notice"] = NOTICE
    atomic_write_jsonl(out_path, rows)
    return rows
