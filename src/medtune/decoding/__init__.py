"""The decoding engine, split by job as in nano-vLLM / vLLM: request.py (Request, Completion: what goes in and comes
out), rows.py (each running answer on the host: its tokens, loop guard, streamed text), scheduler.py (admission,
retirement, buckets), runner.py (the model on the device: prefill and decode passes, CUDA graphs), kvcache.py (slot
KV cache and its attention), sampling.py (per-row seeded sampling on the device), fused.py (fused kernels while
decoding), and engine.py (the coordinator of a step)."""

from medtune.decoding.engine import Engine
from medtune.decoding.request import Completion, Request

__all__ = ["Completion", "Engine", "Request"]
