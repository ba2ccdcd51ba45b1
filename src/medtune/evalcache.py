"""The base model's evaluation scores, kept for the next `medtune eval` of a run tuned from the same base.

Every run tuned from one base is compared with the same base numbers, yet each eval scored the base again: a recipe
sweep of seven variants scored it seven times (on gpt2-xl the medical benchmarks alone take minutes a time). The
base's pass (loss and answers) and each benchmark's scores are kept in the cache folder under a key made of
everything they depend on: the base weights (each file's path, size and modification time, or the hub snapshot),
the model settings that are not the adapter's, the tokenizer files, the evaluated inputs, the decoding and scoring
settings, the device and dtype, the library versions and medtune's own source. A change to any of them is a new key,
never a stale result. Evals that need one key at the same time (a sweep's variants) wait for the first to score it.
`eval.reuse_base: false` (`medtune eval --rescore-base`) turns it off; MEDTUNE_CACHE moves the folder (default
$XDG_CACHE_HOME/medtune or ~/.cache/medtune). An unreadable or unwritable entry is a miss, never an error.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from medtune.files import atomic_write_json

log = logging.getLogger("medtune.evaluate")

ADAPTER_ONLY = {"lora_r", "lora_alpha", "lora_dropout", "lora_targets", "lora_rslora", "lora_dora"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")


def cache_dir() -> Path:
    if os.environ.get("MEDTUNE_CACHE"):
        return Path(os.environ["MEDTUNE_CACHE"]).expanduser() / "eval-base"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "medtune" / "eval-base"


@functools.cache
def _source_digest() -> str:
    """medtune's own code: an edit to the scoring or decoding is a new key."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for f in sorted(here.rglob("*.py")):
        h.update(str(f.relative_to(here)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _file_stats(path: Path) -> list:
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    return [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def _weights(name: str) -> object:
    """A local base by its files' stats; a hub id by the snapshot the local hub cache resolves it to."""
    path = Path(name).expanduser()
    if path.exists():
        return _file_stats(path)
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - an odd id: no snapshot, the id alone
        found = None
    return {"hub": name, "snapshot": str(Path(found).parent) if isinstance(found, str) else None}


def base_identity(run, model) -> dict:
    """What the base's scores depend on besides the evaluated inputs (run: a rundir.RunFolder; model: the loaded
    base)."""
    import peft
    import torch
    import transformers

    cfg = run.config.model
    param = next(model.parameters())
    device = torch.cuda.get_device_name(param.device) if param.device.type == "cuda" else param.device.type
    tokenizer = [
        hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        for p in (run.path / name for name in TOKENIZER_FILES)
    ]
    return {
        "weights": _weights(str(run.base_model or cfg.name)),
        "model": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ADAPTER_ONLY},
        "tokenizer": tokenizer,
        "device": device,
        "dtype": str(param.dtype),
        "versions": [torch.__version__, transformers.__version__, peft.__version__],
        "medtune": _source_digest(),
    }


def key(identity: dict, part: str, payload: object) -> str:
    text = json.dumps({"base": identity, "part": part, "payload": payload}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load(k: str) -> dict | None:
    try:
        return json.loads((cache_dir() / f"{k}.json").read_text())
    except (OSError, ValueError):
        return None


def store(k: str, value: dict) -> None:
    path = cache_dir() / f"{k}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, value)
    except OSError as e:  # a read-only home: the eval itself is done
        log.warning(f"eval: could not keep the base scores in {path.parent} ({e.strerror or e})")


@contextmanager
def _claimed(k: str) -> Iterator[None]:
    """The key's lock file held (others wanting it wait); no lock where the folder cannot be written."""
    try:
        import fcntl

        cache_dir().mkdir(parents=True, exist_ok=True)
        f = open(cache_dir() / f"{k}.lock", "w")  # noqa: SIM115 - held across the yield
    except (ImportError, OSError):
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def kept_or_scored(k: str, score: Callable[[], dict]) -> tuple[dict, bool]:
    """(the entry kept under k, True), else (score(), False) with it kept under k."""
    value = load(k)
    if value is not None:
        return value, True
    with _claimed(k):
        value = load(k)  # scored by another eval while this one waited
        if value is not None:
            return value, True
        value = score()
        store(k, value)
        return value, False
