"""Beyond GPT-2: a Llama-architecture model from a local folder trains, saves, reloads and generates; LoRA targets are
chosen per architecture, with all linear layers (GPT-2-style Conv1D included) as the fallback."""

import json

import pytest
import torch
from tiny_llama import make_llama, save_hf

from medtune import training
from medtune.config import ModelConfig
from medtune.generate import answer
from medtune.model import add_lora, load_base_model, load_model, lora_targets
from medtune.rundir import open_run

# every linear layer of the decoder blocks, per architecture: what LoRA must cover by default
LLAMA_NAMES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
EXPECTED_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    **{
        t: LLAMA_NAMES
        for t in (
            "llama",
            "mistral",
            "ministral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "olmo",
            "olmo2",
            "smollm3",
            "granite",
            "stablelm",
            "cohere",
            "exaone4",
            "internlm3",
        )
    },
}
LLAMA = set(LLAMA_NAMES)


def lora_leaves(model):
    return {n.split(".")[-2] for n, _ in model.named_modules() if n.endswith("lora_A")}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tok):
    return save_hf(make_llama(tok), tok, tmp_path_factory.mktemp("llama") / "tiny-llama")


def test_llama_targets_and_override(llama_dir, tok):
    cfg = ModelConfig(name=str(llama_dir))
    base = load_base_model(cfg, tok)
    assert base.config.model_type == "llama" and lora_targets(base, cfg) == "all-linear"
    model = add_lora(base, cfg)
    assert lora_leaves(model) == LLAMA
    assert len([n for n, _ in model.named_modules() if n.endswith("lora_A")]) == 2 * 7
    assert not model.peft_config["default"].fan_in_fan_out
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    cfg = ModelConfig(name=str(llama_dir), lora_targets=["q_proj", "v_proj"])  # always overridable
    assert lora_leaves(add_lora(load_base_model(cfg, tok), cfg)) == {"q_proj", "v_proj"}


def test_llama_train_save_reload_generate(llama_dir, tmp_path, tiny_config):
    out = tmp_path / "run"
    metrics = training.run(tiny_config(out, "train.max_steps=6", model__name=str(llama_dir)))
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert {t.split(".")[-1] for t in adapter["target_modules"]} == LLAMA  # "all-linear", resolved by peft
    assert not (out / "base_model").exists()  # a local folder is referenced, not copied

    run = open_run(out)
    model, tok = load_model(run)
    cfg = run.config
    assert cfg.model.name == str(llama_dir)
    ids = torch.tensor([tok("Patient symptoms include fever and cough.")["input_ids"]])
    with torch.no_grad():
        tuned = model(ids).logits
        with model.disable_adapter():
            base = model(ids).logits
        again = load_model(open_run(out))[0](ids).logits
    assert not torch.allclose(tuned, base)  # the adapter changed something
    assert torch.allclose(again, tuned, atol=1e-5)  # and reloads exactly
    cfg.generate.max_new_tokens = 6
    cfg.generate.greedy = True
    r = answer(model, tok, "What causes a fever?", cfg.data, cfg.generate)
    assert 0 < r["tokens"] <= 6 and isinstance(r["answer"], str)


def _lm(config):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def test_fallback_all_linear_covers_conv1d(tok):
    """A non-GPT-2 architecture built on Conv1D (OpenAI GPT): no table entry, so all linear layers, Conv1D included,
    with fan_in_fan_out set for their transposed weights; the output head stays out."""
    from transformers import OpenAIGPTConfig
    from transformers.pytorch_utils import Conv1D

    base = _lm(OpenAIGPTConfig(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2))
    cfg = ModelConfig(name="local-openai-gpt")
    assert base.config.model_type not in EXPECTED_TARGETS and lora_targets(base, cfg) == "all-linear"
    model = add_lora(base, cfg)
    targeted = [m for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    assert lora_leaves(model) == {"c_attn", "c_proj", "c_fc"} and len(targeted) == 2 * 4
    assert all(isinstance(m.base_layer, Conv1D) for m in targeted)
    assert model.peft_config["default"].fan_in_fan_out
    assert "lm_head" not in lora_leaves(model)
    ids = torch.tensor([tok("A cough and a fever.")["input_ids"]])
    with torch.no_grad():
        before = model(ids).logits
        for m in targeted:  # a non-zero adapter must change the output (shapes fit the transposed weights)
            torch.nn.init.normal_(m.lora_B["default"].weight, std=0.1)
        assert not torch.allclose(model(ids).logits, before)
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert all(m.lora_A["default"].weight.grad is not None for m in targeted)


def test_fallback_all_linear_on_plain_linear(tok):
    from transformers import GPTNeoXConfig

    base = _lm(
        GPTNeoXConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )
    model = add_lora(base, ModelConfig(name="local-neox"))
    assert lora_leaves(model) == {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}
    assert not model.peft_config["default"].fan_in_fan_out


@pytest.mark.parametrize("model_type", sorted(t for t in EXPECTED_TARGETS if t != "gpt2"))
def test_all_linear_selects_every_decoder_linear(model_type):
    """peft's "all-linear" (the default) puts LoRA on exactly the linear layers of the blocks, per architecture: the
    names expected here exist, and no linear layer but the output head is left out."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(
        model_type,
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = _lm(config)
    head = model.get_output_embeddings()
    linear = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}
    assert set(EXPECTED_TARGETS[model_type]) == linear
    assert lora_leaves(add_lora(model, ModelConfig(name="x"))) == linear
