"""Fewer kernels per decoding step: while the engine decodes (a SlotCache is active), RMSNorm runs as one fused kernel
(the eager form is seven) and GPT-2's gelu_new as one (eager: eight). A CUDA-graph step of a small model is a chain of
tiny kernels, so their count is its time (SmolLM2-135M: 30 layers, about 45 kernels each). Outside the engine the
modules compute exactly as before, so losses do not move."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from medtune.decoding.kvcache import active


def _decoding() -> bool:
    c = active()
    return c is not None and c.mode is not None


def _rms_forward(self, x):
    if not _decoding():
        return type(self).__mro__[1].forward(self, x)
    return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.variance_epsilon)


def _gelu_forward(self, x):
    if not _decoding():
        return type(self).__mro__[1].forward(self, x)
    return F.gelu(x, approximate="tanh")


def _matches(cls, m, fused) -> bool:
    """Does the fused form reproduce this module class on a random input? (Gemma's RMSNorm scales by 1 + weight:
    it does not, and is left alone.)"""
    x = torch.randn(4, 64 if m is None else m.weight.shape[0], dtype=torch.float32,
                    device="cpu" if m is None else m.weight.device)
    with torch.no_grad():
        ref = cls.forward(m, x) if m is not None else cls()(x)
        return torch.allclose(ref.float(), fused(m, x).float(), rtol=1e-3, atol=1e-3)


def fuse_for_decoding(model) -> int:
    """Swap each RMSNorm and gelu_new module that the fused form reproduces for a subclass that uses it while the
    engine decodes. Returns the number of modules swapped."""
    from transformers.activations import NewGELUActivation

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
                checked[cls] = _matches(cls, module, lambda m, x: F.rms_norm(x, (x.shape[-1],), m.weight.to(x.dtype),
                                                                           m.variance_epsilon))
        elif cls is NewGELUActivation:
            forward = _gelu_forward
            checked.setdefault(cls, True)  # the same tanh approximation
        else:
            continue
        if checked[cls]:
            module.__class__ = type(f"Fused{cls.__name__}", (cls,), {"forward": forward})
            n += 1
    return n
