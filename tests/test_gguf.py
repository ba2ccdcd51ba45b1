"""GGUF checkpoints, offline: a tiny Llama written to .gguf here loads as a plain serializable model with its own
tokenizer and chat template; `medtune train --model FILE.gguf` runs end to end in chat format (answers end with the
template's end-of-turn token and generation stops there); the run merges to standard safetensors; QLoRA requantizes."""

import json

import pytest
import torch
from tiny_llama import chat_tokenizer, make_llama, use_prompt_format, write_gguf

from medtune import cli, training
from medtune.config import ModelConfig
from medtune.errors import MedtuneError
from medtune.generate import answer, generation_kwargs
from medtune.model import load_base_model, load_tokenizer

pytest.importorskip("gguf")
TEXT = "<|im_start|>user\nWhat causes a fever?<|im_end|>\n<|im_start|>assistant\nAn infection.<|im_end|>"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(reference HF model, its tokenizer, F32 .gguf, Q8_0 .gguf)"""
    d = tmp_path_factory.mktemp("gguf")
    tok = chat_tokenizer()
    model = make_llama(tok)
    return model, tok, write_gguf(model, tok, d / "tiny-f32.gguf"), write_gguf(model, tok, d / "tiny-q8.gguf", "Q8_0")


@pytest.fixture(scope="module")
def chat_run(files, tmp_path_factory, tiny_preset):
    """`medtune train --model tiny-q8.gguf` with the GGUF's own tokenizer and chat template."""
    out = tmp_path_factory.mktemp("gguf-run") / "run"
    argv = ["train", "--config", str(tiny_preset), "--model", str(files[3]), "--output-dir", str(out)]
    for s in (
        "model.tokenizer=null",
        "data.prompt_format=chat",
        "train.max_steps=6",
        "train.eval_steps=3",
        "train.save_steps=100",
        "train.logging_steps=2",
        "train.report_to=none",
    ):
        argv += ["--set", s]
    assert cli.main(argv) == 0
    return out


def test_gguf_loads_as_a_plain_serializable_model(files, tmp_path):
    from transformers import AutoModelForCausalLM

    ref, ref_tok, f32, q8 = files
    tok = load_tokenizer(str(f32))  # the tokenizer comes from the GGUF file
    assert tok("What causes a fever?")["input_ids"] == ref_tok("What causes a fever?")["input_ids"]
    assert tok(TEXT)["input_ids"] == ref_tok(TEXT)["input_ids"]  # turn tokens stay whole
    assert tok.chat_template == ref_tok.chat_template and tok.eos_token == "<|endoftext|>"
    ids = torch.tensor([ref_tok(TEXT)["input_ids"]])
    with torch.no_grad():
        want = ref(ids).logits
    model = load_base_model(ModelConfig(name=str(f32)), tok, quantize=False)
    assert model.config.model_type == "llama" and "quantization_config" not in model.config.to_dict()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, want, atol=1e-5)  # F32 file: exact, q/k permutation undone
        approx = load_base_model(ModelConfig(name=str(q8)), tok, quantize=False)(ids).logits
    assert (approx - want).abs().max() < 0.1 * want.abs().max()  # Q8_0: dequantized, close
    model.save_pretrained(tmp_path / "saved")  # NOTES trap 7: transformers' own GGUF model refuses this
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    with torch.no_grad():
        assert torch.allclose(AutoModelForCausalLM.from_pretrained(tmp_path / "saved")(ids).logits, want, atol=1e-5)


