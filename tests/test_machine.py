"""medtune.machine and validate.validate_machine: the choices and refusals that depend on this machine (bf16, the
optimizer, 8-bit, FSDP), checked before any model loads. Runs on CPU: the GPU-only settings are refused in one
line."""

import pytest
import torch

from medtune import machine
from medtune.config import Config
from medtune.errors import MedtuneError
from medtune.validate import validate_machine

CPU_ONLY = not torch.cuda.is_available()


def config(**sections) -> Config:
    cfg = Config()
    for section, values in sections.items():
        for key, value in values.items():
            setattr(getattr(cfg, section), key, value)
    return cfg


def test_defaults_pass_and_pick_the_plain_optimizer_on_cpu():
    cfg = Config()
    validate_machine(cfg)
    assert machine.use_bf16(config(train={"bf16": "false"})) is False
    if CPU_ONLY:
        assert machine.optimizer_name(cfg) == "adamw_torch"
        assert machine.optimizer_name(config(model={"quantization": "4bit"})) == "adamw_torch"
        assert machine.use_bf16(cfg) is False
    assert machine.optimizer_name(config(train={"optim": "adafactor"})) == "adafactor"  # a named one is kept


@pytest.mark.skipif(not CPU_ONLY, reason="the refusals are for machines without CUDA")
@pytest.mark.parametrize(
    "sections, message",
    [
        ({"train": {"bf16": "true"}}, "train.bf16=true needs a GPU with bf16 support"),
        ({"train": {"optim": "paged_adamw_8bit"}}, "train.optim=paged_adamw_8bit needs a CUDA GPU"),
        ({"model": {"quantization": "8bit"}}, "model.quantization=8bit needs a CUDA GPU"),
    ],
)
def test_gpu_only_settings_are_refused_on_cpu(sections, message):
    with pytest.raises(MedtuneError, match=message):
        validate_machine(config(**sections))


def test_fsdp_launch_is_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(MedtuneError, match="FSDP is not supported"):
        validate_machine(Config())
