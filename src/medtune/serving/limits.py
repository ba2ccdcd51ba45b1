"""What `medtune serve` allows by default (kept free of heavy imports: the CLI shows these in --help)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Limits:
    max_tokens: int = 512  # largest max_tokens a request may ask for (also capped by the context)
    max_prompt_tokens: int | None = None  # default: the model's context minus one
    max_body_bytes: int = 65536  # larger request bodies get 413
    queue_size: int = 256  # requests queued or running; beyond that 429
    max_batch_size: int = 128  # requests decoded together (1: one at a time)
    # seconds an idle keep-alive connection stays open. uvicorn's 5 s let a busy server close a connection that a
    # client had just reused (256 clients on a 2-core box: 1-2 of 1,024 requests failed with ReadError; 0 at 75 s)
    keep_alive_s: int = 75
    # where the decoding engine runs: "process" (its own, so the HTTP side never holds up a GPU step's Python),
    # "thread" (in the server's process), or "auto": a process on CUDA, a thread on CPU
    worker: str = "auto"
