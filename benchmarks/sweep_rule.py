"""The recipe sweep's choice (recipe_sweep.sh prints it last), fixed before any run: among the variants whose tuned
model ends at least 95% of its answers with EOS and forgets no medical benchmark (tuned accuracy below the base's
95% interval), the highest validation ROUGE-L of those whose perplexity is at most 0.52x the base's (the recipe
issue's target), or of all of them when none is. Not a test.

    python benchmarks/sweep_rule.py SWEEP_ROOT NAME...   # reads SWEEP_ROOT/NAME/eval/metrics.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MIN_EOS = 0.95
MAX_PERPLEXITY_RATIO = 0.52


def passes(metrics: dict) -> bool:
    """EOS rate >= 95% and no benchmark flagged as forgotten."""
    tuned, bench = metrics["tuned"], metrics.get("benchmarks") or {}
    return (tuned.get("eos_rate") or 0) >= MIN_EOS and not any(b.get("forgetting") for b in bench.values())


def perplexity_ratio(metrics: dict) -> float:
    """Tuned over base perplexity (inf when either is missing)."""
    tuned, base = metrics["tuned"].get("perplexity"), (metrics.get("base") or {}).get("perplexity")
    return tuned / base if tuned and base else float("inf")


def choose(runs: dict[str, dict]) -> tuple[str | None, bool]:
    """(the chosen variant of {name: metrics.json} or None when none passes, whether it meets the perplexity target)."""
    ok = {name: m for name, m in runs.items() if passes(m)}
    low = {name: m for name, m in ok.items() if perplexity_ratio(m) <= MAX_PERPLEXITY_RATIO}
    pool = low or ok
    best = max(((m["tuned"]["rouge_l"], name) for name, m in pool.items()), default=None)
    return (best[1] if best else None), bool(low)


def main(argv: list[str]) -> None:
    root, names = Path(argv[0]), argv[1:]
    runs = {n: json.loads(p.read_text()) for n in names if (p := root / n / "eval" / "metrics.json").is_file()}
    chosen, low = choose(runs)
    if chosen and not low:
        print(
            f"no variant that passes has perplexity <= {MAX_PERPLEXITY_RATIO}x the base's: the highest ROUGE-L of them"
        )
    print("chosen: " + (chosen or f"none (no variant has EOS >= {MIN_EOS:.0%} and nothing forgotten)"))


if __name__ == "__main__":
    main(sys.argv[1:])
