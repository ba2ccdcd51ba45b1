"""The one decoding path: prompts -> token ids -> batched generation -> answers with their stop reason.

`complete()` is used by `medtune generate` (one question streamed, or a file in batches), `medtune eval` and
`medtune serve`: left padding, prompts sorted by length (less padding; the order of the answers is kept), seeded
sampling or greedy decoding from one GenerateConfig, EOS trimming, and a stop reason per answer.
"""
from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
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
              no_repeat_ngram_size=g.no_repeat_ngram or None, eos_token_id=tokenizer.eos_token_id,
              pad_token_id=tokenizer.pad_token_id)
    if g.greedy or g.temperature < MIN_TEMPERATURE:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None, min_p=None)
    else:
        kw.update(do_sample=True, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k, min_p=g.min_p or None)
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


@dataclass
class Request:
    """One prompt to complete with its own settings: what serving batches together (per-request sampling and seed,
    max_new_tokens, cancellation, streamed text)."""
    ids: list[int]
    g: GenerateConfig
    cancel: threading.Event | None = None
    on_text: Callable[[str], None] | None = None


class RowSampler:
    """A logits processor that samples each row with its own temperature, top-k, top-p and seeded generator (greedy
    rows take the argmax), and returns a one-hot score row, so generate's greedy step picks that token. HF's own
    sampling uses one setting and the global RNG for the whole batch; this keeps an answer a function of its prompt
    and seed alone, whatever else shares the batch."""

    def __init__(self, rows: list[GenerateConfig], device):
        self.greedy = [r.greedy or r.temperature < MIN_TEMPERATURE for r in rows]
        self.temperature = torch.tensor([max(r.temperature, MIN_TEMPERATURE) for r in rows], device=device)[:, None]
        self.top_p = torch.tensor([r.top_p for r in rows], device=device)[:, None]
        self.top_k = [r.top_k for r in rows]
        self.min_p = torch.tensor([r.min_p for r in rows], device=device)[:, None]
        self.generators = [None if r.seed is None else torch.Generator(device).manual_seed(r.seed) for r in rows]

    def __call__(self, input_ids, scores):
        x = scores.float() / self.temperature
        k = self.top_k[0] if len(set(self.top_k)) == 1 and 0 < self.top_k[0] < x.shape[1] else 0
        if k:  # the usual case, one top_k for every row: top-p, min-p and the draw work on the k candidates only
            x, idx = torch.topk(x, k)  # sorted, most likely first
        else:
            for i, kk in enumerate(self.top_k):
                if 0 < kk < x.shape[1]:
                    x[i].masked_fill_(x[i] < torch.topk(x[i], kk).values[-1], float("-inf"))
            x, idx = torch.sort(x, descending=True, dim=-1)
        probs = x.softmax(-1)
        drop = (probs.cumsum(-1) - probs) >= self.top_p  # keep the smallest set reaching top_p (at least one)
        drop |= probs < self.min_p * probs[:, :1]
        probs = probs.masked_fill(drop, 0.0)
        choice = scores.argmax(-1)
        for i, gen in enumerate(self.generators):
            if not self.greedy[i]:
                choice[i] = idx[i, torch.multinomial(probs[i], 1, generator=gen)[0]]
        return torch.full_like(scores, float("-inf")).scatter_(1, choice[:, None], 0.0)


class _RowStop:
    """Stopping criterion: a row is done at its own max_new_tokens or when its request is cancelled. Records how many
    tokens each row had when it stopped (what follows is padding, which for GPT-2 is the EOS id)."""

    def __init__(self, requests: list[Request], width: int):
        self.requests, self.width = requests, width
        self.stopped: list[int | None] = [None] * len(requests)

    def __call__(self, input_ids, scores, **kwargs):
        n = input_ids.shape[1] - self.width
        for i, r in enumerate(self.requests):
            if self.stopped[i] is None and (n >= r.g.max_new_tokens or (r.cancel is not None and r.cancel.is_set())):
                self.stopped[i] = n
        return torch.tensor([s is not None for s in self.stopped], dtype=torch.bool, device=input_ids.device)


