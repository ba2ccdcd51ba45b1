"""The one decoding path: questions -> prompt token ids -> the decoding engine (medtune.decoding) -> answers with
their stop reason.

`complete()` is what `medtune generate` (one question streamed, or a file) and `medtune eval` call; `medtune serve`
feeds the same engine request by request. Seeded sampling or greedy decoding from one GenerateConfig, EOS trimming,
the loop guard, and a stop reason per answer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from medtune import validate
from medtune.config import DataConfig, GenerateConfig
from medtune.console import progress_bars
from medtune.data import format_prompt
from medtune.decoding import Completion, Engine, Request
from medtune.decoding.sampling import MIN_TEMPERATURE
from medtune.errors import MedtuneError
from medtune.files import atomic_write_jsonl, read_text_lines
from medtune.notice import NOTICE

MAX_QUESTION_CHARS = 100_000  # longer lines are refused before tokenizing (no tokenizer packs more into a context)


def generation_kwargs(g: GenerateConfig, tokenizer) -> dict:
    """A GenerateConfig as `model.generate` keyword arguments: the defaults a merged folder carries, so that
    transformers' pipeline() samples like `medtune generate` (the loop guard is medtune's own)."""
    kw = dict(
        max_new_tokens=g.max_new_tokens,
        repetition_penalty=g.repetition_penalty,
        no_repeat_ngram_size=g.no_repeat_ngram or None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if g.greedy or g.temperature < MIN_TEMPERATURE:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None, min_p=None)
    else:
        kw.update(do_sample=True, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k, min_p=g.min_p or None)
    return kw


def prompt_for(question: str, data_cfg: DataConfig, instruction: str | None = None) -> str:
    return format_prompt({"instruction": instruction or data_cfg.default_instruction, "input": question}, data_cfg)


SPEAKERS = {"user": "User", "assistant": "Assistant"}  # an instruction-template run's transcript of earlier turns


def conversation_record(turns: list[dict], data_cfg: DataConfig) -> dict:
    """The record whose prompt (data.format_prompt, data.encode_prompt) asks for the assistant's next turn after
    `turns` ({role, content}: system, user, assistant; the last a user turn), in the form the run was trained on.
    A run in chat format or trained on chat records: the turns as a chat record (its template renders them, earlier
    answers ending with EOS as in training; a system turn replaces data.system_prompt). A run with the instruction
    template: the system turns as the instruction (else data.default_instruction), the last user turn as the input,
    and earlier user and assistant turns, if any, as a "User: ..." / "Assistant: ..." transcript before it."""
    if data_cfg.prompt_format == "chat" or data_cfg.chat_column:
        return {"messages": turns + [{"role": "assistant", "content": "x"}]}  # x: the answer that is not there yet
    system = "\n\n".join(t["content"].strip() for t in turns if t["role"] == "system" and t["content"].strip())
    talk = [t for t in turns if t["role"] != "system"]
    question = talk[-1]["content"].strip()
    if len(talk) > 1:
        question = "\n".join(f"{SPEAKERS[t['role']]}: {t['content'].strip()}" for t in talk)
    return {"instruction": system or data_cfg.default_instruction, "input": question, "output": "x"}


def make_engine(model, tokenizer, slots: int, max_len: int | None = None):
    """The decoding engine for a model (medtune.decoding.Engine): `slots` rows at once, sequences of up to max_len
    tokens (default: the model's context)."""
    return Engine(model, tokenizer, slots=slots, max_len=max_len)


@torch.no_grad()
def complete(
    model,
    tokenizer,
    prompts: list[list[int]],
    g: GenerateConfig,
    batch_size: int = 8,
    on_text=None,
    cancel=None,
    progress: bool = False,
    engine=None,
) -> list[Completion]:
    """Answers for prompts given as token ids, in the order given, through the decoding engine (up to batch_size
    rows at once; a row that ends makes room for the next prompt). Each answer is seeded with g.seed and depends on
    its prompt and seed alone. `on_text` (one prompt only) receives the text as it is generated; `cancel` (a
    threading.Event) stops generation early. Pass `engine` to reuse one across calls."""
    if on_text is not None and len(prompts) != 1:
        raise ValueError("streaming needs exactly one prompt")
    if not prompts:
        return []
    if engine is None:
        engine = make_engine(model, tokenizer, min(batch_size, len(prompts)), max(map(len, prompts)) + g.max_new_tokens)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), desc="generating", unit="answer", file=sys.stderr)

    def tick(c: Completion) -> None:
        if bar is not None:
            bar.update(1)

    try:
        return engine.run([Request(p, g, cancel, on_text, tick if bar is not None else None) for p in prompts])
    finally:
        if bar is not None:
            bar.close()


