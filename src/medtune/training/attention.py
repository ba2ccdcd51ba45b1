"""Packed attention that keeps examples apart.

Packed batches lay several examples end to end in one row with position ids that restart at 0 for each example.
- CUDA: `medtune_varlen` attention runs PyTorch's variable-length flash attention over the examples' boundaries
  (`cu_seq_lens_q`, from the collator): no padding, no attention across examples, cost linear in the examples.
- elsewhere: SDPA with the block-diagonal causal mask that transformers builds from packed position ids
  (attention_mask None, use_cache False), over rows of at most data.max_length tokens.
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
