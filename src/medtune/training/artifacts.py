"""What a finished run records besides its adapter: the manifest, the whole run's train loss (the loss curve is
medtune.loss.plot_losses, which `medtune eval` draws too)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

import torch

from medtune import data as data_mod
from medtune.config import Config
from medtune.training.distributed import world_size

PACKAGES = ("medtune", "torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes")


def _git_commit() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
            ).stdout.strip()
            or None
        )
    except Exception:
        return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def source_sha256(cfg: Config, prepared: data_mod.Prepared) -> str:
    """The data file's hash, or (hub data) the hash of the records used."""
    path = data_mod.SAMPLE if cfg.data.source == "builtin:sample" else Path(cfg.data.source)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for rows in prepared.splits.values():
        for r in rows:
            h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()


def manifest(cfg: Config, prepared: data_mod.Prepared, extra: dict | None = None) -> dict:
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "packages": {name: _version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
        "processes": world_size(),
        "git_commit": _git_commit(),
        "data": {
            "source": cfg.data.source,
            "sha256": source_sha256(cfg, prepared),
            "source_rows": prepared.source_rows,
            "duplicates_removed": prepared.duplicates,
            "overlong_dropped": prepared.dropped,
            "splits": {k: len(v) for k, v in prepared.encoded.items()},
            **(extra or {}),
        },
        "model": cfg.model.name,
    }


def whole_run_train_loss(log_history: list[dict]) -> float | None:
    """Mean train loss over every step of the run, from the logged losses (each the mean over the steps since the
    previous log). After --resume the Trainer's own train_loss covers only the resumed part."""
    points = sorted((h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h)
    total = steps = 0
    last = 0
    for step, loss in points:
        if step > last:
            total += loss * (step - last)
            steps += step - last
            last = step
    return total / steps if steps else None
