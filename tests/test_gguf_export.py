"""GGUF export (medtune.gguf_export): tiny GPT-2 and Llama folders, written as .gguf and read back with transformers'
own GGUF loader, compute the logits of the original model; the tokenizer, the chat template and medtune's prompt
template travel in the metadata; bad input is refused with one line and never leaves a partial file.

Tolerances (max |logit difference| over a few sequences, logits of magnitude ~3-5 from random weights):
  f32   1e-5   (exact: proves the layouts, GPT-2's transposed Conv1D and Llama's q/k permutation, round-trip)
  f16   0.02   (float16 rounding of the weights; measured about 0.004)
  q8_0  0.25   (llama.cpp's 8-bit blocks; measured about 0.09)

Checked by hand, not here (it needs a llama.cpp build): llama-cpp-python 0.3.36 loads the same files, tokenizes the
texts below into the same ids, and its logits are within 0.006 (f16) and 0.14 (q8_0) of transformers'.
"""

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_llama import chat_tokenizer, make_llama, use_prompt_format

from medtune import rundir
from medtune.errors import MedtuneError

gguf = pytest.importorskip("gguf")

from medtune.gguf_export import (  # noqa: E402
    LLAMA3_SPLIT,
    QWEN2_SPLIT,
    export_gguf,
    ollama_modelfile,
    read_gguf_metadata,
)
from medtune.gguf_export.arch import llama3_rope_factors  # noqa: E402
from medtune.gguf_export.vocab import pre_tokenizer_name  # noqa: E402

TOL = {"f32": 1e-5, "f16": 0.02, "q8_0": 0.25}
TEXTS = [
    "What causes a fever?",
    "Asthma: wheezing, 3-4 puffs of salbutamol every 20 min.\n\nSee a doctor!",
    "  Les symptômes incluent une toux sèche et de la fièvre (≥ 38 °C).",
]
CHAT = "<|im_start|>user\nWhat is asthma?<|im_end|>\n<|im_start|>assistant\nA lung disease.<|im_end|>"


def tiny_gpt2(tok, seed=0, vocab=None, n_embd=128, n_positions=1024):
    """The shape of medtune's random:tiny, but with GPT-2's 1024 positions by default: transformers' GGUF reader maps
    the file's context length to n_ctx and leaves n_positions at its default 1024 (every released GPT-2 has 1024)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab or len(tok),
        n_layer=2,
        n_head=4,
        n_embd=n_embd,
        n_positions=n_positions,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
        for p in model.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=0.1)
    return model.eval()


def merged_folder(tiny_config, model, tok, folder: Path, *overrides, setup_chat=False) -> Path:
    """A folder like `medtune merge` writes: weights, tokenizer, generation_config.json and medtune's config.yaml."""
    from medtune.config import dump_yaml

    cfg = tiny_config(folder.parent / f"{folder.name}-run", *overrides)
    if setup_chat:  # as training does in chat format: render the chat turn, EOS := the end-of-turn token
        use_prompt_format(cfg.data, tok)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / rundir.CONFIG).write_text(dump_yaml(cfg))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory, tok, tiny_config):
    """name -> (reference model, tokenizer, merged-style folder)"""
    d = tmp_path_factory.mktemp("gguf-export")
    gpt2 = tiny_gpt2(tok)
    chat_tok = chat_tokenizer()
    llama = make_llama(chat_tok)
    untied = make_llama(chat_tokenizer(), seed=1, tie=False)
    return {
        "gpt2": (gpt2, tok, merged_folder(tiny_config, gpt2, tok, d / "gpt2", "generate.top_k=40")),
        "llama": (
            llama,
            chat_tok,
            merged_folder(tiny_config, llama, chat_tok, d / "llama", "data.prompt_format=chat", setup_chat=True),
        ),
        "llama-untied": (
            untied,
            chat_tokenizer(),
            merged_folder(tiny_config, untied, chat_tokenizer(), d / "llama-untied"),
        ),
    }


