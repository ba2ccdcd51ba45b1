"""Wall time of `medtune --help` and of refusals, each a fresh `python -m medtune` process (median of --repeat runs).
Not a test. The medtune imported is whatever PYTHONPATH / the venv gives, so an older checkout can be timed too:

    python benchmarks/refusal_times.py [--repeat 5] [--smoke]
    PYTHONPATH=/tmp/old/src python benchmarks/refusal_times.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny-cpu.yaml")


def cases(tmp: Path) -> list[tuple[str, list[str]]]:
    rec = {"instruction": "Answer.", "input": "What is asthma?", "output": "A disease of the airways."}
    (tmp / "bad.jsonl").write_text(json.dumps(rec) + "\n{not json\n")
    train = ["train", "--config", TINY, "--output-dir", str(tmp / "out")]
    return [
        ("`medtune --help`", ["--help"]),
        ("`medtune train --help`", ["train", "--help"]),
        ("a malformed .jsonl (`train --data bad.jsonl`)", train + ["--data", str(tmp / "bad.jsonl")]),
        ("a bad config value (`--set train.learning_rate=-1`)", train + ["--set", "train.learning_rate=-1"]),
        ("`--model random:nope`", train + ["--model", "random:nope"]),
        ("`--set train.bf16=true` on a CPU machine (imports torch)", train + ["--set", "train.bf16=true"]),
        ("`data.max_length` above the model's context (needs the model)", train + ["--set", "data.max_length=2048"]),
    ]


def wall(argv: list[str]) -> tuple[float, int]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "medtune", *argv], capture_output=True, env=env, timeout=600)
    return time.perf_counter() - t0, p.returncode


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="one run of the first three cases (those that need no torch): a test that the script runs",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        print("| command | exit | median seconds |\n| --- | ---: | ---: |")
        for what, argv in cases(Path(d))[: 3 if args.smoke else None]:
            runs = [wall(argv) for _ in range(1 if args.smoke else args.repeat)]
            print(f"| {what} | {runs[0][1]} | {statistics.median(t for t, _ in runs):.2f} |", flush=True)


if __name__ == "__main__":
    main()
