"""Scoring multiple-choice items by log-likelihood (see medtune.medbench)."""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass

from medtune.errors import MedtuneError
from medtune.medbench.tasks import GROUPS, Item

log = logging.getLogger("medtune.medbench")

# ---------------------------------------------------------------- scoring


def _encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: trailing spaces of the context move to the continuation; the continuation's tokens are
    the tail of the whole text's tokens after the context's own tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    ctx = tokenizer(context)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    cont = whole[len(ctx) :]
    if not cont:
        raise MedtuneError(f"the continuation {continuation!r} encodes to no tokens after its context")
    return ctx, cont


@dataclass
class _Row:
    ids: list[int]
    targets: list[tuple[int, int, int, list[int]]]  # (item, choice, first position predicting it, token ids)
    truncated: bool


def _rows(tokenizer, items: list[Item], max_len: int | None) -> list[_Row]:
    rows = []
    for i, item in enumerate(items):
        pairs = [_encode_pair(tokenizer, item.prompt, " " + c) for c in item.choices]
        ctx = pairs[0][0]
        if all(len(cont) == 1 and c == ctx for c, cont in pairs):
            # one forward pass over the context predicts every one-token continuation
            ids = ctx[-max_len:] if max_len else ctx
            rows.append(
                _Row(ids, [(i, j, len(ids) - 1, cont) for j, (_, cont) in enumerate(pairs)], len(ids) < len(ctx))
            )
            continue
        for j, (c, cont) in enumerate(pairs):
            full = c + cont
            ids = (full[-(max_len + 1) :] if max_len else full)[:-1]
            if len(cont) > len(ids):
                raise MedtuneError(
                    f"{item.task} {item.id}: choice {item.choices[j]!r} is longer than the model's context"
                )
            rows.append(_Row(ids, [(i, j, len(ids) - len(cont), cont)], len(ids) < len(full) - 1))
    return rows


def _accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def choice_logliks(model, tokenizer, items: list[Item], batch_size: int = 16) -> list[list[float]]:
    """Per item, the log-likelihood of " " + each choice after the prompt (the sum over its tokens). Works for any
    transformers causal LM or a PeftModel around one; results do not depend on batch_size (up to float rounding)."""
    import torch

    from medtune.model import context_length

    if batch_size < 1:
        raise MedtuneError(f"batch size must be at least 1, got {batch_size}")
    rows = _rows(tokenizer, items, context_length(model))
    order = sorted(range(len(rows)), key=lambda k: (-len(rows[k].ids), k))  # similar lengths share a batch
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    keep = _accepts_logits_to_keep(model)
    out = [[0.0] * len(item.choices) for item in items]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = [rows[k] for k in order[start : start + batch_size]]
                width = max(len(r.ids) for r in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for b, r in enumerate(batch):
                    ids[b, : len(r.ids)] = torch.tensor(r.ids)
                    mask[b, : len(r.ids)] = 1
                positions = sorted({p + k for r in batch for _, _, p, toks in r.targets for k in range(len(toks))})
                extra = {"logits_to_keep": torch.tensor(positions, device=device)} if keep else {}
                logits = model(
                    input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, **extra
                ).logits
                column = {p: c for c, p in enumerate(positions)} if logits.shape[1] == len(positions) else None
                for b, r in enumerate(batch):  # log-softmax over the vocabulary only where a row needs it
                    for i, j, p, toks in r.targets:
                        cols = [p + k if column is None else column[p + k] for k in range(len(toks))]
                        logp = torch.log_softmax(logits[b, cols].float(), dim=-1)
                        out[i][j] = float(logp[torch.arange(len(toks)), torch.tensor(toks, device=logp.device)].sum())
    finally:
        model.train(was_training)
    return out


def truncated_count(model, tokenizer, items: list[Item]) -> int:
    """How many questions are longer than the model's context (their prompts are cut on the left to fit)."""
    from medtune.model import context_length

    max_len = context_length(model)
    if not max_len:
        return 0
    count = 0
    for it in items:
        # a continuation has at most one token per character (+1 for a BOS the tokenizer may add): most prompts are
        # clearly short enough without encoding their choices
        if len(tokenizer(it.prompt)["input_ids"]) + max(len(c) for c in it.choices) + 2 > max_len:
            count += any(r.truncated for r in _rows(tokenizer, [it], max_len))
    return count


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda k: (values[k], -k))  # first of equals, like numpy


