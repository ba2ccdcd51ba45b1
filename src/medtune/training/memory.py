"""The planner behind `train.max_memory_gib`: tokens per batch, gradient checkpointing and the loss chunk."""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

from medtune.errors import MedtuneError
from medtune.loss import default_chunk

GIB = 1 << 30

# Saved activations per token and layer, in units of hidden-size elements of the compute dtype (bf16 = 2 bytes),
# for a GPT-2 block with LoRA on c_attn/c_proj/c_fc and the fused GELU, and a fixed STEP_BYTES a step holds beside them
# (workspaces, the optimizer step's temporaries). Fitted by least squares to 12 measured peaks (max_memory_allocated;
# H200, 2026-12-02; gpt2 and gpt2-xl, LoRA and QLoRA, 2-48 GiB): 20.96 per layer kept, 1.01 per checkpointed layer
# (it keeps its input), 0.42 GiB; every row within 0.33 GiB of the fit. Rounded up here. The first constants (24 and
# 1.25, no fixed part) left the larger budgets' peaks at 0.77-0.81 of the budget and the smallest ones above the plan.
ACT_UNITS_FULL = 21.0
ACT_UNITS_CKPT = 1.15
STEP_BYTES = GIB // 2


class DoesNotFit(MedtuneError):
    """train.max_memory_gib cannot hold a batch (a user error like any other; benchmarks tell it apart)."""


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


def _per_layer(config, dtype_bytes: int = 2) -> tuple[int, float, float]:
    """(layers, saved bytes per token of a layer as is, of a checkpointed layer)."""
    layers = getattr(config, "n_layer", None) or config.num_hidden_layers
    hidden = getattr(config, "n_embd", None) or config.hidden_size
    return layers, ACT_UNITS_FULL * hidden * dtype_bytes, ACT_UNITS_CKPT * hidden * dtype_bytes


def activation_bytes_per_token(config, checkpointed: int | bool, dtype_bytes: int = 2) -> float:
    """Saved activations per token with `checkpointed` of the layers checkpointed (True: all of them): each keeps its
    input, and one at a time is recomputed in full during the backward pass."""
    layers, full, ckpt = _per_layer(config, dtype_bytes)
    k = layers if checkpointed is True else int(checkpointed)
    return (layers - k) * full + k * ckpt + (full if k else 0)


@dataclass(frozen=True)
class MemoryPlan:
    """What fits train.max_memory_gib (plan)."""

    chunk: int  # rows of logits per chunk of the loss
    static_gib: float  # weights, LoRA gradients and optimizer state
    checkpointing: bool  # gradient checkpointing needed
    batch_tokens: int  # tokens per batch
    checkpoint_layers: int = 0  # how many layers are checkpointed (the last ones)
    planned_peak_gib: float = 0.0  # what the memory model expects the peak to be


def plan(
    config,
    budget_gib: float,
    static_bytes: int,
    max_length: int,
    wanted_tokens: int | None,
    vocab_size: int,
    allow_checkpointing: bool = True,
) -> MemoryPlan:
    """Pick tokens per batch, how many layers to checkpoint and the loss chunk so that the peak fills the budget.
    The whole wanted batch first, then as few checkpointed layers as let it fit (each costs a recomputed forward);
    with every layer checkpointed, as many tokens as fit. A smaller batch costs more than checkpointing does: a step
    has a large fixed cost (gpt2-xl QLoRA on an H200: about 0.23 s whatever its tokens), so with 24 GiB the old
    choice of 8,192 tokens and 16 of 48 layers checkpointed made 18,797 tokens/s where every layer checkpointed made
    24,165 at 16,384 tokens and 29,147 at 32,768. Raises DoesNotFit when not even one example of `max_length` tokens
    fits."""
    budget = budget_gib * GIB
    wanted = wanted_tokens or 16384
    ce_budget = min(GIB, max(0.05 * budget, 64 * 2**20))
    chunk = default_chunk(vocab_size, ce_budget)
    ce_bytes = 10 * chunk * vocab_size
    margin = 0.08 * budget + 128 * 2**20  # allocator fragmentation, CUDA context excluded (not counted by torch)
    free = budget - static_bytes - ce_bytes - STEP_BYTES - margin
    # the selected hidden states and their gradient for the loss: 2 x tokens x hidden x 2 bytes
    hidden = getattr(config, "n_embd", None) or config.hidden_size
    per_tok = lambda k: activation_bytes_per_token(config, k) + 4 * hidden  # noqa: E731
    layers = _per_layer(config)[0]
    target = max(max_length, wanted)
    k = 0
    if allow_checkpointing and free / per_tok(0) < target:
        k = next((k for k in range(1, layers + 1) if target * per_tok(k) <= free), layers)
    tokens = int(min(free / per_tok(k), wanted))
    if tokens < max_length:
        raise DoesNotFit(
            f"max_memory_gib={budget_gib} leaves room for {max(tokens, 0)} tokens per batch, "
            f"fewer than one example of data.max_length={max_length} (weights and optimizer take "
            f"{static_bytes / GIB:.2f} GiB, the loss and a step's workspaces {(ce_bytes + STEP_BYTES) / GIB:.2f} GiB)"
        )
    tokens = tokens // 64 * 64 if tokens >= 128 else tokens
    tokens = max(tokens, max_length)
    peak = round((static_bytes + ce_bytes + STEP_BYTES + tokens * per_tok(k)) / GIB, 2)
    return MemoryPlan(chunk, round(static_bytes / GIB, 3), k > 0, tokens, k, peak)


def checkpoint_only(layers: list, k: int) -> int:
    """With checkpointing on for every layer (model.enable_checkpointing), keep it for the last k layers alone.
    Returns how many layers are checkpointed (all of them when the layers cannot be switched one by one)."""
    if not all(hasattr(layer, "gradient_checkpointing") for layer in layers):
        return len(layers)
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i >= len(layers) - k
    return k


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
HOST_MMAP_THRESHOLD = 1 << 20


def return_freed_host_memory(threshold: int = HOST_MMAP_THRESHOLD) -> bool:
    """Make glibc give every freed CPU tensor of `threshold` bytes or more back to the system at once. By default glibc
    raises its mmap threshold to the largest block freed so far (up to 32 MiB): after the first step, activations and
    gradients (12-60 MB each for distilgpt2 on a 4,096-token batch) come from the heap, whose freed holes it keeps.
    On distilgpt2 with 4,096-token batches that held 1.9 GB after a step, growing by about 1 GB a step, and added 1 GB
    to the peak. A fixed threshold also turns the dynamic one off. False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1
