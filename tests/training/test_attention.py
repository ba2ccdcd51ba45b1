"""Packed varlen flash attention (medtune.training.attention, CUDA only) computes what padded SDPA computes."""

import pytest
import torch

from medtune.training import attention
from medtune.training.batching import Collator, PackingCollator


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
