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


def test_rslora_and_dora_reach_peft_and_merge(tok):
    """model.lora_rslora / lora_dora switch peft's variants on (scale alpha/sqrt(r); a magnitude vector per adapted
    layer), and a trained DoRA adapter folds into the weights with the same logits."""
    import torch

    cfg = ModelConfig(
        name="random:tiny", tokenizer="builtin:tiny", lora_rslora=True, lora_dora=True, lora_r=4, lora_alpha=8
    )
    model = add_lora(load_base_model(cfg, tok), cfg)
    pc = model.peft_config["default"]
    assert pc.use_rslora and pc.use_dora
    layer = model.base_model.model.transformer.h[0].attn.c_attn
    assert layer.scaling["default"] == pytest.approx(8 / 4**0.5)
    assert "default" in layer.lora_magnitude_vector
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "magnitude" in n:
                p.add_(0.05)
    model.eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    before = model(ids).logits
    assert torch.allclose(model.merge_and_unload()(ids).logits, before, atol=1e-4)


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


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_gradient_checkpointing_same_gradients_no_deprecation(tok, quantization):
    """model.gradient_checkpointing=true: activation checkpointing is on (through transformers' current name, 4-bit
    too: no deprecation warning) and the LoRA gradients are those without it."""
    import warnings

    import torch

    if quantization == "4bit":
        pytest.importorskip("bitsandbytes")
    grads = {}
    for on in (False, True):
        cfg = ModelConfig(name="random:tiny", quantization=quantization, gradient_checkpointing=on, lora_dropout=0.0)
        torch.manual_seed(0)
        base = load_base_model(cfg, tok)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = add_lora(base, cfg)
        assert not [w for w in caught if "gradient_checkpointing_enable" in str(w.message)]
        assert model.get_base_model().is_activation_checkpointing == on
        model.train()
        ids = torch.tensor([tok("Rest and fluids help a cold.")["input_ids"]])
        model(input_ids=ids, labels=ids).loss.backward()
        grads[on] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads[True].keys() == grads[False].keys() and grads[True]
    for n, g in grads[False].items():
        torch.testing.assert_close(grads[True][n], g, rtol=1e-4, atol=1e-6)
