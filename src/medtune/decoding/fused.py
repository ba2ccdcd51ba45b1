"""Fewer kernels per decoding step: while the engine decodes (a SlotCache is active), RMSNorm runs as one fused kernel
(the eager form is seven), GPT-2's gelu_new as one (eager: eight), rotary embeddings rotate queries and keys
together in five kernels (eager: ten), and on a GPU the query/key/value projections of an attention layer (and the
gate/up projections of a gated MLP) run as one matrix product each. A CUDA-graph step of a small model is a chain of
tiny kernels, so their count is its time (SmolLM2-135M: 30 layers, about 45 kernels each). Outside the engine the
modules compute exactly as before, so losses do not move."""

from __future__ import annotations

import sys
import threading
from typing import Any, ClassVar

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
    return out[:, : q.shape[1]], out[:, q.shape[1] :]


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


class RotaryPatch:
    """Routes the rotary embedding of the engine's model through _rope while the engine steps (entered around each
    step): the model's modeling files whose apply_rotary_pos_emb _rope reproduces (checked on random inputs) get a
    dispatcher that uses _rope only inside the engine's forward passes (this thread's active SlotCache) and the
    original everywhere else, and the original back when the last engine using it leaves. Between steps, and in
    any process where no engine runs, transformers' functions are untouched."""

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _users: ClassVar[dict[str, list]] = {}  # modeling module -> [its original function, engines inside a step]

    def __init__(self, modules: tuple[str, ...]):
        self.modules = modules

    @classmethod
    def of(cls, model) -> "RotaryPatch":
        names = []
        for name in sorted({type(m).__module__ for m in model.modules()}):
            with cls._lock:  # (another engine may be inside a step: its dispatcher is in place)
                entry = cls._users.get(name)
                original = entry[0] if entry else getattr(sys.modules.get(name), "apply_rotary_pos_emb", None)
            if original is not None and _rope_matches(original):
                names.append(name)
        return cls(tuple(names))

    def __enter__(self) -> "RotaryPatch":
        with self._lock:
            for name in self.modules:
                mod: Any = sys.modules[name]
                entry = self._users.setdefault(name, [mod.apply_rotary_pos_emb, 0])
                if entry[1] == 0:
                    mod.apply_rotary_pos_emb = _rope_dispatch(entry[0])
                entry[1] += 1
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            for name in self.modules:
                entry = self._users[name]
                entry[1] -= 1
                if entry[1] == 0:
                    mod: Any = sys.modules[name]
                    mod.apply_rotary_pos_emb = entry[0]
                    del self._users[name]


def _rope_dispatch(original):
    def dispatch(q, k, cos, sin, *args, **kwargs):
        if _decoding() and not args and set(kwargs) <= {"unsqueeze_dim"}:
            return _rope(q, k, cos, sin, **kwargs)
        return original(q, k, cos, sin, *args, **kwargs)

    return dispatch


def _rms_matches(cls, m) -> bool:
    """Does the fused kernel reproduce this RMSNorm class on a random input? (Gemma's scales by 1 + weight: it does
    not, and is left alone.)"""
    x = torch.randn(4, m.weight.shape[0], dtype=torch.float32, device=m.weight.device)
    with torch.no_grad():
        fused = F.rms_norm(x, (x.shape[-1],), m.weight.to(x.dtype), m.variance_epsilon)
        return torch.allclose(cls.forward(m, x).float(), fused.float(), rtol=1e-3, atol=1e-3)


PROJECTION_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # the names of the Llama family


