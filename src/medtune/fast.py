"""Training speed and memory: packed attention that keeps examples apart, a chunked linear + cross-entropy that
never holds the whole batch's logits, a one-kernel GELU, and the planner behind `train.max_memory_gib`.

Packed batches lay several examples end to end in one row with position ids that restart at 0 for each example.
- CUDA: `medtune_varlen` attention runs PyTorch's variable-length flash attention over the examples' boundaries
  (`cu_seq_lens_q`, from the collator): no padding, no attention across examples, cost linear in the examples.
- elsewhere: SDPA with the block-diagonal causal mask that transformers builds from packed position ids
  (attention_mask None, use_cache False), over rows of at most data.max_length tokens.
"""
from __future__ import annotations

import inspect
import math

import torch

VARLEN = "medtune_varlen"
IGNORE_INDEX = -100


# ---------------------------------------------------------------- packed flash attention (CUDA)

def _varlen_fn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except Exception:  # torch < 2.9: no variable-length attention
        return None, {}
    params = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True} if "is_causal" in params else None
    if causal is None:
        return None, {}
    return varlen_attn, dict(causal=causal, has_scale="scale" in params)


def varlen_available() -> bool:
    return torch.cuda.is_available() and _varlen_fn()[0] is not None


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, **kwargs):
    """transformers attention interface: query/key/value are [batch, heads, tokens, head_dim]; returns
    [batch, tokens, heads, head_dim]. Packed batches carry `cu_seq_lens_q` and `max_length_q`; others
    (generation, unpacked evaluation) fall back to causal SDPA. Attention-probability dropout is not applied."""
    cu = kwargs.get("cu_seq_lens_q")
    fn, info = _varlen_fn()
    head_dim = query.shape[-1]
    scale_ok = info.get("has_scale") or scaling is None or abs(scaling - head_dim ** -0.5) < 1e-9
    if cu is None or fn is None or not query.is_cuda or not scale_ok:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=scaling,
                                      is_causal=attention_mask is None and query.shape[2] > 1)
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


# ---------------------------------------------------------------- GELU

def fuse_gelu(model) -> int:
    """GPT-2's `gelu_new` is eight element-wise kernels whose intermediates are all kept for backward (about six
    copies of the 4x-wide MLP activation per layer). The same tanh approximation in one kernel keeps only its input.
    Returns the number of modules swapped."""
    from transformers.activations import NewGELUActivation

    try:
        from transformers.activations import GELUTanh as Fused
    except ImportError:  # older name
        from transformers.activations import PytorchGELUTanh as Fused
    n = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is NewGELUActivation:
                setattr(module, child_name, Fused())
                n += 1
    return n


# ---------------------------------------------------------------- layer norms under autocast

class KeepDtypeLayerNorm(torch.nn.LayerNorm):
    """A LayerNorm that returns its input's half-precision dtype under autocast. Plain autocast returns float32,
    which makes every normalized activation (and, through 4-bit layers that return their input's dtype, the whole
    residual stream) float32: twice the bytes, extra casts, and float32 inputs to flash attention. The kernel
    computes the statistics in float32 either way."""

    def forward(self, x):
        if x.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                w = None if self.weight is None else self.weight.to(x.dtype)
                b = None if self.bias is None else self.bias.to(x.dtype)
                return torch.nn.functional.layer_norm(x, self.normalized_shape, w, b, self.eps)
        return super().forward(x)


def keep_dtype_norms(model) -> int:
    """Turn every plain torch LayerNorm of the model into a KeepDtypeLayerNorm (same parameters)."""
    n = 0
    for m in model.modules():
        if type(m) is torch.nn.LayerNorm:
            m.__class__ = KeepDtypeLayerNorm
            n += 1
    return n


# ---------------------------------------------------------------- chunked linear + cross-entropy