def encode_questions(
    tokenizer, questions: list[str], data_cfg: DataConfig, context: int | None, max_new_tokens: int
) -> list[list[int]]:
    """Prompt token ids for each question; a question that does not fit the context with max_new_tokens is refused."""
    rows = []
    for n, q in enumerate(questions, 1):
        if len(q) > MAX_QUESTION_CHARS:
            raise MedtuneError(f"question {n} is {len(q):,} characters long; the limit is {MAX_QUESTION_CHARS:,}")
        ids = tokenizer(prompt_for(q, data_cfg), add_special_tokens=False)["input_ids"]
        if context is not None and len(ids) + max_new_tokens > context:
            raise MedtuneError(
                f"question {n}: its prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) "
                f"exceeds the model's context of {context} tokens; shorten it or lower --max-new-tokens"
            )
        rows.append(ids)
    return rows


def read_questions(path: str | Path) -> list[str]:
    """Questions from a .txt file (one per line) or a .jsonl file (field question, input or prompt)."""
    path = Path(path)
    if not path.is_file():
        raise MedtuneError(f"input file not found: {path}" if not path.exists() else f"input {path} is not a file")
    numbered = [(n, ln) for n, ln in enumerate(read_text_lines(path), 1) if ln.strip()]  # editor line numbers
    if not numbered:
        raise MedtuneError(f"{path}: no questions")
    for n, ln in numbered:
        if len(ln) > MAX_QUESTION_CHARS:
            raise MedtuneError(f"{path}: line {n} is {len(ln):,} characters long; the limit is {MAX_QUESTION_CHARS:,}")
    if path.suffix.lower() != ".jsonl":
        return [ln.strip() for _, ln in numbered]
    questions = []
    for n, ln in numbered:
        try:
            obj = json.loads(ln)
        except (json.JSONDecodeError, RecursionError):
            raise MedtuneError(f"{path}: line {n} is not valid JSON") from None
        q = next((obj[k] for k in ("question", "input", "prompt") if isinstance(obj, dict) and k in obj), None)
        if not isinstance(q, str) or not q.strip():
            raise MedtuneError(f"{path}: line {n} needs a non-empty 'question' (or 'input' / 'prompt') string")
        questions.append(q.strip())
    return questions


def generate_file(
    model,
    tokenizer,
    questions: list[str],
    out_path,
    data_cfg: DataConfig,
    g: GenerateConfig,
    batch_size: int = 8,
    context: int | None = None,
) -> list[dict]:
    """Answer questions (see read_questions); write the answers (with the notice) to a .jsonl atomically."""
    out_path = validate.check_output_file(out_path, "--output", "answers.jsonl")
    prompts = encode_questions(tokenizer, questions, data_cfg, context, g.max_new_tokens)
    answers = complete(model, tokenizer, prompts, g, batch_size, progress=progress_bars())  # a bar on a terminal only
    rows = [
        {
            "question": q,
            "answer": c.text,
            "tokens": len(c.token_ids),
            "stopped_at_eos": c.stopped_at_eos,
            "notice": NOTICE,
        }
        for q, c in zip(questions, answers)
    ]
    atomic_write_jsonl(out_path, rows)
    return rows


def answer(
    model, tokenizer, question: str, data_cfg: DataConfig, g: GenerateConfig, on_text=None, context: int | None = None
) -> dict:
    """One answer (streamed to on_text when given). Returns question, answer, tokens, stopped_at_eos, stop_reason."""
    (ids,) = encode_questions(tokenizer, [question], data_cfg, context, g.max_new_tokens)
    (c,) = complete(model, tokenizer, [ids], g, on_text=on_text)
    return {
        "question": question,
        "answer": c.text,
        "tokens": len(c.token_ids),
        "stopped_at_eos": c.stopped_at_eos,
        "stop_reason": c.stop_reason,
    }
