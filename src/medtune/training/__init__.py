"""Training, split by concern: train (the recipe: run, make_trainer), trainer (the Trainer subclass and its arguments),
loss (chunked cross-entropy), attention (packed varlen attention), patches (GELU, layer norms), memory (max_memory_gib
planner),
batching (collators, token-budget batches), distributed (ranks), artifacts (manifest, loss curve)."""

from medtune.training.train import make_trainer, run

__all__ = ["make_trainer", "run"]
