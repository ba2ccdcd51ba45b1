import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TINY = ROOT / "configs" / "tiny-cpu.yaml"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_config(out, *overrides, **top):
    """The tiny-cpu preset with quick-test overrides; `overrides` are section.key=value strings."""
    from medtune.config import load_config

    quick = ["train.max_steps=6", "train.eval_steps=3", "train.save_steps=3", "train.logging_steps=2",
             "train.report_to=none"]
    return load_config(TINY, quick + list(overrides), output_dir=str(out), **top)


@pytest.fixture(scope="session")
def tok():
    from medtune.model import load_tokenizer

    return load_tokenizer("builtin:tiny")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_records(n, prefix="q"):
    return [{"instruction": "Answer this question truthfully", "input": f"What about {prefix} number {i}?",
             "output": f"Item {i} is a common condition that usually improves with rest and fluids."} for i in range(n)]
