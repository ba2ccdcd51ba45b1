"""GGUF export: write a merged model folder as one .gguf file for llama.cpp, Ollama, LM Studio and the like.

    export_gguf(Path("merged"), Path("medtune-f16.gguf"), dtype="f16")

The input is a plain transformers causal-LM folder (config.json, *.safetensors, tokenizer files), as `medtune merge`
writes it; its config.yaml, when present, adds medtune's prompt template and sampling defaults to the metadata.
Two architectures are supported, laid out the way llama.cpp's own converter (convert_hf_to_gguf.py) lays them out:

  gpt2   GPT2LMHeadModel: the Conv1D weights (stored [in, out]) are transposed to the nn.Linear layout [out, in]
  llama  LlamaForCausalLM (SmolLM2, Llama 3.x, ...): q/k rows are permuted from the rotary halves layout of
         transformers to the interleaved pairs llama.cpp expects (transformers' GGUF loader undoes it)

Weights stream one tensor at a time (a model much larger than memory still converts), into a temporary file
beside the destination that replaces it only once complete: `out_file` is either its old self or a whole GGUF.

dtype: f16 (2-D weights float16, norms and biases float32), q8_0 (2-D weights whose rows are a multiple of 32 in
llama.cpp's 8-bit blocks, the others as f16), f32. The position embedding of GPT-2 stays float32, as in llama.cpp.
"""
from __future__ import annotations

import json
import math
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtune.errors import MedtuneError

DTYPES = ("f16", "q8_0", "f32")
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}  # config.json model_type -> class
F16_MAX = 65504.0
Q8_BLOCK = 32

# Byte-level BPE pre-tokenizers, named as llama.cpp knows them (tokenizer.ggml.pre). llama.cpp picks the split
# regex from this name, so a wrong name silently tokenizes differently: an unrecognized one is refused.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_NAMES = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}

# medtune's own metadata keys (GGUF keys outside llama.cpp's namespaces are kept and ignored by the runtimes)
KEY_PROMPT_FORMAT = "medtune.prompt_format"
KEY_PROMPT_TEMPLATE = "medtune.prompt_template"
KEY_PROMPT_TEMPLATE_NO_INPUT = "medtune.prompt_template_no_input"
KEY_CHAT_PROMPT = "medtune.chat_prompt"
KEY_SYSTEM_PROMPT = "medtune.system_prompt"
KEY_DEFAULT_INSTRUCTION = "medtune.default_instruction"
KEY_VERSION = "medtune.version"


def _require_gguf():
    try:
        import gguf
    except ImportError:
        raise MedtuneError("GGUF export needs the `gguf` package: pip install gguf (or pip install 'medtune[gguf]')"
                           ) from None
    return gguf


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


# ----------------------------------------------------------------------------------------------- reading the folder

def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MedtuneError(f"cannot read {path}: {_first_line(e)}") from None
    if not isinstance(data, dict):
        raise MedtuneError(f"{path} is not a JSON object")
    return data


def _weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():  # a sharded checkpoint: exactly the shards its index names
            names = sorted(set(_read_json(index).get("weight_map", {}).values()))
            missing = [n for n in names if not (model_dir / n).is_file()]
            if missing:
                raise MedtuneError(f"{model_dir}: shard {missing[0]} named in model.safetensors.index.json is missing")
            files = [model_dir / n for n in names]
        return files
    return sorted(model_dir.glob("pytorch_model*.bin"))


