"""The one decoding path: prompts -> token ids -> batched generation -> answers with their stop reason.

`complete()` is used by `medtune generate` (one question streamed, or a file in batches), `medtune eval` and
`medtune serve`: left padding, prompts sorted by length (less padding; the order of the answers is kept), seeded
sampling or greedy decoding from one GenerateConfig, EOS trimming, and a stop reason per answer.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from medtune.config import DataConfig, GenerateConfig
from medtune.data import format_prompt
from medtune.errors import MedtuneError
from medtune.files import NOTICE, atomic_write_jsonl

MAX_QUESTION_CHARS = 100_000
# below this, sampling is greedy decoding in all but name, and logits / temperature overflow to inf (found by the
# property tests: temperature 1e-160 crashed sampling)
MIN_TEMPERATURE = 1e-2  # longer lines are refused before tokenizing (no tokenizer packs more into a context)


@dataclass
class Completion:
    text: str
    token_ids: list[int]  # the answer's tokens, EOS excluded
    stop_reason: str  # "eos": the model ended its answer; "length": max_new_tokens; "cancelled"
    prompt_tokens: int

    @property
    def stopped_at_eos(self) -> bool:
        return self.stop_reason == "eos"


def generation_kwargs(g: GenerateConfig, tokenizer) -> dict:
    """The one translation of a GenerateConfig into `model.generate` keyword arguments."""
    kw = dict(max_new_tokens=g.max_new_tokens, repetition_penalty=g.repetition_penalty,
              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if g.greedy or g.temperature < MIN_TEMPERATURE:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kw.update(do_sample=True, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k)
    return kw


def prompt_for(question: str, data_cfg: DataConfig, instruction: str | None = None) -> str:
    return format_prompt({"instruction": instruction or data_cfg.default_instruction, "input": question}, data_cfg)


def _left_padded(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def _finish(seq: list[int], prompt_len: int, tokenizer, cancelled: bool) -> Completion:
    eos = tokenizer.eos_token_id
    reason = "cancelled" if cancelled else "length"
    if eos in seq:
        seq, reason = seq[: seq.index(eos)], "eos"
    elif tokenizer.pad_token_id in seq and tokenizer.pad_token_id != eos:  # a row that ended while others went on
        seq = seq[: seq.index(tokenizer.pad_token_id)]
    return Completion(tokenizer.decode(seq, skip_special_tokens=True).strip(), seq, reason, prompt_len)


@torch.no_grad()
def complete(model, tokenizer, prompts: list[list[int]], g: GenerateConfig, batch_size: int = 8, streamer=None,
             cancel=None, progress: bool = False) -> list[Completion]:
    """Answers for prompts given as token ids, in the order given. `streamer` (one prompt only) receives the text as
    it is generated; `cancel` (a threading.Event) stops generation early. Seeded once per call (g.seed; None: not)."""
    from transformers import StoppingCriteriaList, set_seed

    if streamer is not None and len(prompts) != 1:
        raise ValueError("streaming needs exactly one prompt")
    if g.seed is not None:
        set_seed(g.seed)
    kwargs = generation_kwargs(g, tokenizer)
    if cancel is not None:
        kwargs["stopping_criteria"] = StoppingCriteriaList([_Cancelled(cancel)])
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    out: list[Completion | None] = [None] * len(prompts)
    starts = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="generating", unit="batch", file=sys.stderr)
    for start in starts:
        chunk = order[start:start + batch_size]
        ids, mask = _left_padded([prompts[i] for i in chunk], tokenizer.pad_token_id, device)
        seqs = model.generate(input_ids=ids, attention_mask=mask, streamer=streamer, **kwargs)
        cancelled = cancel is not None and cancel.is_set()
        for i, seq in zip(chunk, seqs[:, ids.shape[1]:].tolist()):
            out[i] = _finish(seq, len(prompts[i]), tokenizer, cancelled)
    return out


class _Cancelled:
    """A stopping criterion that ends generation for every row once `event` is set."""

    def __init__(self, event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def encode_questions(tokenizer, questions: list[str], data_cfg: DataConfig, context: int | None,
                     max_new_tokens: int) -> list[list[int]]:
    """Prompt token ids for each question; a question that does not fit the context with max_new_tokens is refused."""
    rows = []
    for n, q in enumerate(questions, 1):
        if len(q) > MAX_QUESTION_CHARS:
            raise MedtuneError(f"question {n} is {len(q):,} characters long; the limit is {MAX_QUESTION_CHARS:,}")
        ids = tokenizer(prompt_for(q, data_cfg), add_special_tokens=False)["input_ids"]
        if context is not None and len(ids) + max_new_tokens > context:
            raise MedtuneError(f"question {n}: its prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) "
                               f"exceeds the model's context of {context} tokens; shorten it or lower --max-new-tokens")
        rows.append(ids)
    return rows


def read_questions(path: str | Path) -> list[str]:
    """Questions from a .txt file (one per line) or a .jsonl file (field question, input or prompt)."""
    path = Path(path)
    if not path.is_file():
        raise MedtuneError(f"input file not found: {path}" if not path.exists() else f"input {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MedtuneError(f"{path}: not UTF-8 text (byte {e.start})") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise MedtuneError(f"{path}: no questions")
    for n, ln in enumerate(lines, 1):
        if len(ln) > MAX_QUESTION_CHARS:
            raise MedtuneError(f"{path}: line {n} is {len(ln):,} characters long; the limit is {MAX_QUESTION_CHARS:,}")
    if path.suffix.lower() != ".jsonl":
        return [ln.strip() for ln in lines]
    questions = []
    for n, ln in enumerate(lines, 1):
        try:
            obj = json.loads(ln)
        except (json.JSONDecodeError, RecursionError):
            raise MedtuneError(f"{path}: line {n} is not valid JSON") from None
        q = next((obj[k] for k in ("question", "input", "prompt") if isinstance(obj, dict) and k in obj), None)
        if not isinstance(q, str) or not q.strip():
            raise MedtuneError(f"{path}: line {n} needs a non-empty 'question' (or 'input' / 'prompt') string")
        questions.append(q.strip())
    return questions


def check_output_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise MedtuneError(f"--output {path} is a folder; give a file name such as answers.jsonl")
    if not path.parent.is_dir():
        raise MedtuneError(f"--output {path}: folder {path.parent} not found")
    return path


def generate_file(model, tokenizer, questions: list[str], out_path, data_cfg: DataConfig, g: GenerateConfig,
                  batch_size: int = 8, context: int | None = None) -> list[dict]:
    """Answer questions (see read_questions); write the answers (with the notice) to a .jsonl atomically."""
    out_path = check_output_file(out_path)
    prompts = encode_questions(tokenizer, questions, data_cfg, context, g.max_new_tokens)
    answers = complete(model, tokenizer, prompts, g, batch_size, progress=True)
    rows = [{"question": q, "answer": c.text, "tokens": len(c.token_ids), "stopped_at_eos": c.stopped_at_eos,
             "notice": NOTICE} for q, c in zip(questions, answers)]
    atomic_write_jsonl(out_path, rows)
    return rows


def answer(model, tokenizer, question: str, data_cfg: DataConfig, g: GenerateConfig, streamer=None,
           context: int | None = None) -> dict:
    """One answer (streamed when a streamer is given). Returns question, answer, tokens, stopped_at_eos."""
    (ids,) = encode_questions(tokenizer, [question], data_cfg, context, g.max_new_tokens)
    (c,) = complete(model, tokenizer, [ids], g, streamer=streamer)
    return {"question": question, "answer": c.text, "tokens": len(c.token_ids), "stopped_at_eos": c.stopped_at_eos}
