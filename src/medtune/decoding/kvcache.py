"""A KV cache of fixed slots, and the attention that reads it: what lets a request join or leave a running batch.

Each slot holds one sequence's keys and values, per layer `[slots, kv_heads, max_len, head_dim]`, at the sequence's
own positions (0, 1, ...), so rows of one batch can be at different lengths. medtune registers `medtune_slots` as a
transformers attention implementation. While a `SlotCache` is active, every attention layer writes the new keys and
values into their slots and attends over them: prefill (a prompt) with causal SDPA, decode (one token a row) over the
first `width` positions of each slot with a per-row length mask, in the shapes a CUDA graph can capture. With no
cache active it is plain SDPA (the eval loss, training-style calls). One path for every architecture whose attention
goes through transformers' attention interface (GPT-2, the Llama family, ...): no per-model decoding code.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

SLOTS = "medtune_slots"
_state = threading.local()  # the active SlotCache of this thread (the engine's worker); None: plain SDPA


class SlotCache:
    """Per-layer key/value buffers and what the current forward pass does with them.

    mode "prefill": rows are `slots` (a [B] tensor), prompts right-padded to one width; keys/values go to positions
    0..width-1 of those slots. mode "decode": rows 0..B-1 are slots 0..B-1; row b's new key/value goes to position
    pos[b] and it attends over positions <= pos[b] (the additive `bias`, [B, width])."""

    def __init__(self, slots: int, max_len: int, device, like: "SlotCache | None" = None):
        self.slots, self.max_len, self.device = slots, max_len, device
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        # [2, layers, slots, kv_heads, max_len, head_dim] when every layer has one shape
        self.stacked: torch.Tensor | None = None
        if like is not None:
            self._allocate_like(like)
        self.mode: str | None = None
        self.rows: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self.width = 0

    def layer(self, idx: int, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The buffers of layer idx, allocated on first use in the shape and dtype of its keys (nothing is guessed)."""
        if idx not in self.k:
            shape = (self.slots, key.shape[1], self.max_len, key.shape[3])
            self.k[idx] = torch.zeros(shape, device=self.device, dtype=key.dtype)
            self.v[idx] = torch.zeros(shape, device=self.device, dtype=key.dtype)
        return self.k[idx], self.v[idx]

    def _allocate_like(self, probe: "SlotCache") -> None:
        """Every layer's buffers, in the shapes and dtypes a probe pass found; one tensor when they all agree, so
        that moving a slot is two kernels, not four a layer."""
        shapes = {(t.shape[1], t.shape[3], t.dtype) for t in probe.k.values()}
        if len(shapes) == 1:
            ((heads, dim, dtype),) = shapes
            layers = sorted(probe.k)
            self.stacked = torch.zeros(
                (2, len(layers), self.slots, heads, self.max_len, dim), device=self.device, dtype=dtype
            )
            for i, idx in enumerate(layers):
                self.k[idx], self.v[idx] = self.stacked[0, i], self.stacked[1, i]
            return
        for idx, key in probe.k.items():
            self.layer(idx, key)

    def bytes_per_slot(self) -> int:
        return sum(t[0].numel() * t.element_size() for t in (*self.k.values(), *self.v.values()))

    def move(self, src: torch.Tensor, dst: torch.Tensor, width: int) -> None:
        """Copy slots src -> dst (their first `width` positions): keeps the live rows in slots 0..n-1."""
        if self.stacked is not None:
            part = self.stacked[..., :width, :]
            part.index_copy_(2, dst, part.index_select(2, src))
            return
        for buf in (*self.k.values(), *self.v.values()):
            buf[:, :, :width].index_copy_(0, dst, buf[:, :, :width].index_select(0, src))

    def __enter__(self):
        _state.cache = self
        return self

    def __exit__(self, *exc):
        _state.cache = None
        self.mode = None


def active() -> SlotCache | None:
    return getattr(_state, "cache", None)


def _attend(query, key, value, bias, scaling: float, softcap: float | None):
    """Attention of `query` [B, Hq, T, D] over key/value [B, Hkv, S, D] with an additive bias broadcast to
    [B, Hkv, G, T, S] (G = Hq / Hkv query heads per key head): grouped-query attention without repeating the keys."""
    b, hq, t, d = query.shape
    hkv = key.shape[1]
    q = query.reshape(b, hkv, (hq // hkv) * t, d)
    scores = torch.matmul(q, key.transpose(-1, -2)).view(b, hkv, hq // hkv, t, -1)  # [B, Hkv, G, T, S]
    if softcap:
        scores = torch.tanh(scores.float() * (scaling / softcap)) * softcap + bias
    else:
        scores = torch.add(bias, scores, alpha=scaling)  # one kernel: scale, add the mask, to float32
    probs = scores.softmax(-1).to(value.dtype).view(b, hkv, (hq // hkv) * t, -1)
    return torch.matmul(probs, value).view(b, hq, t, d)


def slot_attention(
    module, query, key, value, attention_mask, scaling: float | None = None, dropout: float = 0.0, **kwargs
):
    """transformers' attention interface: query [B, Hq, T, D], key/value [B, Hkv, T, D] (this step's tokens only);
    returns [B, T, Hq, D]."""
    cache = active()
    if cache is None or cache.mode is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("attention sinks are not supported by medtune's decoding engine")
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    softcap = kwargs.get("softcap")
    window = kwargs.get("sliding_window")
    kbuf, vbuf = cache.layer(module.layer_idx, key)
    b, t = query.shape[0], query.shape[2]
    if cache.mode == "prefill":
        kbuf[cache.rows, :, :t] = key.to(kbuf.dtype)
        vbuf[cache.rows, :, :t] = value.to(vbuf.dtype)
        if softcap or (window and t > window):
            i = torch.arange(t, device=query.device)
            keep = i[None, :] <= i[:, None]
            if window:
                keep &= i[None, :] > i[:, None] - window
            bias = torch.zeros(keep.shape, device=query.device).masked_fill_(~keep, float("-inf"))
            out = _attend(query, key, value, bias, scaling, softcap)
        else:
            out = F.scaled_dot_product_attention(
                query, key, value, is_causal=True, scale=scaling, enable_gqa=query.shape[1] != key.shape[1]
            )
        return out.transpose(1, 2), None
    # decode: one token a row; rows are slots 0..b-1
    assert cache.pos is not None and cache.bias is not None  # set by the engine for a decode pass
    index = cache.pos[:b].view(b, 1, 1, 1).expand(b, key.shape[1], 1, key.shape[3])
    kbuf[:b].scatter_(2, index, key.to(kbuf.dtype))
    vbuf[:b].scatter_(2, index, value.to(vbuf.dtype))
    bias = cache.bias[:, None, None, None, :]  # [B, 1, 1, 1, width]
    if window and cache.width > window:
        col = torch.arange(cache.width, device=query.device)
        bias = bias.masked_fill((col[None, :] <= cache.pos[:b, None] - window)[:, None, None, None, :], float("-inf"))
    out = _attend(query, kbuf[:b, :, : cache.width], vbuf[:b, :, : cache.width], bias, scaling, softcap)
    return out.transpose(1, 2), None


def _mask(*args, **kwargs):
    """No mask while the engine runs (slot_attention builds its own); otherwise the one SDPA would get."""
    cache = active()
    if cache is not None and cache.mode is not None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, **kwargs)


def use_slots(model) -> None:
    """Switch a loaded model (or the base inside a PEFT model) to slot attention."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(SLOTS, slot_attention)
    AttentionMaskInterface.register(SLOTS, _mask)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(SLOTS)
