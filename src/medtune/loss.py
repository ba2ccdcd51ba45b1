"""The causal-LM loss over labelled positions only, in chunks: the whole batch's logits never exist at once; and
its curve against step (loss_curve.png). Used by training (with gradients) and by evaluation (answer-token loss and
perplexity).
transformers has no fused linear + cross-entropy for these models, and computing full logits for a 16k-token batch
of GPT-2 takes 3 GiB in bf16; this keeps one chunk (measured in benchmarks/throughput.py)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from medtune.data import IGNORE_INDEX


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
            # GPT-2's 50257 rows would push the GPU's GEMMs onto slow unaligned kernels; a CPU gains nothing from
            # padding, and the padded copy of the weight would cost its size (0.15 GiB for GPT-2 in float32)
            padded = -(-vocab // 64) * 64 if hidden.is_cuda else vocab
            w = weight.to(hidden.dtype)
            if padded != vocab:
                w = torch.cat([w, w.new_zeros(padded - vocab, w.shape[1])])
            ce = _ce_impl(compiled)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = (
                torch.zeros((padded, weight.shape[1]), dtype=torch.float32, device=weight.device) if need_w else None
            )
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for s in range(0, hidden.shape[0], chunk):
                h = hidden[s : s + chunk]
                loss, g = ce(h @ w.t(), targets[s : s + chunk], need_h or need_w, vocab)
                total += loss
                if grad_h is not None:  # need_h
                    torch.mm(g, w, out=grad_h[s : s + chunk])
                if grad_w is not None:  # need_w
                    grad_w.addmm_(g.t().float(), h.float())
                del g  # before the next chunk's logits: one chunk of them alive at a time, not two
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


CHUNK_BYTES_GPU = 1 << 30
# host memory is what a CPU run is short of, and a CPU's matrix products run as fast on 512 rows as on 2,048
CHUNK_BYTES_CPU = 1 << 28


def default_chunk(vocab_size: int, budget_bytes: float = CHUNK_BYTES_GPU) -> int:
    """Rows of logits per chunk so that one chunk's buffers (about 10 bytes per logit) fit `budget_bytes`."""
    rows = int(budget_bytes // (10 * vocab_size))
    return max(256, min(8192, rows // 256 * 256))


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int | None = None, compiled: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
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
    chunk = chunk or default_chunk(weight.shape[0], CHUNK_BYTES_GPU if hidden.is_cuda else CHUNK_BYTES_CPU)
    count = torch.tensor(n, device=hidden.device)
    if not torch.is_grad_enabled():  # evaluation: the same sums, no gradient buffers
        w = weight.to(h.dtype)
        total = sum(
            _ce_chunk(h[s : s + chunk] @ w.t(), t[s : s + chunk], False, w.shape[0])[0] for s in range(0, n, chunk)
        )
        return total, count
    return _LinearCrossEntropy.apply(h, weight, t, chunk, compiled), count


def plot_losses(log_history: list[dict], path: Path) -> None:
    """Training and validation loss against step, as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    val = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), marker="o", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (answer tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
