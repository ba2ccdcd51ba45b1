"""The planner behind `train.max_memory_gib`: tokens per batch, gradient checkpointing and the loss chunk."""

from __future__ import annotations

from dataclasses import dataclass

from medtune.training.loss import default_chunk

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


@dataclass(frozen=True)
class MemoryPlan:
    """What fits train.max_memory_gib (plan)."""

    chunk: int  # rows of logits per chunk of the loss
    static_gib: float  # weights, LoRA gradients and optimizer state
    checkpointing: bool  # gradient checkpointing needed
    batch_tokens: int  # tokens per batch


def plan(
    config,
    budget_gib: float,
    static_bytes: int,
    max_length: int,
    wanted_tokens: int | None,
    vocab_size: int,
    allow_checkpointing: bool = True,
) -> MemoryPlan:
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
    full = free / (activation_bytes_per_token(config, False) + per_tok_loss)
    checkpointing = allow_checkpointing and full < max(max_length, min(wanted, 8192))
    if checkpointing:
        tokens = int(min(free / (activation_bytes_per_token(config, True) + per_tok_loss), wanted))
    else:
        tokens = int(min(full, wanted))
    if tokens < max_length:
        raise ValueError(
            f"max_memory_gib={budget_gib} leaves room for {max(tokens, 0)} tokens per batch, "
            f"fewer than one example of data.max_length={max_length} (weights and optimizer take "
            f"{static_bytes / GIB:.2f} GiB)"
        )
    tokens = tokens // 64 * 64 if tokens >= 128 else tokens
    return MemoryPlan(chunk, round(static_bytes / GIB, 3), checkpointing, max(tokens, max_length))
