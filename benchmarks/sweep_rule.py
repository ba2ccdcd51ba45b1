"""The recipe sweep's choice (recipe_sweep.sh prints it last), fixed before any run: among the variants whose tuned
model ends at least 95% of its answers with EOS and forgets no medical benchmark (tuned accuracy below the base's
95% interval), the highest validation ROUGE-L. Not a test.

    python benchmarks/sweep_rule.py SWEEP_ROOT NAME...   # reads SWEEP_ROOT/NAME/eval/metrics.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MIN_EOS = 0.95


def passes(metrics: dict) -> bool:
    """EOS rate >= 95% and no benchmark flagged as forgotten."""
    tuned, bench = metrics["tuned"], metrics.get("benchmarks") or {}
    return (tuned.get("eos_rate") or 0) >= MIN_EOS and not any(b.get("forgetting") for b in bench.values())


def choose(runs: dict[str, dict]) -> str | None:
    """The name of the chosen variant ({name: metrics.json}), or None when none passes."""
    ok = [(m["tuned"]["rouge_l"], name) for name, m in runs.items() if passes(m)]
    return max(ok)[1] if ok else None


def main(argv: list[str]) -> None:
    root, names = Path(argv[0]), argv[1:]
    runs = {n: json.loads(p.read_text()) for n in names if (p := root / n / "eval" / "metrics.json").is_file()}
    chosen = choose(runs)
    print("chosen: " + (chosen or f"none (no variant has EOS >= {MIN_EOS:.0%} and nothing forgotten)"))


if __name__ == "__main__":
    main(sys.argv[1:])
