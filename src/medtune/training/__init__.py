"""Training, split by concern: entry (`run`, the one front door of `medtune train`: lock, signals, the checks that
need no model), train (the recipe: fit, make_trainer), trainer (the Trainer subclass and its arguments), progress (log
lines and bar), loss (chunked cross-entropy), attention (packed varlen attention), patches (GELU, layer norms),
memory (max_memory_gib planner), batching (collators, token-budget batches), distributed (ranks), artifacts
(manifest, loss curve), trackers, compiling. Importing this package imports no torch: the recipe loads on demand."""

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