def _summary(per_item: list[dict], chances: list[float], bootstrap: int, seed: int) -> dict:
    from medtune.evalstats import bootstrap_ci

    n = len(per_item)
    correct = [float(p["pred"] == p["gold"]) for p in per_item]
    correct_norm = [float(p["pred_norm"] == p["gold"]) for p in per_item]
    return {
        "n": n,
        "acc": sum(correct) / n,
        "acc_ci": list(bootstrap_ci(correct, bootstrap, seed)),
        "acc_norm": sum(correct_norm) / n,
        "acc_norm_ci": list(bootstrap_ci(correct_norm, bootstrap, seed)),
        "chance": sum(chances) / n,
    }


def score(model, tokenizer, items: list[Item], batch_size: int = 16, bootstrap: int = 1000, seed: int = 0) -> dict:
    """acc, acc_norm (log-likelihood per character of the choice, as lm-eval), n, chance, 95% percentile bootstrap
    intervals over `bootstrap` resamples (acc_ci, acc_norm_ci; None with 0), truncated (questions cut on the left to
    fit the context), seconds, and per_item: id, gold, pred, pred_norm and the log-likelihood of every choice."""
    if not items:
        raise MedtuneError("no benchmark questions to score")
    t0 = time.perf_counter()
    lls = choice_logliks(model, tokenizer, items, batch_size)
    truncated = truncated_count(model, tokenizer, items)
    per_item = [
        {
            "id": it.id,
            "gold": it.gold,
            "pred": _argmax(ll),
            "pred_norm": _argmax([v / max(len(c), 1) for v, c in zip(ll, it.choices)]),
            "logliks": ll,
        }
        for it, ll in zip(items, lls)
    ]
    tasks = sorted({it.task for it in items})
    result = {
        "task": tasks[0] if len(tasks) == 1 else "+".join(tasks),
        **_summary(per_item, [1 / len(it.choices) for it in items], bootstrap, seed),
        "truncated": truncated,
        "seconds": round(time.perf_counter() - t0, 3),
        "per_item": per_item,
    }
    return result


def score_tasks(
    model, tokenizer, tasks: dict[str, list[Item]], batch_size: int = 16, bootstrap: int = 1000, seed: int = 0
) -> dict[str, dict]:
    """score() for every task, plus one row per complete group (mmlu_medical: all six subjects pooled, so weighted
    by their sizes), with the group's bootstrap interval drawn over the pooled questions."""
    results = {}
    for name, items in tasks.items():
        results[name] = score(model, tokenizer, items, batch_size, bootstrap, seed)
        r = results[name]
        ci = f" [{r['acc_ci'][0]:.3f}, {r['acc_ci'][1]:.3f}]" if r["acc_ci"][0] is not None else ""
        log.info(
            f"benchmark {name}: acc {r['acc']:.3f}{ci} acc_norm {r['acc_norm']:.3f} n={r['n']} "
            f"chance {r['chance']:.3f} ({r['seconds']:.1f}s)"
        )
    for group, members in GROUPS.items():
        if all(m in results for m in members):
            per_item = [p for m in members for p in results[m]["per_item"]]
            chances = [results[m]["chance"] for m in members for _ in results[m]["per_item"]]
            results[group] = {
                "task": group,
                "members": list(members),
                **_summary(per_item, chances, bootstrap, seed),
                "truncated": sum(results[m]["truncated"] for m in members),
                "seconds": round(sum(results[m]["seconds"] for m in members), 3),
            }
    return results


def compare(base: dict, tuned: dict, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Tuned minus base accuracy on the same questions, with a paired 95% bootstrap interval (questions resampled
    together, so the interval is narrower than the two separate ones suggest), and how many questions each model
    alone got right. Both results must come from score() on the same items."""
    from medtune.evalstats import bootstrap_ci

    b, t = base.get("per_item"), tuned.get("per_item")
    if not b or not t or [p["id"] for p in b] != [p["id"] for p in t]:
        raise MedtuneError("compare() needs two score() results over the same questions (with per_item)")
    diff = [float(y["pred"] == y["gold"]) - float(x["pred"] == x["gold"]) for x, y in zip(b, t)]
    return {
        "n": len(diff),
        "delta_acc": sum(diff) / len(diff),
        "delta_acc_ci": list(bootstrap_ci(diff, bootstrap, seed)),
        "only_tuned_right": sum(d > 0 for d in diff),
        "only_base_right": sum(d < 0 for d in diff),
    }


def forgetting(base: dict, tuned: dict) -> bool | None:
    """True when the tuned model's accuracy falls below the lower end of the base model's 95% interval: tuning lost
    more than resampling the questions explains. None when the base has no interval (eval.bootstrap = 0)."""
    low = (base.get("acc_ci") or [None])[0]
    if low is None or tuned.get("acc") is None:
        return None
    return tuned["acc"] < low
