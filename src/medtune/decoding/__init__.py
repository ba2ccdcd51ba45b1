"""The decoding engine: continuous batching over a slot KV cache (kvcache), per-row seeded sampling on the device
(sampling), the host side of each answer (rows), and the scheduler with CUDA graphs (engine)."""

from medtune.decoding.engine import Engine

__all__ = ["Engine"]
