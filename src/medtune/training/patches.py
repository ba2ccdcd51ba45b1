"""In-place module swaps that make GPT-2 training cheaper without changing what it computes."""

from __future__ import annotations

import torch


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
    for _name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is NewGELUActivation:
                setattr(module, child_name, Fused())
                n += 1
    return n


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