def _ce_chunk(logits: torch.Tensor, targets: torch.Tensor, need_grad: bool, valid: int):
    """Sum of cross-entropy over a chunk, and (if asked) d(sum)/d(logits) = softmax - onehot, in the logits' dtype.
    Columns from `valid` on are padding (vocabulary rounded up for aligned matrix products): they get probability 0."""
    x = logits.float()
    if valid < x.shape[1]:
        x[:, valid:] = float("-inf")
    lse = torch.logsumexp(x, dim=-1)
    loss = (lse - x.gather(1, targets[:, None]).squeeze(1)).sum()
    if not need_grad:
        return loss, None
    x = x.sub_(lse[:, None]).exp_()
    x[torch.arange(x.shape[0], device=x.device), targets] -= 1.0
    return loss, x.to(logits.dtype)


_compiled_ce = None


def _ce_impl(compiled: bool):
    global _compiled_ce
    if not compiled:
        return _ce_chunk
    if _compiled_ce is None:
        _compiled_ce = torch.compile(_ce_chunk, dynamic=True)
    return _compiled_ce


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T, target_i), computed chunk by chunk. The gradients are computed in the forward
    pass (the chunk's logits are freed right away), so memory holds one chunk of logits instead of the batch's."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, compiled: bool):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(hidden.device.type, enabled=False):
            vocab = weight.shape[0]
            padded = -(-vocab // 64) * 64  # GPT-2's 50257 rows would push the GEMMs onto slow unaligned kernels
            w = weight.to(hidden.dtype)
            if padded != vocab:
                w = torch.cat([w, w.new_zeros(padded - vocab, w.shape[1])])
            ce = _ce_impl(compiled)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros((padded, weight.shape[1]), dtype=torch.float32, device=weight.device) if need_w else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for s in range(0, hidden.shape[0], chunk):
                h = hidden[s:s + chunk]
                loss, g = ce(h @ w.t(), targets[s:s + chunk], need_h or need_w, vocab)
                total += loss
                if need_h:
                    torch.mm(g, w, out=grad_h[s:s + chunk])
                if need_w:
                    grad_w.addmm_(g.t().float(), h.float())
            if grad_w is not None:
                grad_w = grad_w[:vocab]
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None


def default_chunk(vocab_size: int, budget_bytes: float = 1 << 30) -> int:
    """Rows of logits per chunk so that one chunk's buffers (about 10 bytes per logit) fit `budget_bytes`."""
    rows = int(budget_bytes // (10 * vocab_size))
    return max(256, min(8192, rows // 256 * 256))


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int | None = None,
                         compiled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal-LM loss from the last hidden states [B, T, H], the output embedding [V, H] and labels [B, T]
    (shifted here: position t predicts labels[t + 1]; -100 is ignored). Only labelled positions go through
    the output layer. Returns (sum of token losses, number of labelled tokens)."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    h = hidden[:, :-1][keep]
    t = targets[keep]
    n = t.numel()
    if n == 0:
        return hidden.sum() * 0.0, torch.zeros((), dtype=torch.long, device=hidden.device)
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):  # under autocast the final layer norm returns float32
        h = h.to(torch.get_autocast_dtype(dev))
    chunk = chunk or default_chunk(weight.shape[0])
    return _LinearCrossEntropy.apply(h, weight, t, chunk, compiled), torch.tensor(n, device=hidden.device)


def fast_loss_parts(model):
    """(decoder, output embedding weight) of a causal LM (PEFT-wrapped or not) whose logits are a plain linear map
    of the decoder's last hidden state; None where the fast loss does not apply (biased or soft-capped heads)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    decoder = getattr(base, "base_model", None)
    cfg = getattr(base, "config", None)
    if head is None or decoder is None or decoder is base or not isinstance(head, torch.nn.Linear):
        return None
    if head.bias is not None or getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None
    if getattr(cfg, "model_type", "") not in FAST_LOSS_MODELS:
        return None
    return decoder, head.weight


# architectures whose LM head is `lm_head(last_hidden_state)` with nothing in between
FAST_LOSS_MODELS = {"gpt2", "llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "smollm3", "gpt_neox", "opt"}


# ---------------------------------------------------------------- memory planning (train.max_memory_gib)

GIB = 1 << 30

# Saved activations per token and layer, in units of hidden-size elements of the compute dtype (bf16 = 2 bytes),
# for a GPT-2 block with LoRA on c_attn/c_proj/c_fc and the fused GELU. Measured on an H100 (peak minus weights and
# loss buffers, over tokens x layers x hidden x 2 bytes): 22.8 for gpt2, 21.8 for gpt2-xl QLoRA; 1.2 per checkpointed
# layer (gpt2-xl, 4 GiB plan). The constants below add a small margin.
ACT_UNITS_FULL = 24.0
ACT_UNITS_CKPT = 1.25  # with gradient checkpointing each block keeps its input


def param_bytes(model) -> int:
    """Bytes of the model's parameters and buffers as they sit now (4-bit weights count their packed bytes)."""
    n = sum(p.numel() * p.element_size() for p in model.parameters())
    n += sum(b.numel() * b.element_size() for b in model.buffers())
    for m in model.modules():  # bitsandbytes quantization states (absmax etc.)
        qs = getattr(getattr(m, "weight", None), "quant_state", None)
        if qs is not None and getattr(qs, "absmax", None) is not None:
            n += qs.absmax.numel() * qs.absmax.element_size()
    return n


def trainable_state_bytes(model, eight_bit_optimizer: bool) -> int:
    """fp32 gradients plus optimizer state of the trainable (LoRA) parameters."""
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return n * (4 + (2 if eight_bit_optimizer else 8))


def activation_bytes_per_token(config, checkpointing: bool, dtype_bytes: int = 2) -> float:
    layers = getattr(config, "n_layer", None) or config.num_hidden_layers
    hidden = getattr(config, "n_embd", None) or config.hidden_size
    one_layer = ACT_UNITS_FULL * hidden * dtype_bytes
    if checkpointing:  # every block's input, plus one block's activations while it is recomputed
        return layers * ACT_UNITS_CKPT * hidden * dtype_bytes + one_layer
    return layers * one_layer


def plan(config, budget_gib: float, static_bytes: int, max_length: int, wanted_tokens: int | None,
         vocab_size: int, allow_checkpointing: bool = True) -> dict:
    """Pick tokens per batch, gradient checkpointing and the loss chunk so that the peak stays within the budget.
    Prefers no checkpointing with at least `min(wanted, 8192)` tokens per batch; else checkpointing with as many
    tokens as fit (up to `wanted`). Raises ValueError when not even one example of `max_length` tokens fits."""
    budget = budget_gib * GIB
    wanted = wanted_tokens or 16384
    ce_budget = min(GIB, max(0.05 * budget, 64 * 2**20))
    chunk = default_chunk(vocab_size, ce_budget)
    ce_bytes = 10 * chunk * vocab_size
    margin = 0.08 * budget + 128 * 2**20  # allocator fragmentation, CUDA context excluded (not counted by torch)
    free = budget - static_bytes - ce_bytes - margin
    # the selected hidden states and their gradient for the loss: 2 x tokens x hidden x 2 bytes
    hidden = getattr(config, "n_embd", None) or config.hidden_size
    per_tok_loss = 4 * hidden
    out = dict(chunk=chunk, static_gib=round(static_bytes / GIB, 3))
    full = free / (activation_bytes_per_token(config, False) + per_tok_loss)
    if full >= max(max_length, min(wanted, 8192)) or not allow_checkpointing:
        tokens = int(min(full, wanted))
        out.update(checkpointing=False, batch_tokens=tokens)
    else:
        tokens = int(min(free / (activation_bytes_per_token(config, True) + per_tok_loss), wanted))
        out.update(checkpointing=True, batch_tokens=tokens)
    if out["batch_tokens"] < max_length:
        raise ValueError(f"max_memory_gib={budget_gib} leaves room for {max(out['batch_tokens'], 0)} tokens per batch, "
                         f"fewer than one example of data.max_length={max_length} (weights and optimizer take "
                         f"{static_bytes / GIB:.2f} GiB)")
    out["batch_tokens"] = out["batch_tokens"] // 64 * 64 if out["batch_tokens"] >= 128 else out["batch_tokens"]
    out["batch_tokens"] = max(out["batch_tokens"], max_length)
    return out
