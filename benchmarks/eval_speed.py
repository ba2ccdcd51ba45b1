"""Generation speed for `medtune eval` on a run: the same questions decoded with the adapter kept separate (a
PeftModel: three matmuls per LoRA layer) and merged into the base weights (what eval's tuned pass runs). Not a test.

    python benchmarks/eval_speed.py RUN_DIR [--num-samples 50] [--max-new-tokens 512]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # medtune from this checkout


def main() -> None:
    import torch

    from medtune import evaluate, rundir
    from medtune.generate import complete
    from medtune.model import load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--num-samples", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=512)
    args = ap.parse_args()
    run = rundir.open_run(args.run_dir, want="run")
    run.config.eval.max_new_tokens = args.max_new_tokens
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for name, merge in (("adapter separate", False), ("adapter merged", True)):
        model, tok = load_model(run, merge=merge)
        inp, g = evaluate.prepare_inputs(run, model, tok, None, "test", args.num_samples, greedy=False)
        for batch in (len(inp.prompts), 16):
            sync()
            t0 = time.perf_counter()
            out = complete(model, tok, inp.prompts, g, batch_size=batch)
            sync()
            dt = time.perf_counter() - t0
            steps = max(len(c.token_ids) for c in out)
            print(
                f"{name:18s} batch {batch:3d}: {dt:6.1f} s, {sum(len(c.token_ids) for c in out)} tokens, "
                f"longest {steps}, {1000 * dt / max(steps, 1):.1f} ms per step",
                flush=True,
            )
        del model


if __name__ == "__main__":
    main()
