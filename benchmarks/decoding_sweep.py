"""Decoding settings compared on a run's validation split (tuned model only): EOS rate within max_new_tokens,
repeated 4-grams, gibberish share, ROUGE-L, mean length, and time. Not a test; for choosing `generate` defaults.

    python benchmarks/decoding_sweep.py RUN_DIR [--num-samples 100] [--max-new-tokens 512] [--only NAME,NAME]

Settings without `loop_guard` keep the run's (default 32): the guard rows compare it off, at 16 and at 64 tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # medtune from this checkout

SETTINGS = {  # name: generate overrides on top of the run's settings
    "greedy, no penalty": dict(greedy=True, repetition_penalty=1.0),
    "greedy, penalty 1.1": dict(greedy=True, repetition_penalty=1.1),
    "greedy, no-repeat 4-gram": dict(greedy=True, repetition_penalty=1.0, no_repeat_ngram=4),
    "T0.7 p0.9 pen1.1": dict(temperature=0.7, top_p=0.9, repetition_penalty=1.1),
    "T0.7 p0.9 pen1.0": dict(temperature=0.7, top_p=0.9, repetition_penalty=1.0),
    "T0.7 p0.9 pen1.2": dict(temperature=0.7, top_p=0.9, repetition_penalty=1.2),
    "T0.5 p0.9 pen1.1": dict(temperature=0.5, top_p=0.9, repetition_penalty=1.1),
    "T1.0 min_p0.1 pen1.1": dict(temperature=1.0, top_p=1.0, top_k=0, min_p=0.1, repetition_penalty=1.1),
    "T0.7 min_p0.05 pen1.1": dict(temperature=0.7, top_p=1.0, top_k=0, min_p=0.05, repetition_penalty=1.1),
    "T0.7 p0.9 pen1.1 no-repeat 4": dict(temperature=0.7, top_p=0.9, repetition_penalty=1.1, no_repeat_ngram=4),
    "T0.7 p0.9 pen1.1 guard off": dict(temperature=0.7, top_p=0.9, repetition_penalty=1.1, loop_guard=0),
    "T0.7 p0.9 pen1.1 guard 16": dict(temperature=0.7, top_p=0.9, repetition_penalty=1.1, loop_guard=16),
    "T0.7 p0.9 pen1.1 guard 64": dict(temperature=0.7, top_p=0.9, repetition_penalty=1.1, loop_guard=64),
    "greedy, no penalty, guard off": dict(greedy=True, repetition_penalty=1.0, loop_guard=0),
    "greedy, no penalty, guard 16": dict(greedy=True, repetition_penalty=1.0, loop_guard=16),
    "greedy, penalty 1.05": dict(greedy=True, repetition_penalty=1.05),
    "greedy, penalty 1.05, no-repeat 4": dict(greedy=True, repetition_penalty=1.05, no_repeat_ngram=4),
    "greedy, penalty 1.1, no-repeat 4": dict(greedy=True, repetition_penalty=1.1, no_repeat_ngram=4),
    "greedy, no-repeat 3": dict(greedy=True, repetition_penalty=1.0, no_repeat_ngram=3),
    "greedy, no-repeat 5": dict(greedy=True, repetition_penalty=1.0, no_repeat_ngram=5),
    "T0.3 p0.9 pen1.05": dict(temperature=0.3, top_p=0.9, repetition_penalty=1.05),
}


def main() -> None:
    from medtune import evaluate, rundir
    from medtune.generate import complete
    from medtune.model import load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--num-samples", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--split", default="validation")
    ap.add_argument("--save", help="write every answer to this .jsonl (setting, question index, answer)")
    ap.add_argument("--only", help="comma-separated setting names (default: all)")
    args = ap.parse_args()
    run = rundir.open_run(args.run_dir, want="run")
    run.config.eval.max_new_tokens = args.max_new_tokens
    model, tok = load_model(run, merge=True)  # the adapter merged, as eval's tuned pass runs
    inp, base_g = evaluate.prepare_inputs(run, model, tok, None, args.split, args.num_samples, greedy=False)
    print(f"{len(inp.chosen)} questions from the {args.split} split, at most {base_g.max_new_tokens} new tokens\n")
    print(
        "| decoding | ROUGE-L [95% CI] | EOS rate | repeated 4-grams | looping answers | loop-guard stops | "
        "gibberish | mean tokens | seconds |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    saved = []
    chosen = args.only.split(",") if args.only else list(SETTINGS)
    unknown = sorted(set(chosen) - set(SETTINGS))
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    for name in chosen:
        over = SETTINGS[name]
        g = dataclasses.replace(base_g, **over)
        t0 = time.perf_counter()
        out = complete(model, tok, inp.prompts, g, batch_size=len(inp.prompts))
        dt = time.perf_counter() - t0
        m, _ = evaluate.generation_metrics(out, inp.refs, bootstrap=1000)
        lo, hi = m.get("rouge_l_ci") or (float("nan"), float("nan"))
        stops = sum(c.stop_reason == "loop" for c in out)
        print(
            f"| {name} | {m['rouge_l']:.3f} [{lo:.3f}, {hi:.3f}] | {m['eos_rate']:.0%} | "
            f"{m['repeated_4gram_share'] or 0:.1%} | {m['looping_answers']:.0%} | {stops} | "
            f"{m.get('gibberish_share', float('nan')):.0%} | {m['mean_answer_tokens']:.0f} | {dt:.1f} |",
            flush=True,
        )
        saved += [{"setting": name, "i": i, "answer": c.text, "stop": c.stop_reason} for i, c in enumerate(out)]
    if args.save:
        from medtune.files import atomic_write_jsonl

        atomic_write_jsonl(
            args.save, saved + [{"setting": "reference", "i": i, "answer": r} for i, r in enumerate(inp.refs)]
        )


if __name__ == "__main__":
    main()
