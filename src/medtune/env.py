"""`medtune env`: what a bug report needs on one screen (versions, the accelerator, bf16, bitsandbytes' backend, the
hub, cache folders), like `accelerate env` and `transformers env`. Versions come from the installed packages'
metadata, so nothing but torch is imported; bitsandbytes is not imported (its import can ask the hub for kernels)."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

LIBRARIES = ("transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "huggingface_hub", "tokenizers")
OPTIONAL = ("gguf", "liger_kernel", "flash_attn", "mlflow-skinny", "wandb", "optuna")


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def accelerator_lines() -> list[str]:
    import torch

    lines = [f"torch: {torch.__version__} (CUDA build {torch.version.cuda or 'none'})"]
    if not torch.cuda.is_available():
        return [*lines, f"accelerator: none (CPU, {os.cpu_count()} cores); bf16: {_cpu_bf16()}"]
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        lines.append(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}")
    lines.append(f"bf16: {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    return lines


def _cpu_bf16() -> str:
    """Whether this CPU multiplies bf16 natively (else autocast emulates it, slowly); from /proc/cpuinfo on Linux."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    return "native" if "avx512_bf16" in flags or "amx_bf16" in flags else "emulated"


def bitsandbytes_backend() -> str:
    """The backend bitsandbytes picks (CUDA where torch sees a GPU, else its CPU kernels), without importing it."""
    if version("bitsandbytes") == "not installed":
        return "not installed"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu (4-bit training runs, slowly)"


def hub_lines() -> list[str]:
    from medtune.evalcache import cache_dir
    from medtune.hub import hub_reachable, settled

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if settled:
        state = "unreachable: medtune runs with HF_HUB_OFFLINE=1 (local files and caches only)"
    elif offline:
        state = "off (HF_HUB_OFFLINE is set: local files and caches only)"
    else:
        state = "reachable" if hub_reachable(1.5) else "unreachable"
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub_cache = os.environ.get("HF_HUB_CACHE", str(home / "hub"))
    return [
        f"hub: {state} ({os.environ.get('HF_ENDPOINT', 'https://huggingface.co')})",
        f"caches: hub {hub_cache}; datasets {os.environ.get('HF_DATASETS_CACHE', home / 'datasets')}; "
        f"medtune's kept base scores {cache_dir()}",
    ]


def report() -> list[str]:
    """The lines of `medtune env`."""
    libs = ", ".join(f"{name} {version(name)}" for name in LIBRARIES)
    extras = ", ".join(f"{name} {version(name)}" for name in OPTIONAL if version(name) != "not installed")
    return [
        f"medtune: {version('medtune')} ({Path(__file__).resolve().parent})",
        f"python: {sys.version.split()[0]} on {platform.platform()}",
        *accelerator_lines(),
        f"bitsandbytes backend: {bitsandbytes_backend()}",
        f"libraries: {libs}",
        f"optional: {extras or 'none'}",
        *hub_lines(),
    ]
