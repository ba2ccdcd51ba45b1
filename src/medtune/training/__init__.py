"""Training, split by concern: entry (`run`, the one front door of `medtune train`: lock, signals, the checks that
need no model), train (the recipe: fit, make_trainer), trainer (the Trainer subclass and its arguments), progress (log
lines and bar), attention (packed varlen attention), patches (GELU, layer norms), memory (max_memory_gib planner),
distributed (ranks), artifacts (manifest, the whole run's loss), trackers, compiling. What training shares with
evaluation lives before it: medtune.batching (collators, token-budget batches), medtune.loss (chunked cross-entropy,
the loss curve). Importing this package imports no torch: the recipe loads on demand."""

from medtune.training.entry import run


def __getattr__(name: str):
    if name == "make_trainer":  # the recipe's Trainer (benchmarks, tests): loads the ML stack
        from medtune.training.train import make_trainer

        return make_trainer
    import importlib

    try:  # a submodule by attribute (medtune.training.train, ...), as a package that imported them would have it
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError:
        raise AttributeError(f"module 'medtune.training' has no attribute {name!r}") from None


__all__ = ["make_trainer", "run"]