def test_gguf_errors_are_clear(tmp_path, tok):
    with pytest.raises(MedtuneError, match="GGUF file not found"):
        load_base_model(ModelConfig(name=str(tmp_path / "none.gguf")), tok)
    with pytest.raises(MedtuneError, match="GGUF file not found"):
        load_tokenizer(str(tmp_path / "none.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(MedtuneError, match="bad.gguf"):
        load_base_model(ModelConfig(name=str(bad)), tok)
    with pytest.raises(MedtuneError, match="bad.gguf"):
        load_tokenizer(str(bad))


def test_cli_train_on_gguf_in_chat_format(chat_run, load_run):
    out = chat_run
    for f in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "config.yaml", "metrics.json"):
        assert (out / f).is_file(), f
    assert {t.split(".")[-1] for t in json.loads((out / "adapter_config.json").read_text())["target_modules"]} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    model, tok, cfg = load_run(out)
    assert cfg.data.prompt_format == "chat"
    assert cfg.data.chat_prompt == "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"  # saved with the run
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == end  # the run's tokenizer ends answers there
    assert generation_kwargs(cfg.generate, tok)["eos_token_id"] == end

    from medtune.data import encode

    e = encode(
        {"instruction": "Answer this question truthfully", "input": "What is a cold?", "output": "A virus."},
        tok,
        cfg.data,
    )
    prompt = tok(
        "<|im_start|>user\nAnswer this question truthfully\n\nWhat is a cold?<|im_end|>\n<|im_start|>assistant\n",
        add_special_tokens=False,
    )["input_ids"]
    assert e["input_ids"][: len(prompt)] == prompt and e["labels"][: len(prompt)] == [-100] * len(prompt)
    assert e["labels"][len(prompt) :] == e["input_ids"][len(prompt) :] and e["labels"][-1] == end

    # generation stops at the end-of-turn token (and not at the old EOS): force one or the other with a hook
    cfg.generate.max_new_tokens, cfg.generate.greedy = 5, True
    head = model.get_output_embeddings()
    for token, stops in ((end, True), (tok.convert_tokens_to_ids("<|endoftext|>"), False)):
        hook = head.register_forward_hook(lambda m, i, o, t=token: o.index_fill(-1, torch.tensor([t]), 1e4))
        try:
            r = answer(model, tok, "What is a cold?", cfg.data, cfg.generate)
        finally:
            hook.remove()
        assert r["stopped_at_eos"] is stops and r["tokens"] == (0 if stops else 5)


def test_gguf_run_merges_to_standard_safetensors(chat_run, tmp_path, load_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medtune.merge import merge

    out = merge(chat_run, tmp_path / "merged")
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "config.yaml"} <= names
    assert not any(n.endswith(".gguf") or n.startswith("adapter") for n in names)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    model, tok, _ = load_run(chat_run)
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert AutoTokenizer.from_pretrained(out).eos_token == "<|im_end|>"
    ids = torch.tensor([tok(TEXT)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, model(ids).logits, atol=1e-4)


def test_gguf_qlora_requantizes(files, tmp_path, tiny_config, load_run):
    import bitsandbytes as bnb

    q8 = str(files[3])
    tok = load_tokenizer(q8)
    model = load_base_model(ModelConfig(name=q8, quantization="4bit"), tok)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7 and layers[0].weight.quant_type == "nf4"
    out = tmp_path / "qlora"
    metrics = training.run(
        tiny_config(out, "model.tokenizer=null", "model.quantization=4bit", "train.max_steps=4", model__name=q8)
    )
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))
    model, tok, cfg = load_run(out)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    cfg.generate.max_new_tokens = 4
    assert answer(model, tok, "What is a cold?", cfg.data, cfg.generate)["tokens"] <= 4


def test_chat_format_needs_a_chat_template(tok, tmp_path):
    from medtune.config import DataConfig
    from medtune.data import format_prompt, prompt_format
    from medtune.validate import load_config

    with pytest.raises(MedtuneError, match="no chat template"):  # builtin:tiny (like GPT-2) has none
        prompt_format(DataConfig(prompt_format="chat"), tok)
    with pytest.raises(MedtuneError, match="not been rendered"):
        format_prompt({"instruction": "A", "input": "B", "output": "C"}, DataConfig(prompt_format="chat"))
    with pytest.raises(MedtuneError, match="prompt_format"):
        load_config(overrides=["data.prompt_format=chatml"])
    with pytest.raises(MedtuneError, match="chat_prompt must contain"):
        load_config(overrides=["data.chat_prompt=<s>no field</s>"])
    ctok = chat_tokenizer()
    cfg = DataConfig(prompt_format="chat", system_prompt="Be brief.")
    use_prompt_format(cfg, ctok)
    assert cfg.chat_prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{user}")
    assert format_prompt({"instruction": "Answer", "input": "", "output": "x"}, cfg).endswith(
        "user\nAnswer<|im_end|>\n<|im_start|>assistant\n"
    )  # no input: the instruction alone