@pytest.fixture(scope="module")
def exported(models):
    """(name, dtype) -> .gguf file"""
    return {
        (name, dtype): export_gguf(folder, folder.parent / f"{name}-{dtype}.gguf", dtype)
        for name, (_, _, folder) in models.items()
        for dtype in ("f32", "f16", "q8_0")
    }


def load_back(path: Path, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32, **kw).eval()


def max_logit_diff(ref, model, tok, texts) -> float:
    worst = 0.0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok(text)["input_ids"]])
            worst = max(worst, float((model(ids).logits - ref(ids).logits).abs().max()))
    return worst


def fields(path: Path) -> dict:
    return {name: f for name, f in gguf.GGUFReader(str(path)).fields.items()}


def tensor_types(path: Path) -> dict:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


@pytest.mark.parametrize("name", ["gpt2", "llama", "llama-untied"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_logits_match_the_original(models, exported, name, dtype):
    ref, tok, _ = models[name]
    model = load_back(exported[name, dtype])
    texts = TEXTS + ([CHAT] if "llama" in name else [])
    diff = max_logit_diff(ref, model, tok, texts)
    print(f"{name} {dtype}: max |logit diff| {diff:.3g}")
    assert diff <= TOL[dtype], f"{name} {dtype}: {diff}"
    if dtype == "f16":
        assert diff > 0  # really float16, not float32 written under another name


def test_tensor_types_and_layout(models, exported):
    f16, q8 = tensor_types(exported["gpt2", "f16"]), tensor_types(exported["gpt2", "q8_0"])
    assert f16["blk.0.attn_qkv.weight"] == "F16" and f16["token_embd.weight"] == "F16"
    assert f16["blk.0.attn_norm.weight"] == "F32" and f16["blk.0.attn_qkv.bias"] == "F32"
    assert f16["position_embd.weight"] == "F32" == q8["position_embd.weight"]  # as llama.cpp's converter keeps it
    assert q8["blk.1.ffn_up.weight"] == "Q8_0" and q8["token_embd.weight"] == "Q8_0"
    assert q8["output_norm.bias"] == "F32"
    assert "output.weight" not in f16  # tied head: llama.cpp reuses token_embd
    assert set(tensor_types(exported["gpt2", "f32"]).values()) == {"F32"}
    # GPT-2's Conv1D weights are stored [in, out]; GGUF gets the nn.Linear layout [out, in] (ggml lists dims reversed)
    qkv = next(t for t in gguf.GGUFReader(str(exported["gpt2", "f32"])).tensors if t.name == "blk.0.attn_qkv.weight")
    assert [int(x) for x in qkv.shape] == [128, 384]
    c_attn = models["gpt2"][0].transformer.h[0].attn.c_attn.weight.detach().numpy()
    assert np.array_equal(np.asarray(qkv.data), c_attn.T)

    untied = tensor_types(exported["llama-untied", "q8_0"])
    assert untied["output.weight"] == "Q8_0" and untied["blk.0.attn_q.weight"] == "Q8_0"
    assert "output.weight" not in tensor_types(exported["llama", "f16"])
    meta = fields(exported["llama", "f16"])
    assert meta["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16
    assert fields(exported["llama", "q8_0"])["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    assert meta["llama.attention.head_count_kv"].contents() == 2 and meta["llama.rope.dimension_count"].contents() == 16


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_tokenizer_round_trips(models, exported, name):
    from transformers import AutoTokenizer

    _, tok, _ = models[name]
    path = exported[name, "q8_0"]
    back = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in TEXTS + [CHAT]:
        assert back(text)["input_ids"] == tok(text)["input_ids"], text
        assert back.decode(back(text)["input_ids"]) == text
    assert back.eos_token == tok.eos_token and back.chat_template == tok.chat_template
    meta = fields(path)
    assert meta["tokenizer.ggml.model"].contents() == "gpt2" and meta["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert len(meta["tokenizer.ggml.tokens"].contents()) == len(tok)
    assert meta["tokenizer.ggml.add_bos_token"].contents() is False


def test_prompt_and_chat_templates_in_metadata(models, exported):
    from medtune.config import ALPACA_NO_INPUT_TEMPLATE, ALPACA_TEMPLATE
    from medtune.notice import NOTICE

    meta = read_gguf_metadata(exported["gpt2", "f16"])
    assert meta["medtune.prompt_format"] == "template"
    assert meta["medtune.prompt_template"] == ALPACA_TEMPLATE
    assert meta["medtune.prompt_template_no_input"] == ALPACA_NO_INPUT_TEMPLATE
    assert meta["medtune.default_instruction"] == "Answer this question truthfully"
    assert "tokenizer.chat_template" not in meta  # builtin:tiny has none
    assert NOTICE in meta["general.description"] and "random:tiny" in meta["general.description"]
    assert meta["general.sampling.top_k"] == 40 and abs(meta["general.sampling.temp"] - 0.7) < 1e-6
    assert meta["general.name"] == "gpt2"
    assert "general.base_model.count" not in meta  # random:tiny is no model anyone can fetch

    chat_tok = models["llama"][1]
    meta = read_gguf_metadata(exported["llama", "f16"])
    assert meta["tokenizer.chat_template"] == chat_tok.chat_template
    assert meta["medtune.prompt_format"] == "chat"
    assert meta["medtune.chat_prompt"] == "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    assert chat_tok.eos_token == "<|im_end|>"  # training's chat setup; the file's EOS follows
    tokens = fields(exported["llama", "f16"])["tokenizer.ggml.tokens"].contents()
    assert tokens[meta["tokenizer.ggml.eos_token_id"]] == "<|im_end|>"
    types = fields(exported["llama", "f16"])["tokenizer.ggml.token_type"].contents()
    assert types[chat_tok.convert_tokens_to_ids("<|im_start|>")] == gguf.TokenType.CONTROL
    assert types[chat_tok.convert_tokens_to_ids("Ġthe")] == gguf.TokenType.NORMAL


def test_hub_ids_versus_local_paths():
    from medtune.gguf_export.writer import is_hub_id

    assert is_hub_id("gpt2") and is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct")
    for local in ("/data/base", "./merged", "runs/a/b", "base.gguf", "data.jsonl", "random:tiny", "~/m"):
        assert not is_hub_id(local), local


def test_ollama_modelfile(exported):
    text = ollama_modelfile(exported["gpt2", "q8_0"])
    assert text.startswith("FROM ./gpt2-q8_0.gguf\n")
    assert "### Instruction:\nAnswer this question truthfully\n\n### Input:\n{{ .Prompt }}\n\n### Response:\n" in text
    assert 'PARAMETER stop "<|endoftext|>"' in text and "PARAMETER top_k 40" in text
    chat = ollama_modelfile(exported["llama", "f16"])
    assert 'TEMPLATE """<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"""' in chat
    assert 'PARAMETER stop "<|im_end|>"' in chat


def test_folder_without_medtune_config(models, tmp_path):
    """A plain transformers folder (no config.yaml) exports too, without medtune's prompt keys."""
    ref, tok, folder = models["llama-untied"]
    plain = tmp_path / "plain"
    shutil.copytree(folder, plain)
    (plain / rundir.CONFIG).unlink()
    out = export_gguf(plain, tmp_path / "plain.gguf")
    meta = read_gguf_metadata(out)
    assert not any(k.startswith("medtune.prompt") for k in meta) and "general.sampling.temp" not in meta
    assert max_logit_diff(ref, load_back(out), tok, TEXTS) <= TOL["f16"]


def test_sharded_bf16_checkpoint(tmp_path):
    """Several safetensors shards (with their index) in bfloat16 export like one float32 file."""
    tok = chat_tokenizer()
    ref = make_llama(tok, seed=3).to(torch.bfloat16)
    folder = tmp_path / "sharded"
    ref.save_pretrained(folder, max_shard_size="100KB")
    tok.save_pretrained(folder)
    assert len(list(folder.glob("*.safetensors"))) > 1 and (folder / "model.safetensors.index.json").is_file()
    out = export_gguf(folder, tmp_path / "sharded.gguf", "f32")
    from transformers import AutoModelForCausalLM

    # the reference: the folder's bf16 weights, widened (not `ref.float()`: its rotary buffer was rounded to bf16)
    want = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert max_logit_diff(want, load_back(out), tok, TEXTS) <= TOL["f32"]


def test_random_tiny_context_of_512(tmp_path, tok):
    """medtune's random:tiny has 512 positions: the file says so (llama.cpp reads it); transformers' GGUF reader
    ignores GPT-2's context length, so it loads the file only with the folder's config given explicitly."""
    from transformers import AutoConfig

    from medtune.model import build_random

    ref = build_random("random:tiny", tok).eval()
    folder = tmp_path / "tiny"
    ref.save_pretrained(folder)
    tok.save_pretrained(folder)
    out = export_gguf(folder, tmp_path / "tiny.gguf", "f16")
    assert read_gguf_metadata(out)["gpt2.context_length"] == 512
    model = load_back(out, config=AutoConfig.from_pretrained(folder))
    assert max_logit_diff(ref, model, tok, TEXTS) <= TOL["f16"]


def test_load_gguf_reads_the_gpt2_context_length(tmp_path, tok):
    """medtune.gguf_load.load_gguf, unlike transformers' GGUF reader, takes GPT-2's positions from gpt2.context_length:
    a 512-position GPT-2 loads without its folder's config, with logits within the f16 tolerance."""
    from medtune.gguf_load import load_gguf

    ref = tiny_gpt2(tok, seed=3, n_positions=512)
    folder = tmp_path / "gpt2-512"
    ref.save_pretrained(folder)
    tok.save_pretrained(folder)
    out = export_gguf(folder, tmp_path / "gpt2-512.gguf", "f16")
    shutil.rmtree(folder)  # nothing but the .gguf to go by
    model = load_gguf(out)
    assert model.config.n_positions == 512
    assert model.transformer.wpe.weight.shape[0] == 512
    assert max_logit_diff(ref, model.eval(), tok, TEXTS) <= TOL["f16"]


def test_real_gpt2_tokenizer(tmp_path, shared):
    from transformers import AutoTokenizer

    from medtune.model import load_tokenizer

    if not (shared / "gpt2_tokenizer" / "tokenizer.json").is_file():
        pytest.skip("no GPT-2 tokenizer in ../shared/data")
    tok = load_tokenizer(str(shared / "gpt2_tokenizer"))
    ref = tiny_gpt2(tok, vocab=len(tok), n_embd=64)
    folder = tmp_path / "gpt2-vocab"
    ref.save_pretrained(folder)
    tok.save_pretrained(folder)
    out = export_gguf(folder, tmp_path / "gpt2-vocab.gguf", "q8_0")
    meta = fields(out)
    assert len(meta["tokenizer.ggml.tokens"].contents()) == 50257
    assert len(meta["tokenizer.ggml.merges"].contents()) == 50000
    back = AutoTokenizer.from_pretrained(str(out.parent), gguf_file=out.name)
    for text in TEXTS + [
        "Hypertension (HTN) affects ~1.28 billion adults; 46% are unaware. <|endoftext|>",
        "tab\tand\r\nnewlines\n\n\n   spaces   ",
        "emoji 🩺 and 中文 text",
    ]:
        assert back(text)["input_ids"] == tok(text)["input_ids"], text


# --------------------------------------------------------------------------------------------- pre-tokenizers


def byte_level(use_regex=True):
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def split(pattern):
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}


def test_pre_tokenizer_names():
    assert pre_tokenizer_name(byte_level()) == "gpt-2"
    assert (
        pre_tokenizer_name(
            {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level()]}
        )
        == "smollm"
    )
    assert (
        pre_tokenizer_name({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(False)]})
        == "llama-bpe"
    )
    assert pre_tokenizer_name({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(False)]}) == "qwen2"
    assert pre_tokenizer_name({"type": "Sequence", "pretokenizers": [split(r"\s+"), byte_level(False)]}) is None
    assert pre_tokenizer_name(byte_level(False)) is None
    assert pre_tokenizer_name({"type": "Metaspace", "replacement": "\u2581"}) is None


def with_pre_tokenizer(tok, pre: dict):
    from tokenizers import Tokenizer

    spec = json.loads(tok.backend_tokenizer.to_str())
    spec["pre_tokenizer"] = pre
    tok._tokenizer = Tokenizer.from_str(json.dumps(spec))
    return tok


def test_llama3_style_tokenizer(tmp_path):
    """A Llama-3-style split (named llama-bpe for llama.cpp) survives the trip: transformers applies it too."""
    from transformers import AutoTokenizer

    tok = with_pre_tokenizer(
        chat_tokenizer(), {"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(False)]}
    )
    ref = make_llama(tok, seed=4)
    folder = tmp_path / "llama3-tok"
    ref.save_pretrained(folder)
    tok.save_pretrained(folder)
    out = export_gguf(folder, tmp_path / "l3.gguf")
    assert read_gguf_metadata(out)["tokenizer.ggml.pre"] == "llama-bpe"
    back = AutoTokenizer.from_pretrained(str(out.parent), gguf_file=out.name)
    text = "Take 1000 mg, twice daily!!\n\nOK?"
    assert back(text)["input_ids"] == tok(text)["input_ids"] != chat_tokenizer()(text)["input_ids"]


def test_unknown_pre_tokenizer_is_refused(tmp_path):
    tok = with_pre_tokenizer(
        chat_tokenizer(), {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, byte_level()]}
    )
    folder = tmp_path / "odd-tok"
    make_llama(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    with pytest.raises(MedtuneError, match="pre-tokenizer is not one llama.cpp knows"):
        export_gguf(folder, tmp_path / "odd.gguf")
    assert not (tmp_path / "odd.gguf").exists()


def test_llama3_rope_scaling(tmp_path):
    """Llama 3.x rope scaling becomes llama.cpp's rope_freqs tensor, with the factors transformers applies."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
        "rope_theta": 500000.0,
    }
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=512, rope_parameters=scaling)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 1.0 / 500000.0 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    want = (plain / scaled.double()).numpy()
    got = llama3_rope_factors(16, 500000.0, scaling)
    assert np.isclose(want.min(), 1.0) and np.isclose(want.max(), 8.0)
    assert ((want > 1.01) & (want < 7.99)).any()  # the blended band is covered too
    assert np.allclose(got, want, rtol=1e-5)

    tok = chat_tokenizer()
    model = make_llama(tok, rope_parameters=scaling)
    folder = tmp_path / "llama3"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    out = export_gguf(folder, tmp_path / "llama3.gguf", "q8_0")
    freqs = next(t for t in gguf.GGUFReader(str(out)).tensors if t.name == "rope_freqs.weight")
    assert freqs.tensor_type.name == "F32" and np.allclose(np.asarray(freqs.data), want, rtol=1e-5)
    assert read_gguf_metadata(out)["llama.rope.freq_base"] == 500000.0


# ----------------------------------------------------------------------------------------------------- refusals


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_errors_are_one_clear_line(models, tmp_path, monkeypatch):
    folder = models["gpt2"][2]
    out = tmp_path / "x.gguf"
    cases = [
        (dict(model_dir=tmp_path / "nope"), "model folder not found"),
        (dict(model_dir=folder / "config.json"), "is not a folder"),
        (dict(model_dir=tmp_path), "not a model folder \\(no config.json\\)"),
        (dict(model_dir=folder, dtype="q4_k"), "unknown GGUF dtype 'q4_k'; choose one of: f16, q8_0, f32"),
        (dict(model_dir=folder, out_file=tmp_path), "is a folder"),
    ]
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    cases.append(
        (
            dict(model_dir=bert),
            "cannot export architecture 'bert' to GGUF; supported: gpt2 "
            "\\(GPT2LMHeadModel\\), llama \\(LlamaForCausalLM\\)",
        )
    )
    empty = tmp_path / "no-weights"
    empty.mkdir()
    shutil.copy(folder / "config.json", empty / "config.json")
    cases.append((dict(model_dir=empty), "has no weights"))
    for kwargs, message in cases:
        kwargs = {"out_file": out, **kwargs}
        with pytest.raises(MedtuneError, match=message) as e:
            export_gguf(**kwargs)
        assert "\n" not in str(e.value)
        assert not out.exists() and no_temp_files(tmp_path)

    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed
    with pytest.raises(MedtuneError, match="needs the `gguf` package: pip install gguf"):
        export_gguf(folder, out)


def test_sentencepiece_style_tokenizer_is_refused(tmp_path):
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers import models as tk_models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "\u2581a": 3, "a": 4, "\u2581": 5}
    backend = Tokenizer(tk_models.BPE(vocab=vocab, merges=[("\u2581", "a")], unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    folder = tmp_path / "sp"
    make_llama(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    with pytest.raises(MedtuneError, match="only byte-level BPE tokenizers"):
        export_gguf(folder, tmp_path / "sp.gguf")


def test_failure_midway_keeps_the_old_file(models, tmp_path, monkeypatch):
    """A crash while writing tensors (or a float16 overflow) leaves the previous file as it was and no temp file."""
    folder = models["gpt2"][2]
    out = export_gguf(folder, tmp_path / "model.gguf", "f16")
    before = out.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    with monkeypatch.context() as m:
        m.setattr(gguf.quants, "quantize", boom)
        with pytest.raises(RuntimeError, match="disk on fire"):
            export_gguf(folder, out, "q8_0")
    assert out.read_bytes() == before and no_temp_files(tmp_path)

    big = tmp_path / "big"
    shutil.copytree(folder, big)
    huge = tiny_gpt2(models["gpt2"][1])
    with torch.no_grad():
        huge.transformer.h[1].mlp.c_fc.weight[0, 0] = 1e6
    huge.save_pretrained(big)
    with pytest.raises(MedtuneError, match="beyond float16's range; export with dtype f32"):
        export_gguf(big, out, "f16")
    assert out.read_bytes() == before and no_temp_files(tmp_path)
    assert export_gguf(big, tmp_path / "big.gguf", "f32").is_file()  # f32 holds it


def test_file_permissions_and_log(models, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="medtune.gguf_export")
    out = export_gguf(models["llama"][2], tmp_path / "sub" / "m.gguf", "q8_0")
    lines = [r.getMessage() for r in caplog.records if r.name == "medtune.gguf_export"]
    assert out == tmp_path / "sub" / "m.gguf" and out.stat().st_mode & 0o044  # readable like any new file
    assert "llama" in lines[0] and "q8_0" in lines[0] and "Q8_0" in lines[-1]


def test_pytorch_bin_checkpoint(models, tmp_path):
    """An older folder with pytorch_model.bin instead of safetensors exports too."""
    ref, tok, folder = models["gpt2"]
    old = tmp_path / "bin"
    shutil.copytree(folder, old)
    (old / "model.safetensors").unlink()
    torch.save({k: v.clone() for k, v in ref.state_dict().items()}, old / "pytorch_model.bin")
    out = export_gguf(old, tmp_path / "bin.gguf", "f32")
    assert max_logit_diff(ref, load_back(out), tok, TEXTS) <= TOL["f32"]