class ProjectionGroup:
    """Sibling projections that read the same input, as one matrix product while decoding: one concatenated copy of
    their weights, and the outputs of the last product, kept for the members that come after the first."""

    def __init__(self, members: list[torch.nn.Linear]):
        with torch.no_grad():
            self.weight = torch.cat([m.weight for m in members])
            self.bias = None if members[0].bias is None else torch.cat([m.bias for m in members])
        self.sizes = [m.out_features for m in members]
        self.input: torch.Tensor | None = None  # the input of the last product, and its outputs, one a member
        self.outputs: tuple[torch.Tensor, ...] = ()

    def first(self, x: torch.Tensor) -> torch.Tensor:
        """The first member's output; the others' are kept for them (keyed by this input)."""
        self.outputs = F.linear(x, self.weight, self.bias).split(self.sizes, dim=-1)
        self.input = x
        return self.outputs[0]

    def output(self, member: int, x: torch.Tensor) -> torch.Tensor | None:
        """A later member's output, when the group's product was computed on this very input."""
        return self.outputs[member] if self.input is x else None


class FusedFirstLinear(torch.nn.Linear):
    """A group's first projection: while decoding, one product for the whole group."""

    group: ProjectionGroup
    member: int  # 0

    def forward(self, x):
        if not _decoding():
            return F.linear(x, self.weight, self.bias)
        return self.group.first(x)


class FusedRestLinear(torch.nn.Linear):
    """A later projection of a group: while decoding, its part of the group's product."""

    group: ProjectionGroup
    member: int

    def forward(self, x):
        if _decoding():
            out = self.group.output(self.member, x)  # computed by the group's first projection
            if out is not None:
                return out
        return F.linear(x, self.weight, self.bias)


_LINEARS = (torch.nn.Linear, FusedFirstLinear, FusedRestLinear)


FUSE_DEVICES = ("cuda",)  # where fuse_projections fuses (the CPU copies weights for little gain; tests add "cpu")


def fuse_projections(model, headroom: float = 0.25) -> int:
    """Give each group of sibling projections that read the same input (PROJECTION_GROUPS; plain nn.Linear, one
    dtype) one concatenated weight used while decoding. The weights are copied (the originals stay for training,
    saving and losses) each time this runs, so an engine built after an adapter was merged decodes with the merged
    weights; it fuses only on FUSE_DEVICES, and on a GPU only while the copies fit in `headroom` of its free memory.
    Returns the number of groups fused."""
    groups = []
    for module in model.modules():
        for names in PROJECTION_GROUPS:
            linears: list[Any] = [getattr(module, n, None) for n in names]
            if (
                all(type(m) in _LINEARS for m in linears)
                and len({(m.in_features, m.weight.dtype, m.weight.device, m.bias is None) for m in linears}) == 1
            ):
                groups.append(linears)
    for group in groups:  # back to plain projections; the old copies are freed
        for m in group:
            if isinstance(m, (FusedFirstLinear, FusedRestLinear)):
                del m.group, m.member
            m.__class__ = torch.nn.Linear
    if not groups:
        return 0
    device = groups[0][0].weight.device
    size = sum(m.weight.numel() * m.weight.element_size() for g in groups for m in g)
    if device.type not in FUSE_DEVICES or (
        device.type == "cuda" and size > headroom * torch.cuda.mem_get_info(device)[0]
    ):
        return 0
    for members in groups:
        shared = ProjectionGroup(members)
        for i, m in enumerate(members):
            m.group, m.member = shared, i
            m.__class__ = FusedRestLinear if i else FusedFirstLinear
    return len(groups)


def fuse_for_decoding(model) -> int:
    """Swap each RMSNorm and gelu_new module that the fused form reproduces for a subclass that uses it while the
    engine decodes, and fuse the sibling projections (fuse_projections; the rotary embeddings: RotaryPatch).
    Returns the number of norm and activation modules swapped."""
    from transformers.activations import NewGELUActivation

    fuse_projections(model)
    checked: dict[type, bool] = {}
    n = 0
    for module in model.modules():
        cls = type(module)
        if cls.__name__.startswith("Fused"):
            continue
        if (
            cls.__name__.endswith("RMSNorm")
            and hasattr(module, "variance_epsilon")
            and getattr(module, "weight", None) is not None
            and module.weight.dim() == 1
            and hasattr(F, "rms_norm")
        ):
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
