"""GGUF export: arch (see medtune.gguf_export)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medtune.errors import MedtuneError
from medtune.gguf_export.common import ARCHITECTURES, Weights, natural_key

# ------------------------------------------------------------------------------------------------- architectures


@dataclass
class Tensor:
    hf_name: str
    name: str  # GGUF name
    shape: tuple[int, ...]  # as written (after any transposition)
    kind: str  # "weight" (2-D, may be f16/q8_0) or "f32" (kept float32)


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


def llama3_rope_factors(head_dim: int, theta: float, s: dict) -> np.ndarray:
    """llama.cpp's rope_freqs tensor for "llama3" rope scaling: per frequency, the factor its wavelength is
    stretched by (1 for short wavelengths, `factor` for long ones, a smooth blend in between)."""
    factor = float(s["factor"])
    low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    old_ctx = float(s.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / freqs
    smooth = np.clip((old_ctx / wavelen - low) / max(high - low, 1e-12), 0.0, 1.0)
    scale = np.where(
        wavelen < old_ctx / high, 1.0, np.where(wavelen > old_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth))
    )
    return scale.astype(np.float32)


class _Arch:
    """What differs between architectures: hyperparameters, tensor names and layouts."""

    name: str

    def __init__(self, gguf, config: dict, weights: Weights):
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

    def plan(self) -> list[Tensor]:
        out: list[Tensor] = []
        seen: dict[str, str] = {}  # GGUF name -> the checkpoint's name
        for hf_name in sorted(self.weights.names(), key=natural_key):
            if self.skip(hf_name):
                continue
            if hf_name.endswith("lm_head.weight") and self.tied:
                continue  # llama.cpp reuses token_embd when there is no output.weight
            name = self.names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise MedtuneError(
                    f"unexpected tensor {hf_name!r} for a {self.name} model (not a plain "
                    f"{ARCHITECTURES[self.name]} checkpoint?)"
                )
            if name in seen:
                raise MedtuneError(f"tensors {seen[name]!r} and {hf_name!r} both map to {name!r}")
            seen[name] = hf_name
            shape = self.weights.shape(hf_name)
            shape = tuple(reversed(shape)) if self.transposed(hf_name) else shape
            out.append(Tensor(hf_name, name, shape, "weight" if len(shape) == 2 and not self.keep_f32(name) else "f32"))
        if "token_embd.weight" not in seen:
            raise MedtuneError(f"no token embedding among the weights: not a complete {self.name} checkpoint")
        if not self.tied and "output.weight" not in seen:
            raise MedtuneError(
                "config.json says the output head is not tied to the embedding, but the weights have no lm_head.weight"
            )
        for name, w in self.extra_tensors().items():
            out.append(Tensor("", name, tuple(w.shape), "f32"))
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
            raise MedtuneError(
                "this GPT-2 scales attention scores differently (scale_attn_by_inverse_layer_idx / "
                "scale_attn_weights), which llama.cpp does not support"
            )
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

    def __init__(self, gguf, config: dict, weights: Weights):
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
            raise MedtuneError(
                f"rope scaling {kind!r} is not supported by the GGUF export (supported: none, linear, llama3)"
            )
        if self.config.get("hidden_act", "silu") != "silu":
            raise MedtuneError(
                f"Llama activation {self.config.get('hidden_act')!r} is not supported "
                "(llama.cpp's llama architecture uses SiLU)"
            )

    def skip(self, hf_name: str) -> bool:
        return hf_name.endswith("rotary_emb.inv_freq")

    @staticmethod
    def permute(w: np.ndarray, n_head: int) -> np.ndarray:
        """Within each head, rows [first half | second half] (transformers' rotate_half pairing) become
        interleaved pairs (llama.cpp's rope pairs neighbours): row 2i <- i, row 2i+1 <- i + head_dim/2."""
        rows = w.shape[0]
        return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    def transform(self, hf_name: str, w: np.ndarray) -> np.ndarray:
        if ".q_proj." in hf_name:
            return np.ascontiguousarray(self.permute(w, self.n_head))
        if ".k_proj." in hf_name:
            return np.ascontiguousarray(self.permute(w, self.n_kv))
        return w

    def extra_tensors(self) -> dict[str, np.ndarray]:
        if self.scaling.get("rope_type") == "llama3":
            return {"rope_freqs.weight": llama3_rope_factors(self.head_dim, self.theta, self.scaling)}
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


ARCH_CLASSES = {"gpt2": _GPT2, "llama": _Llama}
