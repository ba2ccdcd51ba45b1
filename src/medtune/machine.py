"""What this machine can do: the choices and refusals that need torch (CUDA, bf16) but no model. Kept apart from the
training modules so that `medtune train` refuses a run the machine cannot do after importing torch alone."""

from __future__ import annotations

import os

from medtune.config import Config
from medtune.errors import MedtuneError


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def use_bf16(cfg: Config) -> bool:
    if cfg.train.bf16 == "false":
        return False
    import torch

    capable = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if cfg.train.bf16 == "true" and not capable:
        raise MedtuneError("train.bf16=true needs a GPU with bf16 support; use auto or false")
    return capable  # 4-bit too: LoRA and the non-quantized layers then run in bf16 rather than float32


def optimizer_name(cfg: Config) -> str:
    if cfg.train.optim != "auto":
        if ("8bit" in cfg.train.optim or "paged" in cfg.train.optim) and not cuda():
            raise MedtuneError(
                f"train.optim={cfg.train.optim} needs a CUDA GPU (bitsandbytes); use auto or adamw_torch"
            )
        return cfg.train.optim
    if cfg.model.quantization != "none" and cuda():
        return "paged_adamw_8bit"
    return "adamw_torch"


def check(cfg: Config) -> None:
    """Every check of the config against this machine and launcher (before any model loads)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):  # set by accelerate launch for FSDP
        raise MedtuneError(
            "FSDP is not supported (untested; on CPU accelerate runs DDP instead, and 4-bit bases are "
            "not sharded): launch with torchrun or accelerate launch --multi_gpu (DDP)"
        )
    use_bf16(cfg)
    optimizer_name(cfg)
    if cfg.model.quantization == "8bit" and not cuda():
        raise MedtuneError("model.quantization=8bit needs a CUDA GPU; use 4bit (which also runs on CPU) or none")