class _Weights:
    """The checkpoint's tensors by name, read one at a time (safetensors: lazily, from the memory-mapped file)."""

    def __init__(self, files: list[Path]):
        self._where: dict[str, Path] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._bin: dict = {}
        for f in files:
            if f.suffix == ".safetensors":
                from safetensors import safe_open

                try:
                    with safe_open(str(f), framework="pt") as st:
                        for name in st.keys():
                            self._where[name] = f
                            self._shapes[name] = tuple(st.get_slice(name).get_shape())
                except Exception as e:
                    raise MedtuneError(f"cannot read weights {f}: {_first_line(e)}") from None
            else:
                import torch

                try:
                    state = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
                except Exception as e:
                    raise MedtuneError(f"cannot read weights {f}: {_first_line(e)}") from None
                for name, t in state.items():
                    self._bin[name] = t
                    self._shapes[name] = tuple(t.shape)

    def names(self) -> list[str]:
        return list(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def get(self, name: str) -> np.ndarray:
        """float32 numpy (bf16/f16 checkpoints are widened first: numpy has no bfloat16)."""
        if name in self._bin:
            t = self._bin[name]
        else:
            from safetensors import safe_open

            with safe_open(str(self._where[name]), framework="pt") as st:
                t = st.get_tensor(name)
        return t.float().numpy()


def _read_medtune_config(model_dir: Path) -> dict:
    path = model_dir / "config.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise MedtuneError(f"cannot read {path}: {_first_line(e)}") from None
    return cfg if isinstance(cfg, dict) else {}


def _natural_key(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


# ------------------------------------------------------------------------------------------------- architectures

@dataclass
class _Tensor:
    hf_name: str
    name: str               # GGUF name
    shape: tuple[int, ...]  # as written (after any transposition)
    kind: str               # "weight" (2-D, may be f16/q8_0) or "f32" (kept float32)


def _hparam(config: dict, *keys, default=None):
    for k in keys:
        if config.get(k) is not None:
            return config[k]
    return default


def _rope_settings(config: dict) -> tuple[float, dict]:
    """(rope theta, rope scaling dict or {}) from a config.json of transformers 4 (rope_theta, rope_scaling) or 5
    (rope_parameters)."""
    params = config.get("rope_parameters") or {}
    scaling = dict(config.get("rope_scaling") or {})
    if isinstance(params, dict) and params:
        scaling = {**scaling, **params}
    theta = float(scaling.pop("rope_theta", None) or config.get("rope_theta") or 10000.0)
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    return theta, ({} if rope_type == "default" else {**scaling, "rope_type": rope_type})


def _llama3_rope_factors(head_dim: int, theta: float, s: dict) -> np.ndarray:
    """llama.cpp's rope_freqs tensor for "llama3" rope scaling: per frequency, the factor its wavelength is
    stretched by (1 for short wavelengths, `factor` for long ones, a smooth blend in between)."""
    factor = float(s["factor"])
    low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    old_ctx = float(s.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / freqs
    smooth = np.clip((old_ctx / wavelen - low) / max(high - low, 1e-12), 0.0, 1.0)
    scale = np.where(wavelen < old_ctx / high, 1.0,
                     np.where(wavelen > old_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    return scale.astype(np.float32)


class _Arch:
    """What differs between architectures: hyperparameters, tensor names and layouts."""
    name: str

    def __init__(self, gguf, config: dict, weights: _Weights):
        self.gguf, self.config, self.weights = gguf, config, weights
        self.n_layer = int(self.block_count())
        arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[self.name]
        self.names = gguf.get_tensor_name_map(arch_enum, self.n_layer)
        self.tied = bool(config.get("tie_word_embeddings", True))

    def block_count(self) -> int:
        raise NotImplementedError

    def check(self) -> None:
        """Refuse what llama.cpp's architecture of that name cannot run."""

    def skip(self, hf_name: str) -> bool:
        return False

    def transform(self, hf_name: str, w: np.ndarray) -> np.ndarray:
        return w

    def extra_tensors(self) -> dict[str, np.ndarray]:
        return {}

    def plan(self) -> list[_Tensor]:
        out, seen = [], {}
        for hf_name in sorted(self.weights.names(), key=_natural_key):
            if self.skip(hf_name):
                continue
            if hf_name.endswith("lm_head.weight") and self.tied:
                continue  # llama.cpp reuses token_embd when there is no output.weight
            name = self.names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise MedtuneError(f"unexpected tensor {hf_name!r} for a {self.name} model (not a plain "
                                   f"{ARCHITECTURES[self.name]} checkpoint?)")
            if name in seen:
                raise MedtuneError(f"tensors {seen[name]!r} and {hf_name!r} both map to {name!r}")
            seen[name] = hf_name
            shape = self.weights.shape(hf_name)
            shape = tuple(reversed(shape)) if self.transposed(hf_name) else shape
            out.append(_Tensor(hf_name, name, shape, "weight" if len(shape) == 2 and not self.keep_f32(name)
                               else "f32"))
        if "token_embd.weight" not in seen:
            raise MedtuneError(f"no token embedding among the weights: not a complete {self.name} checkpoint")
        if not self.tied and "output.weight" not in seen:
            raise MedtuneError("config.json says the output head is not tied to the embedding, "
                               "but the weights have no lm_head.weight")
        for name, w in self.extra_tensors().items():
            out.append(_Tensor("", name, tuple(w.shape), "f32"))
        return out

    def transposed(self, hf_name: str) -> bool:
        return False

    def keep_f32(self, gguf_name: str) -> bool:
        return False

    def write_hparams(self, writer) -> None:
        raise NotImplementedError


class _GPT2(_Arch):
    name = "gpt2"
    CONV1D = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")  # stored [in, out]: transpose to [out, in]

    def block_count(self) -> int:
        return _hparam(self.config, "n_layer", "num_hidden_layers")

    def check(self) -> None:
        c = self.config
        if c.get("scale_attn_by_inverse_layer_idx") or c.get("scale_attn_weights") is False:
            raise MedtuneError("this GPT-2 scales attention scores differently (scale_attn_by_inverse_layer_idx / "
                               "scale_attn_weights), which llama.cpp does not support")
        act = c.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu"):
            raise MedtuneError(f"GPT-2 activation {act!r} is not supported by llama.cpp (it uses GELU)")

    def skip(self, hf_name: str) -> bool:  # attention-mask buffers of older checkpoints
        return hf_name.endswith((".attn.bias", ".attn.masked_bias"))

    def transposed(self, hf_name: str) -> bool:
        return hf_name.endswith(self.CONV1D)

    def transform(self, hf_name: str, w: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(w.T) if self.transposed(hf_name) else w

    def keep_f32(self, gguf_name: str) -> bool:
        return gguf_name.startswith("position_embd")

    def write_hparams(self, writer) -> None:
        c = self.config
        n_embd = int(_hparam(c, "n_embd", "hidden_size"))
        writer.add_context_length(int(_hparam(c, "n_positions", "n_ctx", "max_position_embeddings", default=1024)))
        writer.add_embedding_length(n_embd)
        writer.add_feed_forward_length(int(_hparam(c, "n_inner", default=4 * n_embd)))
        writer.add_block_count(self.n_layer)
        writer.add_head_count(int(_hparam(c, "n_head", "num_attention_heads")))
        writer.add_layer_norm_eps(float(c.get("layer_norm_epsilon", 1e-5)))


class _Llama(_Arch):
    name = "llama"

    def __init__(self, gguf, config: dict, weights: _Weights):
        super().__init__(gguf, config, weights)
        c = config
        self.n_head = int(c["num_attention_heads"])
        self.n_kv = int(c.get("num_key_value_heads") or self.n_head)
        self.head_dim = int(c.get("head_dim") or c["hidden_size"] // self.n_head)
        self.theta, self.scaling = _rope_settings(c)
        self.tied = bool(c.get("tie_word_embeddings", False))  # LlamaConfig's default

    def block_count(self) -> int:
        return self.config["num_hidden_layers"]

    def check(self) -> None:
        kind = self.scaling.get("rope_type")
        if kind not in (None, "linear", "llama3"):
            raise MedtuneError(f"rope scaling {kind!r} is not supported by the GGUF export "
                               "(supported: none, linear, llama3)")
        if self.config.get("hidden_act", "silu") != "silu":
            raise MedtuneError(f"Llama activation {self.config.get('hidden_act')!r} is not supported "
                               "(llama.cpp's llama architecture uses SiLU)")

    def skip(self, hf_name: str) -> bool:
        return hf_name.endswith("rotary_emb.inv_freq")

    @staticmethod
    def permute(w: np.ndarray, n_head: int) -> np.ndarray:
        """Within each head, rows [first half | second half] (transformers' rotate_half pairing) become
        interleaved pairs (llama.cpp's rope pairs neighbours): row 2i <- i, row 2i+1 <- i + head_dim/2."""
        rows = w.shape[0]
        return (w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))

    def transform(self, hf_name: str, w: np.ndarray) -> np.ndarray:
        if ".q_proj." in hf_name:
            return np.ascontiguousarray(self.permute(w, self.n_head))
        if ".k_proj." in hf_name:
            return np.ascontiguousarray(self.permute(w, self.n_kv))
        return w

    def extra_tensors(self) -> dict[str, np.ndarray]:
        if self.scaling.get("rope_type") == "llama3":
            return {"rope_freqs.weight": _llama3_rope_factors(self.head_dim, self.theta, self.scaling)}
        return {}

    def write_hparams(self, writer) -> None:
        c = self.config
        writer.add_context_length(int(c.get("max_position_embeddings", 2048)))
        writer.add_embedding_length(int(c["hidden_size"]))
        writer.add_block_count(self.n_layer)
        writer.add_feed_forward_length(int(c["intermediate_size"]))
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv(self.n_kv)
        writer.add_rope_dimension_count(self.head_dim)
        writer.add_rope_freq_base(self.theta)
        writer.add_layer_norm_rms_eps(float(c.get("rms_norm_eps", 1e-6)))
        writer.add_vocab_size(int(c["vocab_size"]))
        if self.head_dim != int(c["hidden_size"]) // self.n_head:
            writer.add_key_length(self.head_dim)
            writer.add_value_length(self.head_dim)
        if self.scaling.get("rope_type") == "linear":
            writer.add_rope_scaling_type(self.gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(self.scaling["factor"]))


_ARCH_CLASSES = {"gpt2": _GPT2, "llama": _Llama}


# ---------------------------------------------------------------------------------------------------- tokenizer

def _has_type(node, kind: str) -> bool:
    if isinstance(node, dict):
        return node.get("type") == kind or any(_has_type(v, kind) for v in node.values())
    if isinstance(node, list):
        return any(_has_type(v, kind) for v in node)
    return False


def _pre_tokenizer_name(pre) -> str | None:
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
        return SPLIT_NAMES.get(pattern)
    return None


@dataclass
class _Vocab:
    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    special: dict[str, int]  # bos/eos/unk/pad -> id
    add_bos: bool
    add_eos: bool
    chat_template: str | list | None


def _read_tokenizer(model_dir: Path, n_vocab: int, gguf) -> _Vocab:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:
        raise MedtuneError(f"cannot load the tokenizer of {model_dir}: {_first_line(e)}") from None
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise MedtuneError(f"the tokenizer of {model_dir} has no fast (tokenizers) version to read the vocabulary from")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not _has_type(spec.get("pre_tokenizer"), "ByteLevel"):
        raise MedtuneError("only byte-level BPE tokenizers (GPT-2, SmolLM2, Llama 3 style) can be exported to GGUF; "
                           "this one is SentencePiece-style or other "
                           f"({model.get('type')}, pre-tokenizer {(spec.get('pre_tokenizer') or {}).get('type')})")
    pre = _pre_tokenizer_name(spec.get("pre_tokenizer"))
    if pre is None:
        raise MedtuneError("the tokenizer's pre-tokenizer is not one llama.cpp knows (GPT-2, SmolLM, Llama 3 or "
                           "Qwen2 split), so the GGUF would tokenize text differently; not exported")
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
    return _Vocab(pre, tokens, types, merges, special, add_bos, add_eos, template or None)


def _write_vocab(writer, v: _Vocab) -> None:
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE, whatever the architecture
    writer.add_tokenizer_pre(v.pre)
    writer.add_token_list(v.tokens)
    writer.add_token_types(v.types)
    writer.add_token_merges(v.merges)
    setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
               "pad": writer.add_pad_token_id}
    for key, token_id in v.special.items():
        setters[key](token_id)
    writer.add_add_bos_token(v.add_bos)
    writer.add_add_eos_token(v.add_eos)
    if v.chat_template:
        writer.add_chat_template(v.chat_template)


# ----------------------------------------------------------------------------------------------------- metadata

def _is_hub_id(name: str) -> bool:
    """A hub id such as gpt2 or org/name, as opposed to a local path or file (kept out of shared metadata)."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", name)) and not re.search(
        r"\.(gguf|jsonl?|csv|parquet|txt|bin|safetensors)$", name, re.IGNORECASE)


def _write_medtune_metadata(writer, cfg: dict, model_dir: Path, arch: str) -> None:
    from medtune import __version__
    from medtune.files import NOTICE

    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    gen = cfg.get("generate") if isinstance(cfg.get("generate"), dict) else {}
    writer.add_string(KEY_VERSION, __version__)
    fmt = data.get("prompt_format") if cfg else None
    for key, value in ((KEY_PROMPT_FORMAT, fmt),
                       (KEY_PROMPT_TEMPLATE, data.get("prompt_template")),
                       (KEY_PROMPT_TEMPLATE_NO_INPUT, data.get("prompt_template_no_input")),
                       (KEY_CHAT_PROMPT, data.get("chat_prompt")),
                       (KEY_SYSTEM_PROMPT, data.get("system_prompt")),
                       (KEY_DEFAULT_INSTRUCTION, data.get("default_instruction"))):
        if isinstance(value, str) and value:
            writer.add_string(key, value)

    base = model.get("name")
    about = f"{model_dir.name}: a {arch} model"
    if cfg:
        about += " fine-tuned with medtune (LoRA adapter merged into the base weights)"
        if isinstance(base, str) and (base.startswith("random:") or _is_hub_id(base)):
            about += f"; base model {base}"
        if isinstance(base, str) and _is_hub_id(base):
            writer.add_base_model_count(1)
            writer.add_base_model_name(0, base)
        source = data.get("source")
        if isinstance(source, str) and (source.startswith("builtin:") or _is_hub_id(source)):
            about += f"; training data {source}"  # local paths stay out of a file meant to be shared
        if fmt == "chat":
            about += ". Prompt: the chat template (tokenizer.chat_template), as in medtune.chat_prompt"
        elif fmt:
            about += ". Prompt: medtune.prompt_template ({instruction}, {input}) or medtune.prompt_template_no_input"
    writer.add_description(f"{about}. {NOTICE}")

    if gen:  # llama.cpp reads these as its sampling defaults
        greedy = bool(gen.get("greedy")) or float(gen.get("temperature", 1.0) or 0.0) <= 0
        writer.add_sampling_temp(0.0 if greedy else float(gen.get("temperature", 0.7)))
        for key, setter, kind in (("top_p", writer.add_sampling_top_p, float),
                                  ("top_k", writer.add_sampling_top_k, int),
                                  ("min_p", writer.add_sampling_min_p, float),
                                  ("repetition_penalty", writer.add_sampling_penalty_repeat, float)):
            if isinstance(gen.get(key), (int, float)) and not isinstance(gen.get(key), bool):
                setter(kind(gen[key]))


# ------------------------------------------------------------------------------------------------------ writing

def _encode(gguf, t: _Tensor, w: np.ndarray, dtype: str) -> tuple[np.ndarray, object]:
    """(data to write, GGML type) of one tensor."""
    Q = gguf.GGMLQuantizationType
    if t.kind == "f32" or dtype == "f32":
        return np.ascontiguousarray(w, dtype=np.float32), Q.F32
    if dtype == "q8_0" and w.shape[-1] % Q8_BLOCK == 0:
        return gguf.quants.quantize(np.ascontiguousarray(w, dtype=np.float32), Q.Q8_0), Q.Q8_0
    big = float(np.abs(w).max()) if w.size else 0.0
    if not big <= F16_MAX:
        raise MedtuneError(f"tensor {t.hf_name} holds values up to {big:.3g}, beyond float16's range; "
                           "export with dtype f32")
    return np.ascontiguousarray(w, dtype=np.float16), Q.F16


def _nbytes(gguf, t: _Tensor, dtype: str) -> tuple[tuple[int, ...], np.dtype, int, object]:
    """(shape, numpy dtype, bytes, GGML type) as _encode will produce them, known before reading the data."""
    Q = gguf.GGMLQuantizationType
    n = int(np.prod(t.shape))
    if t.kind == "f32" or dtype == "f32":
        return t.shape, np.dtype(np.float32), 4 * n, Q.F32
    if dtype == "q8_0" and t.shape[-1] % Q8_BLOCK == 0:
        block, size = gguf.GGML_QUANT_SIZES[Q.Q8_0]
        byte_shape = (*t.shape[:-1], t.shape[-1] // block * size)
        return byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), Q.Q8_0
    return t.shape, np.dtype(np.float16), 2 * n, Q.F16


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_model_dir(model_dir: Path) -> dict:
    if not model_dir.exists():
        raise MedtuneError(f"model folder not found: {model_dir}")
    if not model_dir.is_dir():
        raise MedtuneError(f"{model_dir} is not a folder (expected a merged model folder with config.json)")
    if not (model_dir / "config.json").is_file():
        raise MedtuneError(f"{model_dir} is not a model folder (no config.json); give a merged model folder "
                           "(`medtune merge RUN --out DIR`)")
    return _read_json(model_dir / "config.json")


def export_gguf(model_dir: Path, out_file: Path, dtype: str = "f16", log=print) -> Path:
    """Write the model folder `model_dir` (config.json, safetensors, tokenizer; optionally medtune's config.yaml) as
    the GGUF file `out_file` (f16, q8_0 or f32 weights), atomically. Returns `out_file`."""
    model_dir, out_file = Path(model_dir).expanduser(), Path(out_file).expanduser()
    dtype = str(dtype).lower()
    if dtype not in DTYPES:
        raise MedtuneError(f"unknown GGUF dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    if out_file.is_dir():
        raise MedtuneError(f"{out_file} is a folder; give the path of the .gguf file to write")
    config = _check_model_dir(model_dir)
    model_type = config.get("model_type")
    if model_type not in _ARCH_CLASSES:
        supported = ", ".join(f"{k} ({v})" for k, v in ARCHITECTURES.items())
        raise MedtuneError(f"cannot export architecture {model_type or config.get('architectures')!r} to GGUF; "
                           f"supported: {supported}")
    files = _weight_files(model_dir)
    if not files:
        raise MedtuneError(f"{model_dir} has no weights (*.safetensors)")
    gguf = _require_gguf()

    weights = _Weights(files)
    arch = _ARCH_CLASSES[model_type](gguf, config, weights)
    arch.check()
    plan = arch.plan()
    n_vocab = weights.shape(next(t.hf_name for t in plan if t.name == "token_embd.weight"))[0]
    vocab = _read_tokenizer(model_dir, n_vocab, gguf)
    medtune_cfg = _read_medtune_config(model_dir)
    n_params = sum(int(np.prod(t.shape)) for t in plan if t.hf_name)
    log(f"gguf: {model_dir} ({arch.name}, {n_params / 1e6:.1f}M parameters, {len(plan)} tensors) -> {out_file} "
        f"({dtype})")

    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch.name)
    try:
        writer.add_name(model_dir.resolve().name)
        writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        arch.write_hparams(writer)
        _write_vocab(writer, vocab)
        _write_medtune_metadata(writer, medtune_cfg, model_dir.resolve(), arch.name)

        extra = arch.extra_tensors()
        for t in plan:
            shape, np_dtype, nbytes, qtype = _nbytes(gguf, t, dtype)
            writer.add_tensor_info(t.name, shape, np_dtype, nbytes, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        counts: dict[str, int] = {}
        for t in plan:  # one tensor in memory at a time
            w = extra[t.name] if not t.hf_name else arch.transform(t.hf_name, weights.get(t.hf_name))
            data, qtype = _encode(gguf, t, w, dtype)
            writer.write_tensor_data(data)
            counts[qtype.name] = counts.get(qtype.name, 0) + 1
            del w, data
        writer.flush()
        for f in writer.fout or ():
            os.fsync(f.fileno())
        writer.close()
        os.replace(tmp, out_file)
    except BaseException:
        writer.close()
        if tmp.exists():
            tmp.unlink()
        raise
    _fsync_dir(out_file.parent)
    size = out_file.stat().st_size
    log(f"gguf: wrote {out_file} ({size / 2**20:.1f} MiB; tensors: "
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ")")
    return out_file


# ------------------------------------------------------------------------------------------------------- Ollama

def read_gguf_metadata(gguf_file: Path, keys=None) -> dict:
    """String/number metadata of a GGUF file (arrays left out), optionally only `keys`."""
    gguf = _require_gguf()
    try:
        reader = gguf.GGUFReader(str(gguf_file))
    except Exception as e:
        raise MedtuneError(f"cannot read GGUF file {gguf_file}: {_first_line(e)}") from None
    out = {}
    for name, field in reader.fields.items():
        if keys is not None and name not in keys:
            continue
        if not field.types or field.types[0] == gguf.GGUFValueType.ARRAY:
            continue
        value = field.contents()
        out[name] = value
    return out


def _go_template_text(text: str) -> str:
    """Literal text for a Go template (Ollama's TEMPLATE): `{{` would open an action."""
    return text.replace("{{", '{{ "{{" }}')


def ollama_modelfile(gguf_file: Path) -> str:
    """An Ollama Modelfile for a GGUF written by export_gguf, prompting exactly as medtune does: the run's prompt
    template (template format: the question goes in {input}, with the run's default instruction) or its rendered
    chat turn (chat format), its stop token and its sampling defaults. Save it beside the file as `Modelfile`."""
    gguf_file = Path(gguf_file)
    meta = read_gguf_metadata(gguf_file)
    mark = "\x01PROMPT\x01"
    fmt = meta.get(KEY_PROMPT_FORMAT)
    template = None
    try:
        if fmt == "chat" and meta.get(KEY_CHAT_PROMPT):
            template = meta[KEY_CHAT_PROMPT].format(user=mark)
        elif meta.get(KEY_PROMPT_TEMPLATE):
            instruction = meta.get(KEY_DEFAULT_INSTRUCTION, "Answer this question truthfully")
            template = meta[KEY_PROMPT_TEMPLATE].format(instruction=instruction, input=mark)
    except (KeyError, IndexError, ValueError) as e:
        raise MedtuneError(f"{gguf_file}: medtune's prompt template in the file cannot be filled in: "
                           f"{_first_line(e)}") from None
    lines = [f"FROM ./{gguf_file.name}"]
    if template is not None:
        body = _go_template_text(template).replace(mark, "{{ .Prompt }}")
        lines.append(f'TEMPLATE """{body}"""')
    tokens = _token_list(gguf_file)
    eos = meta.get("tokenizer.ggml.eos_token_id")
    if tokens is not None and isinstance(eos, int) and 0 <= eos < len(tokens):
        lines.append(f'PARAMETER stop "{tokens[eos]}"')
    for key, param in (("general.sampling.temp", "temperature"), ("general.sampling.top_p", "top_p"),
                       ("general.sampling.top_k", "top_k"), ("general.sampling.min_p", "min_p"),
                       ("general.sampling.penalty_repeat", "repeat_penalty")):
        if key in meta:
            value = meta[key]
            lines.append(f"PARAMETER {param} {round(value, 6) if isinstance(value, float) else value}")
    return "\n".join(lines) + "\n"


def _token_list(gguf_file: Path) -> list[str] | None:
    gguf = _require_gguf()
    field = gguf.GGUFReader(str(gguf_file)).fields.get("tokenizer.ggml.tokens")
    return list(field.contents()) if field is not None else None
