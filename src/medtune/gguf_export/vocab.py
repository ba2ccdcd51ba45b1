"""GGUF export: vocab (see medtune.gguf_export)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from medtune.errors import MedtuneError, first_line
from medtune.gguf_export.common import SPLIT_NAMES

# ---------------------------------------------------------------------------------------------------- tokenizer


def _has_type(node, kind: str) -> bool:
    if isinstance(node, dict):
        return node.get("type") == kind or any(_has_type(v, kind) for v in node.values())
    if isinstance(node, list):
        return any(_has_type(v, kind) for v in node)
    return False


def pre_tokenizer_name(pre) -> str | None:
    """llama.cpp's name for a byte-level BPE pre-tokenizer from tokenizer.json, or None if it is not one it has."""
    if not isinstance(pre, dict):
        return None
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    if pre.get("type") != "Sequence":
        return None
    steps = pre.get("pretokenizers") or []
    kinds = [s.get("type") for s in steps]
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # SmolLM / SmolLM2 / StarCoder: single digits, then GPT-2's split
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        return SPLIT_NAMES.get(pattern) if isinstance(pattern, str) else None
    return None


@dataclass
class Vocab:
    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    special: dict[str, int]  # bos/eos/unk/pad -> id
    add_bos: bool
    add_eos: bool
    chat_template: str | list | None


def read_tokenizer(model_dir: Path, n_vocab: int, gguf) -> Vocab:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:
        raise MedtuneError(f"cannot load the tokenizer of {model_dir}: {first_line(e)}") from None
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise MedtuneError(f"the tokenizer of {model_dir} has no fast (tokenizers) version to read the vocabulary from")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not _has_type(spec.get("pre_tokenizer"), "ByteLevel"):
        raise MedtuneError(
            "only byte-level BPE tokenizers (GPT-2, SmolLM2, Llama 3 style) can be exported to GGUF; "
            "this one is SentencePiece-style or other "
            f"({model.get('type')}, pre-tokenizer {(spec.get('pre_tokenizer') or {}).get('type')})"
        )
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    if pre is None:
        raise MedtuneError(
            "the tokenizer's pre-tokenizer is not one llama.cpp knows (GPT-2, SmolLM, Llama 3 or "
            "Qwen2 split), so the GGUF would tokenize text differently; not exported"
        )
    if len(tok) > n_vocab:
        raise MedtuneError(f"the tokenizer has {len(tok)} tokens but the model embeds only {n_vocab}")

    added = {i: t for i, t in tok.added_tokens_decoder.items()}
    names = tok.convert_ids_to_tokens(list(range(len(tok))))
    tokens, types = [], []
    for i in range(n_vocab):
        t = names[i] if i < len(names) else None
        if t is None:  # ids the model embeds but the tokenizer never produces
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(t)
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]

    special = {}
    for key in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tok, f"{key}_token_id", None)
        if isinstance(token_id, int) and 0 <= token_id < n_vocab:
            special[key] = token_id
    with_special = tok("a", add_special_tokens=True)["input_ids"]
    plain = tok("a", add_special_tokens=False)["input_ids"]
    add_bos = "bos" in special and len(with_special) > len(plain) and with_special[0] == special["bos"]
    add_eos = "eos" in special and len(with_special) > len(plain) and with_special[-1] == special["eos"]
    template = getattr(tok, "chat_template", None)
    if isinstance(template, dict):  # named templates: llama.cpp stores the default one plus the others by name
        template = [{"name": k, "template": v} for k, v in template.items()]
    return Vocab(pre, tokens, types, merges, special, add_bos, add_eos, template or None)


def write_vocab(writer, v: Vocab) -> None:
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE, whatever the architecture
    writer.add_tokenizer_pre(v.pre)
    writer.add_token_list(v.tokens)
    writer.add_token_types(v.types)
    writer.add_token_merges(v.merges)
    setters = {
        "bos": writer.add_bos_token_id,
        "eos": writer.add_eos_token_id,
        "unk": writer.add_unk_token_id,
        "pad": writer.add_pad_token_id,
    }
    for key, token_id in v.special.items():
        setters[key](token_id)
    writer.add_add_bos_token(v.add_bos)
    writer.add_add_eos_token(v.add_eos)
    if v.chat_template:
        writer.add_chat_template(v.chat_template)
