import pytest

from medtune.config import ModelConfig
from medtune.errors import MedtuneError
from medtune.model import add_lora, build_random, load_base_model, load_tokenizer


def test_lora_targets_on_tiny_gpt2(tok):
    cfg = ModelConfig(name="random:tiny", tokenizer="builtin:tiny")
    model = add_lora(load_base_model(cfg, tok), cfg)
    names = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    leaves = {n.split(".")[-2] for n in names}
    assert leaves == {"c_attn", "c_proj", "c_fc"}
    assert len(names) == 2 * 4  # 2 layers x (c_attn, attn.c_proj, c_fc, mlp.c_proj)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert model.peft_config["default"].fan_in_fan_out  # GPT-2's Conv1D layers


def test_lora_targets_override(tok):
    cfg = ModelConfig(name="random:tiny", lora_targets=["c_attn"])
    model = add_lora(load_base_model(cfg, tok), cfg)
    assert {n.split(".")[-2] for n, _ in model.named_modules() if n.endswith("lora_A")} == {"c_attn"}
    bad = ModelConfig(name="random:tiny", lora_targets=["q_proj", "v_proj"])  # the tutorial's mistake
    with pytest.raises(MedtuneError, match="q_proj"):
        add_lora(load_base_model(bad, tok), bad)


def test_unknown_models_are_clear_errors(tok, tmp_path):
    with pytest.raises(MedtuneError, match="unknown random model"):
        build_random("random:gpt5", tok)
    with pytest.raises(MedtuneError, match="not found"):
        load_base_model(ModelConfig(name=str(tmp_path / "nothing")), tok)
    with pytest.raises(MedtuneError, match="tokenizer"):
        load_tokenizer("./no/such/tokenizer")


def test_4bit_base_on_cpu(tok):
    import bitsandbytes as bnb

    cfg = ModelConfig(name="random:tiny", quantization="4bit")
    model = load_base_model(cfg, tok)
    q = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert q and q[0].weight.quant_type == "nf4"
    assert all(m.support_avx512bf16_for_cpu is False for m in q)  # NOTES trap 3
