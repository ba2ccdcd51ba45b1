"""random:<name> for Llama / Qwen2 shapes: the real models' dimensions, RoPE and tying, checked on the meta device (no
weights allocated), parameter counts from the dimensions and against the published ones, and the tiny Llama shape
trained end to end on the CPU (LoRA on every linear layer of the blocks, the adapter reloads)."""

from __future__ import annotations

import json

import pytest
import torch

from medtune import training
from medtune.config import GPT2_SHAPES, ModelConfig
from medtune.errors import MedtuneError
from medtune.model import add_lora, build_random, load_base_model, load_model
from medtune.rundir import open_run
from medtune.validate import LLAMA_SHAPES, REAL_VOCAB, check_random_name, random_shapes

LLAMA_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

# name: (model_type, hidden, layers, heads, kv heads, intermediate, tied, rope theta, published parameter count)
REAL = {
    "llama-1b": ("llama", 2048, 16, 32, 8, 8192, True, 500000.0, 1_235_814_400),  # Llama-3.2-1B
    "llama-3b": ("llama", 3072, 28, 24, 8, 8192, True, 500000.0, 3_212_749_824),  # Llama-3.2-3B
    "llama-8b": ("llama", 4096, 32, 32, 8, 14336, False, 500000.0, 8_030_261_248),  # Llama-3.1-8B
    "qwen2.5-0.5b": ("qwen2", 896, 24, 14, 2, 4864, True, 1e6, 494_032_768),
    "qwen2.5-1.5b": ("qwen2", 1536, 28, 12, 2, 8960, True, 1e6, 1_543_714_304),
    "qwen2.5-7b": ("qwen2", 3584, 28, 28, 4, 18944, False, 1e6, 7_615_616_512),
}


class VocabOf:
    """A stand-in tokenizer of n tokens (build_random reads len() and the EOS / pad ids)."""

    def __init__(self, n: int):
        self.n, self.eos_token_id, self.pad_token_id = n, 0, 0

    def __len__(self):
        return self.n


def expected_count(model_type, hidden, layers, heads, kv, inter, tied, vocab) -> int:
    """Parameters of a Llama / Qwen2 decoder from its dimensions: attention (Qwen2: q/k/v biases), SwiGLU MLP, two
    RMSNorms a layer, the final norm, the embedding and (untied) the head."""
    head_dim = hidden // heads
    attn = 2 * hidden * hidden + 2 * hidden * kv * head_dim
    if model_type == "qwen2":
        attn += hidden + 2 * kv * head_dim
    per_layer = attn + 3 * hidden * inter + 2 * hidden
    return layers * per_layer + hidden + vocab * hidden * (1 if tied else 2)


def on_meta(name: str, tok):
    with torch.device("meta"):
        return build_random(f"random:{name}", tok)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_dimensions_and_counts(name, tok):
    model_type, hidden, layers, heads, kv, inter, tied, theta, published = REAL[name]
    model = on_meta(name, tok)  # the tiny tokenizer's vocabulary
    c = model.config
    assert c.model_type == model_type and c.vocab_size == len(tok)
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (
        hidden,
        layers,
        heads,
        kv,
    )
    assert c.intermediate_size == inter and c.tie_word_embeddings is tied
    assert (model.lm_head.weight is model.model.embed_tokens.weight) is tied
    rope = c.rope_parameters
    assert rope["rope_theta"] == theta
    if model_type == "llama":  # Llama 3.1 / 3.2 RoPE: the llama3 frequency scaling (factor 8 for 3.1, 32 for 3.2)
        assert rope["rope_type"] == "llama3" and rope["factor"] == (8.0 if name == "llama-8b" else 32.0)
        assert c.max_position_embeddings == 131072
    attn = model.model.layers[0].self_attn
    assert (attn.q_proj.bias is not None) is (model_type == "qwen2") and attn.o_proj.bias is None
    assert attn.k_proj.weight.shape == (kv * hidden // heads, hidden)
    assert all(p.is_meta for p in model.parameters())  # nothing allocated
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_count(model_type, hidden, layers, heads, kv, inter, tied, len(tok))
    real = on_meta(name, VocabOf(REAL_VOCAB[name]))  # with the real tokenizer's vocabulary: the published count
    assert sum(p.numel() for p in real.parameters()) == pytest.approx(published, rel=0.01)


def test_vocab_size_and_dtype_options(tok):
    with torch.device("meta"):
        model = build_random("random:llama-8b", tok, vocab_size=REAL_VOCAB["llama-8b"], dtype=torch.bfloat16)
    assert model.config.vocab_size == 128256 and model.lm_head.weight.dtype == torch.bfloat16
    assert torch.get_default_dtype() == torch.float32  # restored
    assert build_random("random:llama-tiny", tok, vocab_size=10).config.vocab_size == len(tok)  # never fewer


def test_names(tok):
    assert set(GPT2_SHAPES) | set(LLAMA_SHAPES) == set(random_shapes())
    for name in random_shapes():
        check_random_name(f"random:{name}")
    assert type(build_random("random:tiny", tok)).__name__ == "GPT2LMHeadModel"  # the GPT-2 names are unchanged
    with pytest.raises(MedtuneError, match="random:llama-8b"):
        check_random_name("random:llama-70b")


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_llama_tiny_lora_targets(tok, quantization):
    cfg = ModelConfig(name="random:llama-tiny", tokenizer="builtin:tiny", quantization=quantization)
    model = add_lora(load_base_model(cfg, tok), cfg)
    leaves = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    assert {n.split(".")[-2] for n in leaves} == LLAMA_TARGETS and len(leaves) == 2 * 7
    assert not model.peft_config["default"].fan_in_fan_out


def test_llama_tiny_trains_and_reloads(tmp_path, tiny_config):
    out = tmp_path / "run"
    cfg = tiny_config(
        out, "train.max_steps=2", "train.eval_steps=2", "train.save_steps=2", "model.name=random:llama-tiny"
    )
    metrics = training.run(cfg)
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert {t.split(".")[-1] for t in adapter["target_modules"]} == LLAMA_TARGETS
    assert (out / "base_model").exists()  # random weights travel with the run
    model, tok = load_model(open_run(out))
    assert model.get_base_model().config.model_type == "llama"
    ids = torch.tensor([tok("Patient symptoms include fever and cough.")["input_ids"]])
    with torch.no_grad():
        tuned = model(ids).logits
        again = load_model(open_run(out))[0](ids).logits
    assert torch.allclose(again, tuned, atol=1e-5)


def test_throughput_smoke_on_llama_tiny(tmp_path):
    """benchmarks/throughput.py's GPU rows for a Llama shape, at toy sizes on the CPU: medtune's LoRA and QLoRA rows
    and TRL set up for speed on the same saved base (LoRA on the seven projections)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sample = root / "src" / "medtune" / "sample_data" / "medical_qa.jsonl"
    data = tmp_path / "sample.json"
    data.write_text(json.dumps([json.loads(ln) for ln in sample.read_text().splitlines()[:64]]))
    argv = [sys.executable, "benchmarks/throughput.py", "--smoke", "--sizes", "llama-tiny", "--data", str(data)]
    argv += ["--tokenizer", str(root / "src" / "medtune" / "assets" / "tiny_tokenizer"), "--out", str(tmp_path / "t")]
    env = dict(os.environ, PYTHONPATH=str(root / "src"), TMPDIR=str(tmp_path), HF_HUB_OFFLINE="1")
    p = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert [r["recipe"] for r in rows] == ["TRL tuned (lora)", "lora", "qlora"]
    assert all(r["tok_s"] > 0 for r in rows)
