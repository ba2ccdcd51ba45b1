"""Packed varlen flash attention (medtune.training.attention, CUDA only) computes what padded SDPA computes."""

import pytest
import torch

from medtune.batching import Collator, PackingCollator
from medtune.training import attention


@pytest.mark.skipif(not (torch.cuda.is_available() and attention.varlen_available()), reason="needs CUDA flash varlen")
def test_varlen_flash_matches_padded_sdpa(tok, examples, small_gpt2):
    ex = examples(16)
    ref = small_gpt2(dtype=torch.bfloat16).cuda()
    assert attention.register_varlen()
    packed = small_gpt2(dtype=torch.bfloat16)
    packed.load_state_dict(ref.state_dict())
    packed = packed.cuda()
    packed.set_attn_implementation(attention.VARLEN)
    on_gpu = lambda batch: {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in batch.items()}  # noqa: E731
    padded = on_gpu(Collator(tok.pad_token_id)(ex))
    flat = on_gpu(PackingCollator(tok.pad_token_id, flat=True)(ex))
    a = ref(**padded, use_cache=False).loss
    b = packed(**flat, use_cache=False).loss
    a.backward()
    b.backward()
    assert abs(a.item() - b.item()) < 2e-2 * abs(a.item())
    ga = ref.transformer.h[0].attn.c_attn.weight.grad.float()
    gb = packed.transformer.h[0].attn.c_attn.weight.grad.float()
    assert ((ga - gb).norm() / ga.norm()).item() < 5e-2


def _square_saved(model, batch) -> tuple[float, int]:
    """The loss of a training forward, and how many tensors autograd saved for backward that are a sequence by
    sequence attention matrix ([..., T, T])."""
    t = batch["input_ids"].shape[1]
    square = []

    def pack(x):
        if x.dim() >= 2 and tuple(x.shape[-2:]) == (t, t) and x.is_floating_point():
            square.append(x.shape)
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = model(**batch, use_cache=False).loss
    loss.backward()
    return loss.item(), len(square)


def test_lean_attention_keeps_no_attention_matrix_and_changes_nothing(tok, examples, small_gpt2):
    """CPU training with attention dropout: SDPA's math path keeps [rows, heads, T, T] matrices for backward (1.3 GB
    of distilgpt2's 2.7 GB on a 4,096-token batch); `medtune_lean` keeps none, with the same loss and gradients,
    dropout mask included (the RNG state is replayed for the recomputation)."""
    batch = Collator(tok.pad_token_id)(examples(6))
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "labels", "attention_mask")}
    ref, lean = small_gpt2().train(), small_gpt2().train()
    assert ref.config.attn_pdrop > 0 and attention.use_lean(lean)
    torch.manual_seed(7)
    loss_ref, kept_ref = _square_saved(ref, batch)
    torch.manual_seed(7)
    loss_lean, kept_lean = _square_saved(lean, batch)
    assert kept_ref > 0 and kept_lean == 0
    assert loss_lean == pytest.approx(loss_ref, rel=1e-6)
    for (name, p), q in zip(ref.named_parameters(), lean.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name
