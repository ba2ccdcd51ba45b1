"""Tiny Llama-architecture models built offline for the architecture and GGUF tests: random weights, medtune's
own byte-level BPE tokenizer (plus ChatML turn tokens and a chat template), saved as a Hugging Face folder and
written to a .gguf file with the `gguf` package, the way llama.cpp's converter lays a Llama out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TURN_TOKENS = ["<|im_start|>", "<|im_end|>"]


def chat_tokenizer():
    """builtin:tiny plus <|im_start|>/<|im_end|> and a ChatML template; EOS stays <|endoftext|>, so the chat
    template's end-of-turn token differs from EOS (as for Llama 3, Qwen and others)."""
    from medtune.model import load_tokenizer

    tok = load_tokenizer("builtin:tiny")
    tok.add_special_tokens({"additional_special_tokens": TURN_TOKENS})
    tok.chat_template = CHATML
    return tok


def use_prompt_format(cfg, tok) -> None:
    """Store what medtune.data.prompt_format works out, as the training command does (training.train.
    record_data_choices): the rendered chat turn in the data config, the end-of-turn token as the tokenizer's EOS."""
    from medtune.data import prompt_format

    fmt = prompt_format(cfg, tok)
    cfg.chat_prompt = fmt.chat_prompt
    if fmt.eos_token is not None:
        tok.eos_token = fmt.eos_token


def make_llama(tok, seed: int = 0, tie: bool = True, **shape):
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
    )
    dims.update(shape)
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=tie,
        **dims,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        for p in model.parameters():  # larger than the default init, so that different inputs give different outputs
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=0.1)
    return model.eval()


def save_hf(model, tok, folder: Path) -> Path:
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutes q/k rows (rotary halves -> interleaved); transformers undoes it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, tok, path: Path, qtype: str = "F32") -> Path:
    """Write a Llama model and its (byte-level BPE) tokenizer as a GGUF file. qtype: F32, F16 or Q8_0 for the
    2-D weights (norms stay F32)."""
    import gguf

    c = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("medtune-tiny-llama")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    writer.add_rope_freq_base(
        float(c.rope_parameters["rope_theta"])
        if getattr(c, "rope_parameters", None)
        else float(getattr(c, "rope_theta", 10000.0))
    )
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    writer.add_file_type({"F32": 0, "F16": 1, "Q8_0": 7}[qtype])

    # tokenizer: llama.cpp's "gpt2" (byte-level BPE) model, tokens spelled in the byte alphabet, merges "a b"
    spec = json.loads(tok.backend_tokenizer.to_str())
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    tokens = tok.convert_ids_to_tokens(list(range(len(tok))))
    special = set(tok.all_special_ids)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tok.eos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_add_bos_token(False)
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    kinds = {
        "F32": gguf.GGMLQuantizationType.F32,
        "F16": gguf.GGMLQuantizationType.F16,
        "Q8_0": gguf.GGMLQuantizationType.Q8_0,
    }
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue  # llama.cpp writes output.weight only when it is not the embedding matrix
        w = t.detach().float().numpy()
        if name.endswith("q_proj.weight"):
            w = _permute(w, c.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            w = _permute(w, c.num_key_value_heads)
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gname, name
        if w.ndim == 1 or qtype == "F32":
            writer.add_tensor(gname, np.ascontiguousarray(w, dtype=np.float32))
        elif qtype == "F16":
            writer.add_tensor(gname, np.ascontiguousarray(w, dtype=np.float16))
        else:
            q = gguf.quants.quantize(np.ascontiguousarray(w, dtype=np.float32), kinds[qtype])
            writer.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=kinds[qtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
