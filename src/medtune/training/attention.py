"""Packed attention that keeps examples apart.

Packed batches lay several examples end to end in one row with position ids that restart at 0 for each example.
- CUDA: `medtune_varlen` attention runs PyTorch's variable-length flash attention over the examples' boundaries
  (`cu_seq_lens_q`, from the collator): no padding, no attention across examples, cost linear in the examples.
- elsewhere: SDPA with the block-diagonal causal mask that transformers builds from packed position ids
  (attention_mask None, use_cache False), over rows of at most data.max_length tokens.
- CPU training with attention-probability dropout (GPT-2: attn_pdrop 0.1): `medtune_lean` attention. PyTorch's
  CPU flash kernel takes no dropout, so SDPA falls back to its math path, which keeps four float32 copies of the
  [rows, heads, tokens, tokens] attention matrix per layer for backward (the scores' softmax, the dropout noise, the
  dropped-out probabilities): 1.3 GB of the 2.7 GB saved by distilgpt2 on a 4,096-token batch of 256-token rows.
  `medtune_lean` runs the same SDPA call under activation checkpointing (the RNG state kept, so the same dropout
  mask is drawn again): it keeps the call's inputs and recomputes one layer's attention during backward.
transformers' own flash-attention-2 path does the same on CUDA but needs the flash-attn package; this needs only torch.
"""

from __future__ import annotations

import inspect

import torch

VARLEN = "medtune_varlen"


def _varlen_fn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except Exception:  # torch < 2.9: no variable-length attention
        return None, {}
    params = inspect.signature(varlen_attn).parameters
    causal = (
        {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True} if "is_causal" in params else None
    )
    if causal is None:
        return None, {}
    return varlen_attn, dict(causal=causal, has_scale="scale" in params)


def varlen_available() -> bool:
    return torch.cuda.is_available() and _varlen_fn()[0] is not None


def varlen_attention_forward(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None, **kwargs
):
    """transformers attention interface: query/key/value are [batch, heads, tokens, head_dim]; returns
    [batch, tokens, heads, head_dim]. Packed batches carry `cu_seq_lens_q` and `max_length_q`; others
    (generation, unpacked evaluation) fall back to causal SDPA. Attention-probability dropout is not applied."""
    cu = kwargs.get("cu_seq_lens_q")
    fn, info = _varlen_fn()
    head_dim = query.shape[-1]
    scale_ok = info.get("has_scale") or scaling is None or abs(scaling - head_dim**-0.5) < 1e-9
    if cu is None or fn is None or not query.is_cuda or not scale_ok:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0,
            scaling=scaling,
            is_causal=attention_mask is None and query.shape[2] > 1,
        )
    b, h, t, d = query.shape
    if key.shape[1] != h:  # grouped-query attention (Llama, Qwen): each K/V head serves h / kv query heads
        key, value = (x.repeat_interleave(h // x.shape[1], dim=1) for x in (key, value))
    q, k, v = (x.transpose(1, 2).reshape(b * t, x.shape[1], d) for x in (query, key, value))
    extra = dict(info["causal"])
    if info["has_scale"]:
        extra["scale"] = scaling
    if q.dtype not in (torch.float16, torch.bfloat16):  # flash kernels take half precision only
        dt = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16
        q, k, v = q.to(dt), k.to(dt), v.to(dt)
    mx = int(kwargs["max_length_q"])
    out = fn(q, k, v, cu, kwargs.get("cu_seq_lens_k", cu), mx, int(kwargs.get("max_length_k", mx)), **extra)
    return out.view(b, t, h, d).to(query.dtype), None


LEAN = "medtune_lean"


def lean_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, **kwargs):
    """transformers attention interface: SDPA, under activation checkpointing where it would keep the attention
    matrix for backward (training with dropout, not on CUDA): the same outputs and gradients, dropout included."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if dropout > 0 and torch.is_grad_enabled() and not query.is_cuda:
        from torch.utils.checkpoint import checkpoint

        return checkpoint(
            sdpa_attention_forward,
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            use_reentrant=False,
            preserve_rng_state=True,
            **kwargs,
        )
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, **kwargs)


def use_lean(model) -> bool:
    """Switch a loaded SDPA model (or the base inside a PEFT model) to `medtune_lean` attention (same masks as SDPA);
    False where it does not apply (CUDA, another attention, a model that cannot switch)."""
    if torch.cuda.is_available():
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) != "sdpa":
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(LEAN, lean_attention_forward)
    AttentionMaskInterface.register(LEAN, sdpa_mask)
    try:
        base.set_attn_implementation(LEAN)
    except Exception:
        return False
    return base.config._attn_implementation == LEAN


def _no_mask(*args, **kwargs):
    return None  # varlen attention needs no mask: boundaries come from cu_seq_lens, causality from the kernel


def register_varlen() -> bool:
    """Make `medtune_varlen` a valid attn_implementation for transformers models. False if not on CUDA."""
    if not varlen_available():
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN, _no_mask)
    return True


def use_varlen(model) -> bool:
    """Switch a loaded model (or the base inside a PEFT model) to packed flash attention; False if unavailable."""
    if not register_varlen():
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        base.set_attn_implementation(VARLEN)
    except Exception:
        return False
    return base.config._attn_implementation == VARLEN