class _RowStreamer:
    """Streams each row's new text to its request's on_text, cutting only where the decoded text is stable."""

    def __init__(self, tokenizer, requests: list[Request]):
        self.tok, self.requests = tokenizer, requests
        self.tokens: list[list[int]] = [[] for _ in requests]
        self.shown = [0] * len(requests)
        self.closed = [r.on_text is None for r in requests]
        self.started = False

    def put(self, value):
        if not self.started:  # the first call carries the prompts
            self.started = True
            return
        for i, t in enumerate(value.reshape(len(self.requests), -1)[:, -1].tolist()):
            if self.closed[i]:
                continue
            if t == self.tok.eos_token_id:
                self._flush(i)
                self.closed[i] = True
                continue
            self.tokens[i].append(t)
            self._flush(i, final=False)

    def _flush(self, i: int, final: bool = True):
        text = self.tok.decode(self.tokens[i], skip_special_tokens=True)
        if final or text.endswith("\n"):
            cut = len(text)
        elif text.endswith("\ufffd"):  # the rest of a multi-byte character is still to come
            return
        else:
            cut = text.rfind(" ") + 1  # up to the last word boundary: later tokens may still change the last word
        if cut > self.shown[i]:
            self.requests[i].on_text(text[self.shown[i]:cut])
            self.shown[i] = cut

    def end(self):
        for i in range(len(self.requests)):
            if not self.closed[i]:
                self._flush(i)
                self.closed[i] = True


def _finish(seq: list[int], req: Request, tokenizer, stopped: int | None) -> Completion:
    eos = tokenizer.eos_token_id
    seq = seq[: req.g.max_new_tokens if stopped is None else stopped]
    if eos in seq:
        seq, reason = seq[: seq.index(eos)], "eos"
    else:
        reason = "cancelled" if req.cancel is not None and req.cancel.is_set() else "length"
    return Completion(tokenizer.decode(seq, skip_special_tokens=True).strip(), seq, reason, len(req.ids))


@torch.no_grad()
def complete_batch(model, tokenizer, requests: list[Request], streamer=None) -> list[Completion]:
    """One batch through model.generate: left padding, per-row sampling and limits, EOS trimming, stop reasons.
    Streams to each request's on_text (or to `streamer`, an HF streamer, for a single request)."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    device = next(model.parameters()).device
    ids, mask = _left_padded([r.ids for r in requests], tokenizer.pad_token_id, device)
    kwargs = generation_kwargs(requests[0].g, tokenizer)
    kwargs.update(max_new_tokens=max(r.g.max_new_tokens for r in requests), do_sample=False, temperature=None,
                  top_p=None, top_k=None, min_p=None,  # sampling is RowSampler's, per row
                  logits_processor=LogitsProcessorList([RowSampler([r.g for r in requests], device)]),
                  stopping_criteria=StoppingCriteriaList([stop := _RowStop(requests, ids.shape[1])]))
    if streamer is None and any(r.on_text for r in requests):
        streamer = _RowStreamer(tokenizer, requests)
    seqs = model.generate(input_ids=ids, attention_mask=mask, streamer=streamer, **kwargs)
    return [_finish(seq, r, tokenizer, n) for seq, r, n in zip(seqs[:, ids.shape[1]:].tolist(), requests, stop.stopped)]


def complete(model, tokenizer, prompts: list[list[int]], g: GenerateConfig, batch_size: int = 8, streamer=None,
             cancel=None, progress: bool = False) -> list[Completion]:
    """Answers for prompts given as token ids, in the order given: batches of prompts of similar length (longest
    first), each answer seeded with g.seed (reproducible whatever the batch). `streamer` (an HF streamer, one prompt
    only) receives the text as it is generated; `cancel` (a threading.Event) stops generation early."""
    if streamer is not None and len(prompts) != 1:
        raise ValueError("streaming with an HF streamer needs exactly one prompt")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    out: list[Completion | None] = [None] * len(prompts)
    starts = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="generating", unit="batch", file=sys.stderr)
    for start in starts:
        chunk = order[start:start + batch_size]
        done = complete_batch(model, tokenizer, [Request(prompts[i], g, cancel) for i in chunk], streamer)
        for i, c in zip(chunk, done):
            out[i] = c
    return out


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
