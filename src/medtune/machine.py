"""What this machine can do: the choices that need torch (CUDA, bf16) but no model, each refusing what the machine
cannot do; medtune.validate.validate_machine runs them before any model loads. Kept apart from the training modules
so that `medtune train` refuses a run the machine cannot do after importing torch alone."""

from __future__ import annotations

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
