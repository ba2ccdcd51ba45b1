"""Generation speed for `medtune eval` on a run: the same questions decoded with the adapter kept separate,
merged into the base, and merged with a static KV cache + torch.compile. Not a test.

    python benchmarks/eval_speed.py RUN_DIR [--num-samples 50] [--max-new-tokens 512]
"""
from __future__ import annotations

import argparse
import contextlib
import time


def main() -> None:
    import torch

    from medtune import evaluate, rundir
    from medtune.generate import complete

    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--num-samples", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=512)
    args = ap.parse_args()
    run = rundir.open_run(args.run_dir, want="run")
    run.config.eval.max_new_tokens = args.max_new_tokens
    model, tok = rundir.load_model(run)
    inp, g = evaluate._prepare_inputs(run, model, tok, None, "test", args.num_samples, greedy=False)
    variants = {"adapter separate": contextlib.nullcontext, "adapter merged": lambda: evaluate.merged_adapter(model)}
    for name, ctx in variants.items():
        for batch in (len(inp.prompts), 16):
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            t0 = time.perf_counter()
            with ctx():
                out = complete(model, tok, inp.prompts, g, batch_size=batch)
            dt = time.perf_counter() - t0
            steps = max(len(c.token_ids) for c in out)
            print(f"{name:18s} batch {batch:3d}: {dt:6.1f} s, {sum(len(c.token_ids) for c in out)} tokens, "
                  f"longest {steps}, {1000 * dt / max(steps, 1):.1f} ms per step", flush=True)


if __name__ == "__main__":
    main()
