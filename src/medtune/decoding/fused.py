"""Fewer kernels per decoding step: while the engine decodes (a SlotCache is active), RMSNorm runs as one fused kernel
(the eager form is seven), GPT-2's gelu_new as one (eager: eight), and rotary embeddings rotate queries and keys
together in five kernels (eager: ten). A CUDA-graph step of a small model is a chain of
tiny kernels, so their count is its time (SmolLM2-135M: 30 layers, about 45 kernels each). Outside the engine the
modules compute exactly as before, so losses do not move."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from medtune.decoding.kvcache import active


def _decoding() -> bool:
    c = active()
    return c is not None and c.mode is not None


def _rms_forward(self, x):
    if not _decoding():
        patched: Any = type(self).__mro__[1]
        return patched.forward(self, x)
    return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.variance_epsilon)


def _gelu_forward(self, x):
    if not _decoding():
        patched: Any = type(self).__mro__[1]
        return patched.forward(self, x)
    return F.gelu(x, approximate="tanh")


def _rope(q, k, cos, sin, unsqueeze_dim: int = 1):
    """transformers' apply_rotary_pos_emb (rotate_half form) on queries and keys at once."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    x = torch.cat((q, k), dim=1)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    out = torch.addcmul(x * cos, rotated, sin)
    return out[:, :q.shape[1]], out[:, q.shape[1]:]


def _rope_matches(original) -> bool:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 3, 8, generator=g), torch.randn(2, 2, 3, 8, generator=g)
    cos, sin = torch.randn(2, 3, 8, generator=g), torch.randn(2, 3, 8, generator=g)
    try:
        want = original(q, k, cos, sin)
    except Exception:  # another signature: leave it alone
        return False
    got = _rope(q, k, cos, sin)
    return all(torch.allclose(a, b, atol=1e-5) for a, b in zip(want, got))


def fuse_rope(model) -> int:
    """Route the rotary embedding of each attention module's modeling file through _rope while decoding, where the
    file's apply_rotary_pos_emb computes the same (checked on random inputs). Returns the number of files patched."""
    import sys

    n = 0
    for module in {type(m).__module__ for m in model.modules()}:
        mod: Any = sys.modules.get(module)
        original = getattr(mod, "apply_rotary_pos_emb", None)
        if original is None or getattr(original, "_medtune", False) or not _rope_matches(original):
            continue

        def dispatch(q, k, cos, sin, *args, _original=original, **kwargs):
            if _decoding() and not args and set(kwargs) <= {"unsqueeze_dim"}:
                return _rope(q, k, cos, sin, **kwargs)
            return _original(q, k, cos, sin, *args, **kwargs)

        dispatch._medtune = True  # type: ignore[attr-defined]  # (a function attribute: patched already)
        mod.apply_rotary_pos_emb = dispatch
        n += 1
    return n


def _rms_matches(cls, m) -> bool:
    """Does the fused kernel reproduce this RMSNorm class on a random input? (Gemma's scales by 1 + weight: it does
    not, and is left alone.)"""
    x = torch.randn(4, m.weight.shape[0], dtype=torch.float32, device=m.weight.device)
    with torch.no_grad():
        fused = F.rms_norm(x, (x.shape[-1],), m.weight.to(x.dtype), m.variance_epsilon)
        return torch.allclose(cls.forward(m, x).float(), fused.float(), rtol=1e-3, atol=1e-3)


def fuse_for_decoding(model) -> int:
    """Swap each RMSNorm and gelu_new module that the fused form reproduces for a subclass that uses it while the
    engine decodes, and fuse the rotary embeddings (fuse_rope). Returns the number of modules swapped."""
    from transformers.activations import NewGELUActivation

    fuse_rope(model)
    checked: dict[type, bool] = {}
    n = 0
    for module in model.modules():
        cls = type(module)
        if cls.__name__.startswith("Fused"):
            continue
        if cls.__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon") and \
                getattr(module, "weight", None) is not None and module.weight.dim() == 1 and hasattr(F, "rms_norm"):
            forward = _rms_forward
            if cls not in checked:
                checked[cls] = _rms_matches(cls, module)
        elif cls is NewGELUActivation:
            forward = _gelu_forward
            checked.setdefault(cls, True)  # the same tanh approximation
        else:
            continue
        if checked[cls]:
            module.__class__ = type(f"Fused{cls.__name__}", (cls,), {"forward": forward})
            n += 1
    return n
