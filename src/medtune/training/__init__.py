"""Training, split by concern: run (the recipe), trainer (the Trainer subclass and its arguments), loss (chunked
cross-entropy), attention (packed varlen attention), patches (GELU, layer norms), memory (max_memory_gib planner),
batching (collators, token-budget batches), distributed (ranks), artifacts (manifest, loss curve)."""
from medtune.training.run import run

__all__ = ["run"]
