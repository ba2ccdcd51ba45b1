"""The base model's evaluation scores, kept for the next `medtune eval` of a run tuned from the same base.

Every run tuned from one base is compared with the same base numbers, yet each eval scored the base again: a recipe
sweep of seven variants scored it seven times (on gpt2-xl the medical benchmarks alone take minutes a time). The
base's pass (loss and answers) and each benchmark's scores are kept in the cache folder under a key made of
everything they depend on: the base weights (each file's path, size and modification time, or the hub snapshot; a
hub id without a local snapshot is never kept), the model settings that are not the adapter's, the tokenizer's
whole definition, the evaluated inputs, the decoding and scoring settings, the device and dtype, the library
versions and medtune's own source. A change to any of them is a new key, never a stale result. Evals that need one
key at the same time (a sweep's variants) wait for the first to score it. `eval.reuse_base: false` (`medtune eval
--rescore-base`) scores the base again and replaces the entry; MEDTUNE_CACHE moves the folder (default
$XDG_CACHE_HOME/medtune or ~/.cache/medtune). An unreadable, misshapen or unwritable entry is a miss, never an error.
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
LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "tokenizers", "numpy", "rouge-score")


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


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _file_stats(path: Path) -> list:
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    return [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def _weights(name: str) -> object | None:
    """A local base by its files' stats; a hub id by the snapshot the local hub cache resolves it to (None when
    there is none: nothing to tell one version of the id from the next, so nothing is kept)."""
    path = Path(name).expanduser()
    if path.exists():
        return _file_stats(path)
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - an id the hub cache cannot resolve: no snapshot
        return None
    # snapshots/<commit>/config.json (a link into blobs/: not resolved, the commit is the version)
    return {"hub": name, "snapshot": str(Path(found).parent)} if isinstance(found, str) else None


def _tokenizer(tok) -> str:
    """The tokenizer as it encodes: its whole definition (vocabulary, merges, normalizer, added tokens), special
    tokens and chat template."""
    backend = getattr(tok, "backend_tokenizer", None)
    text = json.dumps(
        {
            "definition": backend.to_str() if backend is not None else sorted(tok.get_vocab().items()),
            "special": {k: str(v) for k, v in tok.special_tokens_map.items()},
            "ids": [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id],
            "chat_template": getattr(tok, "chat_template", None),
            "class": type(tok).__name__,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def base_identity(run, model, tok) -> dict | None:
    """What the base's scores depend on besides the evaluated inputs (run: a rundir.RunFolder; model: the loaded
    base; tok: the run's tokenizer), or None when the base's weights cannot be told apart from another version's."""
    import torch

    cfg = run.config.model
    weights = _weights(str(run.base_model or cfg.name))
    if weights is None:
        return None
    param = next(model.parameters())
    device = torch.cuda.get_device_name(param.device) if param.device.type == "cuda" else param.device.type
    return {
        "weights": weights,
        "model": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ADAPTER_ONLY},
        "tokenizer": _tokenizer(tok),
        "device": device,
        "dtype": str(param.dtype),
        "versions": _versions(),
        "medtune": _source_digest(),
    }


def key(identity: dict, part: str, payload: object) -> str:
    text = json.dumps({"base": identity, "part": part, "payload": payload}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load(k: str, fields: tuple[str, ...]) -> dict | None:
    """The entry under k when it is a mapping with `fields`; anything else (none, unreadable, another shape) None."""
    try:
        value = json.loads((cache_dir() / f"{k}.json").read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and all(f in value for f in fields) else None


def store(k: str, value: dict) -> None:
    path = cache_dir() / f"{k}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, value)
    except OSError as e:  # a read-only home: the eval itself is done
        log.warning(f"eval: could not keep the base scores in {path.parent} ({e.strerror or e})")


@contextmanager
def _claimed(k: str) -> Iterator[None]:
    """The key's lock file held (others wanting it wait, and say so); no lock where the folder or the file system
    cannot take one."""
    try:
        import fcntl

        cache_dir().mkdir(parents=True, exist_ok=True)
        f = open(cache_dir() / f"{k}.lock", "w")  # noqa: SIM115 - held across the yield
    except (ImportError, OSError):
        yield
        return
    with f:
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("eval: waiting for another eval that is scoring the same base")
                fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:  # no locks on this file system (ENOLCK): score without one
            pass
        yield


def kept_or_scored(k: str, score: Callable[[], dict], fields: tuple[str, ...], reuse: bool = True) -> tuple[dict, bool]:
    """(the entry kept under k, True), else (score(), False) with it kept under k. reuse=False scores and replaces
    the entry (a suspect one is mended that way)."""
    value = load(k, fields) if reuse else None
    if value is not None:
        return value, True
    with _claimed(k):
        value = load(k, fields) if reuse else None  # scored by another eval while this one waited
        if value is not None:
            return value, True
        value = score()
        store(k, value)
        return value, False
